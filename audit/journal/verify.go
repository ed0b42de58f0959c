package journal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// maxLine bounds one entry; the daemon's largest entries are a few KiB.
const maxLine = 1 << 20

// Problem names the first bad entry Verify found.
type Problem struct {
	File   string // base name of the journal file
	Line   int    // line number in File, from 1
	Seq    uint64 // the entry's position in the journal
	Reason string
}

func (p *Problem) String() string {
	return fmt.Sprintf("%s:%d: entry %d: %s", p.File, p.Line, p.Seq, p.Reason)
}

// Result is what Verify found.
type Result struct {
	Files       []string
	Entries     uint64     // entries read, the bad one and those after it excluded
	Checkpoints int        // signed checkpoints verified
	Covered     uint64     // entries covered by the last verified checkpoint
	After       uint64     // entries after the last checkpoint entry: chained, not yet signed
	Root        tlog.Hash  // tree root over Entries
	Bad         *Problem   // first bad entry; nil when the journal verifies
	Anchored    bool       // the external checkpoint (VerifyOptions.Anchor) matched
	Last        Checkpoint // last verified checkpoint
	// Breaks are the dyad.journal.break entries anywhere in the journal,
	// verified or not (those after Bad are not): each records a start at
	// which the daemon found the journal broken and the operator chose to
	// go on.
	Breaks []Entry
}

// OK reports whether the journal verified.
func (r *Result) OK() bool { return r.Bad == nil }

// VerifyOptions configure Verify.
type VerifyOptions struct {
	Verifier note.Verifier // checks checkpoint signatures
	// Anchor is a checkpoint held outside the journal (for example the last
	// dyad.journal.checkpoint event the SIEM received); with it, Verify also
	// detects entries cut from the end or rewritten after it.
	Anchor *Checkpoint
	// TailEntries and TailInterval, when set, are the journal's
	// CheckpointEvery and CheckpointInterval: entries after the last
	// checkpoint beyond what one interval allows (a crash tail) mean that
	// checkpoints were removed, and fail.
	TailEntries  int
	TailInterval time.Duration
	// Each, if set, is called with every good entry in order. An entry is
	// passed on only once the next entry's prev confirms its hash (or it is
	// the last), so an edited entry never reaches Each.
	Each func(e *Entry, line []byte) error
}

// Verify checks the journal in dir: every line canonical, sequence numbers
// consecutive from 0 across files, each entry's prev the hash of the entry
// before, each file named after its first entry, every checkpoint signed by
// the verifier and matching the Merkle root of the entries before it. It
// returns the first bad entry in Result.Bad; the error is for I/O only.
func Verify(dir string, opts VerifyOptions) (*Result, error) {
	files, err := Files(dir)
	if err != nil {
		return nil, err
	}
	res := &Result{Files: files}
	if len(files) == 0 {
		res.Bad = &Problem{Reason: "no journal files in " + dir}
		return res, nil
	}
	v := verifier{opts: opts, res: res, tree: newFrontier(), key: opts.Verifier}
	if opts.Verifier != nil {
		// A journal that outlived identity rotations verifies with any
		// key of its chain of handovers that signed a checkpoint
		// (handover.go; THREATS P7, TestHandoverVerifiesAcrossRotation).
		chain, err := scanHandovers(dir, files)
		if err != nil {
			return nil, err
		}
		if chain != nil {
			v.chain, v.given = chain, keyIndex(opts.Verifier, chain)
			if v.given < 0 {
				res.Bad = &Problem{File: files[0], Line: 1, Reason: fmt.Sprintf("the key given (%s+%08x) is none of the journal's keys: its key handovers name %d", opts.Verifier.Name(), opts.Verifier.KeyHash(), len(chain))}
				return res, nil
			}
			if v.key, err = note.NewVerifier(chain[0]); err != nil {
				res.Bad = &Problem{File: files[0], Line: 1, Reason: "the journal's first key handover names a malformed key: " + err.Error()}
				return res, nil
			}
		}
	}
	for _, name := range files {
		if err := v.file(dir, name); err != nil {
			return nil, err
		}
		if res.Bad != nil {
			return res, scanBreaks(dir, files, res)
		}
	}
	if !v.flush() {
		return res, nil
	}
	if len(res.Breaks) > 0 {
		// A journal a daemon continued over a break is signed from then on,
		// but what preceded the break is not evidence: it stays failed,
		// naming the bad entry the break recorded.
		b := res.Breaks[0]
		res.Bad = &Problem{File: b.Attr(AttrFile).AsString(), Line: int(b.Attr(AttrLine).AsInt64()), Seq: uint64(b.Attr(AttrBadSeq).AsInt64()),
			Reason: fmt.Sprintf("%s (found at a start, which went on at the operator's choice: dyad.journal.break at entry %d, %s)",
				b.Attr(AttrReason).AsString(), b.Seq, b.Time.Format(time.RFC3339))}
		return res, nil
	}
	if v.chain != nil && v.givenSigned == 0 {
		res.Bad = &Problem{File: files[len(files)-1], Seq: res.Entries, Reason: fmt.Sprintf(
			"no checkpoint is signed by the key given (%s+%08x): the key handovers that name it are not evidence alone", opts.Verifier.Name(), opts.Verifier.KeyHash())}
		return res, nil
	}
	if res.Checkpoints == 0 && res.Entries > 0 {
		// THREATS P7, tested by TestRewriteRefused.
		res.Bad = &Problem{File: files[0], Line: 1, Seq: 0, Reason: NoCheckpointReason(res.Entries)}
		return res, nil
	}
	if t := v.tailFirst; t != nil && opts.TailEntries > 0 &&
		(res.After > uint64(opts.TailEntries) || v.lastTime.After(res.Last.Time.Add(opts.TailInterval+tailSlack))) {
		res.Bad = &Problem{File: t.File, Line: t.Line, Seq: t.Seq, Reason: fmt.Sprintf(
			"%d entries after the last checkpoint (entry %d), the last at %s: more than one checkpoint interval allows (%d entries, %v): checkpoints were removed",
			res.After, t.Seq-1, v.lastTime.Format(time.RFC3339), opts.TailEntries, opts.TailInterval)}
		return res, nil
	}
	if opts.Anchor != nil && !res.Anchored {
		res.Bad = &Problem{File: files[len(files)-1], Seq: res.Entries,
			Reason: fmt.Sprintf("journal has %d entries, the anchor checkpoint covers %d: entries were cut from the end", res.Entries, opts.Anchor.Size)}
	}
	root, err := v.tree.root()
	if err != nil {
		return nil, err
	}
	res.Root = root
	return res, nil
}

// scanBreaks collects the break entries of a journal that failed, to
// report them: those after the bad entry are not verified.
func scanBreaks(dir string, files []string, res *Result) error {
	res.Breaks = nil
	marker := []byte(`,"name":"` + BreakEvent + `","severity":`)
	for _, name := range files {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		for line := range bytes.Lines(data) {
			if !bytes.Contains(line, marker) {
				continue
			}
			if e, err := Decode(bytes.TrimSuffix(line, []byte{'\n'})); err == nil && e.Name == BreakEvent {
				res.Breaks = append(res.Breaks, e)
			}
		}
	}
	return nil
}

type verifier struct {
	opts     VerifyOptions
	res      *Result
	tree     *frontier
	prevLine []byte
	pending  *pendingEntry // good so far; waits for the next entry's prev

	tailFirst *Problem  // where the entries after the last checkpoint begin
	lastTime  time.Time // the last entry's time

	// The signing keys (handover.go): chain from the handovers (nil if
	// none), key the one in force at keyPos, given the position of the
	// verifier key the caller gave, givenSigned the checkpoints it signed.
	key         note.Verifier
	chain       []string
	keyPos      int
	given       int
	givenSigned int
}

type pendingEntry struct {
	e    Entry
	line []byte
	file string
	no   int
}

// flush hands the pending entry to Each; false means Each refused it.
func (v *verifier) flush() bool {
	p := v.pending
	v.pending = nil
	if p == nil || v.opts.Each == nil {
		return true
	}
	if err := v.opts.Each(&p.e, p.line); err != nil {
		v.bad(p.file, p.no, p.e.Seq, err.Error())
		return false
	}
	return true
}

func (v *verifier) file(dir, name string) error {
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	defer f.Close()
	var first uint64
	if _, err := fmt.Sscanf(name, "dyad-audit-%020d.jsonl", &first); err != nil || fileName(first) != name {
		v.bad(name, 0, v.res.Entries, "file name does not follow dyad-audit-<first seq>.jsonl")
		return nil
	}
	if first != v.res.Entries {
		v.bad(name, 0, v.res.Entries, fmt.Sprintf("file starts at entry %d but %d entries precede it: a file is missing, renamed or truncated", first, v.res.Entries))
		return nil
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	sc.Split(scanLinesStrict)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		if !v.entry(name, lineNo, sc.Bytes()) {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, errPartial) {
			v.bad(name, lineNo+1, v.res.Entries, "incomplete last line: the journal was truncated or a write was cut short")
			return nil
		}
		if errors.Is(err, bufio.ErrTooLong) {
			v.bad(name, lineNo+1, v.res.Entries, "line longer than 1 MiB")
			return nil
		}
		return err
	}
	if lineNo == 0 {
		v.bad(name, 0, v.res.Entries, "empty journal file")
	}
	return nil
}

// entry checks one line; false means it was bad.
func (v *verifier) entry(name string, lineNo int, line []byte) bool {
	seq := v.res.Entries
	e, err := Decode(line)
	if err != nil {
		v.bad(name, lineNo, seq, err.Error())
		return false
	}
	if e.Seq != seq {
		v.bad(name, lineNo, seq, fmt.Sprintf("seq is %d where %d was expected: an entry was deleted, inserted or moved", e.Seq, seq))
		return false
	}
	want := [32]byte{}
	if v.prevLine != nil {
		want = Hash(v.prevLine)
	}
	if e.Prev != want {
		if seq == 0 {
			v.bad(name, lineNo, seq, "first entry's prev is not zero: the journal's beginning is missing")
		} else {
			// The entry before is the suspect (perhaps in the file before):
			// it never reaches Each.
			file, no := name, lineNo-1
			if p := v.pending; p != nil {
				file, no = p.file, p.no
			}
			v.pending = nil
			v.res.Entries--
			v.bad(file, no, seq-1, fmt.Sprintf("entry %d's hash differs from the prev recorded by entry %d: entry %d was changed (or entry %d's prev)", seq-1, seq, seq-1, seq))
		}
		return false
	}
	if !v.flush() {
		return false
	}
	if e.Name == CheckpointEvent {
		if reason := v.checkpoint(&e); reason != "" {
			v.bad(name, lineNo, seq, reason)
			return false
		}
	}
	if e.Name == HandoverEvent {
		if reason := v.handover(&e); reason != "" {
			v.bad(name, lineNo, seq, reason)
			return false
		}
	}
	v.pending = &pendingEntry{e: e, line: bytes.Clone(line), file: name, no: lineNo}
	if err := v.tree.add(line); err != nil {
		v.bad(name, lineNo, seq, err.Error())
		return false
	}
	v.prevLine = append(v.prevLine[:0], line...)
	v.res.Entries++
	v.lastTime = e.Time
	if e.Name != CheckpointEvent {
		if v.res.After == 0 {
			v.tailFirst = &Problem{File: name, Line: lineNo, Seq: seq}
		}
		v.res.After++
	}
	if e.Name == BreakEvent {
		v.res.Breaks = append(v.res.Breaks, e)
	}
	if a := v.opts.Anchor; a != nil && v.tree.size == a.Size {
		root, err := v.tree.root()
		if err != nil || root != a.Root {
			v.bad(name, lineNo, seq, fmt.Sprintf("the tree of the first %d entries does not match the anchor checkpoint: entries before it were changed", a.Size))
			return false
		}
		v.res.Anchored = true
	}
	return true
}

// checkpoint checks a checkpoint entry against the tree of the entries
// before it and returns what is wrong, or "".
func (v *verifier) checkpoint(e *Entry) string {
	signed := e.Attr(AttrCheckpoint)
	if signed.Type() != attribute.STRING {
		return "checkpoint without " + AttrCheckpoint
	}
	if v.key == nil {
		return "no verifier key to check the checkpoint signature"
	}
	cp, err := OpenCheckpoint(signed.AsString(), v.key)
	if err != nil {
		return err.Error()
	}
	if cp.Origin != v.key.Name() {
		return fmt.Sprintf("checkpoint origin %q is not the key name %q", cp.Origin, v.key.Name())
	}
	if uint64(cp.Size) != e.Seq {
		return fmt.Sprintf("checkpoint covers %d entries but stands at entry %d", cp.Size, e.Seq)
	}
	root, err := v.tree.root()
	if err != nil {
		return err.Error()
	}
	if root != cp.Root {
		return fmt.Sprintf("signed root does not match the first %d entries: an entry since the previous checkpoint (%d) was changed", cp.Size, v.res.Last.Size)
	}
	if e.Attr(AttrSize).AsInt64() != cp.Size || e.Attr(AttrRootHash).AsString() != encodeHash(cp.Root) ||
		e.Attr(AttrOrigin).AsString() != cp.Origin || len(e.Attrs) != 4 {
		return "checkpoint attributes differ from the signed checkpoint"
	}
	if !cp.Time.Equal(e.Time) || e.Severity != "INFO" {
		return "checkpoint time or severity differs from the signed checkpoint"
	}
	v.res.Checkpoints++
	if v.chain != nil && v.keyPos == v.given {
		v.givenSigned++
	}
	v.res.Covered = uint64(cp.Size)
	v.res.After = 0
	v.res.Last = cp
	return ""
}

func (v *verifier) bad(file string, line int, seq uint64, reason string) {
	v.res.Bad = &Problem{File: file, Line: line, Seq: seq, Reason: reason}
}

var errPartial = errors.New("partial line")

// scanLinesStrict is bufio.ScanLines without its tolerance: a final line
// with no newline is an error, not a line.
func scanLinesStrict(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return 0, nil, errPartial
	}
	return 0, nil, nil
}
