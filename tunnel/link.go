package tunnel

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
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
// Several connections of the set carry new streams at once (each a TLS
// session with its own codec keys): a new stream goes to the least loaded
// live one (pick). A link whose peer has an endpoint dials Peer.Connections
// of them, one dial loop per slot; a slot whose connection dies is redialed
// alone while new streams go to the others. Connections accepted from the
// peer stay until they end or the peer's cap (MaxConnectionsPerPeer) refuses
// more: whoever dialed a connection decides when it goes.
//
// A connection is retired (takes no new stream, closes after its last
// stream or retireGrace) only when
//   - both sides dial each other: the side whose key is not preferred stands
//     down one of its own dialed slots for each connection the preferred side
//     dialed to it, so one connection per slot stays (balanceLocked);
//   - the peer speaks dyad/1 (the previous release, one connection per pair):
//     among its dyad/1 connections the newest replaces the older, with the
//     old collision rule (collide), exactly as that release does.
//
// A connection whose peer restarted dies by the peer's stateless reset,
// drawn by the heartbeat, not by replacement: so several daemons sharing
// one identity (deploy/README, scale-out) each keep their own connections
// (TestSharedIdentityNoReplaceLoop).
type link struct {
	n    *Node
	peer Peer                 // as the link was made: its name and endpoint never change
	cur  atomic.Pointer[Peer] // the peer as now configured: its keys change with a rotation
	// acked: the peer pinned our current identity (it took our
	// announcement, or no rotation of ours is in its overlap). Until then
	// we dial it presenting our previous identity, and announce the new
	// one on each connection (TestRotationPeerOfflineAtAnnouncement).
	acked atomic.Bool
	kick  chan struct{} // wakes a dial loop at once (buffered, 1)
	stop  context.CancelFunc
	ctx   context.Context // ends when the link is closed

	want atomic.Int32 // connections to dial (Peer.Connections with the default applied)
	fb   fallback     // transport: auto's state (fallback.go)

	mu      sync.Mutex          // guards the following fields
	conns   map[*tconn]struct{} // every connection of the peer not yet ended
	slots   map[int]*tconn      // our dialed connections by slot
	loops   int                 // dial loops started: slots [0, loops)
	changed chan struct{}       // closed and replaced whenever the set changes
	multi   bool                // the newest connection speaks dyad/2: dial every slot
	several bool                // "one identity from several places" was logged
	closeAs quic.ApplicationErrorCode
	// lastUp is when the newest connection came up (zero: never); upSince
	// when the link last went from no live connection to one; downSince
	// when it last had none left (its start until the first one).
	// /statusz and dyad status show them.
	lastUp, upSince, downSince time.Time
}

// tconn is one established QUIC connection to a peer with its codec keys.
type tconn struct {
	qc      muxConn
	sess    *codec.Session
	key     [32]byte           // the Ed25519 key the peer authenticated with
	local   *identity.Identity // the identity we authenticated with
	since   time.Time
	id      uint64       // node-wide sequence number, in audit events and /statusz
	slot    int          // our dial slot; -1 if accepted (or dialed outside the slots)
	dialed  bool         // we dialed it (rather than accepted it)
	legacy  bool         // negotiated dyad/1: the peer keeps one connection
	active  atomic.Int64 // streams in flight
	retired atomic.Bool  // replaced: takes no new stream, closes when the last one ends

	streams       atomic.Int64 // streams carried, both directions
	bytesSent     atomic.Int64 // plaintext bytes of ended streams, local → tunnel
	bytesReceived atomic.Int64 // and tunnel → local

	// index is the lowest number no other connection of the link held when
	// this one attached: the conn label of the per-connection metrics,
	// bounded by the peer's connections at once (THREATS P5), never an
	// address (TestConnCongestionStatus).
	index int
}

func (t *tconn) alive() bool { return t.qc.Context().Err() == nil }

// usable reports whether a new stream may go to t.
func (t *tconn) usable() bool { return t.alive() && !t.retired.Load() }

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
	// A key that cannot pair (a low-order X25519 key) is refused here,
	// not at each connection.
	secret, err := n.self.Load().cur.PairingSecret(p.Key)
	if err != nil {
		return nil, err
	}
	clear(secret)
	l := &link{n: n, peer: p, kick: make(chan struct{}, 1), changed: make(chan struct{}),
		conns: map[*tconn]struct{}{}, slots: map[int]*tconn{}, downSince: time.Now()}
	l.setPeer(p)
	l.acked.Store(true)
	l.ctx, l.stop = context.WithCancel(n.ctx)
	l.resize(n.cfg.Load().cfg.connectionsTo(p))
	return l, nil
}

// resize sets how many connections the link dials (a reload may change
// it) and starts the dial loops of new slots; a loop whose slot is no
// longer wanted retires its connection and idles.
func (l *link) resize(want int) {
	if l.peer.Endpoint == "" {
		return
	}
	l.want.Store(int32(want))
	l.mu.Lock()
	defer l.mu.Unlock()
	for ; l.loops < want; l.loops++ {
		l.n.loops.Add(1)
		go l.dialLoop(l.loops)
	}
	l.notifyLocked()
}

// pick returns the live connection with the fewest active streams (nil if
// none; ties go to the oldest) and a channel closed when the set changes.
func (l *link) pick() (*tconn, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pickLocked(), l.changed
}

// place is pick for a new stream: the stream counts among the connection's
// active ones from now on, under the lock that chose it, so streams placed
// at once spread over the set rather than all going where the first open
// has not yet completed (TestStreamPlacementConcurrent). The caller ends
// the count with tc.streamDone, whether or not the stream opens.
func (l *link) place() (*tconn, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	tc := l.pickLocked()
	if tc != nil {
		tc.active.Add(1)
	}
	return tc, l.changed
}

// pickLocked is pick's choice, with l.mu held.
func (l *link) pickLocked() *tconn {
	var best *tconn
	for tc := range l.conns {
		if !tc.usable() {
			continue
		}
		if best == nil || tc.active.Load() < best.active.Load() ||
			tc.active.Load() == best.active.Load() && tc.id < best.id {
			best = tc
		}
	}
	return best
}

// get is pick, kept for the tests' reading.
func (l *link) get() (*tconn, <-chan struct{}) { return l.pick() }

// live returns the connections that take new streams.
func (l *link) live() []*tconn {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*tconn
	for tc := range l.conns {
		if tc.usable() {
			out = append(out, tc)
		}
	}
	return out
}

// liveLocked reports whether a connection of the set takes new streams.
func (l *link) liveLocked() bool {
	for tc := range l.conns {
		if tc.usable() {
			return true
		}
	}
	return false
}

func (l *link) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// connections returns how many connections of the peer are not yet ended.
func (l *link) connections() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// accepted counts the connections the peer dialed to us, not yet ended:
// what MaxConnectionsPerPeer bounds.
func (l *link) acceptedLocked() int {
	c := 0
	for tc := range l.conns {
		if !tc.dialed {
			c++
		}
	}
	return c
}

// freeIndexLocked returns the lowest index no connection of the link holds.
func (l *link) freeIndexLocked() int {
	used := make(map[int]bool, len(l.conns))
	for tc := range l.conns {
		used[tc.index] = true
	}
	i := 0
	for used[i] {
		i++
	}
	return i
}

// status lists the link's connections, oldest first.
func (l *link) status() []ConnStatus {
	l.mu.Lock()
	conns := make([]*tconn, 0, len(l.conns))
	for tc := range l.conns {
		conns = append(conns, tc)
	}
	l.mu.Unlock()
	slices.SortFunc(conns, func(a, b *tconn) int { return cmp.Compare(a.id, b.id) })
	out := make([]ConnStatus, 0, len(conns))
	for _, tc := range conns {
		wireSent, wireReceived := tc.qc.WireBytes()
		cs := ConnStatus{ID: tc.id, Index: tc.index, Remote: tc.qc.RemoteAddr().String(), Since: tc.since.UTC().Format(time.RFC3339),
			Role: tc.role(), Slot: tc.slot, Transport: tc.qc.Transport(), Protocol: tc.qc.TLSState().NegotiatedProtocol, Retired: tc.retired.Load(),
			ActiveStreams: tc.active.Load(), Streams: tc.streams.Load(), BytesSent: tc.bytesSent.Load(),
			BytesReceived: tc.bytesReceived.Load(), RTTMillis: millis(tc.qc.RTT()),
			WireBytesSent: wireSent, WireBytesReceived: wireReceived}
		if qc, ok := tc.qc.(quicConn); ok {
			st := qc.ConnectionStats()
			minRTT := millis(st.MinRTT)
			cs.MinRTTMillis, cs.CongestionWindow = &minRTT, &st.CongestionWindow
			cs.PacketsSent, cs.PacketsReceived, cs.PacketsLost, cs.WireBytesLost = &st.PacketsSent, &st.PacketsReceived, &st.PacketsLost, &st.BytesLost
		}
		out = append(out, cs)
	}
	return out
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (t *tconn) role() string {
	if t.dialed {
		return "dialer"
	}
	return "listener"
}

// errRefused says attach refused the connection itself, having closed,
// counted and audited it: the caller has nothing left to report.
var errRefused = errors.New("connection refused")

// current returns the peer as now configured (its keys).
func (l *link) current() Peer { return *l.cur.Load() }

func (l *link) setPeer(p Peer) { l.cur.Store(&p) }

// closeUnpinned closes the connections whose peer key is no longer pinned
// at now (a rotation's overlap ended): THREATS P1, tested by
// TestRotationOldKeyRefusedAfterOverlap.
func (l *link) closeUnpinned(now time.Time) {
	p := l.current()
	l.mu.Lock()
	var cut []*tconn
	for tc := range l.conns {
		if _, ok := p.accepts(tc.key, now); !ok {
			cut = append(cut, tc)
		}
	}
	l.mu.Unlock()
	for _, tc := range cut {
		tc.qc.CloseWithError(codeKeyChanged, "key no longer pinned")
	}
}

// closeLocal closes the connections on which we authenticated with id
// (our previous identity, at the end of its overlap).
func (l *link) closeLocal(id *identity.Identity) {
	l.mu.Lock()
	var cut []*tconn
	for tc := range l.conns {
		if tc.local == id {
			cut = append(cut, tc)
		}
	}
	l.mu.Unlock()
	for _, tc := range cut {
		tc.qc.CloseWithError(codeKeyChanged, "our previous identity retired")
	}
}

// attach derives the codec keys of a new connection and adds it to the
// peer's set, where it takes new streams at once. An accepted connection
// beyond the peer's cap is refused (THREATS P5, TestConnectionsPerPeerCapped).
// slot is the dial slot of a connection we dialed (-1 otherwise).
// local is the identity we authenticated with.
func (l *link) attach(qc muxConn, local *identity.Identity, dialed bool, slot int, handshake time.Duration) error {
	state := qc.TLSState()
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
	// The pairing secret is that of the two keys this connection
	// authenticated: during a rotation's overlap, either side may hold
	// connections of its old key and of its new one.
	peerKey, _ := l.current().accepts(key, time.Now())
	pairing, err := local.PairingSecret(peerKey)
	if err != nil {
		return fmt.Errorf("pairing with %s: %w", peerKey.Fingerprint(), err)
	}
	defer clear(pairing)
	secret, err := state.ExportKeyingMaterial(exporterLabel, nil, codec.SecretSize)
	if err != nil {
		return fmt.Errorf("tls exporter: %w", err)
	}
	sess, err := codec.NewSession(secret, pairing, codec.Config{Suite: l.n.cfg.Load().cfg.Suite, OnKeyUpdate: l.n.keyUpdateHook(l.peer.Name)})
	clear(secret)
	if err != nil {
		return err
	}
	tc := &tconn{qc: qc, sess: sess, key: key, local: local, since: time.Now(), dialed: dialed, slot: slot,
		legacy: state.NegotiatedProtocol != ALPN, id: l.n.connSeq.Add(1)}
	if !dialed {
		tc.slot = -1
	}
	capacity := l.n.cfg.Load().cfg.MaxConnectionsPerPeer
	l.mu.Lock()
	if l.ctx.Err() != nil {
		code := l.closeAs
		l.mu.Unlock()
		qc.CloseWithError(code, "peer removed")
		return errRefused
	}
	if !dialed && capacity > 0 && l.acceptedLocked() >= capacity {
		l.mu.Unlock()
		l.n.auditConnectionRefused(l, qc.RemoteAddr(), limitConnsPerPeer)
		qc.CloseWithError(codeTooManyConnections, limitConnsPerPeer)
		return errRefused
	}
	var retire []*tconn
	if tc.legacy {
		retire = l.replaceLegacyLocked(tc)
	}
	l.multi = !tc.legacy
	other := l.elsewhereLocked(tc)
	if !l.liveLocked() {
		l.upSince = tc.since
	}
	tc.index = l.freeIndexLocked()
	l.conns[tc] = struct{}{}
	l.lastUp = tc.since
	if dialed && slot >= 0 {
		l.slots[slot] = tc
	}
	retire = append(retire, l.balanceLocked()...)
	l.notifyLocked()
	l.mu.Unlock()
	for _, old := range retire {
		old.retire()
	}
	if other != nil {
		// A peer that restarted dials from a new port while its old
		// connections live on here until a heartbeat draws their stateless
		// reset (one keepalive): only connections from two places that
		// both outlive that are several daemons at once.
		time.AfterFunc(3*l.n.cfg.Load().cfg.KeepAlive, func() { l.reportSeveral(tc, other) })
	}
	l.n.Stats.TunnelsEstablished.Add(1)
	if q, ok := qc.(quicConn); ok {
		l.n.dark.tunnelAt(q, 1)
	}
	l.n.auditEstablished(l, tc, state, handshake)
	l.n.loops.Add(2)
	go l.serve(tc)
	go l.heartbeat(tc)
	if self := l.n.self.Load(); self.prev != nil && local == self.prev {
		// The peer knows us by our previous identity: tell it the new one
		// on this connection (TestRotationPeerOfflineAtAnnouncement).
		l.n.loops.Add(1)
		go func() {
			defer l.n.loops.Done()
			l.n.announceTo(l.ctx, l, tc, self)
		}()
	}
	return nil
}

// replaceLegacyLocked applies the previous release's rule to a new dyad/1
// connection: it replaces the peer's older dyad/1 connections, unless both
// sides dialed at once and the older one is the preferred side's (collide).
// It returns the connections to retire.
func (l *link) replaceLegacyLocked(tc *tconn) []*tconn {
	var out []*tconn
	for old := range l.conns {
		if !old.legacy || !old.usable() {
			continue
		}
		if l.collide(old, tc) {
			out = append(out, tc)
			continue
		}
		out = append(out, old)
	}
	return out
}

// elsewhereLocked returns another live connection the peer dialed to us
// from another place than tc (nil if none, or once reported): one daemon
// dials all its QUIC connections from one socket.
func (l *link) elsewhereLocked(tc *tconn) *tconn {
	if tc.dialed || l.several {
		return nil
	}
	for o := range l.conns {
		if !o.dialed && o.alive() && !samePlace(o.qc, tc.qc) {
			return o
		}
	}
	return nil
}

// samePlace reports whether two connections could come from one daemon:
// over QUIC, one socket, so one address and port; over TCP each connection
// has its own source port, and the host is all that tells places apart
// (instances behind one address cannot be told apart: not reported).
// TestOneDialerTCPNotSeveralPlaces, TestSharedIdentityNoReplaceLoop.
func samePlace(a, b muxConn) bool {
	if a.Transport() == TransportQUIC && b.Transport() == TransportQUIC {
		return a.RemoteAddr().String() == b.RemoteAddr().String()
	}
	return hostOf(a.RemoteAddr()) == hostOf(b.RemoteAddr())
}

// hostOf is an address without its port.
func hostOf(a net.Addr) string {
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// reportSeveral logs, once per link, that the peer's identity holds live
// connections from two places: several instances sharing one identity
// (deploy/README, scale-out), each keeping its own connections, or a
// copied key (TestSharedIdentityNoReplaceLoop).
func (l *link) reportSeveral(a, b *tconn) {
	if !a.alive() || !b.alive() {
		return
	}
	l.mu.Lock()
	first := !l.several
	l.several = true
	l.mu.Unlock()
	if first {
		l.n.log.Warn().Str("peer", l.peer.Name).Str("remote", a.qc.RemoteAddr().String()).
			Str("other_remote", b.qc.RemoteAddr().String()).
			Msg("one peer identity is connected from several places (scale-out instances sharing a key, or a copied key)")
	}
}

// balanceLocked resolves both sides dialing each other (dyad/2): the side
// whose key is not preferred keeps only want minus the preferred side's
// connections of its own dialed slots, the highest slots going first, and
// its dial loops stand down for them (mayDial). The preferred side changes
// nothing, so the two never chase each other (TestBothEndpointsSettle).
// It returns the connections to retire.
func (l *link) balanceLocked() []*tconn {
	if l.peer.Endpoint == "" || l.n.preferredDialer(l.current()) {
		return nil
	}
	allow := int(l.want.Load()) - l.theirsLocked()
	var out []*tconn
	for slot, tc := range l.slots {
		if slot >= allow && !tc.legacy && tc.usable() {
			out = append(out, tc)
		}
	}
	return out
}

// theirsLocked counts the live dyad/2 connections the peer dialed to us.
func (l *link) theirsLocked() int {
	c := 0
	for tc := range l.conns {
		if !tc.dialed && !tc.legacy && tc.usable() {
			c++
		}
	}
	return c
}

// heartbeatSize is a heartbeat datagram's payload: with QUIC's headers the
// packet is longer than the 42 bytes quic-go wants before it answers one
// with a stateless reset.
const heartbeatSize = 32

// Dead-peer detection, in keepalive periods. A live peer sends at least
// one packet per period: its own heartbeat, and the ACK of ours within its
// ACK delay. Once nothing has arrived for probeAfter periods, the heartbeat
// probes every probeEvery period (each probe draws an ACK from a live
// peer); after silentAfter periods plus one smoothed RTT of silence the
// connection is declared dead and closed (close reason peer_silent).
// Checked every checkEvery period, a packet is seen at most one check
// after it came, so a peer that stopped is noticed within silentAfter + 2
// checkEvery = 2.5 periods plus an RTT, under three (README, "Tunnel
// health"; TestDeadPeerNoticed), not after the 30 s idle timeout; a path
// that pauses for two periods and comes back is heard again within 2.125
// periods, before silentAfter (TestFaultPathPaused, 10 s at 5 s).
const (
	probeAfter  = 1.0
	probeEvery  = 0.0625
	silentAfter = 2.375
	checkEvery  = 0.0625
)

// heartbeat asks the peer for an answer on tc every keepalive period (more
// often while the peer is silent): over QUIC a datagram, whose ACK is the
// answer; over TCP a yamux ping (muxConn.Beat). It discards the peer's
// beats, and closes the connection once nothing at all has come from the
// peer for silentAfter periods, until the connection ends. The rule is the
// same on both transports: what counts as "heard" is any packet (QUIC) or
// any byte read from the TCP socket (TestDeadPeerNoticed, both transports).
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
	periods := func(k time.Duration, f float64) time.Duration { return time.Duration(float64(k) * f) }
	received, heard := tc.qc.Received(), time.Now()
	sent, sending := time.Now(), true
	if tc.qc.RTT() == 0 {
		sent = time.Time{} // a transport without an RTT yet (TCP): beat at once, so status has one
	}
	for {
		k := l.n.cfg.Load().cfg.KeepAlive
		ctx, cancel := context.WithTimeout(tc.qc.Context(), periods(k, checkEvery))
		tc.qc.DrainBeats(ctx) // until the check period is over, or the connection
		cancel()
		if tc.qc.Context().Err() != nil {
			return
		}
		now, got := time.Now(), tc.qc.Received()
		silent := now.Sub(heard)
		if got != received {
			received, heard, silent = got, now, 0
		} else if silent > periods(k, silentAfter)+tc.qc.RTT() {
			l.n.log.Warn().Str("peer", l.peer.Name).Str("remote", tc.qc.RemoteAddr().String()).Uint64("connection", tc.id).
				Str("transport", tc.qc.Transport()).Float64("silent_s", silent.Seconds()).Float64("keepalive_s", k.Seconds()).
				Msg("peer silent: tunnel connection down (the partner's daemon stopped, or the path dropped)")
			l.n.Stats.TunnelsSilent.Add(1)
			tc.qc.CloseWithError(codePeerSilent, "peer silent")
			return
		}
		every := k
		if silent > periods(k, probeAfter) {
			every = periods(k, probeEvery)
		}
		if sending && now.Sub(sent) >= every {
			// An error means the connection is closing or the peer takes
			// no datagrams: its ACKs of QUIC's own keep-alives still show
			// it alive.
			sent, sending = now, tc.qc.Beat() == nil
		}
	}
}

// collisionWindow: two connections to the same peer that come up within
// this time of each other were dialed at once by both sides.
const collisionWindow = 2 * time.Second

// collide reports whether old should stay and cur go, for dyad/1 peers
// (replaceLegacyLocked). A newer connection normally replaces an older one
// (the peer restarted and dialed again). When both sides dialed at once,
// both keep the connection dialed by the side with the smaller key, so they
// agree without talking.
func (l *link) collide(old, cur *tconn) bool {
	if cur.since.Sub(old.since) > collisionWindow {
		return false
	}
	weArePreferred := l.n.preferredDialer(l.current())
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
	if q, ok := tc.qc.(quicConn); ok {
		l.n.dark.tunnelAt(q, -1)
	}
	l.mu.Lock()
	delete(l.conns, tc)
	if !l.liveLocked() {
		l.downSince = time.Now()
	}
	if tc.dialed && l.slots[tc.slot] == tc {
		delete(l.slots, tc.slot)
	}
	l.notifyLocked()
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

// wake asks a dial loop to try now rather than after its back-off.
func (l *link) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// conn waits for a live tunnel until ctx ends, waking the dial loop once,
// and returns the least loaded one with a stream placed on it (place): the
// caller ends it with tc.streamDone.
func (l *link) conn(ctx context.Context) (*tconn, error) {
	for woke := false; ; woke = true {
		tc, changed := l.place()
		if tc != nil {
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

// mayDial says whether slot should hold a connection now: it is wanted;
// past slot 0 only once the peer is known to speak dyad/2 (a dyad/1 peer
// keeps one connection and would replace the others); and, when the peer
// is the preferred dialer and dials us too, only the slots its connections
// leave (balanceLocked).
func (l *link) mayDial(slot int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	want := int(l.want.Load())
	if slot > 0 && !l.multi {
		return false
	}
	if !l.n.preferredDialer(l.current()) {
		want -= l.theirsLocked()
	}
	return slot < want
}

// slotConn returns slot's live connection (nil if none) and a channel
// closed when the set changes.
func (l *link) slotConn(slot int) (*tconn, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	tc := l.slots[slot]
	if tc != nil && !tc.alive() {
		tc = nil
	}
	return tc, l.changed
}

// dialLoop keeps slot's connection to the peer up while the link lives and
// the slot is wanted (mayDial); each slot redials on its own, so one dead
// connection never holds up the others.
func (l *link) dialLoop(slot int) {
	defer l.n.loops.Done()
	backoff := minBackoff
	for l.ctx.Err() == nil {
		tc, changed := l.slotConn(slot)
		if tc != nil && !tc.legacy && slot >= int(l.want.Load()) {
			tc.retire() // a reload lowered the count (retire is idempotent)
		}
		if tc != nil || !l.mayDial(slot) {
			var done <-chan struct{}
			if tc != nil {
				done = tc.qc.Context().Done()
			}
			probe, stop := l.upgradeDue(slot, tc)
			select {
			case <-done:
			case <-changed:
			case <-l.ctx.Done():
			case <-probe:
				l.upgrade(slot, tc)
			}
			stop()
			continue
		}
		err := l.dial(slot)
		if err == nil {
			backoff = minBackoff
			continue
		}
		if l.ctx.Err() != nil {
			return
		}
		ev := l.n.log.Warn().Err(err).Str("peer", l.peer.Name).Str("endpoint", l.peer.Endpoint).Int("slot", slot).
			Float64("retry_in_s", backoff.Seconds())
		var idle *quic.IdleTimeoutError
		timedOut := errors.As(err, &idle) || errors.Is(err, context.DeadlineExceeded)
		switch {
		case timedOut && errors.Is(err, errNotReady):
			// The handshake verified the partner's key against the pin:
			// only the ready signal is missing, so the "no answer" hint
			// (a wrong pin among its causes) would mislead (THREATS P10,
			// tested by TestDialNotReadyHint).
			ev = ev.Str("hint", "the partner completed the handshake (it holds the pinned key) but did not confirm the tunnel in time: its daemon is overloaded or stalled, or the path lost packets after the handshake; dialing again")
		case timedOut:
			// The dark listener answers only a first flight whose MAC is
			// keyed from its own key: silence is all a wrong pin shows.
			ev = ev.Str("pinned_fingerprint", l.current().Key.Fingerprint()).
				Str("hint", "no answer: the partner's daemon is down, a firewall drops UDP, or the key pinned for this peer is not the partner's (compare pinned_fingerprint with its `dyad check`); `dyad ping` tells more")
		}
		ev.Msg("dial failed")
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

// dialTimeout bounds one dial: the handshake and the listener's ready
// signal. A variable only so that tests can shorten it.
var dialTimeout = 10 * time.Second

// errNotReady says a dial completed its handshake, so the peer holds the
// pinned key, but the listener did not signal that it adopted the
// connection: it refused us, stalled, or the signal was lost.
var errNotReady = errors.New("peer did not accept us")

// dial dials the peer once for slot (-1: outside the slots, as tests do),
// over the transport the link uses now (dialTransport).
func (l *link) dial(slot int) error {
	ctx, cancel := context.WithTimeout(l.ctx, dialTimeout)
	defer cancel()
	start := time.Now()
	local, cert := l.n.self.Load().forPeer(l.acked.Load())
	qc, err := l.dialTransport(ctx, l.current(), cert)
	if err != nil {
		return err
	}
	if err := qc.AwaitReady(ctx); err != nil {
		qc.CloseWithError(codeSetupFailed, "no ready signal")
		return fmt.Errorf("%w: %w", errNotReady, err)
	}
	if err := l.attach(qc, local, true, slot, time.Since(start)); err != nil {
		qc.CloseWithError(codeSetupFailed, "setup failed")
		return err
	}
	return nil
}

// dialQUIC completes a QUIC handshake with p (the link's peer as it is
// now), presenting cert, waiting at most until ctx ends.
func (l *link) dialQUIC(ctx context.Context, p Peer, cert tls.Certificate) (muxConn, error) {
	addr, err := net.ResolveUDPAddr("udp", p.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", p.Endpoint, err)
	}
	l.n.dark.expect(addr, p.Key) // our first flight carries its MAC
	qc, err := l.n.tr.Dial(ctx, addr, l.n.clientTLS(cert, p, addr), l.n.quicConfig(l.n.cfg.Load().cfg))
	if err != nil {
		return nil, err
	}
	return quicConn{qc}, nil
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
