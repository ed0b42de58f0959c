package tunnel

import (
	"io"
	"net"
	"testing"
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
func BenchmarkForwardBulk(b *testing.B) {
	ida, idb := newIdentity(b), newIdentity(b)
	nb := startNode(b, idb, Config{Peers: []Peer{{Name: "a", Key: ida.Public()}},
		Services: []Service{{Name: "sink", Upstream: sinkServer(b), Allow: []string{"a"}}}})
	na := startNode(b, ida, Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: nb.Addr().String()}}})
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
