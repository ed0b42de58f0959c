package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
)

// The API guard scenarios (README, "API guard"): the same dyad pair
// exports one HTTP service twice, plain and behind the guard
// (validate: [request]), so both run in one process pair, one run, and the
// guard's cost is a ratio of the same run: rr-api (1 KiB JSON request and
// response on keep-alive connections, 1 and 64 of them) and bulk-api-up (a
// large upload to an operation with an application/octet-stream body,
// which the guard streams without validating).

// apiSpec is the contract of the bench's HTTP target.
const apiSpec = `openapi: 3.0.3
info: {title: dyad bench target, version: "1"}
paths:
  /v1/echo:
    post:
      operationId: echo
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, additionalProperties: false, required: [data], properties: {data: {type: string, maxLength: 4096}}}
      responses:
        "200": {description: echoed, content: {application/json: {schema: {type: object}}}}
  /v1/blobs:
    post:
      operationId: upload
      requestBody:
        required: true
        content:
          application/octet-stream: {}
      responses:
        "202": {description: accepted}
`

// apiRequestBody is a 1 KiB JSON document that satisfies echo's schema.
var apiRequestBody = func() []byte {
	b := []byte(`{"data":"`)
	b = append(b, bytes.Repeat([]byte{'x'}, msgSize-len(b)-2)...)
	return append(b, '"', '}')
}()

// apiTarget is the bench's HTTP/1.1 target: echo answers 1 KiB of JSON,
// upload reads the body to its end.
func apiTarget() (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	reply := apiRequestBody
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/echo", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(reply)))
		w.Write(reply)
	})
	mux.HandleFunc("POST /v1/blobs", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return ln.Addr().String(), func() { srv.Close() }, nil
}

// apiPair is one dyad pair exporting the target as "plain" and "guarded".
type apiPair struct {
	a, b           *daemontest.Site
	plain, guarded string // the forwards' local addresses
}

func startAPIPair(bin, dir, target string) (*apiPair, error) {
	p := &apiPair{}
	var err error
	if p.a, err = daemontest.NewSite(bin, dir, "site-a"); err != nil {
		return nil, err
	}
	if p.b, err = daemontest.NewSite(bin, dir, "site-b"); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(p.b.Dir, "api.yaml"), []byte(apiSpec), 0o644); err != nil {
		return nil, err
	}
	if p.plain, err = daemontest.FreeTCP(); err != nil {
		return nil, err
	}
	if p.guarded, err = daemontest.FreeTCP(); err != nil {
		return nil, err
	}
	for _, s := range []*daemontest.Site{p.a, p.b} {
		s.Config.Log.Level = "warn"
		s.Config.Tunnel.Limits = benchLimits
		s.Config.Tunnel.ShutdownTimeout = daemon.Duration(time.Second)
	}
	p.b.Config.Peers = []daemon.PeerFile{p.a.Peer(false)}
	p.b.Config.Services = []daemon.ServiceFile{
		{Name: "plain", Upstream: target, Allow: []string{"site-a"}},
		{Name: "guarded", Upstream: target, Allow: []string{"site-a"}, API: &daemon.APIFile{Spec: "api.yaml",
			Operations: map[string][]string{"site-a": {"echo", "upload"}}, Validate: []string{"request"}}},
	}
	p.a.Config.Peers = []daemon.PeerFile{p.b.Peer(true)}
	p.a.Config.Forwards = []daemon.ForwardConfig{
		{Listen: p.plain, Peer: "site-b", Service: "plain", MaxConnections: benchMaxConnections},
		{Listen: p.guarded, Peer: "site-b", Service: "guarded", MaxConnections: benchMaxConnections},
	}
	if err := p.b.StartReady(10 * time.Second); err != nil {
		return nil, err
	}
	if err := p.a.StartReady(10 * time.Second); err != nil {
		p.b.Stop(5 * time.Second)
		return nil, err
	}
	return p, nil
}

func (p *apiPair) pids() []int { return []int{p.a.Pid(), p.b.Pid()} }

func (p *apiPair) stop() {
	p.a.Stop(5 * time.Second)
	p.b.Stop(5 * time.Second)
}

// httpRR sends 1 KiB JSON POSTs on conc keep-alive connections to entry
// for dur, one outstanding per connection, and reports the rate and the
// latency percentiles, like requestResponse, and the CPU time each dyad
// daemon spent per request (user + system, over the whole cell: the two
// services are measured one after the other, so a cell's CPU is its own).
// The package benchmarks miss what a request costs in a loaded daemon
// (colder caches, the collector's share); this is that figure.
func httpRR(entry string, conc int, dur time.Duration, exporter, importer int) (metrics, error) {
	req := fmt.Appendf(nil, "POST /v1/echo HTTP/1.1\r\nHost: target\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(apiRequestBody), apiRequestBody)
	conns := make([]net.Conn, 0, conc)
	for range conc {
		c, err := net.Dial("tcp", entry)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		conns = append(conns, c)
	}
	exp0, _ := cpuSeconds(exporter)
	imp0, _ := cpuSeconds(importer)
	own0, _ := cpuSeconds(os.Getpid()) // the load generator and the upstream
	all, elapsed, err := rrLoop(conns, dur, func(c net.Conn) func() error {
		br := bufio.NewReaderSize(c, 4<<10)
		post := &http.Request{Method: http.MethodPost}
		return func() error {
			if _, err := c.Write(req); err != nil {
				return err
			}
			resp, err := http.ReadResponse(br, post)
			if err != nil {
				return err
			}
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}
	})
	if err != nil {
		return nil, fmt.Errorf("HTTP request/response: %w", err)
	}
	pct := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Nanoseconds()) / 1000
	}
	m := metrics{"rps": float64(len(all)) / elapsed.Seconds(), "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99)}
	exp1, err1 := cpuSeconds(exporter)
	imp1, err2 := cpuSeconds(importer)
	own1, err3 := cpuSeconds(os.Getpid())
	if err1 == nil && err2 == nil && err3 == nil {
		n := float64(len(all))
		m["cpu_us_per_req_exporter"] = (exp1 - exp0) / n * 1e6
		m["cpu_us_per_req_importer"] = (imp1 - imp0) / n * 1e6
		m["cpu_us_per_req_bench"] = (own1 - own0) / n * 1e6
	}
	return m, nil
}

// httpUpload POSTs one chunked application/octet-stream body to
// /v1/blobs on one connection for dur and reports the rate.
func httpUpload(entry string, dur time.Duration, pids []int) (metrics, error) {
	c, err := net.Dial("tcp", entry)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cpu0 := totalCPU(pids)
	start := time.Now()
	deadline := start.Add(dur)
	c.SetDeadline(deadline.Add(10 * time.Second))
	bw := bufio.NewWriterSize(c, 64<<10)
	fmt.Fprintf(bw, "POST /v1/blobs HTTP/1.1\r\nHost: target\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
	var n int64
	for time.Now().Before(deadline) {
		fmt.Fprintf(bw, "%x\r\n", len(bulkBuf))
		bw.Write(bulkBuf)
		if _, err := bw.WriteString("\r\n"); err != nil {
			return nil, err
		}
		n += int64(len(bulkBuf))
	}
	bw.WriteString("0\r\n\r\n")
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodPost})
	if err != nil {
		return nil, fmt.Errorf("upload response: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return nil, fmt.Errorf("upload: status %d", resp.StatusCode)
	}
	elapsed := time.Since(start)
	m := metrics{"gbps": float64(n) * 8 / elapsed.Seconds() / 1e9}
	if n > 0 {
		m["cpu_s_per_gb"] = (totalCPU(pids) - cpu0) / (float64(n) / 1e9)
	}
	return m, nil
}

// runAPIScenarios runs rr-api-1, rr-api-64 and bulk-api-up-1 on a fresh
// dyad pair, plain and guarded interleaved, and notes the guard's ratios
// of the same run.
func runAPIScenarios(res *results, p plan, dyadBin, work string, want func(string) bool) error {
	type sc struct {
		name string
		run  func(entry string) (metrics, error)
	}
	var pair *apiPair
	scs := []sc{
		{"rr-api-1", func(e string) (metrics, error) { return httpRR(e, 1, p.rrDur, pair.b.Pid(), pair.a.Pid()) }},
		{"rr-api-64", func(e string) (metrics, error) { return httpRR(e, 64, p.rrDur, pair.b.Pid(), pair.a.Pid()) }},
		{"bulk-api-up-1", func(e string) (metrics, error) { return httpUpload(e, p.bulkDur, pair.pids()) }},
	}
	var todo []sc
	for _, s := range scs {
		if want(s.name) {
			todo = append(todo, s)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if p.settle {
		waited, busy := settle()
		state := fmt.Sprintf("the machine was %.0f%% busy", 100*busy)
		if busy < 0 {
			state = "the machine's load is unknown (/proc/stat unreadable)"
		} else if busy >= settleQuiet {
			state = fmt.Sprintf("the machine was still %.0f%% busy (not quiet: these figures may be disturbed)", 100*busy)
		}
		res.Notes = append(res.Notes, fmt.Sprintf("API guard group: %d repetitions, plain and guarded alternating A B, B A; before it the bench waited %.1f s for a quiet machine: %s.",
			p.apiReps, waited.Seconds(), state))
	}
	target, stopTarget, err := apiTarget()
	if err != nil {
		return err
	}
	defer stopTarget()
	if pair, err = startAPIPair(dyadBin, filepath.Join(work, "api"), target); err != nil {
		return fmt.Errorf("API guard pair: %w", err)
	}
	defer pair.stop()
	systems := []struct{ name, entry string }{{"dyad-api-plain", pair.plain}, {"dyad-api-guarded", pair.guarded}}
	for _, s := range todo {
		for rep := range p.apiReps {
			order := systems
			if rep%2 == 1 {
				// Interleaved as A B, then B A: a machine that slows
				// or speeds up during the group weighs on both services
				// alike, not on the one measured second.
				order = []struct{ name, entry string }{systems[1], systems[0]}
			}
			for _, sys := range order {
				m, err := s.run(sys.entry)
				if err != nil {
					return fmt.Errorf("%s on %s (repetition %d): %w", s.name, sys.name, rep+1, err)
				}
				res.add(s.name, sys.name, m)
			}
		}
		fmt.Fprintf(os.Stderr, "bench: %-12s done\n", s.name)
	}
	return nil
}

// apiNotes states the guard's cost from the medians of one run: added
// p50 and throughput ratio for rr-api, throughput ratio for the upload.
// Call after finish.
func apiNotes(res *results) {
	for _, name := range []string{"rr-api-1", "rr-api-64", "bulk-api-up-1"} {
		plain, guarded := res.cell(name, "dyad-api-plain"), res.cell(name, "dyad-api-guarded")
		if plain == nil || guarded == nil {
			continue
		}
		var parts []string
		if strings.HasPrefix(name, "rr") {
			parts = append(parts, fmt.Sprintf("added p50 %.1f µs (%.1f vs %.1f)", guarded.Median["p50_us"]-plain.Median["p50_us"], guarded.Median["p50_us"], plain.Median["p50_us"]))
			if r := plain.Median["rps"]; r > 0 {
				parts = append(parts, fmt.Sprintf("throughput %.2fx unguarded (%.0f vs %.0f req/s)", guarded.Median["rps"]/r, guarded.Median["rps"], r))
			}
			if e, ok := guarded.Median["cpu_us_per_req_exporter"]; ok {
				parts = append(parts, fmt.Sprintf("exporting daemon's CPU per request %.1f vs %.1f µs (importing %.1f vs %.1f)",
					e, plain.Median["cpu_us_per_req_exporter"], guarded.Median["cpu_us_per_req_importer"], plain.Median["cpu_us_per_req_importer"]))
			}
			if b, ok := guarded.Median["cpu_us_per_req_bench"]; ok {
				parts = append(parts, fmt.Sprintf("load generator and upstream (the bench process) %.1f vs %.1f µs", b, plain.Median["cpu_us_per_req_bench"]))
			}
		} else if g := plain.Median["gbps"]; g > 0 {
			parts = append(parts, fmt.Sprintf("throughput %.2fx unguarded (%.2f vs %.2f Gbit/s)", guarded.Median["gbps"]/g, guarded.Median["gbps"], g))
		}
		res.Notes = append(res.Notes, fmt.Sprintf("%s: the API guard (validate: [request]) on the same dyad pair, same run: %s.", name, strings.Join(parts, ", ")))
	}
}
