package udpbatch

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// read is one message a fakeSource returns: what recvmmsg would have put
// in a message (a coalesced run with its UDP_GRO control message, or one
// datagram).
type read struct {
	data, oob []byte
	addr      net.Addr
}

// fakeSource returns its batches in order, one per ReadBatch, then err.
type fakeSource struct {
	batches [][]read
	calls   int
	err     error
}

func (s *fakeSource) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	s.calls++
	if len(s.batches) == 0 {
		if s.err == nil {
			return 0, errors.New("fake source: no more batches")
		}
		return 0, s.err
	}
	b := s.batches[0]
	s.batches = s.batches[1:]
	n := 0
	for i, r := range b {
		if i >= len(ms) {
			break
		}
		m := &ms[i]
		m.N = copy(m.Buffers[0], r.data)
		m.NN = copy(m.OOB, r.oob)
		m.Addr, m.Flags = r.addr, 0
		n++
	}
	return n, nil
}

var from = &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 4433}

// tos and pktinfo are control messages a read carries besides UDP_GRO.
func tos(b byte) []byte { return AppendCmsg(nil, unix.IPPROTO_IP, unix.IP_TOS, []byte{b}) }

func pktinfo() []byte {
	return AppendCmsg(nil, unix.IPPROTO_IP, unix.IP_PKTINFO, []byte{1, 0, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1})
}

// quicMessages are messages as quic-go passes them: n slots of 1452-byte
// buffers and 128 bytes of control room.
func quicMessages(n int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1452)}
		ms[i].OOB = make([]byte, 128)
	}
	return ms
}

// payload returns n bytes that differ by position.
func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// TestSplitSizes: a coalesced read of 3 x 1200 bytes and a short last
// segment of 500 comes out as four datagrams of those sizes and bytes,
// each with the read's ECN and packet info and without UDP_GRO.
func TestSplitSizes(t *testing.T) {
	data := payload(3*1200 + 500)
	ctl := append(tos(0x03), pktinfo()...)
	src := &fakeSource{batches: [][]read{{{data: data, oob: AppendGRO(append([]byte(nil), ctl...), 1200), addr: from}}}}
	r := NewReader(src, true)
	ms := quicMessages(8)
	n, err := r.ReadBatch(ms, 0)
	if err != nil || n != 4 {
		t.Fatalf("ReadBatch = %d, %v; want 4 datagrams", n, err)
	}
	for i, want := range []int{1200, 1200, 1200, 500} {
		m := ms[i]
		if m.N != want || !bytes.Equal(m.Buffers[0][:m.N], data[i*1200:i*1200+want]) {
			t.Errorf("datagram %d: %d bytes, want %d of segment %d", i, m.N, want, i)
		}
		if !bytes.Equal(m.OOB[:m.NN], ctl) {
			t.Errorf("datagram %d: control data %x, want %x (TOS and packet info, no UDP_GRO)", i, m.OOB[:m.NN], ctl)
		}
		if m.Addr != from || m.Flags != 0 {
			t.Errorf("datagram %d: from %v flags %#x", i, m.Addr, m.Flags)
		}
	}
	if c := r.Counters(); c != (Counters{Reads: 1, Messages: 1, Coalesced: 1, Datagrams: 4}) {
		t.Errorf("counters %+v", c)
	}
}

// TestSplitKeepsWhatDoesNotFit: 20 segments and quic-go's 8 slots: three
// calls return 8, 8 and 4 datagrams from one system call, in order; the
// next call reads again.
func TestSplitKeepsWhatDoesNotFit(t *testing.T) {
	data := payload(20 * 1000)
	src := &fakeSource{batches: [][]read{
		{{data: data, oob: AppendGRO(tos(0x02), 1000), addr: from}},
		{{data: []byte("next"), oob: tos(0x01), addr: from}},
	}}
	r := NewReader(src, true)
	ms := quicMessages(8)
	var got []byte
	for _, want := range []int{8, 8, 4} {
		n, err := r.ReadBatch(ms, 0)
		if err != nil || n != want {
			t.Fatalf("ReadBatch = %d, %v; want %d", n, err, want)
		}
		for _, m := range ms[:n] {
			if m.N != 1000 {
				t.Fatalf("datagram of %d bytes, want 1000", m.N)
			}
			got = append(got, m.Buffers[0][:m.N]...)
		}
		if src.calls != 1 {
			t.Fatalf("%d reads of the socket for one coalesced read", src.calls)
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the datagrams' bytes differ from the coalesced read's")
	}
	n, err := r.ReadBatch(ms, 0)
	if err != nil || n != 1 || string(ms[0].Buffers[0][:ms[0].N]) != "next" || !bytes.Equal(ms[0].OOB[:ms[0].NN], tos(0x01)) {
		t.Fatalf("next read: %d, %v", n, err)
	}
	if c := r.Counters(); c.Reads != 2 || c.Datagrams != 21 || c.Coalesced != 1 {
		t.Errorf("counters %+v", c)
	}
}

// TestSplitMixedMessages: one system call returns a coalesced run, a
// plain datagram and another run from another source: each datagram
// keeps its own message's control data and source.
func TestSplitMixedMessages(t *testing.T) {
	other := &net.UDPAddr{IP: net.IPv4(198, 51, 100, 7), Port: 9}
	a, b, c := payload(2*1300), []byte("plain"), payload(3*100+1)
	src := &fakeSource{batches: [][]read{{
		{data: a, oob: AppendGRO(tos(0x01), 1300), addr: from},
		{data: b, oob: tos(0x03), addr: from},
		{data: c, oob: append(AppendGRO(nil, 100), tos(0x02)...), addr: other},
	}}}
	r := NewReader(src, true)
	ms := quicMessages(8)
	n, err := r.ReadBatch(ms, 0)
	if err != nil || n != 7 {
		t.Fatalf("ReadBatch = %d, %v; want 7", n, err)
	}
	want := []struct {
		data []byte
		tos  byte
		from net.Addr
	}{{a[:1300], 1, from}, {a[1300:], 1, from}, {b, 3, from},
		{c[:100], 2, other}, {c[100:200], 2, other}, {c[200:300], 2, other}, {c[300:], 2, other}}
	for i, w := range want {
		m := ms[i]
		if !bytes.Equal(m.Buffers[0][:m.N], w.data) || !bytes.Equal(m.OOB[:m.NN], tos(w.tos)) || m.Addr != w.from {
			t.Errorf("datagram %d: %d bytes, control %x, from %v", i, m.N, m.OOB[:m.NN], m.Addr)
		}
	}
	if c := r.Counters(); c.Coalesced != 2 || c.Messages != 3 || c.Datagrams != 7 {
		t.Errorf("counters %+v", c)
	}
}

// TestSplitTruncatesLikeRecvmmsg: a segment longer than the caller's
// buffer is cut and flagged MSG_TRUNC, and counted; control data that does
// not fit is left out a whole message at a time.
func TestSplitTruncatesLikeRecvmmsg(t *testing.T) {
	data := payload(2 * 2000)
	ctl := append(tos(0x01), pktinfo()...)
	src := &fakeSource{batches: [][]read{{{data: data, oob: AppendGRO(append([]byte(nil), ctl...), 2000), addr: from}}}}
	r := NewReader(src, true)
	ms := quicMessages(2)
	ms[1].OOB = ms[1].OOB[:len(tos(0))+4] // room for TOS, not packet info
	n, err := r.ReadBatch(ms, 0)
	if err != nil || n != 2 {
		t.Fatalf("ReadBatch = %d, %v", n, err)
	}
	for i, m := range ms {
		if m.N != 1452 || m.Flags&unix.MSG_TRUNC == 0 || !bytes.Equal(m.Buffers[0], data[i*2000:i*2000+1452]) {
			t.Errorf("datagram %d: %d bytes, flags %#x; want 1452, MSG_TRUNC", i, m.N, m.Flags)
		}
	}
	if !bytes.Equal(ms[0].OOB[:ms[0].NN], ctl) || !bytes.Equal(ms[1].OOB[:ms[1].NN], tos(0x01)) {
		t.Errorf("control data %x and %x", ms[0].OOB[:ms[0].NN], ms[1].OOB[:ms[1].NN])
	}
	if c := r.Counters(); c.Truncated != 2 {
		t.Errorf("truncated %d, want 2", c.Truncated)
	}
}

// TestReadErrorReleasesBuffers: a failing read returns its error and the
// Reader keeps no buffer; an empty datagram is one datagram.
func TestReadErrorReleasesBuffers(t *testing.T) {
	closed := errors.New("closed")
	src := &fakeSource{batches: [][]read{{{data: nil, addr: from}}}, err: closed}
	r := NewReader(src, true)
	ms := quicMessages(8)
	if n, err := r.ReadBatch(ms, 0); n != 1 || err != nil || ms[0].N != 0 {
		t.Fatalf("empty datagram: %d, %v, %d bytes", n, err, ms[0].N)
	}
	if _, err := r.ReadBatch(ms, 0); !errors.Is(err, closed) {
		t.Fatalf("err %v, want the source's", err)
	}
	for i, b := range r.bufs {
		if b != nil {
			t.Fatalf("buffer %d kept after a failed read", i)
		}
	}
}

// TestWithoutGROPassesThrough: offload off, ReadBatch is the socket's.
func TestWithoutGROPassesThrough(t *testing.T) {
	src := &fakeSource{batches: [][]read{{{data: []byte("a"), addr: from}, {data: []byte("bc"), addr: from}}}}
	r := NewReader(src, false)
	ms := quicMessages(8)
	if n, err := r.ReadBatch(ms, 0); n != 2 || err != nil || ms[1].N != 2 {
		t.Fatalf("ReadBatch = %d, %v", n, err)
	}
	if c := r.Counters(); c != (Counters{Reads: 1, Messages: 2, Datagrams: 2}) {
		t.Errorf("counters %+v", c)
	}
}

// gsoSend writes b to to as one GSO batch of seg-byte datagrams.
func gsoSend(t testing.TB, tx *net.UDPConn, to *net.UDPAddr, b []byte, seg int) {
	oob := AppendCmsg(nil, unix.IPPROTO_UDP, unix.UDP_SEGMENT, []byte{byte(seg), byte(seg >> 8)})
	if _, _, err := tx.WriteMsgUDP(b, oob, to); err != nil {
		t.Skipf("GSO send refused here: %v", err)
	}
}

// loopback returns a receiver opened with Open and a sender.
func loopback(t testing.TB) (*net.UDPConn, *net.UDPConn) {
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close(); tx.Close() })
	return rx, tx
}

// TestLoopbackGRO: on a real socket, a GSO sender's 40 datagrams of 1200
// bytes (the last 700) arrive coalesced and leave the Reader as 40
// datagrams with their bytes, in far fewer system calls than datagrams.
func TestLoopbackGRO(t *testing.T) {
	rx, tx := loopback(t)
	r, gro := Open(rx)
	if !gro {
		t.Skip("the kernel refuses UDP_GRO")
	}
	data := payload(39*1200 + 700)
	gsoSend(t, tx, rx.LocalAddr().(*net.UDPAddr), data, 1200)
	rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	ms := quicMessages(8)
	var got []byte
	for len(got) < len(data) {
		n, err := r.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		for _, m := range ms[:n] {
			got = append(got, m.Buffers[0][:m.N]...)
			if _, seg := StripGRO(nil, m.OOB[:m.NN]); seg != 0 {
				t.Fatal("a datagram carries UDP_GRO")
			}
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("bytes differ")
	}
	c := r.Counters()
	if c.Datagrams != 40 || c.Coalesced == 0 || c.Reads > 5 {
		t.Fatalf("counters %+v: want 40 datagrams from coalesced reads", c)
	}
}

// TestOpenFallsBackWhenRefused: where setting UDP_GRO fails (here a
// closed socket), the Reader reads plainly.
func TestOpenFallsBackWhenRefused(t *testing.T) {
	rx, _ := loopback(t)
	rx.Close()
	if r, gro := Open(rx); gro || r.GRO() {
		t.Fatal("offload on although setsockopt failed")
	}
}

// TestEnvDisablesGRO: DYAD_DISABLE_GRO=1 keeps the socket plain.
func TestEnvDisablesGRO(t *testing.T) {
	t.Setenv(EnvDisable, "1")
	rx, _ := loopback(t)
	if r, gro := Open(rx); gro || r.GRO() {
		t.Fatal("offload on despite " + EnvDisable)
	}
}

// BenchmarkSplit: splitting a 40-segment coalesced read into quic-go's
// messages allocates nothing.
func BenchmarkSplit(b *testing.B) {
	data := payload(40 * 1200)
	oob := AppendGRO(tos(0x02), 1200)
	rd := read{data: data, oob: oob, addr: from}
	src := &cycleSource{r: rd}
	r := NewReader(src, true)
	ms := quicMessages(8)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		for got := 0; got < 40; {
			n, _ := r.ReadBatch(ms, 0)
			got += n
		}
	}
	b.ReportMetric(40, "datagrams/read")
}

// cycleSource returns the same message forever.
type cycleSource struct{ r read }

func (s *cycleSource) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	m := &ms[0]
	m.N = copy(m.Buffers[0], s.r.data)
	m.NN = copy(m.OOB, s.r.oob)
	m.Addr = s.r.addr
	return 1, nil
}

// BenchmarkLoopbackGRO: a GSO sender's 40-datagram batches through a real
// socket, with the datagrams per system call and allocations per datagram.
func BenchmarkLoopbackGRO(b *testing.B) {
	for _, gro := range []bool{true, false} {
		name := "gro"
		if !gro {
			name = "nogro"
		}
		b.Run(name, func(b *testing.B) {
			rx, tx := loopback(b)
			if !gro {
				b.Setenv(EnvDisable, "1")
			}
			r, on := Open(rx)
			if on != gro {
				b.Skip("the kernel refuses UDP_GRO")
			}
			data := payload(40 * 1200)
			to := rx.LocalAddr().(*net.UDPAddr)
			ms := quicMessages(8)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				gsoSend(b, tx, to, data, 1200)
				for got := 0; got < 40; {
					n, err := r.ReadBatch(ms, 0)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
			c := r.Counters()
			b.ReportMetric(float64(c.Datagrams)/float64(c.Reads), "datagrams/read")
		})
	}
}
