package tunnel

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/audittest"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// sinkServer accepts connections and discards what they send.
func sinkServer(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkForwardBulk pushes data through one forwarded connection, both
// tunnel nodes in this process: the profile of dyad's own data path
// (`go test -bench ForwardBulk -cpuprofile`).
// BenchmarkForwardBulk is one forwarded connection's bulk throughput, with
// the dark listener on (the default) and off: compare the two in one run
// (make bench-micro prints the ratio).
func BenchmarkForwardBulk(b *testing.B) {
	for _, mode := range []string{"dark=off", "dark=on"} {
		b.Run(mode, func(b *testing.B) { forwardBulk(b, mode == "dark=off") })
	}
}

func forwardBulk(b *testing.B, disableDark bool) {
	ida, idb := newIdentity(b), newIdentity(b)
	nb := startNode(b, idb, Config{DisableDark: disableDark, Peers: []Peer{{Name: "a", Key: ida.Public()}},
		Services: []Service{{Name: "sink", Upstream: sinkServer(b), Allow: []string{"a"}}}})
	na := startNode(b, ida, Config{DisableDark: disableDark, Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: nb.Addr().String()}}})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			na.Forward(b.Context(), c.(*net.TCPConn), "b", "sink")
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// churnLimits let a churn benchmark open new streams faster and longer than
// DefaultLimits' bucket (500 a second, burst 1000) admits: it measures
// dyad's cost per connection, not the limit (bench/ configures the daemons
// the same way).
var churnLimits = Limits{StreamsPerSecond: 100_000, StreamBurst: 100_000}

// BenchmarkConnAudit is the audit overhead on the churn scenario: each op is
// a new forwarded connection carrying a 1 KiB request and its 1 KiB echo,
// 8 at a time, which makes 4 audit events (stream opened and closed on each
// side). Modes: no audit; the journal; the journal plus OTLP/gRPC export
// to a real receiver. Compare ns/op across modes; events/s is what the
// audit path sustained. Both nodes run with churnLimits.
func BenchmarkConnAudit(b *testing.B) {
	for _, mode := range []string{"off", "journal", "journal+otlp"} {
		b.Run(mode, func(b *testing.B) {
			var auds [2]*audit.Auditor
			var jas [2]*audittest.Journal
			if mode != "off" {
				for i := range auds {
					jas[i] = audittest.NewJournal(b)
					auds[i] = jas[i].Auditor
				}
			}
			if mode == "journal+otlp" {
				recv := audittest.StartGRPC(b)
				for i := range auds {
					exp, err := audit.NewLogExporter(b.Context(), audit.OTLP{Endpoint: recv.Endpoint(), Protocol: audit.ProtocolGRPC, Insecure: true})
					if err != nil {
						b.Fatal(err)
					}
					x := audit.NewExporter(exp, audit.ExportOptions{})
					auds[i] = audit.New(audit.Options{Export: x, Console: zerolog.Nop(), Journal: jas[i].Journal()})
					b.Cleanup(func() { auds[i].Close(context.Background()) })
				}
			}
			echo, _ := tunneltest.EchoServer(b)
			ida, idb := newIdentity(b), newIdentity(b)
			nb := startNodeWith(b, idb, Config{Limits: churnLimits, Peers: []Peer{{Name: "a", Key: ida.Public()}},
				Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}}}, auds[1])
			na := startNodeWith(b, ida, Config{Limits: churnLimits, Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: nb.Addr().String()}}}, auds[0])
			addr := forwardLocal(b, na, "echo")
			req := make([]byte, 1024)
			op := func() error {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return err
				}
				defer c.Close()
				if _, err := c.Write(req); err != nil {
					return err
				}
				_, err = io.ReadFull(c, make([]byte, len(req)))
				return err
			}
			if err := op(); err != nil { // the tunnel is up before timing
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetParallelism(4) // 8 workers on 2 cores
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := op(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(4*b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// BenchmarkDarkInbound is the dark listener's cost per received datagram of
// an established connection: one AES block when the connection ID changes,
// a compare when it repeats.
func BenchmarkDarkInbound(b *testing.B) {
	f := newDarkFilter(newDarkKey(newIdentity(b).Public()), func(string) {})
	f.dark.Store(true)
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 4433}
	f.tunnelAt(fixedRemote{from}, 1) // a live tunnel's packets, as the filter sees them
	var ids [2][]byte
	for i := range ids {
		id, _ := cidGenerator{f.own}.GenerateConnectionID()
		ids[i] = id.Bytes()
	}
	for _, mode := range []string{"same-id", "alternating-ids"} {
		b.Run(mode, func(b *testing.B) {
			pkts := [2][]byte{make([]byte, 1400), make([]byte, 1400)}
			for i := range pkts {
				pkts[i][0] = 0x40
				copy(pkts[i][1:], ids[i])
			}
			if mode == "same-id" {
				pkts[1] = pkts[0]
			}
			now := time.Now()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, ok := f.inbound(pkts[i&1], from, now); !ok {
					b.Fatal("dropped")
				}
				i++
			}
		})
	}
}

// BenchmarkDarkDrop is the dark listener's cost per datagram it drops under
// a flood, with the real drop counter and metrics: a short-header datagram
// with an ID we never issued, a first flight without a MAC, and the worst
// case, a forged first flight whose timestamp is current (the MAC is
// computed before it fails).
func BenchmarkDarkDrop(b *testing.B) {
	m, err := audit.NewMetrics(audit.MetricsOptions{})
	if err != nil {
		b.Fatal(err)
	}
	n := &Node{metrics: m}
	n.drops = &dropCounter{n: n}
	f := newDarkFilter(newDarkKey(newIdentity(b).Public()), n.drops.add)
	f.dark.Store(true)
	now := time.Now()
	short := make([]byte, 1200)
	short[0] = 0x40
	noMAC := make([]byte, initialPacket)
	noMAC[0] = 0xc0
	forged := f.own.seal(noMAC, now)
	forged[len(forged)-1] ^= 1
	for _, c := range []struct {
		name string
		pkt  []byte
	}{{"unknown-id", short}, {"no-mac", noMAC}, {"forged-mac", forged}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.pkt)))
			for b.Loop() {
				if _, ok := f.inbound(c.pkt, nil, now); ok {
					b.Fatal("passed")
				}
			}
		})
	}
	if n.Stats.PacketsDropped.Load() == 0 {
		b.Fatal("no drop counted")
	}
}

// fixedRemote is a tunnel whose remote address never moves.
type fixedRemote struct{ addr net.Addr }

func (r fixedRemote) RemoteAddr() net.Addr { return r.addr }

// BenchmarkForwardBulkConns is bulk over 8 forwarded connections at once
// through 1, 2 or 4 tunnel connections to the peer (Config.Connections),
// both nodes in this process: a profile of the placement path. The
// measurement behind DefaultConnections runs the daemons as separate
// processes (`go run ./bench -only bulk`; README, "Several connections per
// peer"): here both ends share two cores, so more connections gain little.
func BenchmarkForwardBulkConns(b *testing.B) {
	for _, conns := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("connections=%d", conns), func(b *testing.B) {
			ida, idb := newIdentity(b), newIdentity(b)
			nb := startNode(b, idb, Config{Peers: []Peer{{Name: "a", Key: ida.Public()}},
				Services: []Service{{Name: "sink", Upstream: sinkServer(b), Allow: []string{"a"}}}})
			na := startNode(b, ida, Config{Connections: conns, Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: nb.Addr().String()}}})
			for deadline := time.Now().Add(5 * time.Second); len(na.link("b").live()) < conns; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					b.Fatal("tunnel connections did not come up")
				}
			}
			addr := forwardLocal(b, na, "sink")
			const clients = 8
			cs := make([]net.Conn, clients)
			for i := range cs {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				cs[i] = c
			}
			buf := make([]byte, 256<<10)
			b.SetBytes(int64(len(buf)) * clients)
			for b.Loop() {
				var wg sync.WaitGroup
				for _, c := range cs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						c.Write(buf)
					}()
				}
				wg.Wait()
			}
		})
	}
}

// forwardLocal serves a local listener through n to service at peer "b",
// as a daemon's forward does, until the benchmark ends, and returns its
// address.
func forwardLocal(b *testing.B, n *Node, service string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go n.Forward(b.Context(), c.(*net.TCPConn), "b", service)
		}
	}()
	return ln.Addr().String()
}
