package tunnel

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
	"github.com/dyad-tunnel/dyad/tunnel/udpbatch"
)

// oneRead is a socket that returns one coalesced read, then an error.
type oneRead struct {
	data, oob []byte
	from      net.Addr
	done      bool
}

func (s *oneRead) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if s.done {
		return 0, net.ErrClosed
	}
	s.done = true
	ms[0].N = copy(ms[0].Buffers[0], s.data)
	ms[0].NN = copy(ms[0].OOB, s.oob)
	ms[0].Addr = s.from
	return 1, nil
}

// TestDarkFilterSeesEverySegment: a coalesced read of a sealed first
// flight, a forged one and another sealed one, from one source: the dark
// filter decides each segment, drops the forged one (counted) and hands
// quic-go the two bodies with their own control data.
func TestDarkFilterSeesEverySegment(t *testing.T) {
	var drops []string
	f := newDarkFilter(newDarkKey(newIdentity(t).Public()), func(r string) { drops = append(drops, r) })
	f.dark.Store(true)
	now := time.Now()
	flight := func() []byte {
		b := make([]byte, initialPacket)
		rand.Read(b)
		b[0], b[5] = 0xc0, 8 // long header, an 8-byte connection ID the client chose
		return b
	}
	a, forged, b := flight(), flight(), flight()
	seg := initialPacket + darkTrailer
	forged = append(forged, make([]byte, darkTrailer)...)
	data := append(append(f.own.seal(a, now), forged...), f.own.seal(b, now)...)
	tos := udpbatch.AppendCmsg(nil, unix.IPPROTO_IP, unix.IP_TOS, []byte{0x02})
	from := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 5000}
	c := &darkConn{rd: udpbatch.NewReader(&oneRead{data: data, oob: udpbatch.AppendGRO(tos, seg), from: from}, true), f: f}
	ms := make([]ipv4.Message, 8)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1452)}
		ms[i].OOB = make([]byte, 128)
	}
	n, err := c.ReadBatch(ms, 0)
	if err != nil || n != 2 {
		t.Fatalf("ReadBatch = %d, %v; want the 2 sealed datagrams", n, err)
	}
	for i, want := range [][]byte{a, b} {
		if m := ms[i]; !bytes.Equal(m.Buffers[0][:m.N], want) || !bytes.Equal(m.OOB[:m.NN], tos) || m.Addr != from {
			t.Errorf("datagram %d: %d bytes, control %x", i, m.N, m.OOB[:m.NN])
		}
	}
	if len(drops) != 1 || drops[0] != dropNoMAC {
		t.Fatalf("drops %v, want one %s", drops, dropNoMAC)
	}
}

// TestGROGarbageSegmentsCounted: a GSO sender's 30 garbage datagrams to a
// node arrive coalesced (UDP_GRO on the node's socket) and every one of
// them is dropped and counted by the dark filter.
func TestGROGarbageSegmentsCounted(t *testing.T) {
	n := startNode(t, newIdentity(t), Config{})
	if n.Stats.Snapshot()["udp_gro"] != 1 {
		t.Fatalf("receive offload off on loopback: %v", n.Stats.Snapshot())
	}
	tx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	b := make([]byte, 30*100)
	for i := 0; i < len(b); i += 100 {
		b[i] = 0x40 // short header, unknown connection ID
	}
	oob := udpbatch.AppendCmsg(nil, unix.IPPROTO_UDP, unix.UDP_SEGMENT, []byte{100, 0})
	if _, _, err := tx.WriteMsgUDP(b, oob, n.Addr().(*net.UDPAddr)); err != nil {
		t.Fatalf("GSO send: %v", err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for n.Stats.PacketsDropped.Load() < 30 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	s := n.Stats.Snapshot()
	if s["packets_dropped"] != 30 || s["udp_coalesced"] == 0 || s["udp_datagrams"] < 30 {
		t.Fatalf("30 garbage segments: %v", s)
	}
}

// TestGROTwoNodes: 16 MiB echoed through two real nodes arrive intact,
// with receive offload on (coalesced reads counted, more datagrams than
// reads) and, under DYAD_DISABLE_GRO=1, off (no coalesced read).
func TestGROTwoNodes(t *testing.T) {
	for _, disable := range []bool{false, true} {
		if disable {
			t.Setenv(udpbatch.EnvDisable, "1")
		}
		echo, _ := tunneltest.EchoServer(t)
		a, b := pair(t, echo)
		client, done := forward(t, a, "echo")
		msg := make([]byte, 16<<20)
		rand.Read(msg)
		go func() {
			client.Write(msg)
			client.(*net.TCPConn).CloseWrite()
		}()
		got, err := io.ReadAll(client)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("GRO disabled %v: echo %d of %d bytes, err %v", disable, len(got), len(msg), err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Forward: %v", err)
		}
		for _, n := range []*Node{a, b} {
			s := n.Stats.Snapshot()
			t.Logf("GRO disabled %v: reads %d, datagrams %d (%.1f per read), coalesced %d", disable,
				s["udp_reads"], s["udp_datagrams"], float64(s["udp_datagrams"])/float64(max(s["udp_reads"], 1)), s["udp_coalesced"])
			if disable && (s["udp_gro"] != 0 || s["udp_coalesced"] != 0) {
				t.Fatalf("GRO disabled: %v", s)
			}
			if !disable && (s["udp_gro"] != 1 || s["udp_coalesced"] == 0 || s["udp_datagrams"] <= s["udp_reads"]) {
				t.Fatalf("GRO on: %v", s)
			}
		}
	}
}

// TestDarkConnReadFromSplits: with UDP_GRO on the socket, ReadFrom (the
// path quic-go does not take) also returns one datagram at a time, never
// a coalesced run.
func TestDarkConnReadFromSplits(t *testing.T) {
	rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c := newDarkConn(rx, newDarkFilter(newDarkKey(newIdentity(t).Public()), func(string) {}), nil)
	defer c.Close()
	if !c.rd.GRO() {
		t.Skip("the kernel refuses UDP_GRO")
	}
	tx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	b := bytes.Repeat([]byte{0x40}, 3*100)
	oob := udpbatch.AppendCmsg(nil, unix.IPPROTO_UDP, unix.UDP_SEGMENT, []byte{100, 0})
	if _, _, err := tx.WriteMsgUDP(b, oob, rx.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatalf("GSO send: %v", err)
	}
	rx.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 2048)
	for i := range 3 {
		n, _, err := c.ReadFrom(buf)
		if err != nil || n != 100 {
			t.Fatalf("datagram %d: %d bytes, %v; want 100", i, n, err)
		}
	}
	if c := c.rd.Counters(); c.Coalesced != 1 || c.Reads != 1 {
		t.Fatalf("counters %+v: want one coalesced read", c)
	}
}
