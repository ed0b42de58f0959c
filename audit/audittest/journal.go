package audittest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
)

// Journal is an Auditor writing to a journal in a test's temporary folder.
type Journal struct {
	*audit.Auditor
	t        testing.TB
	dir      string
	j        *journal.Journal
	verifier interface {
		Name() string
		KeyHash() uint32
		Verify(msg, sig []byte) bool
	}
	once sync.Once
}

// NewJournal starts an Auditor with a journal, closed at the test's end.
func NewJournal(t testing.TB) *Journal {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := journal.NewSigner("dyad/test", key)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := journal.NewVerifier("dyad/test", pub)
	tj := &Journal{t: t, dir: t.TempDir(), verifier: v}
	tj.j, err = journal.Open(journal.Options{Dir: tj.dir, Origin: "dyad/test", Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	tj.Auditor = audit.New(audit.Options{Journal: tj.j, Console: zerolog.Nop()})
	t.Cleanup(tj.close)
	return tj
}

func (tj *Journal) close() {
	tj.once.Do(func() {
		tj.Auditor.Close(context.Background())
		tj.j.Close()
	})
}

// Journal returns the journal, for a second Auditor on it.
func (tj *Journal) Journal() *journal.Journal { return tj.j }

// Entries returns the events written so far, after checking that the
// journal verifies and that every entry matches its catalogue entry.
func (tj *Journal) Entries() []journal.Entry {
	tj.t.Helper()
	if err := tj.j.Checkpoint(); err != nil {
		tj.t.Fatal(err)
	}
	if err := tj.j.Flush(); err != nil {
		tj.t.Fatal(err)
	}
	var out []journal.Entry
	res, err := journal.Verify(tj.dir, journal.VerifyOptions{Verifier: tj.verifier, Each: func(e *journal.Entry, _ []byte) error {
		out = append(out, *e)
		return nil
	}})
	if err != nil {
		tj.t.Fatal(err)
	}
	if !res.OK() {
		tj.t.Fatalf("journal does not verify: %v", res.Bad)
	}
	for _, e := range out {
		spec, ok := audit.SpecOf(e.Name)
		if !ok {
			tj.t.Errorf("entry %d: %s is not in the catalogue", e.Seq, e.Name)
			continue
		}
		if err := spec.Check(e.Attrs); err != nil {
			tj.t.Errorf("entry %d: %v", e.Seq, err)
		}
	}
	return out
}

// Named returns the entries named name.
func (tj *Journal) Named(name string) []journal.Entry {
	var out []journal.Entry
	for _, e := range tj.Entries() {
		if e.Name == name {
			out = append(out, e)
		}
	}
	return out
}

// WaitFor polls until cond holds for the entries, up to timeout.
func (tj *Journal) WaitFor(timeout time.Duration, cond func([]journal.Entry) bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond(tj.Entries()) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
