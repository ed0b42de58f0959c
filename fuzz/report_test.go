package fuzz

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/audit/report"
)

var reportEvents = []string{
	audit.TunnelEstablished, audit.TunnelClosed, audit.DaemonStarted, audit.DaemonStopped, audit.ConfigLoaded,
	audit.ConfigReloaded, audit.StreamOpened, audit.StreamClosed, audit.StreamFailed, audit.PolicyDenied,
	audit.PeerAuthRefused, audit.EventsSuppressed, audit.PacketsDropped, audit.RecordRejected, audit.KeyUpdated,
	audit.JournalRecovered, report.JournalBreak,
}

// FuzzReport: any sequence of events, in any order, with attributes of
// the wrong type or missing, makes a report without a panic, in every
// format, whose figures hold together: event counts add up to the
// period's entries, and no tunnel is up and down for longer than the
// period (THREATS P8).
func FuzzReport(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 6, 0, 1, 0, 7, 0, 1, 9, 1, 0, 90, 3, 0, 0, 30, 0})
	f.Add([]byte{2, 0, 0, 0, 0, 1, 1, 0, 2, 0, 5, 0, 0, 1, 1, 0, 3, 0, 1, 0, 10, 2, 200, 7, 11, 0, 1, 42})
	f.Add([]byte{4, 0, 0, 1, 0, 0, 1, 0, 5, 0, 9, 0, 1, 1, 1, 0, 1, 0, 1, 0})
	// started, tunnel up, a crash: recovered, config, started; a break.
	f.Add([]byte{2, 0, 1, 0, 0, 0, 1, 0, 15, 0, 90, 2, 4, 0, 1, 0, 2, 0, 1, 0, 16, 0, 5, 1, 2, 0, 1, 0})
	f.Fuzz(func(t *testing.T, program []byte) {
		if len(program) > 4*300 {
			return
		}
		dir := t.TempDir()
		s, _ := journal.NewSigner("dyad/fuzz", fuzzKey)
		t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		now := t0
		j, err := journal.Open(journal.Options{Dir: dir, Origin: "dyad/fuzz", Signer: s, CheckpointEvery: 7, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		appended, breaks := 0, 0
		for i := 0; i+4 <= len(program); i += 4 {
			op, peer, dt, arg := program[i], program[i+1], program[i+2], program[i+3]
			now = now.Add(time.Duration(dt) * time.Second)
			name := reportEvents[int(op)%len(reportEvents)]
			if _, err := j.Append(name, "INFO", now, fuzzAttrs(peer, arg)); err != nil {
				t.Fatal(err)
			}
			if name == report.JournalBreak {
				breaks++
			}
			appended++
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		if appended == 0 {
			return // no journal file at all: Build says so (not verified)
		}
		v, _ := journal.NewVerifier("dyad/fuzz", fuzzKey.Public().(ed25519.PublicKey))
		from := t0.Add(time.Duration(len(program)%50) * time.Second)
		to := now.Add(time.Second)
		if from.After(to) {
			from = t0
		}
		r, err := report.Build(report.Options{Journal: dir, Verifier: v, From: from, To: to, Now: to,
			Controls: report.Controls{Peers: []report.Peer{{Name: "p0", Critical: true}}, Services: []report.Service{{Name: "s0", Allow: []string{"p0"}}}}})
		if err != nil && !errors.Is(err, report.ErrNotVerified) {
			t.Fatal(err)
		}
		// A journal that records a break never verifies again (the break
		// says what was found at a start the operator let go on).
		if r.Journal.Verified != (breaks == 0) {
			t.Fatalf("a journal written by the journal package with %d break entries: verified %v (%s)", breaks, r.Journal.Verified, r.Journal.Problem)
		}
		sum := 0
		for _, n := range r.Evidence.EventCounts {
			sum += n
		}
		if sum != r.Period.Entries {
			t.Fatalf("event counts add up to %d, the period has %d entries", sum, r.Period.Entries)
		}
		span := to.Sub(from).Seconds()
		for _, a := range r.Evidence.Tunnels {
			if a.UpSeconds < 0 || a.DownSeconds < 0 || a.UnknownSeconds < 0 || a.UpSeconds+a.DownSeconds+a.UnknownSeconds > span+1e-6 {
				t.Fatalf("%s up %.0f s, down %.0f s, unknown %.0f s in a period of %.0f s", a.Peer, a.UpSeconds, a.DownSeconds, a.UnknownSeconds, span)
			}
		}
		if u := r.Evidence.Uptime; math.Abs(u.RunningSeconds+u.StoppedSeconds+u.UnknownSeconds-span) > 1e-3 {
			t.Fatalf("running %.3f + stopped %.3f + unknown %.3f s, the period is %.3f s", u.RunningSeconds, u.StoppedSeconds, u.UnknownSeconds, span)
		}
		if len(r.Journal.Breaks) > 0 {
			for _, sec := range r.Sections {
				for _, row := range sec.Rows {
					if row.Status == report.Evidenced || row.Status == report.Mitigated {
						t.Fatalf("%s is %s in a journal with a break", row.ID, row.Status)
					}
				}
			}
		}
		for _, format := range []string{report.FormatJSON, report.FormatMarkdown, report.FormatHTML} {
			if err := r.Write(&bytes.Buffer{}, format); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// fuzzAttrs makes plausible attributes, sometimes of the wrong type or
// missing.
func fuzzAttrs(peer, arg byte) []attribute.KeyValue {
	if arg%13 == 12 {
		return nil
	}
	p := fmt.Sprintf("p%d", peer%3)
	reasons := []string{"eof", "error", "shutdown", "unknown_key", "not_allowed", "no_tunnel", "auth", "idle_timeout"}
	r := reasons[int(arg)%len(reasons)]
	kv := []attribute.KeyValue{
		attribute.String(audit.KeyPeer, p), attribute.String(audit.KeyService, fmt.Sprintf("s%d", arg%2)),
		attribute.String(audit.KeyDirection, []string{"inbound", "outbound"}[arg%2]),
		attribute.String(audit.KeyReason, r), attribute.String(audit.KeyCloseReason, r),
		attribute.String(audit.KeyPeerAddress, fmt.Sprintf("192.0.2.%d", arg)), attribute.String(audit.KeyPeerFingerprint, fmt.Sprintf("SHA256:%d", arg%4)),
		attribute.String(audit.KeyEventName, audit.PeerAuthRefused), attribute.String(audit.KeyFingerprint, fmt.Sprintf("SHA256:own%d", arg%2)),
		attribute.String(report.AttrLastEntryTime, time.Date(2026, 1, 1, 0, 0, int(arg), 0, time.UTC).Format(time.RFC3339Nano)),
		attribute.Int64(report.AttrRecoveredEntries, int64(arg%5)),
		attribute.StringSlice(audit.KeyPeerKeys, []string{fmt.Sprintf("p0=SHA256:%d", arg%3), "p1=x"}[:1+int(arg)%2]),
	}
	if arg%7 == 3 { // wrong types
		return append(kv, attribute.String(audit.KeyBytesSent, "many"), attribute.Bool(audit.KeyCount, true), attribute.Int64(audit.KeyDuration, 5))
	}
	return append(kv, attribute.Int64(audit.KeyBytesSent, int64(arg)*1000), attribute.Int64(audit.KeyBytesReceived, int64(arg)),
		attribute.Int64(audit.KeyCount, int64(arg)), attribute.Float64(audit.KeyDuration, float64(arg)/3), attribute.Int64(audit.KeyStreams, 1))
}
