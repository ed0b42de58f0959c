package daemon_test

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// TestTCPFallbackProcesses: two dyad processes whose UDP path is blocked
// (a relay that drops every datagram, in front of B's QUIC port; B's TCP
// fallback listens on the relay's port number). A, on transport auto, falls
// back to TCP and carries traffic within 3 s of its start; a foreign TLS
// client on B's TCP port is refused and audited; UDP restored, A is back
// on QUIC, and a connection opened over TCP before keeps flowing; a reload
// that unpins A cuts its connections, TCP ones included.
func TestTCPFallbackProcesses(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	root := t.TempDir()
	a, b := newSite(t, root, "site-a"), newSite(t, root, "site-b")
	relay, err := daemontest.NewUDPRelay(b.Config.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	relay.Pause(true)
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "echo", Upstream: echo, Allow: []string{"site-a"}}}
	b.Config.Tunnel.TCPListen = daemon.TCPListen{Addr: relay.Addr()}
	start(t, b)

	local := freeTCP(t)
	pb := b.Peer(false)
	pb.Endpoint = relay.Addr()
	pb.FallbackAfter = daemon.Duration(500 * time.Millisecond)
	a.Config.Peers = []daemon.PeerFile{pb}
	a.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: "site-b", Service: "echo"}}
	a.Config.Tunnel.ConnectTimeout = daemon.Duration(3 * time.Second)
	began := time.Now()
	start(t, a)
	if err := echoRoundTrip(local, 1<<20, 7); err != nil {
		t.Fatalf("over the fallback: %v\n%s", err, a.Logs())
	}
	if d := time.Since(began); d > 3*time.Second {
		t.Fatalf("first bytes through the fallback %v after start, want within 3 s", d)
	}
	if !hasEvent(t, a, audit.TransportChanged, func(e journal.Entry) bool {
		return e.Attr(audit.KeyTransport).AsString() == "tcp" && e.Attr(audit.KeyReason).AsString() == "quic_no_answer"
	}) {
		t.Fatalf("A's journal lacks the switch to TCP: %v", a.Events())
	}
	if !hasEvent(t, b, audit.TunnelEstablished, func(e journal.Entry) bool {
		return e.Attr(audit.KeyTransport).AsString() == "tcp"
	}) {
		t.Fatalf("B's journal lacks a TCP tunnel: %v", b.Events())
	}

	// A foreign TLS client on the TCP port.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", relay.Addr(),
		&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"dyad/2"}})
	if err == nil {
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("a foreign TLS client was served")
	}
	if !hasEvent(t, b, audit.PeerAuthRefused, func(e journal.Entry) bool {
		return e.Attr(audit.KeyTransport).AsString() == "tcp" && e.Attr(audit.KeyReason).AsString() == "no_certificate"
	}) {
		t.Fatalf("B's journal lacks the TCP refusal: %v", b.Events())
	}

	// A connection held over TCP while UDP comes back.
	held, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	echoByte := func(c net.Conn, v byte) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte{v}); err != nil {
			return err
		}
		var one [1]byte
		_, err := c.Read(one[:])
		return err
	}
	if err := echoByte(held, 1); err != nil {
		t.Fatal(err)
	}
	relay.Pause(false)
	if !waitFor(20*time.Second, func() bool {
		es, _, _ := a.Journal()
		for _, e := range es {
			if e.Name == audit.TransportChanged && e.Attr(audit.KeyTransport).AsString() == "quic" {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("A not back on QUIC: %v", a.Events())
	}
	if err := echoByte(held, 2); err != nil {
		t.Fatalf("the connection opened over TCP was cut by the switch back: %v", err)
	}
	if err := echoRoundTrip(local, 1<<20, 8); err != nil {
		t.Fatalf("over QUIC again: %v", err)
	}

	// Revocation: B unpins A; every connection of A's key ends, the held
	// one (on a retired TCP connection) too.
	b.Config.Peers = nil
	b.Config.Services = []daemon.ServiceFile{{Name: "echo", Upstream: echo}}
	reload(t, b)
	if err := echoByte(held, 3); err == nil {
		t.Fatal("a stream of a revoked peer still flows")
	}
	if !hasEvent(t, b, audit.TunnelClosed, func(e journal.Entry) bool {
		return e.Attr(audit.KeyTransport).AsString() == "tcp" && e.Attr(audit.KeyCloseReason).AsString() == "peer_removed"
	}) {
		t.Fatalf("B's journal lacks the TCP connection closed by the revocation: %v", b.Events())
	}
	if !strings.Contains(a.Logs(), "tunnel transport changed") {
		t.Error("A's log does not say the transport changed")
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}
