package audit_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/audittest"
	"github.com/dyad-tunnel/dyad/audit/journal"
)

var update = flag.Bool("update", false, "rewrite EVENTS.md from the catalogue")

// TestEventsDoc keeps EVENTS.md equal to what the catalogue says.
func TestEventsDoc(t *testing.T) {
	var b bytes.Buffer
	if err := audit.WriteCatalog(&b); err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("EVENTS.md", b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("EVENTS.md")
	if err != nil || !bytes.Equal(got, b.Bytes()) {
		t.Fatalf("EVENTS.md is not what the catalogue generates (%v); run go test ./audit -run TestEventsDoc -update", err)
	}
}

func TestCatalogueComplete(t *testing.T) {
	want := []string{"daemon.started", "daemon.stopped", "config.loaded", "config.reloaded", "config.rejected",
		"tunnel.established", "tunnel.closed", "peer.auth_refused", "stream.opened", "stream.closed", "policy.denied",
		"rate_limit.exceeded", "record.rejected", "key.updated", "journal.checkpoint", "export_dropped"}
	for _, w := range want {
		if _, ok := audit.SpecOf("dyad." + w); !ok && !strings.HasPrefix(w, "export") {
			t.Errorf("catalogue lacks dyad.%s", w)
		}
	}
	if _, ok := audit.SpecOf(audit.ExportDropped); !ok {
		t.Error("catalogue lacks export drops")
	}
	seen := map[string]bool{}
	for _, s := range audit.Catalog {
		if seen[s.Name] {
			t.Errorf("%s twice", s.Name)
		}
		seen[s.Name] = true
		if s.OCSF.ClassUID == 0 || s.ECS.Kind == "" || s.When == "" {
			t.Errorf("%s: mapping or description missing", s.Name)
		}
		for _, a := range s.Attrs {
			if a.Doc == "" || a.Type == "" {
				t.Errorf("%s: attribute %s undocumented", s.Name, a.Key)
			}
		}
	}
}

type rig struct {
	dir  string
	j    *journal.Journal
	a    *audit.Auditor
	x    *audit.Exporter
	ver  func() *journal.Result
	cps  chan journal.Entry
	recv *audittest.Receiver
}

func newRig(t *testing.T, recv *audittest.Receiver, xopts audit.ExportOptions) *rig {
	t.Helper()
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	signer, err := journal.NewSigner("dyad/site-a", key)
	if err != nil {
		t.Fatal(err)
	}
	verifier, _ := journal.NewVerifier("dyad/site-a", key.Public().(ed25519.PublicKey))
	r := &rig{dir: t.TempDir(), recv: recv}
	var a *audit.Auditor
	r.j, err = journal.Open(journal.Options{Dir: r.dir, Origin: "dyad/site-a", Signer: signer,
		OnCheckpoint: func(e journal.Entry) { a.OnCheckpoint(e) }})
	if err != nil {
		t.Fatal(err)
	}
	exp, err := audit.NewLogExporter(context.Background(), audit.OTLP{Endpoint: recv.Endpoint(), Protocol: recv.Protocol, Insecure: true,
		Headers: map[string]string{"X-Tenant": "bank-a"}})
	if err != nil {
		t.Fatal(err)
	}
	xopts.Protocol, xopts.Endpoint = recv.Protocol, recv.Endpoint()
	if xopts.BatchInterval == 0 {
		xopts.BatchInterval = 50 * time.Millisecond
	}
	r.x = audit.NewExporter(exp, xopts)
	res, _ := resource.New(context.Background(), resource.WithAttributes(
		attribute.String("service.name", "dyad"), attribute.String("service.version", "test"),
		attribute.String("service.instance.id", "SHA256:abc"), attribute.String("dyad.site", "site-a")))
	a = audit.New(audit.Options{Journal: r.j, Resource: res, Export: r.x, Console: zerolog.Nop(), SummaryInterval: 200 * time.Millisecond})
	r.a = a
	r.ver = func() *journal.Result {
		res, err := journal.Verify(r.dir, journal.VerifyOptions{Verifier: verifier})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		a.Close(ctx)
		r.j.Close()
	})
	return r
}

// entries reads the journal back.
func (r *rig) entries(t *testing.T) []journal.Entry {
	var out []journal.Entry
	if err := r.j.Flush(); err != nil {
		t.Fatal(err)
	}
	res := r.ver()
	if !res.OK() {
		t.Fatalf("journal does not verify: %v", res.Bad)
	}
	journal.Verify(r.dir, journal.VerifyOptions{Verifier: verifierOf(), Each: func(e *journal.Entry, _ []byte) error {
		out = append(out, *e)
		return nil
	}})
	return out
}

func verifierOf() interface {
	Name() string
	KeyHash() uint32
	Verify(msg, sig []byte) bool
} {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	v, _ := journal.NewVerifier("dyad/site-a", key.Public().(ed25519.PublicKey))
	return v
}

func otlpValue(v attribute.Value) *commonpb.AnyValue {
	switch v.Type() {
	case attribute.BOOL:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: v.AsBool()}}
	case attribute.INT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v.AsInt64()}}
	case attribute.FLOAT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: v.AsFloat64()}}
	case attribute.STRING:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v.AsString()}}
	}
	return nil
}

func sameValue(got *commonpb.AnyValue, want attribute.Value) bool {
	if want.Type() == attribute.STRINGSLICE {
		arr := got.GetArrayValue().GetValues()
		ss := want.AsStringSlice()
		if len(arr) != len(ss) {
			return false
		}
		for i := range ss {
			if arr[i].GetStringValue() != ss[i] {
				return false
			}
		}
		return true
	}
	return got.String() == otlpValue(want).String()
}

// TestExportEveryField sends one of every catalogue event through each OTLP
// protocol to a real receiver and checks every field of what arrives
// against the journal entry of the same event.
func TestExportEveryField(t *testing.T) {
	for _, start := range []func(testing.TB) *audittest.Receiver{audittest.StartGRPC, audittest.StartHTTP} {
		recv := start(t)
		t.Run(recv.Protocol, func(t *testing.T) {
			r := newRig(t, recv, audit.ExportOptions{})
			for _, s := range audit.Catalog {
				if !audit.JournalOwn(s.Name) { // the journal's own
					r.a.Emit(s.Name, audittest.Sample(s, nil)...)
				}
			}
			if err := r.j.Checkpoint(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := r.a.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			ents := r.entries(t)
			if err := recv.WaitFor(10*time.Second, func(rs []audittest.Record) bool { return len(rs) >= len(ents) }); err != nil {
				t.Fatal(err)
			}
			got := recv.Records()
			if len(got) != len(ents) {
				t.Fatalf("received %d records, journal has %d entries", len(got), len(ents))
			}
			bySeq := map[int64]audittest.Record{}
			for _, g := range got {
				bySeq[g.Attr(audit.KeyJournalSeq).GetIntValue()] = g
			}
			for _, e := range ents {
				g, ok := bySeq[int64(e.Seq)]
				if !ok {
					t.Fatalf("journal entry %d (%s) was not exported", e.Seq, e.Name)
				}
				spec, _ := audit.SpecOf(e.Name)
				if err := spec.Check(e.Attrs); err != nil {
					t.Errorf("journal entry %d: %v", e.Seq, err)
				}
				l := g.Log
				if l.EventName != e.Name || l.SeverityText != e.Severity || int(l.SeverityNumber) != map[string]int{"INFO": 9, "WARN": 13, "ERROR": 17}[e.Severity] {
					t.Errorf("entry %d: exported event %q severity %q/%d, journal %q %q", e.Seq, l.EventName, l.SeverityText, l.SeverityNumber, e.Name, e.Severity)
				}
				if l.TimeUnixNano != uint64(e.Time.UnixNano()) || l.Body.GetStringValue() != e.Name {
					t.Errorf("entry %d: time %d body %v, journal %d", e.Seq, l.TimeUnixNano, l.Body, e.Time.UnixNano())
				}
				if len(l.Attributes) != len(e.Attrs)+1 {
					t.Errorf("entry %d: %d attributes exported, journal has %d (+ %s)", e.Seq, len(l.Attributes), len(e.Attrs), audit.KeyJournalSeq)
				}
				for _, kv := range e.Attrs {
					if v := g.Attr(string(kv.Key)); v == nil || !sameValue(v, kv.Value) {
						t.Errorf("entry %d %s: attribute %s = %v, journal %v", e.Seq, e.Name, kv.Key, v, kv.Value.Emit())
					}
				}
				for k, want := range map[string]string{"service.name": "dyad", "service.version": "test", "service.instance.id": "SHA256:abc", "dyad.site": "site-a"} {
					if g.Resource[k].GetStringValue() != want {
						t.Errorf("resource %s = %v, want %s", k, g.Resource[k], want)
					}
				}
				if g.Scope != "github.com/dyad-tunnel/dyad/audit" {
					t.Errorf("scope %q", g.Scope)
				}
				for _, kv := range l.Attributes {
					if kv.Key == "event.name" {
						t.Errorf("deprecated event.name attribute sent")
					}
				}
			}
			if recv.Protocol == "http/protobuf" {
				if h := recv.Headers(); len(h) == 0 || h[0]["X-Tenant"][0] != "bank-a" {
					t.Errorf("configured header not sent: %v", h)
				}
			}
		})
	}
}

// TestCollectorOutage stops the receiver while events flow: Emit never
// blocks, the journal keeps everything, the failure and the drops are
// audited and counted exactly, and export resumes when the receiver is back.
func TestCollectorOutage(t *testing.T) {
	recv := audittest.StartGRPC(t)
	r := newRig(t, recv, audit.ExportOptions{QueueSize: 50, BatchSize: 10, Timeout: time.Second})
	emit := func(n int) {
		for i := range n {
			start := time.Now()
			r.a.Emit(audit.StreamOpened, attribute.String(audit.KeyPeer, "b"), attribute.String(audit.KeyService, "pay"),
				attribute.String(audit.KeyDirection, "inbound"), attribute.Int64(audit.KeyStreamID, int64(i)))
			if d := time.Since(start); d > 100*time.Millisecond {
				t.Fatalf("Emit blocked %v while the collector was down", d)
			}
		}
	}
	emit(20)
	if err := recv.WaitFor(5*time.Second, func(rs []audittest.Record) bool { return len(rs) >= 20 }); err != nil {
		t.Fatal(err)
	}
	recv.Stop()
	emit(300) // more than the queue holds
	time.Sleep(1500 * time.Millisecond)
	recv.Start(t)
	emit(20)
	// The retrying batch is delivered, the queue drains, and the summary
	// reports the drops.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, full, _ := r.x.Counts()
		got := recv.Records()
		if hasEvent(got, audit.ExportRecovered) && hasEvent(got, audit.ExportDropped) && full > 0 && r.x.QueueDepth() == 0 {
			break
		}
		if time.Now().After(deadline) {
			names := map[string]int{}
			for _, g := range got {
				names[g.Log.EventName]++
			}
			t.Logf("received: %v", names)
			jn := map[string]int{}
			for _, e := range r.entries(t) {
				jn[e.Name]++
			}
			t.Logf("journal: %v", jn)
			ex, _, fl := r.x.Counts()
			t.Fatalf("export did not recover: %d records, full=%d depth=%d exported=%d failed=%d", len(got), full, r.x.QueueDepth(), ex, fl)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.a.Flush(context.Background())
	ents := r.entries(t)
	exported, full, failed := r.x.Counts()
	// Every journal entry is either received or counted as dropped.
	received := map[int64]bool{}
	for _, g := range recv.Records() {
		received[g.Attr(audit.KeyJournalSeq).GetIntValue()] = true
	}
	missing := 0
	for _, e := range ents {
		if !received[int64(e.Seq)] {
			missing++
		}
	}
	if uint64(missing) != full+failed {
		t.Fatalf("%d journal entries never reached the collector, drop counters say %d (queue full %d, failed %d); exported %d",
			missing, full+failed, full, failed, exported)
	}
	var streams int
	for _, e := range ents {
		if e.Name == audit.StreamOpened {
			streams++
		}
	}
	if streams != 340 {
		t.Fatalf("journal has %d stream events, want all 340", streams)
	}
	if !hasEntry(ents, audit.ExportFailed) {
		t.Fatal("no dyad.audit.export_failed in the journal")
	}
	var reported int64
	for _, e := range ents {
		if e.Name == audit.ExportDropped {
			reported += e.Attr(audit.KeyQueueFull).AsInt64() + e.Attr(audit.KeyExportFailed).AsInt64()
		}
	}
	if uint64(reported) != full+failed {
		t.Fatalf("export_dropped events report %d drops, counters say %d", reported, full+failed)
	}
}

func hasEvent(rs []audittest.Record, name string) bool {
	for _, r := range rs {
		if r.Log.EventName == name {
			return true
		}
	}
	return false
}

func hasEntry(es []journal.Entry, name string) bool {
	for _, e := range es {
		if e.Name == name {
			return true
		}
	}
	return false
}

func TestRateLimitedEventsCounted(t *testing.T) {
	dir := t.TempDir()
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	signer, _ := journal.NewSigner("dyad/site-a", key)
	j, err := journal.Open(journal.Options{Dir: dir, Origin: "dyad/site-a", Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	a := audit.New(audit.Options{Journal: j, Console: zerolog.Nop(), Burst: 10, Rate: 1})
	for range 1000 {
		a.Emit(audit.PeerAuthRefused, attribute.String(audit.KeyPeerFingerprint, "SHA256:x"), attribute.String(audit.KeyPeerAddress, "127.0.0.9"),
			attribute.Int64(audit.KeyPeerPort, 4000), attribute.String(audit.KeyTransport, "quic"),
			attribute.String(audit.KeyDirection, "inbound"), attribute.String(audit.KeyReason, "unknown_key"))
	}
	a.Close(context.Background())
	j.Close()
	var written, suppressed int64
	journal.Verify(dir, journal.VerifyOptions{Verifier: verifierOf(), Each: func(e *journal.Entry, _ []byte) error {
		switch e.Name {
		case audit.PeerAuthRefused:
			written++
		case audit.EventsSuppressed:
			if e.Attr(audit.KeyEventName).AsString() == audit.PeerAuthRefused {
				suppressed += e.Attr(audit.KeyCount).AsInt64()
			}
		}
		return nil
	}})
	if written < 10 || written > 12 || written+suppressed != 1000 {
		t.Fatalf("written %d + suppressed %d, want 10-12 written and 1000 in all", written, suppressed)
	}
}

func TestOTLPValidate(t *testing.T) {
	for _, c := range []struct {
		o    audit.OTLP
		want string
	}{
		{audit.OTLP{Endpoint: "http://c:4317", Protocol: "grpc"}, "insecure: true"},
		{audit.OTLP{Endpoint: "https://c:4317", Protocol: "grpc", Insecure: true}, "choose one"},
		{audit.OTLP{Endpoint: "c:4317", Protocol: "grpc"}, "want a URL"},
		{audit.OTLP{Endpoint: "https://c:4317", Protocol: "thrift"}, "protocol"},
		{audit.OTLP{Endpoint: "https://c:4317", Protocol: "grpc", CAFile: "/nonexistent"}, "ca_file"},
		{audit.OTLP{Endpoint: "https://c:4317", Protocol: "grpc", CertFile: "x"}, "go together"},
	} {
		err := c.o.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error about %q", c.o, err, c.want)
		}
	}
	if err := (&audit.OTLP{Endpoint: "https://c:4318", Protocol: "http/protobuf"}).Validate(); err != nil {
		t.Error(err)
	}
	if e := (&audit.OTLP{Endpoint: "https://user:hunter2@c:4318"}).EndpointOrEnv(); strings.Contains(e, "hunter2") {
		t.Errorf("endpoint password shown: %s", e)
	}
}

// limitRig is an Auditor with a small rate limit writing to a journal.
type limitRig struct {
	dir string
	j   *journal.Journal
	a   *audit.Auditor
}

func newLimitRig(t *testing.T, opts audit.Options) *limitRig {
	t.Helper()
	r := &limitRig{dir: t.TempDir()}
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	signer, _ := journal.NewSigner("dyad/site-a", key)
	var err error
	if r.j, err = journal.Open(journal.Options{Dir: r.dir, Origin: "dyad/site-a", Signer: signer}); err != nil {
		t.Fatal(err)
	}
	opts.Journal, opts.Console = r.j, zerolog.Nop()
	r.a = audit.New(opts)
	return r
}

// tally closes the rig and returns, per event name and source, the entries
// written and the suppressed counts summarized.
func (r *limitRig) tally(t *testing.T) (written, suppressed map[string]int64) {
	t.Helper()
	r.a.Close(context.Background())
	r.j.Close()
	written, suppressed = map[string]int64{}, map[string]int64{}
	source := func(e *journal.Entry) string {
		switch {
		case e.Attr(audit.KeyOverflow).AsBool():
			return "overflow"
		case e.Attr(audit.KeyPeer).AsString() != "":
			return "peer " + e.Attr(audit.KeyPeer).AsString()
		}
		return e.Attr(audit.KeyPeerAddress).AsString()
	}
	_, err := journal.Verify(r.dir, journal.VerifyOptions{Verifier: verifierOf(), Each: func(e *journal.Entry, _ []byte) error {
		spec, _ := audit.SpecOf(e.Name)
		if err := spec.Check(e.Attrs); err != nil {
			t.Errorf("entry %d: %v", e.Seq, err)
		}
		if e.Name == audit.EventsSuppressed {
			suppressed[e.Attr(audit.KeyEventName).AsString()+" "+source(e)] += e.Attr(audit.KeyCount).AsInt64()
		} else {
			written[e.Name+" "+source(e)]++
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	return written, suppressed
}

func refused(a *audit.Auditor, addr string) {
	a.Emit(audit.PeerAuthRefused, attribute.String(audit.KeyPeerFingerprint, "SHA256:x"), attribute.String(audit.KeyPeerAddress, addr),
		attribute.Int64(audit.KeyPeerPort, 4000), attribute.String(audit.KeyTransport, "quic"),
		attribute.String(audit.KeyDirection, "inbound"), attribute.String(audit.KeyReason, "unknown_key"))
}

// TestRateLimitPerSource: a source that floods an event past its burst
// neither hides another source's events nor loses a count: the rate limit
// and the suppressed summary are per event and per source. THREATS P5.
func TestRateLimitPerSource(t *testing.T) {
	r := newLimitRig(t, audit.Options{Burst: 10, Rate: 0.001})
	for range 1000 {
		refused(r.a, "192.0.2.1")
	}
	refused(r.a, "192.0.2.2")
	for range 50 {
		r.a.Emit(audit.KeyUpdated, attribute.String(audit.KeyPeer, "noisy"), attribute.Int64(audit.KeyStreamID, 4),
			attribute.String(audit.KeyCodecDirection, "receive"), attribute.Int64(audit.KeyKeyGeneration, 1))
	}
	r.a.Emit(audit.KeyUpdated, attribute.String(audit.KeyPeer, "quiet"), attribute.Int64(audit.KeyStreamID, 4),
		attribute.String(audit.KeyCodecDirection, "receive"), attribute.Int64(audit.KeyKeyGeneration, 1))
	written, suppressed := r.tally(t)
	want := map[string][2]int64{ // written, suppressed
		audit.PeerAuthRefused + " 192.0.2.1": {10, 990},
		audit.PeerAuthRefused + " 192.0.2.2": {1, 0},
		audit.KeyUpdated + " peer noisy":     {10, 40},
		audit.KeyUpdated + " peer quiet":     {1, 0},
	}
	for k, w := range want {
		if written[k] != w[0] || suppressed[k] != w[1] {
			t.Errorf("%s: written %d, suppressed %d; want %d, %d", k, written[k], suppressed[k], w[0], w[1])
		}
	}
}

// TestRateLimitSourcesBounded: the sources tracked per event are bounded;
// further sources share one limit instead of evicting a tracked one, and
// every event is still written or counted. Peers keep their own limits
// whatever the number of addresses. THREATS P5.
func TestRateLimitSourcesBounded(t *testing.T) {
	r := newLimitRig(t, audit.Options{Burst: 2, Rate: 0.001, MaxSources: 4})
	for i := range 20 { // 20 addresses, 5 events each
		for range 5 {
			refused(r.a, fmt.Sprintf("192.0.2.%d", i))
		}
	}
	limited := func(peer string) {
		r.a.Emit(audit.RateLimitExceeded, attribute.String(audit.KeyPeer, peer), attribute.String(audit.KeyLimit, "streams_per_second"),
			attribute.String(audit.KeyScope, "peer"))
	}
	for i := range 10 { // listener limits of 10 addresses fill that event's address slots
		r.a.Emit(audit.RateLimitExceeded, attribute.String(audit.KeyLimit, "handshakes_per_second"),
			attribute.String(audit.KeyScope, "listener"), attribute.String(audit.KeyPeerAddress, fmt.Sprintf("198.51.100.%d", i)))
	}
	limited("a")
	written, suppressed := r.tally(t)
	var total int64
	for i := range 20 {
		k := fmt.Sprintf("%s 192.0.2.%d", audit.PeerAuthRefused, i)
		if i < 4 && (written[k] != 2 || suppressed[k] != 3) {
			t.Errorf("tracked %s: written %d, suppressed %d; want 2, 3", k, written[k], suppressed[k])
		}
		total += written[k] + suppressed[k]
	}
	over := audit.PeerAuthRefused + " overflow"
	if total+suppressed[over] != 100 || suppressed[over] != 16*5-2 {
		t.Errorf("tracked %d + overflow %d events, want 100 with %d in the overflow summary", total, suppressed[over], 16*5-2)
	}
	if k := audit.RateLimitExceeded + " peer a"; written[k] != 1 {
		t.Errorf("%s: written %d, want 1 despite the address flood", k, written[k])
	}
}

// TestAdmitRefusesWhenJournalFails: with audit.journal.on_failure: refuse,
// Admit refuses new work while the journal cannot be written and admits it
// again once the journal resumed; with continue it always admits. THREATS
// P7.
func TestAdmitRefusesWhenJournalFails(t *testing.T) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	signer, _ := journal.NewSigner("dyad/site-a", key)
	var failing atomic.Bool
	j, err := journal.Open(journal.Options{Dir: t.TempDir(), Origin: "dyad/site-a", Signer: signer, MaxFileBytes: 1 << 10,
		CommitInterval: 10 * time.Millisecond, OpenFile: journal.FullDisk(&failing)})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	refuse := audit.New(audit.Options{Journal: j, Console: zerolog.Nop(), RefuseWhenJournalFails: true})
	carryOn := audit.New(audit.Options{Journal: j, Console: zerolog.Nop()})
	defer refuse.Close(context.Background())
	defer carryOn.Close(context.Background())
	if err := refuse.Admit(); err != nil {
		t.Fatalf("healthy journal: %v", err)
	}
	failing.Store(true)
	for i := 0; i < 20 && j.Err() == nil; i++ {
		refuse.Emit(audit.ConfigLoaded, audittest.Sample(*mustSpec(t, audit.ConfigLoaded), nil)...)
	}
	if err := refuse.Admit(); !errors.Is(err, audit.ErrJournalUnavailable) {
		t.Fatalf("failed journal, refuse: Admit = %v", err)
	}
	if err := carryOn.Admit(); err != nil {
		t.Fatalf("failed journal, continue: Admit = %v", err)
	}
	failing.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for refuse.Admit() != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := refuse.Admit(); err != nil {
		t.Fatalf("resumed journal: Admit = %v", err)
	}
}

func mustSpec(t *testing.T, name string) *audit.Spec {
	s, ok := audit.SpecOf(name)
	if !ok {
		t.Fatal(name)
	}
	return s
}
