package tunnel

import (
	"bufio"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// udpGate relays UDP datagrams between one client and to, or drops them
// all while blocked: a path that blocks UDP, and then stops blocking it.
type udpGate struct {
	pc      net.PacketConn
	up      *net.UDPConn
	blocked atomic.Bool
	mu      sync.Mutex // guards client
	client  net.Addr
}

// newUDPGate listens on addr (host:port) and relays to to.
func newUDPGate(t *testing.T, addr string, to net.Addr) *udpGate {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	up, err := net.DialUDP("udp", nil, to.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	g := &udpGate{pc: pc, up: up}
	t.Cleanup(func() { pc.Close(); up.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if g.blocked.Load() {
				continue
			}
			g.mu.Lock()
			g.client = from
			g.mu.Unlock()
			up.Write(buf[:n])
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			g.mu.Lock()
			c := g.client
			g.mu.Unlock()
			if c != nil && !g.blocked.Load() {
				pc.WriteTo(buf[:n], c)
			}
		}
	}()
	return g
}

// blockedUDPPair starts B listening on QUIC and TCP, and A dialing B with
// transport auto at a port where TCP reaches B and UDP goes through a
// gate, blocked from the start.
func blockedUDPPair(t *testing.T, fallbackAfter time.Duration) (a, b *Node, gate *udpGate) {
	t.Helper()
	echo, _ := tunneltest.EchoServer(t)
	ida, idb := newIdentity(t), newIdentity(t)
	b = startNode(t, idb, Config{
		Peers:    []Peer{{Name: "a", Key: ida.Public()}},
		Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}},
	})
	var ln net.Listener
	for range 20 { // a port free for both TCP (B) and UDP (the gate)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", l.Addr().String())
		if err != nil {
			l.Close()
			continue
		}
		pc.Close()
		ln = l
		break
	}
	if ln == nil {
		t.Fatal("no port free for both")
	}
	b.ServeTCP(ln)
	gate = newUDPGate(t, ln.Addr().String(), b.Addr())
	gate.blocked.Store(true)
	a = startNode(t, ida, Config{Connections: 2, Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: ln.Addr().String(),
		Transport: TransportAuto, FallbackAfter: fallbackAfter}}})
	return a, b, gate
}

// TestAutoFallsBackToTCP: with UDP blocked, a peer on transport auto is
// reached over TCP within fallback_after plus a handshake; the switch is
// logged and audited once; once UDP passes again, a background probe
// brings the link back to QUIC, and a stream opened over TCP before the
// switch keeps flowing on its retired connection.
func TestAutoFallsBackToTCP(t *testing.T) {
	quicProbeEvery = 300 * time.Millisecond
	t.Cleanup(func() { quicProbeEvery = 5 * time.Second })
	start := time.Now()
	a, _, gate := blockedUDPPair(t, 500*time.Millisecond)
	held, err := echoOnce(t, a)
	if err != nil {
		t.Fatalf("no traffic over the fallback: %v", err)
	}
	defer held.Close()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("first byte after %v, want within 3 s", d)
	}
	tc := current(t, a, "b")
	if tc.qc.Transport() != TransportTCP {
		t.Fatalf("carried by %s, want tcp", tc.qc.Transport())
	}
	event(t, a, audit.TransportChanged, attribute.String(audit.KeyPeer, "b"), attribute.String(audit.KeyTransport, TransportTCP),
		attribute.String(audit.KeyTransportFrom, TransportQUIC), attribute.String(audit.KeyReason, "quic_no_answer"))
	event(t, a, audit.TunnelEstablished, attribute.String(audit.KeyPeer, "b"), attribute.String(audit.KeyTransport, TransportTCP))
	if n := a.Stats.TransportChanges.Load(); n != 1 {
		t.Fatalf("%d transport changes while UDP is blocked, want 1", n)
	}

	gate.blocked.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		quic := 0
		for _, c := range a.link("b").live() {
			if c.qc.Transport() == TransportQUIC {
				quic++
			}
		}
		tcp := 0
		for _, c := range a.link("b").live() {
			if c.qc.Transport() == TransportTCP {
				tcp++
			}
		}
		if quic == 2 && tcp == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not back on QUIC: %d quic, %d tcp connections take streams", quic, tcp)
		}
		time.Sleep(50 * time.Millisecond)
	}
	event(t, a, audit.TransportChanged, attribute.String(audit.KeyTransport, TransportQUIC), attribute.String(audit.KeyReason, "quic_answered"))
	// The stream opened over TCP still echoes (its connection is retired,
	// not closed), and new ones go over QUIC.
	held.Write([]byte{9})
	held.SetReadDeadline(time.Now().Add(3 * time.Second))
	var one [1]byte
	if _, err := io.ReadFull(held, one[:]); err != nil || one[0] != 9 {
		t.Fatalf("stream opened over TCP cut by the switch back: %v", err)
	}
	c, err := echoOnce(t, a)
	if err != nil {
		t.Fatalf("after the switch back: %v", err)
	}
	c.Close()
	if tc := current(t, a, "b"); tc.qc.Transport() != TransportQUIC {
		t.Fatalf("new stream on %s", tc.qc.Transport())
	}
}

// TestAutoNoTCPListener: a partner that does not listen on TCP costs a
// refused connect per attempt (with the dial loop's back-off), not a
// stream of errors; QUIC, once it answers, is used at once.
func TestAutoNoTCPListener(t *testing.T) {
	quicProbeEvery = 300 * time.Millisecond
	t.Cleanup(func() { quicProbeEvery = 5 * time.Second })
	echo, _ := tunneltest.EchoServer(t)
	ida, idb := newIdentity(t), newIdentity(t)
	b := startNode(t, idb, Config{
		Peers:    []Peer{{Name: "a", Key: ida.Public()}},
		Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}},
	})
	// A gate on a UDP port whose TCP twin nobody listens on.
	var gate *udpGate
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if pc, err := net.ListenPacket("udp", addr); err == nil {
			pc.Close()
			gate = newUDPGate(t, addr, b.Addr())
			break
		}
	}
	gate.blocked.Store(true)
	a := startNode(t, ida, Config{Connections: 1, Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: gate.pc.LocalAddr().String(),
		FallbackAfter: 200 * time.Millisecond}}})
	time.Sleep(2 * time.Second)
	if n := a.Stats.TunnelsEstablished.Load(); n != 0 {
		t.Fatalf("%d tunnels with UDP blocked and no TCP listener", n)
	}
	gate.blocked.Store(false)
	c, err := echoOnce(t, a)
	if err != nil {
		t.Fatalf("after UDP came back: %v", err)
	}
	c.Close()
}

// TestTCPThroughHTTPProxy: with peers[].proxy the TCP transport goes
// through HTTP CONNECT, with Basic credentials from DYAD_PROXY_USER and
// DYAD_PROXY_PASSWORD, which no log line carries.
func TestTCPThroughHTTPProxy(t *testing.T) {
	useTransport(t, TransportTCP)
	t.Setenv("DYAD_PROXY_USER", "bank-a")
	t.Setenv("DYAD_PROXY_PASSWORD", "s3cret-proxy-pw")
	echo, _ := tunneltest.EchoServer(t)
	ida, idb := newIdentity(t), newIdentity(t)
	b := startNode(t, idb, Config{
		Peers:    []Peer{{Name: "a", Key: ida.Public()}},
		Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var connects atomic.Int64
	var badAuth atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil || req.Method != http.MethodConnect {
					return
				}
				if req.Header.Get("Proxy-Authorization") != "Basic "+base64.StdEncoding.EncodeToString([]byte("bank-a:s3cret-proxy-pw")) {
					badAuth.Add(1)
					io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
					return
				}
				up, err := net.Dial("tcp", req.Host)
				if err != nil {
					io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
					return
				}
				defer up.Close()
				connects.Add(1)
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				go io.Copy(up, br)
				io.Copy(c, up)
			}()
		}
	}()
	var logs tunneltest.SyncBuffer
	pc, tl := testSockets(t)
	a, err := New(pc, ida, Config{Connections: 1, Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: tcpAddr(t, b),
		Transport: TransportTCP, Proxy: "http://" + ln.Addr().String()}}}, zerolog.New(&logs), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	a.ServeTCP(tl)
	c, err := echoOnce(t, a)
	if err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	c.Close()
	if connects.Load() == 0 || badAuth.Load() != 0 {
		t.Fatalf("%d CONNECTs, %d with wrong credentials", connects.Load(), badAuth.Load())
	}
	if strings.Contains(logs.String(), "s3cret") || strings.Contains(logs.String(), base64.StdEncoding.EncodeToString([]byte("bank-a:s3cret-proxy-pw"))) {
		t.Fatal("a log line carries the proxy credentials")
	}
}
