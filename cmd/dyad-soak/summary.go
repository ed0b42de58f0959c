package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// summary prints the run's figures and verdict; it reports whether the
// soak passed.
func (s *soak) summary(elapsed time.Duration, problems []string) bool {
	l := s.led
	l.mu.Lock()
	defer l.mu.Unlock()
	ok := 0
	for _, n := range l.ok {
		ok += n
	}
	fmt.Printf("\nsummary after %v (flows %s, %s; traffic paused at %d quiet points)\n", elapsed.Round(time.Second), l.flows[0], l.flows[1], len(l.faults)+2)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "  transfers verified\t%d\t(HTTP requests %d, medium %d, large %d)\n", ok, l.ok["http"], l.ok["medium"], l.ok["large"])
	fmt.Fprintf(w, "  bytes verified\t%s\t(SHA-256 per transfer, end to end)\n", bytesString(l.bytes))
	fmt.Fprintf(w, "  interrupted by faults\t%d\t(errors seen by clients; %d clean cuts of a SIGKILLed daemon's own connections)\n", l.interrupted, l.kernelCuts)
	fmt.Fprintf(w, "  errors outside faults\t%d\t\n", l.unexplained)
	fmt.Fprintf(w, "  CORRUPTED\t%d\t(clean-but-short or wrong answers, client or server side)\n", l.corrupt)
	fmt.Fprintf(w, "  UDP datagrams A↔B\t%d\t(through the relay; %d dropped, in pauses)\n", s.inj.relay.Forwarded(), s.inj.relay.Dropped())
	w.Flush()
	if l.unexplained > 0 {
		problems = append(problems, fmt.Sprintf("%d transfers failed outside any fault", l.unexplained))
	}
	if l.corrupt > 0 {
		problems = append(problems, fmt.Sprintf("%d corrupted transfers", l.corrupt))
	}

	fmt.Println("\nfaults (restored: restart done, path or servers back; back: every flow verified a transfer started after restore)")
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  #\tfault\trestored\tback\tinterrupted\tresult")
	var maxBack, maxAfter time.Duration
	for _, f := range l.faults {
		back := l.lastBack(f)
		result := "ok"
		if f.problem != "" {
			result = "FAILED: " + f.problem
			problems = append(problems, fmt.Sprintf("fault %d (%s): %s", f.n, f.what, f.problem))
		}
		if !back.IsZero() {
			maxBack, maxAfter = max(maxBack, back.Sub(f.injected)), max(maxAfter, back.Sub(f.restored))
		}
		fmt.Fprintf(w, "  %d\t%s\t%s\t%s\t%d\t%s\n", f.n, f.what, offset(f.injected, f.restored), offset(f.injected, back), f.cut, result)
	}
	w.Flush()
	fmt.Printf("  max time to traffic back: %v after injection, %v after restore\n", maxBack.Round(time.Millisecond), maxAfter.Round(time.Millisecond))

	fmt.Printf("\nprocess figures per daemon process, quiet points (traffic paused, no stream open): first → last\n")
	fmt.Printf("  tolerance: goroutines +%d, fds +%d, RSS ≤ first×%.2f + %s; peak = largest of any sample, under load too\n", goroutineSlack, fdSlack, rssFactor, bytesString(rssSlack))
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  daemon\tpid\tquiet samples, from-to\tgoroutines\tfds\tRSS MiB\theap MiB\tpeak goroutines / RSS MiB\trecords rejected\tresult")
	for _, in := range s.fig.instances() {
		result := "ok"
		switch {
		case in.problem != "":
			result = "LEAK? " + in.problem
			problems = append(problems, fmt.Sprintf("%s pid %d: %s", in.site, in.pid, in.problem))
		case in.n < 2:
			result = "not compared (fewer than 2 quiet samples)"
		}
		if in.rejected > 0 {
			problems = append(problems, fmt.Sprintf("%s pid %d rejected records:%s", in.site, in.pid, in.reasons))
		}
		f, l := in.first.proc, in.last.proc
		span := "0"
		if in.n > 0 {
			span = fmt.Sprintf("%d, %s-%s", in.n, mmss(in.first.at.Sub(s.start)), mmss(in.last.at.Sub(s.start)))
		}
		fmt.Fprintf(w, "  %s\t%d\t%s\t%d → %d\t%d → %d\t%.1f → %.1f\t%.1f → %.1f\t%d / %.1f\t%d%s\t%s\n", in.site, in.pid, span,
			f.Goroutines, l.Goroutines, f.OpenFDs, l.OpenFDs, mib(f.RSSBytes), mib(l.RSSBytes), mib(f.HeapInuseBytes), mib(l.HeapInuseBytes),
			in.peak.proc.Goroutines, mib(in.peakRSS), in.rejected, in.reasons, result)
	}
	w.Flush()
	if len(s.quiets) > 0 {
		fmt.Printf("  quiet points that did not get quiet (no leak verdict from them): %s\n", strings.Join(s.quiets, ", "))
	}

	if len(l.notes) > 0 {
		fmt.Println("\nfirst findings:")
		for _, n := range l.notes {
			fmt.Println("  " + n)
		}
	}
	if len(problems) > 0 {
		fmt.Println("\nFAIL:")
		for _, p := range problems {
			fmt.Println("  " + p)
		}
		return false
	}
	fmt.Println("\nPASS: no corrupted byte, every fault recovered, goroutines, fds and RSS flat")
	return true
}

// recovery is one fault's line in the progress log.
func (l *ledger) recovery(f *fault) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := fmt.Sprintf("restored %s, back %s, %d interrupted", offset(f.injected, f.restored), offset(f.injected, l.lastBack(f)), f.cut)
	if f.problem != "" {
		s += ": FAILED: " + f.problem
	}
	return s
}

// lastBack is when the last flow carried traffic again; zero if one never
// did. l.mu must be held.
func (l *ledger) lastBack(f *fault) time.Time {
	if len(f.back) < len(l.flows) {
		return time.Time{}
	}
	var t time.Time
	for _, b := range f.back {
		if b.After(t) {
			t = b
		}
	}
	return t
}

func offset(from, to time.Time) string {
	if to.IsZero() {
		return "never"
	}
	return fmt.Sprintf("+%.2fs", to.Sub(from).Seconds())
}

// mmss prints d as minutes:seconds.
func mmss(d time.Duration) string {
	d = d.Round(time.Second)
	return fmt.Sprintf("%d:%02d", int(d.Minutes()), int(d.Seconds())%60)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// bytesString prints n in binary units.
func bytesString(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 2, 64) + " GiB"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
	}
	return strconv.FormatInt(n, 10) + " B"
}
