package main

import (
	"os"

	"github.com/dyad-tunnel/dyad/daemon"
)

// cmdStatus runs `dyad status`.
func cmdStatus(args []string) error {
	fs := newFlags("status", "show the running daemon's peers and tunnels (asked over its control socket, else its admin endpoint)")
	var o daemon.StatusOptions
	fs.StringVar(&o.Config, "config", "", "configuration file of the daemon (required)")
	fs.BoolVar(&o.JSON, "json", false, "print the status as JSON (the /statusz document)")
	fs.StringVar(&o.Via, "via", "", "control (the control socket) or admin (the admin endpoint's /statusz); default: control, else admin")
	fs.Parse(args)
	if o.Config == "" {
		usageError(fs, "--config is required")
	}
	return daemon.Status(o, os.Stdout)
}
func cmdPing(args []string) int { return 1 }
