package journal

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const origin = "dyad/test-site"

func testKey(t testing.TB) (note.Signer, note.Verifier) {
	t.Helper()
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	key := ed25519.NewKeyFromSeed(seed)
	s, err := NewSigner(origin, key)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(origin, key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return s, v
}

// fill writes n events (plus the checkpoints the options cause) and closes.
func fill(t *testing.T, dir string, n int, opts Options) {
	t.Helper()
	s, _ := testKey(t)
	opts.Dir, opts.Origin, opts.Signer = dir, origin, s
	j, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := j.Append("dyad.test.event", "INFO", time.Unix(1700000000, int64(i)), []attribute.KeyValue{
			attribute.Int("i", i), attribute.String("peer", "bank-b"), attribute.Bool("ok", i%2 == 0),
			attribute.Float64("ratio", float64(i)/4), attribute.StringSlice("tags", []string{"a", "b"}),
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
}

func verify(t *testing.T, dir string) *Result {
	t.Helper()
	_, v := testKey(t)
	res, err := Verify(dir, VerifyOptions{Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestEntryRoundTrip(t *testing.T) {
	e := Entry{Seq: 42, Time: time.Date(2026, 11, 23, 1, 2, 3, 4000, time.UTC), Name: "dyad.x", Severity: "WARN",
		Attrs: []attribute.KeyValue{
			attribute.String("s", "quote \" backslash \\ newline \n <html> é"),
			attribute.Int64("i", -7), attribute.Float64("f", 3), attribute.Float64("g", 1e300),
			attribute.Bool("b", true), attribute.StringSlice("ss", []string{"x"}), attribute.Int64Slice("is", []int64{1, 2}),
		}}
	e.Prev[0] = 0xab
	line := e.AppendEncode(nil)
	got, err := Decode(line)
	if err != nil {
		t.Fatalf("decode %s: %v", line, err)
	}
	if again := got.AppendEncode(nil); !bytes.Equal(again, line) {
		t.Fatalf("re-encoded differently:\n%s\n%s", line, again)
	}
	for i, kv := range e.Attrs {
		if got.Attrs[i] != kv {
			t.Errorf("attr %d: got %v, want %v", i, got.Attrs[i], kv)
		}
	}
	for _, bad := range []string{
		string(line) + " ",
		strings.Replace(string(line), `"seq":42`, `"seq": 42`, 1),
		strings.Replace(string(line), `"time"`, `"tim"`, 1),
		strings.Replace(string(line), `Z"`, `+00:00"`, 1),
		`{}`, ``, `null`,
	} {
		if _, err := Decode([]byte(bad)); err == nil {
			t.Errorf("Decode accepted %q", bad)
		}
	}
}

func TestJournalVerifies(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 250, Options{CheckpointEvery: 100})
	res := verify(t, dir)
	if !res.OK() {
		t.Fatalf("fresh journal does not verify: %v", res.Bad)
	}
	// The genesis checkpoint, 250 events, checkpoints after 100 and 200
	// events and one at close.
	if res.Entries != 254 || res.Checkpoints != 4 || res.Covered != 253 {
		t.Fatalf("entries %d checkpoints %d covered %d, want 254 4 253", res.Entries, res.Checkpoints, res.Covered)
	}
	info, err := os.Stat(filepath.Join(dir, fileName(0)))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("journal file mode: %v %v", info.Mode(), err)
	}
}

func TestJournalResumesChain(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 10, Options{})
	fill(t, dir, 10, Options{})
	res := verify(t, dir)
	if !res.OK() || res.Entries != 23 || res.Checkpoints != 3 { // genesis, 10, close, 10, close
		t.Fatalf("reopened journal: ok=%v bad=%v entries=%d checkpoints=%d", res.OK(), res.Bad, res.Entries, res.Checkpoints)
	}
}

func TestRotationKeepsChain(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 400, Options{MaxFileBytes: 8 << 10})
	files, _ := Files(dir)
	if len(files) < 5 {
		t.Fatalf("%d files after rotation at 8 KiB, want several", len(files))
	}
	res := verify(t, dir)
	if !res.OK() {
		t.Fatalf("rotated journal does not verify: %v", res.Bad)
	}
	// every file but the last ends with a checkpoint
	for _, f := range files[:len(files)-1] {
		data, _ := os.ReadFile(filepath.Join(dir, f))
		lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
		e, err := Decode(lines[len(lines)-1])
		if err != nil || e.Name != CheckpointEvent {
			t.Fatalf("%s does not end with a checkpoint: %s", f, lines[len(lines)-1])
		}
	}
	// a missing middle file is named
	os.Remove(filepath.Join(dir, files[2]))
	res = verify(t, dir)
	if res.OK() || res.Bad.File != files[3] || !strings.Contains(res.Bad.Reason, "missing") {
		t.Fatalf("missing file %s: got %v", files[2], res.Bad)
	}
}

// lines reads the single journal file of dir.
func lines(t *testing.T, dir string) [][]byte {
	data, err := os.ReadFile(filepath.Join(dir, fileName(0)))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(data, []byte("\n"))[:bytes.Count(data, []byte("\n"))]
}

func write(t *testing.T, dir string, ls [][]byte) {
	if err := os.WriteFile(filepath.Join(dir, fileName(0)), bytes.Join(ls, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestTamperDetected(t *testing.T) {
	type tamper func(ls [][]byte) [][]byte
	cases := []struct {
		name    string
		edit    tamper
		badSeq  uint64
		partial bool
		reason  string
	}{
		{"edited attribute", func(ls [][]byte) [][]byte {
			ls[30] = bytes.Replace(ls[30], []byte(`"bank-b"`), []byte(`"bank-c"`), 1)
			return ls
		}, 30, false, "was changed"},
		{"edited last entry before checkpoint", func(ls [][]byte) [][]byte {
			ls[50] = bytes.Replace(ls[50], []byte(`"ok":false`), []byte(`"ok":true `), 1)
			return ls
		}, 50, false, ""},
		{"deleted", func(ls [][]byte) [][]byte { return append(ls[:20:20], ls[21:]...) }, 20, false, "deleted"},
		{"inserted", func(ls [][]byte) [][]byte {
			return append(ls[:10:10], append([][]byte{ls[40]}, ls[10:]...)...)
		}, 10, false, "inserted"},
		{"reordered", func(ls [][]byte) [][]byte { ls[5], ls[6] = ls[6], ls[5]; return ls }, 5, false, "moved"},
		{"truncated tail", func(ls [][]byte) [][]byte {
			last := len(ls) - 1
			ls[last] = ls[last][:len(ls[last])/2]
			return ls
		}, 0, true, "incomplete"},
		{"malformed", func(ls [][]byte) [][]byte { ls[12] = []byte("not json\n"); return ls }, 12, false, "malformed"},
		{"forged checkpoint", func(ls [][]byte) [][]byte {
			ls[51] = bytes.Replace(ls[51], []byte(`— dyad/test-site `), []byte(`— dyad/test-site AAAA`), 1)
			return ls
		}, 51, false, "signature"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			fill(t, dir, 120, Options{CheckpointEvery: 50})
			ls := lines(t, dir)
			n := len(ls)
			write(t, dir, c.edit(ls))
			res := verify(t, dir)
			if res.OK() {
				t.Fatal("tampered journal verified")
			}
			want := c.badSeq
			if c.partial {
				want = uint64(n - 1)
			}
			if res.Bad.Seq != want || !strings.Contains(res.Bad.Reason, c.reason) {
				t.Fatalf("got %v, want entry %d (%q)", res.Bad, want, c.reason)
			}
		})
	}
}

// A consistent rewrite of the chain (every prev recomputed) is still caught
// by the signed checkpoint that follows it.
func TestRewrittenChainCaughtByCheckpoint(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 120, Options{CheckpointEvery: 50})
	ls := lines(t, dir)
	var prev [32]byte
	for i, l := range ls {
		e, err := Decode(bytes.TrimSuffix(l, []byte("\n")))
		if err != nil {
			t.Fatal(err)
		}
		if i == 60 {
			e.Attrs[1] = attribute.String("peer", "mallory")
		}
		e.Prev = prev
		enc := e.AppendEncode(nil)
		prev = Hash(enc)
		ls[i] = append(enc, '\n')
	}
	write(t, dir, ls)
	res := verify(t, dir)
	if res.OK() || res.Bad.Seq != 102 || !strings.Contains(res.Bad.Reason, "signed root") {
		t.Fatalf("got %v, want the checkpoint at entry 102 to fail", res.Bad)
	}
}

func TestAnchorDetectsCutTail(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var cps []Entry
	fill(t, dir, 120, Options{CheckpointEvery: 50, OnCheckpoint: func(e Entry) { mu.Lock(); cps = append(cps, e); mu.Unlock() }})
	if len(cps) != 4 { // genesis, after 50 and 100 events, at close
		t.Fatalf("%d checkpoints reported, want 4", len(cps))
	}
	_, v := testKey(t)
	anchor, err := OpenCheckpoint(cps[len(cps)-1].Attr(AttrCheckpoint).AsString(), v)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := Verify(dir, VerifyOptions{Verifier: v, Anchor: &anchor})
	if !res.OK() || !res.Anchored {
		t.Fatalf("intact journal against its last checkpoint: %v", res.Bad)
	}
	// Cut whole entries from the end: the chain alone cannot tell.
	ls := lines(t, dir)
	write(t, dir, ls[:80])
	if res := verify(t, dir); !res.OK() {
		t.Fatalf("without an anchor a clean cut verifies (expected limitation), got %v", res.Bad)
	}
	res, _ = Verify(dir, VerifyOptions{Verifier: v, Anchor: &anchor})
	if res.OK() || !strings.Contains(res.Bad.Reason, "cut from the end") {
		t.Fatalf("cut tail against the anchor: %v", res.Bad)
	}
}

func TestRecoverPartialLine(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 10, Options{})
	f, _ := os.OpenFile(filepath.Join(dir, fileName(0)), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":11,"time":"2026`)
	f.Close()
	fill(t, dir, 5, Options{})
	res := verify(t, dir)
	if !res.OK() {
		t.Fatalf("recovered journal: %v", res.Bad)
	}
	found := false
	Verify(dir, VerifyOptions{Verifier: testVerifier(t), Each: func(e *Entry, _ []byte) error {
		if e.Name == RecoveredEvent && e.Attr("dyad.journal.discarded_bytes").AsInt64() == 22 {
			found = true
		}
		return nil
	}})
	if !found {
		t.Fatal("no dyad.journal.recovered entry recording the 22 discarded bytes")
	}
}

func testVerifier(t *testing.T) note.Verifier { _, v := testKey(t); return v }

// TestSignerAnyKey: signing and verifying work for any key (base64 keys
// may contain '+', which also delimits note key fields).
func TestSignerAnyKey(t *testing.T) {
	for i := range 200 {
		pub, key, _ := ed25519.GenerateKey(nil)
		s, err := NewSigner(origin, key)
		if err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
		v, _ := NewVerifier(origin, pub)
		signed, err := signCheckpoint(s, origin, 5, tlog.Hash{1}, time.Unix(1, 0))
		if err != nil {
			t.Fatal(err)
		}
		if c, err := OpenCheckpoint(signed, v); err != nil || c.Size != 5 || c.Root != (tlog.Hash{1}) || c.Origin != origin || !c.Time.Equal(time.Unix(1, 0)) {
			t.Fatalf("key %d: %v %v", i, c, err)
		}
	}
}

func TestWrongKeyRefused(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 5, Options{})
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))
	v, _ := NewVerifier(origin, other.Public().(ed25519.PublicKey))
	res, _ := Verify(dir, VerifyOptions{Verifier: v})
	if res.OK() || !strings.Contains(res.Bad.Reason, "signature") {
		t.Fatalf("checkpoint signed by another key: %v", res.Bad)
	}
}

func TestSyncAlwaysConcurrent(t *testing.T) {
	dir := t.TempDir()
	s, _ := testKey(t)
	j, err := Open(Options{Dir: dir, Origin: origin, Signer: s, Sync: SyncAlways, CheckpointEvery: 64})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				if _, err := j.Append("dyad.test.event", "INFO", time.Now(), []attribute.KeyValue{attribute.Int("w", w), attribute.Int("i", i)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	st := j.Stats()
	if st.Durable != st.Entries {
		t.Fatalf("SyncAlways: %d of %d entries durable after every Append returned", st.Durable, st.Entries)
	}
	j.Close()
	if res := verify(t, dir); !res.OK() || res.Entries < 400 {
		t.Fatalf("concurrent journal: %v, %d entries", res.Bad, res.Entries)
	}
}

func TestFrontierMatchesFullTree(t *testing.T) {
	f := newFrontier()
	var all []tlog.Hash
	read := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = all[x]
		}
		return out, nil
	})
	for n := range int64(300) {
		data := []byte(fmt.Sprint("leaf", n))
		hs, err := tlog.StoredHashes(n, data, read)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, hs...)
		if err := f.add(data); err != nil {
			t.Fatal(err)
		}
		want, _ := tlog.TreeHash(n+1, read)
		got, err := f.root()
		if err != nil || got != want {
			t.Fatalf("size %d: root %v (%v), want %v", n+1, got, err, want)
		}
		if len(f.hashes) > 10 {
			t.Fatalf("frontier holds %d hashes at size %d", len(f.hashes), n+1)
		}
	}
}

func BenchmarkAppend(b *testing.B) {
	s, _ := testKey(b)
	j, err := Open(Options{Dir: b.TempDir(), Origin: origin, Signer: s})
	if err != nil {
		b.Fatal(err)
	}
	attrs := []attribute.KeyValue{attribute.String("dyad.peer", "bank-b"), attribute.String("dyad.service", "payments"),
		attribute.Int64("dyad.bytes.sent", 1024), attribute.Int64("dyad.bytes.received", 1024), attribute.Float64("dyad.duration", 0.0012)}
	b.ReportAllocs()
	for b.Loop() {
		j.Append("dyad.stream.closed", "INFO", time.Now(), attrs)
	}
	b.StopTimer()
	j.Close()
}

// TestProveAcrossRotation: inclusion and consistency proofs made by Prove
// from a rotated journal check against the signed checkpoints' roots, and
// a proof for a changed entry does not.
func TestProveAcrossRotation(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 300, Options{MaxFileBytes: 8 << 10, CheckpointEvery: 64})
	if files, _ := Files(dir); len(files) < 3 {
		t.Fatalf("%d files: want rotation", len(files))
	}
	// The checkpoints' signed roots, by tree size.
	roots := map[int64]tlog.Hash{}
	var all [][]byte
	_, v := testKey(t)
	res, err := Verify(dir, VerifyOptions{Verifier: v, Each: func(e *Entry, line []byte) error {
		all = append(all, bytes.Clone(line))
		if e.Name == CheckpointEvent {
			cp, err := OpenCheckpoint(e.Attr("dyad.journal.checkpoint").AsString(), v)
			roots[cp.Size] = cp.Root
			return err
		}
		return nil
	}})
	if err != nil || !res.OK() {
		t.Fatalf("verify: %v %v", err, res.Bad)
	}
	size := res.Last.Size
	var olds []int64
	for n := range roots {
		if n > 0 && n < size { // no consistency proof from the genesis's empty tree
			olds = append(olds, n)
		}
	}
	leaves := []int64{1, 2, 63, 64, 200, size - 1} // 0 is the genesis checkpoint
	p, err := Prove(dir, size, leaves, olds)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range leaves {
		if err := tlog.CheckRecord(p.Records[n], size, roots[size], n, tlog.RecordHash(all[n])); err != nil {
			t.Errorf("entry %d: %v", n, err)
		}
		changed := bytes.Replace(all[n], []byte(`"peer":"bank-b"`), []byte(`"peer":"bank-x"`), 1)
		if tlog.CheckRecord(p.Records[n], size, roots[size], n, tlog.RecordHash(changed)) == nil {
			t.Errorf("entry %d: a changed entry's proof checks", n)
		}
	}
	if len(olds) < 3 {
		t.Fatalf("only %d older checkpoints", len(olds))
	}
	for _, n := range olds {
		if err := tlog.CheckTree(p.Trees[n], size, roots[size], n, roots[n]); err != nil {
			t.Errorf("tree %d → %d: %v", n, size, err)
		}
	}
	if _, err := Prove(dir, size+1000, leaves, nil); err == nil {
		t.Error("Prove past the journal's end: no error")
	}
}

// TestEditNeverReachesEach: an edit to the last event of a rotated file
// (only its checkpoint follows) is named there, and Each never sees it.
func TestEditNeverReachesEach(t *testing.T) {
	dir := t.TempDir()
	fill(t, dir, 200, Options{MaxFileBytes: 8 << 10, CheckpointEvery: 1000})
	files, _ := Files(dir)
	if len(files) < 2 {
		t.Fatal("no rotation")
	}
	path := filepath.Join(dir, files[0])
	data, _ := os.ReadFile(path)
	ls := bytes.SplitAfter(data, []byte("\n"))
	ls = ls[:len(ls)-1]
	last := len(ls) - 1
	for !bytes.Contains(ls[last], []byte(`"peer":"bank-b"`)) {
		last--
	}
	ls[last] = bytes.Replace(ls[last], []byte(`"peer":"bank-b"`), []byte(`"peer":"bank-x"`), 1)
	os.WriteFile(path, bytes.Join(ls, nil), 0o600)
	var seen uint64
	res, err := Verify(dir, VerifyOptions{Verifier: testVerifier(t), Each: func(e *Entry, _ []byte) error {
		if e.Attr("peer").AsString() == "bank-x" {
			t.Errorf("Each saw the edited entry %d", e.Seq)
		}
		seen++
		return nil
	}})
	if err != nil || res.OK() {
		t.Fatalf("edit not detected: %v", err)
	}
	if res.Bad.File != files[0] || res.Bad.Line != last+1 || res.Bad.Seq != uint64(last) {
		t.Errorf("bad entry named %s, want %s:%d entry %d", res.Bad, files[0], last+1, last)
	}
	if seen != uint64(last) || res.Entries != uint64(last) {
		t.Errorf("Each saw %d entries, Result.Entries %d; want the %d before the edit", seen, res.Entries, last)
	}
}
