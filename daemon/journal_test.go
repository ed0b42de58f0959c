package daemon_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// auditVerify runs `dyad audit verify --config` on s and returns its output
// and exit code.
func auditVerify(t *testing.T, configPath string) (string, int) {
	t.Helper()
	return runDyad(t, "audit", "verify", "--config", configPath)
}

// TestKillNineKeepsStreams: N requests, then kill -9 of the exporter right
// after the last response: its journal holds every one of those streams,
// and its restart adopts the unsigned tail with one dyad.journal.recovered
// entry, after which `dyad audit verify` passes. THREATS P7.
func TestKillNineKeepsStreams(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	_, b, local := twoSites(t, echo)
	const n = 20
	for i := range n {
		c, err := net.Dial("tcp", local)
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte(fmt.Sprintf("ping %02d", i))
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("request %d: %q, %v", i, got, err)
		}
	}
	b.Kill()
	es, res, err := b.Journal()
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Fatalf("journal after kill -9: %v", res.Bad)
	}
	count := map[string]int{}
	for _, e := range es {
		if e.Attr(audit.KeyService).AsString() == "echo" {
			count[e.Name]++
		}
	}
	// Every stream's opening was acknowledged before B answered; the last
	// stream's close may come after its response reached the client, so at
	// most that one can be missing (and then the journal says it was open).
	if count[audit.StreamOpened] != n || count[audit.StreamClosed] < n-1 {
		t.Fatalf("after kill -9 right after %d requests, B's journal has %d stream.opened and %d stream.closed (%d entries, %d unsigned)",
			n, count[audit.StreamOpened], count[audit.StreamClosed], res.Entries, res.After)
	}
	if err := b.StartReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := b.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	es, res, err = b.Journal()
	if err != nil || !res.OK() {
		t.Fatalf("journal after restart: %v %v", err, res.Bad)
	}
	var rec []journal.Entry
	for _, e := range es {
		if e.Name == audit.JournalRecovered {
			rec = append(rec, e)
		}
	}
	if len(rec) != 1 || rec[0].Attr(journal.AttrRecoveredEntries).AsInt64() < int64(2*n-1) {
		t.Fatalf("recovery entries %v, want one adopting at least %d entries", rec, 2*n-1)
	}
	if out, code := auditVerify(t, b.ConfigPath()); code != 0 {
		t.Fatalf("dyad audit verify after the recovery: exit %d\n%s", code, out)
	}
}

// rewriteJournal is the attack on a stopped daemon's journal: drop every
// checkpoint, edit the entry named name, renumber, rebuild the chain.
func rewriteJournal(t *testing.T, dir, name string, edit func(journal.Entry) journal.Entry) {
	t.Helper()
	files, err := journal.Files(dir)
	if err != nil {
		t.Fatal(err)
	}
	var es []journal.Entry
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		for l := range bytes.Lines(data) {
			e, err := journal.Decode(bytes.TrimSuffix(l, []byte("\n")))
			if err != nil {
				t.Fatal(err)
			}
			if e.Name == journal.CheckpointEvent {
				continue
			}
			if e.Name == name {
				e = edit(e)
			}
			es = append(es, e)
		}
		os.Remove(filepath.Join(dir, f))
	}
	var data []byte
	var prev [32]byte
	for i := range es {
		es[i].Seq, es[i].Prev = uint64(i), prev
		start := len(data)
		data = es[i].AppendEncode(data)
		prev = journal.Hash(data[start:])
		data = append(data, '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, files[0]), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRewrittenJournalRefused: the rewrite of a stopped daemon's journal
// (checkpoints dropped, an entry edited, renumbered and rechained) fails
// `dyad audit verify`, and the daemon refuses to start over it, naming the
// entry, instead of signing the forgery. With on_broken: continue it
// starts, and verify reports the break. THREATS P7.
func TestRewrittenJournalRefused(t *testing.T) {
	s := newSite(t, t.TempDir(), "solo")
	if err := s.StartReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.Dir, "audit")
	rewriteJournal(t, dir, audit.DaemonStarted, func(e journal.Entry) journal.Entry {
		e.Attrs = append(e.Attrs, attribute.String("forged", "yes"))
		return e
	})
	out, code := auditVerify(t, s.ConfigPath())
	if code != 1 || !strings.Contains(out, "no signed checkpoint") || !strings.Contains(out, "entry 0") {
		t.Fatalf("verify of the rewritten journal: exit %d\n%s", code, out)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	err := s.Wait(10 * time.Second)
	if err == nil || !strings.Contains(s.Logs(), "does not verify") || !strings.Contains(s.Logs(), "entry 0: the journal has") {
		t.Fatalf("daemon over a rewritten journal: %v\n%s", err, s.Logs())
	}
	if files, _ := journal.Files(dir); len(files) != 1 {
		t.Fatalf("the refused start wrote files: %v", files)
	}
	// The operator's explicit choice: start, with a signed break.
	s.Config.Audit.Journal.OnBroken = "continue"
	start(t, s)
	if err := s.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	out, code = auditVerify(t, s.ConfigPath())
	if code != 1 || !strings.Contains(out, "BREAK:") || !strings.Contains(out, "found entry 0 bad") {
		t.Fatalf("verify after a start over the break: exit %d\n%s", code, out)
	}
}

// TestTwoDaemonsOneJournal: a second daemon configured with the journal of
// a running one refuses to start and names the holder. THREATS P7.
func TestTwoDaemonsOneJournal(t *testing.T) {
	root := t.TempDir()
	a, b := newSite(t, root, "one"), newSite(t, root, "two")
	start(t, a)
	b.Config.Audit.Journal.Dir = filepath.Join(a.Dir, "audit")
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	err := b.Wait(10 * time.Second)
	want := fmt.Sprintf("pid %d (dyad", a.Pid())
	if err == nil || !strings.Contains(b.Logs(), "in use by another writer") || !strings.Contains(b.Logs(), want) ||
		!strings.Contains(b.Logs(), "site one") {
		t.Fatalf("second daemon on one journal: %v, want a refusal naming %q\n%s", err, want, b.Logs())
	}
	if _, res, err := a.Journal(); err != nil || !res.OK() {
		t.Fatalf("the first daemon's journal: %v %v", err, res.Bad)
	}
}
