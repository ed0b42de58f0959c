// Command bench measures dyad side by side with real baselines in the same
// run, same topology and separate processes, on loopback or across an
// emulated WAN link between two network namespaces (linkemu.go): load
// client → importing side → link → exporting side → target server. See
// README.md.
//
//	go run ./bench -quick            smoke run, about a minute (CI)
//	go run ./bench                   full run (bench/README.md)
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dyad-tunnel/dyad/tunnel"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "relay-in", "relay-out", "serve", "linkemu":
			f := map[string]func([]string) error{"relay-in": relayIn, "relay-out": relayOut, "serve": serve, "linkemu": runEmulator}[os.Args[1]]
			if err := f(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, os.Args[1]+":", err)
				os.Exit(1)
			}
			return
		}
	}
	quick := flag.Bool("quick", false, "smoke mode: every system and scenario, briefly, one repetition")
	dyadBin := flag.String("dyad", "bin/dyad", "the dyad binary")
	baseBin := flag.String("dyad-base", "", "a second dyad build (e.g. main's) run beside -dyad as the system dyad-base, for A/B in the same run")
	out := flag.String("out", "bench/out", "folder for results.json, report.md and the charts")
	reps := flag.Int("reps", 3, "repetitions per cell in full mode (systems interleaved)")
	only := flag.String("only", "", "run only the scenario groups whose name contains this (bulk, rr, churn, idle, setup, fallback, impaired, api; loss0.1%, reorder... for one emulated link)")
	systems := flag.String("systems", "", "run only these systems, comma-separated (e.g. dyad-tcp,stunnel); all when empty")
	flag.Parse()
	onlySystems = *systems
	if err := run(*quick, *dyadBin, *baseBin, *out, *reps, *only); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// onlySystems is -systems: the systems to run, comma-separated; empty runs
// all.
var onlySystems string

// plan sets the size of each scenario.
type plan struct {
	reps       int
	bulkDur    time.Duration
	rrDur      time.Duration
	churnDur   time.Duration
	churnMin   int // churn runs until churnDur has passed and churnMin connections are done
	idleConns  int
	impairDur  time.Duration // each emulated-link cell
	impairWarm time.Duration // the discarded transfer before each emulated-link bulk cell
	setupReps  int
	impairment []linkScenario
	// apiReps is the API guard group's repetitions: its ratios compare
	// close numbers, so the full run takes more of them than the rest.
	apiReps int
	// settle waits for a quiet machine before the API guard group.
	settle bool
}

// idleConnsFull is the full run's idle target; dyad holds at most
// dyadStreamCeiling (idleTarget).
const idleConnsFull = 10000

// churnMin is more new connections than dyad's default stream bucket
// (burst 1000, 500 a second) admits in the time churn takes here, in both
// modes: a bench that ran with the default limits fails, quick mode (CI)
// included.
const churnMin = 3000

func makePlan(quick bool, reps int) plan {
	impaired := linkScenarios()
	if quick {
		// idle as many as dyad holds in full mode: beyond the default
		// max_streams and max_connections (1024), as the full run.
		return plan{reps: 1, bulkDur: 300 * time.Millisecond, rrDur: 300 * time.Millisecond, churnDur: 300 * time.Millisecond,
			churnMin: churnMin, idleConns: tunnel.MaxStreamsCap, impairDur: 300 * time.Millisecond, impairWarm: 300 * time.Millisecond, setupReps: 1, impairment: impaired,
			apiReps: 1}
	}
	return plan{reps: max(reps, 3), bulkDur: 2 * time.Second, rrDur: 2 * time.Second, churnDur: time.Second,
		churnMin: churnMin, idleConns: idleConnsFull, impairDur: 2 * time.Second, impairWarm: time.Second, setupReps: 3, impairment: impaired,
		apiReps: max(reps, 5), settle: true}
}

// idleTarget is how many connections idle holds on s: dyad carries a
// peer's streams on tunnel.DefaultConnections QUIC connections (dyad-conn1
// on one), each of which holds at most tunnel.MaxStreamsCap (10,000 fit
// from 3 on); stunnel needs two descriptors per connection.
func idleTarget(s system, want int) int {
	switch s.name() {
	case sysDyad, sysNoGRO, sysTCP, sysBase:
		return min(want, dyadStreamCeiling)
	case sysConn1:
		return min(want, tunnel.MaxStreamsCap)
	case "stunnel":
		return min(want, stunnelIdleMax)
	}
	return want
}

func run(quick bool, dyadBin, baseBin, outDir string, reps int, only string) error {
	want := func(group string) bool { return only == "" || strings.Contains(group, only) }
	raiseFileLimit()
	p := makePlan(quick, reps)
	if _, err := os.Stat(dyadBin); err != nil {
		return fmt.Errorf("%s: %w (run `make build` first)", dyadBin, err)
	}
	stunnelBin, _ := exec.LookPath("stunnel4")
	if stunnelBin == "" {
		stunnelBin, _ = exec.LookPath("stunnel")
	}
	srv, err := startServer(nil)
	if err != nil {
		return err
	}
	defer srv.close()
	work, err := os.MkdirTemp("", "dyad-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	res := &results{Mode: map[bool]string{true: "quick", false: "full"}[quick], Date: time.Now().UTC().Format(time.RFC3339),
		Machine: describeMachine(stunnelBin), DyadLimits: configuredLimits()}
	res.Notes = append(res.Notes, limitsNote(p.idleConns))
	if stunnelBin == "" {
		res.Notes = append(res.Notes, "stunnel was not measured: stunnel4 is not installed (`make bench-deps` installs it as root).")
	}
	newSystems := func() []system {
		s := []system{&direct{}, &quicRelay{}, &dyadSystem{bin: dyadBin}, &dyadSystem{bin: dyadBin, noGRO: true},
			&dyadSystem{bin: dyadBin, conn1: true}, &dyadSystem{bin: dyadBin, tcp: true}}
		if baseBin != "" {
			s = append(s, &dyadSystem{bin: baseBin, base: true})
		}
		if stunnelBin != "" {
			s = append(s, &stunnelSystem{bin: stunnelBin})
		}
		return slices.DeleteFunc(s, func(s system) bool {
			return onlySystems != "" && !slices.Contains(strings.Split(onlySystems, ","), s.name())
		})
	}

	start := time.Now()
	// Steady-state scenarios share one instance of each system.
	systems := newSystems()
	for i, s := range systems {
		if err := s.start(fmt.Sprintf("%s/%d", work, i), srv.addr(), nil); err != nil {
			stopAll(systems)
			return fmt.Errorf("%s: start: %w", s.name(), err)
		}
	}
	type scenario struct {
		name string
		run  func(system) (metrics, error)
	}
	scenarios := []scenario{
		{"bulk-down-1", func(s system) (metrics, error) { return bulk(s.entry(), false, 1, p.bulkDur, s.pids()) }},
		{"bulk-up-1", func(s system) (metrics, error) { return bulk(s.entry(), true, 1, p.bulkDur, s.pids()) }},
		{"bulk-down-8", func(s system) (metrics, error) { return bulk(s.entry(), false, 8, p.bulkDur, s.pids()) }},
		{"bulk-up-8", func(s system) (metrics, error) { return bulk(s.entry(), true, 8, p.bulkDur, s.pids()) }},
		{"rr-1", func(s system) (metrics, error) { return requestResponse(s.entry(), 1, p.rrDur) }},
		{"rr-64", func(s system) (metrics, error) { return requestResponse(s.entry(), 64, p.rrDur) }},
		{"churn", func(s system) (metrics, error) { return churn(s.entry(), 8, p.churnDur, p.churnMin) }},
	}
	for _, sc := range scenarios {
		if !want(sc.name) {
			continue
		}
		for rep := range p.reps {
			for _, s := range systems { // interleaved: A B C A B C
				if os.Getenv("BENCH_TRACE") != "" {
					fmt.Fprintf(os.Stderr, "bench: %s on %s\n", sc.name, s.name())
				}
				m, err := sc.run(s)
				if err != nil {
					stopAll(systems)
					return fmt.Errorf("%s on %s (repetition %d): %w", sc.name, s.name(), rep+1, err)
				}
				res.add(sc.name, s.name(), m)
			}
		}
		fmt.Fprintf(os.Stderr, "bench: %-12s done (%v)\n", sc.name, time.Since(start).Round(time.Second))
	}
	for _, s := range systems {
		if s.name() == "direct" || !want("idle") {
			continue
		}
		n := idleTarget(s, p.idleConns)
		if s.name() == "stunnel" && n < p.idleConns {
			res.Notes = append(res.Notes, fmt.Sprintf("idle: stunnel held %d connections, not %d: each stunnel process needs two descriptors per connection and this machine's open-file hard limit is %d.", n, p.idleConns, fileLimit()))
		}
		m, err := idle(s.entry(), n, s.pids())
		if err != nil {
			stopAll(systems)
			return fmt.Errorf("idle on %s: %w", s.name(), err)
		}
		res.add("idle", s.name(), m)
	}
	fmt.Fprintf(os.Stderr, "bench: %-12s done (%v)\n", "idle", time.Since(start).Round(time.Second))
	stopAll(systems)

	// The API guard's cost: its own dyad pair, plain and guarded services
	// side by side (apiguard.go).
	if err := runAPIScenarios(res, p, dyadBin, work, want); err != nil {
		return err
	}

	// Setup: a fresh instance each time, from start to the first byte.
	for rep := range p.setupReps {
		for i, s := range newSystems() {
			if s.name() == "direct" || !want("setup") {
				continue
			}
			dir := fmt.Sprintf("%s/setup-%d-%d", work, rep, i)
			if p, ok := s.(interface{ prepare(string) error }); ok {
				if err := p.prepare(dir); err != nil {
					return err
				}
			}
			t0 := time.Now()
			err := s.start(dir, srv.addr(), nil)
			if err == nil {
				err = firstByte(s.entry(), 10*time.Second)
			}
			d := time.Since(t0)
			s.stop()
			if err != nil {
				return fmt.Errorf("setup of %s: %w", s.name(), err)
			}
			res.add("setup", s.name(), metrics{"setup_ms": float64(d.Microseconds()) / 1000})
		}
	}
	fmt.Fprintf(os.Stderr, "bench: %-12s done (%v)\n", "setup", time.Since(start).Round(time.Second))
	if want(scenarioFallback) && (onlySystems == "" || slices.Contains(strings.Split(onlySystems, ","), sysAutoNoUDP)) {
		if err := runFallbackSetup(res, p, dyadBin, work, srv.addr()); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "bench: %-12s done (%v)\n", scenarioFallback, time.Since(start).Round(time.Second))
	}

	// Emulated link: fresh instances in two namespaces joined by the
	// link emulator, one emulator per link model.
	if err := runLinkScenarios(res, p, newSystems, work, want); err != nil {
		return err
	}
	if n := linkNote(res.Link, p.impairment); n != "" {
		res.Notes = append(res.Notes, n)
	}
	fmt.Fprintf(os.Stderr, "bench: %-12s done (%v)\n", "impaired", time.Since(start).Round(time.Second))
	res.Seconds = time.Since(start).Seconds()
	res.finish()
	apiNotes(res)
	return res.write(outDir, os.Stdout)
}

func stopAll(systems []system) {
	for _, s := range systems {
		s.stop()
	}
}

// raiseFileLimit lifts the open-file limit for the idle scenario's ten
// thousand connections (and the daemons this process starts inherit it).
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return
	}
	want := uint64(1 << 16)
	if l.Max < want {
		l.Max = want // works as root; otherwise the soft limit below still rises to the hard one
	}
	l.Cur = min(want, l.Max)
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// stunnelIdleMax keeps stunnel's two descriptors per connection under a
// 20 000 open-file hard limit.
const stunnelIdleMax = 9000

func fileLimit() uint64 {
	var l syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	return l.Max
}

func describeMachine(stunnelBin string) machine {
	m := machine{CPU: cpuModel(), Cores: runtime.NumCPU(), Kernel: kernel(), Go: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/quic-go/quic-go" {
				m.QuicGo = d.Version
			}
		}
	}
	m.Stunnel = "not installed"
	if stunnelBin != "" {
		out, _ := exec.Command(stunnelBin, "-version").CombinedOutput()
		m.Stunnel = stunnelVersion(string(out))
	}
	return m
}

// stunnelVersion picks the "stunnel 5.68 on …" line out of -version's output,
// which starts with unrelated start-up chatter.
func stunnelVersion(out string) string {
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "stunnel ") {
			return strings.TrimSpace(line)
		}
	}
	return strings.TrimSpace(out)
}

// scenarioFallback is setup with transport auto where UDP is dropped: from
// the start of both daemons to the first byte through the TCP fallback
// (issue 21's target: 3 s, with fallback_after's default of 2 s).
const scenarioFallback = "setup-fallback"

// runFallbackSetup measures scenarioFallback on fresh dyad-auto-noudp
// pairs, p.setupReps times.
func runFallbackSetup(res *results, p plan, dyadBin, work, target string) error {
	var dropped int64
	for rep := range p.setupReps {
		s := &dyadSystem{bin: dyadBin, noUDP: true}
		dir := fmt.Sprintf("%s/%s-%d", work, scenarioFallback, rep)
		if err := s.prepare(dir); err != nil {
			return err
		}
		t0 := time.Now()
		err := s.start(dir, target, nil)
		if err == nil {
			err = firstByte(s.entry(), 10*time.Second)
		}
		d := time.Since(t0)
		s.stop()
		if err != nil {
			return fmt.Errorf("%s of %s: %w", scenarioFallback, s.name(), err)
		}
		if s.hole.dropped.Load() == 0 {
			return fmt.Errorf("%s: no UDP datagram reached the blackhole: site-a did not try QUIC first", scenarioFallback)
		}
		dropped += s.hole.dropped.Load()
		res.add(scenarioFallback, s.name(), metrics{"setup_ms": float64(d.Microseconds()) / 1000})
	}
	res.Notes = append(res.Notes, fmt.Sprintf("%s: %s is dyad with transport auto (fallback_after 2 s, the default) dialing an endpoint where "+
		"a socket of the bench drops every UDP datagram without an answer (%d dropped over %d runs) and site-b's tcp_listen answers on TCP; "+
		"the figure is the time from starting both daemons to the first byte through the TCP fallback.", scenarioFallback, sysAutoNoUDP, dropped, p.setupReps))
	return nil
}
