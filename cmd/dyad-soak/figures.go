package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
)

// Leak tolerances, per daemon process: its last quiet sample against its
// first. Goroutines and descriptors must come back to the baseline (the
// slack covers a reconnecting tunnel's handful); RSS may wander with the
// Go heap's pacing but must not trend upward.
const (
	goroutineSlack = 10
	fdSlack        = 5
	rssFactor      = 1.25
	rssSlack       = 16 << 20
)

// sample is one /statusz reading of a daemon.
type sample struct {
	at       time.Time
	site     string
	quiet    bool // taken with traffic paused and no stream open
	proc     daemon.ProcessStatus
	rejected map[string]uint64 // records_rejected.* counters, by reason
}

// figures keeps the samples of both daemons.
type figures struct {
	sites []*daemontest.Site

	mu      sync.Mutex // guards samples
	samples []sample
}

// take reads every site's /statusz once.
func (fg *figures) take(quiet bool) {
	for _, s := range fg.sites {
		st, err := s.Status()
		if err != nil || st.Process.PID == 0 {
			continue // down between faults: nothing to sample
		}
		rej := map[string]uint64{}
		for k, v := range st.Counters {
			if reason, ok := strings.CutPrefix(k, "records_rejected."); ok {
				rej[reason] = v
			}
		}
		fg.mu.Lock()
		fg.samples = append(fg.samples, sample{at: time.Now(), site: s.Name, quiet: quiet, proc: st.Process, rejected: rej})
		fg.mu.Unlock()
	}
}

// sampleEvery takes a sample under load every interval until ctx ends.
func (fg *figures) sampleEvery(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fg.take(false)
		}
	}
}

// streamsIdle waits up to timeout until no daemon has a stream open (the
// dyad_streams_active gauges of /metrics sum to zero).
func (fg *figures) streamsIdle(timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		open := 0.0
		for _, s := range fg.sites {
			n, err := activeStreams(s.Config.Admin)
			if err != nil {
				open = -1
				break
			}
			open += n
		}
		if open == 0 {
			return true
		}
	}
	return false
}

var adminClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

func activeStreams(admin string) (float64, error) {
	resp, err := adminClient.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "dyad_streams_active") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("metrics line %q: %w", line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

// instance is one daemon process's quiet samples and its verdict.
type instance struct {
	site        string
	pid         int
	first, last sample
	n           int    // quiet samples
	peak        sample // the load sample with the most goroutines
	peakRSS     int64  // largest RSS of any sample
	problem     string // "" when within tolerance
	rejected    uint64 // records rejected, all reasons, at its last sample
	reasons     string // those counters by reason
}

// instances groups the samples by process, in order of first appearance,
// and checks each process's last quiet sample against its first.
func (fg *figures) instances() []*instance {
	fg.mu.Lock()
	defer fg.mu.Unlock()
	var out []*instance
	byPID := map[int]*instance{}
	for _, s := range fg.samples {
		in := byPID[s.proc.PID]
		if in == nil {
			in = &instance{site: s.site, pid: s.proc.PID}
			byPID[s.proc.PID] = in
			out = append(out, in)
		}
		if s.proc.Goroutines > in.peak.proc.Goroutines {
			in.peak = s
		}
		in.peakRSS = max(in.peakRSS, s.proc.RSSBytes)
		in.rejected, in.reasons = 0, ""
		for k, v := range s.rejected {
			in.rejected += v
			in.reasons += fmt.Sprintf(" %s=%d", k, v)
		}
		if !s.quiet {
			continue
		}
		if in.n == 0 {
			in.first = s
		}
		in.last = s
		in.n++
	}
	for _, in := range out {
		if in.n < 2 {
			continue
		}
		f, l := in.first.proc, in.last.proc
		var bad []string
		if l.Goroutines > f.Goroutines+goroutineSlack {
			bad = append(bad, fmt.Sprintf("goroutines %d → %d", f.Goroutines, l.Goroutines))
		}
		if l.OpenFDs > f.OpenFDs+fdSlack {
			bad = append(bad, fmt.Sprintf("fds %d → %d", f.OpenFDs, l.OpenFDs))
		}
		if float64(l.RSSBytes) > float64(f.RSSBytes)*rssFactor+rssSlack {
			bad = append(bad, fmt.Sprintf("RSS %s → %s", bytesString(f.RSSBytes), bytesString(l.RSSBytes)))
		}
		in.problem = strings.Join(bad, ", ")
	}
	return out
}
