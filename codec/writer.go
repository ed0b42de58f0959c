package codec

import (
	"io"
)

// Writer seals what is written to it into records on one stream direction.
// It never waits to fill a record: each Write is sealed and sent at once, so
// interactive API calls stay fast, and ReadFrom coalesces only what one Read
// of its source returns. Close sends the close record that lets the peer
// tell a complete stream from a truncated one.
type Writer struct {
	w            io.Writer
	keys         halfKeys
	preamble     [PreambleSize]byte
	sentPreamble bool
	err          error                      // first permanent error; ErrClosed after Close
	ctl          [dataOffset + TagSize]byte // control records: close, key update
	sess         *Session
	streamID     uint64
	dir          Direction
	maxPayload   int       // the largest data record's payload: MaxPayload, or less (RecordSizer)
	maxBatch     int       // records ReadFrom may write at once: 1, or up to MaxBatchRecords (RecordBatcher)
	_            [0]func() // not comparable
}

// RecordSizer is a destination that carries records best at most
// MaxRecordPayload bytes of payload each (between 1 and MaxPayload; other
// values are ignored). The TCP transport asks for a little less than 64
// KiB so that a record, in its frame and TLS records, leaves in one 64 KiB
// TCP segment instead of a full one and a tail of a few hundred bytes.
// The wire format is unchanged: a record of any size up to MaxPayload is
// valid.
type RecordSizer interface {
	MaxRecordPayload() int
}

// RecordBatcher is a destination that carries several full records best in
// one Write: the TCP transport, where each Write is a yamux frame, a hand-off
// to its send loop and back, and a write(2). ReadFrom then reads up to
// MaxBatchRecords records' payload with one Read of its source and writes
// the records sealed from it in one Write (values below 2 are ignored, above
// MaxBatchRecords clamped). What one Read returns is sent at once, as
// without it: only the number of Writes changes, not when bytes leave.
// A Reader whose source is a RecordBatcher writes two records it already
// holds in one call (Reader.WriteTo).
type RecordBatcher interface {
	MaxBatchRecords() int
}

// MaxBatchRecords is the most records one batch carries (RecordBatcher).
const MaxBatchRecords = 2

// NewWriter returns a Writer that seals the direction dir of stream streamID
// onto w with the session's suite. It does not close w.
func (s *Session) NewWriter(w io.Writer, streamID uint64, dir Direction) *Writer {
	wr := &Writer{w: w, preamble: preamble(s.suite), sess: s, streamID: streamID, dir: dir, maxPayload: MaxPayload, maxBatch: 1}
	if rs, ok := w.(RecordSizer); ok {
		if n := rs.MaxRecordPayload(); n > 0 && n < MaxPayload {
			wr.maxPayload = n
		}
	}
	if rb, ok := w.(RecordBatcher); ok {
		wr.maxBatch = min(max(rb.MaxBatchRecords(), 1), MaxBatchRecords)
	}
	wr.keys.suite, wr.keys.limits = s.suite, s.limits
	secret, err := s.trafficSecret(wr.preamble, streamID, dir)
	if err == nil {
		err = wr.keys.install(secret)
	}
	wr.err = err
	return wr
}

// Write seals p into records of at most MaxPayload bytes (or the
// destination's RecordSizer size) and writes them.
func (w *Writer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if w.err != nil {
			return written, w.err
		}
		n := min(len(p), w.maxPayload)
		pool := writePool(n)
		bp := pool.get()
		// Seal straight from p into the pooled buffer: the AEAD's one
		// pass is the only copy.
		w.err = w.writeRecord(*bp, typeData, p[:n])
		pool.put(bp)
		if w.err != nil {
			return written, w.err
		}
		written += n
		p = p[n:]
	}
	return written, w.err
}

// ReadWaiter is a source that can wait until its next Read would not block
// (data, end of stream or an error is there) without a buffer: a TCP
// connection polled by the runtime, for example.
type ReadWaiter interface {
	// WaitRead returns nil once a Read would not block, or the error that
	// ends the source (it was closed, a deadline passed).
	WaitRead() error
}

// ReadFrom reads src until EOF, sealing what each Read returns, in place in
// a pooled buffer, as one record, or, to a RecordBatcher once the source
// fills whole records, as up to its MaxBatchRecords records written at
// once. It does not send the close record.
//
// If src is a ReadWaiter, ReadFrom calls WaitRead before it takes a buffer
// whenever src was drained (at the start and after a Read that did not
// fill the buffer), so that a stream whose sender is quiet holds no buffer;
// after a Read that filled the buffer it reads again at once.
func (w *Writer) ReadFrom(src io.Reader) (int64, error) {
	var total int64
	size := min(smallPayload, w.maxPayload)
	waiter, _ := src.(ReadWaiter)
	drained := true
	for w.err == nil {
		if waiter != nil && drained {
			// An idle stream holds no buffer (README, "Performance":
			// memory per idle connection; TestReadFromWaitsBeforeTakingBuffer).
			if err := waiter.WaitRead(); err != nil {
				return total, err
			}
		}
		pool := writePool(size)
		if size > w.maxPayload {
			// A batch needs a header and tag per record, which the
			// tier sized for its payload alone may not hold
			// (TestRecordBatcherSmallRecords).
			pool = writeMulti
		}
		bp := pool.get()
		b := *bp
		n, rerr := src.Read(b[dataOffset : dataOffset+size])
		if n > 0 {
			if n > w.maxPayload {
				var sent int
				sent, w.err = w.writeBatch(b, n)
				total += int64(sent)
			} else if w.err = w.writeRecord(b, typeData, b[dataOffset:dataOffset+n]); w.err == nil {
				total += int64(n)
			}
		}
		pool.put(bp)
		drained = n < size
		// Grow while the source keeps filling the buffer; shrink back
		// when it goes quiet, so an idle stream holds a small buffer.
		switch {
		case n == size && size < w.maxPayload:
			size = w.maxPayload
		case n == size:
			size = w.maxPayload * w.maxBatch
		case n <= smallPayload:
			size = min(smallPayload, w.maxPayload)
		}
		if rerr == io.EOF {
			return total, w.err
		}
		if rerr != nil {
			return total, rerr
		}
	}
	return total, w.err
}

// Close sends the close record. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if err := w.writeRecord(w.ctl[:], typeClose, nil); err != nil {
		w.err = err
		return err
	}
	w.err = ErrClosed
	return nil
}

// writeRecord seals one record in b and writes it, with the preamble if it
// is the first. payload is either b[dataOffset:dataOffset+len(payload)]
// (sealed in place) or outside b; b must have room for the tag after it.
func (w *Writer) writeRecord(b []byte, typ recordType, payload []byte) error {
	if typ == typeData {
		if err := w.updateKeyIfDue(len(payload)); err != nil {
			return err
		}
	}
	rec := b[PreambleSize : dataOffset+len(payload)+TagSize]
	w.keys.seal(rec, typ, payload)
	if !w.sentPreamble {
		copy(b, w.preamble[:])
		rec = b[:len(rec)+PreambleSize]
		w.sentPreamble = true
	}
	_, err := w.w.Write(rec)
	return err
}

// writeBatch seals the n bytes of payload at b[dataOffset:] (more than one
// record's) as consecutive records in b and writes them in one Write, or in
// two around a key update that falls inside the batch. Each record's
// payload is first moved to its place after the previous record's tag (a
// shift of HeaderSize+TagSize bytes per record, last first): a copy of
// half the batch, cheaper than the Write per record it saves (README, TCP
// fallback). It returns the payload bytes of the records written whole,
// also on an error after a key update sent the first ones.
func (w *Writer) writeBatch(b []byte, n int) (int, error) {
	mp := w.maxPayload
	k := (n + mp - 1) / mp
	for i := k - 1; i > 0; i-- {
		from := dataOffset + i*mp
		to := from + i*(HeaderSize+TagSize)
		copy(b[to:to+min(mp, n-i*mp)], b[from:from+min(mp, n-i*mp)])
	}
	start := PreambleSize // the first record not written yet
	if !w.sentPreamble {
		copy(b, w.preamble[:])
		start = 0
		w.sentPreamble = true
	}
	at := PreambleSize
	sent, sealed := 0, 0 // payload bytes written, and sealed since
	for i := range k {
		m := min(mp, n-i*mp)
		if w.keys.updateDue(m) {
			if at > start {
				if _, err := w.w.Write(b[start:at]); err != nil {
					return sent, err
				}
				sent, sealed = sent+sealed, 0
			}
			start = at
			if err := w.updateKeyIfDue(m); err != nil {
				return sent, err
			}
		}
		rec := b[at : at+HeaderSize+m+TagSize]
		w.keys.seal(rec, typeData, rec[HeaderSize:HeaderSize+m])
		at += len(rec)
		sealed += m
	}
	if _, err := w.w.Write(b[start:at]); err != nil {
		return sent, err
	}
	return sent + sealed, nil
}

// updateKeyIfDue sends a key update record and moves to the next key when
// sealing n more bytes would reach a key usage limit. Data records stop one
// short of the record limit, so the key update always fits under the old
// key (FORMAT.md, "Key update").
func (w *Writer) updateKeyIfDue(n int) error {
	k := &w.keys
	if !k.updateDue(n) {
		return nil
	}
	if k.gen >= k.limits.keyUpdates {
		return ErrKeyExhausted
	}
	if err := w.writeRecord(w.ctl[:], typeKeyUpdate, nil); err != nil {
		return err
	}
	if err := k.update(); err != nil {
		return err
	}
	if f := w.sess.onKey; f != nil {
		f(KeyUpdate{StreamID: w.streamID, Dir: w.dir, Sending: true, Generation: k.gen})
	}
	return nil
}
