package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live, roots, floor uint64
		want               int
	}{
		{0, 0, 64 << 20, 1600},
		{1 << 10, 0, 64 << 20, 1600},
		{2 << 20, 1 << 20, 64 << 20, 1600},
		{4 << 20, 0, 64 << 20, 1500},
		{1 << 20, 0, 4 << 20, 100},
		{4 << 20, 4 << 20, 64 << 20, 750},
		{16 << 20, 0, 64 << 20, 300},
		{30 << 20, 4 << 20, 64 << 20, 100},
		{32 << 20, 0, 64 << 20, 100},
		{500 << 20, 1 << 20, 64 << 20, 100},
	} {
		if got := Percent(c.live, c.roots, c.floor); got != c.want {
			t.Errorf("Percent(%d, %d, %d) = %d, want %d", c.live, c.roots, c.floor, got, c.want)
		}
	}
}

var sink []byte

// churn allocates n bytes of garbage in 64 KiB pieces and returns how many
// collections ran meanwhile.
func churn(n int) uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	before := s[0].Value.Uint64()
	for i := 0; i < n>>16; i++ {
		sink = make([]byte, 64<<10)
	}
	metrics.Read(s)
	return s[0].Value.Uint64() - before
}

// settle runs collections, giving the finalizer goroutine time to adjust,
// until GOGC is what ok wants (false after 2 s).
func settle(f *Floor, ok func(int) bool) bool {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
		if ok(f.currentPercent()) {
			return true
		}
	}
	return false
}

// unsetGOGC removes GOGC from the environment for the test.
func unsetGOGC(t *testing.T) {
	t.Helper()
	t.Setenv("GOGC", "") // restores the variable after the test
	os.Unsetenv("GOGC")
}

// currentPercent reads the runtime's GOGC without changing it.
func (f *Floor) currentPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// TestFloorFewerCollections: with the small live heap of a test binary, 256
// MiB of garbage costs dozens of collections at GOGC=100 and a handful with a
// 64 MiB floor; the heap goal is then at least the floor.
func TestFloorFewerCollections(t *testing.T) {
	unsetGOGC(t)
	debug.SetGCPercent(100)
	runtime.GC()
	runtime.GC() // a quiet cycle: live bytes without the last test's churn
	plain := churn(256 << 20)

	f := Start(64 << 20)
	if f == nil {
		t.Fatal("Start returned nil with GOGC unset")
	}
	defer f.Stop()
	runtime.GC()
	if !settle(f, func(p int) bool { return p > 100 }) {
		t.Fatalf("GOGC %d with a small live heap, want above 100", f.currentPercent())
	}
	floored := churn(256 << 20)
	t.Logf("collections for 256 MiB of garbage: %d at GOGC=100, %d with a 64 MiB floor", plain, floored)
	// 256 MiB through a 64 MiB goal: about four collections. At GOGC=100
	// (a 4 MiB goal for a test binary's live heap) it is dozens, fewer when
	// a cycle marks much of the churn as live: logged, not asserted.
	if floored < 1 || floored > 8 {
		t.Errorf("%d collections with a 64 MiB floor, want 1 to 8 (%d without it)", floored, plain)
	}
	// The goal right after the churn may be off the floor either way for a
	// cycle: a cycle that counted churn as live (Go marks what is allocated
	// during marking) sets GOGC for a larger heap than the next one finds
	// (the package doc's one-cycle lag). After quiet cycles, each followed
	// by adjust, it is the floor.
	g := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	var goal uint64
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
		metrics.Read(g)
		if goal = g[0].Value.Uint64(); goal >= 60<<20 {
			break
		}
	}
	if goal < 60<<20 {
		t.Errorf("heap goal %d bytes after quiet cycles, want at least the 64 MiB floor", goal)
	}
}

// TestFloorLargeHeapDefault: a live heap over half the floor collects at
// GOGC=100, as without gcfloor; Stop leaves GOGC at 100.
func TestFloorLargeHeapDefault(t *testing.T) {
	unsetGOGC(t)
	f := Start(64 << 20)
	if f == nil {
		t.Fatal("Start returned nil with GOGC unset")
	}
	defer f.Stop()
	if !settle(f, func(p int) bool { return p > 100 }) {
		t.Fatalf("GOGC %d with a small live heap, want above 100", f.currentPercent())
	}
	live := make([][]byte, 40)
	for i := range live {
		live[i] = make([]byte, 1<<20)
	}
	if !settle(f, func(p int) bool { return p == 100 }) {
		t.Errorf("GOGC %d with 40 MiB live and a 64 MiB floor, want 100", f.currentPercent())
	}
	runtime.KeepAlive(live)
	live = nil
	f.Stop()
	if p := f.currentPercent(); p != 100 {
		t.Errorf("GOGC %d after Stop, want 100", p)
	}
}

// TestFloorRespectsGOGC: an operator's GOGC turns gcfloor off.
func TestFloorRespectsGOGC(t *testing.T) {
	t.Setenv("GOGC", "200")
	if f := Start(64 << 20); f != nil {
		f.Stop()
		t.Fatal("Start adjusted GOGC although the environment sets it")
	}
}
