package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"
)

// LocalConn is a Conn with its remote address, for events: the local
// client on the importing side (Forward; a forward whose responses are
// checked passes an apiguard.CheckedConn) and the dialed upstream on the
// exporting side (a *net.TCPConn, or a *tlsUpstream with upstream_tls).
type LocalConn interface {
	Conn
	RemoteAddr() net.Addr
}

var (
	_ LocalConn = (*net.TCPConn)(nil)
	_ LocalConn = (*tlsUpstream)(nil)
)

// tlsUpstream is a TLS client connection to an upstream over TCP.
type tlsUpstream struct {
	*tls.Conn
	tcp *net.TCPConn
}

// CloseWrite sends close_notify, then half-closes the TCP connection, so an
// upstream that reads to EOF sees the end of the request either way.
func (u *tlsUpstream) CloseWrite() error {
	if err := u.Conn.CloseWrite(); err != nil {
		return err
	}
	return u.tcp.CloseWrite()
}

// SetLinger sets the TCP connection's linger (0: Close resets).
func (u *tlsUpstream) SetLinger(sec int) error { return u.tcp.SetLinger(sec) }

// UpstreamTLSError is a failed TLS handshake with a service's upstream.
// Verify says whether the upstream's certificate failed verification (as
// opposed to a handshake the upstream broke off, e.g. because it wanted a
// client certificate we do not have).
type UpstreamTLSError struct {
	Service string
	Verify  bool
	Err     error
}

func (e *UpstreamTLSError) Error() string {
	what := "TLS handshake"
	if e.Verify {
		what = "TLS certificate verification"
	}
	return fmt.Sprintf("service %s: upstream %s failed: %v", e.Service, what, e.Err)
}

func (e *UpstreamTLSError) Unwrap() error { return e.Err }

// errorType is the audit's error.type of a failed handshake.
func (e *UpstreamTLSError) errorType() string {
	if e.Verify {
		return "tls_verify"
	}
	return "tls_handshake"
}

// dialUpstream dials a service's upstream (the only address a peer can make
// us dial: THREATS P2) and, when the service has TLS, completes the
// handshake with verification, all within timeout.
func dialUpstream(ctx context.Context, e *serviceEntry, timeout time.Duration) (LocalConn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", e.Upstream)
	if err != nil {
		return nil, err
	}
	tcp := c.(*net.TCPConn)
	if e.TLS == nil {
		return tcp, nil
	}
	// A verification failure is refused like any unreachable upstream
	// (TestUpstreamTLS, wrong CA and wrong name): the configuration has no
	// way to disable verification (THREATS P2: only the configured upstream).
	tc := tls.Client(tcp, e.TLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		tcp.SetLinger(0)
		tcp.Close()
		var verr *tls.CertificateVerificationError
		var hn x509.HostnameError
		var ua x509.UnknownAuthorityError
		var ci x509.CertificateInvalidError
		verify := errors.As(err, &verr) || errors.As(err, &hn) || errors.As(err, &ua) || errors.As(err, &ci)
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, err // counted as the timeout it is
		}
		return nil, &UpstreamTLSError{Service: e.Name, Verify: verify, Err: err}
	}
	return &tlsUpstream{Conn: tc, tcp: tcp}, nil
}
