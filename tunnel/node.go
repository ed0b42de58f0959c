// Package tunnel links paired dyad daemons: a QUIC transport on which only
// pinned peers complete a handshake, a few connections per peer pair, one QUIC
// stream per forwarded TCP connection, every stream sealed by the codec with
// keys bound to the connection and the pairing.
//
// Lifecycle of a Node: New starts the QUIC listener and, for each peer with
// an endpoint, a dial loop. Update swaps in a new configuration: services
// apply to the next stream, added and removed peers get and lose their
// links, untouched peers keep their connections (a changed connection count
// applies in place). Shutdown stops new streams,
// waits for active ones up to its context, then closes everything.
package tunnel

import (
	"bytes"
	"cmp"
	"context"
	"crypto/fips140"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// QUIC application error codes, on connections and streams.
const (
	codeShutdown           quic.ApplicationErrorCode = 0x10 // daemon stopping
	codeReplaced           quic.ApplicationErrorCode = 0x11 // a newer connection to the same peer took over
	codePeerRemoved        quic.ApplicationErrorCode = 0x12 // peer no longer configured
	codeSetupFailed        quic.ApplicationErrorCode = 0x13 // codec keys could not be derived
	codeKeyChanged         quic.ApplicationErrorCode = 0x14 // the peer's pinned key changed: the old key's connections end
	codeTooManyConnections quic.ApplicationErrorCode = 0x15 // over the per-peer connection cap
	codeEndpointChanged    quic.ApplicationErrorCode = 0x16 // the peer's endpoint changed: redial there
	codePeerSilent         quic.ApplicationErrorCode = 0x17 // nothing heard from the peer for silentAfter keepalives

	codeStreamRefused quic.StreamErrorCode = 0x20 // request refused (status sent first)
	codeLocalReset    quic.StreamErrorCode = 0x21 // the local TCP side reset or failed
	codeRecord        quic.StreamErrorCode = 0x22 // a record was rejected (codec error)
	codeProtocol      quic.StreamErrorCode = 0x23 // bad request, response or trailing data
	codeLimit         quic.StreamErrorCode = 0x24 // the stream hit its idle timeout or maximum lifetime
)

// Node is one dyad daemon's tunnel endpoint.
type Node struct {
	// Stats counts what the node did.
	Stats Stats

	self atomic.Pointer[selfKeys] // this site's identity (two during a rotation's overlap)
	log  zerolog.Logger
	tr   *quic.Transport
	ln   *quic.Listener
	cfg  atomic.Pointer[snapshot]
	// updateMu serializes configuration changes: Update, and the pins a
	// peer's identity announcement and an overlap's end make.
	updateMu sync.Mutex
	// given is the last configuration Update (or New) was given, before
	// learned rotations (guarded by updateMu).
	given Config
	// learned are the rotations peers announced while this node ran
	// (guarded by updateMu), applied over every given configuration.
	learned map[string]KeyRotation
	ctx     context.Context // ends when the node closes
	cancel  context.CancelFunc

	mu     sync.Mutex // guards links and tcpLns
	links  map[string]*link
	tcpLns []net.Listener // ServeTCP's listeners
	gates  gates

	draining atomic.Bool
	streams  sync.WaitGroup // active streams, both roles
	loops    sync.WaitGroup // accept and dial loops

	audit   *audit.Auditor // nil: no audit events
	metrics *audit.Metrics // nil: no metrics
	drops   *dropCounter
	started time.Time

	admission *admission
	dark      *darkFilter

	enroller  atomic.Pointer[Enroller] // nil: no enrollment (SetEnroller)
	enrollSem chan struct{}            // enrollment connections served at once

	connSeq atomic.Uint64 // numbers connections (tconn.id)

	dropsMu    sync.Mutex // guards dropsSince
	dropsSince time.Time  // start of the window emitDrops reports
}

// handshakeStart keys the time a server-side handshake began in the
// connection's context.
type handshakeStart struct{}

// New starts a node on pc, a UDP socket the node takes over. Audit events
// and metrics go to aud (nil for none); operational logs to log.
func New(pc net.PacketConn, id *identity.Identity, cfg Config, log zerolog.Logger, aud *audit.Auditor) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.ValidateSelf(id.Public()); err != nil {
		return nil, err
	}
	if cfg.FIPS && !fips140.Enabled() {
		return nil, ErrFIPSInactive
	}
	self, err := newSelfKeys(id, cfg.Handover)
	if err != nil {
		return nil, err
	}
	resetKey := quic.StatelessResetKey(id.DerivedKey("quic stateless reset"))
	n := &Node{
		log:     log,
		links:   map[string]*link{},
		learned: map[string]KeyRotation{},
		// Made here, not in SetEnroller: the accept loop reads it
		// (TestEnrollConnectionServesNoStream, -race).
		enrollSem: make(chan struct{}, maxEnrollConns),
		given:     cfg,
		audit:     aud,
		metrics:   aud.Metrics(),
		started:   time.Now(),
	}
	n.self.Store(self)
	for _, r := range cfg.Learned {
		n.learned[r.Peer] = r
	}
	cfg = n.withLearned(cfg)
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("learned peer keys: %w", err)
	}
	n.drops = &dropCounter{n: n}
	n.admission = &admission{n: n, sources: map[netip.Prefix]*rate.Limiter{}}
	snap := newSnapshot(cfg)
	n.cfg.Store(snap)
	n.gates.apply(snap.cfg)
	n.dark = newDarkFilter(newDarkKey(id.Public()), n.drops.add)
	if self.prev != nil {
		n.dark.setKeys(n.dark.keys.Load().own, newDarkKey(self.prev.Public()))
	}
	n.dark.dark.Store(!snap.cfg.DisableDark)
	conn := pc
	if u, ok := pc.(*net.UDPConn); ok {
		conn = newDarkConn(u, n.dark, &n.Stats)
	} else if !snap.cfg.DisableDark {
		return nil, fmt.Errorf("dark listener: %T is not a UDP socket", pc)
	}
	n.tr = &quic.Transport{Conn: conn, StatelessResetKey: &resetKey, Tracer: n.drops,
		ConnectionIDGenerator: rotatingCIDs{n.dark}, DisableVersionNegotiationPackets: true,
		VerifySourceAddress: n.admission.retry, ConnContext: n.admission.admit}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.ln, err = n.tr.Listen(n.serverTLS(n.alpn(), true), n.quicConfig(snap.cfg))
	if err != nil {
		n.cancel()
		return nil, fmt.Errorf("quic listen on %v: %w", pc.LocalAddr(), err)
	}
	n.checkUDPBuffers(pc)
	n.loops.Add(2)
	go n.acceptLoop()
	go n.reportDrops(dropInterval)
	n.reconcile(nil, snap)
	n.scheduleOverlaps(snap)
	if self.prev != nil {
		// Restarted during our rotation's overlap: we do not know which
		// peers took the announcement, so each is dialed with the old key
		// and told again (taking it twice changes nothing).
		n.mu.Lock()
		for _, l := range n.links {
			l.acked.Store(false)
		}
		n.mu.Unlock()
		time.AfterFunc(time.Until(self.until), n.endOverlap)
	}
	return n, nil
}

// MaxStreamsCap is QUIC's own cap on the streams one peer may hold open
// with us at once (more wait for a slot); Limits.MaxStreams refuses below
// it with a typed answer.
const MaxStreamsCap = 4096

// Flow-control windows and the handshake bound (Config.Limits lists them).
const (
	maxStreamWindow  = 16 << 20
	maxConnWindow    = 32 << 20
	handshakeTimeout = 5 * time.Second
)

// quicConfig tunes quic-go for site-to-site links: windows for 1 Gbit/s at
// 100 ms RTT (12.5 MB in flight), no 0-RTT (forwarded data would be
// replayable), datagrams on for later UDP forwarding.
func (n *Node) quicConfig(c Config) *quic.Config {
	qc := &quic.Config{
		HandshakeIdleTimeout:           handshakeTimeout,
		MaxIdleTimeout:                 c.IdleTimeout,
		KeepAlivePeriod:                c.KeepAlive,
		InitialStreamReceiveWindow:     1 << 20,
		MaxStreamReceiveWindow:         maxStreamWindow,
		InitialConnectionReceiveWindow: 2 << 20,
		MaxConnectionReceiveWindow:     maxConnWindow,
		MaxIncomingStreams:             MaxStreamsCap,
		MaxIncomingUniStreams:          1, // the ready signal (awaitReady)
		Allow0RTT:                      false,
		InitialPacketSize:              initialPacket, // room for the dark listener's MAC
		EnableDatagrams:                true,
	}
	if c.CountConnectionDrops {
		qc.Tracer = n.drops.connTrace
	}
	return qc
}

// Started returns when the node started.
func (n *Node) Started() time.Time { return n.started }

// Addr returns the QUIC listening address.
func (n *Node) Addr() net.Addr { return n.ln.Addr() }

// Update swaps in a new configuration. Connections of peers whose name, key
// and endpoint are unchanged keep flowing.
func (n *Node) Update(cfg Config) error {
	n.updateMu.Lock()
	defer n.updateMu.Unlock()
	return n.updateLocked(cfg)
}

// updateLocked applies cfg with the rotations learned from peers over it
// (n.updateMu held).
func (n *Node) updateLocked(cfg Config) error {
	eff := n.withLearned(cfg)
	if err := eff.Validate(); err != nil {
		return err
	}
	if err := n.self.Load().validate(eff); err != nil {
		return err
	}
	n.given = cfg
	snap := newSnapshot(eff)
	old := n.cfg.Swap(snap)
	n.gates.apply(snap.cfg)
	n.dark.dark.Store(!snap.cfg.DisableDark)
	n.reconcile(old, snap)
	n.scheduleOverlaps(snap)
	return nil
}

// reconcile starts links for new or changed peers and stops removed ones:
// a removed peer's or an old key's connections, every one of them, close
// now (THREATS P1, TestRevocationClosesEveryConnection).
func (n *Node) reconcile(old, cur *snapshot) {
	n.mu.Lock()
	defer n.mu.Unlock()
	want := map[string]Peer{}
	for _, p := range cur.cfg.Peers {
		want[p.Name] = p
	}
	now := time.Now()
	for name, l := range n.links {
		p, ok := want[name]
		var code quic.ApplicationErrorCode
		switch {
		case !ok:
			code = codePeerRemoved
		case !p.accepted(l.current().Key, now):
			code = codeKeyChanged
		case p.Endpoint != l.peer.Endpoint, !p.sameTransport(l.peer):
			code = codeEndpointChanged
		default:
			// Same name and endpoint, and the key we knew is still
			// pinned (the same, or rotated from within its overlap):
			// the new key is dialed from now on, connections of keys no
			// longer pinned close, limits apply from the new snapshot,
			// a changed connection count here.
			l.setPeer(p)
			l.closeUnpinned(now)
			l.resize(cur.cfg.connectionsTo(p))
			continue
		}
		l.close(code)
		delete(n.links, name)
	}
	for name, p := range want {
		if _, ok := n.links[name]; ok {
			continue
		}
		l, err := n.newLink(p)
		if err != nil {
			n.log.Error().Err(err).Str("peer", name).Msg("cannot pair with peer")
			continue
		}
		n.links[name] = l
	}
}

func (n *Node) link(name string) *link {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.links[name]
}

// acceptLoop takes incoming tunnels: the handshake has already checked the
// client's key against the peers.
func (n *Node) acceptLoop() {
	defer n.loops.Done()
	for {
		qc, err := n.ln.Accept(n.ctx)
		if err != nil {
			return
		}
		n.adopt(quicConn{qc})
	}
}

// adopt binds an established QUIC connection to its peer's link.
func (n *Node) adopt(qc muxConn) {
	if t, ok := qc.Context().Value(admissionTicket{}).(*admissionTicket); ok {
		t.handshakeDone()
	}
	// Enrollment runs over QUIC only (the TCP listener offers dyad/2 alone).
	if q, ok := qc.(quicConn); ok {
		if key, err := enrollKey(q.Conn); !errors.Is(err, errNotEnroll) {
			if err != nil {
				qc.CloseWithError(codeSetupFailed, "no key")
				return
			}
			n.loops.Add(1) // Close waits for it (its context ends with the node's)
			go func() {
				defer n.loops.Done()
				n.serveEnroll(q.Conn, key)
			}()
			return
		}
	}
	state := qc.TLSState()
	var p Peer
	ok, fp := false, ""
	if len(state.PeerCertificates) > 0 {
		if key, err := identity.CertificateKey(state.PeerCertificates[0].Raw); err == nil {
			p, ok = n.peerByKey(key)
			fp = identity.Fingerprint(key)
		}
	}
	var l *link
	if ok {
		l = n.link(p.Name)
	}
	if l == nil { // the configuration changed during the handshake
		// Counted and audited like every refusal (THREATS P1, tested by
		// TestNotPairedAtAdoptRefused).
		n.refuseHandshake(qc.RemoteAddr(), fp, "not_paired", inbound)
		qc.CloseWithError(codePeerRemoved, "not paired")
		return
	}
	start, _ := qc.Context().Value(handshakeStart{}).(time.Time)
	local := n.self.Load().cur
	if t, ok := qc.Context().Value(admissionTicket{}).(*admissionTicket); ok && t.presented.Load() != nil {
		local = t.presented.Load() // the identity the handshake presented, should a rotation have come since
	}
	if err := l.attach(qc, local, false, -1, time.Since(start)); errors.Is(err, errRefused) {
		return
	} else if err != nil {
		n.log.Error().Err(err).Str("peer", p.Name).Msg("tunnel setup failed")
		qc.CloseWithError(codeSetupFailed, "setup failed")
		return
	}
	if err := qc.SignalReady(); err != nil {
		qc.CloseWithError(codeSetupFailed, "setup failed")
	}
}

// Shutdown stops taking new streams, waits for the active ones until ctx
// ends, then closes every tunnel and the transport.
func (n *Node) Shutdown(ctx context.Context) error {
	n.draining.Store(true)
	done := make(chan struct{})
	go func() { n.streams.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("drain: %w", ctx.Err())
	}
	n.Close()
	return err
}

// Close closes every tunnel and the transport at once.
func (n *Node) Close() {
	// Tunnels first, so each peer gets our CONNECTION_CLOSE: cancelling
	// first would end the serve loops, which forget their connection, and
	// closing the transport then drops it silently (the peer would wait
	// for its idle timeout).
	n.mu.Lock()
	for name, l := range n.links {
		l.close(codeShutdown)
		delete(n.links, name)
	}
	lns := n.tcpLns
	n.tcpLns = nil
	n.mu.Unlock()
	n.cancel()
	for _, ln := range lns {
		ln.Close()
	}
	n.ln.Close()
	n.tr.Close()
	n.loops.Wait()
}

// PeerStatus is one peer's state for the admin endpoints, the control
// socket's status and `dyad status`.
type PeerStatus struct {
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"` // of the key pinned for the peer
	// Endpoint is where we dial it; empty when only the peer dials us.
	Endpoint string `json:"endpoint,omitempty"`
	// State is "up" (a connection takes new streams) or "down".
	State     string `json:"state"`
	Connected bool   `json:"connected"` // State == "up"
	// StateSince is when the peer came up (from no live connection to
	// one) or went down (its last connection ended; the daemon's start if it
	// never came up).
	StateSince string `json:"state_since"`
	// LastHandshake is when the newest connection came up; empty if none
	// has since the daemon started.
	LastHandshake string `json:"last_handshake,omitempty"`
	// Remote and Since describe the connection new streams go to first
	// (the least loaded).
	Remote string `json:"remote,omitempty"`
	Since  string `json:"since,omitempty"`
	// Connections counts the peer's connections not yet ended: the live
	// ones and replaced ones still finishing their streams.
	Connections int `json:"connections"`
	// Conns lists them, oldest first.
	Conns []ConnStatus `json:"conns,omitempty"`
}

// ConnStatus is one QUIC connection of a peer.
type ConnStatus struct {
	// ID numbers the connection within this daemon's run, as the
	// tunnel.established and tunnel.closed events do (dyad.tunnel.connection).
	ID uint64 `json:"id"`
	// Index is the lowest number no other connection of the peer held
	// when this one came up (0, 1, …): the conn label of the
	// dyad.quic.connection.* metrics, so their series stay as few as the
	// peer's connections. A replacement takes over the index of the
	// connection it replaced once that one ended.
	Index  int    `json:"index"`
	Remote string `json:"remote"`
	Since  string `json:"since"` // its handshake
	// Role is "dialer" (we dialed it, in dial slot Slot) or "listener".
	Role string `json:"role"`
	Slot int    `json:"slot"`
	// Transport is "quic", or "tcp" where the TCP fallback carries it.
	Transport string `json:"transport"`
	// Protocol is the negotiated ALPN: dyad/1 is a previous-release peer.
	Protocol string `json:"protocol"`
	// Retired: replaced, takes no new stream, ends with its last one.
	Retired       bool    `json:"retired,omitempty"`
	ActiveStreams int64   `json:"active_streams"`
	Streams       int64   `json:"streams"`
	BytesSent     int64   `json:"bytes_sent"`     // plaintext, streams ended so far
	BytesReceived int64   `json:"bytes_received"` // plaintext, streams ended so far
	RTTMillis     float64 `json:"rtt_ms"`         // the transport's smoothed RTT (0 if unknown)
	// MinRTTMillis is QUIC's minimum RTT seen; absent over TCP.
	MinRTTMillis *float64 `json:"min_rtt_ms,omitempty"`
	// WireBytesSent and WireBytesReceived are the transport's own counts,
	// live: over QUIC every packet's payload, retransmissions and overhead
	// included; over TCP the TLS bytes written to and read from the socket.
	WireBytesSent     uint64 `json:"quic_bytes_sent"`
	WireBytesReceived uint64 `json:"quic_bytes_received"`
	// The congestion state below is quic-go's; a connection on the TCP
	// transport has none of it (the keys are absent: unknown, not 0).
	//
	// CongestionWindow is quic-go's sending congestion window in bytes
	// (QUIC packet overhead included): with the RTT it bounds what this
	// connection can send, window / RTT.
	CongestionWindow *uint64 `json:"cwnd_bytes,omitempty"`
	// PacketsSent and PacketsReceived count QUIC packets, live; sent
	// includes those later declared lost.
	PacketsSent     *uint64 `json:"packets_sent,omitempty"`
	PacketsReceived *uint64 `json:"packets_received,omitempty"`
	// PacketsLost and WireBytesLost count what quic-go declared lost. Not
	// monotonic: a packet declared lost that arrives after all is taken
	// back.
	PacketsLost   *uint64 `json:"packets_lost,omitempty"`
	WireBytesLost *uint64 `json:"quic_bytes_lost,omitempty"`
}

// Status reports each peer's tunnels, by peer name.
func (n *Node) Status() []PeerStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]PeerStatus, 0, len(n.links))
	for _, l := range n.links {
		cur := l.current()
		ps := PeerStatus{Name: l.peer.Name, Fingerprint: cur.Key.Fingerprint(), Endpoint: cur.Endpoint, State: "down", Conns: l.status()}
		ps.Connections = len(ps.Conns)
		l.mu.Lock()
		lastUp, upSince, downSince := l.lastUp, l.upSince, l.downSince
		l.mu.Unlock()
		if !lastUp.IsZero() {
			ps.LastHandshake = lastUp.UTC().Format(time.RFC3339)
		}
		ps.StateSince = downSince.UTC().Format(time.RFC3339)
		if tc, _ := l.pick(); tc != nil {
			ps.Connected, ps.State, ps.Remote, ps.Since = true, "up", tc.qc.RemoteAddr().String(), tc.since.UTC().Format(time.RFC3339)
			ps.StateSince = upSince.UTC().Format(time.RFC3339)
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// preferredDialer reports whether this side's key is the smaller of the
// pair: when both sides dial at once, the connection it dialed is kept.
func (n *Node) preferredDialer(p Peer) bool {
	me := n.self.Load().cur.Public()
	return bytes.Compare(me.Sign[:], p.Key.Sign[:]) < 0
}

var errNoTunnel = errors.New("no tunnel to peer")
