package deploy

// Tests of the SIEM collector configurations in otel-collector/: each is
// validated by the real collector (built by `make collector-siem` from
// otel-collector/siem-builder.yaml; DYAD_OTELCOL_SIEM names the binary),
// then run for real on loopback with dyad's own audit exporter sending one
// of every catalogue event into it, against local stand-ins for Splunk HEC,
// Elasticsearch, S3 and a next OTLP hop. Identifiers carry a siem prefix:
// the other deployment tests share this package.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/audittest"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// siemConfigs are the collector configurations every test validates.
var siemConfigs = []string{"splunk-hec.yaml", "elasticsearch.yaml", "otlp-forward.yaml", "archive.yaml"}

const siemHost = "dyad-test-host" // host.name of the sending daemon

func siemBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("DYAD_OTELCOL_SIEM")
	if bin == "" {
		t.Skip("DYAD_OTELCOL_SIEM is not set: `make collector-siem` builds the SIEM collector " +
			"(.cache/otelcol-siem/build/dyad-otelcol-siem); set it to that path to run these tests")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("DYAD_OTELCOL_SIEM=%s: %v (run make collector-siem)", bin, err)
	}
	return bin
}

// siemValidateEnv fills every variable the configurations require with a
// placeholder, as an operator's deployment would with real values.
func siemValidateEnv(t *testing.T) []string {
	dir := t.TempDir()
	return append(os.Environ(),
		"SPLUNK_HEC_ENDPOINT=https://splunk.invalid:8088/services/collector",
		"SPLUNK_HEC_TOKEN=00000000-0000-0000-0000-000000000000",
		"ES_ENDPOINT=https://elasticsearch.invalid:9200",
		"ES_API_KEY=placeholder",
		"OTLP_FORWARD_ENDPOINT=otel-gateway.invalid:4317",
		"S3_BUCKET=dyad-archive",
		"OTELCOL_STORAGE_DIR="+filepath.Join(dir, "storage"),
		"ARCHIVE_DIR="+filepath.Join(dir, "archive"),
	)
}

// TestSIEMConfigsValidate runs `validate` on every configuration, alone and
// archive.yaml layered on a SIEM path as its header describes.
func TestSIEMConfigsValidate(t *testing.T) {
	bin := siemBinary(t)
	found, _ := filepath.Glob("otel-collector/*.yaml")
	for _, f := range found {
		if base := filepath.Base(f); !strings.HasSuffix(base, "builder.yaml") && !slices.Contains(siemConfigs, base) {
			t.Errorf("%s is not in siemConfigs: add it so that it is validated", f)
		}
	}
	sets := [][]string{{"splunk-hec.yaml", "archive.yaml"}, {"elasticsearch.yaml", "archive.yaml"}}
	for _, c := range siemConfigs {
		sets = append(sets, []string{c})
	}
	for _, set := range sets {
		t.Run(strings.Join(set, "+"), func(t *testing.T) {
			args := []string{"validate"}
			for _, c := range set {
				args = append(args, "--config", filepath.Join("otel-collector", c))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = siemValidateEnv(t)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
			}
		})
	}
	// The placeholders matter: without the token the configuration is invalid.
	cmd := exec.Command(bin, "validate", "--config", "otel-collector/splunk-hec.yaml")
	for _, kv := range siemValidateEnv(t) {
		if !strings.HasPrefix(kv, "SPLUNK_HEC_TOKEN=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "token") {
		t.Errorf("splunk-hec.yaml without SPLUNK_HEC_TOKEN: %v\n%s", err, out)
	}
}

// siemCollector is a running collector process.
type siemCollector struct {
	bin     string
	configs []string
	env     []string
	grpc    string // OTLP receiver addresses
	http    string
	health  string
	metrics string // the collector's own Prometheus endpoint

	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex // guards out
	out  bytes.Buffer
}

func (c *siemCollector) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func (c *siemCollector) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

// siemStart runs the collector on loopback with configs (names in
// otel-collector/) and env (KEY=value) on top of the listen addresses.
func siemStart(t *testing.T, bin string, env []string, configs ...string) *siemCollector {
	t.Helper()
	c := &siemCollector{bin: bin, configs: configs,
		grpc: tunneltest.FreeAddr(t), http: tunneltest.FreeAddr(t), health: tunneltest.FreeAddr(t), metrics: tunneltest.FreeAddr(t)}
	_, port, _ := net.SplitHostPort(c.metrics)
	c.env = append(append(os.Environ(), env...),
		"OTLP_GRPC_ENDPOINT="+c.grpc, "OTLP_HTTP_ENDPOINT="+c.http, "HEALTH_CHECK_ENDPOINT="+c.health,
		"OTELCOL_METRICS_HOST=127.0.0.1", "OTELCOL_METRICS_PORT="+port)
	c.start(t)
	t.Cleanup(func() {
		c.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("collector %v output:\n%s", configs, c.output())
		}
	})
	return c
}

// start (re)starts the process and waits until the health check says the
// pipelines are running.
func (c *siemCollector) start(t *testing.T) {
	t.Helper()
	var args []string
	for _, f := range c.configs {
		args = append(args, "--config", filepath.Join("otel-collector", f))
	}
	c.cmd = exec.Command(c.bin, args...)
	c.cmd.Env = c.env
	c.cmd.Stdout, c.cmd.Stderr = c, c
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(c.cmd, c.done)
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + c.health + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-c.done:
			t.Fatalf("collector exited at start:\n%s", c.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("collector not healthy after 15 s:\n%s", c.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends sig and waits for the process (10 s at most, then kills it).
func (c *siemCollector) stop(sig syscall.Signal) {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	c.cmd = nil
}

// siemDyad is what a dyad daemon runs for audit: a signed journal, the
// Auditor, and its OTLP exporters for logs and metrics.
type siemDyad struct {
	a        *audit.Auditor
	j        *journal.Journal
	m        *audit.Metrics
	dir      string
	verifier interface {
		Name() string
		KeyHash() uint32
		Verify(msg, sig []byte) bool
	}
}

// siemNewDyad exports to the collector at endpoint (http://host:port) over
// protocol (audit.ProtocolGRPC or audit.ProtocolHTTP).
func siemNewDyad(t *testing.T, endpoint, protocol string) *siemDyad {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := journal.NewSigner("dyad/bank-a", key)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := journal.NewVerifier("dyad/bank-a", pub)
	d := &siemDyad{dir: t.TempDir(), verifier: v}
	var a *audit.Auditor
	d.j, err = journal.Open(journal.Options{Dir: d.dir, Origin: "dyad/bank-a", Signer: signer,
		OnCheckpoint: func(e journal.Entry) { a.OnCheckpoint(e) }})
	if err != nil {
		t.Fatal(err)
	}
	o := audit.OTLP{Endpoint: endpoint, Protocol: protocol, Insecure: true}
	lexp, err := audit.NewLogExporter(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	x := audit.NewExporter(lexp, audit.ExportOptions{Protocol: protocol, Endpoint: endpoint,
		BatchInterval: 50 * time.Millisecond, Timeout: 2 * time.Second, RetryFor: 20 * time.Second})
	res, err := resource.New(context.Background(), resource.WithAttributes(
		attribute.String("service.name", "dyad"), attribute.String("service.version", "test"),
		attribute.String("service.instance.id", "SHA256:"+hex.EncodeToString(pub[:8])),
		attribute.String("host.name", siemHost), attribute.String("dyad.site", "bank-a")))
	if err != nil {
		t.Fatal(err)
	}
	a = audit.New(audit.Options{Journal: d.j, Resource: res, Export: x, Console: zerolog.Nop()})
	d.a = a
	mexp, err := audit.NewMetricExporter(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	d.m, err = audit.NewMetrics(audit.MetricsOptions{Resource: res, OTLP: mexp, Interval: time.Hour, Journal: d.j, Export: x})
	if err != nil {
		t.Fatal(err)
	}
	a.SetMetrics(d.m)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.m.Shutdown(ctx)
		a.Close(ctx)
		d.j.Close()
	})
	return d
}

// emitAll emits one of every catalogue event (the journal's own,
// checkpoint, through a real checkpoint), records some metrics, flushes
// both, and returns the journal: what the collector must deliver.
func (d *siemDyad) emitAll(t *testing.T) []journal.Entry {
	t.Helper()
	for _, s := range audit.Catalog {
		if !audit.JournalOwn(s.Name) {
			d.a.Emit(s.Name, siemSample(s)...)
		}
	}
	d.m.TunnelUp("bank-b", "dialer", "quic", 20*time.Millisecond)
	d.m.StreamOpened("bank-b", "payments", "outbound")
	if err := d.j.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.a.Flush(ctx); err != nil {
		t.Fatalf("audit flush: %v", err)
	}
	if err := d.m.Shutdown(ctx); err != nil { // pushes the metrics once
		t.Fatalf("metrics push: %v", err)
	}
	return d.entries(t)
}

func (d *siemDyad) entries(t *testing.T) []journal.Entry {
	t.Helper()
	if err := d.j.Flush(); err != nil {
		t.Fatal(err)
	}
	var out []journal.Entry
	res, err := journal.Verify(d.dir, journal.VerifyOptions{Verifier: d.verifier, Each: func(e *journal.Entry, _ []byte) error {
		out = append(out, *e)
		return nil
	}})
	if err != nil || !res.OK() {
		t.Fatalf("journal: %v %v", err, res)
	}
	names := map[string]bool{}
	for _, e := range out {
		names[e.Name] = true
	}
	if !names[audit.JournalCheckpoint] || !names[audit.PeerAuthRefused] || !names[audit.StreamClosed] {
		t.Fatalf("journal lacks events: %v", names)
	}
	return out
}

// siemSample returns valid attributes for an event, with the values a
// real one would carry for the keys the tests look at.
func siemSample(s audit.Spec) []attribute.KeyValue {
	return audittest.Sample(s, func(key string) string {
		switch key {
		case audit.KeyPeer:
			return "bank-b"
		case audit.KeyReason:
			return "reason-of-" + s.Name
		}
		return ""
	})
}

// siemRoute is where splunk-hec.yaml and elasticsearch.yaml send an event:
// "security" for WARN and above and for everything that is not a stream
// record, "traffic" for stream records.
func siemRoute(name string) string {
	if s, ok := audit.SpecOf(name); ok && s.Severity >= audit.Warn {
		return "security"
	}
	if name == audit.StreamOpened || name == audit.StreamClosed {
		return "traffic"
	}
	return "security"
}

var siemSeverityNumber = map[string]float64{"INFO": 9, "WARN": 13, "ERROR": 17}

// siemSameJSON compares a decoded JSON value with an attribute value.
func siemSameJSON(got any, want attribute.Value) bool {
	switch want.Type() {
	case attribute.STRING:
		return got == want.AsString()
	case attribute.INT64:
		return got == float64(want.AsInt64())
	case attribute.FLOAT64:
		return got == want.AsFloat64()
	case attribute.BOOL:
		return got == want.AsBool()
	case attribute.STRINGSLICE:
		arr, ok := got.([]any)
		if !ok || len(arr) != len(want.AsStringSlice()) {
			return false
		}
		for i, s := range want.AsStringSlice() {
			if arr[i] != s {
				return false
			}
		}
		return true
	}
	return false
}

// siemWait polls cond until it holds or 15 s pass.
func siemWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// siemBody returns a request body, gunzipped when it says so.
func siemBody(r *http.Request) ([]byte, error) {
	var rd io.Reader = r.Body
	if strings.Contains(r.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, err
		}
		rd = zr
	}
	return io.ReadAll(rd)
}

// siemHECEvent is one event as Splunk HEC receives it.
type siemHECEvent struct {
	Time       float64        `json:"time"`
	Host       string         `json:"host"`
	Source     string         `json:"source"`
	SourceType string         `json:"sourcetype"`
	Index      string         `json:"index"`
	Event      any            `json:"event"`
	Fields     map[string]any `json:"fields"`
}

// siemHEC stands in for Splunk's HTTP Event Collector: it checks the token
// and keeps the events.
type siemHEC struct {
	token string

	mu       sync.Mutex // guards the following
	events   []siemHECEvent
	badAuth  []string
	badPaths []string
}

func (h *siemHEC) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/services/collector" || r.Method != http.MethodPost {
		h.mu.Lock()
		h.badPaths = append(h.badPaths, r.Method+" "+r.URL.Path)
		h.mu.Unlock()
		http.Error(w, `{"text":"The requested URL was not found on this server.","code":404}`, http.StatusNotFound)
		return
	}
	if got := r.Header.Get("Authorization"); got != "Splunk "+h.token {
		h.mu.Lock()
		h.badAuth = append(h.badAuth, got)
		h.mu.Unlock()
		http.Error(w, `{"text":"Invalid token","code":4}`, http.StatusForbidden)
		return
	}
	body, err := siemBody(r)
	if err != nil {
		http.Error(w, `{"text":"Invalid data format","code":6}`, http.StatusBadRequest)
		return
	}
	var evs []siemHECEvent
	dec := json.NewDecoder(bytes.NewReader(body)) // HEC takes events back to back, not an array
	for dec.More() {
		var ev siemHECEvent
		if err := dec.Decode(&ev); err != nil {
			http.Error(w, `{"text":"Invalid data format","code":6}`, http.StatusBadRequest)
			return
		}
		evs = append(evs, ev)
	}
	h.mu.Lock()
	h.events = append(h.events, evs...)
	h.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"text":"Success","code":0}`)
}

func (h *siemHEC) snapshot() []siemHECEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

func siemServe(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestSIEMSplunkHEC runs splunk-hec.yaml against a local HEC: every event
// arrives once, in the index and sourcetype of its route, with its
// attributes as indexed fields, and dyad's metrics reach the metrics index.
func TestSIEMSplunkHEC(t *testing.T) {
	bin := siemBinary(t)
	token := strings.ToUpper(rand.Text())
	hec := &siemHEC{token: token}
	addr := siemServe(t, hec)
	col := siemStart(t, bin, []string{
		"SPLUNK_HEC_ENDPOINT=http://" + addr + "/services/collector",
		"SPLUNK_HEC_TOKEN=" + token,
		"OTELCOL_STORAGE_DIR=" + t.TempDir(),
	}, "splunk-hec.yaml")
	d := siemNewDyad(t, "http://"+col.grpc, audit.ProtocolGRPC)
	start := time.Now()
	ents := d.emitAll(t)

	bySeq := map[int64][]siemHECEvent{}
	var metrics []siemHECEvent
	siemWait(t, "every event at the HEC", func() bool {
		clear(bySeq)
		metrics = metrics[:0]
		for _, ev := range hec.snapshot() {
			if ev.Event == "metric" {
				metrics = append(metrics, ev)
				continue
			}
			if seq, ok := ev.Fields[audit.KeyJournalSeq].(float64); ok {
				bySeq[int64(seq)] = append(bySeq[int64(seq)], ev)
			}
		}
		return len(bySeq) >= len(ents) && len(metrics) > 0
	})
	t.Logf("%d events at the HEC %v after the flush", len(ents), time.Since(start).Round(10*time.Millisecond))
	hec.mu.Lock()
	if len(hec.badAuth) > 0 || len(hec.badPaths) > 0 {
		t.Errorf("HEC requests with a wrong Authorization header %q or path %q", hec.badAuth, hec.badPaths)
	}
	hec.mu.Unlock()
	want := map[string][2]string{"security": {"dyad_security", "dyad:audit"}, "traffic": {"dyad_traffic", "dyad:traffic"}}
	routed := map[string]int{}
	for _, e := range ents {
		evs := bySeq[int64(e.Seq)]
		if len(evs) != 1 {
			t.Errorf("journal entry %d %s arrived %d times", e.Seq, e.Name, len(evs))
			continue
		}
		ev, route := evs[0], siemRoute(e.Name)
		routed[route]++
		if w := want[route]; ev.Index != w[0] || ev.SourceType != w[1] {
			t.Errorf("%s: index %q sourcetype %q, want %q %q (%s)", e.Name, ev.Index, ev.SourceType, w[0], w[1], route)
		}
		if ev.Event != e.Name || ev.Source != "dyad" || ev.Host != siemHost {
			t.Errorf("%s: event %v source %q host %q", e.Name, ev.Event, ev.Source, ev.Host)
		}
		if d := ev.Time - float64(e.Time.UnixNano())/1e9; d > 0.0005001 || d < -0.0005001 { // HEC time is in ms
			t.Errorf("%s: time %f, journal %v", e.Name, ev.Time, e.Time)
		}
		if ev.Fields["otel.log.severity.text"] != e.Severity || ev.Fields["otel.log.severity.number"] != siemSeverityNumber[e.Severity] {
			t.Errorf("%s: severity fields %v %v, journal %s", e.Name, ev.Fields["otel.log.severity.text"], ev.Fields["otel.log.severity.number"], e.Severity)
		}
		for _, kv := range e.Attrs {
			if got := ev.Fields[string(kv.Key)]; !siemSameJSON(got, kv.Value) {
				t.Errorf("%s: field %s = %v, journal %v", e.Name, kv.Key, got, kv.Value.Emit())
			}
		}
		for k, v := range map[string]string{"service.name": "dyad", "dyad.site": "bank-a", "service.version": "test"} {
			if e.Attr(k).Type() == attribute.INVALID && ev.Fields[k] != v { // a record attribute wins over the resource's
				t.Errorf("%s: resource field %s = %v, want %s", e.Name, k, ev.Fields[k], v)
			}
		}
	}
	if routed["security"] == 0 || routed["traffic"] != 2 {
		t.Errorf("routes: %v", routed)
	}
	names := map[string]bool{}
	for _, m := range metrics {
		if m.Index != "dyad_metrics" {
			t.Errorf("metric in index %q", m.Index)
		}
		for k := range m.Fields {
			if name, ok := strings.CutPrefix(k, "metric_name:"); ok {
				names[name] = true
			}
		}
	}
	if !names["dyad.streams"] || !names["dyad.tunnel.handshake.duration_count"] && !names["dyad.tunnel.handshake.duration_sum"] {
		t.Errorf("metrics at the HEC: %v", slices.Sorted(maps.Keys(names)))
	}
}

// siemES stands in for Elasticsearch 8: the root endpoint (the client's
// product check) and _bulk, with dynamic mapping's rule that a field is a
// value or an object in an index, never both: a document that breaks it
// is refused as Elasticsearch would.
type siemES struct {
	mu        sync.Mutex // guards the following
	docs      []siemESDoc
	kinds     map[string]map[string]string // index -> flattened path -> "value" or "object"
	conflicts []string
	requests  []string
}

type siemESDoc struct {
	index string
	flat  map[string]any // dotted paths to values
}

func (s *siemES) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Elastic-Product", "Elasticsearch")
	w.Header().Set("Content-Type", "application/json")
	s.mu.Lock()
	s.requests = append(s.requests, r.Method+" "+r.URL.Path)
	s.mu.Unlock()
	switch {
	case r.URL.Path == "/" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		io.WriteString(w, `{"name":"siem-test","cluster_name":"dyad-test","cluster_uuid":"siem","version":{"number":"8.17.0",`+
			`"build_flavor":"default","build_type":"docker","lucene_version":"9.12.0","minimum_wire_compatibility_version":"7.17.0",`+
			`"minimum_index_compatibility_version":"7.0.0"},"tagline":"You Know, for Search"}`)
	case strings.HasSuffix(r.URL.Path, "/_bulk") && r.Method == http.MethodPost:
		s.bulk(w, r)
	default:
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"error":{"type":"not_found"},"status":404}`)
	}
}

func (s *siemES) bulk(w http.ResponseWriter, r *http.Request) {
	body, err := siemBody(r)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	type item map[string]map[string]any
	var items []item
	errors := false
	dec := json.NewDecoder(bytes.NewReader(body))
	for dec.More() {
		var action map[string]map[string]any
		var doc map[string]any
		if err := dec.Decode(&action); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if err := dec.Decode(&doc); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for op, meta := range action {
			index, _ := meta["_index"].(string)
			flat := map[string]any{}
			kinds := map[string]string{}
			siemFlatten("", doc, flat, kinds)
			s.mu.Lock()
			conflict := s.checkMapping(index, kinds)
			if conflict == "" {
				s.docs = append(s.docs, siemESDoc{index: index, flat: flat})
			} else {
				s.conflicts = append(s.conflicts, conflict)
			}
			s.mu.Unlock()
			if conflict != "" {
				errors = true
				items = append(items, item{op: {"_index": index, "status": 400,
					"error": map[string]any{"type": "document_parsing_exception", "reason": conflict}}})
			} else {
				items = append(items, item{op: {"_index": index, "status": 201, "result": "created"}})
			}
		}
	}
	json.NewEncoder(w).Encode(map[string]any{"took": 1, "errors": errors, "items": items})
}

// checkMapping records the kind of every path of a document in index and
// returns the first conflict with earlier documents. Only logs-* data
// streams are checked: the metrics use the otel mapping mode, whose index
// templates keep dotted names flat (subobjects: false). Callers hold s.mu.
func (s *siemES) checkMapping(index string, kinds map[string]string) string {
	if !strings.HasPrefix(index, "logs-") {
		return ""
	}
	if s.kinds == nil {
		s.kinds = map[string]map[string]string{}
	}
	m := s.kinds[index]
	if m == nil {
		m = map[string]string{}
		s.kinds[index] = m
	}
	for p, k := range kinds {
		if old, ok := m[p]; ok && old != k {
			return fmt.Sprintf("[%s] %s is mapped as %s, the document has an %s", index, p, old, k)
		}
	}
	maps.Copy(m, kinds)
	return ""
}

// siemFlatten turns a JSON document into dotted paths, noting which paths
// are objects and which are values (a dotted key is an object path too,
// as Elasticsearch's default subobjects: true treats it).
func siemFlatten(prefix string, v any, flat map[string]any, kinds map[string]string) {
	obj, ok := v.(map[string]any)
	if !ok {
		flat[prefix] = v
		kinds[prefix] = "value"
		for i := strings.IndexByte(prefix, '.'); i >= 0; {
			kinds[prefix[:i]] = "object"
			j := strings.IndexByte(prefix[i+1:], '.')
			if j < 0 {
				break
			}
			i += 1 + j
		}
		return
	}
	for k, e := range obj {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		siemFlatten(p, e, flat, kinds)
	}
}

func (s *siemES) snapshot() []siemESDoc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.docs)
}

// siemESName is the name of an attribute in the Elasticsearch documents:
// elasticsearch.yaml renames the two that are also objects.
func siemESName(key string) string {
	switch key {
	case audit.KeyPeer, audit.KeyLimit:
		return key + ".name"
	}
	return key
}

// TestSIEMElasticsearch runs elasticsearch.yaml against a local
// Elasticsearch: every event lands once in the data stream of its route,
// with the catalogue's ECS event.* fields, ECS names for the resource, its
// attributes, no mapping conflict; dyad's metrics reach their data stream.
func TestSIEMElasticsearch(t *testing.T) {
	bin := siemBinary(t)
	es := &siemES{}
	addr := siemServe(t, es)
	col := siemStart(t, bin, []string{"ES_ENDPOINT=http://" + addr, "ES_API_KEY=dGVzdDp0ZXN0"}, "elasticsearch.yaml")
	d := siemNewDyad(t, "http://"+col.http, audit.ProtocolHTTP)
	start := time.Now()
	ents := d.emitAll(t)

	bySeq := map[int64][]siemESDoc{}
	var metricDocs []siemESDoc
	siemWait(t, "every event in Elasticsearch", func() bool {
		clear(bySeq)
		metricDocs = metricDocs[:0]
		for _, doc := range es.snapshot() {
			if strings.HasPrefix(doc.index, "metrics-") {
				metricDocs = append(metricDocs, doc)
			} else if seq, ok := doc.flat[audit.KeyJournalSeq].(float64); ok {
				bySeq[int64(seq)] = append(bySeq[int64(seq)], doc)
			}
		}
		es.mu.Lock()
		failed := len(es.conflicts) > 0
		es.mu.Unlock()
		return failed || len(bySeq) >= len(ents) && len(metricDocs) > 0
	})
	t.Logf("%d events in Elasticsearch %v after the flush", len(ents), time.Since(start).Round(10*time.Millisecond))
	es.mu.Lock()
	if len(es.conflicts) > 0 {
		t.Errorf("mapping conflicts: %q", es.conflicts)
	}
	es.mu.Unlock()
	for _, e := range ents {
		docs := bySeq[int64(e.Seq)]
		if len(docs) != 1 {
			t.Errorf("journal entry %d %s arrived %d times", e.Seq, e.Name, len(docs))
			continue
		}
		doc, spec := docs[0], audit.Catalog[slices.IndexFunc(audit.Catalog, func(s audit.Spec) bool { return s.Name == e.Name })]
		f := doc.flat
		if want := "logs-dyad." + siemRoute(e.Name) + "-default"; doc.index != want {
			t.Errorf("%s: data stream %q, want %q", e.Name, doc.index, want)
		}
		if f["data_stream.dataset"] != "dyad."+siemRoute(e.Name) || f["data_stream.type"] != "logs" {
			t.Errorf("%s: data_stream fields %v %v", e.Name, f["data_stream.type"], f["data_stream.dataset"])
		}
		ecs := map[string]any{"message": e.Name, "event.action": e.Name, "event.module": "dyad", "event.kind": spec.ECS.Kind,
			"event.outcome": spec.ECS.Outcome, "log.level": e.Severity, "event.severity": siemSeverityNumber[e.Severity],
			"service.name": "dyad", "host.hostname": siemHost, "dyad.site": "bank-a"}
		for k, v := range ecs {
			if f[k] != v {
				t.Errorf("%s: %s = %v, want %v", e.Name, k, f[k], v)
			}
		}
		for k, want := range map[string][]string{"event.category": spec.ECS.Category, "event.type": spec.ECS.Type} {
			if !siemSameJSON(f[k], attribute.StringSliceValue(want)) {
				t.Errorf("%s: %s = %v, want %v", e.Name, k, f[k], want)
			}
		}
		if _, ok := f["@timestamp"].(string); !ok {
			t.Errorf("%s: no @timestamp", e.Name)
		}
		for _, kv := range e.Attrs {
			if kv.Key == "service.version" { // the resource's service.version has the same name
				continue
			}
			if got := f[siemESName(string(kv.Key))]; !siemSameJSON(got, kv.Value) {
				t.Errorf("%s: %s = %v, journal %s = %v", e.Name, siemESName(string(kv.Key)), got, kv.Key, kv.Value.Emit())
			}
		}
	}
	for _, m := range metricDocs {
		if m.index != "metrics-dyad.otel-default" {
			t.Errorf("metric document in %q", m.index)
		}
	}
	var streams bool
	for _, m := range metricDocs {
		_, streams = m.flat["metrics.dyad.streams"]
		if streams {
			break
		}
	}
	if !streams {
		t.Errorf("no dyad.streams metric in %d metric documents", len(metricDocs))
	}
}

// siemS3 stands in for an S3-compatible store (path-style addressing):
// it keeps the objects PUT into a bucket.
type siemS3 struct {
	bucket string

	mu      sync.Mutex // guards objects
	objects map[string][]byte
	bad     []string
}

func (s *siemS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key, ok := strings.CutPrefix(r.URL.Path, "/"+s.bucket+"/")
	if r.Method != http.MethodPut || !ok || !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		s.mu.Lock()
		s.bad = append(s.bad, r.Method+" "+r.URL.String())
		s.mu.Unlock()
		w.WriteHeader(http.StatusForbidden)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err == nil && strings.Contains(r.Header.Get("Content-Encoding"), "aws-chunked") {
		body, err = siemAWSChunked(body)
	}
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	if s.objects == nil {
		s.objects = map[string][]byte{}
	}
	s.objects[key] = body
	s.mu.Unlock()
	w.Header().Set("ETag", `"siem"`)
}

// siemAWSChunked decodes an aws-chunked body (the AWS SDK's streaming
// checksum encoding): hex length lines, data, and trailers after 0.
func siemAWSChunked(b []byte) ([]byte, error) {
	var out []byte
	r := bufio.NewReader(bytes.NewReader(b))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		size, _, _ := strings.Cut(strings.TrimSpace(line), ";")
		n, err := strconv.ParseInt(size, 16, 64)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		chunk := make([]byte, n+2)
		if _, err := io.ReadFull(r, chunk); err != nil {
			return nil, err
		}
		out = append(out, chunk[:n]...)
	}
}

// siemOTLPRecords decodes OTLP JSON logs requests.
func siemOTLPRecords(t *testing.T, data []byte) []*logspb.LogRecord {
	t.Helper()
	var out []*logspb.LogRecord
	dec := json.NewDecoder(bytes.NewReader(data))
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			t.Fatalf("OTLP JSON: %v", err)
		}
		var req collogs.ExportLogsServiceRequest
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, &req); err != nil {
			t.Fatalf("OTLP JSON: %v", err)
		}
		for _, rl := range req.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				out = append(out, sl.LogRecords...)
			}
		}
	}
	return out
}

func siemProtoAttr(lr *logspb.LogRecord, key string) *commonpb.AnyValue {
	for _, kv := range lr.Attributes {
		if kv.Key == key {
			return kv.Value
		}
	}
	return nil
}

// siemCheckOTLP checks that records hold every journal entry once, as dyad
// exported it.
func siemCheckOTLP(t *testing.T, where string, recs []*logspb.LogRecord, ents []journal.Entry) {
	t.Helper()
	bySeq := map[int64][]*logspb.LogRecord{}
	for _, lr := range recs {
		bySeq[siemProtoAttr(lr, audit.KeyJournalSeq).GetIntValue()] = append(bySeq[siemProtoAttr(lr, audit.KeyJournalSeq).GetIntValue()], lr)
	}
	for _, e := range ents {
		got := bySeq[int64(e.Seq)]
		if len(got) == 0 {
			t.Errorf("%s: journal entry %d %s missing", where, e.Seq, e.Name)
			continue
		}
		lr := got[0]
		if lr.EventName != e.Name || lr.SeverityText != e.Severity || lr.TimeUnixNano != uint64(e.Time.UnixNano()) {
			t.Errorf("%s: entry %d: event %q %q %d, journal %q %q %d", where, e.Seq, lr.EventName, lr.SeverityText, lr.TimeUnixNano,
				e.Name, e.Severity, e.Time.UnixNano())
		}
		for _, kv := range e.Attrs {
			v := siemProtoAttr(lr, string(kv.Key))
			var got any
			switch {
			case v.GetArrayValue() != nil:
				var arr []any
				for _, x := range v.GetArrayValue().Values {
					arr = append(arr, x.GetStringValue())
				}
				got = arr
			case kv.Value.Type() == attribute.INT64:
				got = float64(v.GetIntValue())
			case kv.Value.Type() == attribute.FLOAT64:
				got = v.GetDoubleValue()
			case kv.Value.Type() == attribute.BOOL:
				got = v.GetBoolValue()
			default:
				got = v.GetStringValue()
			}
			if !siemSameJSON(got, kv.Value) {
				t.Errorf("%s: %s %s = %v, journal %v", where, e.Name, kv.Key, v, kv.Value.Emit())
			}
		}
	}
}

// siemZstdFrames reads the file exporter's compressed format: a 4-byte
// big-endian length, then that many bytes of one zstd frame, repeated.
func siemZstdFrames(b []byte) ([][]byte, error) {
	var frames [][]byte
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("%d bytes left, no length", len(b))
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(len(b)-4) < uint64(n) {
			return nil, fmt.Errorf("frame of %d bytes, %d left", n, len(b)-4)
		}
		frames = append(frames, b[4:4+n])
		b = b[4+n:]
	}
	return frames, nil
}

// TestSIEMArchive runs archive.yaml: the file exporter writes every event
// to a zstd-compressed file, and the S3 exporter uploads them, gzipped, to
// a local S3-compatible endpoint with path-style addressing.
func TestSIEMArchive(t *testing.T) {
	bin := siemBinary(t)
	s3 := &siemS3{bucket: "dyad-archive"}
	addr := siemServe(t, s3)
	dir := t.TempDir()
	col := siemStart(t, bin, []string{
		"ARCHIVE_DIR=" + dir, "ARCHIVE_BATCH_TIMEOUT=300ms", "OTELCOL_STORAGE_DIR=" + t.TempDir(),
		"S3_BUCKET=dyad-archive", "S3_ENDPOINT=http://" + addr, "S3_FORCE_PATH_STYLE=true", "S3_REGION=eu-central-1",
		"S3_FILE_PREFIX=col-0-", "AWS_ACCESS_KEY_ID=AKIDSIEMTEST", "AWS_SECRET_ACCESS_KEY=siem-test-secret",
		"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null",
	}, "archive.yaml")
	d := siemNewDyad(t, "http://"+col.grpc, audit.ProtocolGRPC)
	ents := d.emitAll(t)

	archive := filepath.Join(dir, "dyad-audit.otlp.zst")
	zstd, zstdErr := exec.LookPath("zstd")
	var fileRecs, s3Recs []*logspb.LogRecord
	var keys []string
	siemWait(t, "every event in the file and in S3", func() bool {
		fileRecs, s3Recs, keys = nil, nil, nil
		if b, err := os.ReadFile(archive); err == nil && zstdErr == nil {
			frames, err := siemZstdFrames(b)
			if err != nil {
				return false // a frame being written
			}
			for _, f := range frames {
				cmd := exec.Command(zstd, "-dc")
				cmd.Stdin = bytes.NewReader(f)
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("zstd -dc of a frame of %s: %v", archive, err)
				}
				fileRecs = append(fileRecs, siemOTLPRecords(t, out)...)
			}
		}
		s3.mu.Lock()
		objects := maps.Clone(s3.objects)
		s3.mu.Unlock()
		for k, v := range objects {
			keys = append(keys, k)
			zr, err := gzip.NewReader(bytes.NewReader(v))
			if err != nil {
				t.Fatalf("S3 object %s is not gzip: %v", k, err)
			}
			plain, err := io.ReadAll(zr)
			if err != nil {
				t.Fatalf("S3 object %s: %v", k, err)
			}
			s3Recs = append(s3Recs, siemOTLPRecords(t, plain)...)
		}
		return (zstdErr != nil || len(fileRecs) >= len(ents)) && len(s3Recs) >= len(ents)
	})
	if zstdErr != nil {
		b, err := os.ReadFile(archive)
		frames, ferr := siemZstdFrames(b)
		if err != nil || ferr != nil || len(frames) == 0 || !bytes.HasPrefix(frames[0], []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			t.Errorf("%s: %v %v, %d frames", archive, err, ferr, len(frames))
		}
		t.Logf("no zstd on PATH: %d zstd frames found in the archive file, not decompressed", len(frames))
	} else {
		siemCheckOTLP(t, "file", fileRecs, ents)
	}
	siemCheckOTLP(t, "S3", s3Recs, ents)
	sort.Strings(keys)
	for _, k := range keys {
		if !strings.HasPrefix(k, "dyad/audit/year=") || !strings.Contains(k, "/hour=") || !strings.Contains(k, "/col-0-logs_") || !strings.HasSuffix(k, ".json.gz") {
			t.Errorf("S3 key %q", k)
		}
	}
	s3.mu.Lock()
	if len(s3.bad) > 0 {
		t.Errorf("unexpected S3 requests: %q", s3.bad)
	}
	s3.mu.Unlock()
	if m, err := os.Stat(filepath.Join(dir, "dyad-metrics.otlp.jsonl")); err != nil || m.Size() == 0 {
		t.Errorf("metrics file: %v", err)
	}
	t.Logf("%d journal entries; %d records in the archive file, %d in S3 objects %q", len(ents), len(fileRecs), len(s3Recs), keys)
}

// TestSIEMForwardSurvivesCrash runs otlp-forward.yaml with its next hop
// down, kills the collector (SIGKILL) once the events are in its queue,
// starts it again with the next hop back, and finds every event delivered:
// the persistent queue is what makes that so.
func TestSIEMForwardSurvivesCrash(t *testing.T) {
	bin := siemBinary(t)
	next := audittest.StartGRPC(t)
	next.Stop()
	col := siemStart(t, bin, []string{
		"OTLP_FORWARD_ENDPOINT=" + strings.TrimPrefix(next.Endpoint(), "http://"),
		"OTLP_FORWARD_INSECURE=true", "OTELCOL_STORAGE_DIR=" + t.TempDir(),
	}, "otlp-forward.yaml")
	d := siemNewDyad(t, "http://"+col.http, audit.ProtocolHTTP)
	ents := d.emitAll(t)
	// The exporter retrying the logs batch means the batch is in the queue's
	// storage (a dispatched item stays there until it is delivered). The
	// queue size metric does not show it: it counts what waits, not what is
	// being retried.
	siemWait(t, "the exporter retrying the events", func() bool {
		for line := range strings.Lines(col.output()) {
			if strings.Contains(line, "Exporting failed. Will retry") && strings.Contains(line, `"otelcol.signal": "logs"`) {
				return true
			}
		}
		return false
	})
	col.stop(syscall.SIGKILL)
	next.Start(t)
	col.start(t)
	var got []audittest.Record
	siemWait(t, "every event at the next hop after the restart", func() bool {
		got = next.Records()
		seen := map[int64]bool{}
		for _, r := range got {
			seen[r.Attr(audit.KeyJournalSeq).GetIntValue()] = true
		}
		return len(seen) >= len(ents)
	})
	recs := make([]*logspb.LogRecord, len(got))
	for i, r := range got {
		recs[i] = r.Log
		if r.Resource["dyad.site"].GetStringValue() != "bank-a" || r.Scope != "github.com/dyad-tunnel/dyad/audit" {
			t.Errorf("record %d: resource %v scope %q", i, r.Resource, r.Scope)
		}
	}
	siemCheckOTLP(t, "next hop", recs, ents)
	t.Logf("%d events in the journal, %d records at the next hop after the crash (duplicates are allowed)", len(ents), len(got))
}

// TestSIEMReadmeTable keeps otel-collector/README.md's table of events and
// destinations equal to the catalogue and to the routes the collector
// tests check. It needs no collector.
func TestSIEMReadmeTable(t *testing.T) {
	b, err := os.ReadFile("otel-collector/README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	for line := range strings.Lines(string(b)) {
		cells := strings.Split(strings.TrimSpace(line), "|")
		if len(cells) == 6 && strings.HasPrefix(strings.TrimSpace(cells[1]), "`dyad.") {
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			rows[strings.Trim(cells[1], "`")] = cells[2:5]
		}
	}
	for _, s := range audit.Catalog {
		row, ok := rows[s.Name]
		if !ok {
			t.Errorf("otel-collector/README.md: no row for %s", s.Name)
			continue
		}
		route := siemRoute(s.Name)
		if !strings.HasPrefix(row[0], s.Severity.String()) || !strings.Contains(row[1], "`dyad_"+route+"`") ||
			row[2] != "`logs-dyad."+route+"-default`" {
			t.Errorf("otel-collector/README.md: %s row %q, want severity %s and route %s", s.Name, row, s.Severity, route)
		}
		delete(rows, s.Name)
	}
	for name := range rows {
		t.Errorf("otel-collector/README.md: %s is not in the catalogue", name)
	}
}
