package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// Dial back-off: doubled after each failure up to maxBackoff, with ±25%
// jitter so that many daemons restarting together do not dial in step.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 15 * time.Second
)

// retireGrace bounds how long a replaced connection lives on for the
// streams it still carries: it takes no new stream, and closes when its last
// stream ends or this long after it was replaced, whichever comes first
// (README, "Limits"; TestRetiredConnectionRefusesStreams).
const retireGrace = 30 * time.Second

// link is this node's relation with one peer: the pairing secret and the
// set of QUIC connections authenticated with the peer's key. The link owns
// every one of them, so that one place (close) ends them all: a reload that
// removes the peer or changes its key cuts every connection the old key
// opened, not only the newest (THREATS P1, TestRevocationClosesEveryConnection).
//
// One connection of the set, cur, carries new streams. The others are
// retired: replaced by a newer connection, they accept no new stream and
// close after their last stream or retireGrace. A link whose peer has an
// endpoint runs a dial loop that keeps cur up.
type link struct {
	n       *Node
	peer    Peer
	pairing []byte
	kick    chan struct{} // wakes the dial loop at once (buffered, 1)
	stop    context.CancelFunc
	ctx     context.Context // ends when the link is closed

	mu      sync.Mutex          // guards the following fields
	conns   map[*tconn]struct{} // every connection of the peer not yet ended, cur included
	cur     *tconn              // the connection new streams go to; nil if none
	changed chan struct{}       // closed and replaced whenever cur changes
	closeAs quic.ApplicationErrorCode
}

// tconn is one established QUIC connection to a peer with its codec keys.
type tconn struct {
	qc      *quic.Conn
	sess    *codec.Session
	key     [32]byte // the Ed25519 key the peer authenticated with
	since   time.Time
	dialed  bool         // we dialed it (rather than accepted it)
	active  atomic.Int64 // streams in flight
	retired atomic.Bool  // replaced: takes no new stream, closes when the last one ends

	streams       atomic.Int64 // streams carried, both directions
	bytesSent     atomic.Int64 // plaintext bytes of ended streams, local → tunnel
	bytesReceived atomic.Int64 // and tunnel → local
}

func (t *tconn) alive() bool { return t.qc.Context().Err() == nil }

func (t *tconn) streamStarted() {
	t.active.Add(1)
	t.streams.Add(1)
}

func (t *tconn) streamDone() {
	if t.active.Add(-1) == 0 && t.retired.Load() {
		t.qc.CloseWithError(codeReplaced, "replaced")
	}
}

// retire stops new streams on the connection and closes it once its last
// stream ends, or after retireGrace.
func (t *tconn) retire() {
	if t.retired.Swap(true) {
		return
	}
	if t.active.Load() == 0 {
		t.qc.CloseWithError(codeReplaced, "replaced")
		return
	}
	// Closing a connection that already ended is a no-op.
	time.AfterFunc(retireGrace, func() { t.qc.CloseWithError(codeReplaced, "replaced: grace over") })
}

func (n *Node) newLink(p Peer) (*link, error) {
	secret, err := n.id.PairingSecret(p.Key)
	if err != nil {
		return nil, err
	}
	l := &link{n: n, peer: p, pairing: secret, kick: make(chan struct{}, 1), changed: make(chan struct{}),
		conns: map[*tconn]struct{}{}}
	l.ctx, l.stop = context.WithCancel(n.ctx)
	if p.Endpoint != "" {
		n.loops.Add(1)
		go l.dialLoop()
	}
	return l, nil
}

// get returns the current tunnel (nil if none) and a channel closed when it
// changes.
func (l *link) get() (*tconn, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur, l.changed
}

func (l *link) setLocked(tc *tconn) {
	l.cur = tc
	close(l.changed)
	l.changed = make(chan struct{})
}

// connections returns how many connections of the peer are not yet ended.
func (l *link) connections() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// errRefused says attach refused the connection itself, having closed,
// counted and audited it: the caller has nothing left to report.
var errRefused = errors.New("connection refused")

// attach derives the codec keys of a new connection, adds it to the peer's
// set and makes it the one new streams go to; a previous one is retired,
// not cut. An accepted connection beyond the peer's cap is refused
// (THREATS P5, TestConnectionsPerPeerCapped).
func (l *link) attach(qc *quic.Conn, dialed bool, handshake time.Duration) error {
	state := qc.ConnectionState().TLS
	var key [32]byte
	if len(state.PeerCertificates) > 0 {
		if k, err := identity.CertificateKey(state.PeerCertificates[0].Raw); err == nil && len(k) == len(key) {
			copy(key[:], k)
		}
	}
	// The handshake checked the key already; this guards the seam between
	// that check and a reload (THREATS P1).
	if !l.n.cfg.Load().pinned(l.peer.Name, key) {
		l.n.refuseHandshake(qc.RemoteAddr(), identity.Fingerprint(key[:]), "not_paired", directionOf(dialed))
		qc.CloseWithError(codePeerRemoved, "not paired")
		return errRefused
	}
	secret, err := state.ExportKeyingMaterial(exporterLabel, nil, codec.SecretSize)
	if err != nil {
		return fmt.Errorf("tls exporter: %w", err)
	}
	sess, err := codec.NewSession(secret, l.pairing, codec.Config{Suite: l.n.cfg.Load().cfg.Suite, OnKeyUpdate: l.n.keyUpdateHook(l.peer.Name)})
	clear(secret)
	if err != nil {
		return err
	}
	tc := &tconn{qc: qc, sess: sess, key: key, since: time.Now(), dialed: dialed}
	capacity := l.n.cfg.Load().cfg.MaxConnectionsPerPeer
	l.mu.Lock()
	if l.ctx.Err() != nil {
		code := l.closeAs
		l.mu.Unlock()
		qc.CloseWithError(code, "peer removed")
		return errRefused
	}
	if !dialed && capacity > 0 && len(l.conns) >= capacity {
		l.mu.Unlock()
		l.n.auditConnectionRefused(l, qc.RemoteAddr(), limitConnsPerPeer)
		qc.CloseWithError(codeTooManyConnections, limitConnsPerPeer)
		return errRefused
	}
	old := l.cur
	keepOld := old != nil && old.alive() && l.collide(old, tc)
	if !keepOld {
		l.setLocked(tc)
	}
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	switch {
	case keepOld:
		tc.retire()
	case old != nil:
		old.retire()
	}
	l.n.Stats.TunnelsEstablished.Add(1)
	l.n.dark.tunnelAt(qc, 1)
	l.n.auditEstablished(l, tc, state, handshake)
	l.n.loops.Add(2)
	go l.serve(tc)
	go l.heartbeat(tc)
	return nil
}

// heartbeatSize is a heartbeat datagram's payload: with QUIC's headers the
// packet is longer than the 42 bytes quic-go wants before it answers one
// with a stateless reset.
const heartbeatSize = 32

// heartbeat sends a QUIC datagram on tc every keepalive period and
// discards the peer's, until the connection ends.
//
// A peer that crashed and restarted answers a packet of a connection it no
// longer knows with a stateless reset (keyed from its identity), which ends
// the stale tunnel at once; but quic-go answers only packets longer than
// 42 bytes, and QUIC's keep-alive PINGs are about 33. Without a bigger
// packet a stale tunnel, and every stream cut on it, lasted until the idle
// timeout (30 s) or until a new local connection's first bytes drew the
// reset, that connection being reset with it (TestFaultStaleTunnelEnds).
func (l *link) heartbeat(tc *tconn) {
	defer l.n.loops.Done()
	var beat [heartbeatSize]byte
	for {
		ctx, cancel := context.WithTimeout(tc.qc.Context(), l.n.cfg.Load().cfg.KeepAlive)
		for {
			if _, err := tc.qc.ReceiveDatagram(ctx); err != nil {
				break // the period is over, or the connection
			}
		}
		cancel()
		if tc.qc.Context().Err() != nil {
			return
		}
		// An error means the connection is closing (or the peer takes no
		// datagrams); either way there is nothing left to probe.
		if err := tc.qc.SendDatagram(beat[:]); err != nil {
			return
		}
	}
}

// collisionWindow: two connections to the same peer that come up within
// this time of each other were dialed at once by both sides.
const collisionWindow = 2 * time.Second

// collide reports whether old should stay and cur go. A newer connection
// normally replaces an older one (the peer restarted and dialed again). When
// both sides dialed at once, both keep the connection dialed by the side
// with the smaller key, so they agree without talking.
func (l *link) collide(old, cur *tconn) bool {
	if cur.since.Sub(old.since) > collisionWindow {
		return false
	}
	weArePreferred := l.n.preferredDialer(l.peer)
	return old.dialed == weArePreferred && cur.dialed != weArePreferred
}

// serve accepts the peer's streams until the connection ends, then takes
// the connection out of the link's set and audits its end.
func (l *link) serve(tc *tconn) {
	defer l.n.loops.Done()
	for {
		// Accepting on the connection's own context (not the node's): a
		// stream is admitted only while its connection is in force.
		s, err := tc.qc.AcceptStream(tc.qc.Context())
		if err != nil {
			// The connection is closing; its context, which says why,
			// may end a moment after the stream map.
			<-tc.qc.Context().Done()
			break
		}
		l.n.streams.Add(1)
		tc.streamStarted()
		go func() {
			defer l.n.streams.Done()
			defer tc.streamDone()
			l.n.serveStream(l, tc, s)
		}()
	}
	l.n.dark.tunnelAt(tc.qc, -1)
	l.mu.Lock()
	delete(l.conns, tc)
	if l.cur == tc {
		l.setLocked(nil)
	}
	l.mu.Unlock()
	// The connection's streams end with it; wait (bounded) so that the
	// event counts their bytes.
	for i := 0; tc.active.Load() > 0 && i < 100; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	l.n.auditTunnelClosed(l, tc)
}

// close stops the dial loop and closes every connection of the peer with
// code (THREATS P1, TestRevocationClosesEveryConnection): the current one,
// retired ones, and any whose handshake completes later (attach refuses it).
// Their streams are reset with them.
func (l *link) close(code quic.ApplicationErrorCode) {
	l.mu.Lock()
	l.closeAs = code
	l.stop()
	conns := make([]*tconn, 0, len(l.conns))
	for tc := range l.conns {
		conns = append(conns, tc)
	}
	l.mu.Unlock()
	for _, tc := range conns {
		tc.qc.CloseWithError(code, "")
	}
}

// wake asks the dial loop to try now rather than after its back-off.
func (l *link) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// conn waits for a live tunnel until ctx ends, waking the dial loop once.
func (l *link) conn(ctx context.Context) (*tconn, error) {
	for woke := false; ; woke = true {
		tc, changed := l.get()
		if tc != nil && tc.alive() {
			return tc, nil
		}
		if !woke {
			l.wake()
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w %s: %w", errNoTunnel, l.peer.Name, ctx.Err())
		case <-time.After(50 * time.Millisecond): // a dead tc is dropped by serve soon
		}
	}
}

// dialLoop keeps a tunnel to the peer up while the link lives.
func (l *link) dialLoop() {
	defer l.n.loops.Done()
	backoff := minBackoff
	for l.ctx.Err() == nil {
		if tc, changed := l.get(); tc != nil && tc.alive() {
			select {
			case <-tc.qc.Context().Done():
			case <-changed:
			case <-l.ctx.Done():
			}
			continue
		}
		err := l.dial()
		if err == nil {
			backoff = minBackoff
			continue
		}
		if l.ctx.Err() != nil {
			return
		}
		l.n.log.Warn().Err(err).Str("peer", l.peer.Name).Str("endpoint", l.peer.Endpoint).
			Dur("retry_in", backoff).Msg("dial failed")
		// A kick (a local connection waiting) cuts the back-off short,
		// but attempts stay at least minBackoff apart.
		time.Sleep(minBackoff)
		l.sleep(jitter(backoff))
		backoff = min(2*backoff, maxBackoff)
	}
}

// sleep waits d, or less if the link is kicked or stopped.
func (l *link) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-l.kick:
	case <-l.ctx.Done():
	}
}

func jitter(d time.Duration) time.Duration {
	return d*3/4 + rand.N(d/2+1)
}

func (l *link) dial() error {
	addr, err := net.ResolveUDPAddr("udp", l.peer.Endpoint)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", l.peer.Endpoint, err)
	}
	l.n.dark.expect(addr, l.peer.Key) // our first flight carries its MAC
	snap := l.n.cfg.Load()
	ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	qc, err := l.n.tr.Dial(ctx, addr, l.n.clientTLS(l.n.cert, l.peer, addr), l.n.quicConfig(snap.cfg))
	if err != nil {
		return err
	}
	if err := awaitReady(ctx, qc); err != nil {
		qc.CloseWithError(codeSetupFailed, "no ready signal")
		return fmt.Errorf("peer did not accept us: %w", err)
	}
	if err := l.attach(qc, true, time.Since(start)); err != nil {
		qc.CloseWithError(codeSetupFailed, "setup failed")
		return err
	}
	return nil
}

// In TLS 1.3 a client finishes its handshake before the server has checked
// the client's certificate, so a dialer cannot tell from Dial alone that the
// peer accepted its key. The accepting side therefore opens one
// unidirectional stream carrying the byte readyByte once it has adopted the
// connection; the dialer waits for it before using the tunnel, and a peer
// that refused us closes the connection instead.
const readyByte = 0x01

func awaitReady(ctx context.Context, qc *quic.Conn) error {
	s, err := qc.AcceptUniStream(ctx)
	if err != nil {
		return err
	}
	var b [1]byte
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(s, b[:]); err != nil {
		return err
	}
	if b[0] != readyByte {
		return fmt.Errorf("unexpected ready byte %#x", b[0])
	}
	return nil
}

func signalReady(qc *quic.Conn) error {
	s, err := qc.OpenUniStream()
	if err != nil {
		return err
	}
	if _, err := s.Write([]byte{readyByte}); err != nil {
		return err
	}
	return s.Close()
}
