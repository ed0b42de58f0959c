package tunnel

import (
	"crypto/rand"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go/quicvarint"
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
)

// floodAddr is the i-th flood source: a distinct 127.x.y.7 address, each
// in its own /24 (up to 64000 of them).
func floodAddr(i int) net.IP { return net.IPv4(127, byte(1+i%250), byte(i/250), 7) }

// TestAdmissionTableKeepsBusyBuckets: when the per-source table is full
// of busy buckets, new sources do not reset the buckets of others: a
// source that spent its tokens has spent them. THREATS P5.
func TestAdmissionTableKeepsBusyBuckets(t *testing.T) {
	n := startNode(t, newIdentity(t), Config{HandshakesPerSecond: 1}) // burst 2; a spent bucket refills in 2 s
	a := n.admission
	victim := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 4433}
	vb := a.bucket(victim)
	vb.Allow()
	vb.Allow()
	for i := range 2 * maxSources { // each flood source takes a token: every bucket in the table is busy
		a.bucket(&net.UDPAddr{IP: floodAddr(i), Port: 4433}).Allow()
	}
	if got := a.bucket(victim).Tokens(); got >= 1 {
		t.Fatalf("the flood reset the spent bucket of another source: %.2f tokens", got)
	}
	if got := a.bucket(&net.UDPAddr{IP: floodAddr(0), Port: 1}).Tokens(); got >= 2 {
		t.Fatalf("the flood reset the bucket of one of its own sources: %.2f tokens", got)
	}
	a.mu.Lock()
	size := len(a.sources)
	a.mu.Unlock()
	if size > maxSources {
		t.Fatalf("%d buckets kept, bound %d", size, maxSources)
	}
}

// garbageInitial is a client Initial whose header quic-go parses (so it
// passes the source checks and, once admitted, holds a half-open place)
// but whose payload it cannot decrypt: the cheapest way to hold a
// handshake place for the handshake timeout.
func garbageInitial(dcid, scid, token []byte) []byte {
	b := []byte{0xc3, 0, 0, 0, 1, byte(len(dcid))}
	b = append(b, dcid...)
	b = append(b, byte(len(scid)))
	b = append(b, scid...)
	b = quicvarint.Append(b, uint64(len(token)))
	b = append(b, token...)
	rest := initialPacket - len(b) - 2
	b = quicvarint.AppendWithLen(b, uint64(rest), 2)
	body := make([]byte, rest)
	rand.Read(body)
	return append(b, body...)
}

// parseRetry returns a Retry packet's source connection ID and token.
func parseRetry(b []byte) (scid, token []byte, ok bool) {
	if len(b) < 7 || b[0]&0xf0 != 0xf0 {
		return nil, nil, false
	}
	p := b[5:]
	l := int(p[0])
	if len(p) < 1+l+1 {
		return nil, nil, false
	}
	p = p[1+l:]
	l = int(p[0])
	if len(p) < 1+l+16 {
		return nil, nil, false
	}
	return p[1 : 1+l], p[1+l : len(p)-16], true
}

// floodOnce plays one attacker source that knows the listener's key: a
// sealed garbage Initial from ip and, if a Retry comes back, a second one
// with its token, as a real client would send it.
func floodOnce(n *Node, ip net.IP) error {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		return err
	}
	defer c.Close()
	to := n.Addr().(*net.UDPAddr)
	dcid, scid := make([]byte, 8), make([]byte, 8)
	rand.Read(dcid)
	rand.Read(scid)
	if _, err := c.WriteToUDP(SealFirstFlight(n.Identity(), garbageInitial(dcid, scid, nil), time.Now()), to); err != nil {
		return err
	}
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	m, _, err := c.ReadFromUDP(buf)
	if err != nil {
		return nil // admitted at once (nothing to decrypt, nothing to answer)
	}
	if rscid, token, ok := parseRetry(buf[:m]); ok {
		// The server issued rscid: the dark listener knows it, no MAC.
		_, err = c.WriteToUDP(garbageInitial(rscid, scid, token), to)
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		c.ReadFromUDP(buf) // a refusal, if any
	}
	return err
}

// TestAdmissionFlood: a flood of handshakes from thousands of loopback
// addresses (each in its own /24) that know the listener's key takes the
// half-open places it may, yet a partner reconnecting from where it was
// completes its tunnel within a bound. THREATS P5 (shared handshake
// state is fair).
func TestAdmissionFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("flood")
	}
	ida, idb := newIdentity(t), newIdentity(t)
	b := startNode(t, idb, Config{Peers: []Peer{{Name: "a", Key: ida.Public()}}})
	cfgA := Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: b.Addr().String()}}}
	up := func(a *Node, within time.Duration) bool {
		for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if tc, _ := a.link("b").get(); tc != nil && tc.alive() {
				return true
			}
		}
		return false
	}
	a := startNode(t, ida, cfgA)
	if !up(a, 5*time.Second) {
		t.Fatal("no tunnel before the flood")
	}
	a.Close()

	const (
		sources  = 3000
		maxSends = 12000
		workers  = 24
	)
	var sent, failed atomic.Int64
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; sent.Load() < maxSends; i += workers {
				select {
				case <-stop:
					return
				default:
				}
				sent.Add(1)
				if err := floodOnce(b, floodAddr(i%sources)); err != nil {
					failed.Add(1)
				}
				if h := b.admission.halfOpen.Load(); h > peak.Load() {
					peak.Store(h)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	// The flood holds all the places it may (it is being refused) before
	// the partner returns.
	for deadline := time.Now().Add(10 * time.Second); b.Stats.Snapshot()["limited.max_half_open"] == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the flood never reached the half-open cap (%d sent, %d failed, %d half-open)",
				sent.Load(), failed.Load(), b.admission.halfOpen.Load())
		}
	}
	start := time.Now()
	a2 := startNode(t, ida, cfgA)
	if !up(a2, 6*time.Second) {
		t.Fatalf("the partner did not reconnect within 6 s under the flood: %d sent, %d half-open, stats %v",
			sent.Load(), b.admission.halfOpen.Load(), b.Stats.Snapshot())
	}
	t.Logf("partner reconnected after %v; flood: %d sent (%d failed), %d half-open now, peak %d; %v",
		time.Since(start), sent.Load(), failed.Load(), b.admission.halfOpen.Load(), peak.Load(), b.Stats.Snapshot())
	if p := peak.Load(); p > 64 {
		t.Fatalf("half-open peaked at %d, above the cap", p)
	}
	event(t, b, audit.RateLimitExceeded, attribute.String(audit.KeyLimit, "max_half_open"), attribute.String(audit.KeyScope, "listener"))
}
