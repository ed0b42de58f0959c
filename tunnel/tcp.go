package tunnel

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// The TCP transport: TLS 1.3 over TCP, with the same certificate, the same
// pin check (serverTLS and clientTLS, THREATS P1), the same hybrid
// post-quantum key exchange (crypto/tls's default X25519MLKEM768) and the
// ALPN dyad/2 alone (codec/FORMAT.md, "TCP transport"); streams are
// multiplexed by yamux inside TLS. Everything after the handshake is the
// link and stream code QUIC uses (muxConn).
//
// The control stream: the listener opens the first yamux stream as soon as
// the session exists. It carries the ready byte (SignalReady), then
// control messages of ctlSize bytes both ways, since yamux has neither
// connection close codes nor stream resets (codec/FORMAT.md, "TCP
// transport"):
//
//	type (1) | yamux stream id (4, big-endian) | code (8, big-endian)
//	type 1 close:         the sender closes the connection with code (id 0)
//	type 2 reset_stream:  the sender stops sending on stream id (then sends its FIN)
//	type 3 stop_sending:  the sender reads no more of stream id; the receiver
//	                      stops sending and sends its FIN, as quic-go answers
//	                      STOP_SENDING with RESET_STREAM
//
// So a peer's stream errors carry the same codes as over QUIC, as
// *quic.StreamError values (refusedByPeer, the audit's close reasons).

// Control message types and size.
const (
	ctlClose       = 1
	ctlResetStream = 2
	ctlStopSending = 3
	ctlSize        = 13
)

// codeLingering closes a TCP connection whose peer keeps streams open
// that we stopped reading (stop_sending) past lingerTimeout, or more of
// them at once than its max_streams: a dyad peer ends each within a round
// trip, and each may hold a full window here (THREATS P5, tested by
// TestTCPStopSendingHonoured).
const codeLingering quic.ApplicationErrorCode = 0x17

// codeControl closes a TCP connection whose peer sent a malformed control
// message.
const codeControl quic.ApplicationErrorCode = 0x18

// lingerCheck is how often a stream we stopped reading is checked for the
// peer's FIN; lingerTimeout is how long the peer has.
const (
	lingerCheck   = time.Second
	lingerTimeout = 10 * time.Second
	// resetFINDelay separates a reset stream's FIN from its reset
	// (CancelWrite); well under lingerTimeout, which the peer allows.
	resetFINDelay = time.Second
)

// minTCPWindow is yamux's fixed initial stream window, the least it takes.
const minTCPWindow = 256 << 10

// shortLinkWindow is the least window of a stream, for short links
// (loopback, a LAN) where 1 Gbit/s times the round trip is less. yamux's
// receiver grants credit per half window read, so at 256 KiB a bulk
// stream was stop-and-wait every two 64 KiB frames: a window update (a
// frame, a write(2) and a hand-off on both sides) per 128 KiB, and one
// frame in five cut at the window's edge (TestTCPShortLinkWindowUpdates).
// 2 MiB leaves two milliseconds of slack at 8 Gbit/s and one update per
// MiB: each update waits for the session's send loop on the reader's
// path, and at 1 MiB they were ~2,000 hand-offs per GB. A busy stream holds
// at most about twice its window in yamux's buffer, and the receive budget
// bounds them all (README "Memory").
const shortLinkWindow = 2 << 20

// tcpBudget is what one TCP connection's streams may hold for us together
// (rxGate): what the peer's max_connections_per_peer QUIC connections
// could, C * W_conn (README, "Memory").
func tcpBudget(c Config) int64 {
	conns := c.MaxConnectionsPerPeer
	if conns <= 0 {
		conns = DefaultMaxConnectionsPerPeer
	}
	return int64(conns) * maxConnWindow
}

// tcpLinkRate is the rate one stream's window is sized for: 1 Gbit/s.
const tcpLinkRate = 1e9 / 8 // bytes per second

// tcpWindow is the yamux receive window of one stream, sized for the link:
// tcpLinkRate at the handshake's round trip rtt (5 MB at 40 ms), between
// shortLinkWindow and QUIC's stream window (16 MiB, enough for 100 ms),
// within the connection's budget. yamux's windows do not grow with use as
// quic-go's do, so a window sized for a long link on a short one only
// holds memory: 16 MiB windows on loopback took the bench's eight bulk
// streams to 640 MiB of RSS. The budget, not windows times streams, bounds
// the memory (rxGate); before the gate a window had to be
// C * W_conn / max_streams, 256 KiB with the defaults, and one stream
// moved 16 Mbit/s on a 40 ms link with 1% loss.
func tcpWindow(c Config, rtt time.Duration) uint32 {
	w := int64(tcpLinkRate * rtt.Seconds())
	return uint32(max(min(w, maxStreamWindow, tcpBudget(c)), shortLinkWindow))
}

// yamuxConfig tunes a yamux session like quicConfig tunes QUIC: keepalives
// every KeepAlive, a connection that cannot write or answer a ping for
// IdleTimeout ends, a stream open unanswered for the handshake bound ends
// the session, and half-closed streams live as long as QUIC's (no close
// timeout).
func (n *Node) yamuxConfig(c Config, window uint32) *yamux.Config {
	yc := yamux.DefaultConfig()
	yc.AcceptBacklog = acceptBacklog
	yc.EnableKeepAlive = true
	yc.KeepAliveInterval = c.KeepAlive
	yc.ConnectionWriteTimeout = c.IdleTimeout
	yc.MaxStreamWindowSize = window
	yc.StreamOpenTimeout = c.IdleTimeout
	yc.StreamCloseTimeout = 0
	yc.LogOutput = nil
	yc.Logger = yamuxLogger{n.log}
	return yc
}

// acceptBacklog is how many of the peer's new streams yamux queues for
// AcceptStream; it refuses (resets) more. It also bounds the control
// messages kept for streams not accepted yet (tcpConn.early).
const acceptBacklog = 256

// frameWriter is the connection as yamux sees it. It sends each yamux
// data frame's header and body in one write(2): yamux writes them
// separately, and crypto/tls writes each record of at most 16 KiB on its
// own, so a frame carrying a 64 KiB codec record took five system calls
// even with header and body joined; the socket under TLS (sockConn)
// collects a frame's records (the header its own small record) and
// writes them at once. Only yamux's send loop writes, one frame at a time.
// Reads go through rx, the connection's receive budget.
type frameWriter struct {
	net.Conn // the TLS connection
	sock     *sockConn
	rx       *rxGate
	cc       *ccRestarter // nil: the socket's congestion control is left alone
	hdr      [yamuxHeader]byte
	held     bool // hdr waits for its body
}

// Read hands yamux the peer's bytes, within the receive budget.
func (w *frameWriter) Read(b []byte) (int, error) { return w.rx.read(w.Conn, b) }

// Close ends the connection and releases a read waiting for budget:
// yamux waits for its reader when it closes. A frame stuck in write(2)
// (a peer that reads nothing) is cut by closing the socket first, as
// crypto/tls does for a Write in progress, rather than making the close
// alert wait for it.
func (w *frameWriter) Close() error {
	w.rx.close()
	w.sock.cut()
	return w.Conn.Close()
}

// yamuxHeader is the size of a yamux frame header (version, type, flags,
// stream id, length).
const yamuxHeader = 12

func (w *frameWriter) Write(p []byte) (int, error) {
	if !w.held {
		w.rx.sent(p) // a header: bodies come with held set
	}
	if !w.held && len(p) == yamuxHeader && p[1] == 0 && binary.BigEndian.Uint32(p[8:]) > 0 {
		copy(w.hdr[:], p) // a data frame's header: its body comes next
		w.held = true
		w.cc.dataFrame(time.Now())
		return len(p), nil
	}
	if !w.held {
		return w.Conn.Write(p)
	}
	w.held = false
	w.sock.startBatch()
	n, err := w.Conn.Write(w.hdr[:])
	if err == nil {
		n, err = w.Conn.Write(p)
	}
	if ferr := w.sock.flush(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}

// yamuxLogger sends yamux's own messages to the debug log.
type yamuxLogger struct{ log zerolog.Logger }

func (y yamuxLogger) Print(v ...any)                 { y.log.Debug().Msg(fmt.Sprint(v...)) }
func (y yamuxLogger) Printf(format string, v ...any) { y.log.Debug().Msgf(format, v...) }
func (y yamuxLogger) Println(v ...any)               { y.log.Debug().Msg(fmt.Sprint(v...)) }

// tcpConn is a TLS connection carrying a yamux session (muxConn).
type tcpConn struct {
	conn   net.Conn // the TLS connection
	sess   *yamux.Session
	rx     *rxGate      // bounds what sess holds for our readers
	cc     *ccRestarter // the socket's congestion control restart (nil: none), for tests
	state  tls.ConnectionState
	ctx    context.Context
	cancel context.CancelCauseFunc

	ctlMu sync.Mutex    // guards ctl
	ctl   *yamux.Stream // the control stream (nil on the dialer until AwaitReady)

	wire    *wireCount   // bytes on the socket below TLS
	rtt     atomic.Int64 // nanoseconds, the last answered Beat
	pinging atomic.Bool  // a Beat's ping is outstanding

	watched   chan struct{} // closed when watch has ended
	closeOnce sync.Once
	deaf      atomic.Bool // tests play a peer that ignores stop_sending
	maxLinger int64       // the peer's max_streams: streams it may leave lingering

	server bool // the listener's side: the peer's streams have odd IDs

	mu        sync.Mutex              // guards streams, lingering, early and accepted
	streams   map[uint32]*tcpStream   // open streams, for control messages
	lingering map[*tcpStream]struct{} // streams we stopped reading, not yet ended by the peer
	early     map[uint32]earlyCtl     // control messages for the peer's streams not accepted yet
	accepted  uint32                  // the highest stream ID of the peer's we accepted
}

// earlyCtl is what the peer said of one of its streams before we accepted
// it: yamux queues a new stream until AcceptStream, and a client that
// resets its stream at once sends the reset before the stream is ours.
// Dropped, the reset left the stream to its FIN a second later (mid-record:
// counted and audited as truncation); kept, it reaches the stream when it
// is accepted, as quic-go delivers a reset with the stream it ends
// (TestTCPControlBeforeAccept).
type earlyCtl struct {
	reset, stop         bool
	resetCode, stopCode quic.StreamErrorCode
}

var _ muxConn = (*tcpConn)(nil)

// errTCPClosed is the cause of a TCP connection that ended without a
// close code (the TCP connection broke, or yamux gave up on it).
var errTCPClosed = errors.New("tcp transport ended")

// newTCPConn wraps a completed TLS handshake in a yamux session; the
// listener (server) opens the control stream at once. ctx carries the
// admission ticket and handshake start, as QUIC's connection context does.
// sock is the socket below TLS (sockConn): it counts the bytes for
// status and the heartbeat, and batches each frame's records.
// rtt is the TLS handshake's duration, about one round trip (more on the
// listener, which starts its clock at accept), for the window (tcpWindow).
func (n *Node) newTCPConn(ctx context.Context, tc *tls.Conn, sock *sockConn, server bool, rtt time.Duration) (*tcpConn, error) {
	return n.newMuxConn(ctx, tc, tc.ConnectionState(), sock, server, rtt)
}

// wireCount counts a socket's bytes both ways.
type wireCount struct{ sent, received atomic.Uint64 }

// newMuxConn is newTCPConn on any connection with its TLS state (the fuzz
// target runs it on a pipe); a nil sock puts one over tc itself.
func (n *Node) newMuxConn(ctx context.Context, tc net.Conn, state tls.ConnectionState, sock *sockConn, server bool, rtt time.Duration) (*tcpConn, error) {
	if sock == nil {
		sock = newSockConn(tc, &wireCount{})
		tc = sock
	}
	wire := sock.wire
	snap := n.cfg.Load()
	var window uint32 = minTCPWindow
	limits := snap.cfg.Limits
	if len(state.PeerCertificates) > 0 {
		if key, err := identity.CertificateKey(state.PeerCertificates[0].Raw); err == nil {
			if p, ok := n.peerByKey(key); ok {
				limits = p.Limits.inherit(snap.cfg.Limits)
			}
		}
	}
	window = tcpWindow(snap.cfg, rtt)
	maxLinger := int64(limits.MaxStreams)
	if maxLinger <= 0 {
		maxLinger = MaxStreamsCap
	}
	yc := n.yamuxConfig(snap.cfg, window)
	var (
		sess *yamux.Session
		err  error
	)
	rx := newRxGate(tcpBudget(snap.cfg))
	fw := &frameWriter{Conn: tc, sock: sock, rx: rx, cc: newCCRestarter(sock.Conn)}
	if server {
		sess, err = yamux.Server(fw, yc)
	} else {
		sess, err = yamux.Client(fw, yc)
	}
	if err != nil {
		return nil, fmt.Errorf("yamux session with %v: %w", tc.RemoteAddr(), err)
	}
	c := &tcpConn{conn: tc, sess: sess, rx: rx, cc: fw.cc, state: state, wire: wire, watched: make(chan struct{}), maxLinger: maxLinger,
		server: server, streams: map[uint32]*tcpStream{}, lingering: map[*tcpStream]struct{}{}, early: map[uint32]earlyCtl{}}
	c.ctx, c.cancel = context.WithCancelCause(ctx)
	if server {
		ctl, err := sess.OpenStream()
		if err != nil {
			sess.Close()
			return nil, fmt.Errorf("control stream to %v: %w", tc.RemoteAddr(), err)
		}
		c.ctl = ctl
		go c.watch(ctl)
	}
	// Only CloseWithError and watch end the context, and both close the
	// session themselves; this ends it when the session dies first.
	go func() {
		<-sess.CloseChan()
		// The peer's close code may still sit in the control stream's
		// buffer: let watch read it first (bounded).
		select {
		case <-c.watched:
		case <-time.After(time.Second):
		}
		c.cancel(errTCPClosed)
	}()
	return c, nil
}

// watch reads the peer's control messages until the connection ends.
func (c *tcpConn) watch(ctl *yamux.Stream) {
	defer close(c.watched)
	var b [ctlSize]byte
	for {
		if _, err := io.ReadFull(gated{ctl, c.rx}, b[:]); err != nil {
			c.cancel(errTCPClosed)
			c.sess.Close()
			return
		}
		id := binary.BigEndian.Uint32(b[1:5])
		code := binary.BigEndian.Uint64(b[5:])
		switch b[0] {
		case ctlClose:
			c.cancel(&quic.ApplicationError{Remote: true, ErrorCode: quic.ApplicationErrorCode(code)})
			c.sess.Close()
			return
		case ctlResetStream, ctlStopSending:
			c.mu.Lock()
			s := c.streams[id]
			if s == nil {
				c.keepEarly(b[0], id, quic.StreamErrorCode(code))
			}
			c.mu.Unlock()
			if s == nil {
				continue
			}
			if b[0] == ctlResetStream {
				s.remoteReset(quic.StreamErrorCode(code))
			} else if !c.deaf.Load() {
				s.remoteStop(quic.StreamErrorCode(code))
			}
		default:
			c.CloseWithError(codeControl, "bad control message")
			return
		}
	}
}

// sendCtl sends a control message (best effort: a connection without a
// control stream yet has no stream to talk about, and a dead one no peer).
func (c *tcpConn) sendCtl(typ byte, id uint32, code uint64) {
	c.ctlMu.Lock()
	ctl := c.ctl
	c.ctlMu.Unlock()
	if ctl == nil {
		return
	}
	var b [ctlSize]byte
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:5], id)
	binary.BigEndian.PutUint64(b[5:], code)
	ctl.Write(b[:])
}

// keepEarly keeps a control message for a stream that is not open: if it
// is the peer's and not accepted yet, until it is (at most acceptBacklog
// of them, as many as yamux queues); ours, or accepted before, ended
// already. The caller holds c.mu.
func (c *tcpConn) keepEarly(typ byte, id uint32, code quic.StreamErrorCode) {
	ours := id%2 == 0 == c.server // the listener's streams have even IDs
	if ours || id <= c.accepted {
		return
	}
	e, ok := c.early[id]
	if !ok && len(c.early) >= acceptBacklog {
		return
	}
	if typ == ctlResetStream {
		e.reset, e.resetCode = true, code
	} else {
		e.stop, e.stopCode = true, code
	}
	c.early[id] = e
}

func (c *tcpConn) track(s *yamux.Stream) *tcpStream {
	ts := &tcpStream{Stream: s, c: c}
	c.mu.Lock()
	c.streams[s.StreamID()] = ts
	c.mu.Unlock()
	return ts
}

// trackAccepted is track for a stream the peer opened, with what the
// peer said of it before we accepted it. yamux hands streams to
// AcceptStream in the order they were opened, so earlier IDs still kept
// belong to streams gone by.
func (c *tcpConn) trackAccepted(s *yamux.Stream) *tcpStream {
	ts := &tcpStream{Stream: s, c: c}
	id := s.StreamID()
	c.mu.Lock()
	c.streams[id] = ts
	c.accepted = max(c.accepted, id)
	e, ok := c.early[id]
	for k := range c.early {
		if k <= id {
			delete(c.early, k)
		}
	}
	c.mu.Unlock()
	if ok && e.reset {
		ts.remoteReset(e.resetCode)
	}
	if ok && e.stop && !c.deaf.Load() {
		ts.remoteStop(e.stopCode)
	}
	return ts
}

func (c *tcpConn) forget(s *tcpStream) {
	c.mu.Lock()
	delete(c.streams, s.Stream.StreamID())
	c.mu.Unlock()
	c.rx.drop(s.Stream.StreamID())
}

// gated reads a yamux stream and credits what it read to the receive
// budget; every read of a yamux stream goes through it.
type gated struct {
	s  *yamux.Stream
	rx *rxGate
}

func (g gated) Read(b []byte) (int, error) {
	n, err := g.s.Read(b)
	g.rx.took(g.s.StreamID(), n)
	return n, err
}

func (c *tcpConn) Context() context.Context      { return c.ctx }
func (c *tcpConn) RemoteAddr() net.Addr          { return c.conn.RemoteAddr() }
func (c *tcpConn) TLSState() tls.ConnectionState { return c.state }
func (c *tcpConn) Transport() string             { return TransportTCP }

// RTT is the round trip of the last answered Beat (0 before the first).
func (c *tcpConn) RTT() time.Duration { return time.Duration(c.rtt.Load()) }

func (c *tcpConn) WireBytes() (sent, received uint64) {
	return c.wire.sent.Load(), c.wire.received.Load()
}

func (c *tcpConn) Received() uint64 { return c.wire.received.Load() }

// Beat sends a yamux ping, unless one is outstanding; its answer is bytes
// read (Received) and the RTT. yamux bounds a ping's wait by
// ConnectionWriteTimeout and ends it when the session ends, so the
// goroutine does too.
func (c *tcpConn) Beat() error {
	if c.ctx.Err() != nil {
		return context.Cause(c.ctx)
	}
	if !c.pinging.CompareAndSwap(false, true) {
		return nil
	}
	go func() {
		defer c.pinging.Store(false)
		if rtt, err := c.sess.Ping(); err == nil {
			c.rtt.Store(int64(rtt))
		}
	}()
	return nil
}

// DrainBeats waits for ctx: yamux answers the peer's pings itself.
func (c *tcpConn) DrainBeats(ctx context.Context) { <-ctx.Done() }

// CloseWithError sends code on the control stream (best effort, bounded:
// a peer that does not read sees the connection end without it) and ends
// the session and every stream on it at once.
func (c *tcpConn) CloseWithError(code quic.ApplicationErrorCode, msg string) error {
	c.closeOnce.Do(func() {
		c.cancel(&quic.ApplicationError{ErrorCode: code, ErrorMessage: msg})
		c.ctlMu.Lock()
		ctl := c.ctl
		c.ctlMu.Unlock()
		if ctl != nil {
			var b [ctlSize]byte
			b[0] = ctlClose
			binary.BigEndian.PutUint64(b[5:], uint64(code))
			ctl.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			ctl.Write(b[:])
		}
		c.sess.Close()
	})
	return nil
}

// OpenStreamSync opens a stream. yamux opens without waiting for credit
// (its SYN window is the backlog); ctx bounds only a closed session.
func (c *tcpConn) OpenStreamSync(ctx context.Context) (muxStream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if c.ctx.Err() != nil {
		return nil, context.Cause(c.ctx)
	}
	s, err := c.sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	return c.track(s), nil
}

// AcceptStream waits for the peer's next stream until ctx or the
// connection ends.
func (c *tcpConn) AcceptStream(ctx context.Context) (muxStream, error) {
	s, err := c.sess.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, err
	}
	return c.trackAccepted(s), nil
}

// AwaitReady takes the listener's control stream (the session's first
// stream) and its ready byte.
func (c *tcpConn) AwaitReady(ctx context.Context) error {
	ctl, err := c.sess.AcceptStreamWithContext(ctx)
	if err != nil {
		return err
	}
	var b [1]byte
	ctl.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(gated{ctl, c.rx}, b[:]); err != nil {
		return err
	}
	ctl.SetReadDeadline(time.Time{})
	if b[0] != readyByte {
		return fmt.Errorf("unexpected ready byte %#x", b[0])
	}
	c.ctlMu.Lock()
	c.ctl = ctl
	c.ctlMu.Unlock()
	go c.watch(ctl)
	return nil
}

// SignalReady writes the ready byte on the control stream.
func (c *tcpConn) SignalReady() error {
	c.ctlMu.Lock()
	ctl := c.ctl
	c.ctlMu.Unlock()
	if ctl == nil {
		return errors.New("signal ready: no control stream (dialer side)")
	}
	ctl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := ctl.Write([]byte{readyByte})
	ctl.SetWriteDeadline(time.Time{})
	return err
}

// tcpStream is a yamux stream as a muxStream, with QUIC's stream errors
// built on the control stream: CancelWrite sends reset_stream and our FIN,
// CancelRead sends stop_sending; the peer's reset_stream fails our reads
// and its stop_sending our writes, with *quic.StreamError{Remote: true}
// and its code, as over QUIC.
type tcpStream struct {
	*yamux.Stream
	c *tcpConn

	readErr  atomic.Pointer[quic.StreamError] // set: reads fail with it
	writeErr atomic.Pointer[quic.StreamError] // set: writes fail with it
	ended    atomic.Uint32                    // endLocal | endRemote: both, and the stream is forgotten
	cancelR  sync.Once
	cancelW  sync.Once
	since    time.Time // when we stopped reading (lingerCheck)
}

// tcpRecordPayload is the payload of a TCP stream's largest codec record,
// 63 KiB. A 64 KiB record in its yamux frame and TLS records came to
// 65,700 bytes on the wire, just over what the kernel sends as one TCP
// segment (64 KiB: loopback's MSS, and the GSO size on a NIC), so every
// frame left as a full segment and a tail of a few hundred bytes, two
// passes through both kernels' TCP stacks, and its fifth TLS record
// carried 20 bytes. A 63 KiB record's frame is 64,654 bytes in four TLS
// records and one segment (TestTCPFrameOneSegment).
const tcpRecordPayload = 63 << 10

// MaxRecordPayload sizes the codec's records on this stream
// (codec.RecordSizer): one TCP segment per record.
func (s *tcpStream) MaxRecordPayload() int { return tcpRecordPayload }

// tcpBatchRecords is how many full records a bulk stream sends in one yamux
// frame (codec.RecordBatcher). Each Write of a yamux stream is a hand-off to
// the session's send loop and back, and each frame a wake-up of the peer's
// stream reader: with one record per frame the daemons' threads woke each
// other about 1.6 times per record (futex, nanosleep), and GOMAXPROCS=1
// moved a GB with 13% less CPU. Two records per frame halve those hand-offs
// and the local read(2)s (TestTCPBulkBatchesRecords); a frame is then two
// TCP segments, still one per record (TestTCPFrameOneSegment). Four saved
// less CPU than two in the bench (bigger buffers, more cache misses in the
// copies) and held 256 KiB per busy stream; two hold 128 KiB, 64 KiB more
// than one record (README, "Memory").
const tcpBatchRecords = 2

// MaxBatchRecords lets the codec send up to tcpBatchRecords records in one
// Write (codec.RecordBatcher).
func (s *tcpStream) MaxBatchRecords() int { return tcpBatchRecords }

const (
	endLocal  = 1 // our FIN (or reset) is sent
	endRemote = 2 // the peer's FIN (or reset) is seen
)

var _ muxStream = (*tcpStream)(nil)

func (s *tcpStream) StreamID() uint64 { return uint64(s.Stream.StreamID()) }

func (s *tcpStream) streamErr(code quic.StreamErrorCode, remote bool) *quic.StreamError {
	return &quic.StreamError{StreamID: quic.StreamID(s.Stream.StreamID()), ErrorCode: code, Remote: remote}
}

// end marks a direction ended; once both are, the connection forgets s,
// a moment later: a reset_stream the peer sent just before its FIN may
// still be on its way through the control stream.
func (s *tcpStream) end(bit uint32) {
	if old := s.ended.Or(bit); old != endLocal|endRemote && old|bit == endLocal|endRemote {
		time.AfterFunc(lingerCheck, func() { s.c.forget(s) })
	}
}

func (s *tcpStream) Read(b []byte) (int, error) {
	if e := s.readErr.Load(); e != nil {
		return 0, e
	}
	n, err := gated{s.Stream, s.c.rx}.Read(b)
	if e := s.readErr.Load(); e != nil {
		return 0, e
	}
	if err == io.EOF {
		s.end(endRemote)
	}
	return n, err
}

func (s *tcpStream) Write(b []byte) (int, error) {
	if e := s.writeErr.Load(); e != nil {
		return 0, e
	}
	n, err := s.Stream.Write(b)
	// A stop that arrives once every byte is out does not fail the write
	// (as over QUIC): the peer may have read them and answered already
	// (TestRotationTamperedAnnouncementRefused/tcp failed under -race when
	// the refusal's stop_sending came back before Write returned).
	if e := s.writeErr.Load(); e != nil && (err != nil || n < len(b)) {
		return n, e
	}
	return n, err
}

// Close sends our FIN.
func (s *tcpStream) Close() error {
	err := s.Stream.Close()
	s.end(endLocal)
	return err
}

// CancelWrite stops our direction: reset_stream, then, resetFINDelay
// later, our FIN. The reset travels on the control stream, read by the
// peer's watch goroutine, the FIN on the data stream, read by its pump:
// sent together, the pump could see the FIN first and take the stream for
// one cut short between records, counted and audited as an attack
// (TestClientResetNotTruncation).
func (s *tcpStream) CancelWrite(code quic.StreamErrorCode) {
	s.cancelW.Do(func() {
		s.writeErr.CompareAndSwap(nil, s.streamErr(code, false))
		s.c.sendCtl(ctlResetStream, s.Stream.StreamID(), uint64(code))
		s.Stream.SetWriteDeadline(time.Now()) // wakes a write in progress
		time.AfterFunc(resetFINDelay, func() { s.Close() })
	})
}

// CancelRead stops reading: stop_sending, and a check that the peer ends
// its direction within lingerTimeout (THREATS P5, TestTCPStopSendingHonoured).
func (s *tcpStream) CancelRead(code quic.StreamErrorCode) {
	s.cancelR.Do(func() {
		s.readErr.CompareAndSwap(nil, s.streamErr(code, false))
		s.Stream.SetReadDeadline(time.Now()) // wakes a read in progress
		if s.ended.Load()&endRemote != 0 {
			return
		}
		s.c.sendCtl(ctlStopSending, s.Stream.StreamID(), uint64(code))
		s.since = time.Now()
		if !s.c.linger(s) {
			s.c.CloseWithError(codeLingering, "too many streams held open after stop_sending")
			return
		}
		time.AfterFunc(lingerCheck, s.checkLinger)
	})
}

// linger adds s to the streams we stopped reading; over the peer's
// max_streams it first drops those the peer has ended meanwhile, and
// reports false if they are still too many.
func (c *tcpConn) linger(s *tcpStream) bool {
	c.mu.Lock()
	c.lingering[s] = struct{}{}
	over := int64(len(c.lingering)) > c.maxLinger
	var all []*tcpStream
	if over {
		for o := range c.lingering {
			all = append(all, o)
		}
	}
	c.mu.Unlock()
	if !over {
		return true
	}
	for _, o := range all {
		o.peerEnded()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return int64(len(c.lingering)) <= c.maxLinger
}

// peerEnded discards what the peer sent since CancelRead, without
// waiting, and reports whether its FIN came (then s stops lingering).
func (s *tcpStream) peerEnded() bool {
	var buf [4096]byte
	s.Stream.SetReadDeadline(time.Now().Add(-time.Second))
	for {
		_, err := gated{s.Stream, s.c.rx}.Read(buf[:])
		if err == nil {
			continue
		}
		if errors.Is(err, yamux.ErrTimeout) && s.c.ctx.Err() == nil {
			return false
		}
		s.c.mu.Lock()
		delete(s.c.lingering, s)
		s.c.mu.Unlock()
		s.end(endRemote)
		return true
	}
}

// checkLinger runs every lingerCheck after CancelRead until the peer's
// FIN; a peer still holding the stream after lingerTimeout loses the
// connection.
func (s *tcpStream) checkLinger() {
	if s.peerEnded() {
		return
	}
	if time.Since(s.since) > lingerTimeout {
		s.c.CloseWithError(codeLingering, "stream held open after stop_sending")
		return
	}
	time.AfterFunc(lingerCheck, s.checkLinger)
}

// remoteReset is the peer's reset_stream: our reads fail with its code.
func (s *tcpStream) remoteReset(code quic.StreamErrorCode) {
	s.readErr.CompareAndSwap(nil, s.streamErr(code, true))
	s.Stream.SetReadDeadline(time.Now())
}

// remoteStop is the peer's stop_sending: our writes fail with its code
// and our FIN goes out.
func (s *tcpStream) remoteStop(code quic.StreamErrorCode) {
	s.cancelW.Do(func() {
		s.writeErr.CompareAndSwap(nil, s.streamErr(code, true))
		s.Stream.SetWriteDeadline(time.Now())
		s.Close()
	})
}

// dialTCP completes a TLS handshake with the peer over TCP (through its
// HTTP proxy if it has one), waiting at most until ctx ends.
func (l *link) dialTCP(ctx context.Context, p Peer, cert tls.Certificate) (muxConn, error) {
	raw, err := l.n.dialTCPRaw(ctx, p)
	if err != nil {
		return nil, err
	}
	cfg := l.n.clientTLS(cert, p, raw.RemoteAddr())
	cfg.NextProtos = []string{ALPN}
	sock := newSockConn(raw, &wireCount{})
	tc := tls.Client(sock, cfg)
	start := time.Now()
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls over tcp to %s: %w", p.Endpoint, err)
	}
	rtt := time.Since(start)
	// The connection outlives the dial: it ends by CloseWithError (the
	// link's close sends its code), not with a context.
	c, err := l.n.newTCPConn(context.Background(), tc, sock, false, rtt)
	if err != nil {
		tc.Close()
		return nil, err
	}
	return c, nil
}

// dialTCPRaw opens the TCP connection to p's endpoint (or its proxy).
func (n *Node) dialTCPRaw(ctx context.Context, p Peer) (net.Conn, error) {
	if p.Proxy != "" {
		return dialProxy(ctx, p.Proxy, p.Endpoint)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("tcp dial %s: %w", p.Endpoint, err)
	}
	return c, nil
}

// ServeTCP takes incoming TLS-over-TCP tunnels on ln (tunnel.tcp_listen)
// until the node closes; the node closes ln. Unlike the QUIC port, a TCP
// port cannot be dark: the kernel answers every SYN (README).
func (n *Node) ServeTCP(ln net.Listener) {
	n.mu.Lock()
	n.tcpLns = append(n.tcpLns, ln)
	n.mu.Unlock()
	n.loops.Add(1)
	go n.acceptTCP(ln)
}

// TCPAddrs returns the TCP listening addresses (ServeTCP).
func (n *Node) TCPAddrs() []net.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []net.Addr
	for _, ln := range n.tcpLns {
		out = append(out, ln.Addr())
	}
	return out
}

// acceptTCP admits each TCP connection like a QUIC handshake (THREATS
// P5, tested by TestTCPHandshakeLimits): the source's handshake bucket, the
// half-open shares, the tunnel cap, and handshakeTimeout for the TLS
// handshake; a refused connection is closed with a reset and audited.
func (n *Node) acceptTCP(ln net.Listener) {
	defer n.loops.Done()
	for {
		raw, err := ln.Accept()
		if err != nil {
			if n.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Warn().Err(err).Msg("tcp accept")
			time.Sleep(10 * time.Millisecond)
			continue
		}
		t, err := n.admission.enter(raw.RemoteAddr())
		if err != nil {
			if c, ok := raw.(*net.TCPConn); ok {
				c.SetLinger(0)
			}
			raw.Close()
			continue
		}
		n.loops.Add(1)
		go func() {
			defer n.loops.Done()
			n.handshakeTCP(raw, t)
		}()
	}
}

// handshakeTCP runs the server side of a TLS handshake and adopts the
// connection; t is released when the connection ends.
func (n *Node) handshakeTCP(raw net.Conn, t *admissionTicket) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(n.ctx, handshakeTimeout)
	defer cancel()
	// The ticket in the handshake's context: serverTLS records there
	// which of our identities the certificate presented (a rotation's
	// overlap), as on QUIC.
	sock := newSockConn(raw, &wireCount{})
	tc := tls.Server(sock, n.serverTLS([]string{ALPN}, false))
	if err := tc.HandshakeContext(context.WithValue(ctx, admissionTicket{}, t)); err != nil {
		// A refused key was counted and audited by verifyPeer; this
		// counts every failure, scanners' included (exact, no log).
		n.Stats.TCPHandshakesFailed.Add(1)
		t.release()
		raw.Close()
		return
	}
	cctx := context.WithValue(context.WithValue(context.Background(), admissionTicket{}, t), handshakeStart{}, start)
	c, err := n.newTCPConn(cctx, tc, sock, true, time.Since(start))
	if err != nil {
		t.release()
		tc.Close()
		return
	}
	context.AfterFunc(c.ctx, t.release)
	n.adopt(c)
}
