package fuzz

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/dyad-tunnel/dyad/tunnel/udpbatch"
)

// coalescedRead is a socket that returns one read, as recvmmsg fills a
// message with UDP_GRO on, then io.EOF.
type coalescedRead struct {
	data, oob []byte
	done      bool
}

func (s *coalescedRead) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if s.done {
		return 0, io.EOF
	}
	s.done = true
	ms[0].N = copy(ms[0].Buffers[0], s.data)
	ms[0].NN = copy(ms[0].OOB, s.oob) // the kernel cuts what does not fit, too (MSG_CTRUNC)
	ms[0].Addr = &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1}
	return 1, nil
}

// FuzzGROSplit: any coalesced read (bytes, segment size, other control
// data, well formed or not) split into any number of message slots of any
// buffer size gives back the datagrams the sender wrote: their number,
// sizes and bytes (cut to the buffer and flagged only when they do not
// fit), each with well-formed control data without UDP_GRO; never a panic.
func FuzzGROSplit(f *testing.F) {
	tos := udpbatch.AppendCmsg(nil, unix.IPPROTO_IP, unix.IP_TOS, []byte{2})
	f.Add(bytes.Repeat([]byte{0x40}, 3*1200+500), uint16(1200), tos, uint16(1452), uint8(8))
	f.Add([]byte{}, uint16(0), []byte{}, uint16(1452), uint8(8))
	f.Add(bytes.Repeat([]byte{1}, 4000), uint16(2000), append(tos, 1, 2, 3), uint16(1000), uint8(1))
	f.Add(bytes.Repeat([]byte{7}, 100), uint16(1), []byte{0xff, 0xff}, uint16(0), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, seg uint16, ctl []byte, bufLen uint16, slots uint8) {
		data = data[:min(len(data), udpbatch.BufSize)]
		oob := append(udpbatch.AppendGRO(nil, int(seg)), ctl...)
		wantCtl, gotSeg := udpbatch.StripGRO(nil, oob[:min(len(oob), 128)])
		if gotSeg != int(seg) {
			t.Fatalf("UDP_GRO %d read back as %d", seg, gotSeg)
		}
		// The sender's datagrams, split independently of the package.
		var want [][]byte
		step := len(data)
		if seg > 0 && int(seg) < len(data) {
			step = int(seg)
		}
		for off := 0; off < len(data) || off == 0; off += step {
			want = append(want, data[off:min(off+step, len(data))])
			if step == 0 {
				break
			}
		}
		r := udpbatch.NewReader(&coalescedRead{data: data, oob: oob}, true)
		ms := make([]ipv4.Message, int(slots)%9+1)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, int(bufLen)%2000)}
			ms[i].OOB = make([]byte, 128)
		}
		var got int
		for {
			n, err := r.ReadBatch(ms, 0)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil || n < 1 || n > len(ms) {
				t.Fatalf("ReadBatch = %d, %v", n, err)
			}
			for _, m := range ms[:n] {
				if got >= len(want) {
					t.Fatalf("more than the %d datagrams sent", len(want))
				}
				w := want[got]
				cut := len(w) > len(m.Buffers[0])
				if !bytes.Equal(m.Buffers[0][:m.N], w[:min(len(w), len(m.Buffers[0]))]) || (m.Flags&unix.MSG_TRUNC != 0) != cut {
					t.Fatalf("datagram %d: %d bytes, flags %#x; sent %d", got, m.N, m.Flags, len(w))
				}
				if !bytes.Equal(m.OOB[:m.NN], wantCtl) {
					t.Fatalf("datagram %d: control data %x, want %x", got, m.OOB[:m.NN], wantCtl)
				}
				if _, err := unix.ParseSocketControlMessage(m.OOB[:m.NN]); err != nil {
					t.Fatalf("datagram %d: malformed control data: %v", got, err)
				}
				got++
			}
		}
		if got != len(want) {
			t.Fatalf("%d datagrams, sent %d", got, len(want))
		}
		if c := r.Counters(); c.Datagrams != uint64(len(want)) || c.Reads != 1 {
			t.Fatalf("counters %+v for %d datagrams", c, len(want))
		}
	})
}
