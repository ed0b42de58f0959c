package tunnel

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// replayCache remembers the tags of the sealed first flights the dark
// listener took, for as long as their timestamps stay inside the skew
// window, so that a recorded first flight replayed from any address gets
// no answer (FORMAT.md section 9; THREATS P9, tested by
// TestDarkObserverGetsNoAnswer and TestDarkReplayCache*). It belongs to
// the read loop: no lock.
//
// Memory is fixed: replayMax entries in a ring (oldest first) plus the
// index and per-source counts over them, about 110 bytes an entry (0.9 MB
// full, under 1 MiB: TestDarkReplayCacheMemory). When it is full of
// entries still inside the window, new first flights are refused
// (dropReplayFull) rather than an entry forgotten: forgetting would let
// that flight be replayed. One source (an IPv4 address, an IPv6 /64) holds
// at most replayPerSource entries (dropSourceQuota beyond), so filling the
// cache takes replayMax / replayPerSource = 32 sources that all hold the
// listener's public key.
type replayCache struct {
	ring   []replayEntry // replayMax slots; n entries from head, oldest first
	head   int
	n      int
	tags   map[[darkTagSize]byte]struct{}
	perSrc map[srcKey]int32
}

type replayEntry struct {
	tag  [darkTagSize]byte
	sent int64 // the flight's timestamp, Unix seconds
	src  srcKey
}

func newReplayCache() replayCache {
	return replayCache{ring: make([]replayEntry, replayMax), tags: map[[darkTagSize]byte]struct{}{}, perSrc: map[srcKey]int32{}}
}

// srcKey is a source as the quota counts it: an IPv4 address (in its
// IPv6-mapped form) or an IPv6 /64, 16 bytes with no pointer.
type srcKey [16]byte

// sourceKey is the unit a source's quota counts: an IPv4 address or an
// IPv6 /64 (one host's share under the usual assignment).
func sourceKey(ap netip.AddrPort) srcKey {
	a := ap.Addr().Unmap()
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.Addr().As16()
		}
	}
	return a.As16()
}

// expire forgets entries whose timestamp has left the skew window: a
// replay of them fails the timestamp check already. Entries leave in
// arrival order, so one far-future timestamp can hold later ones for up
// to twice the window; the fixed size bounds that.
func (c *replayCache) expire(now time.Time) {
	floor := now.Add(-darkMaxSkew).Unix()
	for c.n > 0 && c.ring[c.head].sent < floor {
		e := &c.ring[c.head]
		delete(c.tags, e.tag)
		if c.perSrc[e.src]--; c.perSrc[e.src] <= 0 {
			delete(c.perSrc, e.src)
		}
		*e = replayEntry{}
		c.head = (c.head + 1) % len(c.ring)
		c.n--
	}
}

// add records the tag of a first flight that opened, sent at the 4-byte
// timestamp ts from src. It returns "" to take the flight, or the drop
// reason: a replay, the source over its quota, or the cache full.
func (c *replayCache) add(tag, ts []byte, src netip.AddrPort, now time.Time) string {
	c.expire(now)
	k := [darkTagSize]byte(tag)
	if _, ok := c.tags[k]; ok {
		return dropReplay
	}
	s := sourceKey(src)
	if c.perSrc[s] >= replayPerSource {
		return dropSourceQuota
	}
	if c.n == len(c.ring) {
		return dropReplayFull
	}
	c.ring[(c.head+c.n)%len(c.ring)] = replayEntry{tag: k, sent: int64(binary.BigEndian.Uint32(ts)), src: s}
	c.n++
	c.tags[k] = struct{}{}
	c.perSrc[s]++
	return ""
}

// handshaking reports whether src (its IPv4 address or IPv6 /64) sent a
// first flight we took whose timestamp is still inside the skew window at
// now: a client in a handshake, whose later long headers carry our young
// connection ID. Entries expire here too, not only when a flight arrives
// (TestDarkReplayCacheExpires).
func (c *replayCache) handshaking(src netip.AddrPort, now time.Time) bool {
	if !src.IsValid() {
		return false
	}
	c.expire(now)
	return c.perSrc[sourceKey(src)] > 0
}
