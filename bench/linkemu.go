package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dyad-tunnel/dyad/bench/linkemu"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
)

// The emulated WAN link (bench/linkemu): the importing side and the load
// client run in one network namespace, the exporting side and the target
// server in another, and every packet between them crosses the emulator, a
// child process of this binary ("linkemu") in the bench's own namespace.
// TCP and QUIC systems therefore cross the same link, loss included.

// linkPrefix and the bench's process ID name its namespaces (dyb1234-imp,
// dyb1234-exp) and TUN devices, so that two runs never share them; a run
// deletes what runs that no longer exist left behind.
const linkPrefix = "dyb"

// linkRateMbps is the emulated link's rate: low enough that the emulator
// (a few percent of a core at this rate; the report shows it) never limits
// a system on two shared cores, high enough that at 40 ms RTT a lossless
// link needs a congestion window of ~1 MB.
const linkRateMbps = 200

// linkScenario is one emulated link and what runs across it.
type linkScenario struct {
	Name  string        `json:"name"` // the scenario names' suffix: loss0.1%, reorder
	Model linkemu.Model `json:"model"`
	bulk8 bool          // also bulk-down-8 (the lossy links)
}

// linkScenarios are 40 ms RTT at 0%, 0.1% and 1% loss with order-keeping
// jitter, and one lossless link whose jitter reorders.
func linkScenarios() []linkScenario {
	m := linkemu.Model{Delay: 20 * time.Millisecond, Jitter: time.Millisecond, RateMbps: linkRateMbps}
	var out []linkScenario
	for _, loss := range []float64{0, 0.001, 0.01} {
		l := m
		l.Loss = loss
		out = append(out, linkScenario{Name: fmt.Sprintf("loss%g%%", loss*100), Model: l, bulk8: loss > 0})
	}
	r := m
	r.Reorder = true
	return append(out, linkScenario{Name: "reorder", Model: r})
}

// linkRecord is what results.json says about the emulated link.
type linkRecord struct {
	// Skipped says why the emulated scenarios did not run; empty when
	// they did.
	Skipped string `json:"skipped,omitempty"`
	// TCPCongestionControl is the kernel's, read in each namespace (the
	// sender's decides): "bbr", or "bbr / cubic" when they differ.
	TCPCongestionControl string `json:"tcp_congestion_control,omitempty"`
	// QUICCongestionControl is quic-go's (it has one).
	QUICCongestionControl string `json:"quic_congestion_control"`
	// WarmupSeconds is the discarded download before each bulk cell.
	WarmupSeconds float64   `json:"warmup_s"`
	Runs          []linkRun `json:"runs,omitempty"`
}

// linkRun is one emulator process: its model and counts.
type linkRun struct {
	linkScenario
	// Counters per direction: importing → exporting (client to server)
	// and back.
	Up   linkemu.Counters `json:"import_to_export"`
	Down linkemu.Counters `json:"export_to_import"`
	// CPUSeconds is the emulator process's user+system CPU over its life.
	CPUSeconds float64 `json:"emulator_cpu_s"`
	Seconds    float64 `json:"seconds"`
}

// quicCC is quic-go v0.65's congestion control: NewReno-style CUBIC, no BBR.
const quicCC = "CUBIC/Reno (quic-go)"

// placement says where a system's two sides run and how the importing side
// reaches the exporting one. A nil placement is loopback in the bench's
// own namespace.
type placement struct {
	importNS, exportNS     string
	importHost, exportHost string // each side's end of the emulated link
	topo                   linkemu.Topology
}

// ns is the namespace of one side.
func (p *placement) ns(exportSide bool) string {
	switch {
	case p == nil:
		return ""
	case exportSide:
		return p.exportNS
	}
	return p.importNS
}

// argv returns a command line that runs argv on one side.
func (p *placement) argv(exportSide bool, argv ...string) []string {
	return linkemu.Command(p.ns(exportSide), argv...)
}

// dial connects to addr from one side.
func (p *placement) dial(exportSide bool, addr string) (net.Conn, error) {
	return linkemu.DialTimeout(p.ns(exportSide), "tcp", addr, 5*time.Second)
}

// host is the address the exporting side listens on for the importing
// side: loopback, or its end of the emulated link.
func (p *placement) host() string {
	if p == nil {
		return "127.0.0.1"
	}
	return p.exportHost
}

// rehost moves addr's port to one side's end of the link (loopback when p
// is nil): a UDP socket bound to loopback cannot send across the link.
func (p *placement) rehost(exportSide bool, addr string) (string, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	host := p.host()
	if p != nil && !exportSide {
		host = p.importHost
	}
	return net.JoinHostPort(host, port), nil
}

// nsWrapper writes an executable that runs bin in namespace ns, for code
// that starts a binary by path (daemontest.Site): exec keeps the process
// ID, so CPU and memory are read from the real process.
func nsWrapper(dir, ns, bin string) (string, error) {
	abs, err := filepath.Abs(bin)
	if err == nil {
		err = os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "in-"+ns)
	script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", ns, abs)
	return path, os.WriteFile(path, []byte(script), 0o755)
}

// startIn starts each dyad daemon in its side's namespace: the
// importing daemon dials the exporting one across the emulated link.
func (d *dyadSystem) startIn(dir string, pl *placement) error {
	for _, side := range []struct {
		s      *daemontest.Site
		export bool
	}{{d.b, true}, {d.a, false}} {
		bin, err := nsWrapper(dir, pl.ns(side.export), d.bin)
		if err != nil {
			return err
		}
		side.s.Bin = bin
		if err := side.s.Start(); err != nil {
			return err
		}
		if err := waitSiteReady(side.s, pl.ns(side.export), 10*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// waitSiteReady waits until a daemon started in namespace ns answers
// /readyz, which the bench's namespace cannot reach directly.
func waitSiteReady(s *daemontest.Site, ns string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c, err := linkemu.DialTimeout(ns, "tcp", s.Config.Admin, time.Second); err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			fmt.Fprintf(c, "GET /readyz HTTP/1.0\r\nHost: dyad\r\n\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.Contains(line, " 200 ") {
				return nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s (namespace %s) not ready after %v\n%s", s.Name, ns, timeout, s.Logs())
}

// emulator is the running "linkemu" child process.
type emulator struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser // "counters" asks for the counts so far
	lines chan string
	start time.Time
}

// startEmulator starts the emulator of m between the topology's namespaces
// and waits until its devices are up.
func startEmulator(prefix string, m linkemu.Model, seed uint64) (*emulator, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "linkemu", "-prefix", prefix, "-delay", m.Delay.String(), "-jitter", m.Jitter.String(),
		fmt.Sprintf("-reorder=%v", m.Reorder), "-loss", fmt.Sprint(m.Loss), "-rate", fmt.Sprint(m.RateMbps),
		"-queue", fmt.Sprint(m.QueueBytes), "-seed", fmt.Sprint(seed))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	e := &emulator{cmd: cmd, stdin: in, lines: make(chan string, 4), start: time.Now()}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			e.lines <- sc.Text()
		}
		close(e.lines)
	}()
	select {
	case l, ok := <-e.lines:
		if ok && l == "ready" {
			return e, nil
		}
	case <-time.After(10 * time.Second):
	}
	e.stop()
	return nil, errors.New("link emulator did not come up")
}

func (e *emulator) pid() int { return e.cmd.Process.Pid }

// counters asks the running emulator for its counts so far (importing →
// exporting, and back): the bench reads them before and after each cell.
func (e *emulator) counters() (up, down linkemu.Counters, err error) {
	if _, err := io.WriteString(e.stdin, "counters\n"); err != nil {
		return up, down, fmt.Errorf("link emulator: %w", err)
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case l, ok := <-e.lines:
			if !ok {
				return up, down, errors.New("link emulator exited")
			}
			if v, found := strings.CutPrefix(l, "counters "); found {
				var c [2]linkemu.Counters
				err := json.Unmarshal([]byte(v), &c)
				return c[0], c[1], err
			}
		case <-timeout:
			return up, down, errors.New("link emulator did not answer with its counters")
		}
	}
}

// stop ends the emulator and returns its counters (importing → exporting,
// and back) and its CPU seconds.
func (e *emulator) stop() (up, down linkemu.Counters, cpu float64, err error) {
	cpu, _ = cpuSeconds(e.pid())
	e.cmd.Process.Signal(syscall.SIGTERM)
	timeout := time.After(5 * time.Second)
	err = errors.New("link emulator exited without its counters")
	for {
		select {
		case l, ok := <-e.lines:
			if !ok {
				if werr := e.cmd.Wait(); werr != nil {
					err = errors.Join(err, fmt.Errorf("link emulator: %w", werr))
				}
				return
			}
			if v, found := strings.CutPrefix(l, "counters "); found {
				var c [2]linkemu.Counters
				if err = json.Unmarshal([]byte(v), &c); err == nil {
					up, down = c[0], c[1]
				}
			}
		case <-timeout:
			e.cmd.Process.Kill()
			for range e.lines {
			}
			e.cmd.Wait()
			return up, down, cpu, errors.New("link emulator did not stop")
		}
	}
}

// runEmulator is the "linkemu" subcommand: it joins the bench's two
// namespaces through two TUN devices, prints "ready", carries packets
// until SIGTERM, and prints "counters" with both directions' counts; also
// whenever a "counters" line arrives on its stdin.
func runEmulator(args []string) error {
	fs := flag.NewFlagSet("linkemu", flag.ContinueOnError)
	prefix := fs.String("prefix", "", "namespace and device prefix (the bench's)")
	var m linkemu.Model
	fs.DurationVar(&m.Delay, "delay", 20*time.Millisecond, "one-way delay")
	fs.DurationVar(&m.Jitter, "jitter", 0, "uniform jitter, ±")
	fs.BoolVar(&m.Reorder, "reorder", false, "let jitter reorder packets")
	fs.Float64Var(&m.Loss, "loss", 0, "random loss, 0..1, each direction")
	fs.Float64Var(&m.RateMbps, "rate", linkRateMbps, "rate cap, Mbit/s (0: none)")
	fs.IntVar(&m.QueueBytes, "queue", 0, "drop-tail queue before the rate cap, bytes (0: 50 ms at the rate)")
	seed := fs.Uint64("seed", 1, "random seed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	e, err := linkemu.New(m, *seed)
	if err != nil {
		return err
	}
	imp, exp, err := linkemu.NewTopology(*prefix).Attach()
	if err != nil {
		return err
	}
	ctx := signalContext()
	ran := make(chan error, 1)
	go func() { ran <- e.Run(imp, exp) }()
	var outMu sync.Mutex // one line at a time on stdout
	report := func() {
		c, _ := json.Marshal([2]linkemu.Counters{e.AB.Counters(), e.BA.Counters()})
		outMu.Lock()
		fmt.Printf("counters %s\n", c)
		outMu.Unlock()
	}
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() == "counters" {
				report()
			}
		}
	}()
	fmt.Println("ready")
	select {
	case <-ctx.Done():
	case err = <-ran:
		ran <- err
	}
	imp.Close()
	exp.Close()
	err = <-ran
	report()
	return err
}

// congestionControl reads net.ipv4.tcp_congestion_control in both
// namespaces (each netns has its own; a new one inherits the host's).
func congestionControl(topo linkemu.Topology) string {
	var got []string
	for _, ns := range []string{topo.ImportNS, topo.ExportNS} {
		b, err := linkemu.ReadFile(ns, "/proc/sys/net/ipv4/tcp_congestion_control")
		v := strings.TrimSpace(string(b))
		if err != nil {
			v = "unknown"
		}
		if len(got) == 0 || got[0] != v {
			got = append(got, v)
		}
	}
	return strings.Join(got, " / ")
}

// runLinkScenarios runs every system across each emulated link that want
// selects ("impaired-" and the link's name), or records why it could not.
func runLinkScenarios(res *results, p plan, newSystems func() []system, work string, want func(string) bool) error {
	var links []linkScenario
	for _, ls := range p.impairment {
		if want("impaired-" + ls.Name) {
			links = append(links, ls)
		}
	}
	if len(links) == 0 {
		return nil
	}
	res.Link = &linkRecord{QUICCongestionControl: quicCC, WarmupSeconds: p.impairWarm.Seconds()}
	if err := linkemu.Check(); err != nil {
		return skipLink(res, err)
	}
	if err := linkemu.RemoveStale(linkPrefix); err != nil {
		res.Notes = append(res.Notes, "Namespaces left by a crashed run could not all be deleted: "+err.Error())
	}
	prefix := fmt.Sprintf("%s%d", linkPrefix, os.Getpid())
	topo := linkemu.NewTopology(prefix)
	if err := topo.Setup(); err != nil {
		return skipLink(res, err)
	}
	defer topo.Teardown()
	res.Link.TCPCongestionControl = congestionControl(topo)
	pl := &placement{importNS: topo.ImportNS, exportNS: topo.ExportNS, importHost: topo.ImportAddr.String(), exportHost: topo.ExportAddr.String(), topo: topo}
	for li, ls := range links {
		if err := runLink(res, p, newSystems, fmt.Sprintf("%s/link-%d", work, li), prefix, pl, ls, uint64(li+1)); err != nil {
			return fmt.Errorf("emulated link %s: %w", ls.Model, err)
		}
	}
	for _, r := range res.Link.Runs {
		for _, c := range []linkemu.Counters{r.Up, r.Down} {
			if c.Overflow > 0 || c.WriteErrors > 0 {
				res.Notes = append(res.Notes, fmt.Sprintf("The link emulator itself dropped packets on %s (%d overflow, %d write errors): those rows are not the model's alone.",
					r.Name, c.Overflow, c.WriteErrors))
			}
		}
	}
	return nil
}

func skipLink(res *results, why error) error {
	res.Link.Skipped = why.Error()
	res.Notes = append(res.Notes, "The emulated-link (40 ms RTT, loss, reordering) scenarios were not measured: "+why.Error()+
		"; nothing stands in for them.")
	return nil
}

// linkSettle is the pause before each emulated-link cell: the previous
// cell's last packets (a bulk sender's full 50 ms queue) drain first.
const linkSettle = 100 * time.Millisecond

// emuBusy is the share of one core above which the report warns that the
// emulator may have limited a system.
const emuBusy = 0.5

// runLink runs one emulated link: a fresh emulator, target server and
// systems, then each scenario on each system, interleaved.
func runLink(res *results, p plan, newSystems func() []system, dir, prefix string, pl *placement, ls linkScenario, seed uint64) (err error) {
	emu, err := startEmulator(prefix, ls.Model, seed)
	if err != nil {
		return err
	}
	defer func() {
		up, down, cpu, serr := emu.stop()
		if os.Getenv("BENCH_TRACE") != "" {
			fmt.Fprintf(os.Stderr, "bench: link %s: up %+v down %+v, %.2f CPU-s\n", ls.Name, up, down, cpu)
		}
		res.Link.Runs = append(res.Link.Runs, linkRun{linkScenario: ls, Up: up, Down: down, CPUSeconds: cpu, Seconds: time.Since(emu.start).Seconds()})
		err = errors.Join(err, serr)
	}()
	srv, err := startServer(pl)
	if err != nil {
		return err
	}
	defer srv.close()
	systems := newSystems()
	defer stopConcurrently(systems)
	for i, s := range systems {
		if err := s.start(fmt.Sprintf("%s-%d", dir, i), srv.addr(), pl); err != nil {
			return fmt.Errorf("%s across the emulated link: %w", s.name(), err)
		}
	}
	if os.Getenv("BENCH_TRACE") != "" {
		fmt.Fprintf(os.Stderr, "bench: link %s up after %v\n", ls.Name, time.Since(emu.start))
	}
	clientDial = func(addr string) (net.Conn, error) { return pl.dial(false, addr) }
	defer func() { clientDial = dialLoopback }()
	type scenario struct {
		name  string
		conns int // a bulk download's connections; 0 for rr-64
	}
	scenarios := []scenario{{"impaired-rr-64-", 0}, {"impaired-bulk-down-1-", 1}}
	if ls.bulk8 {
		scenarios = append(scenarios, scenario{"impaired-bulk-down-8-", 8})
	}
	for rep := range p.reps {
		for _, sc := range scenarios {
			for _, s := range systems {
				time.Sleep(linkSettle)
				if sc.conns > 0 {
					// A long-lived QUIC connection carries the congestion
					// window earlier cells left it (after a loss quic-go's
					// CUBIC regains about a packet per RTT), where a TCP
					// system's fresh connection starts anew: a discarded
					// transfer of the same shape first lets each system grow
					// its window again.
					if _, err := bulk(s.entry(), false, sc.conns, p.impairWarm, nil); err != nil && !errors.Is(err, errNoBytes) {
						return fmt.Errorf("%s on %s (repetition %d), warm-up: %w", sc.name+ls.Name, s.name(), rep+1, err)
					}
					// Until the warm-up's streams have ended, a new stream
					// goes to another, colder connection (seen in a run: a
					// one-stream warm-up grew connection 0 to 1.9 MB and
					// the measured stream took connection 1, at 48 KiB).
					if i, ok := s.(idler); ok {
						if err := i.waitIdle(2 * time.Second); err != nil {
							// Measured anyway; the windows table shows
							// which connections it started on.
							res.Notes = append(res.Notes, fmt.Sprintf("%s on %s (repetition %d): %v.", sc.name+ls.Name, s.name(), rep+1, err))
						}
					}
				}
				before, err := readLinkState(emu, pl.topo, s, sc.conns > 0)
				if err != nil {
					return fmt.Errorf("%s on %s (repetition %d): %w", sc.name+ls.Name, s.name(), rep+1, err)
				}
				cpu0, _ := cpuSeconds(emu.pid())
				t0 := time.Now()
				var m metrics
				if sc.conns > 0 {
					m, err = bulk(s.entry(), false, sc.conns, p.impairDur, s.pids())
				} else {
					m, err = requestResponse(s.entry(), 64, p.impairDur)
				}
				if errors.Is(err, errNoBytes) {
					// A lost SYN or first flight waits out a retransmission
					// timeout (1 s for TCP): on a lossy link, a measurement.
					m, err = metrics{"gbps": 0}, nil
					res.Notes = append(res.Notes, fmt.Sprintf("%s on %s moved no byte in one repetition's %v (a lost handshake packet waits out a retransmission timeout): recorded as 0.",
						sc.name+ls.Name, s.name(), p.impairDur))
				}
				if err != nil {
					return fmt.Errorf("%s on %s (repetition %d): %w", sc.name+ls.Name, s.name(), rep+1, err)
				}
				cpu1, _ := cpuSeconds(emu.pid())
				m["emu_cpu_pct"] = (cpu1 - cpu0) / time.Since(t0).Seconds() * 100
				if m["emu_cpu_pct"] > emuBusy*100 {
					res.Notes = append(res.Notes, fmt.Sprintf("The link emulator used %.0f%% of a core during %s on %s: it may have limited that system.",
						m["emu_cpu_pct"], sc.name+ls.Name, s.name()))
				}
				after, err := readLinkState(emu, pl.topo, s, sc.conns > 0)
				if err != nil {
					return fmt.Errorf("%s on %s (repetition %d): %w", sc.name+ls.Name, s.name(), rep+1, err)
				}
				lc := after.since(before)
				lc.addTo(m)
				res.add(sc.name+ls.Name, s.name(), m)
				c := res.cell(sc.name+ls.Name, s.name())
				c.Link = append(c.Link, lc)
			}
		}
	}
	return nil
}

// stopConcurrently stops every system at once: each waits for its own
// processes' shutdown.
func stopConcurrently(systems []system) {
	var wg sync.WaitGroup
	for _, s := range systems {
		wg.Go(s.stop)
	}
	wg.Wait()
}

// linkNote describes the emulated link for the report.
func linkNote(l *linkRecord, links []linkScenario) string {
	if l == nil || l.Skipped != "" {
		return ""
	}
	var names []string
	for _, ls := range links {
		names = append(names, fmt.Sprintf("%s = %s", ls.Name, ls.Model))
	}
	return fmt.Sprintf("Emulated link (impaired-* rows): the importing side and the load client in one network namespace, the exporting side and the server in another, "+
		"joined by two TUN devices and the bench's user-space link emulator; every system's packets (TCP and QUIC alike) cross the same link, loss included: %s; "+
		"a %d-byte drop-tail queue before the rate cap (50 ms), jitter keeps packet order except in reorder. "+
		"TCP congestion control (kernel, both namespaces): %s; quic-go's: %s. emu_cpu_pct is the emulator's CPU during the cell, in %% of one core.",
		strings.Join(names, "; "), int(linkRateMbps*1e6/8/20), l.TCPCongestionControl, l.QUICCongestionControl)
}
