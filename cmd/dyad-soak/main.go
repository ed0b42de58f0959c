// Command dyad-soak runs two paired dyad daemons on loopback for a long
// time (`make soak`, 10 minutes by default) under constant mixed traffic in
// both directions, with a fault every 45-60 s: kill -9 and restart of one
// daemon, SIGTERM and restart, SIGHUP reload, upstream servers reset, a
// pause of the UDP path between the sites and a move of one end's address.
// Every transfer's bytes are checked with SHA-256 end to end; a transfer a
// fault cuts must end in an error, never in a clean short answer. Each daemon's goroutines, open
// descriptors and RSS are sampled from /statusz and compared at quiet
// points. It prints a summary and exits 1 on any corruption, leak or
// failed recovery.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
)

func main() {
	bin := flag.String("dyad", "", "the dyad binary to run; empty: build ./cmd/dyad (run from the module root) into the soak folder")
	duration := flag.Duration("duration", 10*time.Minute, "how long to run traffic (60s makes a smoke run)")
	every := flag.Duration("fault-every", 0, "time between faults; 0: 45-60 s, or duration/9 for runs under 5 minutes")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()), "seed of the traffic mix and fault timing")
	keep := flag.Bool("keep", false, "keep the soak folder (configurations, journals, logs) after a passing run too")
	flag.Parse()
	if *duration < 30*time.Second {
		fmt.Fprintln(os.Stderr, "dyad-soak: -duration must be at least 30s")
		os.Exit(2)
	}
	ok, err := run(*bin, *duration, *every, *seed, *keep)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak failed:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// soak is one run's parts.
type soak struct {
	sites   [2]*daemontest.Site
	flows   []*flow
	led     *ledger
	fig     *figures
	traffic *traffic
	gate    *gate
	inj     *injector
	start   time.Time
	quiets  []string // quiet points that did not get quiet
}

func run(bin string, duration, every time.Duration, seed uint64, keep bool) (bool, error) {
	root, err := os.MkdirTemp("", "dyad-soak-")
	if err != nil {
		return false, err
	}
	passed := false
	defer func() {
		if keep || !passed {
			fmt.Println("soak folder (configurations, journals, daemon logs):", root)
			return
		}
		os.RemoveAll(root)
	}()
	if bin == "" {
		if bin, err = daemontest.Build(".", root); err != nil {
			return false, err
		}
	}
	s, err := setup(bin, root)
	if err != nil {
		return false, err
	}
	defer func() {
		s.inj.relay.Close()
		for _, u := range s.inj.ups {
			u.stop()
		}
	}()
	for _, site := range s.sites {
		defer site.Kill() // after a clean Stop below this is a no-op
	}
	start := time.Now()
	s.start = start
	fmt.Printf("dyad soak: %v, seed %d, flows %s and %s, folder %s\n", duration, seed, s.flows[0].name, s.flows[1].name, root)
	for _, site := range s.sites {
		if err := site.StartReady(readyTimeout); err != nil {
			return false, err
		}
	}
	if err := s.connected(readyTimeout); err != nil {
		return false, err
	}

	ctx, stopTraffic := context.WithCancel(context.Background())
	defer stopTraffic()
	trafficDone := make(chan struct{})
	go func() { s.traffic.run(ctx, s.flows, seed); close(trafficDone) }()
	go s.fig.sampleEvery(ctx, 10*time.Second)

	s.faults(start, duration, every, rand.New(rand.NewPCG(seed, 0xfa17)))
	time.Sleep(time.Until(start.Add(duration)))
	s.quiet("final")
	s.gate.pause(0) // no new transfers while the workers wind down
	stopTraffic()
	s.gate.resume()
	<-trafficDone
	s.led.finish()

	var stopProblems []string
	for _, site := range s.sites {
		if err := site.Stop(time.Duration(site.Config.Tunnel.ShutdownTimeout) + readyTimeout); err != nil {
			stopProblems = append(stopProblems, fmt.Sprintf("%s: final SIGTERM: %v", site.Name, err))
		}
		os.WriteFile(filepath.Join(root, site.Name+".log"), []byte(site.Logs()), 0o644)
	}
	passed = s.summary(time.Since(start), stopProblems)
	return passed, nil
}

// faults runs the schedule from start: a warm-up, a baseline quiet
// point, then a quiet point and a fault every interval (every, or picked
// by rng) until a fault-free tail before the end.
func (s *soak) faults(start time.Time, duration, every time.Duration, rng *rand.Rand) {
	end := start.Add(duration)
	warmup := min(max(duration/10, 5*time.Second), 45*time.Second)
	interval := func() time.Duration {
		if every > 0 {
			return every
		}
		if duration >= 5*time.Minute {
			return 45*time.Second + time.Duration(rng.Int64N(int64(15*time.Second)))
		}
		return max(duration/9, 8*time.Second)
	}
	tail := max(duration/10, 15*time.Second)
	time.Sleep(time.Until(start.Add(warmup)))
	s.quiet("baseline")
	for next := time.Now().Add(interval()); ; next = next.Add(interval()) {
		if now := time.Now(); next.Before(now) {
			next = now // the last fault's recovery ran past its slot
		}
		if next.Add(tail).After(end) {
			return
		}
		time.Sleep(time.Until(next))
		s.quiet("before a fault")
		time.Sleep(2 * time.Second) // the fault hits transfers in flight
		f := s.inj.next()
		fmt.Printf("  %6s  fault %-2d %-44s %s\n", mmss(time.Since(start)), f.n, f.what, s.led.recovery(f))
	}
}

// connected waits until both daemons report their tunnel up.
func (s *soak) connected(timeout time.Duration) error {
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		up := 0
		for _, site := range s.sites {
			if st, err := site.Status(); err == nil && len(st.Peers) == 1 && st.Peers[0].Connected {
				up++
			}
		}
		if up == len(s.sites) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tunnel not up after %v", timeout)
		}
	}
}

// setup makes the two sites, the upstream servers of both flows and the
// soak's parts; nothing runs yet.
func setup(bin, root string) (*soak, error) {
	a, err := daemontest.NewSite(bin, root, "site-a")
	if err != nil {
		return nil, err
	}
	b, err := daemontest.NewSite(bin, root, "site-b")
	if err != nil {
		return nil, err
	}
	s := &soak{sites: [2]*daemontest.Site{a, b}, gate: &gate{}}
	s.flows = []*flow{{name: "A→B", importer: a.Name}, {name: "B→A", importer: b.Name}}
	s.led = newLedger([]string{s.flows[0].name, s.flows[1].name})
	s.fig = &figures{sites: s.sites[:]}
	s.traffic = &traffic{led: s.led, gate: s.gate}
	s.inj = &injector{led: s.led, sites: s.sites, spare: map[string]string{}, fwds: map[string]daemon.ForwardConfig{}}

	console := false
	for i, f := range s.flows {
		imp, exp := s.sites[i], s.sites[1-i]
		u, err := newUpstream(exp.Name, s.led)
		if err != nil {
			return nil, err
		}
		s.inj.ups = append(s.inj.ups, u)
		tag := strings.TrimPrefix(imp.Name, "site-") + strings.TrimPrefix(exp.Name, "site-")
		exp.Config.Services = append(exp.Config.Services,
			daemon.ServiceFile{Name: "http-" + tag, Upstream: u.httpAddr, Allow: []string{imp.Name}},
			daemon.ServiceFile{Name: "bulk-" + tag, Upstream: u.bulkAddr, Allow: []string{imp.Name}})
		if f.httpAddr, err = daemontest.FreeTCP(); err != nil {
			return nil, err
		}
		if f.bulkAddr, err = daemontest.FreeTCP(); err != nil {
			return nil, err
		}
		if s.inj.spare[imp.Name], err = daemontest.FreeTCP(); err != nil {
			return nil, err
		}
		fw := daemon.ForwardConfig{Listen: f.httpAddr, Peer: exp.Name, Service: "http-" + tag}
		s.inj.fwds[imp.Name] = fw
		imp.Config.Forwards = append(imp.Config.Forwards, fw,
			daemon.ForwardConfig{Listen: f.bulkAddr, Peer: exp.Name, Service: "bulk-" + tag})
		imp.Config.Log.Level = "info"
		imp.Config.Audit.Console = &console // the journal keeps the events; the log stays small
		imp.Config.Tunnel.ShutdownTimeout = daemon.Duration(5 * time.Second)
	}
	// A dials B through a relay that can hold the path.
	if s.inj.relay, err = daemontest.NewUDPRelay(b.Config.Listen); err != nil {
		return nil, err
	}
	a.Config.Peers = []daemon.PeerFile{b.Peer(false)}
	a.Config.Peers[0].Endpoint = s.inj.relay.Addr()
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	return s, nil
}

// quiet holds new transfers, waits (bounded) for the running ones and for
// every stream to close, samples both daemons and lets traffic go on.
func (s *soak) quiet(label string) {
	defer s.gate.resume()
	drained := s.gate.pause(60 * time.Second)
	s.traffic.closeIdle()
	idle := drained && s.fig.streamsIdle(10*time.Second)
	if !idle {
		s.quiets = append(s.quiets, fmt.Sprintf("%s at %s", label, time.Now().Format("15:04:05")))
	}
	time.Sleep(time.Second) // closed streams' goroutines finish
	s.fig.take(idle)
}
