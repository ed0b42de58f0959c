package tunnel

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// The seam between the link and stream code and the transports that carry
// it: QUIC (quic-go) and, where UDP is blocked, TLS 1.3 over TCP with
// streams multiplexed by yamux (tcp.go). Everything above this seam (the
// pin check, codec keys, limits, refusals, audit events and metrics) is
// one code path for both: a transport only moves stream bytes between
// two authenticated ends.

// Transport names, as the network.transport attribute of audit events
// carries them and peers[].transport selects them.
const (
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
	TransportAuto = "auto"
)

// muxConn is one authenticated connection to a peer carrying many
// streams. Its methods are safe for concurrent use.
//
// Contract:
//   - Context ends when the connection ends; context.Cause then says why,
//     as a *quic.ApplicationError for a close with a code (Remote set when
//     the peer closed it), a *quic.IdleTimeoutError when the peer went
//     silent, or another error for a broken transport.
//   - CloseWithError ends the connection and every stream on it; the peer
//     learns code. Closing twice is a no-op.
//   - TLSState is the completed TLS 1.3 handshake: its exporter keys the
//     codec, its peer certificate is the pinned key.
//   - OpenStreamSync waits for the peer's stream credit until ctx ends;
//     AcceptStream waits for the peer's next stream.
//   - AwaitReady (dialer) returns once the listener adopted the
//     connection (SignalReady), or an error if it refused us.
type muxConn interface {
	Context() context.Context
	CloseWithError(code quic.ApplicationErrorCode, msg string) error
	RemoteAddr() net.Addr
	TLSState() tls.ConnectionState
	OpenStreamSync(ctx context.Context) (muxStream, error)
	AcceptStream(ctx context.Context) (muxStream, error)
	AwaitReady(ctx context.Context) error
	SignalReady() error
	// Transport is TransportQUIC or TransportTCP.
	Transport() string
	// RTT is the transport's smoothed round-trip time (0 if unknown).
	RTT() time.Duration
	// WireBytes are the bytes this connection sent and received on the
	// wire so far: QUIC's packet payloads (retransmissions and overhead
	// included), or the TLS bytes written to and read from the TCP socket.
	WireBytes() (sent, received uint64)
	// Received grows whenever anything arrives from the peer (a QUIC
	// packet, bytes on the TCP socket): the heartbeat's sign of life.
	Received() uint64
	// Beat asks a live peer for an answer without blocking: a heartbeat
	// datagram over QUIC (its ACK), a yamux ping over TCP (at most one
	// outstanding). An error means the connection is closing or the
	// peer takes no datagrams.
	Beat() error
	// DrainBeats discards the peer's beats until ctx ends.
	DrainBeats(ctx context.Context)
}

// muxStream is one bidirectional stream of a muxConn: one forwarded TCP
// connection. Read returns io.EOF at the peer's FIN; Close sends our FIN.
// CancelRead and CancelWrite abort a direction (QUIC: STOP_SENDING and
// RESET_STREAM with code; TCP: see tcpStream). Read and Write may run
// concurrently with each other and with the cancels.
type muxStream interface {
	io.Reader
	io.Writer
	io.Closer
	StreamID() uint64
	CancelRead(code quic.StreamErrorCode)
	CancelWrite(code quic.StreamErrorCode)
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// quicConn adapts a quic-go connection. It is pointer-shaped, so holding
// it in an interface costs no allocation.
type quicConn struct{ *quic.Conn }

var _ muxConn = quicConn{}

func (c quicConn) TLSState() tls.ConnectionState { return c.Conn.ConnectionState().TLS }
func (c quicConn) Transport() string             { return TransportQUIC }
func (c quicConn) RTT() time.Duration            { return c.Conn.ConnectionStats().SmoothedRTT }

func (c quicConn) OpenStreamSync(ctx context.Context) (muxStream, error) {
	s, err := c.Conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return quicStream{s}, nil
}

func (c quicConn) AcceptStream(ctx context.Context) (muxStream, error) {
	s, err := c.Conn.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return quicStream{s}, nil
}

func (c quicConn) WireBytes() (sent, received uint64) {
	st := c.Conn.ConnectionStats()
	return st.BytesSent, st.BytesReceived
}

func (c quicConn) Received() uint64 { return c.Conn.ConnectionStats().PacketsReceived }

// Beat sends a heartbeat datagram of heartbeatSize bytes: long enough for
// a peer that restarted to answer it with a stateless reset (link.heartbeat).
func (c quicConn) Beat() error {
	var beat [heartbeatSize]byte
	return c.Conn.SendDatagram(beat[:])
}

func (c quicConn) DrainBeats(ctx context.Context) {
	for {
		if _, err := c.Conn.ReceiveDatagram(ctx); err != nil {
			return // ctx ended, or the connection
		}
	}
}

func (c quicConn) AwaitReady(ctx context.Context) error { return awaitReady(ctx, c.Conn) }
func (c quicConn) SignalReady() error                   { return signalReady(c.Conn) }

// quicStream adapts a quic-go stream (pointer-shaped, as quicConn).
type quicStream struct{ *quic.Stream }

var _ muxStream = quicStream{}

func (s quicStream) StreamID() uint64 { return uint64(s.Stream.StreamID()) }
