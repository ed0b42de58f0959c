package main

import (
	"flag"
	"os"

	"github.com/dyad-tunnel/dyad/daemon"
)

// defaultConfigPath is where every command that takes --config looks
// without it, unless DYAD_CONFIG names another file: the path of the
// systemd unit and deploy/systemd/README.md.
const defaultConfigPath = "/etc/dyad/dyad.yaml"

// defaultConfig returns $DYAD_CONFIG, else defaultConfigPath.
func defaultConfig() string {
	if p := os.Getenv("DYAD_CONFIG"); p != "" {
		return p
	}
	return defaultConfigPath
}

// configFlag registers --config with the default of defaultConfig.
func configFlag(fs *flag.FlagSet, p *string, what string) {
	fs.StringVar(p, "config", defaultConfig(), what+" (default: $DYAD_CONFIG, else "+defaultConfigPath+")")
}

// printVersion answers `dyad version` and `dyad --version`.
func printVersion() { daemon.PrintVersion(os.Stdout) }
