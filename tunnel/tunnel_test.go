package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/audittest"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

type site struct {
	id   *identity.Identity
	node *Node
}

func newIdentity(t testing.TB) *identity.Identity {
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// startNode starts a node whose audit events go to a test journal.
func startNode(t testing.TB, id *identity.Identity, cfg Config) *Node {
	t.Helper()
	aud := audittest.NewJournal(t)
	n := startNodeWith(t, id, cfg, aud.Auditor)
	journals.Store(n, aud)
	return n
}

// startNodeWith starts a node auditing to aud (nil for none).
func startNodeWith(t testing.TB, id *identity.Identity, cfg Config, aud *audit.Auditor) *Node {
	t.Helper()
	pc, ln := testSockets(t)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	if testing.Verbose() {
		log = zerolog.New(os.Stderr)
	}
	n, err := New(pc, id, cfg, log, aud)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	if ln != nil {
		n.ServeTCP(ln)
	}
	return n
}

// journals holds each test node's audit journal.
var journals sync.Map // *Node → *audittest.Journal

// event waits up to 5 s for an audit event of n named name whose
// attributes include want, and returns it.
func event(t *testing.T, n *Node, name string, want ...attribute.KeyValue) journal.Entry {
	t.Helper()
	v, _ := journals.Load(n)
	tj := v.(*audittest.Journal)
	var found journal.Entry
	ok := tj.WaitFor(5*time.Second, func(es []journal.Entry) bool {
		for _, e := range es {
			if e.Name != name {
				continue
			}
			match := true
			for _, kv := range want {
				if e.Attr(string(kv.Key)) != kv.Value {
					match = false
				}
			}
			if match {
				found = e
				return true
			}
		}
		return false
	})
	if !ok {
		var names []string
		for _, e := range tj.Entries() {
			names = append(names, e.Name)
		}
		t.Fatalf("no %s event with %v; journal has %v", name, want, names)
	}
	return found
}

// pair starts site B exporting "echo" (allowed to A) and site A dialing B.
func pair(t *testing.T, upstream string) (a, b *Node) {
	ida, idb := newIdentity(t), newIdentity(t)
	b = startNode(t, idb, Config{
		Peers:    []Peer{{Name: "a", Key: ida.Public()}},
		Services: []Service{{Name: "echo", Upstream: upstream, Allow: []string{"a"}}, {Name: "private", Upstream: upstream}},
	})
	a = startNode(t, ida, Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: b.Addr().String()}}})
	return a, b
}

// forward serves one local connection through a to service at peer b and
// returns the client end.
func forward(t *testing.T, a *Node, service string) (client net.Conn, done <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Dial before the forward starts, so a fast refusal cannot race the
	// client's connect.
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- a.Forward(context.Background(), c.(*net.TCPConn), "b", service) }()
	t.Cleanup(func() { client.Close() })
	return client, errc
}

func TestForwardEchoAndHalfClose(t *testing.T) { bothTransports(t, testForwardEchoAndHalfClose) }

func testForwardEchoAndHalfClose(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b := pair(t, echo)
	client, done := forward(t, a, "echo")
	msg := make([]byte, 3<<20)
	rand.Read(msg)
	go func() {
		client.Write(msg)
		client.(*net.TCPConn).CloseWrite() // half-close: the echo must still come back
	}()
	got, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %d of %d bytes, err %v", len(got), len(msg), err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Forward: %v", err)
	}
	if b.Stats.StreamsAccepted.Load() != 1 || a.Stats.StreamsForwarded.Load() != 1 {
		t.Fatalf("stats: %v / %v", a.Stats.Snapshot(), b.Stats.Snapshot())
	}
	// The audit trail of both sides.
	est := event(t, a, audit.TunnelEstablished, attribute.String(audit.KeyPeer, "b"), attribute.String(audit.KeyRole, "dialer"),
		attribute.String(audit.KeyTLSCurve, "X25519MLKEM768"), attribute.String(audit.KeyTLSNextProto, ALPN),
		attribute.String(audit.KeyPeerAddress, "127.0.0.1"), attribute.String(audit.KeyPeerFingerprint, b.Identity().Fingerprint()))
	if d := est.Attr(audit.KeyDuration).AsFloat64(); d <= 0 || d > 5 {
		t.Errorf("handshake duration %v", d)
	}
	event(t, b, audit.TunnelEstablished, attribute.String(audit.KeyPeer, "a"), attribute.String(audit.KeyRole, "listener"))
	event(t, a, audit.StreamOpened, attribute.String(audit.KeyService, "echo"), attribute.String(audit.KeyDirection, "outbound"),
		attribute.String(audit.KeyClientAddress, "127.0.0.1"))
	up := event(t, b, audit.StreamOpened, attribute.String(audit.KeyService, "echo"), attribute.String(audit.KeyDirection, "inbound"),
		attribute.String(audit.KeyServerAddress, "127.0.0.1"))
	if _, port, _ := net.SplitHostPort(echo); fmt.Sprint(up.Attr(audit.KeyServerPort).AsInt64()) != port {
		t.Errorf("server.port %v, upstream %s", up.Attr(audit.KeyServerPort).Emit(), echo)
	}
	n := int64(len(msg))
	event(t, a, audit.StreamClosed, attribute.String(audit.KeyCloseReason, "eof"),
		attribute.Int64(audit.KeyBytesSent, n), attribute.Int64(audit.KeyBytesReceived, n))
	event(t, b, audit.StreamClosed, attribute.String(audit.KeyCloseReason, "eof"), attribute.String(audit.KeyDirection, "inbound"),
		attribute.Int64(audit.KeyBytesSent, n), attribute.Int64(audit.KeyBytesReceived, n))
	// Closing A ends the tunnel: B records it with the bytes carried.
	a.Close()
	closed := event(t, b, audit.TunnelClosed, attribute.String(audit.KeyPeer, "a"), attribute.String(audit.KeyCloseReason, "peer_closed"),
		attribute.Int64(audit.KeyStreams, 1), attribute.Int64(audit.KeyBytesSent, n), attribute.Int64(audit.KeyBytesReceived, n))
	if closed.Attr(audit.KeyDuration).AsFloat64() <= 0 {
		t.Error("tunnel duration not positive")
	}
}

// TestPostQuantumKeyExchange: quic-go's default hybrid X25519MLKEM768 is what
// the tunnel negotiates.
func TestPostQuantumKeyExchange(t *testing.T) { bothTransports(t, testPostQuantumKeyExchange) }

func testPostQuantumKeyExchange(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, _ := pair(t, echo)
	client, _ := forward(t, a, "echo")
	client.Write([]byte("x"))
	io.ReadFull(client, make([]byte, 1))
	tc, _ := a.link("b").get()
	if got := tc.qc.TLSState().CurveID; got != tls.X25519MLKEM768 {
		t.Fatalf("key exchange %v, want X25519MLKEM768", got)
	}
	if got := tc.qc.TLSState().NegotiatedProtocol; got != ALPN {
		t.Fatalf("ALPN %q", got)
	}
}

// TestServiceNotAllowed and TestUnknownService: THREATS P2. The exporter
// refuses with a typed status and never dials the upstream.
func TestServiceNotAllowed(t *testing.T) { bothTransports(t, testServiceNotAllowed) }

func testServiceNotAllowed(t *testing.T) {
	echo, accepted := tunneltest.EchoServer(t)
	a, b := pair(t, echo)
	for service, want := range map[string]Status{"private": StatusNotAllowed, "nosuch": StatusUnknownService} {
		client, done := forward(t, a, service)
		err := <-done
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(want.String())) {
			t.Fatalf("%s: Forward err = %v, want %v", service, err, want)
		}
		client.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := client.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: client not closed promptly: %d, %v", service, n, err)
		}
	}
	if accepted() != 0 {
		t.Fatal("the upstream was dialed for a refused service")
	}
	snap := b.Stats.Snapshot()
	if snap["streams_refused.not_allowed"] != 1 || snap["streams_refused.unknown_service"] != 1 {
		t.Fatalf("refusals not counted: %v", snap)
	}
	event(t, b, audit.PolicyDenied, attribute.String(audit.KeyPeer, "a"), attribute.String(audit.KeyService, "private"), attribute.String(audit.KeyReason, "not_allowed"))
	event(t, b, audit.PolicyDenied, attribute.String(audit.KeyService, "nosuch"), attribute.String(audit.KeyReason, "unknown_service"))
	event(t, a, audit.StreamFailed, attribute.String(audit.KeyService, "private"), attribute.String(audit.KeyReason, "refused_by_peer"),
		attribute.String(audit.KeyDirection, "outbound"))
}

func TestUnknownService(t *testing.T) { TestServiceNotAllowed(t) }

func TestUpstreamDownRefusedPromptly(t *testing.T) {
	bothTransports(t, testUpstreamDownRefusedPromptly)
}

func testUpstreamDownRefusedPromptly(t *testing.T) {
	a, b := pair(t, tunneltest.FreeAddr(t))
	start := time.Now()
	_, done := forward(t, a, "echo")
	if err := <-done; err == nil || !bytes.Contains([]byte(err.Error()), []byte("upstream_unreachable")) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("refusal took %v", d)
	}
	if b.Stats.Snapshot()["streams_refused.upstream_unreachable"] != 1 {
		t.Fatal("not counted")
	}
	event(t, b, audit.StreamFailed, attribute.String(audit.KeyService, "echo"), attribute.String(audit.KeyReason, "upstream_unreachable"),
		attribute.String(audit.KeyDirection, "inbound"), attribute.String(audit.KeyErrorType, "connection_refused"))
}

// TestUnpairedClientRefused: a daemon whose key B does not know completes
// no handshake, and B counts it. THREATS P1.
func TestUnpairedClientRefused(t *testing.T) { bothTransports(t, testUnpairedClientRefused) }

func testUnpairedClientRefused(t *testing.T) {
	echo, accepted := tunneltest.EchoServer(t)
	_, b := pair(t, echo)
	idb := b.Identity()
	stranger := startNode(t, newIdentity(t), Config{ConnectTimeout: time.Second, Peers: []Peer{{Name: "b", Key: idb, Endpoint: b.Addr().String()}}})
	_, done := forward(t, stranger, "echo")
	if err := <-done; !errors.Is(err, errNoTunnel) {
		t.Fatalf("stranger's forward: %v", err)
	}
	if b.Stats.HandshakesRefused.Load() == 0 || accepted() != 0 {
		t.Fatalf("refusal not counted (%d) or upstream reached (%d)", b.Stats.HandshakesRefused.Load(), accepted())
	}
	want := []attribute.KeyValue{attribute.String(audit.KeyPeerFingerprint, stranger.Identity().Fingerprint()),
		attribute.String(audit.KeyPeerAddress, "127.0.0.1"), attribute.String(audit.KeyTransport, defaultTransport),
		attribute.String(audit.KeyDirection, "inbound"), attribute.String(audit.KeyReason, "unknown_key")}
	if defaultTransport == TransportQUIC { // over TCP the source port is an ephemeral one
		_, port := addrPort(stranger.Addr())
		want = append(want, attribute.Int64(audit.KeyPeerPort, port))
	}
	event(t, b, audit.PeerAuthRefused, want...)
	event(t, stranger, audit.StreamFailed, attribute.String(audit.KeyReason, "no_tunnel"))
}

// TestUnpairedServerRefused: A dials an endpoint that answers with another
// key than the pinned one and refuses it. THREATS P1.
func TestUnpairedServerRefused(t *testing.T) { bothTransports(t, testUnpairedServerRefused) }

func testUnpairedServerRefused(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	_, b := pair(t, echo)
	ida := newIdentity(t)
	// A dark impostor would never answer a first flight sealed for B's
	// key; this one answers everyone, so A gets to check its key.
	impostor := startNode(t, newIdentity(t), Config{DisableDark: true, Peers: []Peer{{Name: "a", Key: ida.Public()}}})
	a := startNode(t, ida, Config{ConnectTimeout: time.Second, Peers: []Peer{{Name: "b", Key: b.Identity(), Endpoint: impostor.Addr().String()}}})
	_, done := forward(t, a, "echo")
	if err := <-done; !errors.Is(err, errNoTunnel) {
		t.Fatalf("forward through impostor: %v", err)
	}
	if a.Stats.HandshakesRefused.Load() == 0 {
		t.Fatal("A did not count the impostor")
	}
	event(t, a, audit.PeerAuthRefused, attribute.String(audit.KeyPeerFingerprint, impostor.Identity().Fingerprint()),
		attribute.String(audit.KeyDirection, "outbound"), attribute.String(audit.KeyReason, "pinned_key_mismatch"))
}

// TestWrongPairingKeyRejectedByCodec: a peer that holds the pinned signing
// key but not the pinned X25519 key completes TLS, yet its first record
// fails authentication: the stream is reset, counted, and the upstream is
// never dialed. THREATS P3, P4.
func TestWrongPairingKeyRejectedByCodec(t *testing.T) {
	bothTransports(t, testWrongPairingKeyRejectedByCodec)
}

func testWrongPairingKeyRejectedByCodec(t *testing.T) {
	echo, accepted := tunneltest.EchoServer(t)
	ida, idb := newIdentity(t), newIdentity(t)
	pinned := ida.Public()
	pinned.DH = newIdentity(t).Public().DH // B pins the wrong X25519 key for A
	b := startNode(t, idb, Config{
		Peers:    []Peer{{Name: "a", Key: pinned}},
		Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}},
	})
	a := startNode(t, ida, Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: b.Addr().String()}}})
	_, done := forward(t, a, "echo")
	if err := <-done; err == nil {
		t.Fatal("forward succeeded with mismatched pairing keys")
	}
	deadline := time.Now().Add(2 * time.Second)
	for b.Stats.Snapshot()["records_rejected.authentication"] == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if b.Stats.Snapshot()["records_rejected.authentication"] == 0 || accepted() != 0 {
		t.Fatalf("stats %v, upstream dialed %d times", b.Stats.Snapshot(), accepted())
	}
	event(t, b, audit.RecordRejected, attribute.String(audit.KeyPeer, "a"), attribute.String(audit.KeyReason, "authentication"))
}

func TestValidate(t *testing.T) {
	k := newIdentity(t).Public()
	bad := []Config{
		{Peers: []Peer{{Name: "", Key: k}}},
		{Peers: []Peer{{Name: "a", Key: k}, {Name: "a", Key: newIdentity(t).Public()}}},
		{Peers: []Peer{{Name: "a", Key: k}, {Name: "b", Key: k}}},
		{Peers: []Peer{{Name: "a", Key: k, Endpoint: "nohost"}}},
		{Services: []Service{{Name: "Bad Name", Upstream: "127.0.0.1:1"}}},
		{Services: []Service{{Name: "s", Upstream: "127.0.0.1"}}},
		{Services: []Service{{Name: "s", Upstream: "127.0.0.1:1", Allow: []string{"ghost"}}}},
		{KeepAlive: -1},
	}
	for i, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("config %d accepted", i)
		}
	}
}

// TestReverseStreamsOnDialedConnection: B cannot dial A (no endpoint, as
// behind NAT) yet imports A's service over the connection A dialed.
func TestReverseStreamsOnDialedConnection(t *testing.T) {
	bothTransports(t, testReverseStreamsOnDialedConnection)
}

func testReverseStreamsOnDialedConnection(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	ida, idb := newIdentity(t), newIdentity(t)
	b := startNode(t, idb, Config{Peers: []Peer{{Name: "a", Key: ida.Public()}}})
	startNode(t, ida, Config{
		Connections: 1, // the count below: with more, B may hold several by the time the echo is back
		Peers:       []Peer{{Name: "b", Key: idb.Public(), Endpoint: b.Addr().String()}},
		Services:    []Service{{Name: "from-a", Upstream: echo, Allow: []string{"b"}}},
	})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			b.Forward(context.Background(), c.(*net.TCPConn), "a", "from-a")
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello from b"))
	buf := make([]byte, 12)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello from b" {
		t.Fatalf("reverse stream: %q, %v", buf, err)
	}
	if b.Stats.TunnelsEstablished.Load() != 1 {
		t.Fatalf("B has %d tunnels, want the one A dialed", b.Stats.TunnelsEstablished.Load())
	}
}

// dialingPair starts two nodes that know each other's endpoint and dial
// each other at once with connections each, serving "echo" to peer "p";
// it returns them and b's identity.
func dialingPair(t *testing.T, keepalive time.Duration, connections int) (a, b *Node, idb *identity.Identity) {
	t.Helper()
	echo, _ := tunneltest.EchoServer(t)
	ida := newIdentity(t)
	idb = newIdentity(t)
	pa, la := testSockets(t)
	pb, lb := testSockets(t)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	cfg := func(peer *identity.Identity, addr net.Addr) Config {
		return Config{KeepAlive: keepalive, Connections: connections,
			Peers:    []Peer{{Name: "p", Key: peer.Public(), Endpoint: addr.String()}},
			Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"p"}}}}
	}
	var err error
	if a, err = New(pa, ida, cfg(idb, pb.LocalAddr()), log, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	if b, err = New(pb, idb, cfg(ida, pa.LocalAddr()), log, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if la != nil {
		a.ServeTCP(la)
		b.ServeTCP(lb)
	}
	return a, b, idb
}

// TestBothEndpointsOneConnection: when both sides know each other's
// endpoint, the tie-break leaves one connection per pair.
func TestBothEndpointsOneConnection(t *testing.T) {
	a, b, idb := dialingPair(t, 300*time.Millisecond, 1) // TestBothEndpointsSettle has two
	// Both dial at once; both must settle on the connection dialed by the
	// smaller key. Both connections share one 4-tuple, so the sides agree
	// when each holds the one the other does not think it dialed; the
	// connection that came up first may be held for a moment before the
	// preferred one replaces it, so only the end state counts.
	pref := a.preferredDialer(Peer{Key: idb.Public()})
	deadline := time.Now().Add(3 * time.Second)
	for {
		ta, _ := a.link("p").get()
		tb, _ := b.link("p").get()
		agreed := ta != nil && tb != nil && ta.alive() && tb.alive() && ta.dialed != tb.dialed
		if agreed && ta.dialed == pref {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sides did not settle on the preferred connection (agreed %v): a %d b %d tunnels",
				agreed, a.Stats.TunnelsEstablished.Load(), b.Stats.TunnelsEstablished.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGarbageDatagramsCounted: datagrams that are not QUIC for this node are
// dropped (by the dark listener, or by quic-go when it is off), counted and
// reported as one aggregate audit event per reason.
func TestGarbageDatagramsCounted(t *testing.T) {
	for _, tc := range []struct {
		disableDark bool
		reason      string
	}{{false, dropUnknownCID}, {true, "unknown_connection_id"}} {
		n := startNode(t, newIdentity(t), Config{DisableDark: tc.disableDark})
		c, err := net.Dial("udp", n.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := range 40 {
			b := make([]byte, cidLen+4+i%4) // short header, unknown connection id, too small for a stateless reset
			b[0] = 0x40
			c.Write(b)
		}
		deadline := time.Now().Add(3 * time.Second)
		for n.Stats.PacketsDropped.Load() < 40 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := n.Stats.PacketsDropped.Load(); got < 40 {
			t.Fatalf("dark off %v: %d of 40 garbage datagrams counted", tc.disableDark, got)
		}
		n.emitDrops()
		e := event(t, n, audit.PacketsDropped, attribute.String(audit.KeyReason, tc.reason))
		if e.Attr(audit.KeyCount).AsInt64() < 40 {
			t.Fatalf("dark off %v: event counts %d drops", tc.disableDark, e.Attr(audit.KeyCount).AsInt64())
		}
	}
}
