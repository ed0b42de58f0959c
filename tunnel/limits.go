package tunnel

import (
	"context"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/dyad-tunnel/dyad/codec"
)

// Limits bound what a peer, or all peers together on one service, may make
// this daemon do (THREATS P5). A zero field inherits: a peer's from
// Config.Limits, Config.Limits' from DefaultLimits; a service's from
// nothing (a service is unlimited where it sets nothing). A negative field
// means unlimited. Where a peer and a service both set a limit, both are
// enforced: the stricter one decides.
type Limits struct {
	// StreamsPerSecond and StreamBurst bound new streams the peer opens to
	// us (token bucket; burst zero means twice the rate, at least 1).
	StreamsPerSecond float64
	StreamBurst      int
	// MaxStreams bounds the streams the peer has open to us at once.
	MaxStreams int
	// BytesPerSecond bounds the plaintext bytes carried each way, over all
	// streams of the peer (both roles) or of the service.
	BytesPerSecond int64
	// DialTimeout bounds the dial of the service's upstream.
	DialTimeout time.Duration
	// IdleTimeout resets a stream that carried no byte either way for
	// this long; MaxLifetime resets a stream this old.
	IdleTimeout time.Duration
	MaxLifetime time.Duration
}

// DefaultLimits are the per-peer limits when the configuration sets none:
// generous for an API partner, small enough that one partner cannot take
// the daemon's memory or file descriptors (README, "Limits").
var DefaultLimits = Limits{
	StreamsPerSecond: 500,
	StreamBurst:      1000,
	MaxStreams:       1024,
	BytesPerSecond:   -1,
	IdleTimeout:      15 * time.Minute,
	MaxLifetime:      -1,
}

// inherit fills l's zero fields from d.
func (l Limits) inherit(d Limits) Limits {
	pick := func(v *float64, w float64) {
		if *v == 0 {
			*v = w
		}
	}
	pickInt := func(v *int64, w int64) {
		if *v == 0 {
			*v = w
		}
	}
	pick(&l.StreamsPerSecond, d.StreamsPerSecond)
	streamBurst, maxStreams := int64(l.StreamBurst), int64(l.MaxStreams)
	pickInt(&streamBurst, int64(d.StreamBurst))
	pickInt(&maxStreams, int64(d.MaxStreams))
	l.StreamBurst, l.MaxStreams = int(streamBurst), int(maxStreams)
	pickInt(&l.BytesPerSecond, d.BytesPerSecond)
	for _, p := range []struct{ v, w *time.Duration }{{&l.DialTimeout, &d.DialTimeout}, {&l.IdleTimeout, &d.IdleTimeout}, {&l.MaxLifetime, &d.MaxLifetime}} {
		if *p.v == 0 {
			*p.v = *p.w
		}
	}
	return l
}

// validate names the first impossible value; where says whose limits.
func (l Limits) validate(where string) error {
	switch {
	case math.IsNaN(l.StreamsPerSecond) || math.IsInf(l.StreamsPerSecond, 0):
		return fmt.Errorf("%s: streams_per_second is not a number", where)
	case l.BytesPerSecond > 0 && l.BytesPerSecond < 1024:
		return fmt.Errorf("%s: bytes_per_second %d is below the 1 KiB/s floor", where, l.BytesPerSecond)
	}
	return nil
}

// gate enforces one set of limits: a peer's or a service's. Its counters
// and buckets live across reloads; Update changes their settings in place.
type gate struct {
	name   string // the peer or service
	active atomic.Int64

	mu  sync.Mutex // guards lim
	lim Limits

	streams  *rate.Limiter // new streams
	send     *rate.Limiter // bytes local → tunnel
	received *rate.Limiter // bytes tunnel → local
}

// newGate makes a gate whose buckets start full.
func newGate(name string, l Limits) *gate {
	sr, sb := streamBucket(l)
	br, bb := byteBucket(l)
	return &gate{name: name, lim: l, streams: rate.NewLimiter(sr, sb),
		send: rate.NewLimiter(br, bb), received: rate.NewLimiter(br, bb)}
}

// set applies new limits, keeping the buckets' state.
func (g *gate) set(l Limits) {
	g.mu.Lock()
	g.lim = l
	g.mu.Unlock()
	sr, sb := streamBucket(l)
	g.streams.SetLimit(sr)
	g.streams.SetBurst(sb)
	br, bb := byteBucket(l)
	for _, b := range []*rate.Limiter{g.send, g.received} {
		b.SetLimit(br)
		b.SetBurst(bb)
	}
}

func streamBucket(l Limits) (rate.Limit, int) {
	if l.StreamsPerSecond <= 0 {
		return rate.Inf, 0
	}
	burst := l.StreamBurst
	if burst <= 0 {
		burst = max(1, int(2*l.StreamsPerSecond))
	}
	return rate.Limit(l.StreamsPerSecond), burst
}

// byteBucket lets a bucket take one whole record at a time (WaitN fails
// above the burst) and about 100 ms of traffic, so pacing stays smooth.
func byteBucket(l Limits) (rate.Limit, int) {
	if l.BytesPerSecond <= 0 {
		return rate.Inf, 0
	}
	return rate.Limit(l.BytesPerSecond), int(max(l.BytesPerSecond/10, codec.MaxPayload))
}

func (g *gate) limits() Limits {
	if g == nil {
		return Limits{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lim
}

// Limit names, as refusals and rate_limit.exceeded events report them.
const (
	limitStreamRate   = "streams_per_second"
	limitStreams      = "max_streams"
	limitBandwidth    = "bytes_per_second"
	limitIdle         = "idle_timeout"
	limitLifetime     = "max_lifetime"
	limitConnsPerPeer = "max_connections_per_peer"
	limitRequest      = "request_timeout"
)

// enter takes a slot for a new stream, or says which limit refused it.
// A caller that got "" must call leave.
func (g *gate) enter() string {
	l := g.limits()
	if l.MaxStreams > 0 && g.active.Add(1) > int64(l.MaxStreams) {
		g.active.Add(-1)
		return limitStreams
	} else if l.MaxStreams <= 0 {
		g.active.Add(1)
	}
	if !g.streams.Allow() {
		g.active.Add(-1)
		return limitStreamRate
	}
	return ""
}

func (g *gate) leave() { g.active.Add(-1) }

// enterGates takes a new stream's slots at its peer's gate and its
// service's (either may be nil), or names the limit that refused it and
// whose it is ("peer" or "service"). The slots taken are returned either
// way, for the caller to leave.
func enterGates(peer, service *gate) (held []*gate, limit, scope string) {
	for i, g := range []*gate{peer, service} {
		if g == nil {
			continue
		}
		if limit = g.enter(); limit != "" {
			return held, limit, [...]string{"peer", "service"}[i]
		}
		held = append(held, g)
	}
	return held, "", ""
}

// gates holds the node's gates by peer and service name.
type gates struct {
	mu       sync.Mutex
	peers    map[string]*gate
	services map[string]*gate
}

// apply makes the gates match c (defaults applied): new names get a gate,
// kept names get the new limits, removed names are forgotten (streams that
// hold one finish with it).
func (gs *gates) apply(c Config) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	sync := func(m map[string]*gate, want map[string]Limits) map[string]*gate {
		out := map[string]*gate{}
		for name, l := range want {
			if g := m[name]; g != nil {
				g.set(l)
				out[name] = g
			} else {
				out[name] = newGate(name, l)
			}
		}
		return out
	}
	peers, services := map[string]Limits{}, map[string]Limits{}
	for _, p := range c.Peers {
		peers[p.Name] = p.Limits.inherit(c.Limits)
	}
	for _, s := range c.Services {
		services[s.Name] = s.Limits
	}
	gs.peers, gs.services = sync(gs.peers, peers), sync(gs.services, services)
}

func (gs *gates) peer(name string) *gate {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	return gs.peers[name]
}

func (gs *gates) service(name string) *gate {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	return gs.services[name]
}

// strictest returns the shortest positive duration, or 0 if none is set.
func strictest(ds ...time.Duration) time.Duration {
	var out time.Duration
	for _, d := range ds {
		if d > 0 && (out == 0 || d < out) {
			out = d
		}
	}
	return out
}

// meter paces one direction of a stream through the buckets of its gates
// and notes activity for the idle timeout. It adds no allocation per
// record: WaitN only allocates a timer when it has to wait.
type meter struct {
	ctx     context.Context // ends with the stream
	buckets []*rate.Limiter
	last    *atomic.Int64 // unix nanos of the last byte either way
	limited func()        // called once, the first time a bucket delays the stream
	once    *sync.Once
}

func (m *meter) wait(n int) error {
	m.last.Store(time.Now().UnixNano())
	for _, b := range m.buckets {
		if b.Limit() == rate.Inf {
			continue
		}
		if r := b.ReserveN(time.Now(), n); r.OK() {
			d := r.Delay()
			if d == 0 {
				continue
			}
			if m.limited != nil {
				m.once.Do(m.limited)
			}
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-m.ctx.Done():
				t.Stop()
				r.Cancel()
				return m.ctx.Err()
			}
		}
	}
	return nil
}

// meteredReader paces reads from the local socket (local → tunnel).
type meteredReader struct {
	r io.Reader
	m meter
}

func (mr *meteredReader) Read(p []byte) (int, error) {
	n, err := mr.r.Read(p)
	if n > 0 {
		if werr := mr.m.wait(n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// meteredWriter paces writes to the local socket (tunnel → local); the
// stream's flow control then slows the peer down.
type meteredWriter struct {
	w io.Writer
	m meter
}

func (mw *meteredWriter) Write(p []byte) (int, error) {
	if err := mw.m.wait(len(p)); err != nil {
		return 0, err
	}
	return mw.w.Write(p)
}

// guard is what one stream is held to: the buckets that pace it and its
// timeouts. The zero guard lets the stream run unmetered.
type guard struct {
	send, received []*rate.Limiter // local → tunnel, tunnel → local
	idle, lifetime time.Duration
	limited        func()             // called the first time a bucket delays the stream
	expired        func(limit string) // called when the idle timeout or lifetime ends the stream
}

// errIdle and errLifetime end a stream that hit its idle timeout or its
// maximum lifetime.
var (
	errIdle     = &LimitError{Limit: limitIdle}
	errLifetime = &LimitError{Limit: limitLifetime}
)

// LimitError says which limit ended or refused work.
type LimitError struct{ Limit string }

func (e *LimitError) Error() string { return "limit reached: " + e.Limit }

// wrap returns the reader and writer the pump uses in place of src (read
// local → tunnel, paced by the send buckets) and dst (written tunnel →
// local, paced by the received ones), and a stop function. abort ends the
// stream with a LimitError; ctx ends the meters' waits.
func (g guard) wrap(ctx context.Context, src io.Reader, dst io.Writer, abort func(error)) (io.Reader, io.Writer, func()) {
	if len(g.send) == 0 && len(g.received) == 0 && g.idle <= 0 && g.lifetime <= 0 {
		return src, dst, func() {}
	}
	last := new(atomic.Int64)
	start := time.Now()
	last.Store(start.UnixNano())
	once := new(sync.Once)
	msrc := &meteredReader{src, meter{ctx, g.send, last, g.limited, once}}
	mdst := &meteredWriter{dst, meter{ctx, g.received, last, g.limited, once}}
	if g.idle <= 0 && g.lifetime <= 0 {
		return msrc, mdst, func() {}
	}
	// One timer per stream, re-armed for whichever deadline comes first.
	var timer atomic.Pointer[time.Timer]
	next := func(now time.Time) (time.Duration, error) {
		d := time.Duration(math.MaxInt64)
		if g.lifetime > 0 {
			left := g.lifetime - now.Sub(start)
			if left <= 0 {
				return 0, errLifetime
			}
			d = left
		}
		if g.idle > 0 {
			left := g.idle - now.Sub(time.Unix(0, last.Load()))
			if left <= 0 {
				return 0, errIdle
			}
			d = min(d, left)
		}
		return d, nil
	}
	var check func()
	check = func() {
		d, err := next(time.Now())
		if err != nil {
			if g.expired != nil {
				g.expired(err.(*LimitError).Limit)
			}
			abort(err)
			return
		}
		if t := timer.Load(); t != nil && ctx.Err() == nil {
			t.Reset(d)
		}
	}
	first, _ := next(start)
	timer.Store(time.AfterFunc(first, check))
	return msrc, mdst, func() { timer.Load().Stop() }
}

// guard builds the guard of one stream with peer and, when it serves one
// of ours, service (either gate may be nil).
func (n *Node) guard(peer, service string, pg, sg *gate) guard {
	var g guard
	var idles, lifetimes []time.Duration
	scope := ""
	for i, gt := range []*gate{pg, sg} {
		if gt == nil {
			continue
		}
		l := gt.limits()
		if l.BytesPerSecond > 0 {
			g.send, g.received = append(g.send, gt.send), append(g.received, gt.received)
			if scope == "" {
				scope = [...]string{"peer", "service"}[i]
			}
		}
		idles, lifetimes = append(idles, l.IdleTimeout), append(lifetimes, l.MaxLifetime)
	}
	g.idle, g.lifetime = strictest(idles...), strictest(lifetimes...)
	// Counted, not audited here: the stream's close event says why it ended.
	g.expired = n.Stats.countLimited
	if len(g.send) > 0 {
		g.limited = func() { n.auditLimited(peer, service, scope, limitBandwidth) }
	}
	return g
}
