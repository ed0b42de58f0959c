package codec

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
)

// waitingSource is a ReadWaiter that hands out its chunks one Read at a
// time and logs every WaitRead and Read.
type waitingSource struct {
	chunks  [][]byte
	log     []string
	waitErr error
}

func (s *waitingSource) WaitRead() error {
	s.log = append(s.log, "wait")
	return s.waitErr
}

func (s *waitingSource) Read(p []byte) (int, error) {
	if len(s.chunks) == 0 {
		s.log = append(s.log, "eof")
		return 0, io.EOF
	}
	n := copy(p, s.chunks[0])
	s.chunks[0] = s.chunks[0][n:]
	if len(s.chunks[0]) == 0 {
		s.chunks = s.chunks[1:]
	}
	s.log = append(s.log, fmt.Sprint(n))
	return n, nil
}

// TestReadFromWaitsBeforeTakingBuffer: with a ReadWaiter source, ReadFrom
// waits for data before it takes a pooled buffer whenever the source was
// drained (at the start and after a short read), so that a stream whose
// sender is quiet holds no buffer while it waits; after a read that
// filled the buffer it reads again at once (no extra call on the bulk
// path). A WaitRead error ends ReadFrom.
func TestReadFromWaitsBeforeTakingBuffer(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	big := bytes.Repeat([]byte{7}, smallPayload+MaxPayload+MaxPayload/2)
	src := &waitingSource{chunks: [][]byte{[]byte("hello"), big, []byte("bye")}}
	var wire bytes.Buffer
	w := s.NewWriter(&wire, 4, FromInitiator)
	n, err := w.ReadFrom(src)
	if err != nil || n != int64(5+len(big)+3) {
		t.Fatalf("ReadFrom = %d, %v", n, err)
	}
	want := []string{"wait", "5", "wait", fmt.Sprint(smallPayload), fmt.Sprint(MaxPayload), fmt.Sprint(MaxPayload / 2), "wait", "3", "wait", "eof"}
	if !slices.Equal(src.log, want) {
		t.Fatalf("calls %v, want %v", src.log, want)
	}
	w.Close()
	got, err := openAll(s, wire.Bytes())
	if err != nil || !bytes.Equal(got, slices.Concat([]byte("hello"), big, []byte("bye"))) {
		t.Fatalf("round trip: %d bytes, %v", len(got), err)
	}

	boom := errors.New("local connection closed")
	src = &waitingSource{chunks: [][]byte{[]byte("x")}, waitErr: boom}
	if _, err := s.NewWriter(io.Discard, 8, FromInitiator).ReadFrom(src); !errors.Is(err, boom) {
		t.Fatalf("WaitRead error: ReadFrom = %v", err)
	}
	if !slices.Equal(src.log, []string{"wait"}) {
		t.Fatalf("read after a failed wait: %v", src.log)
	}
}

// sizedWire is a destination that asks for records of at most max bytes
// of payload (RecordSizer).
type sizedWire struct {
	bytes.Buffer
	max int
}

func (w *sizedWire) MaxRecordPayload() int { return w.max }

// TestRecordSizer: a destination that is a RecordSizer gets data records
// of at most its size, from Write and from ReadFrom, and sizes outside 1 to
// MaxPayload are ignored; the stream opens as before.
func TestRecordSizer(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	data := make([]byte, 3*MaxPayload+5)
	for i := range data {
		data[i] = byte(i)
	}
	for _, tc := range []struct{ max, want int }{
		{63 << 10, 63 << 10}, {100, 100}, {0, MaxPayload}, {MaxPayload + 1, MaxPayload},
	} {
		for _, mode := range []string{"Write", "ReadFrom"} {
			wire := &sizedWire{max: tc.max}
			w := s.NewWriter(wire, 4, FromInitiator)
			var err error
			if mode == "Write" {
				_, err = w.Write(data)
			} else {
				_, err = w.ReadFrom(bytes.NewReader(data))
			}
			if err != nil {
				t.Fatal(err)
			}
			w.Close()
			_, recs := records(t, wire.Bytes())
			largest := 0
			for _, r := range recs {
				largest = max(largest, len(r)-HeaderSize-TagSize)
			}
			if largest != tc.want {
				t.Errorf("%s with size %d: largest record payload %d, want %d", mode, tc.max, largest, tc.want)
			}
			got, err := openAll(s, wire.Bytes())
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s with size %d: round trip %d bytes, %v", mode, tc.max, len(got), err)
			}
		}
	}
}

// batchWire is a RecordSizer and RecordBatcher destination that logs the
// size of every Write.
type batchWire struct {
	sizedWire
	batch  int
	writes []int
}

func (w *batchWire) MaxBatchRecords() int { return w.batch }

func (w *batchWire) Write(p []byte) (int, error) {
	w.writes = append(w.writes, len(p))
	return w.Buffer.Write(p)
}

// TestRecordBatcher: to a RecordBatcher, ReadFrom seals what one Read
// returns as up to MaxBatchRecords records written at once, each of at most
// the RecordSizer size, and the stream opens as before, also when key
// updates fall inside a batch (they go out between its records, in order).
// A source that returns little at a time gets a record per Read, as before.
func TestRecordBatcher(t *testing.T) {
	const mp = 63 << 10
	data := make([]byte, 20*mp+5)
	for i := range data {
		data[i] = byte(i * 3)
	}
	for _, tc := range []struct {
		name          string
		batch         int
		recordsPerKey uint64
		maxWrites     int
		size          int // the RecordSizer's size; 0: MaxPayload
	}{
		{"batches of 2", 2, 1 << 40, 2 + 20/2 + 2, mp},
		{"clamped to MaxBatchRecords", 100, 1 << 40, 2 + 20/MaxBatchRecords + 2, mp},
		{"1: no batches", 1, 1 << 40, 22, mp},
		{"key updates inside batches", 4, 3, 60, mp},
		{"full-size records fill the batch buffer", 2, 1 << 40, 2 + 20/2 + 2, 0},
	} {
		s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
		s.limits.recordsPerKey = tc.recordsPerKey
		s.limits.keyUpdates = 1000
		updates := 0
		s.onKey = func(KeyUpdate) { updates++ }
		wire := &batchWire{sizedWire: sizedWire{max: tc.size}, batch: tc.batch}
		w := s.NewWriter(wire, 4, FromInitiator)
		if n, err := w.ReadFrom(bytes.NewReader(data)); err != nil || n != int64(len(data)) {
			t.Fatalf("%s: ReadFrom %d, %v", tc.name, n, err)
		}
		w.Close()
		if len(wire.writes) > tc.maxWrites {
			t.Errorf("%s: %d writes %v, want at most %d", tc.name, len(wire.writes), wire.writes, tc.maxWrites)
		}
		_, recs := records(t, wire.Bytes())
		limit := cmp.Or(tc.size, MaxPayload)
		for _, r := range recs {
			if len(r)-HeaderSize-TagSize > limit {
				t.Fatalf("%s: a record of %d bytes of payload, want at most %d", tc.name, len(r)-HeaderSize-TagSize, limit)
			}
		}
		if tc.recordsPerKey == 3 && updates < 10 {
			t.Errorf("%s: %d key updates, want one every two records", tc.name, updates)
		}
		got, err := openAll(s, wire.Bytes())
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: round trip %d bytes, %v", tc.name, len(got), err)
		}
	}
	// A source that hands out a little at a time: one record per Read.
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	wire := &batchWire{sizedWire: sizedWire{max: mp}, batch: 2}
	w := s.NewWriter(wire, 4, FromInitiator)
	src := &waitingSource{chunks: [][]byte{make([]byte, 10), make([]byte, 70000), make([]byte, 3)}}
	if _, err := w.ReadFrom(src); err != nil {
		t.Fatal(err)
	}
	if len(wire.writes) != 5 { // 10 bytes; 4 KiB (the small buffer), 63 KiB and the rest of the 70000; 3
		t.Errorf("writes %v, want one per Read", wire.writes)
	}
}

// TestRecordBatcherSmallRecords: a batch of records smaller than
// MaxPayload (a RecordSizer's size) is sealed in a buffer that holds each
// record's header and tag, whatever the size: a batch of two 2 KiB records
// is 4 KiB of payload, which fits the small tier, but not with its second
// header and tag.
func TestRecordBatcherSmallRecords(t *testing.T) {
	for _, size := range []int{2 << 10, 32760, 1000} {
		data := make([]byte, 8*size+7)
		for i := range data {
			data[i] = byte(i * 5)
		}
		s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
		wire := &batchWire{sizedWire: sizedWire{max: size}, batch: 2}
		w := s.NewWriter(wire, 4, FromInitiator)
		if n, err := w.ReadFrom(bytes.NewReader(data)); err != nil || n != int64(len(data)) {
			t.Fatalf("records of %d: ReadFrom %d, %v", size, n, err)
		}
		w.Close()
		got, err := openAll(s, wire.Bytes())
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("records of %d: round trip %d bytes, %v", size, len(got), err)
		}
	}
}

// failingBatchWire is a batchWire whose write number failAt (from 1) fails
// without taking any byte.
type failingBatchWire struct {
	batchWire
	failAt int
}

var errWireFailed = errors.New("wire failed")

func (w *failingBatchWire) Write(p []byte) (int, error) {
	if len(w.writes)+1 == w.failAt {
		w.writes = append(w.writes, -len(p))
		return 0, errWireFailed
	}
	return w.batchWire.Write(p)
}

// TestReadFromCountSentBatch: when a write fails inside a batch (after a
// key update sent the batch's first records), ReadFrom's count is the
// payload bytes of every data record that went out whole, as io.ReaderFrom
// promises: what the reader opens from the wire.
func TestReadFromCountSentBatch(t *testing.T) {
	const mp = 63 << 10
	data := make([]byte, 12*mp)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for try := range 60 {
		// A key update after every data record or every second one:
		// inside a batch (MaxBatchRecords, 2) or between batches.
		failAt, recordsPerKey := try/2+1, uint64(2+try%2)
		s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
		s.limits.recordsPerKey = recordsPerKey
		s.limits.keyUpdates = 1000
		wire := &failingBatchWire{batchWire: batchWire{sizedWire: sizedWire{max: mp}, batch: 4}, failAt: failAt}
		w := s.NewWriter(wire, 4, FromInitiator)
		n, err := w.ReadFrom(bytes.NewReader(data))
		if err == nil {
			continue // fewer writes than failAt
		}
		got, _ := openAll(s, wire.Bytes()) // ends without a close record: truncated
		if n != int64(len(got)) {
			t.Errorf("write %d failed (writes %v): ReadFrom counted %d bytes, %d went out in whole records", failAt, wire.writes, n, len(got))
		}
	}
}
