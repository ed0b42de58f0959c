package journal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

func openTest(t *testing.T, dir string, opts Options) *Journal {
	t.Helper()
	s, _ := testKey(t)
	opts.Dir, opts.Origin, opts.Signer = dir, origin, s
	j, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func appendN(t *testing.T, j *Journal, n int) {
	t.Helper()
	for i := range n {
		if _, err := j.Append("dyad.test.event", "INFO", time.Now(), []attribute.KeyValue{attribute.Int("i", i)}); err != nil {
			t.Fatal(err)
		}
	}
}

// lines reads every journal line in dir, in order.
func diskLines(t *testing.T, dir string) [][]byte {
	t.Helper()
	files, err := Files(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		for l := range bytes.Lines(data) {
			out = append(out, bytes.TrimSuffix(l, []byte("\n")))
		}
	}
	return out
}

// crashImage copies the journal files in dir (not the lock) to a new
// folder while the journal is still open: what a kill -9 leaves on disk.
func crashImage(t *testing.T, dir string) string {
	t.Helper()
	img := t.TempDir()
	files, _ := Files(dir)
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(img, f), data, 0o600)
	}
	return img
}

// TestAppendWrittenBeforeReturn: an entry is in the file (written to the
// kernel) when Append returns, whatever the fsync policy. THREATS P7.
func TestAppendWrittenBeforeReturn(t *testing.T) {
	for _, p := range []SyncPolicy{SyncInterval, SyncNever, SyncAlways} {
		dir := t.TempDir()
		j := openTest(t, dir, Options{Sync: p, CommitInterval: time.Hour})
		for i := range 5 {
			seq, err := j.Append("dyad.test.event", "INFO", time.Now(), []attribute.KeyValue{attribute.Int("i", i)})
			if err != nil {
				t.Fatal(err)
			}
			ls := diskLines(t, dir)
			if uint64(len(ls)) <= seq {
				t.Fatalf("fsync %v: entry %d not in the file when Append returned (%d lines)", p, seq, len(ls))
			}
		}
		j.Close()
	}
}

// TestGenesisCheckpoint: a new journal starts with a signed checkpoint of
// the empty tree, on disk when Open returns.
func TestGenesisCheckpoint(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{})
	defer j.Close()
	ls := diskLines(t, dir)
	if len(ls) != 1 {
		t.Fatalf("new journal has %d lines, want the genesis checkpoint", len(ls))
	}
	e, err := Decode(ls[0])
	if err != nil || e.Name != CheckpointEvent || e.Attr(AttrSize).AsInt64() != 0 {
		t.Fatalf("first entry %+v (%v), want a checkpoint of size 0", e, err)
	}
	if res := verify(t, dir); !res.OK() || res.Checkpoints != 1 {
		t.Fatalf("genesis: %+v", res)
	}
}

// TestIdleCheckpoints: the journal signs a checkpoint every interval even
// when nothing happens, so its liveness is evidenced.
func TestIdleCheckpoints(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{CheckpointInterval: 50 * time.Millisecond, CommitInterval: 10 * time.Millisecond})
	appendN(t, j, 1)
	time.Sleep(400 * time.Millisecond)
	n := 0
	for _, l := range diskLines(t, dir) {
		if e, _ := Decode(l); e.Name == CheckpointEvent {
			n++
		}
	}
	j.Close()
	if n < 4 {
		t.Fatalf("%d checkpoints in 400 ms at a 50 ms interval, idle", n)
	}
}

// TestSecondWriterRefused: one journal, one writer; the second names the
// holder. THREATS P7.
func TestSecondWriterRefused(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{})
	s, _ := testKey(t)
	j2, err := Open(Options{Dir: dir, Origin: origin, Signer: s})
	if err == nil {
		j2.Close()
		j.Close()
		t.Fatal("a second journal opened the same folder")
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("refusal does not name the holder: %v", err)
	}
	j.Close()
	j3 := openTest(t, dir, Options{})
	j3.Close()
}

// rewrite is the attack on a stopped daemon's journal: drop every
// checkpoint, edit entry edit (of those left), renumber and rechain.
func rewrite(t *testing.T, dir string, edit int) {
	t.Helper()
	var out []Entry
	for _, l := range diskLines(t, dir) {
		e, err := Decode(l)
		if err != nil {
			t.Fatal(err)
		}
		if e.Name != CheckpointEvent {
			out = append(out, e)
		}
	}
	out[edit].Attrs = []attribute.KeyValue{attribute.Int("i", 999)}
	var data []byte
	prev := [32]byte{}
	for i := range out {
		out[i].Seq, out[i].Prev = uint64(i), prev
		start := len(data)
		data = out[i].AppendEncode(data)
		prev = Hash(data[start:])
		data = append(data, '\n')
	}
	files, _ := Files(dir)
	for _, f := range files {
		os.Remove(filepath.Join(dir, f))
	}
	os.WriteFile(filepath.Join(dir, fileName(0)), data, 0o600)
}

// TestRewriteRefused: the rewrite attack fails verify and stops Open, which
// names the entry, instead of signing the forgery. THREATS P7.
func TestRewriteRefused(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 20, Options{CheckpointEvery: 5})
	rewrite(t, dir, 3)
	if res := verify(t, dir); res.OK() || !strings.Contains(res.Bad.Reason, "no signed checkpoint") {
		t.Fatalf("rewritten journal verifies: %+v", res.Bad)
	}
	s, _ := testKey(t)
	j, err := Open(Options{Dir: dir, Origin: origin, Signer: s})
	if err == nil {
		j.Close()
		t.Fatal("Open accepted (and signed) a rewritten journal")
	}
	if !strings.Contains(err.Error(), "entry 0") {
		t.Fatalf("Open's refusal does not name the entry: %v", err)
	}
}

// TestCrashTailAdopted: what a kill -9 leaves (entries after the last
// checkpoint, a partial line) is adopted with one signed recovery entry
// saying how many entries and when the last was written. THREATS P7.
func TestCrashTailAdopted(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{CheckpointEvery: 100})
	appendN(t, j, 7)
	img := crashImage(t, dir)
	j.Close()
	f, _ := os.OpenFile(filepath.Join(img, fileName(0)), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":8,"ti`)
	f.Close()
	last, _ := Decode(diskLines(t, img)[7])
	j2 := openTest(t, img, Options{CheckpointEvery: 100})
	j2.Close()
	res := verify(t, img)
	if !res.OK() {
		t.Fatalf("recovered journal: %v", res.Bad)
	}
	var rec []Entry
	Verify(img, VerifyOptions{Verifier: testVerifier(t), Each: func(e *Entry, _ []byte) error {
		if e.Name == RecoveredEvent {
			rec = append(rec, *e)
		}
		return nil
	}})
	if len(rec) != 1 {
		t.Fatalf("%d recovery entries, want 1", len(rec))
	}
	r := rec[0]
	if r.Attr(AttrRecoveredEntries).AsInt64() != 7 || r.Attr(AttrDiscardedBytes).AsInt64() != 12 ||
		r.Attr(AttrLastEntryTime).AsString() != last.Time.Format(time.RFC3339Nano) {
		t.Fatalf("recovery entry %v, want 7 entries, 12 bytes, last at %v", r.Attrs, last.Time)
	}
}

// TestCrashTailTooLong: a tail longer than one checkpoint interval allows
// is not a crash tail (checkpoints were removed): Open refuses it.
func TestCrashTailTooLong(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{CheckpointEvery: 100})
	appendN(t, j, 30)
	img := crashImage(t, dir)
	j.Close()
	s, _ := testKey(t)
	j2, err := Open(Options{Dir: img, Origin: origin, Signer: s, CheckpointEvery: 10})
	if err == nil {
		j2.Close()
		t.Fatal("Open adopted 30 unsigned entries with checkpoints every 10")
	}
	if !strings.Contains(err.Error(), "entry 1") {
		t.Fatalf("refusal does not name the first unsigned entry: %v", err)
	}
	res, _ := Verify(img, VerifyOptions{Verifier: testVerifier(t), TailEntries: 10, TailInterval: time.Minute})
	if res.OK() || res.Bad.Seq != 1 || !strings.Contains(res.Bad.Reason, "checkpoints were removed") {
		t.Fatalf("verify with the journal's checkpoint interval: %v", res.Bad)
	}
	if res, _ := Verify(img, VerifyOptions{Verifier: testVerifier(t), TailEntries: 100, TailInterval: time.Minute}); !res.OK() {
		t.Fatalf("a crash tail within the interval: %v", res.Bad)
	}
}

// TestEditRefusedByOpen: an edited entry (chain not rebuilt) stops Open,
// which names it.
func TestEditRefusedByOpen(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 20, Options{CheckpointEvery: 5})
	ls := diskLines(t, dir)
	ls[3] = bytes.Replace(ls[3], []byte(`"bank-b"`), []byte(`"bank-x"`), 1)
	writeLines(t, dir, ls)
	s, _ := testKey(t)
	_, err := Open(Options{Dir: dir, Origin: origin, Signer: s})
	var be *BrokenError
	if !errors.As(err, &be) || be.Bad.Seq != 3 {
		t.Fatalf("Open of a journal with entry 3 edited: %v", err)
	}
}

func writeLines(t *testing.T, dir string, ls [][]byte) {
	t.Helper()
	files, _ := Files(dir)
	for _, f := range files {
		os.Remove(filepath.Join(dir, f))
	}
	var data []byte
	for _, l := range ls {
		data = append(append(data, l...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, fileName(0)), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestBrokenContinueRecordsBreak: the operator's choice to go on with a
// broken journal is a signed break entry; verify still names the bad entry
// and reports the break ever after.
func TestBrokenContinueRecordsBreak(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 20, Options{CheckpointEvery: 5})
	ls := diskLines(t, dir)
	ls[3] = bytes.Replace(ls[3], []byte(`"bank-b"`), []byte(`"bank-x"`), 1)
	writeLines(t, dir, ls)
	j := openTest(t, dir, Options{OnBroken: BrokenContinue, CheckpointEvery: 5})
	appendN(t, j, 3)
	j.Close()
	res := verify(t, dir)
	if res.OK() || res.Bad.Seq != 3 {
		t.Fatalf("verify after a break: %v", res.Bad)
	}
	if len(res.Breaks) != 1 || res.Breaks[0].Attr(AttrBadSeq).AsInt64() != 3 || res.Breaks[0].Seq != uint64(len(ls)) {
		t.Fatalf("breaks %+v, want one at entry %d naming entry 3", res.Breaks, len(ls))
	}
	// Opening again, even with the default policy, goes on without a new
	// break: the break stands recorded and signed.
	j = openTest(t, dir, Options{CheckpointEvery: 5})
	appendN(t, j, 1)
	j.Close()
	if res := verify(t, dir); len(res.Breaks) != 1 || res.Bad.Seq != 3 {
		t.Fatalf("after a second start: bad %v, %d breaks", res.Bad, len(res.Breaks))
	}
	// A new edit after the break is refused again.
	ls = diskLines(t, dir)
	ls[len(ls)-2] = bytes.Replace(ls[len(ls)-2], []byte(`"i":0`), []byte(`"i":7`), 1)
	writeLines(t, dir, ls)
	s, _ := testKey(t)
	if _, err := Open(Options{Dir: dir, Origin: origin, Signer: s, CheckpointEvery: 5}); !errors.Is(err, ErrBroken) {
		t.Fatalf("an edit after the recorded break: %v", err)
	}
}

// TestDiskFailureResumes: a failing disk fails Append (never a silent
// loss), and once it is writable again the journal goes on by itself with
// one dyad.journal.write_failed entry counting exactly the refused events.
func TestDiskFailureResumes(t *testing.T) {
	var failing atomic.Bool
	dir := t.TempDir()
	j := openTest(t, dir, Options{MaxFileBytes: 1 << 10, CheckpointEvery: 4, CommitInterval: 10 * time.Millisecond,
		OpenFile: FullDisk(&failing)})
	defer j.Close()
	failing.Store(true)
	refused := 0
	for i := 0; i < 40; i++ {
		if _, err := j.Append("dyad.test.event", "INFO", time.Now(), []attribute.KeyValue{attribute.Int("i", i)}); err != nil {
			refused++
		}
	}
	if refused == 0 || j.Err() == nil {
		t.Fatalf("a full disk: %d appends refused, Err %v", refused, j.Err())
	}
	failing.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for j.Err() != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := j.Err(); err != nil {
		t.Fatalf("journal did not resume: %v", err)
	}
	appendN(t, j, 3)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	res := verify(t, dir)
	if !res.OK() {
		t.Fatalf("resumed journal: %v", res.Bad)
	}
	var wf []Entry
	Verify(dir, VerifyOptions{Verifier: testVerifier(t), Each: func(e *Entry, _ []byte) error {
		if e.Name == WriteFailedEvent {
			wf = append(wf, *e)
		}
		return nil
	}})
	if len(wf) != 1 || wf[0].Attr(AttrLostEvents).AsInt64() != int64(refused) {
		t.Fatalf("write_failed entries %v, want one counting %d lost events", wf, refused)
	}
}
