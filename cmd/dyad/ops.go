package main

import (
	"os"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
)

// cmdStatus runs `dyad status`.
func cmdStatus(args []string) error {
	fs := newFlags("status", "show the running daemon's peers and tunnels (asked over its control socket, else its admin endpoint)")
	var o daemon.StatusOptions
	configFlag(fs, &o.Config, "configuration file of the daemon")
	fs.BoolVar(&o.JSON, "json", false, "print the status as JSON (the /statusz document)")
	fs.StringVar(&o.Via, "via", "", "control (the control socket) or admin (the admin endpoint's /statusz); default: control, else admin")
	fs.Parse(args)
	return daemon.Status(o, os.Stdout)
}

// cmdPing runs `dyad ping` and returns its exit code.
func cmdPing(args []string) int {
	fs := newFlags("ping", `probe a peer (and one of its services) with this site's identity; no running daemon needed.
Exit codes: 0 ok (round trip and key exchange group printed); 3 no answer (the partner's daemon is down,
a firewall drops UDP, or the key pinned for the peer is not the partner's: compare the printed pinned
fingerprint by phone); 4 the partner refused this site's certificate (it does not pin this site);
5 the service is unknown there or not allowed to this site; 6 the partner could not reach the
service's upstream; 7 refused for another reason (limits, shutting down); 8 the partner completed the
handshake (it holds the pinned key) but did not confirm the tunnel in time (stalled or overloaded);
1 could not probe; 2 usage.

Usage: dyad ping --config FILE [flags] PEER [SERVICE]`)
	var o daemon.PingOptions
	configFlag(fs, &o.Config, "this site's configuration file")
	fs.StringVar(&o.Endpoint, "endpoint", "", "host:port to dial (default: the peer's endpoint; required for a peer that dials this site)")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Second, "bound on the whole probe")
	fs.Parse(args)
	if fs.NArg() < 1 || fs.NArg() > 2 {
		usageError(fs, "PEER is required (and at most one SERVICE)")
	}
	o.Peer, o.Service = fs.Arg(0), fs.Arg(1)
	return daemon.Ping(o, os.Stdout)
}
