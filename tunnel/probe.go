package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/dyad-tunnel/dyad/codec"
)

// ProbeOutcome is what one probe of a peer found (`dyad ping`).
type ProbeOutcome int

// Probe outcomes. Each has its own exit code in `dyad ping` (README,
// "dyad ping"; TestPingOutcomes).
const (
	// ProbeOK: the handshake completed both ways, and the service (when
	// one was named) accepted the stream.
	ProbeOK ProbeOutcome = iota
	// ProbeNoAnswer: nothing answered our first flight. The partner's
	// daemon is down, a firewall drops the UDP, or the key pinned for the
	// peer is not the partner's: the dark listener answers only a first
	// flight whose MAC is keyed from its own public key (codec/FORMAT.md,
	// section 9), so a wrong pin and a dead network look the same.
	ProbeNoAnswer
	// ProbeKeyMismatch: the partner answered (its dark listener is off)
	// with another key than the pinned one.
	ProbeKeyMismatch
	// ProbeRefused: the partner answered and refused our certificate: it
	// does not pin this site's key.
	ProbeRefused
	// ProbeServiceDenied: the service is unknown to the partner or not
	// allowed to us (answered as a stream is, so a probe learns no more
	// about which services exist than a stream does).
	ProbeServiceDenied
	// ProbeUpstreamDown: the partner could not reach the service's
	// upstream.
	ProbeUpstreamDown
	// ProbeOtherRefusal: the partner refused for another reason (limits,
	// too many connections, shutting down, audit unavailable).
	ProbeOtherRefusal
	// ProbeFailed: the probe could not run or ended unexpectedly.
	ProbeFailed
	// ProbeNotReady: the partner completed the handshake, so it holds the
	// pinned key, but did not confirm the tunnel (the ready signal) in
	// time: its daemon is stalled or overloaded, or the path lost what
	// followed the handshake.
	ProbeNotReady
)

// ProbeResult is a probe's finding.
type ProbeResult struct {
	Outcome ProbeOutcome
	// Handshake is the time to a completed handshake and the partner's
	// ready signal; StreamRTT from the request to the service's answer.
	Handshake, StreamRTT time.Duration
	RTT                  time.Duration // the transport's round trip at the end (QUIC's smoothed RTT, a yamux ping's)
	Transport            string        // the transport that answered: quic or tcp (empty when none did)
	Group                string        // the TLS key exchange group, e.g. X25519MLKEM768
	Protocol             string        // the negotiated ALPN
	Status               Status        // the service's answer, when a service was probed
	Err                  error         // what went wrong, for every outcome but ProbeOK
}

// Probe dials peer once at endpoint (its configured endpoint when empty)
// with this node's identity, waits for the partner's ready signal, and,
// when service is not empty, opens one stream for it and reads the answer.
// An accepted stream is closed at once: the partner's upstream sees a
// connection open and close. The connection is closed before Probe
// returns; ctx bounds the whole probe. It classifies what it found for
// people (ProbeOutcome); the node itself need not serve anything.
func (n *Node) Probe(ctx context.Context, peer, endpoint, service string) ProbeResult {
	l := n.link(peer)
	if l == nil {
		return ProbeResult{Outcome: ProbeFailed, Err: fmt.Errorf("peer %s: not configured", peer)}
	}
	if endpoint == "" {
		endpoint = l.current().Endpoint
	}
	if endpoint == "" {
		return ProbeResult{Outcome: ProbeFailed, Err: fmt.Errorf("peer %s: no endpoint to dial (give one)", peer)}
	}
	p := l.current()
	p.Endpoint = endpoint
	peerKey := p.Key
	cfg := n.cfg.Load().cfg
	local, cert := n.self.Load().forPeer(l.acked.Load())
	start := time.Now()
	qc, err := l.probeDial(ctx, p, cert)
	if err != nil {
		return ProbeResult{Outcome: classifyDial(err), Err: err}
	}
	if err := qc.AwaitReady(ctx); err != nil {
		qc.CloseWithError(codeSetupFailed, "probe: no ready signal")
		out := classifyDial(err)
		switch {
		case out == ProbeFailed && qc.Transport() == TransportTCP:
			// The listener ended the connection after our certificate
			// (TLS 1.3: the client finishes first): a refusal, as QUIC's
			// CRYPTO_ERROR from the peer is.
			out = ProbeRefused
		case out == ProbeNoAnswer:
			// The handshake proved the partner's key: "no answer", whose
			// causes include a wrong pin, would mislead (THREATS P10,
			// tested by TestProbeNotReady).
			out = ProbeNotReady
		}
		return ProbeResult{Outcome: out, Transport: qc.Transport(), Err: err}
	}
	defer qc.CloseWithError(codeShutdown, "probe done")
	state := qc.TLSState()
	res := ProbeResult{Outcome: ProbeOK, Transport: qc.Transport(), Handshake: time.Since(start), Group: state.CurveID.String(), Protocol: state.NegotiatedProtocol}
	res.RTT = probeRTT(qc)
	if service == "" {
		return res
	}
	secret, err := state.ExportKeyingMaterial(exporterLabel, nil, codec.SecretSize)
	if err != nil {
		return ProbeResult{Outcome: ProbeFailed, Err: fmt.Errorf("tls exporter: %w", err)}
	}
	pairing, err := local.PairingSecret(peerKey)
	if err != nil {
		clear(secret)
		return ProbeResult{Outcome: ProbeFailed, Err: fmt.Errorf("pairing with %s: %w", peerKey.Fingerprint(), err)}
	}
	sess, err := codec.NewSession(secret, pairing, codec.Config{Suite: cfg.Suite})
	clear(secret)
	clear(pairing)
	if err != nil {
		return ProbeResult{Outcome: ProbeFailed, Err: err}
	}
	s, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return ProbeResult{Outcome: ProbeFailed, Err: fmt.Errorf("open stream: %w", err)}
	}
	id := uint64(s.StreamID())
	w, r := sess.NewWriter(s, id, codec.FromInitiator), sess.NewReader(s, id, codec.FromResponder)
	defer r.Release()
	asked := time.Now()
	if _, err := w.Write(AppendRequest(nil, service)); err != nil {
		return ProbeResult{Outcome: ProbeFailed, Err: fmt.Errorf("service %s: send request: %w", service, err)}
	}
	if d, ok := ctx.Deadline(); ok {
		s.SetReadDeadline(d)
	}
	resp, err := r.Next()
	if err != nil {
		s.CancelRead(codeLocalReset)
		s.CancelWrite(codeLocalReset)
		return ProbeResult{Outcome: ProbeFailed, Err: fmt.Errorf("service %s: no answer: %w", service, err)}
	}
	res.StreamRTT = time.Since(asked)
	res.Status, err = ParseResponse(resp)
	if err != nil {
		return ProbeResult{Outcome: ProbeFailed, Err: fmt.Errorf("service %s: %w", service, err)}
	}
	w.Close() // ends the stream cleanly: the upstream connection closes
	s.Close()
	s.CancelRead(codeLocalReset)
	switch res.Status {
	case StatusAccepted:
	case StatusUnknownService, StatusNotAllowed:
		// One outcome for both (THREATS P2: a probe learns no more about
		// which services exist than a stream; TestPingOutcomes).
		res.Outcome = ProbeServiceDenied
	case StatusUpstreamDown:
		res.Outcome = ProbeUpstreamDown
	default:
		res.Outcome = ProbeOtherRefusal
	}
	if res.Outcome != ProbeOK {
		res.Err = &RefusedError{Peer: peer, Service: service, Status: res.Status}
	}
	res.RTT = probeRTT(qc)
	return res
}

// probeDial dials p once for a probe over p's transport; auto tries QUIC
// and, when nothing answers within FallbackAfter, TCP, without moving the
// link's own transport (fallback.go). With both unanswered it reports
// QUIC's error.
func (l *link) probeDial(ctx context.Context, p Peer, cert tls.Certificate) (muxConn, error) {
	switch p.transport() {
	case TransportQUIC:
		return l.dialQUIC(ctx, p, cert)
	case TransportTCP:
		return l.dialTCP(ctx, p, cert)
	}
	qctx, cancel := context.WithTimeout(ctx, p.fallbackAfter())
	c, err := l.dialQUIC(qctx, p, cert)
	cancel()
	if err == nil || ctx.Err() != nil || !noAnswer(err) {
		return c, err
	}
	c, terr := l.dialTCP(ctx, p, cert)
	if terr != nil && classifyDial(terr) == ProbeNoAnswer {
		return nil, err
	}
	return c, terr
}

// probeRTT is the connection's round trip: QUIC's smoothed RTT, or over
// TCP the time of one yamux ping.
func probeRTT(qc muxConn) time.Duration {
	if t, ok := qc.(*tcpConn); ok {
		if rtt, err := t.sess.Ping(); err == nil {
			return rtt
		}
	}
	return qc.RTT()
}

// classifyDial names what a failed dial (or a missing ready signal) means.
// A wrong pinned key is told apart from a dead network only where the
// protocol allows it (THREATS P10): behind a dark listener it cannot be
// (P9), so ProbeNoAnswer names all three causes; tested by TestPingOutcomes.
func classifyDial(err error) ProbeOutcome {
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	var te *quic.TransportError
	var ae *quic.ApplicationError
	var op *net.OpError
	switch {
	case errors.As(err, &idle), errors.As(err, &hs), errors.Is(err, context.DeadlineExceeded):
		return ProbeNoAnswer
	case errors.Is(err, errUnpaired):
		return ProbeKeyMismatch // our check of its certificate failed (TCP)
	case errors.Is(err, syscall.ECONNREFUSED):
		return ProbeNoAnswer // nothing listens on the TCP port
	case errors.As(err, &op) && op.Op == "remote error":
		return ProbeRefused // a TLS alert from the TCP listener
	case errors.As(err, &te) && !te.Remote && te.ErrorCode.IsCryptoError():
		return ProbeKeyMismatch // our check of its certificate failed
	case errors.As(err, &te) && te.Remote && te.ErrorCode.IsCryptoError():
		return ProbeRefused // its check of ours failed
	case errors.As(err, &ae) && ae.Remote && ae.ErrorCode == codePeerRemoved:
		return ProbeRefused // adopted no link for our key
	case errors.As(err, &te) && te.Remote, errors.As(err, &ae) && ae.Remote:
		return ProbeOtherRefusal // e.g. too many connections, handshake rate
	}
	return ProbeFailed
}
