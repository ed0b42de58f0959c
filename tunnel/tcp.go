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
// Connection close codes: the listener opens the first yamux stream, the
// control stream, as soon as the session exists. It carries the ready
// byte (SignalReady) and, when either side closes the connection with a
// code, that code (8 bytes, big-endian), so the peer's tunnel.closed event
// names the same reason a QUIC peer's does.

// codeLingering closes a TCP connection whose peer keeps more streams
// half-reset than maxLingering (tcpStream.CancelRead).
const codeLingering quic.ApplicationErrorCode = 0x17

// maxLingering bounds the streams of one TCP connection that we reset but
// whose peer has not ended them yet (THREATS P5).
const maxLingering = 1024

// lingerTimeout bounds how long a reset stream is drained: a dyad peer
// ends its side as soon as it reads our FIN without a close record.
const lingerTimeout = 30 * time.Second

// minTCPWindow is yamux's fixed initial stream window, the least it takes.
const minTCPWindow = 256 << 10

// tcpWindow is the yamux receive window of one stream. yamux bounds each
// stream, not the connection, so the window is what keeps a peer's memory
// within QUIC's: the peer's max_streams streams, each with a full window,
// hold at most what its max_connections_per_peer QUIC connections could
// (C * W_conn), between 256 KiB and QUIC's stream window (README, "Memory").
func tcpWindow(c Config, l Limits) uint32 {
	streams := l.MaxStreams
	if streams <= 0 {
		streams = MaxStreamsCap
	}
	conns := c.MaxConnectionsPerPeer
	if conns <= 0 {
		conns = DefaultMaxConnectionsPerPeer
	}
	w := int64(conns) * maxConnWindow / int64(streams)
	return uint32(min(max(w, minTCPWindow), maxStreamWindow))
}

// yamuxConfig tunes a yamux session like quicConfig tunes QUIC: keepalives
// every KeepAlive, a connection that cannot write or answer a ping for
// IdleTimeout ends, a stream open unanswered for the handshake bound ends
// the session, and half-closed streams live as long as QUIC's (no close
// timeout).
func (n *Node) yamuxConfig(c Config, window uint32) *yamux.Config {
	yc := yamux.DefaultConfig()
	yc.AcceptBacklog = 256
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

// yamuxLogger sends yamux's own messages to the debug log.
type yamuxLogger struct{ log zerolog.Logger }

func (y yamuxLogger) Print(v ...any)                 { y.log.Debug().Msg(fmt.Sprint(v...)) }
func (y yamuxLogger) Printf(format string, v ...any) { y.log.Debug().Msgf(format, v...) }
func (y yamuxLogger) Println(v ...any)               { y.log.Debug().Msg(fmt.Sprint(v...)) }

// tcpConn is a TLS connection carrying a yamux session (muxConn).
type tcpConn struct {
	tls    *tls.Conn
	sess   *yamux.Session
	state  tls.ConnectionState
	ctx    context.Context
	cancel context.CancelCauseFunc

	ctlMu sync.Mutex    // guards ctl
	ctl   *yamux.Stream // the control stream (nil on the dialer until AwaitReady)

	watched   chan struct{} // closed when watch has ended
	closeOnce sync.Once
	lingering atomic.Int64 // reset streams still draining
}

var _ muxConn = (*tcpConn)(nil)

// errTCPClosed is the cause of a TCP connection that ended without a
// close code (the TCP connection broke, or yamux gave up on it).
var errTCPClosed = errors.New("tcp transport ended")

// newTCPConn wraps a completed TLS handshake in a yamux session; the
// listener (server) opens the control stream at once. ctx carries the
// admission ticket and handshake start, as QUIC's connection context does.
func (n *Node) newTCPConn(ctx context.Context, tc *tls.Conn, server bool) (*tcpConn, error) {
	snap := n.cfg.Load()
	state := tc.ConnectionState()
	var window uint32 = minTCPWindow
	if len(state.PeerCertificates) > 0 {
		if key, err := identity.CertificateKey(state.PeerCertificates[0].Raw); err == nil {
			if p, ok := n.peerByKey(key); ok {
				window = tcpWindow(snap.cfg, p.Limits.inherit(snap.cfg.Limits))
			}
		}
	}
	yc := n.yamuxConfig(snap.cfg, window)
	var (
		sess *yamux.Session
		err  error
	)
	if server {
		sess, err = yamux.Server(tc, yc)
	} else {
		sess, err = yamux.Client(tc, yc)
	}
	if err != nil {
		return nil, fmt.Errorf("yamux session with %v: %w", tc.RemoteAddr(), err)
	}
	c := &tcpConn{tls: tc, sess: sess, state: state, watched: make(chan struct{})}
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

// watch reads the peer's close code from the control stream and ends the
// connection with it.
func (c *tcpConn) watch(ctl *yamux.Stream) {
	defer close(c.watched)
	var b [8]byte
	if _, err := io.ReadFull(ctl, b[:]); err != nil {
		c.cancel(errTCPClosed)
		c.sess.Close()
		return
	}
	code := quic.ApplicationErrorCode(binary.BigEndian.Uint64(b[:]))
	c.cancel(&quic.ApplicationError{Remote: true, ErrorCode: code})
	c.sess.Close()
}

func (c *tcpConn) Context() context.Context      { return c.ctx }
func (c *tcpConn) RemoteAddr() net.Addr          { return c.tls.RemoteAddr() }
func (c *tcpConn) TLSState() tls.ConnectionState { return c.state }
func (c *tcpConn) Transport() string             { return TransportTCP }
func (c *tcpConn) RTT() time.Duration            { return 0 }

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
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(code))
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
	return &tcpStream{Stream: s, c: c}, nil
}

// AcceptStream waits for the peer's next stream until ctx or the
// connection ends.
func (c *tcpConn) AcceptStream(ctx context.Context) (muxStream, error) {
	s, err := c.sess.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, err
	}
	return &tcpStream{Stream: s, c: c}, nil
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
	if _, err := io.ReadFull(ctl, b[:]); err != nil {
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

// tcpStream is a yamux stream as a muxStream. yamux has no stream reset
// and no error codes, so the cancels are built from what it has:
//
//   - CancelWrite sends our FIN. A stream's last record is the codec's
//     close record; a FIN without it is a truncated stream, which the
//     peer's codec reader reports as an error (codec/FORMAT.md), so the
//     peer aborts as it would on RESET_STREAM.
//   - CancelRead makes our reads fail at once and drains what the peer
//     still sends (discarding it) until its FIN, so its writer never
//     blocks on a window we stopped opening. A peer that keeps the stream
//     open past lingerTimeout is left blocked (its window stays full, our
//     memory bounded by it), and one with more than maxLingering such
//     streams loses the connection (THREATS P5).
//
// The code is not carried: the peer's events say "reset" where QUIC's
// would name the code.
type tcpStream struct {
	*yamux.Stream
	c         *tcpConn
	cancelled atomic.Bool // CancelRead was called
	drain     sync.Once
}

var _ muxStream = (*tcpStream)(nil)

// errReadCancelled is what reads return after CancelRead.
var errReadCancelled = errors.New("stream read cancelled")

func (s *tcpStream) StreamID() uint64 { return uint64(s.Stream.StreamID()) }

func (s *tcpStream) Read(b []byte) (int, error) {
	if s.cancelled.Load() {
		return 0, errReadCancelled
	}
	n, err := s.Stream.Read(b)
	if s.cancelled.Load() {
		return 0, errReadCancelled
	}
	if errors.Is(err, yamux.ErrConnectionReset) || errors.Is(err, yamux.ErrSessionShutdown) {
		err = fmt.Errorf("tcp stream %d: %w", s.Stream.StreamID(), err)
	}
	return n, err
}

func (s *tcpStream) CancelWrite(quic.StreamErrorCode) { s.Stream.Close() }

func (s *tcpStream) CancelRead(quic.StreamErrorCode) {
	s.cancelled.Store(true)
	s.drain.Do(func() {
		s.Stream.SetReadDeadline(time.Now()) // wakes a read in progress
		if s.c.lingering.Add(1) > maxLingering {
			s.c.CloseWithError(codeLingering, "too many reset streams held open")
		}
		go func() {
			defer s.c.lingering.Add(-1)
			s.Stream.SetReadDeadline(time.Now().Add(lingerTimeout))
			io.Copy(io.Discard, s.Stream)
		}()
	})
}

// dialTCP completes a TLS handshake with the peer over TCP (through its
// HTTP proxy if it has one), waiting at most until ctx ends.
func (l *link) dialTCP(ctx context.Context) (muxConn, error) {
	raw, err := l.n.dialTCPRaw(ctx, l.peer)
	if err != nil {
		return nil, err
	}
	cfg := l.n.clientTLS(l.n.cert, l.peer, raw.RemoteAddr())
	cfg.NextProtos = []string{ALPN}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls over tcp to %s: %w", l.peer.Endpoint, err)
	}
	// The connection outlives the dial: it ends by CloseWithError (the
	// link's close sends its code), not with a context.
	c, err := l.n.newTCPConn(context.Background(), tc, false)
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
	tc := tls.Server(raw, n.serverTLS(n.cert, []string{ALPN}))
	if err := tc.HandshakeContext(ctx); err != nil {
		// A refused key was counted and audited by verifyPeer; this
		// counts every failure, scanners' included (exact, no log).
		n.Stats.TCPHandshakesFailed.Add(1)
		t.release()
		raw.Close()
		return
	}
	cctx := context.WithValue(context.WithValue(context.Background(), admissionTicket{}, t), handshakeStart{}, start)
	c, err := n.newTCPConn(cctx, tc, true)
	if err != nil {
		t.release()
		tc.Close()
		return
	}
	context.AfterFunc(c.ctx, t.release)
	n.adopt(c)
}
