package report

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
)

const origin = "dyad/bank-a"

var t0 = time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)

func keys(t *testing.T) (note.Signer, note.Verifier) {
	t.Helper()
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, ed25519.SeedSize))
	s, err := journal.NewSigner(origin, key)
	if err != nil {
		t.Fatal(err)
	}
	v, err := journal.NewVerifier(origin, key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}

// writer appends crafted events and keeps its own tally, the count the
// report's figures are checked against.
type writer struct {
	t     *testing.T
	j     *journal.Journal
	now   time.Time
	tally map[string]int
}

func newWriter(t *testing.T, dir string, maxFile int64) *writer {
	s, _ := keys(t)
	w := &writer{t: t, tally: map[string]int{}, now: t0} // the genesis checkpoint falls in the period
	j, err := journal.Open(journal.Options{Dir: dir, Origin: origin, Signer: s, CheckpointEvery: 40,
		CheckpointInterval: time.Hour, MaxFileBytes: maxFile, Now: func() time.Time { return w.now }})
	if err != nil {
		t.Fatal(err)
	}
	w.j = j
	return w
}

func (w *writer) at(d time.Duration, name string, kv ...attribute.KeyValue) {
	w.t.Helper()
	w.now = t0.Add(d)
	spec, ok := audit.SpecOf(name)
	if !ok {
		w.t.Fatalf("%s is not in the catalogue", name)
	}
	if err := spec.Check(kv); err != nil {
		w.t.Fatalf("%s: %v", name, err)
	}
	if _, err := w.j.Append(name, spec.Severity.String(), w.now, kv); err != nil {
		w.t.Fatal(err)
	}
	w.tally[name]++
}

func (w *writer) close() {
	if err := w.j.Close(); err != nil {
		w.t.Fatal(err)
	}
}

var (
	kvs  = attribute.String
	i64  = attribute.Int64
	f64  = attribute.Float64
	strs = attribute.StringSlice
)

func cfgAttrs(keys ...string) []attribute.KeyValue {
	return []attribute.KeyValue{kvs(audit.KeyConfigPath, "/etc/dyad/dyad.yaml"), kvs(audit.KeyConfigSHA256, strings.Repeat("ab", 32)),
		strs(audit.KeyPeers, []string{"bank-b", "bank-c"}), strs(audit.KeyServices, []string{"payments"}), strs(audit.KeyForwards, []string{}),
		strs(audit.KeyPeerKeys, keys)}
}

func established(peer, fp string) []attribute.KeyValue {
	return []attribute.KeyValue{kvs(audit.KeyPeer, peer), kvs(audit.KeyPeerFingerprint, fp), kvs(audit.KeyPeerAddress, "192.0.2.7"),
		i64(audit.KeyPeerPort, 4433), kvs(audit.KeyTransport, "quic"), kvs(audit.KeyRole, "dialer"), kvs(audit.KeyTLSVersion, "1.3"),
		kvs(audit.KeyTLSCipher, "TLS_AES_128_GCM_SHA256"), kvs(audit.KeyTLSCurve, "X25519MLKEM768"), kvs(audit.KeyTLSNextProto, "dyad/1"),
		f64(audit.KeyDuration, 0.01)}
}

func closed(peer, reason string, sent, recv int64) []attribute.KeyValue {
	return []attribute.KeyValue{kvs(audit.KeyPeer, peer), kvs(audit.KeyPeerAddress, "192.0.2.7"), i64(audit.KeyPeerPort, 4433),
		kvs(audit.KeyTransport, "quic"), f64(audit.KeyDuration, 60), i64(audit.KeyBytesSent, sent), i64(audit.KeyBytesReceived, recv),
		i64(audit.KeyStreams, 1), kvs(audit.KeyCloseReason, reason)}
}

func started() []attribute.KeyValue {
	return []attribute.KeyValue{kvs(audit.KeyServiceVersion, "v1.0.0"), kvs(audit.KeyFingerprint, "SHA256:own"), attribute.Bool(audit.KeyFIPS, true),
		kvs(audit.KeyFIPSModule, "v1.0.0"), attribute.Bool(audit.KeyFIPSCertified, true), attribute.Bool(audit.KeyFIPSRequired, true),
		attribute.Bool(audit.KeyRequirePQ, true), kvs(audit.KeyIdentityCreated, "2026-01-02T03:04:05Z"),
		kvs(audit.KeyCodecSuite, "aes-256-gcm"), kvs(audit.KeyTLSCurve, "X25519MLKEM768"), kvs(audit.KeyServerAddress, "0.0.0.0"), i64(audit.KeyServerPort, 4433)}
}

func stream(name, svc, peer, dir string, id int64, extra ...attribute.KeyValue) []attribute.KeyValue {
	return append([]attribute.KeyValue{kvs(audit.KeyPeer, peer), kvs(audit.KeyService, svc), kvs(audit.KeyDirection, dir), i64(audit.KeyStreamID, id)}, extra...)
}

// scenario writes nine hours of a bank's journal: traffic, an attack
// burst, a tunnel outage, a key rotation, an export outage, a restart.
// Its expectations are the writer's own tally and the figures below.
func scenario(t *testing.T, dir string, maxFile int64) *writer {
	w := newWriter(t, dir, maxFile)
	w.at(0, audit.ConfigLoaded, cfgAttrs("bank-b=SHA256:b1", "bank-c=SHA256:c1")...)
	w.at(time.Second, audit.DaemonStarted, started()...)
	w.at(2*time.Second, audit.TunnelEstablished, established("bank-b", "SHA256:b1")...)
	w.at(3*time.Second, audit.TunnelEstablished, established("bank-c", "SHA256:c1")...)
	for i := range int64(20) {
		d := 10*time.Second + time.Duration(i)*time.Second
		w.at(d, audit.StreamOpened, stream(audit.StreamOpened, "payments", "bank-b", "inbound", i*4, kvs(audit.KeyServerAddress, "10.1.1.1"), i64(audit.KeyServerPort, 443))...)
		w.at(d+time.Millisecond, audit.StreamClosed, stream(audit.StreamClosed, "payments", "bank-b", "inbound", i*4,
			i64(audit.KeyBytesSent, 1000+i), i64(audit.KeyBytesReceived, 2000+i), f64(audit.KeyDuration, 0.001), kvs(audit.KeyCloseReason, "eof"))...)
	}
	for i := range int64(5) {
		reason := "eof"
		if i == 0 {
			reason = "truncated"
		}
		w.at(time.Minute+time.Duration(i)*time.Second, audit.StreamOpened, stream("", "statements", "bank-c", "inbound", i*4)...)
		w.at(time.Minute+time.Duration(i)*time.Second+time.Millisecond, audit.StreamClosed, stream("", "statements", "bank-c", "inbound", i*4,
			i64(audit.KeyBytesSent, 500), i64(audit.KeyBytesReceived, 100), f64(audit.KeyDuration, 0.001), kvs(audit.KeyCloseReason, reason))...)
	}
	for i := range int64(3) {
		w.at(2*time.Minute, audit.StreamOpened, stream("", "fx", "bank-b", "outbound", i*4+1, kvs(audit.KeyClientAddress, "127.0.0.1"), i64(audit.KeyClientPort, 50000))...)
		w.at(2*time.Minute, audit.StreamClosed, stream("", "fx", "bank-b", "outbound", i*4+1,
			i64(audit.KeyBytesSent, 10), i64(audit.KeyBytesReceived, 7000), f64(audit.KeyDuration, 0.001), kvs(audit.KeyCloseReason, "eof"))...)
	}
	for range 4 {
		w.at(3*time.Minute, audit.PolicyDenied, kvs(audit.KeyPeer, "bank-c"), kvs(audit.KeyService, "payments"), i64(audit.KeyStreamID, 9), kvs(audit.KeyReason, "not_allowed"))
	}
	for range 2 {
		w.at(3*time.Minute, audit.PolicyDenied, kvs(audit.KeyPeer, "bank-c"), kvs(audit.KeyService, "admin"), i64(audit.KeyStreamID, 9), kvs(audit.KeyReason, "unknown_service"))
	}
	for range 3 {
		w.at(4*time.Minute, audit.RecordRejected, kvs(audit.KeyPeer, "bank-b"), i64(audit.KeyStreamID, 13), kvs(audit.KeyReason, "auth"))
	}
	for range 2 {
		w.at(5*time.Minute, audit.KeyUpdated, kvs(audit.KeyPeer, "bank-b"), i64(audit.KeyStreamID, 1), kvs(audit.KeyCodecDirection, "send"), i64(audit.KeyKeyGeneration, 1))
	}
	// An attack burst: 150 unpaired handshakes from 30 addresses with 5
	// keys in two minutes, and 500 more the rate limiter only counted.
	for i := range 150 {
		w.at(time.Hour+time.Duration(i)*800*time.Millisecond, audit.PeerAuthRefused,
			kvs(audit.KeyPeerFingerprint, fmt.Sprintf("SHA256:evil%d", i%5)), kvs(audit.KeyPeerAddress, fmt.Sprintf("203.0.113.%d", i%30)),
			i64(audit.KeyPeerPort, 40000), kvs(audit.KeyTransport, "quic"), kvs(audit.KeyDirection, "inbound"), kvs(audit.KeyReason, "unknown_key"))
	}
	w.at(time.Hour+3*time.Minute, audit.EventsSuppressed, kvs(audit.KeyEventName, audit.PeerAuthRefused), i64(audit.KeyCount, 500), f64(audit.KeyWindow, 60))
	// A 5-minute outage of bank-b, during which 7 local connections fail.
	w.at(2*time.Hour, audit.TunnelClosed, closed("bank-b", "error", 100_000, 200_000)...)
	for range 7 {
		w.at(2*time.Hour+time.Minute, audit.StreamFailed, kvs(audit.KeyPeer, "bank-b"), kvs(audit.KeyService, "fx"), kvs(audit.KeyDirection, "outbound"), kvs(audit.KeyReason, "no_tunnel"))
	}
	w.at(2*time.Hour+5*time.Minute, audit.TunnelEstablished, established("bank-b", "SHA256:b1")...)
	// A 20-second idle gap of bank-c: an outage, too short to be a candidate.
	w.at(3*time.Hour, audit.TunnelClosed, closed("bank-c", "idle_timeout", 1, 2)...)
	w.at(3*time.Hour+20*time.Second, audit.TunnelEstablished, established("bank-c", "SHA256:c1")...)
	// bank-b's key rotated, bank-c removed (and its tunnel closed).
	w.at(4*time.Hour, audit.ConfigReloaded, cfgAttrs("bank-b=SHA256:b2")...)
	w.at(4*time.Hour+time.Second, audit.TunnelClosed, closed("bank-c", "shutdown", 3, 4)...)
	w.at(5*time.Hour, audit.ExportFailed, kvs(audit.KeyProtocol, "grpc"), kvs(audit.KeyServerAddress, "collector:4317"), kvs(audit.KeyError, "unavailable"))
	w.at(5*time.Hour+time.Minute, audit.ExportDropped, i64(audit.KeyQueueFull, 12), i64(audit.KeyExportFailed, 3), f64(audit.KeyWindow, 60))
	w.at(5*time.Hour+2*time.Minute, audit.ExportRecovered, kvs(audit.KeyProtocol, "grpc"), kvs(audit.KeyServerAddress, "collector:4317"), f64(audit.KeyDuration, 90))
	w.at(6*time.Hour, audit.PacketsDropped, kvs(audit.KeyReason, "unknown_connection_id"), i64(audit.KeyCount, 40), f64(audit.KeyWindow, 60))
	for range 2 {
		w.at(6*time.Hour+time.Minute, audit.RateLimitExceeded, kvs(audit.KeyPeer, "bank-b"), kvs(audit.KeyService, "payments"), kvs(audit.KeyLimit, "streams_per_second"), kvs(audit.KeyScope, "peer"))
	}
	w.at(7*time.Hour, audit.ConfigRejected, kvs(audit.KeyConfigPath, "/etc/dyad/dyad.yaml"), kvs(audit.KeyError, "dyad.yaml:3: listen: bad"), kvs(audit.KeyErrorType, "invalid_config"))
	// A clean restart: bank-b down from 8h-1s to 8h10m1s.
	w.at(8*time.Hour-time.Second, audit.TunnelClosed, closed("bank-b", "shutdown", 5, 6)...)
	w.at(8*time.Hour, audit.DaemonStopped, kvs(audit.KeyReason, "signal"), f64(audit.KeyDuration, 8*3600))
	w.at(8*time.Hour+10*time.Minute, audit.ConfigLoaded, cfgAttrs("bank-b=SHA256:b2")...)
	w.at(8*time.Hour+10*time.Minute, audit.DaemonStarted, started()...)
	w.at(8*time.Hour+10*time.Minute+time.Second, audit.TunnelEstablished, established("bank-b", "SHA256:b2")...)
	w.close()
	return w
}

func controls() Controls {
	return Controls{
		ConfigPath: "/etc/dyad/dyad.yaml", ConfigSHA256: strings.Repeat("ab", 32), Listen: "0.0.0.0:4433",
		Peers: []Peer{{Name: "bank-b", Fingerprint: "SHA256:b2", Endpoint: "b.example:4433", Country: "DE", Critical: true}},
		Services: []Service{
			{Name: "payments", Upstream: "10.1.1.1:443", Allow: []string{"bank-b"}, Critical: true},
			{Name: "statements", Upstream: "10.1.1.2:443", Allow: []string{"bank-b"}},
			{Name: "archive", Upstream: "10.1.1.3:443", Allow: []string{"bank-b"}},
		},
		Forwards: []Forward{{Listen: "127.0.0.1:9000", Peer: "bank-b", Service: "fx"}},
		Limits:   []Limit{{Name: "concurrent streams", Value: "16384", Scope: "per partner tunnel", Kind: "concurrency"}},
		Journal:  Journal{Dir: "audit", Fsync: "interval", MaxFileMB: 64, CheckpointEvery: 40, CheckpointInterval: "1h"},
	}
}

func build(t *testing.T, dir string, from, to time.Time) (*Report, error) {
	t.Helper()
	_, v := keys(t)
	return Build(Options{Journal: dir, Verifier: v, From: from, To: to, Now: t0.Add(24 * time.Hour),
		Daemon: Daemon{Site: "bank-a", Fingerprint: "SHA256:own", Suites: []string{"aes-256-gcm"}}, Controls: controls(), Generator: "test"})
}

// journalLines reads every line of the journal with plain encoding/json,
// independently of the journal package.
func journalLines(t *testing.T, dir string) (lines []string, names []string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "dyad-audit-*.jsonl"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e struct{ Name string }
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatal(err)
			}
			lines, names = append(lines, sc.Text()), append(names, e.Name)
		}
	}
	return lines, names
}

func expect[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// TestReportFigures checks the JSON report's figures against the tally
// kept while writing a rotated journal, and every proof it carries.
func TestReportFigures(t *testing.T) {
	dir := t.TempDir()
	w := scenario(t, dir, 16<<10)
	lines, names := journalLines(t, dir)
	if files, _ := journal.Files(dir); len(files) < 3 {
		t.Fatalf("%d journal files: the scenario should rotate", len(files))
	}
	r, err := build(t, dir, t0, t0.Add(9*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// Round trip through JSON: the figures a reader of the file sees.
	var buf bytes.Buffer
	if err := r.Write(&buf, FormatJSON); err != nil {
		t.Fatal(err)
	}
	var got Report
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	ev := got.Evidence
	checkpoints := 0
	for _, n := range names {
		if n == journal.CheckpointEvent {
			checkpoints++
		}
	}
	for name, n := range w.tally {
		expect(t, "count of "+name, ev.EventCounts[name], n)
	}
	expect(t, "checkpoints", ev.AuditPath.Checkpoints, checkpoints)
	expect(t, "period entries", got.Period.Entries, len(lines))
	expect(t, "verified", got.Journal.Verified, true)
	expect(t, "journal entries", got.Journal.Entries, uint64(len(lines)))

	ref := ev.Refusals
	expect(t, "handshakes refused", ref.Handshakes, 150)
	expect(t, "handshakes suppressed", ref.HandshakesSuppressed, 500)
	expect(t, "distinct sources", ref.DistinctSources, 30)
	expect(t, "distinct keys", ref.DistinctFingerprints, 5)
	expect(t, "top source count", ref.Sources[0].Count, int64(5))
	expect(t, "records auth", ref.Records["auth"], 3)
	expect(t, "quic drops", ref.QUICDrops["unknown_connection_id"], 40)
	expect(t, "policy list", list(ref.Policy), "bank-c → payments: not_allowed (4); bank-c → admin: unknown_service (2)")
	expect(t, "rate limits", list(ref.RateLimits), "bank-b/payments: streams_per_second (2)")

	tun := map[string]PeerActivity{}
	for _, a := range ev.Tunnels {
		tun[a.Peer] = a
	}
	b, c := tun["bank-b"], tun["bank-c"]
	expect(t, "bank-b established", b.Established, 3)
	expect(t, "bank-b outages", b.Outages, 2)
	// 5 minutes, and 1 s after the restart; the clean stop is no outage.
	expect(t, "bank-b down seconds", b.DownSeconds, 300.0+1)
	// Up until the clean stop, then to the last evidence (8h10m1s), not
	// to the period's end: the rest is unknown.
	wantUp := (2*time.Hour - 2*time.Second + (8*time.Hour - time.Second - 2*time.Hour - 5*time.Minute)).Seconds()
	expect(t, "bank-b up seconds", b.UpSeconds, wantUp)
	expect(t, "bank-b unknown seconds", b.UnknownSeconds, (50*time.Minute - time.Second).Seconds())
	expect(t, "daemon running / stopped / unknown", fmt.Sprint(ev.Uptime.RunningSeconds, ev.Uptime.StoppedSeconds, ev.Uptime.UnknownSeconds), "28800 601 2999")
	expect(t, "bank-b bytes sent (its streams)", b.BytesSent, int64(20*1000+190+3*10))
	expect(t, "bank-c outages (the removal is not one)", c.Outages, 1)
	expect(t, "bank-c down seconds", c.DownSeconds, 20.0)

	uses := map[string]ServiceUse{}
	for _, u := range ev.Services {
		uses[u.Service+"/"+u.Peer+"/"+u.Direction] = u
	}
	pay := uses["payments/bank-b/inbound"]
	expect(t, "payments streams", pay.Streams, 20)
	expect(t, "payments bytes from peer", pay.FromPeer, int64(20*2000+190))
	expect(t, "payments bytes to peer", pay.ToPeer, int64(20*1000+190))
	expect(t, "statements truncated", uses["statements/bank-c/inbound"].Closed["truncated"], 1)
	expect(t, "payments denied to bank-c", uses["payments/bank-c/inbound"].Denied["not_allowed"], 4)
	expect(t, "fx failures", uses["fx/bank-b/outbound"].Failed["no_tunnel"], 7)
	expect(t, "fx received", uses["fx/bank-b/outbound"].FromPeer, int64(21000))
	expect(t, "unused", strings.Join(ev.Unused, ","), "archive")

	expect(t, "record key updates", ev.Keys.RecordKeyUpdates, 2)
	expect(t, "session keys", ev.Keys.SessionKeys, 5)
	var changes []string
	for _, k := range ev.Keys.Changes {
		changes = append(changes, k.Peer+" "+k.Change)
	}
	expect(t, "key changes", strings.Join(changes, ", "), "bank-b pinned, bank-c pinned, bank-b rotated, bank-c removed")
	expect(t, "export", fmt.Sprint(ev.AuditPath.ExportFailures, ev.AuditPath.ExportRecoveries, ev.AuditPath.ExportDownSeconds, ev.AuditPath.DroppedQueueFull, ev.AuditPath.DroppedExportFailed), "1 1 90 12 3")
	expect(t, "lifecycle steps", len(ev.Lifecycle), 3)

	// Incident candidates: the burst, the 5-minute outage, the restart.
	var kinds []string
	for _, in := range ev.Incidents {
		kinds = append(kinds, in.Kind)
	}
	expect(t, "incidents", strings.Join(kinds, ","), "attack_burst,tunnel_outage")
	if len(ev.Incidents) == 2 {
		burst, out := ev.Incidents[0], ev.Incidents[1]
		expect(t, "burst start", burst.Start, t0.Add(time.Hour))
		if !strings.HasPrefix(burst.Summary, "650 refusals") {
			t.Errorf("burst summary %q", burst.Summary)
		}
		expect(t, "outage length", out.End.Sub(out.Start), 5*time.Minute)
		expect(t, "outage critical", out.Critical, true)
		if !strings.Contains(out.Criteria[0].Evidence, "7 forwarded connections refused") || !strings.Contains(out.Criteria[3].Evidence, "DE") {
			t.Errorf("outage criteria: %+v", out.Criteria)
		}
	}
	reg := ev.Register
	expect(t, "register rows", len(reg), 2)
	expect(t, "register bank-b", fmt.Sprintf("%s %s %v %v %v", reg[0].Peer, reg[0].Country, reg[0].Critical, reg[0].Exports, reg[0].Imports), "bank-b DE true [payments statements archive] [fx]")
	expect(t, "register bank-c configured", reg[1].Configured, false)

	// Statuses that must stay honest.
	status := map[string]Status{}
	for _, s := range got.Sections {
		for _, row := range s.Rows {
			status[row.ID] = row.Status
		}
	}
	for id, want := range map[string]Status{"API1:2023": NotCovered, "API2:2023": Mitigated, "API3:2023": NotCovered, "API4:2023": Partly,
		"API5:2023": Partly, "API6:2023": NotCovered, "API7:2023": NotCovered, "API8:2023": Partly, "API9:2023": Partly, "API10:2023": Partly} {
		expect(t, id, status[id], want)
	}
	expect(t, "daemon version from the journal", got.Daemon.Version, "v1.0.0")
	expect(t, "FIPS from the journal", got.Daemon.FIPS, true)

	checkProofs(t, &got, lines)
}

// checkProofs checks that every cited entry is quoted exactly and that
// its inclusion proof, and the consistency proof, check against the
// signed checkpoint.
func checkProofs(t *testing.T, r *Report, lines []string) {
	t.Helper()
	cp := r.Journal.Checkpoint
	if cp == nil {
		t.Fatal("no checkpoint")
	}
	_, v := keys(t)
	signed, err := journal.OpenCheckpoint(cp.Note, v)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, "checkpoint root", base64.StdEncoding.EncodeToString(signed.Root[:]), cp.Root)
	if len(r.Citations) < 10 {
		t.Fatalf("only %d citations", len(r.Citations))
	}
	proved := 0
	for _, c := range r.Citations {
		if c.Entry != lines[c.Seq] {
			t.Errorf("citation #%d does not quote the journal line", c.Seq)
		}
		if c.ProofNote != "" {
			if int64(c.Seq) < cp.Size {
				t.Errorf("#%d is under the checkpoint but has no proof", c.Seq)
			}
			continue
		}
		proof := decode(t, c.Proof)
		if err := tlog.CheckRecord(tlog.RecordProof(proof), signed.Size, signed.Root, int64(c.Seq), tlog.RecordHash([]byte(c.Entry))); err != nil {
			t.Errorf("#%d: %v", c.Seq, err)
		}
		forged := strings.Replace(c.Entry, `"dyad.peer":"bank-b"`, `"dyad.peer":"bank-x"`, 1)
		if forged != c.Entry && tlog.CheckRecord(tlog.RecordProof(proof), signed.Size, signed.Root, int64(c.Seq), tlog.RecordHash([]byte(forged))) == nil {
			t.Errorf("#%d: the proof checks for a changed entry", c.Seq)
		}
		proved++
	}
	if proved == 0 {
		t.Error("no citation carries a proof")
	}
	if c := r.Journal.Consistency; c != nil {
		var old tlog.Hash
		raw, _ := base64.StdEncoding.DecodeString(c.From.Root)
		copy(old[:], raw)
		if err := tlog.CheckTree(tlog.TreeProof(decode(t, c.Proof)), signed.Size, signed.Root, c.From.Size, old); err != nil {
			t.Errorf("consistency %d → %d: %v", c.From.Size, signed.Size, err)
		}
	} else {
		t.Error("no consistency proof")
	}
}

func decode(t *testing.T, hs []string) []tlog.Hash {
	out := make([]tlog.Hash, len(hs))
	for i, h := range hs {
		raw, err := base64.StdEncoding.DecodeString(h)
		if err != nil || len(raw) != 32 {
			t.Fatalf("proof hash %q", h)
		}
		copy(out[i][:], raw)
	}
	return out
}

// TestReportPeriod: entries before the period are not counted, but the
// state they leave (a tunnel up since before) is.
func TestReportPeriod(t *testing.T) {
	dir := t.TempDir()
	scenario(t, dir, 0)
	r, err := build(t, dir, t0.Add(2*time.Hour+10*time.Minute), t0.Add(9*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ev := r.Evidence
	expect(t, "handshakes in period", ev.Refusals.Handshakes, 0)
	expect(t, "config reloads", ev.EventCounts[audit.ConfigReloaded], 1)
	for _, a := range ev.Tunnels {
		if a.Peer == "bank-b" {
			want := (8*time.Hour - time.Second - 2*time.Hour - 10*time.Minute).Seconds()
			expect(t, "bank-b up seconds", a.UpSeconds, want)
			expect(t, "bank-b established", a.Established, 1)
		}
	}
	expect(t, "incidents", len(ev.Incidents), 0)

	// An empty period after everything: nothing counted, and nothing known:
	// the journal's last entry is hours before, so bank-b is neither up
	// nor down but unknown.
	r, err = build(t, dir, t0.Add(20*time.Hour), t0.Add(21*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	expect(t, "empty period entries", r.Period.Entries, 0)
	expect(t, "empty period incidents", len(r.Evidence.Incidents), 0)
	for _, a := range r.Evidence.Tunnels {
		if a.Peer == "bank-b" {
			expect(t, "bank-b up in the empty period", a.UpSeconds, 0.0)
			expect(t, "bank-b unknown in the empty period", a.UnknownSeconds, 3600.0)
		}
	}
	for _, f := range []string{FormatHTML, FormatMarkdown} {
		var buf bytes.Buffer
		if err := r.Write(&buf, f); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(buf.String(), "None in the period") {
			t.Errorf("%s: an empty period should say there are no incident candidates", f)
		}
	}
}

// TestReportTampered: a changed entry makes Build return the report with
// ErrNotVerified, and the report's header says where.
func TestReportTampered(t *testing.T) {
	dir := t.TempDir()
	scenario(t, dir, 0)
	files, _ := journal.Files(dir)
	path := filepath.Join(dir, files[0])
	data, _ := os.ReadFile(path)
	edited := bytes.Replace(data, []byte(`"dyad.bytes.received":2005`), []byte(`"dyad.bytes.received":9005`), 1)
	if bytes.Equal(edited, data) {
		t.Fatal("nothing to edit")
	}
	line := bytes.Count(data[:bytes.Index(data, []byte(`"dyad.bytes.received":2005`))], []byte("\n"))
	os.WriteFile(path, edited, 0o600)
	r, err := build(t, dir, time.Time{}, t0.Add(9*time.Hour))
	if !errors.Is(err, ErrNotVerified) || r == nil {
		t.Fatalf("tampered journal: %v", err)
	}
	if r.Journal.Verified || !strings.Contains(r.Journal.Problem, fmt.Sprintf("entry %d", line)) {
		t.Errorf("verdict %q does not name entry %d", r.Journal.Problem, line)
	}
	if r.Period.Entries != line {
		t.Errorf("evidence covers %d entries, want the %d before the bad one", r.Period.Entries, line)
	}
	for _, f := range []string{FormatHTML, FormatMarkdown} {
		var buf bytes.Buffer
		r.Write(&buf, f)
		if !strings.Contains(buf.String(), "does NOT verify") {
			t.Errorf("%s report does not say the journal fails verification", f)
		}
	}
}

// TestReportFormats: every format renders every section.
func TestReportFormats(t *testing.T) {
	dir := t.TempDir()
	scenario(t, dir, 0)
	r, err := build(t, dir, t0, t0.Add(9*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"API1:2023", "API10:2023", "DORA Art. 28(3)", "RTS 2024/1774 Art. 7", "Incident candidates", "I-2", "Register of partner links", "Cited journal entries"}
	for _, f := range []string{FormatHTML, FormatMarkdown, FormatJSON} {
		var buf bytes.Buffer
		if err := r.Write(&buf, f); err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if f == FormatJSON {
				break
			}
			if !strings.Contains(buf.String(), w) {
				t.Errorf("%s report lacks %q", f, w)
			}
		}
		if f == FormatHTML {
			html := strings.ReplaceAll(buf.String(), `xmlns="http://www.w3.org/2000/svg"`, "")
			for _, bad := range []string{"<script", "http://", "src=", "href=", "url(", "@import"} {
				if strings.Contains(html, bad) {
					t.Errorf("the HTML report contains %q: it must fetch and run nothing", bad)
				}
			}
			if strings.Count(html, "<svg") != 2 {
				t.Errorf("%d charts, want 2", strings.Count(html, "<svg"))
			}
		}
	}
	if err := r.Write(&bytes.Buffer{}, "pdf"); err == nil {
		t.Error("an unknown format gave no error")
	}
	if _, err := Build(Options{Journal: dir, From: t0.Add(time.Hour), To: t0}); err == nil {
		t.Error("a period ending before it starts gave no error")
	}
}
