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
// bytes, as against 2 x live.
package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// DefaultFloor is the heap goal dyad keeps at least: 64 MiB.
const DefaultFloor = 64 << 20

// heapMinimum is Go's smallest heap goal at GOGC=100 (the runtime's
// defaultHeapMinimum); the runtime scales it with GOGC.
const heapMinimum = 4 << 20

// Floor adjusts GOGC after every collection; Stop ends that.
type Floor struct {
	floor   uint64
	stopped atomic.Bool
	sample  []metrics.Sample
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
	if f == nil || f.stopped.Swap(true) {
		return
	}
	debug.SetGCPercent(100)
}

// arm schedules adjust after the next collection: the finalizer of an object
// nothing refers to runs once the collection that found it has ended.
func (f *Floor) arm() {
	runtime.SetFinalizer(new(tick), func(*tick) {
		if f.stopped.Load() {
			return
		}
		f.adjust()
		f.arm()
	})
}

// adjust sets GOGC so that the next heap goal is at least the floor, and 100
// once GOGC=100's goal reaches it. It runs on the finalizer goroutine only
// (and once in Start, before arm).
func (f *Floor) adjust() {
	metrics.Read(f.sample)
	var v [3]uint64
	for i, s := range f.sample {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	p := Percent(v[0], v[1]+v[2], f.floor)
	// Small changes are not worth a call: within 1/8 of the last one.
	if d := p - f.percent; d == 0 || (p != 100 && d < f.percent/8 && -d < f.percent/8) {
		return
	}
	f.percent = p
	debug.SetGCPercent(p)
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
