package tunnel

import (
	"crypto/tls"
	"errors"
	"io"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// TestRequirePostQuantumRefuses: under RequirePostQuantum a handshake whose
// group is classical is refused by the side that requires it, whichever
// side that is (listener or dialer); the refusal is counted twice
// (handshakes_refused, handshakes_not_post_quantum) and audited with the
// partner's fingerprint; no stream reaches the upstream. The partner
// offers X25519 alone, as a build without ML-KEM would.
func TestRequirePostQuantumRefuses(t *testing.T) { bothTransports(t, testRequirePostQuantumRefuses) }

func testRequirePostQuantumRefuses(t *testing.T) {
	classical := []tls.CurveID{tls.X25519}
	for _, c := range []struct {
		name          string
		listenerPQ    bool // which side requires post-quantum; the other is classical
		refuser, dirn string
	}{
		{"listener requires", true, "b", "inbound"},
		{"dialer requires", false, "a", "outbound"},
	} {
		t.Run(c.name, func(t *testing.T) {
			echo, accepted := tunneltest.EchoServer(t)
			ida, idb := newIdentity(t), newIdentity(t)
			cb := Config{Peers: []Peer{{Name: "a", Key: ida.Public()}},
				Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}}}
			ca := Config{ConnectTimeout: time.Second, Peers: []Peer{{Name: "b", Key: idb.Public()}}}
			if c.listenerPQ {
				cb.RequirePostQuantum, ca.curves = true, classical
			} else {
				ca.RequirePostQuantum, cb.curves = true, classical
			}
			b := startNode(t, idb, cb)
			ca.Peers[0].Endpoint = b.Addr().String()
			a := startNode(t, ida, ca)
			_, done := forward(t, a, "echo")
			select {
			case err := <-done:
				if !errors.Is(err, errNoTunnel) {
					t.Fatalf("forward over a classical key exchange: %v, want no tunnel", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("forward over a classical key exchange still open after 10 s: the tunnel came up")
			}
			if accepted() != 0 {
				t.Fatal("the upstream was reached")
			}
			refuser, other := b, a
			if c.refuser == "a" {
				refuser, other = a, b
			}
			s := refuser.Stats.Snapshot()
			if s["handshakes_not_post_quantum"] == 0 || s["handshakes_refused"] < s["handshakes_not_post_quantum"] {
				t.Fatalf("%s counted %d not post-quantum, %d refused", c.refuser, s["handshakes_not_post_quantum"], s["handshakes_refused"])
			}
			if got := other.Stats.Snapshot()["handshakes_not_post_quantum"]; got != 0 {
				t.Fatalf("the classical side counted %d", got)
			}
			event(t, refuser, audit.PeerAuthRefused, attribute.String(audit.KeyPeerFingerprint, other.Identity().Fingerprint()),
				attribute.String(audit.KeyDirection, c.dirn), attribute.String(audit.KeyReason, "not_post_quantum"))
		})
	}
}

// TestRequirePostQuantumAccepts: two nodes that both require post-quantum
// key exchange carry traffic over a hybrid ML-KEM group.
func TestRequirePostQuantumAccepts(t *testing.T) { bothTransports(t, testRequirePostQuantumAccepts) }

func testRequirePostQuantumAccepts(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	ida, idb := newIdentity(t), newIdentity(t)
	b := startNode(t, idb, Config{RequirePostQuantum: true, Peers: []Peer{{Name: "a", Key: ida.Public()}},
		Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}}})
	a := startNode(t, ida, Config{RequirePostQuantum: true, Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: b.Addr().String()}}})
	client, _ := forward(t, a, "echo")
	client.Write([]byte("x"))
	if _, err := io.ReadFull(client, make([]byte, 1)); err != nil {
		t.Fatalf("echo: %v", err)
	}
	tc, _ := a.link("b").get()
	if got := tc.qc.TLSState().CurveID; !PostQuantum(got) {
		t.Fatalf("key exchange %v", got)
	}
	if n := a.Stats.HandshakesRefused.Load() + b.Stats.HandshakesRefused.Load(); n != 0 {
		t.Fatalf("%d handshakes refused", n)
	}
}
