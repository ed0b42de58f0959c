package tunnel

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// pairLimited is pair with limits on B: peer a's and service echo's.
func pairLimited(t *testing.T, upstream string, peer, service Limits, tune func(*Config)) (a, b *Node) {
	ida, idb := newIdentity(t), newIdentity(t)
	cfg := Config{
		Peers:    []Peer{{Name: "a", Key: ida.Public(), Limits: peer}},
		Services: []Service{{Name: "echo", Upstream: upstream, Allow: []string{"a"}, Limits: service}},
	}
	if tune != nil {
		tune(&cfg)
	}
	b = startNode(t, idb, cfg)
	a = startNode(t, ida, Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: b.Addr().String()}}})
	return a, b
}

// echoOnce sends one byte through a new forward and reads it back; the
// error is the forward's when it was refused.
func echoOnce(t *testing.T, a *Node) (net.Conn, error) {
	t.Helper()
	c, done := forward(t, a, "echo")
	c.Write([]byte{1})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return nil, <-done
	}
	return c, nil
}

func refusedWith(t *testing.T, err error, want Status) {
	t.Helper()
	var r *RefusedError
	if !errors.As(err, &r) || r.Status != want {
		t.Fatalf("want a %v refusal, got %v", want, err)
	}
}

// TestStreamRateLimited: a peer that opens streams faster than its rate
// gets typed refusals once its burst is spent; each is counted and
// audited. THREATS P5.
func TestStreamRateLimited(t *testing.T) { matrixTransports(t, testStreamRateLimited) }

func testStreamRateLimited(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b := pairLimited(t, echo, Limits{StreamsPerSecond: 0.1, StreamBurst: 3}, Limits{}, nil)
	for i := range 3 {
		c, err := echoOnce(t, a)
		if err != nil {
			t.Fatalf("stream %d within the burst: %v", i, err)
		}
		c.Close()
	}
	for range 2 {
		_, err := echoOnce(t, a)
		refusedWith(t, err, StatusRateLimited)
	}
	if got := b.Stats.Snapshot()["limited."+limitStreamRate]; got != 2 {
		t.Fatalf("B counted %d rate-limited streams, want 2", got)
	}
	// A peer limit refuses the stream on arrival, before its request names
	// the service.
	event(t, b, audit.RateLimitExceeded, attribute.String(audit.KeyPeer, "a"),
		attribute.String(audit.KeyLimit, limitStreamRate), attribute.String(audit.KeyScope, "peer"))
}

// TestMaxStreams: a service's concurrency cap refuses the stream over it
// with a typed answer, and frees the slot when a stream ends. THREATS P5.
func TestMaxStreams(t *testing.T) { bothTransports(t, testMaxStreams) }

func testMaxStreams(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b := pairLimited(t, echo, Limits{}, Limits{MaxStreams: 2}, nil)
	var held []net.Conn
	for i := range 2 {
		c, err := echoOnce(t, a)
		if err != nil {
			t.Fatalf("stream %d under the cap: %v", i, err)
		}
		held = append(held, c)
	}
	_, err := echoOnce(t, a)
	refusedWith(t, err, StatusTooManyStreams)
	event(t, b, audit.RateLimitExceeded, attribute.String(audit.KeyLimit, limitStreams), attribute.String(audit.KeyScope, "service"))
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := echoOnce(t, a)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed after a stream ended: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	held[1].Close()
}

// TestBandwidthLimited: a peer's bytes per second paces its streams, and
// the first delay of a stream is audited. THREATS P5.
func TestBandwidthLimited(t *testing.T) { matrixTransports(t, testBandwidthLimited) }

func testBandwidthLimited(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	const perSecond = 1 << 20
	a, b := pairLimited(t, echo, Limits{BytesPerSecond: perSecond}, Limits{}, nil)
	c, done := forward(t, a, "echo")
	const total = 3 << 20
	start := time.Now()
	go func() {
		c.Write(make([]byte, total))
		c.(*net.TCPConn).CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := io.Copy(io.Discard, c)
	elapsed := time.Since(start)
	if err != nil || n != total {
		t.Fatalf("echoed %d of %d bytes: %v", n, total, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The bucket holds 64 KiB (one record) at first, then 1 MiB/s.
	if min := time.Duration(float64(total-2*(64<<10)) / perSecond * float64(time.Second)); elapsed < min {
		t.Fatalf("3 MiB at 1 MiB/s took %v, want at least %v", elapsed, min)
	}
	event(t, b, audit.RateLimitExceeded, attribute.String(audit.KeyLimit, limitBandwidth), attribute.String(audit.KeyScope, "peer"))
}

// TestStreamIdleTimeout and the lifetime below: a stream that carries
// nothing for its idle timeout, or lives past its lifetime, is reset on
// both sides, and its close event says why. THREATS P5 (slowloris).
func TestStreamIdleTimeout(t *testing.T) { matrixTransports(t, testStreamIdleTimeout) }

func testStreamIdleTimeout(t *testing.T) {
	for _, tc := range []struct {
		lim     Limits
		reason  string
		trickle bool
	}{
		{Limits{IdleTimeout: 300 * time.Millisecond}, limitIdle, false},
		{Limits{MaxLifetime: 600 * time.Millisecond}, limitLifetime, true},
	} {
		echo, _ := tunneltest.EchoServer(t)
		a, b := pairLimited(t, echo, Limits{}, tc.lim, nil)
		c, err := echoOnce(t, a)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var buf [16]byte
		for {
			if tc.trickle { // a byte every 100 ms: never idle
				c.Write([]byte{2})
			}
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			_, err = c.Read(buf[:])
			if ne, ok := err.(net.Error); err == nil || ok && ne.Timeout() {
				if time.Since(start) > 5*time.Second {
					t.Fatalf("%s: stream still open after 5 s", tc.reason)
				}
				continue
			}
			break
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("%s: stream ended after %v", tc.reason, d)
		}
		event(t, b, audit.StreamClosed, attribute.String(audit.KeyCloseReason, tc.reason))
		c.Close()
	}
}

// TestHandshakeLimits: past the per-source handshake rate, or past the cap
// on tunnels, a paired daemon's handshake is refused and counted. THREATS
// P5.
func TestHandshakeLimits(t *testing.T) {
	for _, tc := range []struct {
		tune  func(*Config)
		limit string
	}{
		{func(c *Config) { c.HandshakesPerSecond = 0.01 }, "handshakes_per_second"},
		{func(c *Config) { c.MaxTunnels = 1 }, "max_tunnels"},
	} {
		echo, _ := tunneltest.EchoServer(t)
		idc := newIdentity(t)
		a, b := pairLimited(t, echo, Limits{}, Limits{}, func(c *Config) {
			tc.tune(c)
			c.Peers = append(c.Peers, Peer{Name: "c", Key: idc.Public()})
			c.Services[0].Allow = append(c.Services[0].Allow, "c")
		})
		if c, err := echoOnce(t, a); err != nil {
			t.Fatalf("%s: first peer: %v", tc.limit, err)
		} else {
			c.Close()
		}
		nc := startNode(t, idc, Config{ConnectTimeout: time.Second,
			Peers: []Peer{{Name: "b", Key: b.Identity(), Endpoint: b.Addr().String()}}})
		if _, err := echoOnce(t, nc); !errors.Is(err, errNoTunnel) {
			t.Fatalf("%s: second peer got through: %v", tc.limit, err)
		}
		if b.Stats.Snapshot()["limited."+tc.limit] == 0 {
			t.Fatalf("%s: not counted: %v", tc.limit, b.Stats.Snapshot())
		}
		event(t, b, audit.RateLimitExceeded, attribute.String(audit.KeyLimit, tc.limit), attribute.String(audit.KeyScope, "listener"))
	}
}
