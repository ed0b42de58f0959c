package tunnel

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/quic-go/quic-go"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// The dark listener (codec/FORMAT.md, "Dark listener"; THREATS P1 and P5,
// tested by TestDarkListenerSilent and FuzzDarkInbound) sits below quic-go
// and drops, without a reply, every datagram that neither carries a
// connection ID this daemon issued nor, for a client's first flight, a MAC
// keyed from this daemon's public key. A scanner that does not know the
// key gets no Initial, no Retry, no version negotiation and no stateless
// reset back: it cannot tell a QUIC server is there. Packets of
// established connections pass after one AES block to check their
// connection ID.

const (
	cidNonceSize = 6
	cidTagSize   = 6
	cidLen       = cidNonceSize + cidTagSize // connection IDs of every dyad node

	darkTSSize    = 4  // big-endian Unix seconds
	darkTagSize   = 16 // truncated HMAC-SHA256
	darkTrailer   = darkTSSize + darkTagSize
	darkMaxSkew   = 120 * time.Second // clock skew (and replay window) accepted
	initialPacket = 1252              // quic.Config.InitialPacketSize: tagged, 1272 bytes
)

// darkKey is what a daemon's public key gives the dark listener: a MAC key
// for first flights sent to it and a block cipher that makes and checks
// the connection IDs it issues.
type darkKey struct {
	mac []byte
	cid cipher.Block
}

func newDarkKey(pub identity.PublicKey) *darkKey {
	ikm := append(pub.Sign[:], pub.DH[:]...)
	mac, err := hkdf.Key(sha256.New, ikm, nil, "dyad/1 dark listener mac", 32)
	if err != nil {
		panic("dark: hkdf of 32 bytes cannot fail: " + err.Error())
	}
	ck, err := hkdf.Key(sha256.New, ikm, nil, "dyad/1 dark listener connection id", 16)
	if err != nil {
		panic("dark: hkdf of 16 bytes cannot fail: " + err.Error())
	}
	block, err := aes.NewCipher(ck)
	if err != nil {
		panic("dark: AES-128 key: " + err.Error())
	}
	return &darkKey{mac: mac, cid: block}
}

// cidTag is the tag a connection ID with this nonce carries (in out's
// first bytes; out is also the cipher's input block).
func (k *darkKey) cidTag(nonce []byte, out *[aes.BlockSize]byte) {
	*out = [aes.BlockSize]byte{}
	copy(out[:], nonce)
	k.cid.Encrypt(out[:], out[:])
}

// validCID reports whether cid was issued under k.
func (k *darkKey) validCID(cid []byte) bool {
	var tag [aes.BlockSize]byte
	return k.validCIDWith(cid, &tag)
}

// validCIDWith is validCID with caller-owned scratch: block ciphers take
// their arguments through an interface, so a stack array would escape.
func (k *darkKey) validCIDWith(cid []byte, tag *[aes.BlockSize]byte) bool {
	if len(cid) != cidLen {
		return false
	}
	k.cidTag(cid[:cidNonceSize], tag)
	return hmac.Equal(tag[:cidTagSize], cid[cidNonceSize:])
}

// firstFlightTag computes the MAC of a datagram body and its timestamp
// with m, an HMAC under k.mac that it resets, into out.
func firstFlightTag(m hash.Hash, body, ts []byte, out *[sha256.Size]byte) []byte {
	m.Reset()
	m.Write(body)
	m.Write(ts)
	return m.Sum(out[:0])[:darkTagSize]
}

// newMAC returns an HMAC for first flights sent to k.
func (k *darkKey) newMAC() hash.Hash { return hmac.New(sha256.New, k.mac) }

// seal appends the timestamp and MAC to a first-flight datagram.
func (k *darkKey) seal(b []byte, now time.Time) []byte {
	out := make([]byte, len(b), len(b)+darkTrailer)
	copy(out, b)
	out = binary.BigEndian.AppendUint32(out, uint32(now.Unix()))
	var sum [sha256.Size]byte
	return append(out, firstFlightTag(k.newMAC(), out[:len(b)], out[len(b):], &sum)...)
}

// openFirstFlight checks a tagged datagram and returns its body. m is the
// receiving key's HMAC and sum its scratch: the read loop reuses its own.
func openFirstFlight(m hash.Hash, sum *[sha256.Size]byte, b []byte, now time.Time) ([]byte, bool) {
	if len(b) < darkTrailer+1 {
		return nil, false
	}
	body, ts, tag := b[:len(b)-darkTrailer], b[len(b)-darkTrailer:len(b)-darkTagSize], b[len(b)-darkTagSize:]
	// The timestamp check comes first: it rejects almost every forged
	// datagram without computing a MAC.
	sent := time.Unix(int64(binary.BigEndian.Uint32(ts)), 0)
	if d := now.Sub(sent); d > darkMaxSkew || d < -darkMaxSkew {
		return nil, false
	}
	if !hmac.Equal(firstFlightTag(m, body, ts, sum), tag) {
		return nil, false
	}
	return body, true
}

// cidGenerator is quic.Transport.ConnectionIDGenerator: random nonces
// tagged under the node's own key, so the dark listener recognises them.
type cidGenerator struct{ key *darkKey }

// GenerateConnectionID implements quic.ConnectionIDGenerator.
func (g cidGenerator) GenerateConnectionID() (quic.ConnectionID, error) {
	var b [cidLen]byte
	rand.Read(b[:cidNonceSize])
	var tag [aes.BlockSize]byte
	g.key.cidTag(b[:cidNonceSize], &tag)
	copy(b[cidNonceSize:], tag[:cidTagSize])
	return quic.ConnectionIDFromBytes(b[:]), nil
}

// ConnectionIDLen implements quic.ConnectionIDGenerator.
func (g cidGenerator) ConnectionIDLen() int { return cidLen }

// darkFilter is the dark listener's decision logic, apart from the socket.
type darkFilter struct {
	own  *darkKey
	dark atomic.Bool // drop what fails; false: only strip valid trailers
	drop func(reason string)

	mu      sync.RWMutex // guards peers and remotes
	peers   map[netip.AddrPort]*darkKey
	remotes map[netip.AddrPort]int // remote addresses of live tunnels, counted

	// Read loop only: the last connection ID that checked out, and the
	// reused MAC and scratch that keep a flood of drops from allocating.
	lastCID  [cidLen]byte
	haveLast bool
	scratch  [aes.BlockSize]byte
	mac      hash.Hash // HMAC under own.mac
	sum      [sha256.Size]byte
}

// newDarkFilter returns a filter for the node whose key is own, reporting
// drops to drop; it starts open (dark false).
func newDarkFilter(own *darkKey, drop func(reason string)) *darkFilter {
	return &darkFilter{own: own, drop: drop, peers: map[netip.AddrPort]*darkKey{}, mac: own.newMAC()}
}

// Drop reasons, as packets_dropped events and metrics name them.
const (
	dropUnknownCID = "dark_unknown_connection_id"
	dropNoMAC      = "dark_first_flight_without_mac"
)

// expect tells the filter that addr is peer's endpoint, so first flights
// sent there carry the MAC of peer's key.
func (f *darkFilter) expect(addr *net.UDPAddr, peer identity.PublicKey) {
	ap, _ := addrKey(addr)
	f.mu.Lock()
	defer f.mu.Unlock()
	if k, ok := f.peers[ap]; ok && k != nil {
		return
	}
	f.peers[ap] = newDarkKey(peer)
}

// tunnelAt counts a live tunnel's remote address in (delta 1) or out (-1):
// a peer that restarted answers its packets with a stateless reset, whose
// connection ID is random.
func (f *darkFilter) tunnelAt(addr net.Addr, delta int) {
	ap, ok := addrKey(addr)
	if !ok {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.remotes == nil {
		f.remotes = map[netip.AddrPort]int{}
	}
	if f.remotes[ap] += delta; f.remotes[ap] <= 0 {
		delete(f.remotes, ap)
	}
}

// knownSource reports whether addr is a peer endpoint we dial or the
// remote address of a live tunnel.
func (f *darkFilter) knownSource(addr net.Addr) bool {
	ap, ok := addrKey(addr)
	if !ok {
		return false
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.peers[ap] != nil || f.remotes[ap] > 0
}

// addrKey keys a UDP address in the filter's maps (IPv4-mapped IPv6 as
// IPv4, as sockets report either).
func addrKey(addr net.Addr) (netip.AddrPort, bool) {
	u, ok := addr.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := u.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

func (f *darkFilter) peerAt(addr net.Addr) *darkKey {
	ap, ok := addrKey(addr)
	if !ok {
		return nil
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.peers[ap]
}

// longDCID returns the destination connection ID of a long-header packet.
func longDCID(b []byte) ([]byte, bool) {
	if len(b) < 6 {
		return nil, false
	}
	l := int(b[5])
	if len(b) < 6+l {
		return nil, false
	}
	return b[6 : 6+l], true
}

// ownCID checks a connection ID against the node's key, remembering the
// last good one: most datagrams in a row belong to the same connection.
func (f *darkFilter) ownCID(cid []byte) bool {
	if f.haveLast && len(cid) == cidLen && string(cid) == string(f.lastCID[:]) {
		return true
	}
	if !f.own.validCIDWith(cid, &f.scratch) {
		return false
	}
	copy(f.lastCID[:], cid)
	f.haveLast = true
	return true
}

// inbound decides a received datagram: its length once a trailer is
// stripped, or false to drop it. It runs on quic-go's read loop only.
func (f *darkFilter) inbound(b []byte, from net.Addr, now time.Time) (int, bool) {
	if len(b) == 0 {
		return 0, false
	}
	if b[0]&0x80 == 0 {
		// Short header: a connection we issued an ID for, or, from a peer
		// endpoint we dial or a live tunnel's remote address, maybe its
		// stateless reset after a restart (quic-go checks the token;
		// TestFaultKillImporterMidUpload, TestFaultStaleTunnelEnds).
		if !f.dark.Load() || len(b) > cidLen && f.ownCID(b[1:1+cidLen]) || f.knownSource(from) {
			return len(b), true
		}
		f.drop(dropUnknownCID)
		return 0, false
	}
	if dcid, ok := longDCID(b); ok && len(dcid) == cidLen && f.ownCID(dcid) {
		return len(b), true // a handshake we take part in already
	}
	if body, ok := openFirstFlight(f.mac, &f.sum, b, now); ok {
		return len(body), true
	}
	if !f.dark.Load() {
		return len(b), true
	}
	f.drop(dropNoMAC)
	return 0, false
}

// outbound returns the datagram to send to addr: a long-header datagram
// whose destination connection ID the receiver did not issue (a client's
// first flight) gets the receiver's MAC; everything else goes unchanged.
func (f *darkFilter) outbound(b []byte, addr net.Addr, now time.Time) []byte {
	if len(b) == 0 || b[0]&0x80 == 0 {
		return b
	}
	k := f.peerAt(addr)
	if k == nil {
		return b // not a peer we dial: we answer as a server
	}
	if dcid, ok := longDCID(b); ok && k.validCID(dcid) {
		return b
	}
	return k.seal(b, now)
}

// darkConn is the UDP socket quic-go sees. It keeps quic-go's fast paths
// (batched receive, GSO, ECN): it is an OOBCapablePacketConn with its own
// ReadBatch.
type darkConn struct {
	*net.UDPConn
	batch *ipv4.PacketConn
	f     *darkFilter
}

func newDarkConn(c *net.UDPConn, f *darkFilter) *darkConn {
	return &darkConn{UDPConn: c, batch: ipv4.NewPacketConn(c), f: f}
}

// ReadBatch reads datagrams and keeps those the filter passes. A dropped
// datagram's slot is filled by moving a later one's bytes into it: quic-go
// pairs each message slot with its own buffer, so slots cannot be swapped.
func (c *darkConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		n, err := c.batch.ReadBatch(ms, flags)
		if err != nil || n == 0 {
			return n, err
		}
		now := time.Now()
		kept := 0
		for i := range n {
			m := &ms[i]
			size, ok := c.f.inbound(m.Buffers[0][:m.N], m.Addr, now)
			if !ok {
				continue
			}
			if kept != i {
				k := &ms[kept]
				copy(k.Buffers[0], m.Buffers[0][:size])
				k.NN = copy(k.OOB, m.OOB[:m.NN])
				k.Addr, k.Flags = m.Addr, m.Flags
			}
			ms[kept].N = size
			kept++
		}
		if kept > 0 {
			return kept, nil
		}
	}
}

// ReadMsgUDP is ReadBatch for one datagram (quic-go does not use it; it is
// here so that no path reads around the filter).
func (c *darkConn) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	for {
		n, oobn, flags, addr, err = c.UDPConn.ReadMsgUDP(b, oob)
		if err != nil {
			return
		}
		if size, ok := c.f.inbound(b[:n], addr, time.Now()); ok {
			return size, oobn, flags, addr, nil
		}
	}
}

// ReadFrom filters like ReadBatch.
func (c *darkConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, _, _, addr, err := c.ReadMsgUDP(b, nil)
	return n, addr, err
}

// WriteMsgUDP tags first flights. A GSO batch that needs tags is split,
// since the tag changes each datagram's size; that happens only for a
// client's first flight.
func (c *darkConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	if len(b) == 0 || b[0]&0x80 == 0 {
		return c.UDPConn.WriteMsgUDP(b, oob, addr)
	}
	seg := gsoSegment(oob)
	if seg == 0 || seg >= len(b) {
		out := c.f.outbound(b, addr, time.Now())
		if len(out) != len(b) {
			oob = withoutGSO(oob)
		}
		_, oobn, err := c.UDPConn.WriteMsgUDP(out, oob, addr)
		return len(b), oobn, err
	}
	plain := withoutGSO(oob)
	for off := 0; off < len(b); off += seg {
		d := b[off:min(off+seg, len(b))]
		if _, _, err := c.UDPConn.WriteMsgUDP(c.f.outbound(d, addr, time.Now()), plain, addr); err != nil {
			return off, 0, err
		}
	}
	return len(b), len(oob), nil
}

// WriteTo tags like WriteMsgUDP.
func (c *darkConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if u, ok := addr.(*net.UDPAddr); ok {
		n, _, err := c.WriteMsgUDP(b, nil, u)
		return n, err
	}
	return c.UDPConn.WriteTo(b, addr)
}

// gsoSegment returns the UDP_SEGMENT size in oob, or 0.
func gsoSegment(oob []byte) int {
	if len(oob) == 0 {
		return 0
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_UDP && m.Header.Type == unix.UDP_SEGMENT && len(m.Data) >= 2 {
			return int(binary.NativeEndian.Uint16(m.Data))
		}
	}
	return 0
}

// withoutGSO drops a UDP_SEGMENT control message from oob, keeping the
// rest (ECN, source address).
func withoutGSO(oob []byte) []byte {
	if gsoSegment(oob) == 0 {
		return oob
	}
	var out []byte
	for len(oob) > 0 {
		h, _, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return out
		}
		one := oob[:len(oob)-len(rest)]
		if !(h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_SEGMENT) {
			out = append(out, one...)
		}
		oob = rest
	}
	return out
}

// CheckDatagram says what a dark listener with the key listener does with
// datagram b received at now: the length it hands to QUIC (a first
// flight's MAC stripped), or false when it drops b. For tools and fuzzing;
// the node keeps its keys instead of deriving them per call.
func CheckDatagram(listener identity.PublicKey, b []byte, from net.Addr, now time.Time) (int, bool) {
	f := newDarkFilter(newDarkKey(listener), func(string) {})
	f.dark.Store(true)
	return f.inbound(b, from, now)
}

// SealFirstFlight returns datagram b as a client sends it to listener in
// its first flight: followed by the timestamp and MAC.
func SealFirstFlight(listener identity.PublicKey, b []byte, now time.Time) []byte {
	return newDarkKey(listener).seal(b, now)
}
