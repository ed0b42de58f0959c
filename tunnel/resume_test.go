package tunnel

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// ticketCache is a client session cache that counts the tickets it gets.
type ticketCache struct {
	tls.ClientSessionCache
	puts atomic.Int64
}

func (c *ticketCache) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.puts.Add(1)
	}
	c.ClientSessionCache.Put(key, cs)
}

// foreignClient is a plain quic-go client holding id's key and a session
// cache, whose first flights carry the MAC of the dark listener at server.
type foreignClient struct {
	tr     *quic.Transport
	tlsc   *tls.Config
	server *net.UDPAddr
}

func newForeignClient(t *testing.T, id *identity.Identity, server *Node, cache tls.ClientSessionCache) *foreignClient {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := server.Addr().(*net.UDPAddr)
	f := newDarkFilter(newDarkKey(id.Public()), func(string) {})
	f.expect(addr, server.Identity())
	tr := &quic.Transport{Conn: newDarkConn(udp, f, nil)}
	t.Cleanup(func() { tr.Close() })
	cert, err := id.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return &foreignClient{tr: tr, server: addr, tlsc: &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, NextProtos: []string{ALPN},
		ServerName: "dyad", InsecureSkipVerify: true, ClientSessionCache: cache,
	}}
}

// dial runs a handshake and waits for the server's ready signal.
func (c *foreignClient) dial() (*quic.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	qc, err := c.tr.Dial(ctx, c.server, c.tlsc, &quic.Config{HandshakeIdleTimeout: 2 * time.Second, InitialPacketSize: initialPacket})
	if err != nil {
		return nil, err
	}
	if err := awaitReady(ctx, qc); err != nil {
		qc.CloseWithError(0, "")
		return qc, err
	}
	return qc, nil
}

// TestResumedSessionRefused: a client that got a TLS session ticket while
// paired, and whose key a reload then removed, completes no tunnel by
// resuming the session; the refusal is counted and audited with its key
// and source address. THREATS P1 (every path, every refusal audited).
func TestResumedSessionRefused(t *testing.T) {
	ida, idb := newIdentity(t), newIdentity(t)
	b := startNode(t, idb, Config{Peers: []Peer{{Name: "a", Key: ida.Public()}}})
	cache := &ticketCache{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	c := newForeignClient(t, ida, b, cache)
	qc, err := c.dial()
	if err != nil {
		t.Fatalf("paired client: %v", err)
	}
	// A ticket, if the server issues any, follows the handshake.
	for deadline := time.Now().Add(time.Second); cache.puts.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("session tickets received while paired: %d", cache.puts.Load())
	qc.CloseWithError(0, "")

	if err := b.Update(Config{}); err != nil {
		t.Fatal(err)
	}
	refused := b.Stats.HandshakesRefused.Load()
	qc, err = c.dial()
	if err == nil {
		t.Fatalf("removed peer completed a tunnel (resumed %v)", qc.ConnectionState().TLS.DidResume)
	}
	deadline := time.Now().Add(3 * time.Second)
	for b.Stats.HandshakesRefused.Load() == refused && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if b.Stats.HandshakesRefused.Load() == refused {
		resumed := qc != nil && qc.ConnectionState().TLS.DidResume
		t.Fatalf("refusal not counted (resumed %v, dial err %v)", resumed, err)
	}
	_, port := addrPort(c.tr.Conn.LocalAddr())
	event(t, b, audit.PeerAuthRefused, attribute.String(audit.KeyPeerFingerprint, ida.Public().Fingerprint()),
		attribute.String(audit.KeyPeerAddress, "127.0.0.1"), attribute.Int64(audit.KeyPeerPort, port),
		attribute.String(audit.KeyDirection, "inbound"))
}

// TestNotPairedAtAdoptRefused: a connection whose handshake passed but
// whose key is no longer paired when the node adopts it (a reload raced
// the handshake) is closed, counted and audited. THREATS P1.
func TestNotPairedAtAdoptRefused(t *testing.T) {
	ida := newIdentity(t)
	b := startNode(t, newIdentity(t), Config{})
	// A listener of our own completes the handshake that B's reload would
	// have raced, and hands the connection to B's adopt.
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{selfSigned(t)},
		ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{ALPN}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cert, _ := ida.Certificate()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cc, err := quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{ALPN},
		InsecureSkipVerify: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.CloseWithError(0, "")
	qc, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b.adopt(quicConn{qc})
	if err := awaitReady(ctx, cc); err == nil {
		t.Fatal("an unpaired connection got the ready signal")
	}
	if got := b.Stats.HandshakesRefused.Load(); got != 1 {
		t.Fatalf("HandshakesRefused = %d, want 1", got)
	}
	_, port := addrPort(cc.LocalAddr())
	event(t, b, audit.PeerAuthRefused, attribute.String(audit.KeyPeerFingerprint, ida.Public().Fingerprint()),
		attribute.String(audit.KeyPeerAddress, "127.0.0.1"), attribute.Int64(audit.KeyPeerPort, port),
		attribute.String(audit.KeyDirection, "inbound"), attribute.String(audit.KeyReason, "not_paired"))
}
