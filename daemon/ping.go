package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/rs/zerolog"

	"github.com/dyad-tunnel/dyad/tunnel"
)

// Exit codes of `dyad ping`, one per outcome (README, "dyad ping";
// TestPingOutcomes). 2 is a usage error, as for every command.
const (
	PingOK            = 0
	PingFailed        = 1 // the probe could not run (configuration, key file, socket)
	PingNoAnswer      = 3 // nothing answered: daemon down, firewall, or a pinned key that is not the partner's
	PingRefused       = 4 // the partner refused our certificate: it does not pin this site
	PingServiceDenied = 5 // the service is unknown at the partner or not allowed to this site
	PingUpstreamDown  = 6 // the partner could not reach the service's upstream
	PingOtherRefusal  = 7 // refused for another reason: limits, too many connections, shutting down
	PingNotReady      = 8 // the partner holds the pinned key but did not confirm the tunnel in time
)

// PingOptions say what `dyad ping` probes.
type PingOptions struct {
	Config   string        // this site's configuration: its identity and the peer's pinned key
	Peer     string        // a configured peer
	Service  string        // a service at the peer; empty probes the tunnel only
	Endpoint string        // where to dial; empty means the peer's configured endpoint
	Timeout  time.Duration // the whole probe; zero means 10 s
}

// Ping probes a peer with this site's identity over the peer's transport
// (auto: QUIC, then TCP if QUIC gets no answer) from a fresh socket (no
// running daemon needed; the partner sees one short extra connection from
// this site), prints what it found, and returns the exit code.
func Ping(o PingOptions, out io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(out, "dyad ping: %v\n", err)
		return PingFailed
	}
	cfg, err := LoadConfig(o.Config)
	if err != nil {
		return fail(err)
	}
	id, err := loadIdentity(cfg)
	if err != nil {
		return fail(err)
	}
	var peer *tunnel.Peer
	for _, p := range cfg.Tunnel.Peers {
		if p.Name == o.Peer {
			peer = &p
		}
	}
	if peer == nil {
		return fail(fmt.Errorf("%s: no peer %q", o.Config, o.Peer))
	}
	endpoint := o.Endpoint
	if endpoint == "" {
		endpoint = peer.Endpoint
	}
	if endpoint == "" {
		return fail(fmt.Errorf("peer %q has no endpoint in %s (it dials this site): give --endpoint HOST:PORT", o.Peer, o.Config))
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	// A node of one peer, which dials nothing by itself and serves nothing.
	tc := cfg.Tunnel
	only := *peer
	only.Endpoint = ""
	tc.Peers, tc.Services = []tunnel.Peer{only}, nil
	pc, err := net.ListenPacket("udp", ":0")
	if err != nil {
		return fail(fmt.Errorf("udp socket: %w", err))
	}
	node, err := tunnel.New(pc, id, tc, zerolog.Nop(), nil)
	if err != nil {
		pc.Close()
		return fail(err)
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	defer cancel()
	res := node.Probe(ctx, o.Peer, endpoint, o.Service)

	who := fmt.Sprintf("%s at %s", o.Peer, endpoint)
	pinned := peer.Key.Fingerprint()
	switch res.Outcome {
	case tunnel.ProbeOK:
		fmt.Fprintf(out, "ok: %s answered and accepted this site: round trip %s (handshake %s), group %s, protocol %s, over %s\n",
			who, ms(res.RTT), ms(res.Handshake), res.Group, res.Protocol, res.Transport)
		if o.Service != "" {
			fmt.Fprintf(out, "ok: service %s accepted in %s (the partner reached its upstream)\n", o.Service, ms(res.StreamRTT))
		}
		return PingOK
	case tunnel.ProbeNoAnswer:
		fmt.Fprintf(out, "no answer from %s within %v. One of:\n"+
			"  - the partner's daemon is not running, or not listening there\n"+
			"  - a firewall drops UDP to %s, or its answers (transport tcp or auto tries TCP as well)\n"+
			"  - the key pinned for %s is not the partner's: its listener answers only a first flight keyed\n"+
			"    with its own public key, so a wrong key looks exactly like a dead network.\n"+
			"    pinned fingerprint: %s (compare it with the partner's `dyad check` by phone)\n",
			who, o.Timeout, endpoint, o.Peer, pinned)
		return PingNoAnswer
	case tunnel.ProbeKeyMismatch:
		fmt.Fprintf(out, "%s answered with another key than the one pinned for it (pinned fingerprint %s):\n"+
			"  the pinned key is not the partner's; compare fingerprints with the partner's `dyad check` by phone\n", who, pinned)
		return PingNoAnswer
	case tunnel.ProbeRefused:
		fmt.Fprintf(out, "%s answered but refused this site's certificate: it does not pin this site's key.\n"+
			"  Give the partner this site's public key for its peers list:\n  public_key: %s\n  (fingerprint %s)\n",
			who, id.Public(), id.Public().Fingerprint())
		return PingRefused
	case tunnel.ProbeServiceDenied:
		fmt.Fprintf(out, "%s accepted this site but refused service %s: unknown there, or not allowed to this site\n"+
			"  (the partner answers both alike; its services[].allow must name this site)\n", who, o.Service)
		return PingServiceDenied
	case tunnel.ProbeUpstreamDown:
		fmt.Fprintf(out, "%s accepted this site for service %s but could not reach the service's upstream:\n"+
			"  the tunnel is fine; the partner's API is down or unreachable from its daemon\n", who, o.Service)
		return PingUpstreamDown
	case tunnel.ProbeOtherRefusal:
		fmt.Fprintf(out, "%s refused: %v\n", who, res.Err)
		return PingOtherRefusal
	case tunnel.ProbeNotReady:
		fmt.Fprintf(out, "%s completed the handshake (it holds the pinned key) but did not confirm the tunnel within %v:\n"+
			"  its daemon is stalled or overloaded, or the path lost the packets after the handshake; try again,\n"+
			"  and if it persists ask the partner for its daemon's log at this time\n", who, o.Timeout)
		return PingNotReady
	}
	return fail(fmt.Errorf("%s: %w", who, res.Err))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
