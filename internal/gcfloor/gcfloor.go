// Package gcfloor keeps Go's garbage collector from running more often than
// a daemon needs when its live heap is small.
//
// With GOGC=100 the collector runs each time the heap doubles its live size.
// A daemon whose live heap is a few MiB but which allocates per request (the
// API guard: net/http's parsers and kin-openapi) then collects many times a
// second, and the collector's marking, assists and sweeping take a share of
// every request. gcfloor raises GOGC after each collection so that the heap
// goal is at least a floor; once GOGC=100's goal (about twice the live heap)
// reaches the floor, GOGC is back at 100 and the collector behaves exactly as
// Go's default does. The heap so holds at most about max(floor, 2 x live)
// bytes, as against 2 x live; for one cycle after the live heap grows fast,
// the runtime sets the goal with the GOGC chosen for the smaller heap
// before adjust lowers it.
package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// DefaultFloor is the heap goal dyad keeps at least: 64 MiB.
const DefaultFloor = 64 << 20

// heapMinimum is Go's smallest heap goal at GOGC=100 (the runtime's
// defaultHeapMinimum); the runtime scales it with GOGC.
const heapMinimum = 4 << 20

// Floor adjusts GOGC after every collection; Stop ends that.
type Floor struct {
	floor  uint64
	sample []metrics.Sample
	// mu orders adjust and Stop: an adjust that saw the floor running
	// sets GOGC before Stop sets it back to 100, never after.
	mu      sync.Mutex
	stopped bool
	percent int // the GOGC last set
}

// tick is an object whose finalizer runs once per collection; a pointer
// field keeps it out of the tiny allocator, which would share its block.
type tick struct {
	_ *int
	_ [16]byte
}

// Start keeps the heap goal at least floor bytes. It does nothing and returns
// nil when the GOGC environment variable is set: the operator's choice stands.
func Start(floor uint64) *Floor {
	if _, set := os.LookupEnv("GOGC"); set || floor == 0 {
		return nil
	}
	f := &Floor{floor: floor, percent: 100, sample: []metrics.Sample{
		{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}}
	f.adjust()
	f.arm()
	return f
}

// Stop sets GOGC back to 100 and adjusts it no more. Stop on nil is a no-op.
func (f *Floor) Stop() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.stopped {
		f.stopped = true
		debug.SetGCPercent(100)
	}
}

// arm schedules adjust after the next collection: the finalizer of an object
// nothing refers to runs once the collection that found it has ended.
func (f *Floor) arm() {
	runtime.SetFinalizer(new(tick), func(*tick) {
		if f.adjust() {
			f.arm()
		}
	})
}

// adjust sets GOGC so that the next heap goal is the floor, and 100 once
// GOGC=100's goal reaches it; false once Stop has run. It runs on the
// finalizer goroutine (and once in Start, before arm).
func (f *Floor) adjust() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return false
	}
	metrics.Read(f.sample)
	var v [3]uint64
	for i, s := range f.sample {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	if p := Percent(v[0], v[1]+v[2], f.floor); p != f.percent {
		f.percent = p
		debug.SetGCPercent(p) // no stop of the world; once per collection at most
	}
	return true
}

// Percent is the GOGC that makes the heap goal the floor for a live heap of
// live bytes and roots bytes of stacks and globals to scan. Go's goal is
// live + (live + roots) x GOGC/100, and at least 4 MiB x GOGC/100, so GOGC
// goes no higher than floor / 4 MiB x 100 (1,600 for 64 MiB), and is 100
// where GOGC=100's goal reaches the floor already.
func Percent(live, roots, floor uint64) int {
	most := floor * 100 / heapMinimum
	base := live + roots
	if live+base >= floor || most <= 100 {
		return 100
	}
	p := most
	if base > 0 {
		p = min((floor-live)*100/base, most)
	}
	return max(int(p), 100)
}
