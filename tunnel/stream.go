package tunnel

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/dyad-tunnel/dyad/codec"
)

// requestTimeout bounds how long a new stream may take to send its request.
const requestTimeout = 10 * time.Second

// serveStream answers a peer's stream: read the sealed request, admit it
// against the allow list, dial only the configured upstream, answer, pump.
func (n *Node) serveStream(l *link, tc *tconn, s *quic.Stream) {
	id := uint64(s.StreamID())
	r := tc.sess.NewReader(s, id, codec.FromInitiator)
	w := tc.sess.NewWriter(s, id, codec.FromResponder)
	log := n.log.With().Str("peer", l.peer.Name).Uint64("stream", id).Logger()

	s.SetReadDeadline(time.Now().Add(requestTimeout))
	req, err := r.Next()
	s.SetReadDeadline(time.Time{})
	if err != nil {
		n.rejectStream(s, r, err, l.peer.Name, "")
		return
	}
	service, err := ParseRequest(req)
	status, upstream := StatusBadRequest, ""
	switch {
	case err != nil:
	case n.draining.Load():
		status = StatusShuttingDown
	default:
		status, upstream = n.cfg.Load().admit(l.peer.Name, service)
	}
	var up net.Conn
	if status == StatusAccepted {
		d := net.Dialer{Timeout: n.cfg.Load().cfg.DialTimeout}
		up, err = d.DialContext(n.ctx, "tcp", upstream)
		if err != nil {
			status = StatusUpstreamDown
			log.Warn().Str("service", service).Err(err).Msg("upstream unreachable")
		}
	}
	if _, err := w.Write(AppendResponse(nil, status)); err != nil || status != StatusAccepted {
		n.Stats.countRefusedStream(status)
		log.Warn().Str("event", "stream.refused").Str("service", service).Str("status", status.String()).Msg("stream refused")
		w.Close()
		s.Close()
		r.Release()
		s.CancelRead(codeStreamRefused)
		if up != nil {
			up.Close()
		}
		return
	}
	n.Stats.StreamsAccepted.Add(1)
	log.Debug().Str("event", "stream.opened").Str("service", service).Str("upstream", upstream).Msg("stream opened")
	res := n.pump(up.(*net.TCPConn), s, r, w, nil)
	log.Debug().Str("event", "stream.closed").Str("service", service).Int64("bytes_to_upstream", res.received).
		Int64("bytes_from_upstream", res.sent).Str("reason", res.reason()).Msg("stream closed")
}

// rejectStream resets a stream whose first record failed, counting why.
func (n *Node) rejectStream(s *quic.Stream, r *codec.Reader, err error, peer, service string) {
	r.Release()
	s.CancelRead(codeRecord)
	s.CancelWrite(codeRecord)
	if reason := codec.Reason(err); reason != "" {
		n.Stats.countRejectedRecord(reason)
		n.log.Warn().Str("event", "record.rejected").Str("peer", peer).Str("service", service).
			Str("reason", reason).Msg("record rejected, stream reset")
	}
}

// Forward carries one accepted local connection to service at peer. It
// waits up to the configured connect timeout for a tunnel, and closes the
// client at once (with a reset) if none comes or the peer refuses.
//
// The open is pipelined: the client's first bytes follow the request
// without waiting for the answer, so a new connection costs no round trip
// beyond the client's own. The exporter passes nothing to an upstream
// before it has accepted the request, and discards what came with a
// refused one.
func (n *Node) Forward(ctx context.Context, client *net.TCPConn, peer, service string) error {
	l := n.link(peer)
	if l == nil {
		n.Stats.ForwardsFailed.Add(1)
		resetTCP(client)
		return fmt.Errorf("peer %s: not configured", peer)
	}
	n.streams.Add(1)
	defer n.streams.Done()
	cfg := n.cfg.Load().cfg
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	var (
		os  openStream
		tc  *tconn
		err error
	)
	for {
		os, tc, err = n.open(ctx, l, service)
		if err != nil && tc != nil && !tc.alive() && ctx.Err() == nil {
			continue // the tunnel died under us: nothing was read from the client yet, try the next one
		}
		break
	}
	if err != nil {
		n.Stats.ForwardsFailed.Add(1)
		resetTCP(client)
		return err
	}
	tc.streamStarted()
	defer tc.streamDone()
	// The peer answers after dialing its upstream: allow for its dial
	// beyond our own connect timeout.
	deadline, _ := ctx.Deadline()
	accepted := false
	answer := func() error {
		os.stream.SetReadDeadline(deadline.Add(cfg.DialTimeout))
		defer os.stream.SetReadDeadline(time.Time{})
		resp, err := os.r.Next()
		if err != nil {
			return err
		}
		status, err := ParseResponse(resp)
		if err != nil {
			return fmt.Errorf("%w: %w", errTrailing, err)
		}
		if status != StatusAccepted {
			return &RefusedError{Peer: peer, Service: service, Status: status}
		}
		n.Stats.StreamsForwarded.Add(1)
		accepted = true
		return nil
	}
	res := n.pump(client, os.stream, os.r, os.w, answer)
	if !accepted {
		n.Stats.ForwardsFailed.Add(1)
	}
	return res.err
}

// RefusedError is the exporting side's typed refusal of a stream.
type RefusedError struct {
	Peer, Service string
	Status        Status
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("peer %s refused service %s: %v", e.Peer, e.Service, e.Status)
}

type openStream struct {
	stream *quic.Stream
	r      *codec.Reader
	w      *codec.Writer
}

// open opens a stream on the peer's tunnel and sends the request.
func (n *Node) open(ctx context.Context, l *link, service string) (openStream, *tconn, error) {
	tc, err := l.conn(ctx)
	if err != nil {
		return openStream{}, nil, err
	}
	s, err := tc.qc.OpenStreamSync(ctx)
	if err != nil {
		return openStream{}, tc, fmt.Errorf("peer %s: open stream: %w", l.peer.Name, err)
	}
	id := uint64(s.StreamID())
	os := openStream{stream: s, w: tc.sess.NewWriter(s, id, codec.FromInitiator), r: tc.sess.NewReader(s, id, codec.FromResponder)}
	if _, err := os.w.Write(AppendRequest(nil, service)); err != nil {
		os.r.Release()
		s.CancelRead(codeProtocol)
		s.CancelWrite(codeProtocol)
		return openStream{}, tc, fmt.Errorf("peer %s service %s: %w", l.peer.Name, service, err)
	}
	return os, tc, nil
}

// resetTCP closes c with an RST, so the client sees a refusal, not a clean
// empty response.
func resetTCP(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}
