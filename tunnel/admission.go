package tunnel

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"
)

// admission bounds the handshakes quic-go takes on before TLS completes
// (THREATS P5, tested by TestHandshakeLimits and daemon's TestLimitFlood):
// a token bucket per source address, a cap on handshakes in progress and a
// cap on accepted tunnels. Under load it makes sources prove their address
// with a stateless Retry first, so spoofed floods cost quic-go no
// connection state.
type admission struct {
	n *Node

	mu      sync.Mutex // guards sources
	sources map[netip.Prefix]*rate.Limiter

	halfOpen atomic.Int64
	tunnels  atomic.Int64
}

// maxSources bounds the per-source buckets kept; past it, idle buckets are
// forgotten (and, if none is idle, all of them: memory stays bounded).
const maxSources = 4096

// admissionTicket is the handshake's place in the counts, kept in the
// connection's context so adopt can mark the handshake complete.
type admissionTicket struct {
	a         *admission
	handshake sync.Once
}

func (t *admissionTicket) handshakeDone() { t.handshake.Do(func() { t.a.halfOpen.Add(-1) }) }

var errAdmission = errors.New("handshake refused by a listener limit")

// source keys an address: IPv4 hosts alone, IPv6 by /64 (one site's
// addresses).
func source(addr net.Addr) netip.Prefix {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Prefix{}
	}
	ip := ap.Addr().Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

func (a *admission) bucket(addr net.Addr) *rate.Limiter {
	cfg := a.n.cfg.Load().cfg
	if cfg.HandshakesPerSecond < 0 {
		return nil
	}
	key := source(addr)
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.sources[key]
	if b == nil {
		if len(a.sources) >= maxSources {
			a.sweep()
		}
		burst := max(1, int(2*cfg.HandshakesPerSecond))
		b = rate.NewLimiter(rate.Limit(cfg.HandshakesPerSecond), burst)
		a.sources[key] = b
	}
	return b
}

// sweep forgets the buckets that are full again (their sources went
// quiet); if none is, it forgets them all.
func (a *admission) sweep() {
	now := time.Now()
	for k, b := range a.sources {
		if b.TokensAt(now) >= float64(b.Burst()) {
			delete(a.sources, k)
		}
	}
	if len(a.sources) >= maxSources {
		clear(a.sources)
	}
}

// retry is quic.Transport.VerifySourceAddress: a Retry for a source out of
// handshake tokens, and for every source while half the half-open cap is
// in use.
func (a *admission) retry(addr net.Addr) bool {
	cfg := a.n.cfg.Load().cfg
	if cfg.MaxHalfOpen > 0 && a.halfOpen.Load() >= int64(cfg.MaxHalfOpen)/2 {
		return true
	}
	b := a.bucket(addr)
	return b != nil && b.Tokens() < 1
}

// admit is quic.Transport.ConnContext: it takes the source's token and the
// handshake's places, or refuses (quic-go then sends CONNECTION_REFUSED).
func (a *admission) admit(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	cfg := a.n.cfg.Load().cfg
	limit := ""
	switch {
	case cfg.MaxTunnels > 0 && a.tunnels.Load() >= int64(cfg.MaxTunnels):
		limit = "max_tunnels"
	case cfg.MaxHalfOpen > 0 && a.halfOpen.Load() >= int64(cfg.MaxHalfOpen):
		limit = "max_half_open"
	default:
		if b := a.bucket(info.RemoteAddr); b != nil && !b.Allow() {
			limit = "handshakes_per_second"
		}
	}
	if limit != "" {
		a.n.auditListenerLimited(info.RemoteAddr, limit)
		return nil, errAdmission
	}
	a.halfOpen.Add(1)
	a.tunnels.Add(1)
	t := &admissionTicket{a: a}
	context.AfterFunc(ctx, func() {
		t.handshakeDone()
		a.tunnels.Add(-1)
	})
	ctx = context.WithValue(ctx, admissionTicket{}, t)
	return context.WithValue(ctx, handshakeStart{}, time.Now()), nil
}
