package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// EnrollALPN is the application protocol of enrollment (codec/FORMAT.md
// section 11): a joiner whose key this daemon does not pin yet presents a
// one-time invitation secret, in one QUIC datagram, and gets one datagram
// back. The connection serves no stream and closes after the exchange.
const EnrollALPN = "dyad-enroll/1"

// Enrollment timing and bounds.
const (
	// enrollResend is how often the joiner repeats its request (datagrams
	// may be lost); the listener answers a repeat with the same reply.
	enrollResend = 500 * time.Millisecond
	// maxEnrollConns bounds enrollment connections served at once; more
	// are closed at once (each is also a tunnel slot and a handshake).
	maxEnrollConns = 8
	// codeEnrollDone closes an enrollment connection.
	codeEnrollDone quic.ApplicationErrorCode = 0x17
)

// enrollWait is how long the listener waits for a joiner's request, and
// the joiner for the reply. A variable only so that tests can shorten it.
var enrollWait = 10 * time.Second

// Enroller answers enrollment requests on the listener. Package daemon
// implements it over its invitations.
type Enroller interface {
	// Pending reports whether an invitation waits to be used: only then
	// does the listener offer EnrollALPN, so a daemon without one refuses
	// an unpinned key exactly as before (THREATS P1).
	Pending() bool
	// Enroll answers one request from a client that proved the Ed25519
	// key signKey in TLS, from remote, and returns the reply. It is called
	// once per connection.
	Enroll(ctx context.Context, signKey []byte, remote net.Addr, req []byte) (reply []byte)
	// Refused is told of a connection that ended without a request
	// (reason "timeout") so that it is audited.
	Refused(signKey []byte, remote net.Addr, reason string)
}

// SetEnroller makes the listener serve enrollment through e (nil: none).
// Call it before a peer may want to enrol.
func (n *Node) SetEnroller(e Enroller) {
	if e == nil {
		n.enroller.Store(nil)
		return
	}
	n.enroller.Store(&e)
}

func (n *Node) enrollerOrNil() Enroller {
	if p := n.enroller.Load(); p != nil {
		return *p
	}
	return nil
}

// offerEnroll reports whether this handshake may negotiate EnrollALPN.
func (n *Node) offerEnroll() bool {
	e := n.enrollerOrNil()
	return e != nil && e.Pending()
}

// serveEnroll runs the listener's side of one enrollment connection: one
// request datagram, one reply (repeated for a repeated request), then the
// connection closes. It never accepts a stream (THREATS P1, tested by
// TestEnrollConnectionServesNoStream).
func (n *Node) serveEnroll(qc *quic.Conn, signKey []byte) {
	e := n.enrollerOrNil()
	select {
	case n.enrollSem <- struct{}{}:
	default:
		qc.CloseWithError(codeEnrollDone, "busy")
		return
	}
	defer func() { <-n.enrollSem }()
	defer qc.CloseWithError(codeEnrollDone, "")
	if e == nil {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, enrollWait)
	defer cancel()
	req, err := qc.ReceiveDatagram(ctx)
	if err != nil {
		e.Refused(signKey, qc.RemoteAddr(), "timeout")
		return
	}
	reply := e.Enroll(ctx, signKey, qc.RemoteAddr(), req)
	qc.SendDatagram(reply)
	// Answer repeats of the request (our reply was lost) until the joiner
	// closes, or the wait ends.
	for {
		again, err := qc.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		if string(again) == string(req) {
			qc.SendDatagram(reply)
		}
	}
}

// Enroll dials endpoint under EnrollALPN, authenticating the server as
// key (the inviter's, from the token), sends req and returns the reply.
// The dial goes through the node's own socket, so its first flight
// carries the dark listener's MAC for key.
func (n *Node) Enroll(ctx context.Context, endpoint string, key identity.PublicKey, req []byte) ([]byte, error) {
	addr, err := net.ResolveUDPAddr("udp", endpoint)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", endpoint, err)
	}
	n.dark.expect(addr, key)
	ctx, cancel := context.WithTimeout(ctx, enrollWait+handshakeTimeout)
	defer cancel()
	tc := n.clientTLS(n.self.Load().cert, Peer{Name: "inviter", Key: key}, addr)
	tc.NextProtos = []string{EnrollALPN}
	qc, err := n.tr.Dial(ctx, addr, tc, n.quicConfig(n.cfg.Load().cfg))
	if err != nil {
		var te *quic.TransportError
		if errors.As(err, &te) && te.Remote && te.ErrorCode == alertNoApplicationProtocol {
			return nil, fmt.Errorf("%s: %w", endpoint, ErrNoEnrollment)
		}
		return nil, fmt.Errorf("dial %s: %w", endpoint, err)
	}
	defer qc.CloseWithError(codeEnrollDone, "")
	if !qc.ConnectionState().SupportsDatagrams.Remote {
		return nil, fmt.Errorf("%s: the inviter does not take datagrams", endpoint)
	}
	t := time.NewTicker(enrollResend)
	defer t.Stop()
	got := make(chan []byte, 1)
	go func() {
		b, err := qc.ReceiveDatagram(ctx)
		if err == nil {
			got <- b
		}
	}()
	for {
		if err := qc.SendDatagram(req); err != nil {
			return nil, fmt.Errorf("send to %s: %w", endpoint, err)
		}
		select {
		case b := <-got:
			return b, nil
		case <-t.C:
		case <-qc.Context().Done():
			return nil, fmt.Errorf("%s closed the enrollment connection without a reply: %w", endpoint, context.Cause(qc.Context()))
		case <-ctx.Done():
			return nil, fmt.Errorf("no reply from %s: %w", endpoint, ctx.Err())
		}
	}
}

// enrollCert returns the Ed25519 key of an enrollment handshake's client
// certificate, refusing (and counting) a handshake without one.
func (n *Node) enrollCert(cs tls.ConnectionState, remote net.Addr) error {
	raw := rawCerts(cs)
	if len(raw) == 0 {
		n.refuseHandshake(remote, "", "no_certificate", inbound)
		return errUnpaired
	}
	if _, err := identity.CertificateKey(raw[0]); err != nil {
		n.refuseHandshake(remote, "", "bad_certificate", inbound)
		return errUnpaired
	}
	return nil
}

var errNotEnroll = errors.New("not an enrollment connection")

// ErrNoEnrollment is Enroll's error when the inviter offers no enrollment
// (no invitation is live there): its TLS refused EnrollALPN.
var ErrNoEnrollment = errors.New("the inviter takes no enrollment now")

// alertNoApplicationProtocol is the QUIC CRYPTO_ERROR of TLS alert 120.
const alertNoApplicationProtocol = quic.TransportErrorCode(0x100 + 120)

// enrollKey returns the client's key on an enrollment connection.
func enrollKey(qc *quic.Conn) ([]byte, error) {
	state := qc.ConnectionState().TLS
	if state.NegotiatedProtocol != EnrollALPN {
		return nil, errNotEnroll
	}
	if len(state.PeerCertificates) == 0 {
		return nil, errUnpaired
	}
	return identity.CertificateKey(state.PeerCertificates[0].Raw)
}
