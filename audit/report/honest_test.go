package report

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
)

// crashRun journals a daemon that is killed 10 minutes in (no
// daemon.stopped) with bank-b's tunnel up, restarts 75 s after its last
// entry (with a recovered entry), and later stops cleanly.
func crashRun(t *testing.T, dir string) *writer {
	w := newWriter(t, dir, 0)
	w.at(0, audit.ConfigLoaded, cfgAttrs("bank-b=SHA256:b2")...)
	w.at(time.Second, audit.DaemonStarted, started()...)
	w.at(2*time.Second, audit.TunnelEstablished, established("bank-b", "SHA256:b2")...)
	w.at(10*time.Minute, audit.StreamOpened, stream("", "payments", "bank-b", "inbound", 0)...)
	// kill -9 here: the last entry is at 10m.
	w.now = t0.Add(10*time.Minute + 75*time.Second)
	if _, err := w.j.Append(audit.JournalRecovered, "WARN", w.now, []attribute.KeyValue{
		kvs("dyad.journal.file", "dyad-audit-00000000000000000000.jsonl"), i64(AttrRecoveredEntries, 1),
		kvs(AttrLastEntryTime, t0.Add(10*time.Minute).Format(time.RFC3339Nano))}); err != nil {
		t.Fatal(err)
	}
	w.tally[audit.JournalRecovered]++
	w.at(10*time.Minute+75*time.Second, audit.ConfigLoaded, cfgAttrs("bank-b=SHA256:b2")...)
	w.at(10*time.Minute+76*time.Second, audit.DaemonStarted, started()...)
	w.at(10*time.Minute+78*time.Second, audit.TunnelEstablished, established("bank-b", "SHA256:b2")...)
	w.at(20*time.Minute, audit.TunnelClosed, closed("bank-b", "shutdown", 0, 0)...)
	w.at(20*time.Minute+time.Second, audit.DaemonStopped, kvs(audit.KeyReason, "signal"), f64(audit.KeyDuration, 600))
	w.close()
	return w
}

// TestReportCrashGap: the 75 s after a kill -9 are unknown, never uptime,
// and an incident candidate; the clean stop after it is no outage; the
// time after the journal's last entry is not counted at all.
func TestReportCrashGap(t *testing.T) {
	dir := t.TempDir()
	crashRun(t, dir)
	r, err := build(t, dir, t0, t0.Add(30*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	ev := r.Evidence
	expect(t, "unknown seconds", ev.Uptime.UnknownSeconds, 75.0)
	expect(t, "gaps", len(ev.Uptime.Gaps), 1)
	if len(ev.Uptime.Gaps) == 1 {
		g := ev.Uptime.Gaps[0]
		expect(t, "gap cause", g.Cause, GapUnclean)
		expect(t, "gap from", g.From, t0.Add(10*time.Minute))
		expect(t, "gap peers", strings.Join(g.Peers, ","), "bank-b")
	}
	expect(t, "stopped seconds (first start, restart, after the clean stop)", ev.Uptime.StoppedSeconds, 1.0+1+(10*time.Minute-time.Second).Seconds())
	var b PeerActivity
	for _, a := range ev.Tunnels {
		if a.Peer == "bank-b" {
			b = a
		}
	}
	expect(t, "bank-b up", b.UpSeconds, (10*time.Minute - 2*time.Second + 20*time.Minute - 10*time.Minute - 78*time.Second).Seconds())
	expect(t, "bank-b down (after the restart, until up again)", b.DownSeconds, 2.0)
	expect(t, "bank-b unknown", b.UnknownSeconds, 75.0)
	var kinds []string
	for _, in := range ev.Incidents {
		kinds = append(kinds, in.Kind)
	}
	expect(t, "incidents (the gap; not the clean stop, not the 2 s)", strings.Join(kinds, ","), "unclean_stop")
	expect(t, "unclean start in the lifecycle", len(ev.Lifecycle) == 3 && ev.Lifecycle[1].Unclean && !ev.Lifecycle[0].Unclean, true)
	for _, f := range []string{FormatHTML, FormatMarkdown} {
		var buf bytes.Buffer
		if err := r.Write(&buf, f); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(buf.String(), "unknown 1m15s") {
			t.Errorf("%s report does not show the 75 s as unknown", f)
		}
	}

	// With a threshold above the gap, it is unknown but no candidate.
	_, v := keys(t)
	r, _ = Build(Options{Journal: dir, Verifier: v, From: t0, To: t0.Add(30 * time.Minute), OutageMin: 2 * time.Minute})
	expect(t, "incidents with a 2-minute threshold", len(r.Evidence.Incidents), 0)
	expect(t, "unknown with a 2-minute threshold", r.Evidence.Uptime.UnknownSeconds, 75.0)
}

// TestReportTamperedEvidence: a report from a journal with one changed
// byte has no evidenced or mitigated row, every row says where its
// evidence stops, and nothing at or after the bad entry is quoted.
func TestReportTamperedEvidence(t *testing.T) {
	dir := t.TempDir()
	scenario(t, dir, 0)
	lines, _ := journalLines(t, dir)
	files, _ := journal.Files(dir)
	path := filepath.Join(dir, files[0])
	data, _ := os.ReadFile(path)
	at := bytes.Index(data, []byte(`"dyad.bytes.received":2005`))
	bad := bytes.Count(data[:at], []byte("\n"))
	data[at+len(`"dyad.bytes.received":`)] = '9'
	os.WriteFile(path, data, 0o600)
	r, _ := build(t, dir, t0, t0.Add(9*time.Hour))
	if r.Journal.EvidenceEnds == nil || *r.Journal.EvidenceEnds != uint64(bad) {
		t.Fatalf("evidence ends at %v, want entry %d", r.Journal.EvidenceEnds, bad)
	}
	for _, sec := range r.Sections {
		for _, row := range sec.Rows {
			if row.Status == Evidenced || row.Status == Mitigated {
				t.Errorf("%s is %s from a journal that does not verify", row.ID, row.Status)
			}
			if !strings.Contains(row.EvidenceStops, fmt.Sprintf("#%d", bad)) {
				t.Errorf("%s does not say its evidence stops at #%d: %q", row.ID, bad, row.EvidenceStops)
			}
		}
	}
	for _, c := range r.Citations {
		if c.Seq >= uint64(bad) || c.Entry != lines[c.Seq] {
			t.Errorf("citation #%d: at or after the bad entry #%d, or not the journal's line", c.Seq, bad)
		}
	}
	if r.Evidence.Uptime.UnknownSeconds <= 0 {
		t.Error("the time after the last good entry is not unknown")
	}
	var buf bytes.Buffer
	r.Write(&buf, FormatHTML)
	if strings.Contains(buf.String(), `class="status evidenced"`) || !strings.Contains(buf.String(), fmt.Sprintf("evidence stops before entry #%d", bad)) {
		t.Error("the HTML report shows an evidenced row or not where evidence stops")
	}
}

// TestReportReconciles: in one report of a scripted run every total adds
// up: the Tunnels table's streams and bytes are the sums of the Services
// rows per partner, the timeline and hourly buckets add up to the kinds'
// totals, the event counts to the period's entries, and each partner's
// up, down and unknown time stays within the period.
func TestReportReconciles(t *testing.T) {
	dir := t.TempDir()
	scenario(t, dir, 0)
	r, err := build(t, dir, t0, t0.Add(9*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ev := r.Evidence
	type sums struct{ streams, sent, recv int64 }
	per := map[string]*sums{}
	var all sums
	for _, u := range ev.Services {
		if per[u.Peer] == nil {
			per[u.Peer] = &sums{}
		}
		p := per[u.Peer]
		p.streams += int64(u.Streams)
		p.sent += u.ToPeer
		p.recv += u.FromPeer
		all.streams += int64(u.Streams)
		all.sent += u.ToPeer
		all.recv += u.FromPeer
	}
	span := 9 * 3600.0
	for _, a := range ev.Tunnels {
		p := per[a.Peer]
		if p == nil {
			p = &sums{}
		}
		if a.Streams != p.streams || a.BytesSent != p.sent || a.BytesReceived != p.recv {
			t.Errorf("%s: Tunnels %d streams, %d sent, %d received; Services %d, %d, %d", a.Peer, a.Streams, a.BytesSent, a.BytesReceived, p.streams, p.sent, p.recv)
		}
		if a.UpSeconds+a.DownSeconds+a.UnknownSeconds > span {
			t.Errorf("%s: up %v + down %v + unknown %v > the period", a.Peer, a.UpSeconds, a.DownSeconds, a.UnknownSeconds)
		}
	}
	expect(t, "streams opened = event count", all.streams, int64(ev.EventCounts[audit.StreamOpened]))
	u := ev.Uptime
	expect(t, "running + stopped + unknown = period", u.RunningSeconds+u.StoppedSeconds+u.UnknownSeconds, span)
	sum := 0
	for _, n := range ev.EventCounts {
		sum += n
	}
	expect(t, "event counts = period entries", sum, r.Period.Entries)
	kinds := func(bs []Bucket) map[string]int {
		m := map[string]int{}
		for _, b := range bs {
			for k, n := range b.Counts {
				m[k] += n
			}
		}
		return m
	}
	hourly, timeline := kinds(ev.Hourly), kinds(ev.Timeline.Buckets)
	for _, k := range Kinds {
		expect(t, "timeline = hourly for "+k, timeline[k], hourly[k])
	}
	expect(t, "streams in the timeline", timeline[KindStreams], ev.EventCounts[audit.StreamOpened])
	// The DORA transit row quotes the same totals.
	for _, sec := range r.Sections {
		for _, row := range sec.Rows {
			for _, f := range row.Evidence {
				if f.Label == "streams / bytes carried (sent, received)" {
					expect(t, "DORA transit figures", f.Value, fmt.Sprintf("%d / %s, %s", all.streams, Bytes(all.sent), Bytes(all.recv)))
				}
			}
		}
	}
}

// TestReportTimelineShortPeriod: a 5-minute period is drawn in buckets of
// seconds, not as one full-width bar per row.
func TestReportTimelineShortPeriod(t *testing.T) {
	dir := t.TempDir()
	scenario(t, dir, 0)
	r, err := build(t, dir, t0, t0.Add(5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if r.Evidence.Timeline.BucketSeconds > 1 {
		t.Errorf("bucket of %v s for a 5-minute period", r.Evidence.Timeline.BucketSeconds)
	}
	svg := timelineSVG(r)
	if !strings.Contains(svg, "Events per second") {
		t.Errorf("timeline title: %.200s", svg)
	}
	bars := 0
	for _, m := range regexp.MustCompile(`<rect x="[0-9.]+" y="[0-9.]+" width="([0-9.]+)" height="[0-9.]+" fill="(#[0-9a-f]+)"`).FindAllStringSubmatch(svg, -1) {
		if m[2] == "#afb8c1" {
			continue // the unknown stretch after the last entry (4 min) spans what it spans
		}
		w, _ := strconv.ParseFloat(m[1], 64)
		if w > plotW/10 {
			t.Errorf("a bar %v wide of %d: %s", w, plotW, m[0])
		}
		bars++
	}
	if bars < 10 {
		t.Errorf("%d bars for 20 seconds of streams", bars)
	}
}
