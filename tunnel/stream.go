package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/codec"
)

// requestTimeout bounds how long a new stream may take to send its
// request: the importing side sends it with the stream's first bytes, so
// this only has to cover loss and a slow path. Until then the stream holds
// its place in the peer's limits and at most a small buffer
// (maxRequestPayload).
const requestTimeout = 3 * time.Second

// maxRequestPayload bounds a stream's first record, its request (3 + 64
// bytes at most today), with room for growth: a header announcing more
// fails before any buffer for its body is taken (THREATS P5,
// TestRequestlessStreamsBounded).
const maxRequestPayload = 512

// serveStream answers a peer's stream: admit it against the peer's limits
// the moment it exists, read the sealed request, admit it against the allow
// list and the service's limits, dial only the configured upstream, answer,
// pump.
func (n *Node) serveStream(l *link, tc *tconn, s muxStream) {
	id := s.StreamID()
	peer := l.peer.Name
	// A stream is admitted by the key its connection authenticated with,
	// under the configuration in force (THREATS P1,
	// TestKeyChangeClosesOldKeysConnections), and never on a replaced
	// connection (TestRetiredConnectionRefusesStreams).
	if reason := n.connectionInForce(l, tc); reason != "" {
		n.Stats.countRefused(reason)
		n.auditStreamFailed(peer, "", inbound, reason, nil)
		s.CancelRead(codeStreamRefused)
		s.CancelWrite(codeStreamRefused)
		return
	}
	w := tc.sess.NewWriter(s, id, codec.FromResponder)
	pg := n.gates.peer(peer)
	var held []*gate // slots taken: released when the stream ends
	defer func() {
		for _, g := range held {
			g.leave()
		}
	}()
	// THREATS P5, tested by TestRequestlessStreamsBounded, TestStreamRateLimited
	// and TestMaxStreams: the peer's limits count the stream before its
	// request is read.
	if n.draining.Load() {
		n.refuseStream(s, w, nil, peer, "", StatusShuttingDown, "", "", nil)
		return
	}
	held, limit, scope := enterGates(pg, nil)
	if limit != "" {
		n.refuseStream(s, w, nil, peer, "", limitStatus(limit), limit, scope, nil)
		return
	}
	r := tc.sess.NewReader(s, id, codec.FromInitiator)
	r.SetMaxRecord(maxRequestPayload)
	s.SetReadDeadline(time.Now().Add(requestTimeout))
	req, err := r.Next()
	s.SetReadDeadline(time.Time{})
	r.SetMaxRecord(0)
	if err != nil {
		if codec.Reason(err) == "" && errorType(err) == "timeout" {
			n.auditLimited(peer, "", "peer", limitRequest)
		}
		n.rejectStream(s, r, err, peer, id)
		return
	}
	if requestKind(req) == kindIdentity {
		// An identity announcement: answered here, never a service.
		status := n.serveAnnouncement(l, tc, req[2:])
		s.SetWriteDeadline(time.Now().Add(requestTimeout))
		w.Write(AppendResponse(nil, status))
		w.Close()
		s.Close()
		r.Release()
		s.CancelRead(codeStreamRefused)
		return
	}
	service, err := ParseRequest(req)
	status := StatusBadRequest
	var upstream *serviceEntry
	sg := n.gates.service(service)
	switch {
	case err != nil:
	case n.draining.Load():
		status = StatusShuttingDown
	case n.audit.Admit() != nil: // no work without evidence (on_failure: refuse); THREATS P7, TestJournalFailureRefusesStreams
		status = StatusAuditUnavailable
	default:
		status, upstream = n.cfg.Load().admit(peer, service)
		if status == StatusAccepted {
			var more []*gate
			more, limit, scope = enterGates(nil, sg)
			held = append(held, more...)
			if limit != "" {
				status = limitStatus(limit)
			}
		}
	}
	var up LocalConn
	var dialErr error
	if status == StatusAccepted {
		timeout := strictest(n.cfg.Load().cfg.DialTimeout, pg.limits().DialTimeout, sg.limits().DialTimeout)
		if up, dialErr = dialUpstream(n.ctx, upstream, timeout); dialErr != nil {
			status = StatusUpstreamDown
			var te *UpstreamTLSError
			if errors.As(dialErr, &te) {
				n.Stats.UpstreamTLSFailed.Add(1)
			}
		}
	}
	if status != StatusAccepted {
		n.refuseStream(s, w, r, peer, service, status, limit, scope, dialErr)
		return
	}
	_, err = w.Write(AppendResponse(nil, status))
	if err != nil { // the answer could not be written: the stream is gone
		n.Stats.countRefusedStream(status)
		n.auditStreamFailed(peer, service, inbound, "open_failed", err)
		w.Close()
		s.Close()
		r.Release()
		s.CancelRead(codeStreamRefused)
		up.Close()
		return
	}
	n.Stats.StreamsAccepted.Add(1)
	start := time.Now()
	n.auditStreamOpened(peer, service, inbound, id, up.RemoteAddr())
	var res pumpResult
	if upstream.Guard != nil {
		serve := func(in io.Reader, out io.Writer) { upstream.Guard.Serve(peer, up, in, out) }
		res = n.pumpServer(serve, up, s, r, w, n.guard(peer, service, pg, sg))
	} else {
		res = n.pump(up, s, r, w, nil, n.guard(peer, service, pg, sg))
	}
	if reason := codec.Reason(res.err); reason != "" {
		n.auditRecordRejected(peer, service, id, reason)
	}
	n.auditStreamClosed(tc, peer, service, inbound, id, res, start)
}

// connectionInForce says why tc may take no new stream ("" if it may): it
// was replaced by a newer connection, or its key is no longer the one
// pinned for its peer (the reload that changed it closes it too).
func (n *Node) connectionInForce(l *link, tc *tconn) string {
	switch {
	case !n.cfg.Load().pinned(l.peer.Name, tc.key):
		tc.qc.CloseWithError(codeKeyChanged, "key no longer pinned")
		return "key_not_pinned"
	case tc.retired.Load():
		return "connection_replaced"
	}
	return ""
}

// limitStatus is the answer to a stream refused by limit.
func limitStatus(limit string) Status {
	if limit == limitStreams {
		return StatusTooManyStreams
	}
	return StatusRateLimited
}

// refuseStream answers a refused stream with its typed status and ends it.
// The refusal is counted and audited before the answer goes out, so a peer
// that has read it can rely on the count (TestServiceNotAllowed). r is nil
// when the request was not read (refused by the peer's limits on arrival).
func (n *Node) refuseStream(s muxStream, w *codec.Writer, r *codec.Reader, peer, service string, status Status, limit, scope string, dialErr error) {
	n.Stats.countRefusedStream(status)
	switch status {
	case StatusNotAllowed, StatusUnknownService:
		n.auditPolicyDenied(peer, service, s.StreamID(), status.String())
	case StatusRateLimited, StatusTooManyStreams:
		n.auditLimited(peer, service, scope, limit)
	default:
		n.auditStreamFailed(peer, service, inbound, status.String(), dialErr)
	}
	// A peer that does not read cannot hold the refusal's goroutine.
	s.SetWriteDeadline(time.Now().Add(requestTimeout))
	w.Write(AppendResponse(nil, status))
	w.Close()
	s.Close()
	if r != nil {
		r.Release()
	}
	s.CancelRead(codeStreamRefused)
}

// rejectStream resets a stream whose first record failed, counting why.
func (n *Node) rejectStream(s muxStream, r *codec.Reader, err error, peer string, id uint64) {
	r.Release()
	s.CancelRead(codeRecord)
	s.CancelWrite(codeRecord)
	if reason := codec.Reason(err); reason != "" {
		n.auditRecordRejected(peer, "", id, reason)
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
func (n *Node) Forward(ctx context.Context, client LocalConn, peer, service string) error {
	l := n.link(peer)
	if l == nil {
		n.Stats.ForwardsFailed.Add(1)
		n.auditStreamFailed(peer, service, outbound, "no_tunnel", errNoTunnel)
		resetTCP(client)
		return fmt.Errorf("peer %s: not configured", peer)
	}
	if err := n.audit.Admit(); err != nil { // as serveStream: no work without evidence
		n.Stats.ForwardsFailed.Add(1)
		n.auditStreamFailed(peer, service, outbound, StatusAuditUnavailable.String(), err)
		resetTCP(client)
		return fmt.Errorf("peer %s service %s: %w", peer, service, err)
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
		reason := "open_failed"
		if errors.Is(err, errNoTunnel) {
			reason = "no_tunnel"
		}
		n.auditStreamFailed(peer, service, outbound, reason, err)
		resetTCP(client)
		return err
	}
	id := os.stream.StreamID()
	start := time.Now()
	tc.streams.Add(1) // active since open placed it (link.place)
	defer tc.streamDone()
	// The peer answers after dialing its upstream: allow for its dial
	// beyond our own connect timeout.
	deadline, _ := ctx.Deadline()
	cancel() // the stream is open: its timer need not live as long as the stream
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
		n.auditStreamOpened(peer, service, outbound, id, client.RemoteAddr())
		return nil
	}
	res := n.pump(client, os.stream, os.r, os.w, answer, n.guard(peer, service, n.gates.peer(peer), nil))
	if reason := codec.Reason(res.err); reason != "" {
		n.auditRecordRejected(peer, service, id, reason)
	}
	var refused *RefusedError
	switch {
	case accepted:
		n.auditStreamClosed(tc, peer, service, outbound, id, res, start)
	case errors.As(res.err, &refused):
		n.Stats.ForwardsFailed.Add(1)
		n.auditStreamFailed(peer, service, outbound, "refused_by_peer", nil)
	default:
		n.Stats.ForwardsFailed.Add(1)
		n.auditStreamFailed(peer, service, outbound, "open_failed", res.err)
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
	stream muxStream
	r      *codec.Reader
	w      *codec.Writer
}

// open opens a stream on the peer's tunnel and sends the request. On
// success the stream counts among tc's active ones (link.place): the caller
// ends it with tc.streamDone; on failure open has ended it.
func (n *Node) open(ctx context.Context, l *link, service string) (openStream, *tconn, error) {
	tc, err := l.conn(ctx)
	if err != nil {
		return openStream{}, nil, err
	}
	s, err := tc.qc.OpenStreamSync(ctx)
	if err != nil {
		tc.streamDone()
		return openStream{}, tc, fmt.Errorf("peer %s: open stream: %w", l.peer.Name, err)
	}
	id := s.StreamID()
	os := openStream{stream: s, w: tc.sess.NewWriter(s, id, codec.FromInitiator), r: tc.sess.NewReader(s, id, codec.FromResponder)}
	if _, err := os.w.Write(AppendRequest(nil, service)); err != nil {
		os.r.Release()
		s.CancelRead(codeProtocol)
		s.CancelWrite(codeProtocol)
		tc.streamDone()
		return openStream{}, tc, fmt.Errorf("peer %s service %s: %w", l.peer.Name, service, err)
	}
	return os, tc, nil
}

// resetTCP closes c with an RST, so the client sees a refusal, not a clean
// empty response.
func resetTCP(c LocalConn) {
	c.SetLinger(0)
	c.Close()
}

// RefuseLocal resets a local connection that a forward's own limit refused
// (limit: allow_from or max_connections), counting and auditing it.
func (n *Node) RefuseLocal(client *net.TCPConn, peer, service, limit string) {
	n.Stats.ForwardsFailed.Add(1)
	n.Stats.countLimited(limit)
	n.metrics.LimitExceeded(peer, limit, "forward")
	ip, _ := addrPort(client.RemoteAddr())
	n.audit.Emit(audit.RateLimitExceeded, attribute.String(audit.KeyPeer, peer), attribute.String(audit.KeyService, service),
		attribute.String(audit.KeyLimit, limit), attribute.String(audit.KeyScope, "forward"), attribute.String(audit.KeyPeerAddress, ip))
	resetTCP(client)
}
