package fuzz

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/mod/sumdb/note"

	"github.com/dyad-tunnel/dyad/audit/journal"
)

// FuzzJournalEntry: any line decodes to an error or to an entry whose
// canonical encoding is the line itself (THREATS P7, P8).
func FuzzJournalEntry(f *testing.F) {
	e := journal.Entry{Seq: 3, Time: time.Unix(1700000000, 5).UTC(), Name: "dyad.stream.closed", Severity: "INFO",
		Attrs: []attribute.KeyValue{attribute.String("dyad.peer", "b"), attribute.Int64("dyad.bytes.sent", 9),
			attribute.Float64("dyad.duration", 0.5), attribute.Bool("x", true), attribute.StringSlice("l", []string{"a"})}}
	f.Add(e.AppendEncode(nil))
	f.Add([]byte(`{"seq":0,"time":"2026-01-01T00:00:00Z","prev":"00","name":"","severity":"","attrs":{}}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := journal.Decode(line)
		if err != nil {
			return
		}
		if got := e.AppendEncode(nil); !bytes.Equal(got, line) {
			t.Fatalf("decoded %q re-encodes as %q", line, got)
		}
	})
}

var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32))

// validJournal writes a closed journal of n events that also went through
// a crash: a genesis checkpoint, checkpoints every 4 entries, a crash tail
// adopted by a dyad.journal.recovered entry, and a final checkpoint. It
// returns its file.
func validJournal(tb testing.TB, dir string, n int) []byte {
	j := openFuzzJournal(tb, dir, journal.BrokenStop)
	for i := range n {
		j.Append("dyad.test", "INFO", time.Unix(1700000000, int64(i)), []attribute.KeyValue{attribute.Int("i", i)})
	}
	// What a kill -9 now would leave: the files as they are.
	crash := filepath.Join(dir, "crash")
	os.Mkdir(crash, 0o700)
	os.WriteFile(filepath.Join(crash, journalFile), readJournal(tb, dir), 0o600)
	if err := j.Close(); err != nil {
		tb.Fatal(err)
	}
	j = openFuzzJournal(tb, crash, journal.BrokenStop)
	j.Append("dyad.test", "INFO", time.Unix(1700000001, 0), []attribute.KeyValue{attribute.Int("i", n)})
	if err := j.Close(); err != nil {
		tb.Fatal(err)
	}
	data := readJournal(tb, crash)
	for _, name := range []string{journal.CheckpointEvent, journal.RecoveredEvent} {
		if !bytes.Contains(data, []byte(`"name":"`+name+`"`)) {
			tb.Fatalf("the seed journal has no %s entry", name)
		}
	}
	return data
}

// brokenJournal is validJournal with entry 2 edited, continued over by a
// daemon with on_broken: continue (a dyad.journal.break entry): it never
// verifies.
func brokenJournal(tb testing.TB, dir string, valid []byte) []byte {
	data := bytes.Replace(valid, []byte(`"attrs":{"i":1}`), []byte(`"attrs":{"i":7}`), 1)
	os.WriteFile(filepath.Join(dir, journalFile), data, 0o600)
	j := openFuzzJournal(tb, dir, journal.BrokenContinue)
	j.Append("dyad.test", "INFO", time.Unix(1700000002, 0), []attribute.KeyValue{attribute.Int("i", 99)})
	if err := j.Close(); err != nil {
		tb.Fatal(err)
	}
	data = readJournal(tb, dir)
	if !bytes.Contains(data, []byte(`"name":"`+journal.BreakEvent+`"`)) {
		tb.Fatal("the broken seed journal has no break entry")
	}
	return data
}

const journalFile = "dyad-audit-00000000000000000000.jsonl"

func fuzzSigner(tb testing.TB) note.Signer {
	s, err := journal.NewSigner("dyad/fuzz", fuzzKey)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// openFuzzJournal opens the journal in dir with a fixed clock, which makes
// the journal, and so every seed's edit, the same in every process: a
// crasher replays.
func openFuzzJournal(tb testing.TB, dir string, onBroken journal.BrokenPolicy) *journal.Journal {
	now := func() time.Time { return time.Unix(1800000000, 123456789) }
	j, err := journal.Open(journal.Options{Dir: dir, Origin: "dyad/fuzz", Signer: fuzzSigner(tb), CheckpointEvery: 4, Now: now, OnBroken: onBroken})
	if err != nil {
		tb.Fatal(err)
	}
	return j
}

func readJournal(tb testing.TB, dir string) []byte {
	data, err := os.ReadFile(filepath.Join(dir, journalFile))
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// FuzzJournalVerify: Verify takes any file as a journal without panicking
// or hanging, and a closed journal (it ends with a signed checkpoint; it
// holds a genesis checkpoint and a crash recovery) with any byte changed,
// cut or inserted never verifies as fully signed: the edit is either found,
// or it turned the last checkpoint into a plain entry, which Verify reports
// as not covered by a signature (Result.After). A journal continued over a
// break (dyad.journal.break) never verifies, edited or not. And a daemon
// never signs what it has not verified: whenever Open accepts the file
// (adopting a crash tail at most), the journal it closes verifies, or fails
// only at or after an entry a verified break entry recorded.
// `dyad audit verify` cannot be fooled into a clean verdict.
func FuzzJournalVerify(f *testing.F) {
	valid := validJournal(f, f.TempDir(), 9)
	broken := brokenJournal(f, f.TempDir(), valid)
	f.Add(uint16(10), uint8(1), uint8(0), []byte(nil))
	f.Add(uint16(300), uint8(0x20), uint8(1), []byte("x"))
	f.Add(uint16(len(valid)-3), uint8(0), uint8(2), []byte("\n"))
	f.Add(uint16(0), uint8(0), uint8(3), []byte("{garbage}\n"))
	f.Add(uint16(len(broken)-200), uint8(4), uint8(4), []byte(nil))
	f.Add(uint16(len(broken)/2), uint8(0), uint8(5), []byte(nil))
	// A padding bit of the last checkpoint's signature: the same signature
	// bytes in other base64 (fixed: checkpoints must be canonical).
	at := bytes.LastIndexByte(valid, '=') - 1
	f.Add(uint16(at), valid[at]^base64Alphabet[strings.IndexByte(base64Alphabet, valid[at])^1], uint8(0), []byte(nil))
	pub := fuzzKey.Public().(ed25519.PublicKey)
	v, err := journal.NewVerifier("dyad/fuzz", pub)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, at uint16, flip uint8, op uint8, insert []byte) {
		base := valid
		if op&4 != 0 {
			base = broken
		}
		data := append([]byte(nil), base...)
		i := int(at) % len(data)
		switch op % 4 {
		case 0: // flip bits of one byte
			if flip == 0 {
				flip = 1
			}
			data[i] ^= flip
		case 1: // cut the tail
			data = data[:i]
		case 2: // insert bytes
			if len(insert) == 0 {
				insert = []byte{'x'}
			}
			data = append(data[:i], append(insert, base[i:]...)...)
		case 3: // a file of arbitrary bytes
			data = insert
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, journalFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := journal.Verify(dir, journal.VerifyOptions{Verifier: v})
		if err != nil {
			t.Fatal(err)
		}
		if res.OK() && res.After == 0 && !bytes.Equal(data, valid) && !isCleanPrefix(base, data) {
			t.Fatalf("edited journal verified (op %d at %d)", op%8, i)
		}
		if res.OK() && bytes.Equal(data, broken) {
			t.Fatal("a journal continued over a break verified")
		}
		// Open signs only what verifies: what it accepts, closed, verifies.
		j, err := journal.Open(journal.Options{Dir: dir, Origin: "dyad/fuzz", Signer: fuzzSigner(t), CheckpointEvery: 4,
			Now: func() time.Time { return time.Unix(1800000000, 123456789) }})
		if err != nil {
			return
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		res, err = journal.Verify(dir, journal.VerifyOptions{Verifier: v})
		if err != nil {
			t.Fatal(err)
		}
		if !res.OK() && !recordedBreak(res) {
			t.Fatalf("Open accepted (op %d at %d) and signed a journal that does not verify: %v", op%8, i, res.Bad)
		}
	})
}

// recordedBreak reports whether the journal fails at or after an entry a
// signed break entry recorded: a start went on over it at the operator's
// choice, and later starts need not stop again.
func recordedBreak(res *journal.Result) bool {
	for _, b := range res.Breaks {
		if uint64(b.Attr(journal.AttrBadSeq).AsInt64()) <= res.Bad.Seq {
			return true
		}
	}
	return false
}

// isCleanPrefix reports whether data is valid cut at a line boundary: the
// rest is self-consistent, which only an external anchor (verify --anchor)
// can detect; the fuzzer checks everything else.
func isCleanPrefix(valid, data []byte) bool {
	return len(data) > 0 && bytes.HasPrefix(valid, data) && data[len(data)-1] == '\n'
}

const base64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// FuzzCheckpoint: `dyad audit verify --anchor` reads a signed checkpoint
// from a file. Any text opens to an error or a checkpoint; a checkpoint
// signed for any text parses to a size and a 32-byte root or fails as
// malformed; and a valid checkpoint with any byte changed fails: one
// checkpoint has one encoding (THREATS P7, P8).
func FuzzCheckpoint(f *testing.F) {
	signer := fuzzSigner(f)
	v, err := journal.NewVerifier("dyad/fuzz", fuzzKey.Public().(ed25519.PublicKey))
	if err != nil {
		f.Fatal(err)
	}
	valid := lastCheckpoint(f, validJournal(f, f.TempDir(), 5))
	f.Add("dyad/fuzz\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u2014 dyad/fuzz AAAA\n",
		"dyad/fuzz\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\ntime 2026-01-01T00:00:00Z\n", uint16(3), byte(1))
	f.Add("garbage", "dyad/fuzz\n-1\n\n", uint16(0), byte(0))
	f.Fuzz(func(t *testing.T, anchor, text string, pos uint16, xor byte) {
		if c, err := journal.OpenCheckpoint(anchor, v); err == nil && c.Size < 0 {
			t.Fatalf("anchor %q opened with size %d", anchor, c.Size)
		}
		if signed, err := note.Sign(&note.Note{Text: text}, signer); err == nil {
			c, err := journal.OpenCheckpoint(string(signed), v)
			if err != nil && !errors.Is(err, journal.ErrMalformed) {
				t.Fatalf("signed text %q: %v, not a malformed checkpoint", text, err)
			}
			if err == nil && (c.Size < 0 || !strings.HasPrefix(text, c.Origin+"\n")) {
				t.Fatalf("signed text %q opened as %+v", text, c)
			}
		}
		want, err := journal.OpenCheckpoint(valid, v)
		if err != nil {
			t.Fatal(err)
		}
		edited := []byte(valid)
		edited[int(pos)%len(edited)] ^= xor
		if got, err := journal.OpenCheckpoint(string(edited), v); err == nil && string(edited) != valid {
			t.Fatalf("checkpoint with byte %d changed opened as %+v, signed was %+v", int(pos)%len(edited), got, want)
		}
	})
}

// lastCheckpoint returns the signed checkpoint that ends a closed journal.
func lastCheckpoint(tb testing.TB, journalFile []byte) string {
	lines := bytes.Split(bytes.TrimSuffix(journalFile, []byte("\n")), []byte("\n"))
	e, err := journal.Decode(lines[len(lines)-1])
	if err != nil {
		tb.Fatal(err)
	}
	cp := e.Attr(journal.AttrCheckpoint).AsString()
	if cp == "" {
		tb.Fatal("the journal does not end with a checkpoint")
	}
	return cp
}
