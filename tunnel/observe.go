package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// This file turns what the node does into audit events and metrics
// (audit.Catalog documents each). A nil auditor discards them.

func addrPort(a net.Addr) (string, int64) {
	if u, ok := a.(*net.UDPAddr); ok {
		return u.IP.String(), int64(u.Port)
	}
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String(), int64(t.Port)
	}
	if a == nil {
		return "", 0
	}
	host, _, _ := net.SplitHostPort(a.String())
	return host, 0
}

// peerAddr names a peer's address and the transport it came over: a TCP
// address is the TCP fallback, anything else QUIC.
func peerAddr(a net.Addr) []attribute.KeyValue {
	ip, port := addrPort(a)
	transport := TransportQUIC
	if _, ok := a.(*net.TCPAddr); ok {
		transport = TransportTCP
	}
	return []attribute.KeyValue{attribute.String(audit.KeyPeerAddress, ip), attribute.Int64(audit.KeyPeerPort, port),
		attribute.String(audit.KeyTransport, transport)}
}

func (n *Node) auditRefused(remote net.Addr, fingerprint, reason, direction string) {
	n.metrics.Refused("peer_auth")
	if fingerprint == "" {
		fingerprint = "none"
	}
	attrs := append([]attribute.KeyValue{attribute.String(audit.KeyPeerFingerprint, fingerprint)}, peerAddr(remote)...)
	n.audit.Emit(audit.PeerAuthRefused, append(attrs,
		attribute.String(audit.KeyDirection, direction), attribute.String(audit.KeyReason, reason))...)
}

func (n *Node) auditEstablished(l *link, tc *tconn, state tls.ConnectionState, handshake time.Duration) {
	role := "listener"
	if tc.dialed {
		role = "dialer"
	}
	n.metrics.TunnelUp(l.peer.Name, role, tc.qc.Transport(), handshake)
	attrs := []attribute.KeyValue{attribute.String(audit.KeyPeer, l.peer.Name), attribute.String(audit.KeyPeerFingerprint, identity.Fingerprint(tc.key[:]))}
	attrs = append(attrs, peerAddr(tc.qc.RemoteAddr())...)
	n.audit.Emit(audit.TunnelEstablished, append(attrs,
		attribute.String(audit.KeyRole, role),
		attribute.Int64(audit.KeyConnection, int64(tc.id)),
		attribute.Int(audit.KeySlot, tc.slot),
		attribute.String(audit.KeyTLSVersion, "1.3"),
		attribute.String(audit.KeyTLSCipher, tls.CipherSuiteName(state.CipherSuite)),
		attribute.String(audit.KeyTLSCurve, state.CurveID.String()),
		attribute.String(audit.KeyTLSNextProto, state.NegotiatedProtocol),
		attribute.Float64(audit.KeyDuration, handshake.Seconds()))...)
}

func (n *Node) auditTunnelClosed(l *link, tc *tconn) {
	n.metrics.TunnelDown(l.peer.Name, tc.qc.Transport())
	reason, errType := connCloseReason(tc.qc)
	if reason == "open" && n.ctx.Err() != nil {
		reason, errType = "shutdown", "" // the node is closing it now
	}
	attrs := []attribute.KeyValue{attribute.String(audit.KeyPeer, l.peer.Name)}
	attrs = append(attrs, peerAddr(tc.qc.RemoteAddr())...)
	attrs = append(attrs,
		attribute.Int64(audit.KeyConnection, int64(tc.id)),
		attribute.Float64(audit.KeyDuration, time.Since(tc.since).Seconds()),
		attribute.Int64(audit.KeyBytesSent, tc.bytesSent.Load()),
		attribute.Int64(audit.KeyBytesReceived, tc.bytesReceived.Load()),
		attribute.Int64(audit.KeyStreams, tc.streams.Load()),
		attribute.String(audit.KeyCloseReason, reason))
	if errType != "" {
		attrs = append(attrs, attribute.String(audit.KeyErrorType, errType))
	}
	n.audit.Emit(audit.TunnelClosed, attrs...)
}

// connCloseReason classifies why a connection ended (muxConn's contract
// says what its context's cause is).
func connCloseReason(qc muxConn) (reason, errType string) {
	err := context.Cause(qc.Context())
	var app *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	var reset *quic.StatelessResetError
	switch {
	case err == nil:
		return "open", ""
	case errors.As(err, &app):
		switch app.ErrorCode {
		case codeShutdown:
			if app.Remote {
				return "peer_closed", ""
			}
			return "shutdown", ""
		case codeReplaced:
			return "replaced", ""
		case codePeerRemoved:
			return "peer_removed", ""
		case codeKeyChanged:
			return "key_changed", ""
		case codeEndpointChanged:
			return "endpoint_changed", ""
		case codePeerSilent:
			return "peer_silent", "peer_silent"
		case codeTooManyConnections:
			return limitConnsPerPeer, ""
		}
		return "error", "application_error"
	case errors.As(err, &idle):
		return "idle_timeout", "idle_timeout"
	case errors.As(err, &reset):
		return "stateless_reset", "stateless_reset"
	}
	return "error", "transport_error"
}

// streamAttrs are the attributes every stream event starts with.
func streamAttrs(peer, service, direction string, id uint64) []attribute.KeyValue {
	return []attribute.KeyValue{attribute.String(audit.KeyPeer, peer), attribute.String(audit.KeyService, service),
		attribute.String(audit.KeyDirection, direction), attribute.Int64(audit.KeyStreamID, int64(id))}
}

// Stream directions, as the audit events name them.
const (
	inbound  = "inbound"  // this site serves the peer
	outbound = "outbound" // this site forwards to the peer
)

func (n *Node) auditStreamOpened(peer, service, direction string, id uint64, endpoint net.Addr) {
	n.metrics.StreamOpened(peer, service, direction)
	attrs := streamAttrs(peer, service, direction, id)
	ip, port := addrPort(endpoint)
	if direction == inbound {
		attrs = append(attrs, attribute.String(audit.KeyServerAddress, ip), attribute.Int64(audit.KeyServerPort, port))
	} else {
		attrs = append(attrs, attribute.String(audit.KeyClientAddress, ip), attribute.Int64(audit.KeyClientPort, port))
	}
	n.audit.Emit(audit.StreamOpened, attrs...)
}

func (n *Node) auditStreamClosed(tc *tconn, peer, service, direction string, id uint64, res pumpResult, since time.Time) {
	tc.bytesSent.Add(res.sent)
	tc.bytesReceived.Add(res.received)
	n.metrics.StreamClosed(peer, service, direction, res.sent, res.received)
	reason, errType := streamCloseReason(res.err)
	attrs := append(streamAttrs(peer, service, direction, id),
		attribute.Int64(audit.KeyBytesSent, res.sent), attribute.Int64(audit.KeyBytesReceived, res.received),
		attribute.Float64(audit.KeyDuration, time.Since(since).Seconds()), attribute.String(audit.KeyCloseReason, reason))
	if errType != "" {
		attrs = append(attrs, attribute.String(audit.KeyErrorType, errType))
	}
	n.audit.Emit(audit.StreamClosed, attrs...)
}

func streamCloseReason(err error) (reason, errType string) {
	if err == nil {
		return "eof", ""
	}
	var le *LimitError
	if errors.As(err, &le) {
		return le.Limit, ""
	}
	if r := codec.Reason(err); r != "" {
		if errors.Is(err, codec.ErrTruncated) {
			return "truncated", r
		}
		return "rejected_record", r
	}
	return "reset", errorType(err)
}

// errorType names an error's class without its text (which may quote
// addresses or data).
func errorType(err error) string {
	var se *quic.StreamError
	var app *quic.ApplicationError
	var ne net.Error
	var tlsErr *UpstreamTLSError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &tlsErr):
		return tlsErr.errorType()
	case codec.Reason(err) != "":
		return codec.Reason(err)
	case errors.As(err, &se):
		return "stream_reset"
	case errors.As(err, &app):
		return "tunnel_closed"
	case errors.Is(err, errTrailing):
		return "protocol"
	case errors.Is(err, errNoTunnel):
		return "no_tunnel"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection_reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "io"
}

func (n *Node) auditStreamFailed(peer, service, direction, reason string, err error) {
	n.metrics.Refused(reason)
	attrs := []attribute.KeyValue{attribute.String(audit.KeyPeer, peer), attribute.String(audit.KeyService, service),
		attribute.String(audit.KeyDirection, direction), attribute.String(audit.KeyReason, reason)}
	if t := errorType(err); t != "" {
		attrs = append(attrs, attribute.String(audit.KeyErrorType, t))
	}
	n.audit.Emit(audit.StreamFailed, attrs...)
}

func (n *Node) auditPolicyDenied(peer, service string, id uint64, reason string) {
	n.metrics.Refused(reason)
	n.audit.Emit(audit.PolicyDenied, attribute.String(audit.KeyPeer, peer), attribute.String(audit.KeyService, service),
		attribute.Int64(audit.KeyStreamID, int64(id)), attribute.String(audit.KeyReason, reason))
}

func (n *Node) auditRecordRejected(peer, service string, id uint64, reason string) {
	n.Stats.countRejectedRecord(reason)
	n.metrics.RecordRejected(peer, reason)
	attrs := []attribute.KeyValue{attribute.String(audit.KeyPeer, peer)}
	if service != "" {
		attrs = append(attrs, attribute.String(audit.KeyService, service))
	}
	n.audit.Emit(audit.RecordRejected, append(attrs,
		attribute.Int64(audit.KeyStreamID, int64(id)), attribute.String(audit.KeyReason, reason))...)
}

// keyUpdateHook is the codec.Config.OnKeyUpdate of one peer's tunnels. A
// peer cannot make it fire at will: the codec refuses a key update that is
// not due, and the Auditor limits dyad.key.updated per peer (THREATS P5,
// tested by TestKeyUpdateFlood and audit's TestRateLimitPerSource).
func (n *Node) keyUpdateHook(peer string) func(codec.KeyUpdate) {
	if n.audit == nil {
		return nil
	}
	return func(u codec.KeyUpdate) {
		dir := "receive"
		if u.Sending {
			dir = "send"
		}
		n.audit.Emit(audit.KeyUpdated, attribute.String(audit.KeyPeer, peer), attribute.Int64(audit.KeyStreamID, int64(u.StreamID)),
			attribute.String(audit.KeyCodecDirection, dir), attribute.Int64(audit.KeyKeyGeneration, int64(u.Generation)))
	}
}

// dropCounter counts the packets quic-go drops below the tunnel (its
// transport-level qlog events: unknown connection ids, unparseable or
// unsupported packets), by trigger. It is the quic.Transport's Tracer.
type dropCounter struct {
	n *Node

	mu     sync.Mutex // guards counts
	counts map[string]int64
}

var _ qlogwriter.Recorder = (*dropCounter)(nil)

// RecordEvent implements qlogwriter.Recorder.
func (d *dropCounter) RecordEvent(ev qlogwriter.Event) {
	pd, ok := ev.(qlog.PacketDropped)
	if !ok {
		return
	}
	reason := string(pd.Trigger)
	if reason == "" {
		reason = "unknown"
	}
	d.add(reason)
}

// add counts n drops below quic-go (the dark listener's).
func (d *dropCounter) add(reason string) {
	d.n.metrics.PacketsDropped(reason, 1)
	d.n.Stats.PacketsDropped.Add(1)
	d.mu.Lock()
	if d.counts == nil {
		d.counts = map[string]int64{}
	}
	d.counts[reason]++
	d.mu.Unlock()
}

// Close implements qlogwriter.Recorder.
func (d *dropCounter) Close() error { return nil }

// AddProducer implements qlogwriter.Trace: every connection's events go to
// the same counter, which keeps only the drops.
func (d *dropCounter) AddProducer() qlogwriter.Recorder { return d }

// connTrace is quic.Config.Tracer: per-connection drops (undecryptable or
// duplicate packets of established connections).
func (d *dropCounter) connTrace(context.Context, bool, quic.ConnectionID) qlogwriter.Trace { return d }

func (d *dropCounter) take() map[string]int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.counts
	d.counts = nil
	return c
}

// dropInterval is how often packet drops are reported as audit events.
const dropInterval = time.Minute

// reportDrops emits the drop counts once per interval and at the end.
func (n *Node) reportDrops(interval time.Duration) {
	defer n.loops.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			n.emitDrops()
		case <-n.ctx.Done():
			n.emitDrops()
			return
		}
	}
}

// emitDrops emits one aggregate event per drop reason counted since the
// last call.
func (n *Node) emitDrops() {
	n.dropsMu.Lock()
	defer n.dropsMu.Unlock()
	now := time.Now()
	if n.dropsSince.IsZero() {
		n.dropsSince = n.started
	}
	for reason, c := range n.drops.take() {
		n.audit.Emit(audit.PacketsDropped, attribute.String(audit.KeyReason, reason), attribute.Int64(audit.KeyCount, c),
			attribute.Float64(audit.KeyWindow, now.Sub(n.dropsSince).Seconds()))
	}
	n.dropsSince = now
}

// auditLimited records that a limit refused or slowed a stream; scope is
// "peer" or "service".
func (n *Node) auditLimited(peer, service, scope, limit string) {
	n.Stats.countLimited(limit)
	n.metrics.LimitExceeded(peer, limit, scope)
	attrs := []attribute.KeyValue{attribute.String(audit.KeyPeer, peer), attribute.String(audit.KeyLimit, limit),
		attribute.String(audit.KeyScope, scope)}
	if service != "" {
		attrs = append(attrs, attribute.String(audit.KeyService, service))
	}
	n.audit.Emit(audit.RateLimitExceeded, attrs...)
}

// auditConnectionRefused records a peer's connection refused after its
// handshake by a per-peer limit.
func (n *Node) auditConnectionRefused(l *link, remote net.Addr, limit string) {
	n.Stats.countLimited(limit)
	n.metrics.LimitExceeded(l.peer.Name, limit, "peer")
	ip, _ := addrPort(remote)
	n.audit.Emit(audit.RateLimitExceeded, attribute.String(audit.KeyPeer, l.peer.Name), attribute.String(audit.KeyLimit, limit),
		attribute.String(audit.KeyScope, "peer"), attribute.String(audit.KeyPeerAddress, ip))
}

// directionOf names a connection's direction as refusal events do.
func directionOf(dialed bool) string {
	if dialed {
		return outbound
	}
	return inbound
}

// auditListenerLimited records a handshake refused by a listener limit.
func (n *Node) auditListenerLimited(remote net.Addr, limit string) {
	n.Stats.countLimited(limit)
	n.metrics.LimitExceeded("", limit, "listener")
	ip, _ := addrPort(remote)
	n.audit.Emit(audit.RateLimitExceeded, attribute.String(audit.KeyLimit, limit), attribute.String(audit.KeyScope, "listener"),
		attribute.String(audit.KeyPeerAddress, ip))
}
