package tunnel

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// TestDialNotReadyHint: a partner that completes the handshake (so it holds
// the pinned key) but never sends the ready signal, as when its daemon
// stalls or the path loses packets after the handshake, is not reported
// with the hint for a dial nobody answered, which names a wrong pinned key
// among its causes (THREATS P10: a wrong pinned key told apart from a dead
// network wherever the protocol allows it).
func TestDialNotReadyHint(t *testing.T) {
	ida, idb := newIdentity(t), newIdentity(t)
	ln := silentListener(t, idb)
	defer func(d time.Duration) { dialTimeout = d }(dialTimeout)
	dialTimeout = time.Second // each dial gives up on the ready signal after 1 s
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs tunneltest.SyncBuffer
	a, err := New(pc, ida, Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: ln.Addr().String(), Transport: TransportQUIC}}},
		zerolog.New(&logs), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var line string
	for deadline := time.Now().Add(20 * time.Second); line == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, `"dial failed"`) {
				line = l
				break
			}
		}
	}
	if line == "" {
		t.Fatalf("no dial failure logged in 20 s:\n%s", logs.String())
	}
	if !strings.Contains(line, "peer did not accept us") {
		t.Fatalf("want the dial to fail waiting for the ready signal, got: %s", line)
	}
	if strings.Contains(line, "key pinned for this peer is not the partner's") || strings.Contains(line, "pinned_fingerprint") {
		t.Errorf("the handshake proved the pinned key, yet the log suspects it: %s", line)
	}
	if !strings.Contains(line, "completed the handshake") {
		t.Errorf("the log does not say that the partner completed the handshake: %s", line)
	}
}

// silentListener takes QUIC handshakes with id's key and dyad's ALPN, but
// has nothing of dyad behind them: it never sends the ready signal.
func silentListener(t *testing.T, id *identity.Identity) *quic.Listener {
	t.Helper()
	cert, err := id.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{ALPN}}, &quic.Config{EnableDatagrams: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			qc, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			t.Cleanup(func() { qc.CloseWithError(0, "") })
		}
	}()
	return ln
}

// TestProbeNotReady: `dyad ping` against a partner that completes the
// handshake but never confirms the tunnel does not report "no answer",
// whose causes include a wrong pinned key: the handshake proved the key
// (THREATS P10). On main it did: outcome ProbeNoAnswer.
func TestProbeNotReady(t *testing.T) {
	ida, idb := newIdentity(t), newIdentity(t)
	ln := silentListener(t, idb)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(pc, ida, Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Transport: TransportQUIC}}}, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	res := a.Probe(ctx, "b", ln.Addr().String(), "")
	if res.Outcome != ProbeNotReady {
		t.Fatalf("outcome %v (%v), want ProbeNotReady", res.Outcome, res.Err)
	}
}
