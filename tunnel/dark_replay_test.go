package tunnel

import (
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// replayFilter is a dark filter whose drops are recorded by reason.
func replayFilter(t *testing.T) (*darkFilter, map[string]int) {
	drops := map[string]int{}
	f := newDarkFilter(newDarkKey(newIdentity(t).Public()), func(r string) { drops[r]++ })
	f.dark.Store(true)
	return f, drops
}

// flight is the i-th distinct first flight sealed for f at sent.
func flight(f *darkFilter, i int, sent time.Time) []byte {
	b := make([]byte, initialPacket)
	b[0], b[5] = 0xc0, 8
	binary.BigEndian.PutUint64(b[6:], uint64(i))
	return f.own.seal(b, sent)
}

// src is the i-th IPv4 source address.
func src(i int) *net.UDPAddr {
	return &net.UDPAddr{IP: net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)), Port: 40000}
}

// TestDarkReplayCacheFullRefuses: a cache full of flights still inside
// the window refuses new flights (dark_first_flight_cache_full) and still
// refuses every replay: nothing is forgotten to make room. THREATS P9.
func TestDarkReplayCacheFullRefuses(t *testing.T) {
	f, drops := replayFilter(t)
	now := time.Now()
	sources := replayMax / replayPerSource
	var kept [][]byte
	for i := range replayMax {
		fl := flight(f, i, now)
		if _, ok := f.inbound(fl, src(i%sources), now); !ok {
			t.Fatalf("flight %d of %d from source %d dropped: %v", i, replayMax, i%sources, drops)
		}
		if i%1000 == 0 {
			kept = append(kept, fl)
		}
	}
	if _, ok := f.inbound(flight(f, replayMax, now), src(sources), now); ok || drops[dropReplayFull] != 1 {
		t.Fatalf("a new flight from a new source into a full cache: passed %v, drops %v", ok, drops)
	}
	later := now.Add(darkMaxSkew - time.Second) // still inside the window: nothing may have been forgotten
	for i, fl := range kept {
		if _, ok := f.inbound(fl, src(sources+1), later); ok {
			t.Fatalf("replay %d passed the full cache", i)
		}
	}
	if drops[dropReplay] != len(kept) {
		t.Errorf("%d replays counted as %v", len(kept), drops)
	}
}

// TestDarkReplayCacheSourceQuota: one source (an IPv4 address, an IPv6
// /64) holds at most replayPerSource flights; beyond that it is refused
// (dark_first_flight_source_quota) while other sources still get in.
func TestDarkReplayCacheSourceQuota(t *testing.T) {
	for _, c := range []struct {
		name        string
		one, second func(i int) *net.UDPAddr
	}{
		{"IPv4 address, any port", func(i int) *net.UDPAddr { return &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1000 + i} },
			func(int) *net.UDPAddr { return &net.UDPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 1000} }},
		{"IPv6 /64", func(i int) *net.UDPAddr {
			a := netip.MustParseAddr("2001:db8:1:2::").As16()
			binary.BigEndian.PutUint64(a[8:], uint64(i)+1)
			return &net.UDPAddr{IP: a[:], Port: 1000}
		}, func(int) *net.UDPAddr { return &net.UDPAddr{IP: net.ParseIP("2001:db8:1:3::1"), Port: 1000} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, drops := replayFilter(t)
			now := time.Now()
			for i := range replayPerSource {
				if _, ok := f.inbound(flight(f, i, now), c.one(i), now); !ok {
					t.Fatalf("flight %d of the source's %d dropped: %v", i, replayPerSource, drops)
				}
			}
			if _, ok := f.inbound(flight(f, replayPerSource, now), c.one(replayPerSource), now); ok || drops[dropSourceQuota] != 1 {
				t.Fatalf("flight %d from one source: passed %v, drops %v", replayPerSource+1, ok, drops)
			}
			if _, ok := f.inbound(flight(f, replayPerSource+1, now), c.second(0), now); !ok {
				t.Fatalf("another source locked out by one source's quota: %v", drops)
			}
		})
	}
}

// TestDarkReplayCacheExpires: a flight's tag is kept while its timestamp
// is inside the skew window (a replay then is dark_first_flight_replayed)
// and forgotten after it (a replay then fails the timestamp check, and the
// source's quota and the handshake it vouched for are freed).
func TestDarkReplayCacheExpires(t *testing.T) {
	f, drops := replayFilter(t)
	sent := time.Unix(1_800_000_000, 0)
	from := src(1)
	ap, _ := addrKey(from)
	var fls [][]byte
	for i := range replayPerSource {
		fls = append(fls, flight(f, i, sent))
		if _, ok := f.inbound(fls[i], from, sent); !ok {
			t.Fatalf("flight %d dropped: %v", i, drops)
		}
	}
	edge := sent.Add(darkMaxSkew)
	if _, ok := f.inbound(fls[0], src(2), edge); ok || drops[dropReplay] != 1 {
		t.Fatalf("a replay at the window's edge: passed %v, drops %v", ok, drops)
	}
	if !f.replay.handshaking(ap, edge) {
		t.Error("a source whose flight is inside the window is not handshaking")
	}
	after := edge.Add(time.Second)
	if f.replay.handshaking(ap, after) {
		t.Error("a source whose only flights left the window is still handshaking")
	}
	if _, ok := f.inbound(fls[0], src(2), after); ok || drops[dropNoMAC] != 1 {
		t.Fatalf("a replay after the window: passed %v, drops %v", ok, drops)
	}
	if _, ok := f.inbound(flight(f, replayPerSource, after), from, after); !ok {
		t.Fatalf("the source's quota was not freed after the window: %v", drops)
	}
	if f.replay.n != 1 || len(f.replay.tags) != 1 || len(f.replay.perSrc) != 1 {
		t.Errorf("after the window the cache holds %d entries, %d tags, %d sources; want 1 each",
			f.replay.n, len(f.replay.tags), len(f.replay.perSrc))
	}
}

// TestDarkUnprovenMinimum: a short header from an address the filter
// cannot tie to a live tunnel passes on a valid connection ID alone only
// if it has at least darkMinUnproven (64) bytes, since quic-go may answer
// it with a stateless reset of up to 42 bytes (or a CONNECTION_CLOSE under
// 60): a live tunnel's ID after NAT rebinding, and another incarnation's ID
// (a stale tunnel to a restarted daemon). THREATS P9.
func TestDarkUnprovenMinimum(t *testing.T) {
	f, drops := replayFilter(t)
	now := time.Now()
	tunnelAddr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 4433}
	moved := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 5), Port: 5555}
	tun := fixedRemote{tunnelAddr}
	f.tunnelAt(tun, 1)
	live, _ := cidGenerator{f.own}.GenerateConnectionID()
	if _, ok := f.inbound(append([]byte{0x40}, live.Bytes()...), tunnelAddr, now); !ok {
		t.Fatal("the live tunnel's packet was dropped")
	}
	other := &darkKey{mac: f.own.mac, cid: f.own.cid, inc: f.own.inc}
	other.inc[0] ^= 1 // a previous incarnation of this daemon
	foreign, _ := cidGenerator{other}.GenerateConnectionID()
	later := now.Add(2 * rebuildEvery) // past the cache of recent checks
	for _, c := range []struct {
		name string
		cid  []byte
	}{{"live tunnel's ID from a new address", live.Bytes()}, {"another incarnation's ID", foreign.Bytes()}} {
		for _, size := range []int{cidLen + 2, 63, 64, 1200} { // FORMAT.md section 9: at least 64 bytes
			d := make([]byte, size)
			d[0] = 0x40
			copy(d[1:], c.cid)
			_, ok := f.inbound(d, moved, later)
			if want := size >= 64; ok != want {
				t.Errorf("%s, %d bytes: passed %v, want %v (drops %v)", c.name, size, ok, want, drops)
			}
		}
	}
	if drops[dropDeadCID] != 4 {
		t.Errorf("drops %v, want 4 %s", drops, dropDeadCID)
	}
}

// TestDarkReplayCacheMemory: a full cache, each entry from its own source
// (the worst case for the per-source counts), stays under the 1 MiB that
// FORMAT.md section 9 states.
func TestDarkReplayCacheMemory(t *testing.T) {
	now := time.Now()
	var ts [4]byte
	binary.BigEndian.PutUint32(ts[:], uint32(now.Unix()))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := newReplayCache()
	for i := range replayMax {
		var tag [darkTagSize]byte
		binary.BigEndian.PutUint64(tag[:], uint64(i))
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 8), byte(i), 15: 1})
		if r := c.add(tag[:], ts[:], netip.AddrPortFrom(a, 1), now); r != "" {
			t.Fatalf("entry %d: %s", i, r)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	used := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("a full replay cache, %d sources: %d bytes", replayMax, used)
	if used >= 1<<20 {
		t.Errorf("a full replay cache takes %d bytes, FORMAT.md says under 1 MiB", used)
	}
	runtime.KeepAlive(&c)
}
