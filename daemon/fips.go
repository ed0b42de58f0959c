package daemon

import (
	"crypto/fips140"
	"crypto/tls"
	"fmt"
	"slices"
	"time"

	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// certifiedModules are the Go Cryptographic Module versions with a FIPS
// 140-3 certificate, as this toolchain's $GOROOT/lib/fips140/certified.txt
// names them (TestCertifiedModulesMatchToolchain keeps the two equal).
var certifiedModules = []string{"v1.0.0"}

// FIPSState is the process's FIPS 140-3 state.
type FIPSState struct {
	Enabled   bool   // Go's FIPS 140-3 mode is on (GODEBUG=fips140=on)
	Module    string // the module version built in: "v1.0.0", or "latest" (the toolchain's own tree)
	Certified bool   // Module is a certified snapshot
}

// CurrentFIPS returns this process's FIPS 140-3 state.
func CurrentFIPS() FIPSState {
	v := fips140.Version()
	return FIPSState{Enabled: fips140.Enabled(), Module: v, Certified: slices.Contains(certifiedModules, v)}
}

// String is the state as `dyad version` prints it.
func (f FIPSState) String() string {
	if !f.Enabled {
		return fmt.Sprintf("off (Go Cryptographic Module %s built in; GODEBUG=fips140=on turns it on)", f.Module)
	}
	cert := "a certified snapshot"
	if !f.Certified {
		cert = "not a certified snapshot: build with GOFIPS140=certified, as make release does"
	}
	return fmt.Sprintf("on, Go Cryptographic Module %s (%s)", f.Module, cert)
}

// Warning is what a FIPS-mode daemon logs at start when its module is
// not certified; empty otherwise.
func (f FIPSState) Warning() string {
	if !f.Enabled || f.Certified {
		return ""
	}
	return fmt.Sprintf("FIPS 140-3 mode runs Go Cryptographic Module %s, which is not a certified snapshot; "+
		"for a certified build use `make release` (GOFIPS140=certified)", f.Module)
}

// checkFIPS refuses a configuration with fips: true in a process where the
// module is not active (tested by TestFIPSRefusesWithoutModule).
func checkFIPS(cfg *Config) error {
	if cfg.File.FIPS && !fips140.Enabled() {
		return fmt.Errorf("%s: %w", cfg.Path, tunnel.ErrFIPSInactive)
	}
	return nil
}

// preferredGroup is the TLS group this daemon offers first.
func preferredGroup(cfg *Config) tls.CurveID {
	if cfg.Tunnel.FIPS {
		return tls.SecP256r1MLKEM768
	}
	return tls.X25519MLKEM768
}

// startWarnings are what `dyad check` says about this host's start: fips:
// true where this process is not in FIPS 140-3 mode (the daemon would
// refuse to start unless run with GODEBUG=fips140=on), and the identity's
// age (tested by TestCheckWarnsFIPSAndAge).
func startWarnings(cfg *Config, id *identity.Identity) []string {
	var out []string
	if cfg.File.FIPS && !fips140.Enabled() {
		out = append(out, "fips: true: run the daemon with GODEBUG=fips140=on, or it refuses to start (this check ran without it)")
	}
	if w := IdentityAgeWarning(cfg, id, time.Now()); w != "" {
		out = append(out, w)
	}
	return out
}
