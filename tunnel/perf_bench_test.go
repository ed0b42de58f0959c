package tunnel

import (
	"io"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
)

// BenchmarkIdleConns holds idleBenchConns forwarded connections open after
// one 1 KiB exchange each, both tunnel nodes in this process, and reports
// what they cost both nodes together: live heap, goroutine stacks and
// goroutines per connection (the echo server's own goroutine and buffer are
// in the figures: one goroutine and 1 KiB per connection). With
// DYAD_IDLE_HEAPPROFILE=file the heap profile taken while they are held is
// written there (`go tool pprof -sample_index inuse_space file`).
func BenchmarkIdleConns(b *testing.B) {
	echo := smallEcho(b)
	ida, idb := newIdentity(b), newIdentity(b)
	nb := startNode(b, idb, Config{Limits: Limits{StreamsPerSecond: 100_000, StreamBurst: 100_000, MaxStreams: 3 * MaxStreamsCap},
		Peers: []Peer{{Name: "a", Key: ida.Public()}}, Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}}})
	na := startNode(b, ida, Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: nb.Addr().String()}}})
	addr := forwardLocal(b, na, "echo")
	buf := make([]byte, 1024)
	exchange := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		return c
	}
	exchange().Close() // the tunnel is up
	for b.Loop() {
		measure := func() (heap, stack uint64, goroutines int) {
			time.Sleep(200 * time.Millisecond)
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return ms.HeapAlloc, ms.StackInuse, runtime.NumGoroutine()
		}
		h0, s0, g0 := measure()
		conns := make([]net.Conn, idleBenchConns)
		for i := range conns {
			conns[i] = exchange()
		}
		h1, s1, g1 := measure()
		if f := os.Getenv("DYAD_IDLE_HEAPPROFILE"); f != "" {
			if out, err := os.Create(f); err == nil {
				pprof.WriteHeapProfile(out)
				out.Close()
			}
		}
		for _, c := range conns {
			c.Close()
		}
		n := float64(len(conns))
		b.ReportMetric(float64(h1-h0)/n, "heap-B/conn")
		b.ReportMetric(float64(s1-s0)/n, "stack-B/conn")
		b.ReportMetric(float64(g1-g0)/n, "goroutines/conn")
	}
}

// idleBenchConns is how many connections BenchmarkIdleConns holds.
const idleBenchConns = 2000

// smallEcho is an echo server with a 1 KiB buffer per connection, so that
// its own memory stays small next to the tunnel's.
func smallEcho(b *testing.B) string {
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
			go func() {
				defer c.Close()
				buf := make([]byte, 1024)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkForwardRR is one forwarded connection's request/response
// latency, 1 KiB each way, both nodes in this process: each op is one
// exchange, so ns/op is its round trip through both tunnel ends.
func BenchmarkForwardRR(b *testing.B) {
	echo := smallEcho(b)
	ida, idb := newIdentity(b), newIdentity(b)
	nb := startNode(b, idb, Config{Peers: []Peer{{Name: "a", Key: ida.Public()}}, Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}}})
	na := startNode(b, ida, Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: nb.Addr().String()}}})
	c, err := net.Dial("tcp", forwardLocal(b, na, "echo"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1024)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}
