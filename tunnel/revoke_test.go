package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/audittest"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// These tests attack the link as the holder of a key about to be revoked
// would (THREATS P1 and P5): keep a stream open, dial again, and go on
// opening streams on every connection it holds.

// current waits for n's current connection to peer.
func current(t *testing.T, n *Node, peer string) *tconn {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if l := n.link(peer); l != nil {
			if tc, _ := l.get(); tc != nil && tc.alive() {
				return tc
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no connection to %s", peer)
	return nil
}

// heldStream forwards a local connection through a to b's echo service,
// checks one echo, and leaves the stream open.
func heldStream(t *testing.T, a *Node) net.Conn {
	t.Helper()
	c, err := echoOnce(t, a)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// redial makes a dial b once more, outside its dial slots: with a dyad/1
// peer (the previous release) the new connection replaces the current one,
// which is retired on both sides; with dyad/2 it joins the set.
func redial(t *testing.T, a *Node) *tconn {
	t.Helper()
	current(t, a, "b")
	before := map[*tconn]bool{}
	for _, tc := range a.link("b").live() {
		before[tc] = true
	}
	if err := a.link("b").dial(-1); err != nil {
		t.Fatalf("second dial: %v", err)
	}
	for _, tc := range a.link("b").live() {
		if !before[tc] {
			return tc
		}
	}
	t.Fatal("the second dial's connection does not take new streams")
	return nil
}

// echoOn opens a stream on tc itself (not through the link's choice), asks
// for service and checks one echo: what a hostile peer can do with any
// connection it still holds.
func echoOn(tc *tconn, service string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s, err := tc.qc.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	defer s.CancelRead(0)
	defer s.CancelWrite(0)
	id := uint64(s.StreamID())
	w := tc.sess.NewWriter(s, id, codec.FromInitiator)
	r := tc.sess.NewReader(s, id, codec.FromResponder)
	defer r.Release()
	if _, err := w.Write(AppendRequest(nil, service)); err != nil {
		return err
	}
	if _, err := w.Write([]byte("ping")); err != nil {
		return err
	}
	s.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := r.Next()
	if err != nil {
		return err
	}
	if status, err := ParseResponse(resp); err != nil || status != StatusAccepted {
		return &RefusedError{Service: service, Status: status}
	}
	var got [4]byte
	if _, err := io.ReadFull(r, got[:]); err != nil {
		return err
	}
	if string(got[:]) != "ping" {
		return errors.New("echo mismatch")
	}
	return nil
}

// resetWithin checks that c is cut (reset, not a clean end) within d.
func resetWithin(t *testing.T, c net.Conn, d time.Duration, what string) {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(d + 2*time.Second))
	var buf [64]byte
	for {
		_, err := c.Read(buf[:])
		if err == nil {
			continue
		}
		if elapsed := time.Since(start); elapsed > d {
			t.Fatalf("%s: cut after %v, want within %v (%v)", what, elapsed, d, err)
		}
		if err == io.EOF {
			t.Fatalf("%s: clean EOF, want a reset", what)
		}
		return
	}
}

// closedWithin waits up to d for tc to end.
func closedWithin(t *testing.T, tc *tconn, d time.Duration, what string) {
	t.Helper()
	select {
	case <-tc.qc.Context().Done():
	case <-time.After(d):
		t.Fatalf("%s still open %v after the reload", what, d)
	}
}

// TestRevocationClosesEveryConnection: a reload that removes a peer, or
// changes its key, closes every connection the old key authenticated —
// current and replaced — within one second, resets their streams, accepts
// no stream on any of them, and audits each close once with the reason.
// THREATS P1.
func TestRevocationClosesEveryConnection(t *testing.T) {
	bothTransports(t, testRevocationClosesEveryConnection)
}

func testRevocationClosesEveryConnection(t *testing.T) {
	for _, tc := range []struct {
		name, reason string
		revoke       func(b *Node, cfg Config) Config
	}{
		{"removed", "peer_removed", func(_ *Node, cfg Config) Config { cfg.Peers = nil; cfg.Services[0].Allow = nil; return cfg }},
		{"key changed", "key_changed", func(_ *Node, cfg Config) Config {
			cfg.Peers = []Peer{{Name: "a", Key: newIdentity(t).Public()}}
			return cfg
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo, _ := tunneltest.EchoServer(t)
			ida, idb := newIdentity(t), newIdentity(t)
			cfg := Config{
				Peers:    []Peer{{Name: "a", Key: ida.Public()}},
				Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}},
			}
			b := startNode(t, idb, cfg)
			a := startNode(t, ida, Config{Connections: 1, Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: b.Addr().String()}}})

			old := current(t, a, "b")
			held := heldStream(t, a) // keeps the first connection alive once replaced
			cur := redial(t, a)
			if err := echoOn(cur, "echo"); err != nil {
				t.Fatalf("current connection before the reload: %v", err)
			}

			if err := b.Update(tc.revoke(b, cfg)); err != nil {
				t.Fatal(err)
			}
			resetWithin(t, held, time.Second, "the held stream on the replaced connection")
			closedWithin(t, old, time.Second, "the replaced connection")
			closedWithin(t, cur, time.Second, "the current connection")
			for i, c := range []*tconn{old, cur} {
				if err := echoOn(c, "echo"); err == nil {
					t.Fatalf("connection %d still carries streams after the reload", i)
				}
			}
			v, _ := journals.Load(b)
			tj := v.(*audittest.Journal)
			if !tj.WaitFor(5*time.Second, func([]journal.Entry) bool { return countClosed(tj, tc.reason) >= 2 }) {
				var got []string
				for _, e := range tj.Named(audit.TunnelClosed) {
					got = append(got, e.Attr(audit.KeyCloseReason).Emit())
				}
				t.Fatalf("want one %s per connection (2) with reason %s, journal has %v", audit.TunnelClosed, tc.reason, got)
			}
			time.Sleep(200 * time.Millisecond)
			if n := len(tj.Named(audit.TunnelClosed)); n != 2 {
				t.Fatalf("%d %s events, want exactly one per connection (2)", n, audit.TunnelClosed)
			}
		})
	}
}

func countClosed(tj *audittest.Journal, reason string) int {
	n := 0
	for _, e := range tj.Named(audit.TunnelClosed) {
		if e.Attr(audit.KeyCloseReason) == attribute.StringValue(reason) {
			n++
		}
	}
	return n
}

// TestRetiredConnectionRefusesStreams: a connection replaced by a newer
// one of the same peer takes no new stream; the refusal is counted. THREATS
// P1 and P5 (a replaced connection must not be a second door).
// QUIC only: it plays a previous-release (dyad/1) peer, which has no TCP
// transport.
func TestRetiredConnectionRefusesStreams(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	ida, idb := newIdentity(t), newIdentity(t)
	b := startNode(t, idb, Config{Peers: []Peer{{Name: "a", Key: ida.Public()}},
		Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}}})
	// A previous-release peer: a newer connection replaces the older.
	a := startNode(t, ida, Config{protos: []string{ALPNv1}, Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: b.Addr().String()}}})
	old := current(t, a, "b")
	held := heldStream(t, a)
	defer held.Close()
	cur := redial(t, a)
	if err := echoOn(old, "echo"); err == nil {
		t.Fatal("a replaced connection accepted a new stream")
	}
	if err := echoOn(cur, "echo"); err != nil {
		t.Fatalf("the current connection: %v", err)
	}
	if got := b.Stats.Snapshot()["streams_refused.connection_replaced"]; got != 1 {
		t.Fatalf("B counted %d streams refused on the replaced connection, want 1", got)
	}
	// The held stream still works: replacing is not revoking.
	held.Write([]byte{7})
	var one [1]byte
	held.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(held, one[:]); err != nil || one[0] != 7 {
		t.Fatalf("the replaced connection's own stream: %v", err)
	}
}

// TestConnectionsPerPeerCapped: one peer that dials again and again while
// holding a stream on each connection stops at its own cap; the extra
// connections are refused, counted and audited, and another partner still
// gets a tunnel slot. THREATS P5.
func TestConnectionsPerPeerCapped(t *testing.T) { matrixTransports(t, testConnectionsPerPeerCapped) }

func testConnectionsPerPeerCapped(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	idc := newIdentity(t)
	a, b := pairLimited(t, echo, Limits{}, Limits{}, func(c *Config) {
		c.MaxTunnels = DefaultConnections + 2
		c.MaxConnectionsPerPeer = DefaultConnections + 1 // a dials DefaultConnections by itself
		c.HandshakesPerSecond = -1
		c.Peers = append(c.Peers, Peer{Name: "c", Key: idc.Public()})
		c.Services[0].Allow = append(c.Services[0].Allow, "c")
	})
	for i := range 4 {
		held := heldStream(t, a)
		defer held.Close()
		err := a.link("b").dial(-1)
		if i == 0 && err != nil {
			t.Fatalf("second connection, within the cap: %v", err)
		}
	}
	nc := startNode(t, idc, Config{ConnectTimeout: 3 * time.Second, Connections: 1,
		Peers: []Peer{{Name: "b", Key: b.Identity(), Endpoint: b.Addr().String()}}})
	c, err := echoOnce(t, nc)
	if err != nil {
		t.Fatalf("another partner was locked out: %v", err)
	}
	if got := b.link("a").connections(); got != DefaultConnections+1 {
		t.Fatalf("B holds %d connections of peer a, want the cap (%d)", got, DefaultConnections+1)
	}
	if got := b.Stats.Snapshot()["limited."+limitConnsPerPeer]; got == 0 {
		t.Fatalf("connections over the cap not counted: %v", b.Stats.Snapshot())
	}
	event(t, b, audit.RateLimitExceeded, attribute.String(audit.KeyPeer, "a"),
		attribute.String(audit.KeyLimit, limitConnsPerPeer), attribute.String(audit.KeyScope, "peer"))
	c.Close()
}

// The README's memory terms for a stream (section "Memory"): B_stream, its
// goroutine and QUIC state, and B_pending, what a stream waiting for its
// request holds: B_stream and one small codec buffer.
const (
	streamStateBytes   = 32 << 10
	pendingStreamBytes = streamStateBytes + 9<<10
)

// TestRequestlessStreamsBounded opens as many streams as QUIC allows from
// one peer, none of which sends its request; half announce a full-size
// first record. Each counts against the peer's limits on arrival, holds at
// most a small buffer, and is refused after the request deadline: the
// heap grows by no more than the README's formula for pending streams.
// THREATS P5.
func TestRequestlessStreamsBounded(t *testing.T) { matrixTransports(t, testRequestlessStreamsBounded) }

func testRequestlessStreamsBounded(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b := pair(t, echo)
	tc := current(t, a, "b")
	limits := b.cfg.Load().cfg.Limits

	// A stream's preamble and the header of a full-size record, without
	// its body.
	var buf bytes.Buffer
	w := tc.sess.NewWriter(&buf, 0, codec.FromInitiator)
	w.Write(make([]byte, codec.MaxPayload))
	announce := append([]byte(nil), buf.Bytes()[:codec.PreambleSize+codec.HeaderSize]...)

	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	var streams []muxStream
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range MaxStreamsCap {
		s, err := tc.qc.OpenStreamSync(ctx)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if i%2 == 0 {
			s.Write(announce)
		} else {
			s.Write(announce[:codec.PreambleSize])
		}
		streams = append(streams, s)
	}
	defer func() {
		for _, s := range streams {
			s.CancelWrite(0)
			s.CancelRead(0)
		}
	}()
	time.Sleep(500 * time.Millisecond) // let B take them all in
	grown := int64(heap()) - int64(before)
	// README, "Memory": a stream waiting for its request holds its place
	// in max_streams and at most B_pending; the rest are refused at once.
	// Both ends live in this process: allow 32 MiB for the importing
	// side's state of its streams.
	bound := int64(limits.MaxStreams)*pendingStreamBytes + 32<<20
	t.Logf("heap grew %d KiB for %d request-less streams (bound %d KiB)", grown>>10, MaxStreamsCap, bound>>10)
	if grown > bound {
		t.Fatalf("heap grew %d KiB, over the formula's %d KiB", grown>>10, bound>>10)
	}
	if active := b.gates.peer("a").active.Load(); active > int64(limits.MaxStreams) {
		t.Fatalf("%d request-less streams hold a slot, over max_streams %d", active, limits.MaxStreams)
	}
	snap := b.Stats.Snapshot()
	if snap["limited."+limitStreamRate]+snap["limited."+limitStreams]+snap["records_rejected.oversize"] == 0 {
		t.Fatalf("no request-less stream was refused or rejected: %v", snap)
	}
	// Past the request deadline every pending stream is gone, counted.
	deadline := time.Now().Add(requestTimeout + 3*time.Second)
	for b.gates.peer("a").active.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams still pending after the request deadline", b.gates.peer("a").active.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if b.Stats.Snapshot()["limited."+limitRequest] == 0 {
		t.Fatalf("streams that sent no request were not counted: %v", b.Stats.Snapshot())
	}
}
