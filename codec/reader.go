package codec

import (
	"errors"
	"fmt"
	"io"
	"net"
)

// Reader opens the records of one stream direction. Read and WriteTo return
// plaintext; Next returns it without a copy, as a slice of a pooled buffer.
// The stream ends with io.EOF only after an authenticated close record; an
// end anywhere else is ErrTruncated, and bytes the Reader has already read
// past the close record are ErrTrailingData (it reads nothing more after
// it). The first error is permanent.
type Reader struct {
	r        io.Reader
	sess     *Session
	streamID uint64
	dir      Direction
	keys     halfKeys
	started  bool // preamble read and keys installed

	// Buffered transport bytes are (*bp)[start:end]. bp is nil while the
	// stream is drained, so an idle stream holds no buffer.
	bp         *[]byte
	tier       *bufPool
	start, end int
	rerr       error  // transport error seen after the bytes before it
	plain      []byte // plaintext not yet returned by Read
	err        error  // first permanent error, or io.EOF after close
	maxBody    int    // SetMaxRecord's bound on a record body; 0: none beyond the format's
	small      [PreambleSize]byte
	batch      bool        // the source is a RecordBatcher: WriteTo writes two records at once
	vecs       [2][]byte   // WriteTo's two records at once
	vec        net.Buffers // over vecs, consumed by its WriteTo
}

// SetMaxRecord bounds the payload of the records read from now on to n
// bytes (0 lifts the bound): a larger one fails with ErrOversize once its
// header is read, before a buffer for its body is taken. A responder sets it
// while it waits for a stream's first record, so that a stream whose
// request is not yet authenticated holds no more than a small buffer.
func (r *Reader) SetMaxRecord(n int) { r.maxBody = n }

// NewReader returns a Reader of the direction dir of stream streamID read
// from r. The suite comes from the peer's preamble and must be one the
// session accepts.
func (s *Session) NewReader(r io.Reader, streamID uint64, dir Direction) *Reader {
	rd := &Reader{r: r, sess: s, streamID: streamID, dir: dir}
	if rb, ok := r.(RecordBatcher); ok && rb.MaxBatchRecords() > 1 {
		rd.batch = true
	}
	return rd
}

// Read copies plaintext into p.
func (r *Reader) Read(p []byte) (int, error) {
	if len(r.plain) == 0 {
		if len(p) == 0 {
			return 0, r.err
		}
		pt, err := r.Next()
		if err != nil {
			return 0, err
		}
		r.plain = pt
	}
	n := copy(p, r.plain)
	r.plain = r.plain[n:]
	return n, nil
}

// WriteTo writes the plaintext to w, straight from the pooled buffer, until
// the close record. A clean end returns a nil error. When the source is a
// RecordBatcher (the TCP transport, whose frames carry two records) and the
// next data record is already buffered whole, it opens that one too and
// writes both in one call: one writev(2) to a socket (net.Buffers), no copy,
// and no wait for bytes not yet read (TestWriteToBatchesBufferedRecords).
// A record that fails to open after one that opened is reported after that
// one is written, as one at a time.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		pt := r.plain
		r.plain = nil
		if len(pt) == 0 {
			var err error
			if pt, err = r.Next(); err == io.EOF {
				return total, nil
			} else if err != nil {
				return total, err
			}
		}
		pt2, err2 := r.nextBuffered()
		var n int64
		var err error
		if len(pt2) == 0 {
			var m int
			m, err = w.Write(pt)
			n = int64(m)
		} else {
			// vec lives in the Reader, so WriteTo's pointer receiver
			// allocates nothing per call.
			r.vec = append(r.vecs[:0], pt, pt2)
			n, err = r.vec.WriteTo(w)
			r.vecs = [2][]byte{} // no reference to a pooled buffer kept
		}
		total += n
		if err != nil {
			if err2 != nil {
				r.fail(err2)
			}
			return total, err
		}
		if err2 != nil {
			return total, r.fail(err2)
		}
	}
}

// nextBuffered opens the next record if it is a data record already
// buffered whole, without reading the transport, so that a record opened
// before it (a slice of the same buffer, which this does not move) stays
// valid. It returns nothing when there is no such record; an error is the
// record's, permanent once the caller has written what came before it.
func (r *Reader) nextBuffered() ([]byte, error) {
	if !r.batch || r.bp == nil || r.end-r.start < HeaderSize {
		return nil, nil
	}
	hdr := (*r.bp)[r.start : r.start+HeaderSize]
	if recordType(hdr[0]) != typeData {
		return nil, nil // key updates and the close record take Next's way
	}
	n, err := r.bodyLen(hdr)
	if err != nil || r.end-r.start < HeaderSize+n {
		return nil, nil // Next reports the error, or reads the rest
	}
	rec := (*r.bp)[r.start : r.start+HeaderSize+n]
	r.start += HeaderSize + n
	typ, pt, err := r.keys.open(rec)
	if err == nil && typ != typeData {
		// The header's type is authenticated: open refused any change.
		err = fmt.Errorf("%w: %v", ErrRecordType, typ)
	}
	if err != nil {
		return nil, err
	}
	return pt, nil
}

// Next returns the plaintext of the next data record, a slice of a pooled
// buffer that stays valid until the next call to Next, Read, WriteTo or
// Release. It returns io.EOF after the close record.
func (r *Reader) Next() ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	if !r.started {
		if err := r.readPreamble(); err != nil {
			return nil, r.fail(err)
		}
	}
	for {
		typ, pt, err := r.readRecord()
		if err != nil {
			return nil, r.fail(err)
		}
		switch typ {
		case typeData:
			return pt, nil
		case typeKeyUpdate:
			if err := r.keys.update(); err != nil {
				return nil, r.fail(err)
			}
			if f := r.sess.onKey; f != nil {
				f(KeyUpdate{StreamID: r.streamID, Dir: r.dir, Sending: false, Generation: r.keys.gen})
			}
		case typeClose:
			// Bytes already read past the close record are a protocol
			// error; bytes that arrive later are the transport's to
			// see (the tunnel waits for the FIN). Tested by
			// TestTrailingDataAfterClose.
			if r.start != r.end {
				return nil, r.fail(fmt.Errorf("%w: %d bytes", ErrTrailingData, r.end-r.start))
			}
			return nil, r.fail(io.EOF)
		}
	}
}

// Release returns the Reader's buffer to its pool and ends the Reader: later
// calls return ErrClosed. Use it to abandon a stream before its end; a Reader
// that returned an error or io.EOF has released its buffer already.
func (r *Reader) Release() {
	r.fail(ErrClosed)
}

// fail records the first permanent error and releases the buffer.
func (r *Reader) fail(err error) error {
	if r.err == nil {
		r.err = err
	}
	r.plain = nil
	r.release()
	return r.err
}

func (r *Reader) readPreamble() error {
	if _, err := io.ReadFull(r.r, r.small[:PreambleSize]); err != nil {
		return truncated(err)
	}
	suite, err := r.sess.parsePreamble(r.small)
	if err != nil {
		return err
	}
	r.keys.suite, r.keys.limits = suite, r.sess.limits
	secret, err := r.sess.trafficSecret(r.small, r.streamID, r.dir)
	if err != nil {
		return err
	}
	if err := r.keys.install(secret); err != nil {
		return err
	}
	r.started = true
	return nil
}

// readRecord reads, authenticates and decrypts the next record.
func (r *Reader) readRecord() (recordType, []byte, error) {
	if r.bp != nil && r.start == r.end {
		r.release()
	}
	if r.bp == nil {
		// Drained: wait for the next header in the Reader itself, and
		// take a buffer only once the record's size is known.
		if r.rerr != nil {
			return 0, nil, truncated(r.rerr)
		}
		if _, err := io.ReadFull(r.r, r.small[:HeaderSize]); err != nil {
			return 0, nil, truncated(err)
		}
		n, err := r.bodyLen(r.small[:HeaderSize])
		if err != nil {
			return 0, nil, err
		}
		r.acquire(HeaderSize + n)
		r.end = copy(*r.bp, r.small[:HeaderSize])
	} else if err := r.fill(HeaderSize); err != nil {
		return 0, nil, err
	}
	n, err := r.bodyLen((*r.bp)[r.start : r.start+HeaderSize])
	if err != nil {
		return 0, nil, err
	}
	need := HeaderSize + n
	if err := r.fill(need); err != nil {
		return 0, nil, err
	}
	rec := (*r.bp)[r.start : r.start+need]
	r.start += need
	return r.keys.open(rec)
}

// bodyLen is the format's bodyLen under the SetMaxRecord bound.
func (r *Reader) bodyLen(hdr []byte) (int, error) {
	n, err := bodyLen(hdr)
	if err == nil && r.maxBody > 0 && n > r.maxBody+TagSize {
		return 0, fmt.Errorf("%w: body of %d bytes, limit %d here", ErrOversize, n, r.maxBody+TagSize)
	}
	return n, err
}

// fill makes sure at least need bytes are buffered from start on, growing
// the buffer or moving the partial record to its front as needed, and reads
// greedily: whatever the transport has beyond need is kept for later.
func (r *Reader) fill(need int) error {
	if need > len(*r.bp) {
		old, oldTier := r.bp, r.tier
		r.bp, r.tier = readLarge.get(), readLarge
		r.end = copy(*r.bp, (*old)[r.start:r.end])
		r.start = 0
		oldTier.put(old)
	} else if r.start+need > len(*r.bp) {
		r.end = copy(*r.bp, (*r.bp)[r.start:r.end])
		r.start = 0
	}
	b := *r.bp
	for r.end-r.start < need {
		if r.rerr != nil {
			return truncated(r.rerr)
		}
		n, err := r.r.Read(b[r.end:])
		r.end += n
		if err != nil {
			r.rerr = err
		}
	}
	return nil
}

// acquire takes a buffer that fits a record of n bytes.
func (r *Reader) acquire(n int) {
	r.tier = readSmall
	if n > HeaderSize+smallPayload+TagSize {
		r.tier = readLarge
	}
	r.bp = r.tier.get()
	r.start, r.end = 0, 0
}

func (r *Reader) release() {
	if r.bp != nil {
		r.tier.put(r.bp)
		r.bp, r.tier = nil, nil
	}
	r.start, r.end = 0, 0
}

// truncated maps an end of the transport to ErrTruncated; other transport
// errors (a reset stream, a closed connection) pass through unchanged.
func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return ErrTruncated
	}
	return err
}
