package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
)

// Transport selection for a peer with transport: auto (the default).
//
// State machine of one link, kept in fallback:
//
//	quic --(a QUIC dial got no answer within FallbackAfter)--> tcp
//	tcp  --(a background QUIC probe of slot 0 completed)-----> quic
//	tcp  --(a TCP dial failed, the QUIC dial after it did not)--> quic
//
// On tcp, new dials use TCP at once, and slot 0 probes QUIC every
// quicProbeEvery (doubling up to maxQUICProbeEvery). A probe that completes is a
// real connection: it takes slot 0, the TCP connection there is retired
// (no new streams; it closes after its last stream, or retireGrace), and the
// other slots redial on QUIC the same way. A QUIC dial that was answered
// but refused (a wrong key, a full listener) is no reason to fall back: it
// fails as it would with transport: quic. Every switch is logged once and
// audited (dyad.tunnel.transport_changed) with its reason.

// DefaultFallbackAfter is Peer.FallbackAfter's default.
const DefaultFallbackAfter = 2 * time.Second

// Background QUIC probes while a peer is on TCP: the first after
// quicProbeEvery, doubling up to maxQUICProbeEvery (variables for the tests).
var (
	quicProbeEvery    = 5 * time.Second
	maxQUICProbeEvery = 60 * time.Second
)

// fallback is an auto link's transport state.
type fallback struct {
	mu      sync.Mutex    // guards the following fields
	onTCP   bool          // QUIC got no answer: dial TCP, probe QUIC
	backoff time.Duration // the next probe's delay
}

func (f *fallback) tcp() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.onTCP
}

// defaultTransport is what an empty Peer.Transport means: TransportAuto.
// The tunnel tests set it to run one test body over each transport
// (transport_test.go); nothing else changes it.
var defaultTransport = TransportAuto

// transport is p's transport with the default applied.
func (p Peer) transport() string {
	if p.Transport == "" {
		return defaultTransport
	}
	return p.Transport
}

func (p Peer) fallbackAfter() time.Duration {
	if p.FallbackAfter <= 0 {
		return DefaultFallbackAfter
	}
	return p.FallbackAfter
}

// sameTransport reports whether q dials p the same way (a reload that
// changes it redials, as a changed endpoint does).
func (p Peer) sameTransport(q Peer) bool {
	return p.transport() == q.transport() && p.fallbackAfter() == q.fallbackAfter() && p.Proxy == q.Proxy
}

func (p Peer) validateTransport() error {
	switch p.Transport {
	case "", TransportQUIC, TransportTCP, TransportAuto:
	default:
		return fmt.Errorf("transport: %q is not quic, tcp or auto", p.Transport)
	}
	if p.FallbackAfter < 0 {
		return fmt.Errorf("fallback_after: %v is negative", p.FallbackAfter)
	}
	if p.Proxy != "" {
		if err := p.ValidateProxy(); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
	}
	return nil
}

// ValidateProxy checks Proxy: an http://host:port URL without
// credentials, on a peer whose transport can use it.
func (p Peer) ValidateProxy() error {
	u, err := url.Parse(p.Proxy)
	if err != nil || u.Scheme != "http" || u.Host == "" || u.User != nil || u.Path != "" && u.Path != "/" {
		// The URL is not repeated: it might carry credentials.
		return errors.New("want http://host:port, without credentials (they come from DYAD_PROXY_USER and DYAD_PROXY_PASSWORD)")
	}
	if p.Transport == TransportQUIC {
		return errors.New("needs transport tcp or auto: a proxy carries TCP only")
	}
	return nil
}

// dialTransport dials p (the link's peer as it is now) over the transport
// the link uses now, presenting cert.
func (l *link) dialTransport(ctx context.Context, p Peer, cert tls.Certificate) (muxConn, error) {
	switch p.transport() {
	case TransportQUIC:
		return l.dialQUIC(ctx, p, cert)
	case TransportTCP:
		return l.dialTCP(ctx, p, cert)
	}
	if l.fb.tcp() {
		c, err := l.dialTCP(ctx, p, cert)
		if err == nil || ctx.Err() != nil {
			return c, err
		}
		// TCP failed too (the partner may not listen on it): QUIC gets
		// this attempt's second chance, so a path that unblocked UDP
		// is found without a TCP connection to probe from.
		qctx, cancel := context.WithTimeout(ctx, p.fallbackAfter())
		qc, qerr := l.dialQUIC(qctx, p, cert)
		cancel()
		if qerr != nil {
			return nil, err
		}
		l.switchTransport(false, "quic_answered")
		return qc, nil
	}
	qctx, cancel := context.WithTimeout(ctx, p.fallbackAfter())
	c, err := l.dialQUIC(qctx, p, cert)
	cancel()
	if err == nil || ctx.Err() != nil || !noAnswer(err) {
		return c, err
	}
	l.switchTransport(true, "quic_no_answer")
	return l.dialTCP(ctx, p, cert)
}

// noAnswer reports whether a QUIC dial failed for want of any answer (UDP
// blocked or dropped), rather than being answered and refused.
func noAnswer(err error) bool {
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &idle) || errors.As(err, &hs)
}

// switchTransport moves an auto link to TCP (toTCP) or back to QUIC, and
// logs and audits the change once; a switch to where the link already is
// does nothing.
func (l *link) switchTransport(toTCP bool, reason string) {
	l.fb.mu.Lock()
	if l.fb.onTCP == toTCP {
		l.fb.mu.Unlock()
		return
	}
	l.fb.onTCP = toTCP
	l.fb.backoff = quicProbeEvery
	l.fb.mu.Unlock()
	from, to := TransportQUIC, TransportTCP
	if !toTCP {
		from, to = to, from
	}
	l.n.Stats.TransportChanges.Add(1)
	l.n.log.Warn().Str("peer", l.peer.Name).Str("from", from).Str("to", to).Str("reason", reason).
		Msg("tunnel transport changed")
	l.n.audit.Emit(audit.TransportChanged, attribute.String(audit.KeyPeer, l.peer.Name),
		attribute.String(audit.KeyTransport, to), attribute.String(audit.KeyTransportFrom, from),
		attribute.String(audit.KeyReason, reason))
	l.mu.Lock()
	l.notifyLocked() // dial loops re-read the transport
	l.mu.Unlock()
}

// upgradeDue returns a channel that fires when slot's TCP connection tc should
// be replaced by a QUIC one now: at once once the link is back on QUIC,
// and for slot 0 on TCP, when the next background probe is due (nil: not
// an auto link on TCP, nothing to do). stop releases its timer.
func (l *link) upgradeDue(slot int, tc *tconn) (fire <-chan time.Time, stop func()) {
	if tc == nil || tc.qc.Transport() != TransportTCP || l.current().transport() != TransportAuto {
		return nil, func() {}
	}
	l.fb.mu.Lock()
	onTCP, d := l.fb.onTCP, l.fb.backoff
	l.fb.mu.Unlock()
	switch {
	case !onTCP:
		d = 0
	case slot != 0:
		return nil, func() {}
	}
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}

// upgrade dials QUIC for slot, whose connection old is on TCP; if QUIC
// answers, the new connection takes the slot and old is retired (its
// streams finish), and the link is back on QUIC.
func (l *link) upgrade(slot int, old *tconn) {
	p := l.current()
	ctx, cancel := context.WithTimeout(l.ctx, max(p.fallbackAfter(), handshakeTimeout))
	defer cancel()
	start := time.Now()
	local, cert := l.n.self.Load().forPeer(l.acked.Load())
	qc, err := l.dialQUIC(ctx, p, cert)
	if err == nil {
		if err = qc.AwaitReady(ctx); err != nil {
			qc.CloseWithError(codeSetupFailed, "no ready signal")
		}
	}
	if err != nil {
		l.fb.mu.Lock()
		l.fb.backoff = min(2*l.fb.backoff, maxQUICProbeEvery)
		l.fb.mu.Unlock()
		if !noAnswer(err) {
			l.n.log.Debug().Err(err).Str("peer", l.peer.Name).Msg("quic probe failed")
		}
		return
	}
	if err := l.attach(qc, local, true, slot, time.Since(start)); err != nil {
		qc.CloseWithError(codeSetupFailed, "setup failed")
		return
	}
	old.retire()
	l.switchTransport(false, "quic_answered")
}

// dialProxy opens a TCP connection to target through the HTTP proxy
// proxyURL with CONNECT. Basic credentials come from DYAD_PROXY_USER and
// DYAD_PROXY_PASSWORD; no error or log line carries them.
func dialProxy(ctx context.Context, proxyURL, target string) (net.Conn, error) {
	u, err := url.Parse(proxyURL)
	if err != nil {
		return nil, errors.New("proxy: not a URL")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", u.Host, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: target}, Host: target, Header: http.Header{}}
	if user := os.Getenv("DYAD_PROXY_USER"); user != "" {
		cred := base64.StdEncoding.EncodeToString([]byte(user + ":" + os.Getenv("DYAD_PROXY_PASSWORD")))
		req.Header.Set("Proxy-Authorization", "Basic "+cred)
	}
	if err := req.Write(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("proxy %s: CONNECT %s: %w", u.Host, target, err)
	}
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("proxy %s: CONNECT %s: %w", u.Host, target, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("proxy %s: CONNECT %s: %s", u.Host, target, resp.Status)
	}
	if br.Buffered() > 0 { // the TLS server speaks only after our ClientHello
		c.Close()
		return nil, fmt.Errorf("proxy %s: CONNECT %s: bytes before the tunnel", u.Host, target)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
