// Package udpbatch reads UDP datagrams in batches below quic-go, with the
// kernel's receive offload (UDP_GRO) when it has it.
//
// With UDP_GRO on, the kernel hands one read a run of datagrams from the
// same sender that have the same size (the last may be shorter), glued
// together, with their size in a control message: on loopback a GSO
// sender's 40 datagrams of 1,200 bytes arrive in one 48,000-byte read, and
// the kernel's per-datagram work is done once. A Reader splits such reads
// back into datagrams, so its caller (quic-go, through the dark listener)
// sees exactly what a socket without offload would have given it.
//
// Contract of Reader.ReadBatch, which is quic-go's batchConn:
//   - Each ms[i] must carry one buffer (Buffers[0]) and may carry OOB room;
//     ReadBatch fills ms[:n] with one datagram each, in arrival order: N
//     its length, Buffers[0][:N] its bytes, OOB[:NN] its control data, Addr
//     its source, Flags the read's flags.
//   - Control data is per datagram: the read's control messages (ECN in
//     IP_TOS/IPV6_TCLASS, IP_PKTINFO/IPV6_PKTINFO) are copied to every
//     datagram of the read, the UDP_GRO message is removed. A control
//     message that does not fit in OOB is left out whole, never cut.
//   - A datagram longer than Buffers[0] is cut to it and flagged MSG_TRUNC,
//     as recvmmsg would; such cuts are counted.
//   - Datagrams of a read that do not fit in ms are kept for the next call,
//     which returns them without a system call. ReadBatch blocks only when
//     none are kept.
//   - Datagrams of one read share their Addr (the caller must not modify it).
//   - The first error of the socket is returned as is; kept datagrams are
//     returned before any further read.
//
// Memory: a Reader with offload on holds 8 pooled buffers of 64 KiB (512
// KiB) while it waits in a read or keeps datagrams, and returns them to the
// pool when a read fails (a closed socket). Without offload it holds none:
// ReadBatch reads straight into the caller's messages.
//
// A Reader is safe for concurrent use; its calls are serialized.
package udpbatch

import (
	"encoding/binary"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// EnvDisable is the environment variable that turns receive offload off
// when it parses as true ("1", "true"), as QUIC_GO_DISABLE_GSO does for
// quic-go's send offload.
const EnvDisable = "DYAD_DISABLE_GRO"

const (
	// BufSize is one receive buffer: the largest read UDP_GRO makes (a
	// coalesced run is at most 64 KiB, the largest UDP payload).
	BufSize = 1 << 16
	// Messages is the number of coalesced reads one system call may take.
	Messages = 8
	// oobSize holds every control message a read may carry here: TOS or
	// TCLASS, IPv4 or IPv6 packet info, UDP_GRO (16+16+40+16 bytes).
	oobSize = 128
)

// bufPool holds receive buffers as pointers, so a Put does not allocate
// (STYLE 5; the array type is the size check).
var bufPool = sync.Pool{New: func() any { return new([BufSize]byte) }}

// BatchReader is the socket a Reader reads from: *ipv4.PacketConn (or
// ipv6's), whose ReadBatch is recvmmsg.
type BatchReader interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
}

// Counters are a Reader's totals since it started.
type Counters struct {
	Reads     uint64 // receive system calls that returned datagrams (recvmmsg)
	Messages  uint64 // messages those calls returned (coalesced runs count once)
	Coalesced uint64 // messages that carried more than one datagram
	Datagrams uint64 // datagrams handed to the caller
	Truncated uint64 // datagrams cut to the caller's buffer
}

// Reader reads a UDP socket in batches and splits coalesced reads. Its
// contract is the package comment's.
type Reader struct {
	src BatchReader
	gro bool // offload on: read into own buffers and split

	reads, messages, coalesced, datagrams, truncated atomic.Uint64

	mu   sync.Mutex // guards the fields below
	msgs []ipv4.Message
	bufs [Messages]*[BufSize]byte // nil while released
	oobs [Messages][oobSize]byte
	n    int // messages the last read returned
	cur  int // the message being split; cur == n: nothing kept
	off  int // offset of its next datagram
	seg  int // its datagram size (UDP_GRO); 0: the whole message
	ctl  []byte
	ctlb [oobSize]byte // cur's control data without UDP_GRO (ctl's array)
}

// Open returns a Reader of c that enables UDP_GRO on c unless EnvDisable
// says not to or the kernel refuses: then the Reader reads plainly. It
// reports whether offload is on.
func Open(c *net.UDPConn) (*Reader, bool) {
	gro := !disabledByEnv() && enableGRO(c)
	return NewReader(ipv4.NewPacketConn(c), gro), gro
}

// disabledByEnv reports whether EnvDisable turns offload off.
func disabledByEnv() bool {
	off, err := strconv.ParseBool(os.Getenv(EnvDisable))
	return err == nil && off
}

// enableGRO sets UDP_GRO on c and reports whether the kernel took it.
func enableGRO(c *net.UDPConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}); err != nil {
		return false
	}
	return serr == nil
}

// NewReader returns a Reader of src. With gro, src's reads may be
// coalesced runs carrying a UDP_GRO control message; without, ReadBatch
// passes src's reads through.
func NewReader(src BatchReader, gro bool) *Reader {
	r := &Reader{src: src, gro: gro}
	if gro {
		r.msgs = make([]ipv4.Message, Messages)
		for i := range r.msgs {
			r.msgs[i].Buffers = make([][]byte, 1)
		}
	}
	return r
}

// GRO reports whether the Reader splits coalesced reads.
func (r *Reader) GRO() bool { return r.gro }

// Counters returns the Reader's totals.
func (r *Reader) Counters() Counters {
	return Counters{Reads: r.reads.Load(), Messages: r.messages.Load(), Coalesced: r.coalesced.Load(),
		Datagrams: r.datagrams.Load(), Truncated: r.truncated.Load()}
}

// ReadBatch reads datagrams into ms (the package comment's contract).
func (r *Reader) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	if !r.gro {
		n, err := r.src.ReadBatch(ms, flags)
		if n > 0 {
			r.reads.Add(1)
			r.messages.Add(uint64(n))
			r.datagrams.Add(uint64(n))
		}
		return n, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur >= r.n {
		if err := r.read(flags); err != nil {
			return 0, err
		}
	}
	k := 0
	for k < len(ms) && r.cur < r.n {
		r.next(&ms[k])
		k++
	}
	r.datagrams.Add(uint64(k))
	return k, nil
}

// read fills r.msgs from the socket, taking buffers from the pool.
func (r *Reader) read(flags int) error {
	for i := range r.msgs {
		if r.bufs[i] == nil {
			r.bufs[i] = bufPool.Get().(*[BufSize]byte)
		}
		m := &r.msgs[i]
		m.Buffers[0] = r.bufs[i][:]
		m.OOB = r.oobs[i][:]
		m.N, m.NN, m.Flags, m.Addr = 0, 0, 0, nil
	}
	n, err := r.src.ReadBatch(r.msgs, flags)
	if err != nil {
		r.release()
		return err
	}
	r.n, r.cur = min(max(n, 0), len(r.msgs)), 0
	if r.n == 0 {
		return nil // recvmmsg returns a message or an error; ReadBatch then returns 0, nil
	}
	r.reads.Add(1)
	r.messages.Add(uint64(r.n))
	r.start()
	return nil
}

// release returns the buffers to the pool (nothing is kept).
func (r *Reader) release() {
	r.n, r.cur = 0, 0
	for i, b := range r.bufs {
		if b != nil {
			bufPool.Put(b)
			r.bufs[i] = nil
		}
		r.msgs[i].Buffers[0], r.msgs[i].Addr = nil, nil
	}
}

// start begins splitting message r.cur.
func (r *Reader) start() {
	m := &r.msgs[r.cur]
	r.off = 0
	oob := m.OOB[:min(max(m.NN, 0), len(m.OOB))]
	var seg int
	r.ctl, seg = StripGRO(r.ctlb[:0], oob)
	r.seg = 0
	if seg > 0 && seg < m.N {
		r.seg = seg
		r.coalesced.Add(1)
	}
}

// next moves the next kept datagram into d.
func (r *Reader) next(d *ipv4.Message) {
	m := &r.msgs[r.cur]
	n := min(max(m.N, 0), len(m.Buffers[0]))
	end := n
	if r.seg > 0 {
		end = min(r.off+r.seg, n)
	}
	var dst []byte
	if len(d.Buffers) > 0 {
		dst = d.Buffers[0]
	}
	d.N = copy(dst, m.Buffers[0][r.off:end])
	d.Flags = m.Flags &^ unix.MSG_TRUNC
	if d.N < end-r.off {
		d.Flags |= unix.MSG_TRUNC
		r.truncated.Add(1)
	}
	d.NN = copyCmsgs(d.OOB, r.ctl)
	d.Addr = m.Addr
	r.off = end
	if r.off >= n {
		if r.cur++; r.cur < r.n {
			r.start()
		}
	}
}

// StripGRO appends to dst the control messages of oob except UDP_GRO and
// returns it with the UDP_GRO segment size (0 when oob has none). A
// malformed tail of oob is left out.
//
// THREATS P8 (any input: no panic, no read outside oob), tested by
// FuzzGROSplit.
func StripGRO(dst, oob []byte) ([]byte, int) {
	seg := 0
	// x/sys reads a whole header at oob[0]: shorter tails are malformed.
	for len(oob) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		one := oob[:len(oob)-len(rest)]
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO {
			seg = groSize(data)
		} else {
			dst = append(dst, one...)
		}
		oob = rest
	}
	return dst, seg
}

// groSize decodes a UDP_GRO control message's data: the kernel writes an
// int (4 bytes); a 2-byte form (gso_size as u16) is read too.
func groSize(data []byte) int {
	switch {
	case len(data) >= 4:
		return int(int32(binary.NativeEndian.Uint32(data)))
	case len(data) >= 2:
		return int(binary.NativeEndian.Uint16(data))
	}
	return 0
}

// copyCmsgs copies the whole control messages of ctl (well formed: StripGRO
// built it) that fit into dst and returns the bytes copied.
func copyCmsgs(dst, ctl []byte) int {
	if len(ctl) <= len(dst) {
		return copy(dst, ctl)
	}
	w := 0
	for len(ctl) >= unix.SizeofCmsghdr {
		_, _, rest, err := unix.ParseOneSocketControlMessage(ctl)
		if err != nil {
			break
		}
		one := ctl[:len(ctl)-len(rest)]
		if w+len(one) > len(dst) {
			break
		}
		w += copy(dst[w:], one)
		ctl = rest
	}
	return w
}

// AppendGRO appends a UDP_GRO control message carrying seg to oob, as the
// kernel writes it: for tests and fuzzing.
func AppendGRO(oob []byte, seg int) []byte {
	return AppendCmsg(oob, unix.IPPROTO_UDP, unix.UDP_GRO, binary.NativeEndian.AppendUint32(nil, uint32(int32(seg))))
}

// AppendCmsg appends one control message (level, type, data) to oob in
// the kernel's layout: for tests and fuzzing.
func AppendCmsg(oob []byte, level, typ int32, data []byte) []byte {
	var h unix.Cmsghdr
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	hb := unsafe.Slice((*byte)(unsafe.Pointer(&h)), unix.SizeofCmsghdr)
	start := len(oob)
	oob = append(oob, hb...)
	oob = append(oob, data...)
	return append(oob, make([]byte, unix.CmsgSpace(len(data))-(len(oob)-start))...)
}
