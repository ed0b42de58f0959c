// Package journal is dyad's local audit journal, the evidence of record: an
// append-only JSON Lines file in which every entry carries the SHA-256 of the
// previous one and is a leaf of a Merkle tree (RFC 6962 hashing, through
// golang.org/x/mod/sumdb/tlog). Every CheckpointEvery entries or
// CheckpointInterval, at rotation and at close, a checkpoint entry signed
// with the daemon's Ed25519 identity key records the tree's size and root, so
// a report can prove that an entry is included and that the journal only
// grew. Verify checks all of it and names the first bad entry.
//
// Appending never waits for the disk (except with SyncAlways): entries are
// encoded and chained in memory and a committer goroutine writes them in
// groups. Nothing is ever dropped: when MaxPending bytes are waiting for a
// stuck disk, Append waits.
package journal

import (
	"bytes"
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

// SyncPolicy says when the journal calls fsync.
type SyncPolicy int

const (
	// SyncInterval fsyncs each group commit, at most every CommitInterval;
	// Append never waits for the disk. The default.
	SyncInterval SyncPolicy = iota
	// SyncAlways makes Append return only once its entry is on stable
	// storage; concurrent appends share one fsync.
	SyncAlways
	// SyncNever leaves flushing to the operating system.
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

// Options configure a Journal. Zero values are the documented defaults.
type Options struct {
	Dir    string      // directory of the journal files, created 0700
	Origin string      // checkpoint origin and key name, e.g. "dyad/site-a"; no spaces or '+'
	Signer note.Signer // signs checkpoints (NewSigner)

	MaxFileBytes       int64         // rotate when a file reaches this size; zero means 64 MiB
	CheckpointEvery    int           // entries between checkpoints; zero means 1000
	CheckpointInterval time.Duration // checkpoint pending entries at least this often; zero means 1 min
	CommitInterval     time.Duration // longest wait before a group commit; zero means 100 ms
	MaxPending         int           // bytes waiting for the disk before Append waits; zero means 32 MiB
	Sync               SyncPolicy

	// OnCheckpoint, if set, is called with each checkpoint entry once it is
	// appended (not yet necessarily on disk), outside the journal's lock.
	OnCheckpoint func(Entry)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
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
	if o.MaxPending <= 0 {
		o.MaxPending = 32 << 20
	}
	if o.Now == nil {
		o.Now = time.Now
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

	mu              sync.Mutex // guards the following fields
	cond            *sync.Cond // signalled when pending shrinks or durable grows
	next            uint64     // seq of the next entry
	prev            [sha256.Size]byte
	tree            *frontier
	file            string // file that receives new entries
	fileBytes       int64  // size of file, pending bytes included
	pending         []segment
	pendingBytes    int
	sinceCheckpoint int
	lastCheckpoint  time.Time
	durable         uint64 // entries [0, durable) are written (and fsynced per policy)
	err             error  // first write error; sticky
	closed          bool

	kick chan struct{} // wakes the committer
	done chan struct{} // closed when the committer exits
	out  *os.File      // committer's open file; only the committer touches it
	name string        // out's base name
}

// Open opens the journal in opts.Dir, creating it if needed, and continues
// its chain and tree. A partial last line (a crash in the middle of a write)
// is cut off and recorded by a dyad.journal.recovered entry; anything else
// found is kept as it is, for Verify to judge.
func Open(opts Options) (*Journal, error) {
	opts.setDefaults()
	if opts.Signer == nil {
		return nil, errors.New("journal: no checkpoint signer")
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	j := &Journal{opts: opts, tree: newFrontier(), kick: make(chan struct{}, 1), done: make(chan struct{})}
	j.cond = sync.NewCond(&j.mu)
	cut, err := j.recover()
	if err != nil {
		return nil, err
	}
	j.lastCheckpoint = opts.Now()
	j.durable = j.next
	if j.file == "" {
		j.file = fileName(0)
	}
	go j.commitLoop()
	if cut > 0 {
		j.Append(RecoveredEvent, "WARN", opts.Now(), []attribute.KeyValue{
			attribute.String("dyad.journal.file", j.file),
			attribute.Int64("dyad.journal.discarded_bytes", cut),
		})
	}
	return j, nil
}

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

// recover replays the existing files into the chain and the tree. It
// returns how many bytes of a partial last line it cut off.
func (j *Journal) recover() (int64, error) {
	files, err := Files(j.opts.Dir)
	if err != nil {
		return 0, fmt.Errorf("journal: %w", err)
	}
	for i, name := range files {
		path := filepath.Join(j.opts.Dir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			return 0, fmt.Errorf("journal: %w", err)
		}
		var cut int64
		if k := bytes.LastIndexByte(data, '\n'); k+1 < len(data) {
			if i != len(files)-1 {
				return 0, fmt.Errorf("journal: %s: partial line in the middle of the journal; run dyad audit verify", path)
			}
			cut = int64(len(data) - (k + 1))
			data = data[:k+1]
			if err := os.Truncate(path, int64(len(data))); err != nil {
				return 0, fmt.Errorf("journal: cut partial line: %w", err)
			}
		}
		for line := range bytes.Lines(data) {
			line = line[:len(line)-1]
			if err := j.tree.add(line); err != nil {
				return 0, fmt.Errorf("journal: %s: %w", path, err)
			}
			j.prev = Hash(line)
			j.next++
		}
		j.file, j.fileBytes = name, int64(len(data))
		if cut > 0 {
			return cut, nil
		}
	}
	return 0, nil
}

// Append adds one event to the journal and returns its seq. It returns an
// error only when the journal is closed or its disk failed.
func (j *Journal) Append(name, severity string, t time.Time, attrs []attribute.KeyValue) (uint64, error) {
	j.mu.Lock()
	for j.pendingBytes >= j.opts.MaxPending && j.err == nil && !j.closed {
		j.cond.Wait() // the disk is behind: wait rather than lose evidence
	}
	if j.err != nil || j.closed {
		err := j.err
		j.mu.Unlock()
		if err == nil {
			err = errors.New("journal: closed")
		}
		return 0, err
	}
	seq, err := j.appendLocked(name, severity, t, attrs)
	var cps []Entry
	if err == nil {
		if j.sinceCheckpoint >= j.opts.CheckpointEvery || j.fileBytes >= j.opts.MaxFileBytes {
			var cp Entry
			if cp, err = j.checkpointLocked(); err == nil {
				cps = append(cps, cp)
			}
		}
	}
	if err == nil && j.opts.Sync == SyncAlways {
		j.kickCommitter()
		for j.durable <= seq && j.err == nil {
			j.cond.Wait()
		}
		err = j.err
	}
	// Group commit: the committer runs every CommitInterval; it is woken
	// early only for a waiting SyncAlways appender (above) or a big backlog.
	kick := j.pendingBytes >= flushBytes
	j.mu.Unlock()
	if kick {
		j.kickCommitter()
	}
	j.notify(cps)
	return seq, err
}

// flushBytes of pending entries wake the committer before its interval.
const flushBytes = 1 << 20

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

func (j *Journal) notify(cps []Entry) {
	if j.opts.OnCheckpoint == nil {
		return
	}
	for _, cp := range cps {
		j.opts.OnCheckpoint(cp)
	}
}

func (j *Journal) kickCommitter() {
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

// commitLoop writes pending segments in groups and checkpoints on time.
func (j *Journal) commitLoop() {
	defer close(j.done)
	t := time.NewTicker(j.opts.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-j.kick:
		case <-t.C:
			j.checkpointIfDue()
		}
		if !j.commit() {
			return
		}
	}
}

func (j *Journal) checkpointIfDue() {
	j.mu.Lock()
	var cps []Entry
	if j.sinceCheckpoint > 0 && !j.closed && j.err == nil && j.opts.Now().Sub(j.lastCheckpoint) >= j.opts.CheckpointInterval {
		if cp, err := j.checkpointLocked(); err == nil {
			cps = append(cps, cp)
		} else {
			j.err = err
		}
	}
	j.mu.Unlock()
	j.notify(cps)
}

// commit writes what is pending. It returns false once the journal is
// closed and everything is written.
func (j *Journal) commit() bool {
	j.mu.Lock()
	segs := j.pending
	j.pending = nil
	closed := j.closed
	j.mu.Unlock()

	var err error
	var last uint64
	wrote := false
	for _, s := range segs {
		if err = j.write(s); err != nil {
			break
		}
		last, wrote = s.last, true
	}
	if err == nil && wrote && j.opts.Sync != SyncNever {
		err = j.out.Sync()
	}

	j.mu.Lock()
	for _, s := range segs {
		j.pendingBytes -= len(s.data)
	}
	if err != nil && j.err == nil {
		j.err = fmt.Errorf("journal: write %s: %w", j.name, err)
	}
	if wrote && err == nil {
		j.durable = last + 1
	}
	more := len(j.pending) > 0
	j.cond.Broadcast()
	j.mu.Unlock()
	if more {
		j.kickCommitter()
		return true
	}
	if closed {
		if j.out != nil {
			j.out.Sync() // whatever the policy, a clean close is durable
			j.out.Close()
		}
		return false
	}
	return true
}

func (j *Journal) write(s segment) error {
	if s.file != j.name {
		if j.out != nil {
			if err := j.out.Sync(); err != nil {
				return err
			}
			if err := j.out.Close(); err != nil {
				return err
			}
		}
		f, err := os.OpenFile(filepath.Join(j.opts.Dir, s.file), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		j.out, j.name = f, s.file
	}
	_, err := j.out.Write(s.data)
	return err
}

// Close appends a final checkpoint, writes and syncs everything and stops
// the committer.
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
	j.cond.Broadcast()
	j.mu.Unlock()
	j.notify(cps)
	j.kickCommitter()
	<-j.done
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

// Flush writes (and fsyncs, per policy) every entry appended so far before
// it returns.
func (j *Journal) Flush() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	target := j.next
	for j.durable < target && j.err == nil && !j.closed {
		j.kickCommitter()
		j.cond.Wait()
	}
	return j.err
}

// Stats is a snapshot of the journal's counters.
type Stats struct {
	Entries      uint64 // entries appended, checkpoints included
	PendingBytes int    // encoded bytes not yet written
	Durable      uint64 // entries written (and fsynced per policy)
}

// Stats returns the journal's counters.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	defer j.mu.Unlock()
	return Stats{Entries: j.next, PendingBytes: j.pendingBytes, Durable: j.durable}
}

// Checkpoint appends a checkpoint now if any entry is not yet covered by one.
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
	j.mu.Unlock()
	j.notify(cps)
	j.kickCommitter()
	return err
}

func encodeHash(h [32]byte) string { return base64.StdEncoding.EncodeToString(h[:]) }
