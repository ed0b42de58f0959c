package tunnel

import (
	"encoding/binary"
	"net"
	"sync"
)

// yamux frame types and flags (github.com/hashicorp/yamux const.go).
const (
	yamuxData   = 0
	yamuxUpdate = 1
	yamuxSYN    = 1
	yamuxACK    = 2
	yamuxFIN    = 4
	yamuxRST    = 8
)

// rxGate bounds what yamux holds for our readers across all streams of
// one TCP connection. yamux's flow control is per stream only, so a
// stream window sized for a long fat link (tcpWindow) times max_streams
// would be far beyond the peer's memory budget; the gate gives the
// connection the budget QUIC's connection windows give (C * W_conn,
// README "Memory"): it counts each data frame's body as it enters yamux
// and each byte our streams read out of it, and stops handing yamux the
// connection's bytes while the count is at the budget, so the peer's TCP
// sender is stopped by TCP's own window. What yamux holds is then at most
// the budget plus the frame being read (at most one stream window) plus
// yamux's read-ahead buffer (THREATS P5, tested by TestTCPReceiveGate).
//
// A stream is counted from the frame that opens it (the peer's SYN, or
// our own, seen as yamux writes it) until both ends are done: our side
// forgets it (tcpConn.forget), or either side resets it (yamux then drops
// its buffer); frames for any other stream id are discarded by yamux and
// not counted (an ACK for a stream we never opened once counted its
// frame's length while yamux drained it, and the gate stopped the drain:
// FuzzTCPFrames, seed 48df37c522672b43).
type rxGate struct {
	budget int64

	mu      sync.Mutex // guards the following fields
	cond    sync.Cond  // held went down, or the gate closed
	held    int64      // bytes in yamux's stream buffers, not yet read by us
	closed  bool
	streams map[uint32]*rxStream

	// The frame being parsed; only the reader touches these.
	hdr     [yamuxHeader]byte
	hdrLen  int
	bodyLen int64 // bytes of the current data frame's body still to come
}

// rxStream is one stream's count.
type rxStream struct {
	held int64
}

func newRxGate(budget int64) *rxGate {
	g := &rxGate{budget: budget, streams: map[uint32]*rxStream{}}
	g.cond.L = &g.mu
	return g
}

// read reads from conn into b for yamux, first waiting while the held
// bytes are at the budget; it counts the frames it hands over.
func (g *rxGate) read(conn net.Conn, b []byte) (int, error) {
	g.mu.Lock()
	for g.held >= g.budget && !g.closed {
		g.cond.Wait()
	}
	g.mu.Unlock()
	n, err := conn.Read(b)
	g.parse(b[:n])
	return n, err
}

// parse follows the frame boundaries through p.
func (g *rxGate) parse(p []byte) {
	for len(p) > 0 {
		if g.bodyLen > 0 {
			k := min(int64(len(p)), g.bodyLen)
			g.bodyLen -= k
			p = p[k:]
			continue
		}
		k := copy(g.hdr[g.hdrLen:], p)
		g.hdrLen += k
		p = p[k:]
		if g.hdrLen < yamuxHeader {
			return
		}
		g.hdrLen = 0
		g.frame(g.hdr[1], binary.BigEndian.Uint16(g.hdr[2:]), binary.BigEndian.Uint32(g.hdr[4:]), binary.BigEndian.Uint32(g.hdr[8:]))
	}
}

// frame counts one frame header from the peer. Only data frames have a
// body; a bad version or type ends the session in yamux, and the gate
// with it.
func (g *rxGate) frame(typ byte, flags uint16, id, length uint32) {
	if typ != yamuxData && typ != yamuxUpdate {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.streams[id]
	if s == nil && flags&yamuxSYN != 0 && flags&yamuxRST == 0 {
		s = &rxStream{}
		g.streams[id] = s
	}
	if typ == yamuxData {
		g.bodyLen = int64(length)
		if s != nil {
			s.held += int64(length)
			g.held += int64(length)
		}
	}
	if flags&yamuxRST != 0 {
		g.dropLocked(id)
	}
}

// took credits n bytes our side read from stream id.
func (g *rxGate) took(id uint32, n int) {
	if n <= 0 {
		return
	}
	g.mu.Lock()
	if s := g.streams[id]; s != nil {
		k := min(int64(n), s.held)
		s.held -= k
		g.held -= k
		g.cond.Broadcast()
	}
	g.mu.Unlock()
}

// drop forgets stream id: yamux no longer holds a buffer for it.
func (g *rxGate) drop(id uint32) {
	g.mu.Lock()
	g.dropLocked(id)
	g.mu.Unlock()
}

func (g *rxGate) dropLocked(id uint32) {
	if s := g.streams[id]; s != nil {
		g.held -= s.held
		delete(g.streams, id)
		g.cond.Broadcast()
	}
}

// sent watches our own frame headers, before they reach the peer: our
// SYN opens a stream the peer's frames are counted on, our RST (yamux
// refuses a stream over its accept backlog so) drops its buffer.
func (g *rxGate) sent(hdr []byte) {
	if len(hdr) != yamuxHeader || hdr[1] != yamuxData && hdr[1] != yamuxUpdate {
		return
	}
	flags, id := binary.BigEndian.Uint16(hdr[2:]), binary.BigEndian.Uint32(hdr[4:])
	switch {
	case flags&yamuxRST != 0:
		g.drop(id)
	case flags&yamuxSYN != 0:
		g.mu.Lock()
		if g.streams[id] == nil {
			g.streams[id] = &rxStream{}
		}
		g.mu.Unlock()
	}
}

// close releases a waiting reader for good: the connection has ended.
func (g *rxGate) close() {
	g.mu.Lock()
	g.closed = true
	g.cond.Broadcast()
	g.mu.Unlock()
}

// stats reports the held bytes and the streams counted.
func (g *rxGate) stats() (held int64, streams int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held, len(g.streams)
}
