package main

import (
	"fmt"
	"sync"
	"time"
)

// outcome is how one transfer ended, as its client saw it.
type outcome int

const (
	done     outcome = iota // every byte arrived, SHA-256 matches, clean end
	failed                  // an error: refused, reset, timeout
	cleanCut                // a clean EOF before every byte arrived
	mismatch                // the bytes, their hash or the framing are wrong
)

const (
	maxNotes = 20              // unexplained errors and corruptions kept for the summary
	grace    = 2 * time.Second // a fault's window stays open this long after traffic is back
)

// fault is one injected fault. A transfer that fails while the fault's
// window is open is "interrupted by fault"; the window opens at injected
// and closes grace after every flow carried a verified transfer started
// after restored (or when the next fault opens its own).
type fault struct {
	n          int
	kind       string // kill, term, hup, upstream, pause
	what       string // for the summary
	site       string // the daemon it hit; "" for upstream and path faults
	injected   time.Time
	restored   time.Time            // restart done, path back, servers back; zero until then
	back       map[string]time.Time // flow → end of its first verified transfer started after restored
	lastErr    map[string]string    // flow → its latest failure inside the window
	windowEnd  time.Time            // zero while open
	cut        int                  // transfers interrupted
	disruptive bool                 // false: the fault must not interrupt any transfer (reload, short pause)
	problem    string               // why the fault failed its check; "" when fine
}

// ledger counts every transfer against the faults. Its rule for a short
// answer: a clean EOF is an honest end only when the daemon holding that
// TCP connection was killed (the kernel then sends the FIN for it); any
// other clean-but-short answer, and any wrong byte, is corruption.
type ledger struct {
	flows []string

	mu          sync.Mutex // guards the following
	faults      []*fault
	ok          map[string]int // verified transfers by kind
	bytes       int64          // verified payload bytes
	interrupted int            // failures inside a fault's window
	kernelCuts  int            // clean cuts explained by a SIGKILLed endpoint (client or server side)
	unexplained int            // failures outside every fault's window
	corrupt     int            // clean-but-short or wrong answers, either side
	notes       []string
}

func newLedger(flows []string) *ledger {
	return &ledger{flows: flows, ok: map[string]int{}}
}

// record books one transfer of kind on flow that started at start and
// ended now. endpoint is the daemon the client was connected to.
func (l *ledger) record(flow, kind, endpoint string, start time.Time, out outcome, n int64, err error) {
	end := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	switch out {
	case done:
		l.ok[kind]++
		l.bytes += n
		if f := l.last(); f != nil && !f.restored.IsZero() && !start.Before(f.restored) {
			if _, seen := f.back[flow]; !seen {
				f.back[flow] = end
				if back := l.lastBack(f); !back.IsZero() {
					f.windowEnd = back.Add(grace)
				}
			}
		}
	case failed:
		if f := l.during(start, end); f != nil {
			f.cut++
			f.lastErr[flow] = kind + ": " + err.Error()
			l.interrupted++
			return
		}
		l.unexplained++
		l.note("error outside any fault: %s %s: %v", flow, kind, err)
	case cleanCut:
		if l.killed(endpoint, start, end) {
			l.kernelCuts++
			l.interrupted++
			if f := l.during(start, end); f != nil {
				f.cut++
			}
			return
		}
		l.corrupt++
		l.note("CORRUPTION (clean short answer): %s %s: %v", flow, kind, err)
	case mismatch:
		l.corrupt++
		l.note("CORRUPTION: %s %s: %v", flow, kind, err)
	}
}

// server books a finding of an upstream server, whose connection came
// from exporter's daemon: a clean cut (cut) is honest only if that daemon
// was killed meanwhile; anything else is corruption.
func (l *ledger) server(exporter string, start time.Time, what string, cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cut && l.killed(exporter, start, time.Now()) {
		l.kernelCuts++
		return
	}
	l.corrupt++
	l.note("CORRUPTION at the upstream behind %s: %s", exporter, what)
}

// killed reports whether site was SIGKILLed between start and end.
func (l *ledger) killed(site string, start, end time.Time) bool {
	for _, f := range l.faults {
		if f.kind == "kill" && f.site == site && !f.injected.Before(start) && !f.injected.After(end) {
			return true
		}
	}
	return false
}

// during returns the latest fault whose window overlaps [start, end].
func (l *ledger) during(start, end time.Time) *fault {
	for i := len(l.faults) - 1; i >= 0; i-- {
		f := l.faults[i]
		if !f.injected.After(end) && (f.windowEnd.IsZero() || !start.After(f.windowEnd)) {
			return f
		}
	}
	return nil
}

func (l *ledger) last() *fault {
	if len(l.faults) == 0 {
		return nil
	}
	return l.faults[len(l.faults)-1]
}

func (l *ledger) note(format string, args ...any) {
	if len(l.notes) < maxNotes {
		l.notes = append(l.notes, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
	}
}

// begin opens a fault's window; call it just before the fault happens.
func (l *ledger) begin(kind, what, site string, disruptive bool) *fault {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := &fault{n: len(l.faults) + 1, kind: kind, what: what, site: site, injected: time.Now(),
		back: map[string]time.Time{}, lastErr: map[string]string{}, disruptive: disruptive}
	l.faults = append(l.faults, f)
	return f
}

// restore marks the fault's cause gone (or failed to go, with problem).
func (l *ledger) restore(f *fault, problem string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f.restored = time.Now()
	if problem != "" && f.problem == "" {
		f.problem = problem
	}
}

// awaitBack waits up to timeout for every flow to carry a verified
// transfer started after the fault was restored (record then closes the
// fault's window, even after the timeout).
func (l *ledger) awaitBack(f *fault, timeout time.Duration) {
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		l.mu.Lock()
		back := !l.lastBack(f).IsZero()
		if !back && time.Now().After(deadline) {
			for _, fl := range l.flows {
				if _, ok := f.back[fl]; !ok && f.problem == "" {
					last := "none: its transfers hang"
					if e := f.lastErr[fl]; e != "" {
						last = e
					}
					f.problem = fmt.Sprintf("traffic not back on %s %v after restore (last error: %s)", fl, timeout, last)
				}
			}
		}
		l.mu.Unlock()
		if back || time.Now().After(deadline) {
			return
		}
	}
}

// finish checks the faults that must not interrupt transfers; call it
// after the last transfer.
func (l *ledger) finish() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.faults {
		if !f.disruptive && f.cut > 0 && f.problem == "" {
			f.problem = fmt.Sprintf("%s interrupted %d transfers", f.kind, f.cut)
		}
	}
}
