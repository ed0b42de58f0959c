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
	"github.com/dyad-tunnel/dyad/tunnel/udpbatch"
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
	cidIncSize   = 2 // the issuing process's random incarnation
	cidTimeSize  = 4 // big-endian Unix seconds of issue
	cidRandSize  = 4
	cidNonceSize = cidIncSize + cidTimeSize + cidRandSize
	cidTagSize   = 6
	cidLen       = cidNonceSize + cidTagSize // connection IDs of every dyad node

	darkTSSize    = 4  // big-endian Unix seconds
	darkTagSize   = 16 // truncated HMAC-SHA256
	darkTrailer   = darkTSSize + darkTagSize
	darkMaxSkew   = 120 * time.Second // clock skew (and replay window) accepted
	initialPacket = 1252              // quic.Config.InitialPacketSize: tagged, 1272 bytes

	// darkMinUnproven is the smallest datagram passed on its connection ID
	// alone, from an address the filter cannot tie to a live tunnel.
	// quic-go answers such a datagram, at most, with a 42-byte stateless
	// reset (protocol.MinStatelessResetSize) or, within 3 PTO of a local
	// close, a retransmitted CONNECTION_CLOSE (under 60 bytes with our
	// reason phrases): never more than the datagram carried. Heartbeats
	// (about 70 bytes) pass it, so a peer that moved still migrates.
	// THREATS P9, tested by TestDarkObserverGetsNoAnswer.
	darkMinUnproven = 64

	// Bounds of the filter's read-loop state (FORMAT.md section 9).
	replayMax       = 8192 // first-flight tags remembered
	replayPerSource = 256  // of which one source (IPv4 address, IPv6 /64) may hold
	liveMax         = 4096 // connection IDs seen from live tunnels
	foreignMax      = 1024 // connection IDs of another incarnation being answered
	rebuildEvery    = time.Second
)

// darkWindows are the filter's time windows (FORMAT.md section 9). A
// variable only so that tests can wait past them; nothing changes it
// while a node runs.
var darkWindows = struct {
	// young: a connection ID is young this long after it was issued; only
	// young IDs pass in long headers (handshakes). quic-go ends a
	// handshake 2 x HandshakeIdleTimeout after it began.
	young time.Duration
	// live: a connection ID seen from a live tunnel's address passes from
	// any address this long after (NAT rebinding).
	live time.Duration
	// foreign: a connection ID of another incarnation (before a restart,
	// or a sibling instance sharing the identity) passes this long after
	// it is first seen, so that the stale tunnel gets its stateless reset.
	foreign time.Duration
}{young: 2*handshakeTimeout + 2*time.Second, live: 30 * time.Second, foreign: 30 * time.Second}

// darkKey is what a daemon's public key gives the dark listener: a MAC key
// for first flights sent to it and a block cipher that makes and checks
// the connection IDs it issues.
type darkKey struct {
	mac []byte
	cid cipher.Block
	inc [cidIncSize]byte // this process's incarnation, in the IDs it issues
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
	k := &darkKey{mac: mac, cid: block}
	rand.Read(k.inc[:])
	return k
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

// Connection IDs of the previous release (FORMAT.md section 9): a 6-byte
// nonce and the first 6 bytes of AES-128(K_cid, nonce || 0^10). A daemon
// of that release still issues them; we only need to recognise them as
// the peer's, so that we send it no first-flight trailer after its first
// answer (TestInteropPreviousRelease).
const legacyCIDNonce, legacyCIDLen = 6, 12

// issued reports whether cid was issued by the daemon whose key is k, in
// this release's format or the previous one's (12 bytes): a peer's IDs,
// as outbound checks them.
func (k *darkKey) issued(cid []byte) bool {
	if len(cid) != legacyCIDLen {
		return k.validCID(cid)
	}
	var tag [aes.BlockSize]byte
	k.cidTag(cid[:legacyCIDNonce], &tag)
	return hmac.Equal(tag[:legacyCIDLen-legacyCIDNonce], cid[legacyCIDNonce:])
}

// cidIssued returns the Unix second a valid connection ID was issued.
func cidIssued(cid []byte) int64 {
	return int64(binary.BigEndian.Uint32(cid[cidIncSize:]))
}

// ours reports whether a valid connection ID was issued by this process
// (not by an earlier incarnation or a sibling sharing the identity; one
// in 65536 of those looks like ours and goes unanswered).
func (k *darkKey) ours(cid []byte) bool {
	return cid[0] == k.inc[0] && cid[1] == k.inc[1]
}

// young reports whether a valid connection ID was issued within the young
// window (seconds: the ID's clock is whole seconds).
func young(cid []byte, now time.Time) bool {
	d := now.Unix() - cidIssued(cid)
	return d >= -1 && d <= int64(darkWindows.young/time.Second)
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

// cidGenerator is quic.Transport.ConnectionIDGenerator: IDs that carry
// this process's incarnation and their issue time, tagged under the
// node's own key, so the dark listener recognises them and their age.
type cidGenerator struct{ key *darkKey }

// GenerateConnectionID implements quic.ConnectionIDGenerator.
func (g cidGenerator) GenerateConnectionID() (quic.ConnectionID, error) {
	var b [cidLen]byte
	copy(b[:], g.key.inc[:])
	binary.BigEndian.PutUint32(b[cidIncSize:], uint32(time.Now().Unix()))
	rand.Read(b[cidIncSize+cidTimeSize : cidNonceSize])
	var tag [aes.BlockSize]byte
	g.key.cidTag(b[:cidNonceSize], &tag)
	copy(b[cidNonceSize:], tag[:cidTagSize])
	return quic.ConnectionIDFromBytes(b[:]), nil
}

// ConnectionIDLen implements quic.ConnectionIDGenerator.
func (g cidGenerator) ConnectionIDLen() int { return cidLen }

// rotatingCIDs is the node's quic.Transport.ConnectionIDGenerator: IDs under
// the filter's current own key, which an identity rotation changes.
type rotatingCIDs struct{ f *darkFilter }

var _ quic.ConnectionIDGenerator = rotatingCIDs{}

// GenerateConnectionID implements quic.ConnectionIDGenerator.
func (g rotatingCIDs) GenerateConnectionID() (quic.ConnectionID, error) {
	return cidGenerator{g.f.keys.Load().own}.GenerateConnectionID()
}

// ConnectionIDLen implements quic.ConnectionIDGenerator.
func (g rotatingCIDs) ConnectionIDLen() int { return cidLen }

// darkKeys are the node's own dark keys: own, and during an identity
// rotation's overlap prev, the previous identity's, whose first-flight MAC
// and connection IDs still pass (a peer that has not learned the new key
// dials with the old MAC; live tunnels carry IDs issued under it).
type darkKeys struct{ own, prev *darkKey }

// setKeys makes own the filter's key and prev (nil: none) the previous
// one. Both keep this process's incarnation, so IDs issued under either
// are ours.
func (f *darkFilter) setKeys(own, prev *darkKey) {
	cur := f.keys.Load()
	for _, k := range []*darkKey{own, prev} {
		// Keys in use already carry it (and are read concurrently);
		// only a fresh one is written.
		if k != nil && k != cur.own && k != cur.prev {
			k.inc = cur.own.inc
		}
	}
	f.keys.Store(&darkKeys{own: own, prev: prev})
}

// current returns the keys in force; on the read loop only, it also
// refreshes the reused MACs when they changed.
func (f *darkFilter) current() *darkKeys {
	k := f.keys.Load()
	if k != f.macKeys {
		f.macKeys, f.mac, f.prevMAC = k, k.own.newMAC(), nil
		if k.prev != nil {
			f.prevMAC = k.prev.newMAC()
		}
	}
	return k
}

// validCID reports whether cid was issued under one of k's keys.
func (k *darkKeys) validCIDWith(cid []byte, tag *[aes.BlockSize]byte) bool {
	return k.own.validCIDWith(cid, tag) || k.prev != nil && k.prev.validCIDWith(cid, tag)
}

// openFirstFlight checks b under the current MAC, then the previous one.
func (f *darkFilter) openFirstFlight(b []byte, now time.Time) ([]byte, bool) {
	if body, ok := openFirstFlight(f.mac, &f.sum, b, now); ok || f.prevMAC == nil {
		return body, ok
	}
	return openFirstFlight(f.prevMAC, &f.sum, b, now)
}

// remoteAddresser is a live tunnel's connection as the filter sees it
// (*quic.Conn): its remote address follows a migration.
type remoteAddresser interface{ RemoteAddr() net.Addr }

// darkFilter is the dark listener's decision logic, apart from the socket.
type darkFilter struct {
	own  *darkKey // the key the filter was made with (tests); keys holds the current ones
	keys atomic.Pointer[darkKeys]
	dark atomic.Bool // drop what fails; false: only strip valid trailers
	drop func(reason string)

	mu        sync.RWMutex // guards peers, conns, remotes and rebuiltAt
	peers     map[netip.AddrPort]*darkKey
	conns     map[remoteAddresser]int     // live tunnels, counted
	remotes   map[netip.AddrPort]struct{} // their remote addresses, as of rebuiltAt
	rebuiltAt time.Time

	// Read loop only: the connection IDs and sources that checked out as a
	// live tunnel's within the last rebuildEvery, the reused MAC and scratch
	// that keep a flood of drops from allocating, and the bounded memories
	// of FORMAT.md section 9.
	passed  [passedSets][2]passedEntry
	scratch [aes.BlockSize]byte
	mac     hash.Hash // HMAC under the current own key's mac
	prevMAC hash.Hash // and under the previous one's, during an overlap
	macKeys *darkKeys // the keys mac and prevMAC are of
	sum     [sha256.Size]byte
	live    map[[cidLen]byte]time.Time // own IDs last seen from a live tunnel's address
	foreign map[[cidLen]byte]time.Time // another incarnation's IDs, first seen
	replay  replayCache
}

// passedSets is the number of sets, two entries each, in the filter's
// cache of live tunnels' recent packets: a few busy connections (a peer's,
// its migration's new ID, a second peer) keep their entries, so the common
// path is two compares, not an AES block, a lock and two map lookups
// (BenchmarkDarkInbound).
const passedSets = 8

// passedEntry is one entry: a connection ID of ours that came from a live
// tunnel's address at "at". The address is kept as sockets report it (an
// IPv4 address in its IPv6-mapped form), to compare without conversions.
type passedEntry struct {
	cid  [cidLen]byte
	ip   [net.IPv6len]byte
	port int
	at   time.Time
}

// passedSet is cid's set, chosen by one of its random bytes (only IDs of
// ours that checked out are stored; no one else can aim at a set).
func (f *darkFilter) passedSet(cid []byte) *[2]passedEntry {
	return &f.passed[cid[cidIncSize+cidTimeSize]%passedSets]
}

// recentlyPassed reports whether cid from from checked out as a live
// tunnel's within the last rebuildEvery.
func (f *darkFilter) recentlyPassed(cid []byte, from net.Addr, now time.Time) bool {
	u, ok := from.(*net.UDPAddr)
	if !ok || u == nil || len(u.Zone) != 0 {
		return false // zoned addresses are not cached
	}
	k := [cidLen]byte(cid) // fixed-size compares: no call to memequal
	set := f.passedSet(cid)
	for i := range set {
		e := &set[i]
		if k != e.cid || u.Port != e.port || now.Sub(e.at) >= rebuildEvery {
			continue
		}
		switch len(u.IP) {
		case net.IPv6len:
			if [net.IPv6len]byte(u.IP) == e.ip {
				return true
			}
		case net.IPv4len:
			if [net.IPv4len]byte(u.IP) == [net.IPv4len]byte(e.ip[12:]) && [12]byte(e.ip[:12]) == v4InV6Prefix {
				return true
			}
		}
	}
	return false
}

// v4InV6Prefix starts an IPv4 address in its IPv6-mapped form.
var v4InV6Prefix = [12]byte{10: 0xff, 11: 0xff}

// remember records that cid from ap checked out at now, in its own entry
// or else in place of the set's older one.
func (f *darkFilter) remember(cid []byte, ap netip.AddrPort, now time.Time) {
	if ap.Addr().Zone() != "" {
		return // an IPv6 link-local peer: the slow path keeps the zone apart
	}
	set := f.passedSet(cid)
	i := 0
	if k := [cidLen]byte(cid); k != set[0].cid && (k == set[1].cid || set[1].at.Before(set[0].at)) {
		i = 1
	}
	set[i] = passedEntry{cid: [cidLen]byte(cid), ip: ap.Addr().As16(), port: int(ap.Port()), at: now}
}

// newDarkFilter returns a filter for the node whose key is own, reporting
// drops to drop; it starts open (dark false).
func newDarkFilter(own *darkKey, drop func(reason string)) *darkFilter {
	f := &darkFilter{own: own, drop: drop, peers: map[netip.AddrPort]*darkKey{},
		conns: map[remoteAddresser]int{}, remotes: map[netip.AddrPort]struct{}{},
		live: map[[cidLen]byte]time.Time{}, foreign: map[[cidLen]byte]time.Time{}, replay: newReplayCache()}
	f.keys.Store(&darkKeys{own: own})
	f.current()
	return f
}

// Drop reasons, as packets_dropped events and metrics name them.
const (
	dropUnknownCID  = "dark_unknown_connection_id"
	dropDeadCID     = "dark_ended_connection_id"
	dropNoMAC       = "dark_first_flight_without_mac"
	dropReplay      = "dark_first_flight_replayed"
	dropReplayFull  = "dark_first_flight_cache_full"
	dropSourceQuota = "dark_first_flight_source_quota"
)

// expect tells the filter that addr is peer's endpoint, so first flights
// sent there carry the MAC of peer's key.
func (f *darkFilter) expect(addr *net.UDPAddr, peer identity.PublicKey) {
	ap, _ := addrKey(addr)
	k := newDarkKey(peer)
	f.mu.Lock()
	defer f.mu.Unlock()
	// A key pinned anew for the same endpoint (a rotation, a reload)
	// replaces the old one: first flights sealed under the old key would
	// go unanswered once the peer retires it (TestRotationOldKeyRefusedAfterOverlap).
	if old, ok := f.peers[ap]; ok && old != nil && hmac.Equal(old.mac, k.mac) {
		return
	}
	f.peers[ap] = k
}

// tunnelAt counts a live tunnel in (delta 1) or out (-1). Its remote
// address, wherever the connection migrates, is a known source: a peer
// that restarted answers its packets with a stateless reset, whose
// connection ID is random, and its own IDs seen from there are live.
func (f *darkFilter) tunnelAt(c remoteAddresser, delta int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns[c] += delta; f.conns[c] <= 0 {
		delete(f.conns, c)
	}
	f.rebuildLocked(time.Now())
}

// rebuildLocked recomputes the live tunnels' remote addresses.
func (f *darkFilter) rebuildLocked(now time.Time) {
	clear(f.remotes)
	for c := range f.conns {
		if ap, ok := addrKey(c.RemoteAddr()); ok {
			f.remotes[ap] = struct{}{}
		}
	}
	f.rebuiltAt = now
}

// knownSource reports whether ap is a peer endpoint we dial or the
// remote address of a live tunnel. A miss re-reads the tunnels' addresses
// at most once per rebuildEvery, so a connection that migrated (NAT
// rebinding) is found at its new address.
func (f *darkFilter) knownSource(ap netip.AddrPort, now time.Time) bool {
	f.mu.RLock()
	_, remote := f.remotes[ap]
	known, stale := remote || f.peers[ap] != nil, now.Sub(f.rebuiltAt) >= rebuildEvery
	f.mu.RUnlock()
	if known || !stale {
		return known
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if now.Sub(f.rebuiltAt) >= rebuildEvery {
		f.rebuildLocked(now)
	}
	_, remote = f.remotes[ap]
	return remote
}

// addrKey keys a UDP address in the filter's maps (IPv4-mapped IPv6 as
// IPv4, as sockets report either).
func addrKey(addr net.Addr) (netip.AddrPort, bool) {
	u, ok := addr.(*net.UDPAddr)
	if !ok || u == nil {
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

// inbound decides a received datagram: its length once a trailer is
// stripped, or false to drop it. It runs on quic-go's read loop only.
//
// THREATS P9, tested by TestDarkObserverGetsNoAnswer (an observer's
// replays and rebuilt packets after the tunnel ended), TestDarkListenerSilent
// (a scanner) (the replay cache too).
func (f *darkFilter) inbound(b []byte, from net.Addr, now time.Time) (int, bool) {
	if len(b) == 0 {
		return 0, false
	}
	if b[0]&0x80 == 0 {
		return f.short(b, from, now)
	}
	ap, _ := addrKey(from)
	keys := f.current()
	if dcid, ok := longDCID(b); ok && len(dcid) == cidLen && keys.validCIDWith(dcid, &f.scratch) {
		// Long headers carry only handshakes: our ID passes while it is
		// young, from the server we dialed or a client whose sealed first
		// flight we took. Anything else (an observer's rebuilt Initial)
		// would make quic-go start a new connection and answer it.
		if keys.own.ours(dcid) && young(dcid, now) && (f.replay.handshaking(ap, now) || f.knownSource(ap, now)) {
			// A daemon of the previous release seals every long header to
			// an ID it cannot recognise as ours (16 bytes, not its 12):
			// strip a trailer that verifies, as QUIC cannot parse it. Only
			// handshake datagrams pay for the check, and unsealed ones fail
			// it at the timestamp (TestInteropPreviousRelease).
			if body, ok := f.openFirstFlight(b, now); ok {
				return len(body), true
			}
			return len(b), true
		}
		if f.dark.Load() {
			f.drop(dropDeadCID)
			return 0, false
		}
	}
	if body, ok := f.openFirstFlight(b, now); ok {
		if !f.dark.Load() {
			return len(body), true
		}
		if reason := f.replay.add(b[len(b)-darkTagSize:], b[len(b)-darkTrailer:len(b)-darkTagSize], ap, now); reason != "" {
			f.drop(reason)
			return 0, false
		}
		return len(body), true
	}
	if !f.dark.Load() {
		return len(b), true
	}
	f.drop(dropNoMAC)
	return 0, false
}

// short decides a short-header datagram (inbound's rules 1 to 4).
func (f *darkFilter) short(b []byte, from net.Addr, now time.Time) (int, bool) {
	if !f.dark.Load() {
		return len(b), true
	}
	var cid []byte
	if len(b) > cidLen {
		cid = b[1 : 1+cidLen]
		if f.recentlyPassed(cid, from, now) {
			return len(b), true // the common case: a live tunnel's ID and address, checked within the last second
		}
	}
	ap, _ := addrKey(from)
	keys := f.current()
	valid := cid != nil && keys.validCIDWith(cid, &f.scratch)
	if f.knownSource(ap, now) {
		// A live tunnel or a peer we dial: its packets, or its stateless
		// reset after it restarted (quic-go checks the token;
		// TestFaultKillImporterMidUpload, TestFaultStaleTunnelEnds).
		if valid && keys.own.ours(cid) {
			f.learn(cid, now)
			f.remember(cid, ap, now)
		}
		return len(b), true
	}
	if !valid {
		f.drop(dropUnknownCID)
		return 0, false
	}
	if keys.own.ours(cid) {
		if young(cid, now) && f.replay.handshaking(ap, now) {
			f.learn(cid, now) // a client whose handshake just ended, before its tunnel is counted
			return len(b), true
		}
		if seen, ok := f.live[[cidLen]byte(cid)]; ok && now.Sub(seen) < darkWindows.live && len(b) >= darkMinUnproven {
			return len(b), true // a live tunnel's peer at a new address (NAT rebinding)
		}
		f.drop(dropDeadCID)
		return 0, false
	}
	// Another incarnation's ID: a peer's stale tunnel to us before a restart,
	// or to a sibling instance behind a load balancer. It gets its
	// stateless reset for a while after we first see the ID, then nothing.
	first, ok := f.foreign[[cidLen]byte(cid)]
	if !ok && len(b) >= darkMinUnproven {
		if len(f.foreign) >= foreignMax {
			pruneOlder(f.foreign, now, darkWindows.foreign)
		}
		if len(f.foreign) < foreignMax {
			f.foreign[[cidLen]byte(cid)], first, ok = now, now, true
		}
	}
	if ok && now.Sub(first) < darkWindows.foreign && len(b) >= darkMinUnproven {
		return len(b), true
	}
	f.drop(dropDeadCID)
	return 0, false
}

// learn records that our connection ID cid came from a live tunnel's
// address at now. A full map keeps what it has (after dropping expired
// entries): the ID then passes only from known addresses.
func (f *darkFilter) learn(cid []byte, now time.Time) {
	k := [cidLen]byte(cid)
	if _, ok := f.live[k]; !ok && len(f.live) >= liveMax {
		pruneOlder(f.live, now, darkWindows.live)
		if len(f.live) >= liveMax {
			return
		}
	}
	f.live[k] = now
}

// pruneOlder deletes the entries of m older than d at now.
func pruneOlder(m map[[cidLen]byte]time.Time, now time.Time, d time.Duration) {
	for k, t := range m {
		if now.Sub(t) >= d {
			delete(m, k)
		}
	}
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
	if dcid, ok := longDCID(b); ok && k.issued(dcid) {
		return b // the peer issued this ID: it needs no MAC (a 12-byte one: the previous release)
	}
	return k.seal(b, now)
}

// darkConn is the UDP socket quic-go sees. It keeps quic-go's fast paths
// (batched receive, GSO, ECN): it is an OOBCapablePacketConn with its own
// ReadBatch, which reads through a udpbatch.Reader (UDP_GRO: coalesced
// reads split back into datagrams) and filters every datagram.
type darkConn struct {
	*net.UDPConn
	rd *udpbatch.Reader
	f  *darkFilter
}

// newDarkConn wraps c, enabling receive offload on it unless the kernel
// or DYAD_DISABLE_GRO refuses; st (nil for none) shows the socket's
// reads (udp_*).
func newDarkConn(c *net.UDPConn, f *darkFilter, st *Stats) *darkConn {
	rd, _ := udpbatch.Open(c)
	if st != nil {
		st.udp.Store(rd)
	}
	return &darkConn{UDPConn: c, rd: rd, f: f}
}

// ReadBatch reads datagrams and keeps those the filter passes. The filter
// sees every datagram, each segment of a coalesced read on its own
// (THREATS P9, tested by TestDarkFilterSeesEverySegment and
// TestGROGarbageSegmentsCounted). A dropped datagram's slot is filled by
// moving a later one's bytes into it: quic-go pairs each message slot
// with its own buffer, so slots cannot be swapped.
func (c *darkConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		n, err := c.rd.ReadBatch(ms, flags)
		if err != nil {
			return n, err
		}
		if n == 0 {
			continue
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
// here so that no path reads around the filter or gets a coalesced read).
func (c *darkConn) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	ms := []ipv4.Message{{Buffers: [][]byte{b}, OOB: oob}}
	if _, err = c.ReadBatch(ms, 0); err != nil {
		return 0, 0, 0, nil, err
	}
	addr, _ = ms[0].Addr.(*net.UDPAddr)
	return ms[0].N, ms[0].NN, ms[0].Flags, addr, nil
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
