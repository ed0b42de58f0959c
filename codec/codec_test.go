package codec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"testing"
)

// TestRoundTripEverySize sends every payload size from 0 to MaxPayload+1
// through a Writer and a Reader with random write, transport and read
// splits. THREATS P3. Under the race detector (which slows it twentyfold
// and finds nothing in one goroutine) it strides; `make test` also runs it
// without -race, exhaustively.
func TestRoundTripEverySize(t *testing.T) {
	for _, suite := range suites {
		t.Run(suite.String(), func(t *testing.T) {
			t.Parallel()
			s := newTestSession(t, suite, testConn, testPairing)
			rng := rand.New(rand.NewPCG(1, uint64(suite)))
			src := make([]byte, MaxPayload+1)
			for i := range src {
				src[i] = byte(rng.Uint32())
			}
			var wire bytes.Buffer
			got := make([]byte, 0, len(src))
			buf := make([]byte, MaxPayload+1)
			step := 1
			if testing.Short() || raceEnabled {
				step = 61
			}
			for n := 0; n <= len(src); n += step {
				wire.Reset()
				w := s.NewWriter(&wire, uint64(n), FromInitiator)
				for p := src[:n]; len(p) > 0; {
					k := 1 + rng.IntN(len(p))
					if _, err := w.Write(p[:k]); err != nil {
						t.Fatal(err)
					}
					p = p[k:]
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				r := s.NewReader(&chunkyReader{r: &wire, rng: rng, max: 1 + rng.IntN(2*MaxRecordSize)}, uint64(n), FromInitiator)
				got = got[:0]
				for {
					k, err := r.Read(buf[:1+rng.IntN(len(buf))])
					got = append(got, buf[:k]...)
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatalf("size %d: %v", n, err)
					}
				}
				if !bytes.Equal(got, src[:n]) {
					t.Fatalf("size %d: plaintext differs", n)
				}
			}
		})
	}
}

// TestEveryBitFlipRejected flips each bit of a stream holding data, key
// update and close records: every flip must end in an error. THREATS P3.
func TestEveryBitFlipRejected(t *testing.T) {
	for _, suite := range suites {
		t.Run(suite.String(), func(t *testing.T) {
			s := newTestSession(t, suite, testConn, testPairing)
			s.limits.recordsPerKey = 3 // a key update after two data records
			wire := seal(t, s, []byte("GET /payments"), []byte("x"), []byte("HTTP/1.1 200 OK"), []byte("tail"))
			if _, recs := records(t, wire); len(recs) < 6 {
				t.Fatalf("want key update records in the test stream, got %d records", len(recs))
			}
			if _, err := openAll(s, wire); err != nil {
				t.Fatalf("unmodified stream: %v", err)
			}
			for i := range wire {
				for bit := range 8 {
					bad := bytes.Clone(wire)
					bad[i] ^= 1 << bit
					_, err := openAll(s, bad)
					if !isCodecError(err) {
						t.Fatalf("byte %d bit %d: err = %v, want a codec error", i, bit, err)
					}
				}
			}
		})
	}
}

// TestRecordManipulationRejected replays, reorders, drops, truncates and
// splices whole records. THREATS P3.
func TestRecordManipulationRejected(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	wire := seal(t, s, []byte("one"), []byte("two"), []byte("three"))
	pre, recs := records(t, wire) // data, data, data, close
	other := seal(t, s, []byte("one"), []byte("two"), []byte("three"))
	if !bytes.Equal(wire, other) {
		t.Fatal("sealing is not deterministic for the same stream")
	}

	var otherStream, otherDir bytes.Buffer
	w := s.NewWriter(&otherStream, 8, FromInitiator)
	w.Write([]byte("one"))
	w.Close()
	w = s.NewWriter(&otherDir, 4, FromResponder)
	w.Write([]byte("one"))
	w.Close()
	_, streamRecs := records(t, otherStream.Bytes())
	_, dirRecs := records(t, otherDir.Bytes())

	cases := []struct {
		name string
		wire []byte
		want error
	}{
		{"replayed record", join(pre, recs[0], recs[0], recs[1], recs[2], recs[3]), ErrAuth},
		{"reordered records", join(pre, recs[1], recs[0], recs[2], recs[3]), ErrAuth},
		{"dropped record", join(pre, recs[0], recs[2], recs[3]), ErrAuth},
		{"dropped close", join(pre, recs[0], recs[1], recs[2]), ErrTruncated},
		{"close replayed early", join(pre, recs[0], recs[3]), ErrAuth},
		{"record from another stream", join(pre, streamRecs[0], recs[1], recs[2], recs[3]), ErrAuth},
		{"record from the other direction", join(pre, dirRecs[0], recs[1], recs[2], recs[3]), ErrAuth},
		{"close from another stream", join(pre, recs[0], recs[1], recs[2], streamRecs[1]), ErrAuth},
		{"empty stream", nil, ErrTruncated},
	}
	for _, c := range cases {
		if _, err := openAll(s, c.wire); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	// Every strict prefix is truncated, whether it ends between records or
	// inside one, and none of it is taken as a clean end.
	for n := range len(wire) {
		if _, err := openAll(s, wire[:n]); !errors.Is(err, ErrTruncated) {
			t.Fatalf("prefix of %d/%d bytes: err = %v, want ErrTruncated", n, len(wire), err)
		}
	}
}

// TestForeignKeysRejected: a stream sealed under another pairing secret or
// another connection secret fails authentication. THREATS P4.
func TestForeignKeysRejected(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	wire := seal(t, s, []byte("hello"))
	otherPairing := bytes.Repeat([]byte{0x23}, SecretSize)
	otherConn := bytes.Repeat([]byte{0x12}, SecretSize)
	for name, r := range map[string]*Session{
		"wrong pairing secret":    newTestSession(t, SuiteAES256GCM, testConn, otherPairing),
		"wrong connection secret": newTestSession(t, SuiteAES256GCM, otherConn, testPairing),
	} {
		if got, err := openAll(r, wire); !errors.Is(err, ErrAuth) || len(got) != 0 {
			t.Errorf("%s: got %q, err = %v, want ErrAuth and no plaintext", name, got, err)
		}
	}
}

// TestKeySeparation: every stream, direction, suite and secret gets its own
// traffic secret. THREATS P4.
func TestKeySeparation(t *testing.T) {
	seen := map[[keySize]byte]string{}
	for _, conn := range [][]byte{testConn, bytes.Repeat([]byte{1}, SecretSize)} {
		for _, pairing := range [][]byte{testPairing, bytes.Repeat([]byte{2}, SecretSize)} {
			s := newTestSession(t, SuiteAES256GCM, conn, pairing)
			for _, suite := range suites {
				for _, id := range []uint64{0, 1, 4, 1 << 61} {
					for _, dir := range []Direction{FromInitiator, FromResponder} {
						sec, err := s.trafficSecret(preamble(suite), id, dir)
						if err != nil {
							t.Fatal(err)
						}
						name := fmt.Sprintf("conn %x pairing %x %v stream %d %v", conn[0], pairing[0], suite, id, dir)
						if prev, dup := seen[sec]; dup {
							t.Fatalf("%s has the same secret as %s", name, prev)
						}
						seen[sec] = name
					}
				}
			}
		}
	}
}

// TestKeyUpdate: the writer updates keys before the per-key record and byte
// limits, nonces never repeat under a key, and the reader follows.
// THREATS P4.
func TestKeyUpdate(t *testing.T) {
	for _, lim := range []limits{
		{recordsPerKey: 4, bytesPerKey: 1 << 35, keyUpdates: 100},
		{recordsPerKey: 1 << 23, bytesPerKey: MaxPayload + 10, keyUpdates: 100},
	} {
		s := newTestSession(t, SuiteChaCha20Poly1305, testConn, testPairing)
		s.limits = lim
		var updates []KeyUpdate
		s.onKey = func(u KeyUpdate) { updates = append(updates, u) }
		var wire bytes.Buffer
		w := s.NewWriter(&wire, 4, FromInitiator)
		type use struct {
			secret [keySize]byte
			seq    uint64
		}
		used := map[use]bool{}
		payload := bytes.Repeat([]byte{7}, MaxPayload/2)
		for range 20 {
			if _, err := w.Write(payload); err != nil {
				t.Fatal(err)
			}
			u := use{w.keys.secret, w.keys.seq - 1}
			if used[u] {
				t.Fatalf("nonce %d reused under key %d", u.seq, w.keys.gen)
			}
			used[u] = true
			if w.keys.seq >= lim.recordsPerKey || w.keys.bytes > lim.bytesPerKey {
				t.Fatalf("limits exceeded: %d records, %d bytes under one key", w.keys.seq, w.keys.bytes)
			}
		}
		w.Close()
		if w.keys.gen < 5 {
			t.Fatalf("%d key updates, want at least 5", w.keys.gen)
		}
		if len(updates) != int(w.keys.gen) || updates[0] != (KeyUpdate{StreamID: 4, Dir: FromInitiator, Sending: true, Generation: 1}) {
			t.Fatalf("OnKeyUpdate saw %v for %d writer updates", updates, w.keys.gen)
		}
		updates = nil
		got, err := openAll(s, wire.Bytes())
		if len(updates) != int(w.keys.gen) || updates[len(updates)-1].Sending || updates[len(updates)-1].Generation != w.keys.gen {
			t.Fatalf("OnKeyUpdate saw %v on the reader side", updates)
		}
		if err != nil || len(got) != 20*len(payload) {
			t.Fatalf("read %d bytes, err %v", len(got), err)
		}
	}
}

// TestKeyExhaustion: a writer out of key updates stops with
// ErrKeyExhausted, and a reader refuses a peer that ignores the limits.
func TestKeyExhaustion(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	s.limits = limits{recordsPerKey: 2, bytesPerKey: 1 << 35, keyUpdates: 2}
	w := s.NewWriter(io.Discard, 4, FromInitiator)
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, err = w.Write([]byte("x"))
	}
	if !errors.Is(err, ErrKeyExhausted) {
		t.Fatalf("writer: err = %v, want ErrKeyExhausted", err)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, ErrKeyExhausted) {
		t.Fatalf("writer error is not sticky: %v", err)
	}

	loose := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	wire := seal(t, loose, []byte("a"), []byte("b"), []byte("c"))
	strict := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	strict.limits.recordsPerKey = 2
	if _, err := openAll(strict, wire); !errors.Is(err, ErrKeyExhausted) {
		t.Fatalf("reader: err = %v, want ErrKeyExhausted", err)
	}
}

// TestPreambleAndTypeErrors covers the errors that name a version, suite,
// type or shape problem.
func TestPreambleAndTypeErrors(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	wire := seal(t, s, []byte("hi"))
	mutate := func(i int, v byte) []byte { b := bytes.Clone(wire); b[i] = v; return b }
	aesOnly, err := NewSession(testConn, testPairing, Config{Accept: []Suite{SuiteAES256GCM}})
	if err != nil {
		t.Fatal(err)
	}
	chacha := seal(t, newTestSession(t, SuiteChaCha20Poly1305, testConn, testPairing), []byte("hi"))

	// Records that authenticate but break the rules, sealed by hand.
	sealed := func(typ recordType, payload []byte) []byte {
		var h halfKeys
		h.suite, h.limits = SuiteAES256GCM, defaultLimits
		pre := preamble(SuiteAES256GCM)
		sec, _ := s.trafficSecret(pre, 4, FromInitiator)
		h.install(sec)
		rec := make([]byte, HeaderSize+len(payload)+TagSize)
		h.seal(rec, typ, payload)
		return join(pre[:], rec)
	}
	cases := []struct {
		name string
		s    *Session
		wire []byte
		want error
	}{
		{"bad magic", s, mutate(0, 'D'), ErrVersion},
		{"version 2", s, mutate(4, 2), ErrVersion},
		{"unknown suite", s, mutate(5, 0x7f), ErrVersion},
		{"reserved byte set", s, mutate(7, 1), ErrVersion},
		{"suite not accepted", aesOnly, chacha, ErrVersion},
		{"unknown record type", s, sealed(0x09, []byte("x")), ErrRecordType},
		{"empty data record", s, sealed(typeData, nil), ErrMalformed},
		{"close with payload", s, sealed(typeClose, []byte("x")), ErrMalformed},
		{"body shorter than tag", s, join(wire[:PreambleSize], []byte{1, 0, 0, TagSize - 1}, make([]byte, TagSize)), ErrMalformed},
	}
	for _, c := range cases {
		if _, err := openAll(c.s, c.wire); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestOversizeDetectedBeforeBody: a header that announces a huge record is
// refused after its four bytes, before any body is read or buffered.
// THREATS P8.
func TestOversizeDetectedBeforeBody(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	wire := seal(t, s, []byte("hi"))
	bad := join(wire[:PreambleSize], []byte{1, 0xff, 0xff, 0xff}, make([]byte, 1<<20))
	cr := &countingReader{r: bytes.NewReader(bad)}
	r := s.NewReader(cr, 4, FromInitiator)
	if _, err := r.Next(); !errors.Is(err, ErrOversize) {
		t.Fatalf("err = %v, want ErrOversize", err)
	}
	if cr.n != PreambleSize+HeaderSize {
		t.Fatalf("read %d bytes before refusing, want %d", cr.n, PreambleSize+HeaderSize)
	}
}

// TestStickyErrors: after a failure every call returns the same error and no
// plaintext.
func TestStickyErrors(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	wire := seal(t, s, []byte("first"), []byte("second"))
	wire[len(wire)-1] ^= 1 // corrupt the close record's tag
	r := s.NewReader(bytes.NewReader(wire), 4, FromInitiator)
	got, err := io.ReadAll(r)
	if !errors.Is(err, ErrAuth) || string(got) != "firstsecond" {
		t.Fatalf("got %q, %v", got, err)
	}
	for range 3 {
		if n, err := r.Read(make([]byte, 10)); n != 0 || !errors.Is(err, ErrAuth) {
			t.Fatalf("after failure: %d, %v", n, err)
		}
	}
	if r.bp != nil {
		t.Fatal("failed reader still holds its buffer")
	}
}

// recordingWriter keeps each Write as one transport write.
type recordingWriter struct{ writes [][]byte }

func (r *recordingWriter) Write(p []byte) (int, error) {
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

// TestWriterDoesNotWait: Write and ReadFrom send what they have at once and
// never hold bytes back to fill a record.
func TestWriterDoesNotWait(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	rec := &recordingWriter{}
	w := s.NewWriter(rec, 4, FromInitiator)
	w.Write([]byte("ping"))
	if len(rec.writes) != 1 || len(rec.writes[0]) != PreambleSize+HeaderSize+4+TagSize {
		t.Fatalf("after one small Write the transport saw %d writes", len(rec.writes))
	}

	// ReadFrom a pipe: each chunk is sealed as soon as it arrives, while
	// the source is still open.
	pr, pw := io.Pipe()
	sent := make(chan int, 1)
	rec2 := &chanWriter{c: make(chan []byte, 4)}
	w2 := s.NewWriter(rec2, 8, FromInitiator)
	go func() { n, _ := w2.ReadFrom(pr); sent <- int(n) }()
	for _, msg := range []string{"GET / HTTP/1.1\r\n\r\n", "next"} {
		pw.Write([]byte(msg))
		got := <-rec2.c
		if want := HeaderSize + len(msg) + TagSize; len(got) != want && len(got) != want+PreambleSize {
			t.Fatalf("record of %d bytes for a %d-byte chunk", len(got), len(msg))
		}
	}
	pw.Close()
	if n := <-sent; n != 22 {
		t.Fatalf("ReadFrom returned %d", n)
	}
}

type chanWriter struct{ c chan []byte }

func (c *chanWriter) Write(p []byte) (int, error) { c.c <- bytes.Clone(p); return len(p), nil }

// TestReadFromWriteToRoundTrip moves a large body through the copy-saving
// paths, as the tunnel does.
func TestReadFromWriteToRoundTrip(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	src := make([]byte, 3<<20+17)
	rand.NewChaCha8([32]byte{3}).Read(src)
	var wire, out bytes.Buffer
	w := s.NewWriter(&wire, 4, FromInitiator)
	if n, err := w.ReadFrom(bytes.NewReader(src)); err != nil || n != int64(len(src)) {
		t.Fatalf("ReadFrom: %d, %v", n, err)
	}
	w.Close()
	if _, err := w.Write([]byte("late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	r := s.NewReader(&wire, 4, FromInitiator)
	if n, err := r.WriteTo(&out); err != nil || n != int64(len(src)) || !bytes.Equal(out.Bytes(), src) {
		t.Fatalf("WriteTo: %d, %v, equal %v", n, err, bytes.Equal(out.Bytes(), src))
	}
}

// loopback is an in-memory transport whose reads and writes do not allocate
// once it has grown.
type loopback struct {
	buf  []byte
	r, w int
}

func (l *loopback) Write(p []byte) (int, error) {
	if l.r == l.w {
		l.r, l.w = 0, 0
	}
	l.buf = append(l.buf[:l.w], p...)
	l.w += len(p)
	return len(p), nil
}

func (l *loopback) Read(p []byte) (int, error) {
	if l.r == l.w {
		return 0, io.EOF
	}
	n := copy(p, l.buf[l.r:l.w])
	l.r += n
	return n, nil
}

// TestSteadyStateAllocatesNothing: once buffers are pooled, sealing and
// opening records allocates nothing per record.
func TestSteadyStateAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, size := range []int{100, 16 << 10, MaxPayload} {
		s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
		l := &loopback{buf: make([]byte, 0, 2*MaxRecordSize)}
		w := s.NewWriter(l, 4, FromInitiator)
		r := s.NewReader(l, 4, FromInitiator)
		p := make([]byte, size)
		allocs := testing.AllocsPerRun(200, func() {
			w.Write(p)
			if got, err := r.Next(); err != nil || len(got) != size {
				t.Fatalf("Next: %d, %v", len(got), err)
			}
		})
		if allocs != 0 {
			t.Errorf("size %d: %.1f allocations per record", size, allocs)
		}
	}
}

func TestNewSessionValidates(t *testing.T) {
	cases := []struct {
		name          string
		conn, pairing []byte
		cfg           Config
	}{
		{"short connection secret", testConn[:16], testPairing, Config{}},
		{"short pairing secret", testConn, testPairing[:31], Config{}},
		{"zero pairing secret", testConn, make([]byte, SecretSize), Config{}},
		{"unknown suite", testConn, testPairing, Config{Suite: 9}},
		{"unknown accepted suite", testConn, testPairing, Config{Accept: []Suite{9}}},
	}
	for _, c := range cases {
		if _, err := NewSession(c.conn, c.pairing, c.cfg); err == nil {
			t.Errorf("%s: no error", c.name)
		} else if bytes.Contains([]byte(err.Error()), []byte{0x22, 0x22}) {
			t.Errorf("%s: error leaks secret bytes: %v", c.name, err)
		}
	}
}

func TestSuites(t *testing.T) {
	for _, s := range suites {
		got, err := ParseSuite(s.String())
		if err != nil || got != s {
			t.Errorf("ParseSuite(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseSuite("rc4"); err == nil {
		t.Error("ParseSuite accepted rc4")
	}
	if Suites()[0] != SuiteAES256GCM {
		t.Error("AES-256-GCM is not the default suite")
	}
}

// forged is one record a test seals by hand, due or not.
type forged struct {
	typ     recordType
	payload []byte
}

// forge seals recs as stream 4, initiator direction, under s's keys as a
// peer that ignores the key update rule would: a key_update record moves
// to the next key whenever it is sent.
func forge(t *testing.T, s *Session, recs ...forged) []byte {
	t.Helper()
	h := halfKeys{suite: s.suite, limits: limits{recordsPerKey: 1 << 62, bytesPerKey: 1 << 62, keyUpdates: math.MaxUint32}}
	pre := preamble(s.suite)
	sec, err := s.trafficSecret(pre, 4, FromInitiator)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.install(sec); err != nil {
		t.Fatal(err)
	}
	wire := pre[:]
	for _, r := range recs {
		rec := make([]byte, HeaderSize+len(r.payload)+TagSize)
		h.seal(rec, r.typ, r.payload)
		wire = append(wire, rec...)
		if r.typ == typeKeyUpdate {
			if err := h.update(); err != nil {
				t.Fatal(err)
			}
		}
	}
	return wire
}

// TestKeyUpdateNotDue: a Reader accepts a key_update record only when the
// writer's rule made it due (FORMAT.md section 5), so a peer cannot make it
// derive keys, and the tunnel audit them, at will. THREATS P5.
func TestKeyUpdateNotDue(t *testing.T) {
	data := func(n int) forged { return forged{typeData, bytes.Repeat([]byte{1}, n)} }
	update, closing := forged{typ: typeKeyUpdate}, forged{typ: typeClose}
	lim := limits{recordsPerKey: 4, bytesPerKey: 2*MaxPayload + 10, keyUpdates: 100}
	cases := []struct {
		name     string
		recs     []forged
		want     error // nil: read to a clean close
		followed int   // key updates the Reader follows
	}{
		{"first record", []forged{update, data(1), closing}, ErrKeyUpdateNotDue, 0},
		{"one short of the record limit", []forged{data(1), data(1), update, closing}, ErrKeyUpdateNotDue, 0},
		{"at the record limit", []forged{data(1), data(1), data(1), update, data(1), closing}, nil, 1},
		{"a second one right after", []forged{data(1), data(1), data(1), update, update, closing}, ErrKeyUpdateNotDue, 1},
		{"bytes one short of due", []forged{data(MaxPayload), data(10), update, closing}, ErrKeyUpdateNotDue, 0},
		{"bytes due", []forged{data(MaxPayload), data(11), update, data(MaxPayload), closing}, nil, 1},
	}
	for _, c := range cases {
		s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
		s.limits = lim
		updates := 0
		s.onKey = func(KeyUpdate) { updates++ }
		_, err := openAll(s, forge(t, s, c.recs...))
		if !errors.Is(err, c.want) || (err == nil) != (c.want == nil) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
		if updates != c.followed {
			t.Errorf("%s: %d key updates followed, want %d", c.name, updates, c.followed)
		}
		if c.want != nil && Reason(err) != "key_update_not_due" {
			t.Errorf("%s: reason %q", c.name, Reason(err))
		}
	}
	// At the default limits a burst of key updates stops at the first.
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	flood := []forged{data(5)}
	for range 1000 {
		flood = append(flood, update)
	}
	if got, err := openAll(s, forge(t, s, flood...)); !errors.Is(err, ErrKeyUpdateNotDue) || len(got) != 5 {
		t.Fatalf("flood: %d bytes, err %v", len(got), err)
	}
}

// TestTrailingDataAfterClose: bytes the Reader has read past the close
// record are ErrTrailingData (FORMAT.md section 7); bytes not yet read are
// left unread, for the transport's own end check.
func TestTrailingDataAfterClose(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	wire := seal(t, s, []byte("hello"))
	for _, tail := range [][]byte{{0}, wire[PreambleSize:], bytes.Repeat([]byte{9}, 5000)} {
		got, err := openAll(s, join(wire, tail))
		if !errors.Is(err, ErrTrailingData) || Reason(err) != "trailing_data" || string(got) != "hello" {
			t.Errorf("%d trailing bytes: read %q, err %v", len(tail), got, err)
		}
	}
	// The tail arrives in a later read: the Reader ends at the close
	// record and reads nothing more.
	cr := &countingReader{r: io.MultiReader(bytes.NewReader(wire), bytes.NewReader([]byte("late")))}
	r := s.NewReader(cr, 4, FromInitiator)
	var out bytes.Buffer
	if _, err := r.WriteTo(&out); err != nil || out.String() != "hello" || cr.n != len(wire) {
		t.Fatalf("late tail: read %q, err %v, %d of %d bytes consumed", out.String(), err, cr.n, len(wire))
	}
}
