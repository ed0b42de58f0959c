// Package journal is dyad's local audit journal, the evidence of record: an
// append-only JSON Lines file in which every entry carries the SHA-256 of the
// previous one and is a leaf of a Merkle tree (RFC 6962 hashing, through
// golang.org/x/mod/sumdb/tlog). A checkpoint entry signed with the daemon's
// Ed25519 identity key records the tree's size and root: when a journal is
// created (the genesis checkpoint, of the empty tree), every CheckpointEvery
// entries, every CheckpointInterval even when nothing happens, at rotation
// and at close, so a report can prove that an entry is included, that the
// journal only grew, and that its writer was alive. Verify checks all of it
// and names the first bad entry.
//
// Append returns only once its entry has been written to the kernel
// (write(2)): an entry Append returned for survives a crash of the process.
// Concurrent appenders share one write (group commit: one of them writes
// what all have encoded while the others wait). When the entry is also on
// stable storage depends on SyncPolicy. Open verifies what it finds before
// it signs anything (see Open), and one journal has one writer (a lock file).
package journal

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/mod/sumdb/note"
)

// SyncPolicy says when the journal calls fsync. Whatever the policy, Append
// returns only after its entry is written to the kernel, so a crash of the
// process (kill -9) loses no entry Append returned for; the policy decides
// what a power cut or a kernel crash can lose.
type SyncPolicy int

const (
	// SyncInterval fsyncs what was written at most every CommitInterval
	// (100 ms): a power cut loses at most the entries of the last
	// interval. Append never waits for fsync. The default.
	SyncInterval SyncPolicy = iota
	// SyncAlways makes Append return only once its entry is on stable
	// storage; concurrent appends share one fsync.
	SyncAlways
	// SyncNever leaves flushing to the operating system (fsync only at
	// rotation and close): a power cut loses what the kernel had not
	// flushed yet.
	SyncNever
)

// ParseSyncPolicy parses "interval", "always" or "never".
func ParseSyncPolicy(s string) (SyncPolicy, error) {
	switch s {
	case "", "interval":
		return SyncInterval, nil
	case "always":
		return SyncAlways, nil
	case "never":
		return SyncNever, nil
	}
	return 0, fmt.Errorf("unknown fsync policy %q (want interval, always or never)", s)
}

// String is the policy as the configuration writes it.
func (p SyncPolicy) String() string {
	switch p {
	case SyncAlways:
		return "always"
	case SyncNever:
		return "never"
	}
	return "interval"
}

// BrokenPolicy says what Open does with a journal that does not verify.
type BrokenPolicy int

const (
	// BrokenStop makes Open fail, naming the first bad entry. The default.
	BrokenStop BrokenPolicy = iota
	// BrokenContinue makes Open go on after the entries as they are on
	// disk, with a signed dyad.journal.break entry recording what was
	// found; Verify reports the bad entry for ever after.
	BrokenContinue
)

// ParseBrokenPolicy parses "stop" or "continue".
func ParseBrokenPolicy(s string) (BrokenPolicy, error) {
	switch s {
	case "", "stop":
		return BrokenStop, nil
	case "continue":
		return BrokenContinue, nil
	}
	return 0, fmt.Errorf("unknown on_broken policy %q (want stop or continue)", s)
}

// Options configure a Journal. Zero values are the documented defaults.
type Options struct {
	Dir    string      // directory of the journal files, created 0700
	Origin string      // checkpoint origin and key name, e.g. "dyad/site-a"; no spaces or '+'
	Signer note.Signer // signs checkpoints (NewSigner: Ed25519, deterministic)
	// Key is Signer's verifier key (VerifierKey): a key handover names
	// it. Empty: Handover fails.
	Key string
	// Previous are keys the journal may have been signed with before
	// Signer (an identity rotation's previous key, during its overlap): a
	// last checkpoint signed by one of them is accepted at Open, which
	// then writes the handover from it to Signer that a crash kept from
	// the journal.
	Previous []PreviousSigner

	MaxFileBytes       int64         // rotate when a file reaches this size; zero means 64 MiB
	CheckpointEvery    int           // entries between checkpoints; zero means 1000
	CheckpointInterval time.Duration // checkpoint at least this often, idle or not; zero means 1 min
	CommitInterval     time.Duration // fsync period (SyncInterval) and checkpoint timer tick; zero means 100 ms
	Sync               SyncPolicy
	OnBroken           BrokenPolicy
	// Holder describes the writer in the lock file, for the error a second
	// writer gets (e.g. "site bank-a, config /etc/dyad/dyad.yaml"); the
	// pid is always recorded.
	Holder string

	// OnCheckpoint, if set, is called with each entry the journal writes by
	// itself (checkpoints; the recovered, break and write_failed entries)
	// once it is written, outside the journal's lock. Those Open writes are
	// also kept for OpenedEntries, for a hook whose receiver does not exist
	// yet.
	OnCheckpoint func(Entry)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OpenFile opens a journal file for appending; nil means os.OpenFile.
	// Tests use it to make the disk fail.
	OpenFile func(name string, flag int, perm os.FileMode) (*os.File, error)
}

// WithDefaults returns the options with every zero value replaced by its
// default, as Open uses them.
func (o Options) WithDefaults() Options {
	o.setDefaults()
	return o
}

func (o *Options) setDefaults() {
	if o.MaxFileBytes <= 0 {
		o.MaxFileBytes = 64 << 20
	}
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = 1000
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = time.Minute
	}
	if o.CommitInterval <= 0 {
		o.CommitInterval = 100 * time.Millisecond
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.OpenFile == nil {
		o.OpenFile = os.OpenFile
	}
}

// segment is encoded entries waiting to be written to one file.
type segment struct {
	file string
	data []byte
	last uint64 // seq of the last entry in data
}

// Journal appends entries to the journal files in Dir. It is safe for
// concurrent use.
type Journal struct {
	opts Options
	lock *os.File // the held lock file; nil where locks are not supported
	// handFrom: Open found the last checkpoint signed by this previous
	// key, and hands over from it.
	handFrom *PreviousSigner

	mu              sync.Mutex // guards the following fields
	cond            *sync.Cond // signalled when written grows or a writer finishes
	next            uint64     // seq of the next entry
	prev            [sha256.Size]byte
	tree            *frontier
	file            string // file that receives new entries
	fileBytes       int64  // size of file, pending bytes included
	pending         []segment
	pendingBytes    int
	sinceCheckpoint int
	lastCheckpoint  time.Time
	writing         bool   // an appender is writing pending segments
	written         uint64 // entries [0, written) are written to the kernel
	synced          uint64 // entries [0, synced) are fsynced (SyncNever: written)
	err             error  // the write error the journal is failed with; nil once it resumed
	failedAt        time.Time
	lost            uint64 // Appends refused since err
	lastTry         time.Time
	closed          bool

	// syncMu guards out against the fsync timer while the writer (the
	// appender with writing set, the only one to change out) rotates.
	syncMu sync.Mutex
	out    *os.File
	name   string // out's base name
	outLen int64  // bytes of out known written; the writer's

	opened []Entry // what Open wrote by itself

	stop chan struct{} // closed by Close: stops the timer
	done chan struct{} // closed when the timer exits
}

// Open opens the journal in opts.Dir, creating it (with a signed genesis
// checkpoint) if needed, takes its lock, and continues its chain and tree.
// Before it signs anything it verifies what it continues (see recover): the
// last checkpoint's position, chain, tree root and signature, and every
// entry after it. A crash tail (entries after the last checkpoint that
// chain correctly and fit in one checkpoint interval, and a partial last
// line, which is cut) is adopted with one dyad.journal.recovered entry and a
// checkpoint; anything else that does not verify makes Open fail with a
// *BrokenError naming the first bad entry, unless opts.OnBroken is
// BrokenContinue.
func Open(opts Options) (*Journal, error) {
	opts.setDefaults()
	if opts.Signer == nil {
		return nil, errors.New("journal: no checkpoint signer")
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	lock, err := lockDir(opts.Dir, opts.Holder)
	if err != nil {
		return nil, err
	}
	j := &Journal{opts: opts, lock: lock, tree: newFrontier(), stop: make(chan struct{}), done: make(chan struct{})}
	j.cond = sync.NewCond(&j.mu)
	st, err := j.recover()
	if err != nil {
		unlockDir(lock)
		return nil, err
	}
	j.lastCheckpoint = opts.Now()
	j.written, j.synced = j.next, j.next
	if j.file == "" {
		j.file = fileName(0)
	}
	// What Open itself records is written (and signed) before it returns.
	var cps []Entry
	own := func(name, severity string, attrs []attribute.KeyValue) {
		now := opts.Now().UTC()
		var seq uint64
		if seq, err = j.appendLocked(name, severity, now, attrs); err == nil {
			cps = append(cps, Entry{Seq: seq, Time: now, Name: name, Severity: severity, Attrs: attrs})
		}
	}
	j.mu.Lock()
	switch {
	case st.broken != nil:
		own(BreakEvent, "ERROR", st.breakAttrs(j.next))
	case st.tail > 0 || st.cut > 0:
		own(RecoveredEvent, "WARN", st.recoveredAttrs())
	}
	if from := j.handFrom; err == nil && from != nil {
		// The last checkpoint is a previous key's: hand over from it
		// now, before the current key signs anything.
		cur, curKey := j.opts.Signer, j.opts.Key
		j.opts.Signer, j.opts.Key = from.Signer, from.Key
		var hs []Entry
		if hs, err = j.handoverLocked(cur, curKey); err == nil {
			cps = append(cps, hs...)
		}
	}
	if err == nil && (j.sinceCheckpoint > 0 || j.next == 0) {
		var cp Entry
		if cp, err = j.checkpointLocked(); err == nil { // the genesis checkpoint when the journal is new
			cps = append(cps, cp)
		}
	}
	if err == nil {
		err = j.writeLocked(j.next)
	}
	j.mu.Unlock()
	if err != nil {
		j.closeOut()
		unlockDir(lock)
		return nil, err
	}
	j.opened = cps
	go j.timer()
	j.notify(cps)
	return j, nil
}

// OpenedEntries returns the entries Open wrote by itself (a recovery or
// break entry, the checkpoint after it or the genesis checkpoint), so that
// an exporter created after Open can still send them.
func (j *Journal) OpenedEntries() []Entry { return j.opened }

// fileName names a journal file by the seq of its first entry, so that
// lexical order is journal order.
func fileName(first uint64) string { return fmt.Sprintf("dyad-audit-%020d.jsonl", first) }

// Files lists the journal files in dir in journal order.
func Files(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "dyad-audit-") && strings.HasSuffix(n, ".jsonl") && e.Type().IsRegular() {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Append adds one event to the journal and returns its seq once the entry
// is written to the kernel (and fsynced, under SyncAlways). It returns an
// error only when the journal is closed or its disk failed; then the entry
// is not in the journal.
func (j *Journal) Append(name, severity string, t time.Time, attrs []attribute.KeyValue) (uint64, error) {
	j.mu.Lock()
	if j.err != nil || j.closed {
		err := j.err
		if err != nil {
			j.lost++
		}
		j.mu.Unlock()
		if err == nil {
			err = errors.New("journal: closed")
		}
		return 0, err
	}
	seq, err := j.appendLocked(name, severity, t, attrs)
	var cps []Entry
	if err == nil && (j.sinceCheckpoint >= j.opts.CheckpointEvery || j.fileBytes >= j.opts.MaxFileBytes) {
		var cp Entry
		if cp, err = j.checkpointLocked(); err == nil {
			cps = append(cps, cp)
		}
	}
	if err == nil {
		// THREATS P7 (an acknowledged event survives kill -9), tested by
		// TestAppendWrittenBeforeReturn and TestKillNineKeepsStreams.
		err = j.writeLocked(j.next)
	}
	if err != nil && j.err != nil {
		j.lost++
	}
	j.mu.Unlock()
	j.notify(cps)
	return seq, err
}

func (j *Journal) appendLocked(name, severity string, t time.Time, attrs []attribute.KeyValue) (uint64, error) {
	e := Entry{Seq: j.next, Time: t.UTC(), Prev: j.prev, Name: name, Severity: severity, Attrs: attrs}
	var seg *segment
	if n := len(j.pending); n > 0 && j.pending[n-1].file == j.file {
		seg = &j.pending[n-1]
	} else {
		j.pending = append(j.pending, segment{file: j.file})
		seg = &j.pending[len(j.pending)-1]
	}
	start := len(seg.data)
	seg.data = e.AppendEncode(seg.data)
	line := seg.data[start:]
	if err := j.tree.add(line); err != nil {
		seg.data = seg.data[:start]
		return 0, fmt.Errorf("journal: %w", err)
	}
	j.prev = Hash(line)
	seg.data = append(seg.data, '\n')
	seg.last = e.Seq
	n := len(seg.data) - start
	j.pendingBytes += n
	j.fileBytes += int64(n)
	j.sinceCheckpoint++
	j.next++
	return e.Seq, nil
}

// checkpointLocked appends a signed checkpoint of every entry so far and,
// when the file is full, moves new entries to a fresh file.
func (j *Journal) checkpointLocked() (Entry, error) {
	size := int64(j.next)
	root, err := j.tree.root()
	if err != nil {
		return Entry{}, fmt.Errorf("journal: %w", err)
	}
	now := j.opts.Now().UTC()
	signed, err := signCheckpoint(j.opts.Signer, j.opts.Origin, size, root, now)
	if err != nil {
		return Entry{}, err
	}
	attrs := []attribute.KeyValue{
		attribute.String(AttrOrigin, j.opts.Origin),
		attribute.Int64(AttrSize, size),
		attribute.String(AttrRootHash, encodeHash(root)),
		attribute.String(AttrCheckpoint, signed),
	}
	seq, err := j.appendLocked(CheckpointEvent, "INFO", now, attrs)
	if err != nil {
		return Entry{}, err
	}
	j.sinceCheckpoint, j.lastCheckpoint = 0, now
	if j.fileBytes >= j.opts.MaxFileBytes {
		j.file, j.fileBytes = fileName(j.next), 0
	}
	return Entry{Seq: seq, Time: now.UTC(), Name: CheckpointEvent, Severity: "INFO", Attrs: attrs}, nil
}

// writeLocked returns once entries [0, target) are written (and, under
// SyncAlways, fsynced), or the disk failed. Called with mu held. The first
// waiter without a writer becomes the writer of everything pending, so
// concurrent appenders share one write(2) (and one fsync); the others wait
// for it.
func (j *Journal) writeLocked(target uint64) error {
	for j.written < target && j.err == nil {
		if j.writing {
			j.cond.Wait()
			continue
		}
		segs := j.pending
		if len(segs) == 0 {
			break // nothing pending below target: cannot happen, never spin
		}
		j.pending, j.writing = nil, true
		j.mu.Unlock()
		var err error
		var last uint64
		for _, s := range segs {
			if err = j.write(s); err != nil {
				break
			}
			last = s.last
		}
		if err == nil && j.opts.Sync == SyncAlways {
			err = j.out.Sync()
		}
		j.mu.Lock()
		j.writing = false
		for _, s := range segs {
			j.pendingBytes -= len(s.data)
		}
		if err != nil {
			j.failLocked(fmt.Errorf("journal: write %s: %w", filepath.Join(j.opts.Dir, j.name), err))
		} else {
			j.written = last + 1
			if j.opts.Sync != SyncInterval {
				j.synced = j.written
			}
		}
		j.cond.Broadcast()
	}
	return j.err
}

// write writes one segment; only the writer calls it.
func (j *Journal) write(s segment) error {
	if s.file != j.name {
		f, err := j.opts.OpenFile(filepath.Join(j.opts.Dir, s.file), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return err
		}
		j.syncMu.Lock()
		old := j.out
		j.out, j.name, j.outLen = f, s.file, st.Size()
		var serr error
		if old != nil {
			// The old file's entries count as synced once the timer
			// syncs the new one: sync it before it is closed.
			if serr = old.Sync(); serr == nil {
				serr = old.Close()
			}
		}
		j.syncMu.Unlock()
		if serr != nil {
			return serr
		}
	}
	n, err := j.out.Write(s.data)
	if err == nil {
		j.outLen += int64(n)
	}
	return err
}

func (j *Journal) notify(cps []Entry) {
	if j.opts.OnCheckpoint == nil {
		return
	}
	for _, cp := range cps {
		j.opts.OnCheckpoint(cp)
	}
}

// timer fsyncs (SyncInterval) and signs a checkpoint every
// CheckpointInterval, whether or not anything happened: the journal's
// evidence that its writer was alive.
func (j *Journal) timer() {
	defer close(j.done)
	t := time.NewTicker(j.opts.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-j.stop:
			return
		case <-t.C:
		}
		j.resumeIfFailed()
		j.checkpointIfDue()
		if j.opts.Sync == SyncInterval {
			j.syncWritten()
		}
	}
}

func (j *Journal) checkpointIfDue() {
	j.mu.Lock()
	var cps []Entry
	if !j.closed && j.err == nil && j.opts.Now().Sub(j.lastCheckpoint) >= j.opts.CheckpointInterval {
		cp, err := j.checkpointLocked()
		if err == nil {
			err = j.writeLocked(j.next)
		}
		if err == nil {
			cps = append(cps, cp)
		} else if j.err == nil {
			j.failLocked(err)
		}
	}
	j.mu.Unlock()
	j.notify(cps)
}

// failLocked puts the journal in the failed state: every Append is refused
// (and counted in lost) until resumeIfFailed finds the disk writable again.
func (j *Journal) failLocked(err error) {
	if j.err == nil {
		j.err, j.failedAt, j.lost = err, j.opts.Now(), 0
	}
}

// resumeRetry is how often a failed journal tries its disk again.
const resumeRetry = time.Second

// Err returns the error the journal is failed with (a write or fsync that
// failed: disk full, I/O error), or nil when Append can write.
func (j *Journal) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

// resumeIfFailed tries, once per resumeRetry, to continue a failed
// journal: it cuts what the failed write may have left, rebuilds the chain
// and tree from the disk (verifying as Open does), and writes a
// dyad.journal.write_failed entry saying since when and how many events
// were lost, and a checkpoint. On failure it stays failed.
func (j *Journal) resumeIfFailed() {
	j.mu.Lock()
	if j.err == nil || j.closed || j.writing || j.opts.Now().Sub(j.lastTry) < resumeRetry {
		j.mu.Unlock()
		return
	}
	j.lastTry = j.opts.Now()
	j.writing = true // no Append writes while the state is rebuilt
	j.mu.Unlock()

	fresh := &Journal{opts: j.opts, tree: newFrontier()}
	fresh.opts.OnBroken = BrokenStop
	var st *found
	j.syncMu.Lock()
	err := error(nil)
	if j.out != nil {
		j.out.Close()
		// Cut what the failed write may have left (a partial line).
		if err = os.Truncate(filepath.Join(j.opts.Dir, j.name), j.outLen); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		j.out, j.name = nil, ""
	}
	j.syncMu.Unlock()
	if err == nil {
		st, err = fresh.recover()
	}

	j.mu.Lock()
	j.writing = false
	defer j.cond.Broadcast()
	if err != nil {
		j.mu.Unlock()
		return
	}
	cause, since, lost := j.err, j.failedAt, j.lost
	j.next, j.prev, j.tree, j.file, j.fileBytes = fresh.next, fresh.prev, fresh.tree, fresh.file, fresh.fileBytes
	j.sinceCheckpoint, j.pending, j.pendingBytes = st.tail, nil, 0
	j.written, j.synced, j.err = j.next, j.next, nil
	if j.file == "" {
		j.file = fileName(0)
	}
	var cps []Entry
	now := j.opts.Now().UTC()
	attrs := []attribute.KeyValue{
		attribute.String(AttrFailedSince, since.UTC().Format(time.RFC3339Nano)),
		attribute.Int64(AttrLostEvents, int64(lost)),
		attribute.String(AttrError, cause.Error()),
	}
	seq, err := j.appendLocked(WriteFailedEvent, "ERROR", now, attrs)
	if err == nil {
		cps = append(cps, Entry{Seq: seq, Time: now, Name: WriteFailedEvent, Severity: "ERROR", Attrs: attrs})
		var cp Entry
		if cp, err = j.checkpointLocked(); err == nil {
			cps = append(cps, cp)
		}
	}
	if err == nil {
		err = j.writeLocked(j.next)
	}
	if err != nil {
		j.failLocked(err)
		j.failedAt, j.lost = since, lost // one outage, counted on
		j.mu.Unlock()
		return
	}
	j.mu.Unlock()
	j.notify(cps)
}

// syncWritten fsyncs the current file, which makes every written entry
// durable (rotation syncs the file it leaves).
func (j *Journal) syncWritten() {
	j.mu.Lock()
	target := j.written
	done := target <= j.synced
	j.mu.Unlock()
	if done {
		return
	}
	j.syncMu.Lock()
	var err error
	if j.out != nil {
		err = j.out.Sync()
	}
	j.syncMu.Unlock()
	j.mu.Lock()
	if err != nil && j.err == nil {
		j.failLocked(fmt.Errorf("journal: fsync %s: %w", filepath.Join(j.opts.Dir, j.name), err))
	} else if err == nil && target > j.synced {
		j.synced = target
	}
	j.cond.Broadcast()
	j.mu.Unlock()
}

func (j *Journal) closeOut() {
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	if j.out != nil {
		j.out.Sync() // whatever the policy, a clean close is durable
		j.out.Close()
		j.out = nil
	}
}

// Close appends a final checkpoint, writes and syncs everything, stops the
// timer and releases the journal's lock.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return errors.New("journal: already closed")
	}
	var cps []Entry
	if j.sinceCheckpoint > 0 && j.err == nil {
		cp, err := j.checkpointLocked()
		if err != nil {
			j.err = err
		} else {
			cps = append(cps, cp)
		}
	}
	j.closed = true
	j.writeLocked(j.next)
	j.mu.Unlock()
	close(j.stop)
	<-j.done
	j.notify(cps)
	j.closeOut()
	unlockDir(j.lock)
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err == nil {
		j.synced = j.written
	}
	return j.err
}

// Flush returns once every entry appended so far is written and fsynced
// (SyncNever: written).
func (j *Journal) Flush() error {
	j.mu.Lock()
	err := j.writeLocked(j.next)
	j.mu.Unlock()
	if err == nil && j.opts.Sync == SyncInterval {
		j.syncWritten()
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

// Stats is a snapshot of the journal's counters.
type Stats struct {
	Entries      uint64 // entries appended, checkpoints included
	PendingBytes int    // encoded bytes not yet written (a group being written)
	Written      uint64 // entries written to the kernel: they survive a crash of the process
	Durable      uint64 // entries fsynced (SyncNever: written)
}

// Stats returns the journal's counters.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	defer j.mu.Unlock()
	return Stats{Entries: j.next, PendingBytes: j.pendingBytes, Written: j.written, Durable: j.synced}
}

// Checkpoint appends a checkpoint now if any entry is not yet covered by
// one, and returns once it is written.
func (j *Journal) Checkpoint() error {
	j.mu.Lock()
	var cps []Entry
	var err error
	if j.closed {
		err = errors.New("journal: closed")
	} else if j.sinceCheckpoint > 0 {
		var cp Entry
		if cp, err = j.checkpointLocked(); err == nil {
			cps = append(cps, cp)
		}
	}
	if err == nil {
		err = j.writeLocked(j.next)
	}
	j.mu.Unlock()
	j.notify(cps)
	return err
}

func encodeHash(h [32]byte) string { return base64.StdEncoding.EncodeToString(h[:]) }
