package daemon_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	colmetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// collector is a real OpenTelemetry Collector process (built by `make
// collector` from deploy/otel-collector/builder.yaml) with an OTLP receiver
// on gRPC and HTTP and file exporters for logs and metrics.
type collector struct {
	bin, dir   string
	grpc, http string // receiver addresses
	runs       int
	cmd        *exec.Cmd
	out        bytes.Buffer
	mu         sync.Mutex // guards out
}

func (c *collector) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func startCollector(t *testing.T) *collector {
	bin := os.Getenv("DYAD_OTELCOL")
	if bin == "" {
		t.Skip("DYAD_OTELCOL is not set: `make test` builds the collector and sets it")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("DYAD_OTELCOL=%s: %v (run make collector)", bin, err)
	}
	c := &collector{bin: bin, dir: t.TempDir(), grpc: freeTCP(t), http: freeTCP(t)}
	c.start(t)
	t.Cleanup(func() {
		c.stop(t)
		if t.Failed() {
			t.Logf("collector output:\n%s", c.out.String())
		}
	})
	return c
}

// start runs the collector; each run writes its own files, so a restart
// does not depend on how the file exporter reopens a file.
func (c *collector) start(t *testing.T) {
	t.Helper()
	c.runs++
	cfg := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc: {endpoint: %q}
      http: {endpoint: %q}
exporters:
  file/logs: {path: %q, flush_interval: 100ms}
  file/metrics: {path: %q, flush_interval: 100ms}
service:
  telemetry:
    metrics: {level: none}
  pipelines:
    logs: {receivers: [otlp], exporters: [file/logs]}
    metrics: {receivers: [otlp], exporters: [file/metrics]}
`, c.grpc, c.http, filepath.Join(c.dir, fmt.Sprintf("logs-%d.jsonl", c.runs)), filepath.Join(c.dir, fmt.Sprintf("metrics-%d.jsonl", c.runs)))
	path := filepath.Join(c.dir, fmt.Sprintf("config-%d.yaml", c.runs))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(c.bin, "--config", path)
	c.cmd.Stdout, c.cmd.Stderr = c, c
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{c.grpc, c.http} {
		deadline := time.Now().Add(15 * time.Second)
		for {
			conn, err := net.Dial("tcp", addr)
			if err == nil {
				conn.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("collector not listening on %s:\n%s", addr, c.out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (c *collector) stop(t *testing.T) {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
	c.cmd = nil
}

// record is one log record the collector wrote, with its resource.
type record struct {
	site string
	log  *logspb.LogRecord
	res  map[string]string
}

func (r record) attr(key string) string {
	for _, kv := range r.log.Attributes {
		if kv.Key == key {
			v := kv.Value
			switch {
			case v.GetArrayValue() != nil:
				var parts []string
				for _, e := range v.GetArrayValue().Values {
					parts = append(parts, e.GetStringValue())
				}
				return strings.Join(parts, ",")
			case v.GetStringValue() != "":
				return v.GetStringValue()
			}
			return strings.Trim(protojson.Format(v), "{} \n")
		}
	}
	return ""
}

func (r record) seq() int64 {
	for _, kv := range r.log.Attributes {
		if kv.Key == audit.KeyJournalSeq {
			return kv.Value.GetIntValue()
		}
	}
	return -1
}

// records parses every log record the collector's runs wrote.
func (c *collector) records(t *testing.T) []record {
	t.Helper()
	var out []record
	files, _ := filepath.Glob(filepath.Join(c.dir, "logs-*.jsonl"))
	for _, f := range files {
		forEachLine(t, f, func(line []byte) {
			var req collogs.ExportLogsServiceRequest
			if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(line, &req); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			for _, rl := range req.ResourceLogs {
				res := map[string]string{}
				for _, kv := range rl.Resource.GetAttributes() {
					res[kv.Key] = kv.Value.GetStringValue()
				}
				for _, sl := range rl.ScopeLogs {
					for _, lr := range sl.LogRecords {
						out = append(out, record{site: res["dyad.site"], log: lr, res: res})
					}
				}
			}
		})
	}
	return out
}

// metricNames lists the metric names the collector received from site.
func (c *collector) metricNames(t *testing.T, site string) map[string]bool {
	names := map[string]bool{}
	files, _ := filepath.Glob(filepath.Join(c.dir, "metrics-*.jsonl"))
	for _, f := range files {
		forEachLine(t, f, func(line []byte) {
			var req colmetrics.ExportMetricsServiceRequest
			if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(line, &req); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			for _, rm := range req.ResourceMetrics {
				for _, kv := range rm.Resource.GetAttributes() {
					if kv.Key != "dyad.site" || kv.Value.GetStringValue() != site {
						continue
					}
					for _, sm := range rm.ScopeMetrics {
						for _, m := range sm.Metrics {
							names[m.Name] = true
						}
					}
				}
			}
		})
	}
	return names
}

func forEachLine(t *testing.T, path string, f func([]byte)) {
	fh, err := os.Open(path)
	if err != nil {
		return // this run wrote nothing yet
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		if line := bytes.TrimSpace(sc.Bytes()); len(line) > 0 && line[len(line)-1] == '}' {
			f(line)
		}
	}
}

// ping carries one small request/response through the tunnel.
func ping(addr string) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// TestCollectorEndToEnd: two daemons export their audit events to a real
// OpenTelemetry Collector, A over gRPC and B over HTTP/protobuf (with a
// header from the environment). The collector is then down for 30 s while
// traffic flows: traffic is unaffected, A's journal keeps every event,
// A audits the failure and counts exactly what it could not deliver, and
// export resumes when the collector is back. THREATS P7.
func TestCollectorEndToEnd(t *testing.T) {
	col := startCollector(t)
	echo, _ := tunneltest.EchoServer(t)
	t.Setenv("DYAD_TEST_COLLECTOR_TOKEN", "s3cret-token")
	root := t.TempDir()
	a, b := newSite(t, root, "site-a"), newSite(t, root, "site-b")
	local := freeTCP(t)
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "echo", Upstream: echo, Allow: []string{"site-a"}}}
	b.Config.Audit = daemon.AuditFile{SummaryInterval: daemon.Duration(time.Second), OTLP: &daemon.OTLPFile{
		Endpoint: "http://" + col.http, Protocol: "http/protobuf", Insecure: true,
		Headers:       map[string]string{"X-Dyad-Token": "${DYAD_TEST_COLLECTOR_TOKEN}"},
		BatchInterval: daemon.Duration(100 * time.Millisecond), MetricsInterval: daemon.Duration(time.Second)}}
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	a.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: "site-b", Service: "echo"}}
	a.Config.Audit = daemon.AuditFile{SummaryInterval: daemon.Duration(time.Second), OTLP: &daemon.OTLPFile{
		Endpoint: "http://" + col.grpc, Protocol: "grpc", Insecure: true, QueueSize: 64,
		BatchInterval: daemon.Duration(100 * time.Millisecond), MetricsInterval: daemon.Duration(time.Second)}}
	start(t, b)
	start(t, a)

	var before, during []time.Duration
	for range 20 {
		d, err := ping(local)
		if err != nil {
			t.Fatal(err)
		}
		before = append(before, d)
	}
	waitRecords := func(what string, cond func([]record) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond(col.records(t)) {
			if time.Now().After(deadline) {
				t.Fatalf("collector did not receive %s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	count := func(rs []record, site, name string) int {
		n := 0
		for _, r := range rs {
			if r.site == site && r.log.EventName == name {
				n++
			}
		}
		return n
	}
	waitRecords("the first 20 streams of both sites", func(rs []record) bool {
		return count(rs, "site-a", audit.StreamClosed) >= 20 && count(rs, "site-b", audit.StreamClosed) >= 20
	})

	// Every field of one event from each side, as the SIEM sees it.
	for _, r := range col.records(t) {
		if r.log.EventName != audit.TunnelEstablished {
			continue
		}
		peer := map[string]string{"site-a": "site-b", "site-b": "site-a"}[r.site]
		want := map[string]string{audit.KeyPeer: peer, audit.KeyTLSCurve: "X25519MLKEM768", audit.KeyTLSNextProto: tunnel.ALPN,
			audit.KeyTLSVersion: "1.3", audit.KeyPeerAddress: "127.0.0.1", audit.KeyTransport: "quic"}
		for k, v := range want {
			if got := r.attr(k); got != v {
				t.Errorf("%s tunnel.established %s = %q, want %q", r.site, k, got, v)
			}
		}
		if r.log.SeverityText != "INFO" || r.log.SeverityNumber != 9 || r.log.TimeUnixNano == 0 || r.seq() < 0 {
			t.Errorf("%s record header: %v", r.site, r.log)
		}
		if r.res["service.name"] != "dyad" || r.res["service.version"] == "" || !strings.HasPrefix(r.res["service.instance.id"], "SHA256:") || r.res["host.name"] == "" {
			t.Errorf("%s resource: %v", r.site, r.res)
		}
	}

	// The collector goes down for 30 s; traffic goes on.
	col.stop(t)
	outage := time.Now()
	for i := 0; i < 3000 && time.Since(outage) < 30*time.Second; i++ {
		d, err := ping(local)
		if err != nil {
			t.Fatalf("connection %d during the outage: %v", i, err)
		}
		during = append(during, d)
		time.Sleep(10 * time.Millisecond)
	}
	if m0, m1 := median(before), median(during); m1 > 5*m0+5*time.Millisecond {
		t.Errorf("median connection time %v during the outage, %v before", m1, m0)
	}
	col.start(t)
	for range 20 {
		if _, err := ping(local); err != nil {
			t.Fatal(err)
		}
	}
	back := time.Now()
	waitRecords("A's export_recovered and the drop report", func(rs []record) bool {
		return count(rs, "site-a", audit.ExportRecovered) > 0 && count(rs, "site-a", audit.ExportDropped) > 0
	})
	t.Logf("%d connections during the 30 s outage (median %v, %v before); export resumed %v after the collector returned",
		len(during), median(during), median(before), time.Since(back).Round(100*time.Millisecond))
	if err := a.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := b.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}

	// A's journal has every stream; what the collector lacks is exactly
	// what A counted and reported as dropped.
	es, res, err := a.Journal()
	if err != nil || !res.OK() {
		t.Fatalf("A's journal: %v %v", err, res.Bad)
	}
	streams, failed := 0, 0
	var reported int64
	for _, e := range es {
		switch e.Name {
		case audit.StreamClosed:
			streams++
		case audit.ExportFailed:
			failed++
		case audit.ExportDropped:
			reported += e.Attr(audit.KeyQueueFull).AsInt64() + e.Attr(audit.KeyExportFailed).AsInt64()
		}
	}
	if want := 40 + len(during); streams != want {
		t.Errorf("A's journal has %d closed streams, %d connections were made", streams, want)
	}
	if failed == 0 {
		t.Error("A's journal lacks dyad.audit.export_failed")
	}
	received := map[int64]bool{}
	for _, r := range col.records(t) {
		if r.site == "site-a" {
			received[r.seq()] = true
		}
	}
	var missing []journal.Entry
	for _, e := range es {
		if !received[int64(e.Seq)] {
			missing = append(missing, e)
		}
	}
	if reported == 0 || int64(len(missing)) != reported {
		t.Errorf("collector lacks %d of A's %d events; A reported %d dropped", len(missing), len(es), reported)
	}
	t.Logf("A: %d journal entries, %d not exported, %d reported dropped", len(es), len(missing), reported)
	// The header B sends (resolved from the environment) never reaches a log.
	if strings.Contains(b.Logs(), "s3cret-token") || strings.Contains(a.Logs(), "s3cret-token") {
		t.Error("the header token reached a log")
	}
	for _, name := range []string{"dyad.streams", "dyad.stream.bytes", "dyad.tunnel.handshake.duration", "dyad.audit.journal.entries"} {
		if !col.metricNames(t, "site-b")[name] {
			t.Errorf("collector received no %s metric from B", name)
		}
	}
	if !col.metricNames(t, "site-a")["dyad.audit.export.dropped"] {
		t.Error("collector received no dyad.audit.export.dropped metric from A")
	}
}
