package tunnel

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// tcpAddr returns n's TCP listening address.
func tcpAddr(t *testing.T, n *Node) string {
	t.Helper()
	addrs := n.TCPAddrs()
	if len(addrs) == 0 {
		t.Fatal("node has no TCP listener")
	}
	return addrs[0].String()
}

// foreignCert is a self-signed certificate of a key no daemon pins.
func foreignCert(t *testing.T) tls.Certificate {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

// TestTCPForeignClientRefused: a TLS client with a key nobody pinned, or
// with none, or offering another ALPN, completes no tunnel on the TCP port;
// each refusal is counted and audited with network.transport tcp. THREATS
// P1 on the TCP transport.
func TestTCPForeignClientRefused(t *testing.T) {
	useTransport(t, TransportTCP)
	echo, accepted := tunneltest.EchoServer(t)
	_, b := pair(t, echo)
	addr := tcpAddr(t, b)
	for _, c := range []struct {
		name   string
		cert   []tls.Certificate
		protos []string
		reason string
	}{
		{"foreign key", []tls.Certificate{foreignCert(t)}, []string{ALPN}, "unknown_key"},
		{"no certificate", nil, []string{ALPN}, "no_certificate"},
		{"previous release alpn", []tls.Certificate{foreignCert(t)}, []string{ALPNv1}, ""},
		{"no alpn", []tls.Certificate{foreignCert(t)}, nil, "unknown_key"},
	} {
		before := b.Stats.HandshakesRefused.Load()
		failedBefore := b.Stats.TCPHandshakesFailed.Load()
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, &tls.Config{
			Certificates: c.cert, NextProtos: c.protos, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		if err == nil {
			// TLS 1.3: the client finishes first; the server's verdict
			// arrives as an alert on the first read.
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil {
			t.Fatalf("%s: handshake accepted", c.name)
		}
		deadline := time.Now().Add(3 * time.Second)
		for b.Stats.TCPHandshakesFailed.Load() == failedBefore && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if b.Stats.TCPHandshakesFailed.Load() == failedBefore {
			t.Fatalf("%s: failed handshake not counted", c.name)
		}
		if c.reason != "" {
			if b.Stats.HandshakesRefused.Load() == before {
				t.Fatalf("%s: refusal not counted", c.name)
			}
			event(t, b, audit.PeerAuthRefused, attribute.String(audit.KeyReason, c.reason),
				attribute.String(audit.KeyTransport, TransportTCP), attribute.String(audit.KeyPeerAddress, "127.0.0.1"),
				attribute.String(audit.KeyDirection, "inbound"))
		}
	}
	if accepted() != 0 {
		t.Fatal("a foreign client reached the upstream")
	}
}

// TestTCPHandshakeLimits: before TLS completes, the TCP port bounds a
// source like the QUIC port does: its half-open share (here 1), then its
// handshake bucket; a silent connection is closed at the handshake
// timeout; refusals are counted and audited. THREATS P5.
func TestTCPHandshakeLimits(t *testing.T) {
	useTransport(t, TransportTCP)
	ida, idb := newIdentity(t), newIdentity(t)
	b := startNode(t, idb, Config{MaxHalfOpen: 16, HandshakesPerSecond: 2, Peers: []Peer{{Name: "a", Key: ida.Public()}}})
	addr := tcpAddr(t, b)
	silent, err := net.Dial("tcp", addr) // holds the source's one half-open place
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	time.Sleep(100 * time.Millisecond)
	// The listener closes the second at once, with a reset: on a slow
	// machine the reset arrives before Dial has read the connect's
	// result, and Dial fails with it (seen in CI under -race).
	second, err := net.Dial("tcp", addr)
	if err == nil {
		second.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err = second.Read(make([]byte, 1))
		second.Close()
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second half-open connection from one source not closed: %v", err)
	}
	if b.Stats.Snapshot()["limited."+limitHalfOpenSource] == 0 {
		t.Fatalf("half-open share not counted: %v", b.Stats.Snapshot())
	}
	event(t, b, audit.RateLimitExceeded, attribute.String(audit.KeyLimit, limitHalfOpenSource), attribute.String(audit.KeyScope, "listener"))
	// The silent one ends at the handshake timeout, and its place is free.
	start := time.Now()
	silent.SetReadDeadline(time.Now().Add(handshakeTimeout + 3*time.Second))
	io.Copy(io.Discard, silent)
	if d := time.Since(start); d > handshakeTimeout+2*time.Second {
		t.Fatalf("silent connection held %v, over the handshake timeout %v", d, handshakeTimeout)
	}
	deadline := time.Now().Add(2 * time.Second)
	for b.admission.halfOpen.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d half-open places still held", b.admission.halfOpen.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The source's handshake bucket (2/s, burst 4), without the
	// half-open cap: a quick burst past it is refused.
	cfg := b.cfg.Load().cfg
	cfg.MaxHalfOpen = -1
	if err := b.Update(cfg); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
		}
	}
	deadline = time.Now().Add(2 * time.Second)
	for b.Stats.Snapshot()["limited.handshakes_per_second"] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("handshake rate not enforced: %v", b.Stats.Snapshot())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTCPStopSendingHonoured: over TCP a refused stream's stop_sending
// must be answered with the peer's FIN; a peer that keeps the stream open
// (here A, deaf to stop_sending, writing on) loses the connection after
// lingerTimeout, so refused streams cannot pile up windows of memory.
// THREATS P5.
func TestTCPStopSendingHonoured(t *testing.T) {
	useTransport(t, TransportTCP)
	echo, _ := tunneltest.EchoServer(t)
	a, b := pair(t, echo)
	tc := current(t, a, "b")
	tc.qc.(*tcpConn).deaf.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := tc.qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := tc.sess.NewWriter(s, s.StreamID(), codec.FromInitiator)
	w.Write(AppendRequest(nil, "private")) // not allowed to A: refused
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // keeps writing whatever B says
		defer wg.Done()
		chunk := bytes.Repeat([]byte{1}, 1024)
		for !stop.Load() {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	select {
	case <-tc.qc.Context().Done():
	case <-time.After(lingerTimeout + 3*lingerCheck):
		t.Fatal("B kept the connection of a peer holding a stopped stream open")
	}
	event(t, b, audit.TunnelClosed, attribute.String(audit.KeyPeer, "a"), attribute.String(audit.KeyTransport, TransportTCP))
	// A well-behaved connection still works.
	c, err := echoOnce(t, a)
	if err != nil {
		t.Fatalf("after the deaf connection: %v", err)
	}
	c.Close()
}

// BenchmarkForwardBulkTCP is BenchmarkForwardBulk over the TCP fallback
// (TLS 1.3, yamux): the profile of the TCP data path
// (`go test -bench ForwardBulkTCP -cpuprofile`); compare with the QUIC
// rows of BenchmarkForwardBulk in one run.
func BenchmarkForwardBulkTCP(b *testing.B) {
	old := defaultTransport
	defaultTransport = TransportTCP
	b.Cleanup(func() { defaultTransport = old })
	forwardBulk(b, false)
}

// TestClientResetNotTruncation: a client that resets its connection
// mid-transfer makes the importer reset the stream; the exporter sees a
// reset, never a stream cut short between records, which it would count
// and audit as an attack (records_rejected.truncation). Over TCP the reset
// travels on the control stream while the data stream ends with a FIN, and
// the FIN could be read first (seen in the bench's logs).
func TestClientResetNotTruncation(t *testing.T) { bothTransports(t, testClientResetNotTruncation) }

func testClientResetNotTruncation(t *testing.T) {
	sink, _ := tunneltest.EchoServer(t)
	a, b := pair(t, sink)
	for range 20 {
		c, done := forward(t, a, "echo")
		c.Write(bytes.Repeat([]byte{7}, 256<<10))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		<-done
	}
	time.Sleep(500 * time.Millisecond)
	if n := b.Stats.Snapshot()["records_rejected.truncation"]; n != 0 {
		t.Fatalf("the exporter counted %d truncations for client resets: %v", n, b.Stats.Snapshot())
	}
}
