package journal

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/mod/sumdb/tlog"
)

// Names and attributes of the entries Open writes about what it found.
const (
	BreakEvent       = "dyad.journal.break"
	WriteFailedEvent = "dyad.journal.write_failed"

	AttrFile             = "dyad.journal.file"
	AttrDiscardedBytes   = "dyad.journal.discarded_bytes"
	AttrRecoveredEntries = "dyad.journal.recovered_entries"
	AttrLastEntryTime    = "dyad.journal.last_entry_time"
	AttrLine             = "dyad.journal.line"
	AttrBadSeq           = "dyad.journal.bad_seq"
	AttrReason           = "dyad.journal.reason"
	AttrUnverified       = "dyad.journal.unverified_entries"
	AttrFailedSince      = "dyad.journal.failed_since"
	AttrLostEvents       = "dyad.journal.lost_events"
	AttrError            = "error.message"
)

// tailSlack is how much later than one CheckpointInterval after the last
// checkpoint a crash tail's last entry may be: the checkpoint timer's tick
// and a slow disk.
const tailSlack = 10 * time.Second

// BrokenError is Open's refusal of a journal that does not verify.
type BrokenError struct {
	Dir string
	Bad Problem
}

func (e *BrokenError) Error() string {
	return fmt.Sprintf("journal %s does not verify, nothing was signed: first bad entry: %s", e.Dir, &e.Bad)
}

// ErrBroken matches a *BrokenError with errors.Is.
var ErrBroken = errors.New("journal does not verify")

// Is makes errors.Is(err, ErrBroken) true.
func (e *BrokenError) Is(target error) bool { return target == ErrBroken }

// found is what recover found on disk.
type found struct {
	cut      int64  // bytes of a partial last line, cut
	cutFile  string // the file it was cut from
	tail     int    // entries after the last checkpoint
	last     time.Time
	broken   *Problem
	lastFile string
}

func (f *found) recoveredAttrs() []attribute.KeyValue {
	file := f.cutFile
	if file == "" {
		file = f.lastFile
	}
	return []attribute.KeyValue{
		attribute.String(AttrFile, file),
		attribute.Int64(AttrDiscardedBytes, f.cut),
		attribute.Int64(AttrRecoveredEntries, int64(f.tail)),
		attribute.String(AttrLastEntryTime, f.last.UTC().Format(time.RFC3339Nano)),
	}
}

func (f *found) breakAttrs(entries uint64) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String(AttrFile, f.broken.File),
		attribute.Int64(AttrLine, int64(f.broken.Line)),
		attribute.Int64(AttrBadSeq, int64(f.broken.Seq)),
		attribute.String(AttrReason, f.broken.Reason),
		attribute.Int64(AttrUnverified, int64(entries-f.broken.Seq)),
		attribute.Int64(AttrDiscardedBytes, f.cut),
	}
}

type diskLine struct {
	file string
	no   int
	seq  uint64
	line []byte
}

// recover replays the files into the chain and the tree and verifies what
// the next checkpoint would sign, from the last checkpoint on (so a big
// journal opens fast: entries before it are only hashed, and the signed
// root proves them): the checkpoint's position, prev, signature (Ed25519 is
// deterministic: re-signing its text must give the same note) and root, then
// every later entry's encoding, seq and chain, and that there are no more
// of them than one checkpoint interval allows. THREATS P7 (a daemon never
// signs what it has not verified), tested by TestRewriteRefused,
// TestCrashTailAdopted and TestCrashTailTooLong.
func (j *Journal) recover() (*found, error) {
	files, err := Files(j.opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	st := &found{}
	var problems []Problem
	problem := func(file string, no int, seq uint64, reason string) {
		problems = append(problems, Problem{File: file, Line: no, Seq: seq, Reason: reason})
	}
	var lastBreak int64 = -1 // seq of the last dyad.journal.break entry
	breakMarker := []byte(`,"name":"` + BreakEvent + `","severity":`)
	var (
		cp      *diskLine // the last checkpoint
		cpRoot  tlog.Hash
		cpPrev  [32]byte
		tail    []diskLine // entries after cp, at most CheckpointEvery+1
		tailLen int
		first   *diskLine // the first entry after cp
	)
	marker := []byte(`,"name":"` + CheckpointEvent + `","severity":`)
	for i, name := range files {
		path := filepath.Join(j.opts.Dir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
		if fileName(j.next) != name {
			problem(name, 0, j.next, fmt.Sprintf("file should be named %s: a file is missing, renamed or truncated", fileName(j.next)))
		}
		if k := bytes.LastIndexByte(data, '\n'); k+1 < len(data) {
			if i == len(files)-1 {
				st.cut, st.cutFile = int64(len(data)-(k+1)), name
				data = data[:k+1]
			} else {
				problem(name, bytes.Count(data, []byte{'\n'})+1, j.next+uint64(bytes.Count(data, []byte{'\n'})), "partial line in the middle of the journal")
			}
		}
		no := 0
		for line := range bytes.Lines(data) {
			no++
			line = bytes.TrimSuffix(line, []byte{'\n'})
			// The chain is checked on every entry (cheaply: prev is found
			// at its place in the canonical encoding, not decoded), so an
			// edit is named where it is; a rewritten chain is caught by
			// the checkpoint's root below.
			if !prevMatches(line, &j.prev) {
				if j.next == 0 {
					problem(name, no, 0, "first entry's prev is not zero: the journal's beginning is missing")
				} else {
					problem(name, no-1, j.next-1, fmt.Sprintf("entry %d's hash differs from the prev recorded by entry %d: entry %d was changed (or entry %d's prev)", j.next-1, j.next, j.next-1, j.next))
				}
			}
			isCP := false
			if bytes.Contains(line, marker) {
				if e, err := Decode(line); err == nil && e.Name == CheckpointEvent {
					isCP = true
				}
			}
			if bytes.Contains(line, breakMarker) {
				if e, err := Decode(line); err == nil && e.Name == BreakEvent {
					lastBreak = int64(j.next)
				}
			}
			if isCP {
				if cpRoot, err = j.tree.root(); err != nil {
					return nil, fmt.Errorf("journal: %w", err)
				}
				cp = &diskLine{file: name, no: no, seq: j.next, line: bytes.Clone(line)}
				cpPrev, tail, tailLen, first = j.prev, tail[:0], 0, nil
			} else {
				tailLen++
				if len(tail) <= j.opts.CheckpointEvery {
					tail = append(tail, diskLine{file: name, no: no, seq: j.next, line: bytes.Clone(line)})
				}
				if first == nil {
					first = &tail[0]
				}
			}
			if err := j.tree.add(line); err != nil {
				return nil, fmt.Errorf("journal: %s: %w", path, err)
			}
			j.prev = Hash(line)
			j.next++
		}
		j.file, j.fileBytes = name, int64(len(data))
		st.lastFile = name
	}
	st.tail = tailLen
	switch {
	case j.next == 0:
	case cp == nil:
		problem(files[0], 1, 0, NoCheckpointReason(j.next))
	default:
		e, _ := Decode(cp.line)
		st.last = e.Time
		if reason := j.checkCheckpoint(&e, cp.seq, cpPrev, cpRoot); reason != "" {
			problem(cp.file, cp.no, cp.seq, reason)
		}
		prev := Hash(cp.line)
		for _, t := range tail {
			e, err := Decode(t.line)
			switch {
			case err != nil:
				problem(t.file, t.no, t.seq, err.Error())
			case e.Seq != t.seq:
				problem(t.file, t.no, t.seq, fmt.Sprintf("seq is %d where %d was expected: an entry was deleted, inserted or moved", e.Seq, t.seq))
			case e.Prev != prev:
				problem(t.file, t.no, t.seq, fmt.Sprintf("prev is not the hash of entry %d: an entry was changed", t.seq-1))
			}
			if err != nil || e.Seq != t.seq || e.Prev != prev {
				break
			}
			prev, st.last = Hash(t.line), e.Time
		}
		if first != nil && st.broken == nil {
			limit := e.Time.Add(j.opts.CheckpointInterval + j.opts.CommitInterval + tailSlack)
			if tailLen > j.opts.CheckpointEvery || st.last.After(limit) {
				problem(first.file, first.no, first.seq, fmt.Sprintf(
					"%d entries after the last checkpoint (entry %d, %s), the last at %s: more than one checkpoint interval allows (%d entries, %v): checkpoints were removed",
					tailLen, cp.seq, e.Time.Format(time.RFC3339), st.last.Format(time.RFC3339), j.opts.CheckpointEvery, j.opts.CheckpointInterval))
			}
		}
	}
	// A break the operator accepted before is not found again: a break
	// entry covered by the last checkpoint, which verified, accepts every
	// problem before it (the daemon that wrote it hashed them all into the
	// tree that checkpoint signs). Verify still names the first of them.
	cpOK := cp != nil
	for _, p := range problems {
		if cp != nil && p.Seq == cp.seq {
			cpOK = false
		}
	}
	for _, p := range problems {
		if cpOK && lastBreak >= 0 && uint64(lastBreak) < cp.seq && p.Seq < uint64(lastBreak) {
			continue
		}
		if st.broken == nil || p.Seq < st.broken.Seq {
			st.broken = &p
		}
	}
	if st.broken != nil && j.opts.OnBroken != BrokenContinue {
		return nil, &BrokenError{Dir: j.opts.Dir, Bad: *st.broken}
	}
	if st.cut > 0 {
		path := filepath.Join(j.opts.Dir, st.cutFile)
		if err := os.Truncate(path, j.fileBytes); err != nil {
			return nil, fmt.Errorf("journal: cut partial line of %s: %w", path, err)
		}
	}
	return st, nil
}

// NoCheckpointReason says why a non-empty journal without a checkpoint is
// not one dyad wrote, and how that can happen.
func NoCheckpointReason(entries uint64) string {
	return fmt.Sprintf("the journal has %d entries and no signed checkpoint: dyad signs a genesis checkpoint when it creates a journal "+
		"and one at least every checkpoint interval, so its checkpoints were removed (and the entries possibly rewritten), "+
		"or it was written by something else, or by a dyad older than the genesis checkpoint that stopped before its first one", entries)
}

// prevMatches reports whether the line's prev field is prev. A line
// without one (not an entry at all) does not match.
func prevMatches(line []byte, prev *[32]byte) bool {
	const key = `","prev":"`
	i := bytes.Index(line, []byte(key))
	if i < 0 || len(line) < i+len(key)+64 {
		return false
	}
	var want [64]byte
	hex.Encode(want[:], prev[:])
	return bytes.Equal(line[i+len(key):i+len(key)+64], want[:])
}

// checkCheckpoint checks the last checkpoint entry, at position seq after
// an entry hashing to prev, against the tree root of the entries before
// it, and returns what is wrong or "".
func (j *Journal) checkCheckpoint(e *Entry, seq uint64, prev [32]byte, root tlog.Hash) string {
	switch {
	case e.Seq != seq:
		return fmt.Sprintf("checkpoint's seq is %d where %d was expected", e.Seq, seq)
	case e.Prev != prev:
		return fmt.Sprintf("checkpoint's prev is not the hash of entry %d: an entry was changed", seq-1)
	case len(e.Attrs) != 4 || e.Severity != "INFO" || e.Attr(AttrOrigin).AsString() != j.opts.Origin:
		return fmt.Sprintf("checkpoint attributes are not those of a checkpoint of origin %s", j.opts.Origin)
	case e.Attr(AttrSize).AsInt64() != int64(seq) || e.Attr(AttrRootHash).AsString() != encodeHash(root):
		return fmt.Sprintf("checkpoint's size or root does not match the first %d entries: an entry before it was changed", seq)
	}
	signed, err := signCheckpoint(j.opts.Signer, j.opts.Origin, int64(seq), root, e.Time)
	if err == nil && signed == e.Attr(AttrCheckpoint).AsString() {
		return ""
	}
	if p := matchPrevious(j.opts.Previous, j.opts.Origin, int64(seq), root, e.Time, e.Attr(AttrCheckpoint).AsString()); p != nil {
		j.handFrom = p
		return ""
	}
	return "checkpoint signature is not this daemon's key's signature of the entries before it"
}
