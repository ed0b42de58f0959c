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

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// admission bounds the handshakes quic-go takes on before TLS completes
// (THREATS P5, tested by TestHandshakeLimits, TestAdmissionFlood,
// TestAdmissionTableKeepsBusyBuckets and daemon's TestLimitFlood): a token
// bucket per source address, a cap on handshakes in progress and a cap on
// accepted tunnels. Under load it makes sources prove their address with a
// stateless Retry first, so spoofed floods cost quic-go no connection
// state.
//
// The half-open cap is shared fairly: one source (IPv4 address, IPv6 /64)
// holds at most a sixteenth of it, one prefix (IPv4 /24, IPv6 /48) an
// eighth, and a quarter is kept for the sources where a configured peer
// last completed a handshake, so that a flood from many prefixes of
// strangers cannot keep partners from reconnecting from where they were.
type admission struct {
	n *Node

	mu       sync.Mutex // guards the following fields
	sources  map[netip.Prefix]*rate.Limiter
	overflow *rate.Limiter           // shared by new sources while sources is full of busy ones
	swept    time.Time               // last sweep of sources
	bySource map[netip.Prefix]int    // half-open handshakes per source, entries > 0 only
	byPrefix map[netip.Prefix]int    // half-open handshakes per prefix, entries > 0 only
	known    map[string]netip.Prefix // peer name → source of its last authenticated inbound handshake

	halfOpen atomic.Int64 // changed under mu, read without it
	tunnels  atomic.Int64
}

// initLocked makes the maps a zero admission lacks (New sets sources only).
func (a *admission) initLocked() {
	if a.sources == nil {
		a.sources = map[netip.Prefix]*rate.Limiter{}
	}
	if a.bySource == nil {
		a.bySource, a.byPrefix, a.known = map[netip.Prefix]int{}, map[netip.Prefix]int{}, map[string]netip.Prefix{}
	}
}

// maxSources bounds the per-source buckets kept. When the table is full,
// the buckets that are full again (their sources went quiet, so forgetting
// them changes nothing) are forgotten, at most once per sweepEvery; a busy
// bucket is never reset. A new source that finds no room shares one
// overflow bucket with the other newcomers, except a configured peer's
// known source, which always gets its own (at most one per peer).
const (
	maxSources = 4096
	sweepEvery = 100 * time.Millisecond
)

// Limit names of the half-open shares (besides max_half_open).
const (
	limitHalfOpenSource = "half_open_per_source"
	limitHalfOpenPrefix = "half_open_per_prefix"
)

// admissionTicket is the handshake's place in the counts, kept in the
// connection's context so adopt can mark the handshake complete.
type admissionTicket struct {
	a         *admission
	src, pfx  netip.Prefix
	handshake sync.Once
	// presented is the identity our certificate was made from
	// (serverTLS): during a rotation, the connection's pairing secret.
	presented atomic.Pointer[identity.Identity]
	released  sync.Once
}

func (t *admissionTicket) handshakeDone() {
	t.handshake.Do(func() {
		a := t.a
		a.mu.Lock()
		defer a.mu.Unlock()
		a.halfOpen.Add(-1)
		decr(a.bySource, t.src)
		decr(a.byPrefix, t.pfx)
	})
}

func decr(m map[netip.Prefix]int, k netip.Prefix) {
	if m[k]--; m[k] <= 0 {
		delete(m, k)
	}
}

var errAdmission = errors.New("handshake refused by a listener limit")

// source keys an address: IPv4 hosts alone, IPv6 by /64 (one site's
// addresses).
func source(addr net.Addr) netip.Prefix { return sourcePrefix(addr, 32, 64) }

// prefix keys an address's network for the half-open share: IPv4 /24,
// IPv6 /48.
func prefix(addr net.Addr) netip.Prefix { return sourcePrefix(addr, 24, 48) }

func sourcePrefix(addr net.Addr, v4, v6 int) netip.Prefix {
	var ap netip.AddrPort
	if u, ok := addr.(*net.UDPAddr); ok {
		ap = u.AddrPort()
	} else if addr != nil {
		var err error
		if ap, err = netip.ParseAddrPort(addr.String()); err != nil {
			return netip.Prefix{}
		}
	}
	ip := ap.Addr().Unmap()
	bits := v4
	if ip.Is6() {
		bits = v6
	}
	p, _ := ip.Prefix(bits)
	return p
}

// halfOpenShares returns the per-source and per-prefix shares of the
// half-open cap c, and the slots only known sources may take.
func halfOpenShares(c int) (perSource, perPrefix, reserved int) {
	return max(1, c/16), max(1, c/8), c / 4
}

// authenticated records where peer completed a handshake with us: that
// source may use the half-open slots kept for partners.
func (a *admission) authenticated(peer string, remote net.Addr) {
	src := source(remote)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.initLocked()
	a.known[peer] = src
	// Forget removed peers: the map stays as small as the configuration.
	if len(a.known) > len(a.n.cfg.Load().cfg.Peers) {
		for name := range a.known {
			if !configured(a.n.cfg.Load().cfg.Peers, name) {
				delete(a.known, name)
			}
		}
	}
}

func configured(peers []Peer, name string) bool {
	for _, p := range peers {
		if p.Name == name {
			return true
		}
	}
	return false
}

// knownLocked reports whether src is where a configured peer last
// completed a handshake.
func (a *admission) knownLocked(src netip.Prefix) bool {
	for _, p := range a.n.cfg.Load().cfg.Peers {
		if k, ok := a.known[p.Name]; ok && k == src {
			return true
		}
	}
	return false
}

func (a *admission) bucket(addr net.Addr) *rate.Limiter {
	cfg := a.n.cfg.Load().cfg
	if cfg.HandshakesPerSecond < 0 {
		return nil
	}
	key := source(addr)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.bucketLocked(key, cfg.HandshakesPerSecond)
}

func (a *admission) bucketLocked(key netip.Prefix, perSecond float64) *rate.Limiter {
	a.initLocked()
	if b := a.sources[key]; b != nil {
		return b
	}
	burst := max(1, int(2*perSecond))
	if len(a.sources) >= maxSources {
		if now := time.Now(); now.Sub(a.swept) >= sweepEvery {
			a.swept = now
			a.sweep(now)
		}
	}
	if len(a.sources) >= maxSources && !a.knownLocked(key) {
		if a.overflow == nil {
			a.overflow = rate.NewLimiter(rate.Limit(perSecond), burst)
		}
		return a.overflow
	}
	b := rate.NewLimiter(rate.Limit(perSecond), burst)
	a.sources[key] = b
	return b
}

// sweep forgets the buckets that are full again (their sources went
// quiet): a full bucket is what a new one would be. Busy buckets stay,
// so no source's spent tokens come back early (THREATS P5, tested by
// TestAdmissionTableKeepsBusyBuckets).
func (a *admission) sweep(now time.Time) {
	for k, b := range a.sources {
		if b.TokensAt(now) >= float64(b.Burst()) {
			delete(a.sources, k)
		}
	}
	if a.overflow != nil && a.overflow.TokensAt(now) >= float64(a.overflow.Burst()) {
		a.overflow = nil
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
	t, err := a.enter(info.RemoteAddr)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, t.release)
	ctx = context.WithValue(ctx, admissionTicket{}, t)
	return context.WithValue(ctx, handshakeStart{}, time.Now()), nil
}

// enter takes a new handshake's places for remote (QUIC or TCP) or
// refuses it, audited; the caller releases the ticket when the connection
// ends.
func (a *admission) enter(remote net.Addr) (*admissionTicket, error) {
	cfg := a.n.cfg.Load().cfg
	t := &admissionTicket{a: a, src: source(remote), pfx: prefix(remote)}
	limit := ""
	if cfg.MaxTunnels > 0 && a.tunnels.Load() >= int64(cfg.MaxTunnels) {
		limit = "max_tunnels"
	} else {
		limit = a.takeHalfOpen(t, cfg)
	}
	if limit != "" {
		a.n.auditListenerLimited(remote, limit)
		return nil, errAdmission
	}
	a.tunnels.Add(1)
	return t, nil
}

// release gives back the ticket's places (once; later calls do nothing).
func (t *admissionTicket) release() {
	t.released.Do(func() {
		t.handshakeDone()
		t.a.tunnels.Add(-1)
	})
}

// takeHalfOpen checks the half-open cap and shares and the source's
// bucket, and takes a half-open place for t; it returns the limit that
// refused, or "".
func (a *admission) takeHalfOpen(t *admissionTicket, cfg Config) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.initLocked()
	if c := cfg.MaxHalfOpen; c > 0 {
		perSource, perPrefix, reserved := halfOpenShares(c)
		known := a.knownLocked(t.src)
		switch open := int(a.halfOpen.Load()); {
		case open >= c, open >= c-reserved && !known:
			return "max_half_open"
		case a.bySource[t.src] >= perSource:
			return limitHalfOpenSource
		case a.byPrefix[t.pfx] >= perPrefix && !known:
			return limitHalfOpenPrefix
		}
	}
	if cfg.HandshakesPerSecond >= 0 && !a.bucketLocked(t.src, cfg.HandshakesPerSecond).Allow() {
		return "handshakes_per_second"
	}
	a.halfOpen.Add(1)
	a.bySource[t.src]++
	a.byPrefix[t.pfx]++
	return ""
}
