package tunnel

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// failingAuditor is an Auditor with audit.journal.on_failure: refuse over
// a journal whose disk fails while *failing is set.
func failingAuditor(t *testing.T, failing *atomic.Bool) (*audit.Auditor, *journal.Journal) {
	t.Helper()
	signer, _ := journal.NewSigner("dyad/test", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)))
	j, err := journal.Open(journal.Options{Dir: t.TempDir(), Origin: "dyad/test", Signer: signer, MaxFileBytes: 1 << 10,
		OpenFile: journal.FullDisk(failing)})
	if err != nil {
		t.Fatal(err)
	}
	a := audit.New(audit.Options{Journal: j, Console: zerolog.Nop(), RefuseWhenJournalFails: true})
	t.Cleanup(func() { a.Close(context.Background()); j.Close() })
	return a, j
}

// failJournal makes the disk fail and appends until the journal knows.
func failJournal(t *testing.T, j *journal.Journal, failing *atomic.Bool) {
	t.Helper()
	failing.Store(true)
	for i := 0; i < 100 && j.Err() == nil; i++ {
		j.Append("dyad.test", "INFO", time.Now(), []attribute.KeyValue{attribute.Int("i", i)})
	}
	if j.Err() == nil {
		t.Fatal("the journal did not fail")
	}
}

// within waits up to 5 s for a Forward's end: an admitted stream would
// wait for its client.
func within(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("the stream was admitted: Forward still carries it after 5 s")
		return nil
	}
}

// TestJournalFailureRefusesStreams: with on_failure: refuse, while the
// journal cannot be written the exporter refuses streams with the typed,
// counted audit_unavailable, and the importer opens none. THREATS P7.
func TestJournalFailureRefusesStreams(t *testing.T) {
	matrixTransports(t, testJournalFailureRefusesStreams)
}

func testJournalFailureRefusesStreams(t *testing.T) {
	echo, accepted := tunneltest.EchoServer(t)
	ida, idb := newIdentity(t), newIdentity(t)
	var bFailing, aFailing atomic.Bool
	audB, jb := failingAuditor(t, &bFailing)
	audA, ja := failingAuditor(t, &aFailing)
	b := startNodeWith(t, idb, Config{Peers: []Peer{{Name: "a", Key: ida.Public()}},
		Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}}}, audB)
	a := startNodeWith(t, ida, Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: b.Addr().String()}}}, audA)

	failJournal(t, jb, &bFailing)
	_, done := forward(t, a, "echo")
	if err := within(t, done); err == nil || !bytes.Contains([]byte(err.Error()), []byte("audit_unavailable")) {
		t.Fatalf("exporter with a failed journal: Forward err = %v", err)
	}
	if n := b.Stats.Snapshot()["streams_refused.audit_unavailable"]; n != 1 || accepted() != 0 {
		t.Fatalf("refusal counted %d times, upstream dialed %d times", n, accepted())
	}

	failJournal(t, ja, &aFailing)
	_, done = forward(t, a, "echo")
	if err := within(t, done); !errors.Is(err, audit.ErrJournalUnavailable) {
		t.Fatalf("importer with a failed journal: Forward err = %v", err)
	}
	if n := b.Stats.Snapshot()["streams_refused.audit_unavailable"]; n != 1 {
		t.Fatalf("the importer opened a stream with its journal failed (%d refusals at the exporter)", n)
	}
}
