package fuzz

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/dyad-tunnel/dyad/codec"
)

var (
	connSecret    = bytes.Repeat([]byte{0x11}, codec.SecretSize)
	pairingSecret = bytes.Repeat([]byte{0x22}, codec.SecretSize)
)

func session(t *testing.T, suite codec.Suite) *codec.Session {
	s, err := codec.NewSession(connSecret, pairingSecret, codec.Config{Suite: suite})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sealStream seals chunks as stream 4, initiator direction, and closes it.
func sealStream(t *testing.T, s *codec.Session, chunks ...[]byte) []byte {
	var wire bytes.Buffer
	w := s.NewWriter(&wire, 4, codec.FromInitiator)
	for _, c := range chunks {
		if _, err := w.Write(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return wire.Bytes()
}

var readerErrors = []error{codec.ErrAuth, codec.ErrTruncated, codec.ErrOversize, codec.ErrVersion,
	codec.ErrRecordType, codec.ErrMalformed, codec.ErrKeyExhausted, codec.ErrKeyUpdateNotDue, codec.ErrTrailingData}

// readStream reads stream 4 to its end and checks the reader's contract on
// any input: a codec error or a clean end, never more plaintext than input.
// Like the tunnel, which waits for the FIN after the close record, it takes
// input the Reader left unread after a clean end as ErrTrailingData.
func readStream(t *testing.T, s *codec.Session, wire []byte) ([]byte, error) {
	br := bytes.NewReader(wire)
	r := s.NewReader(br, 4, codec.FromInitiator)
	var out bytes.Buffer
	_, err := r.WriteTo(&out)
	if err != nil && !isOneOf(err, readerErrors) {
		t.Fatalf("reader returned %v, not a codec error", err)
	}
	if out.Len() > len(wire) {
		t.Fatalf("%d bytes of plaintext from %d bytes of input", out.Len(), len(wire))
	}
	if _, again := r.Read(make([]byte, 1)); (err == nil) != (again == io.EOF) || (err != nil && !errors.Is(again, err)) {
		t.Fatalf("error not sticky: first %v, then %v", err, again)
	}
	if err == nil && br.Len() > 0 {
		err = codec.ErrTrailingData
	}
	return out.Bytes(), err
}

func isOneOf(err error, targets []error) bool {
	for _, e := range targets {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// FuzzRecordReader feeds arbitrary bytes to the record reader: it must end
// in an error or a clean close, never panic, hang or allocate beyond its
// fixed buffers (THREATS P8).
func FuzzRecordReader(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("dyad\x01\x01\x00\x00"))
	f.Add([]byte("dyad\x01\x01\x00\x00\x01\xff\xff\xff"))
	f.Add([]byte("dyad\x01\x02\x00\x00\x02\x00\x00\x10aaaaaaaaaaaaaaaa"))
	f.Fuzz(func(t *testing.T, wire []byte) {
		for _, suite := range codec.Suites() {
			readStream(t, session(t, suite), wire)
		}
	})
}

// FuzzSealOpen: whatever is written, with whatever split, reads back equal
// (THREATS P3).
func FuzzSealOpen(f *testing.F) {
	f.Add([]byte("GET /v1/payments HTTP/1.1\r\n\r\n"), uint16(7), false)
	f.Add([]byte{}, uint16(0), true)
	f.Add(bytes.Repeat([]byte{0xab}, 70000), uint16(65535), true)
	f.Fuzz(func(t *testing.T, data []byte, split uint16, chacha bool) {
		suite := codec.SuiteAES256GCM
		if chacha && codec.SuiteChaCha20Poly1305.Available() {
			suite = codec.SuiteChaCha20Poly1305
		}
		s := session(t, suite)
		cut := 0
		if len(data) > 0 {
			cut = int(split) % (len(data) + 1)
		}
		got, err := readStream(t, s, sealStream(t, s, data[:cut], data[cut:]))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("round trip of %d bytes split at %d: %d bytes back, err %v", len(data), cut, len(got), err)
		}
	})
}

// FuzzMutatedStream damages a valid stream (a flipped byte, a cut, a record
// spliced from another stream) and checks that the damage is always
// detected: never a clean end with other plaintext (THREATS P3, P8).
func FuzzMutatedStream(f *testing.F) {
	f.Add([]byte("hello"), []byte("world"), uint16(12), byte(1), uint16(0), uint16(0))
	f.Add([]byte("a"), []byte{}, uint16(0), byte(0), uint16(20), uint16(0))
	f.Add(bytes.Repeat([]byte("z"), 5000), []byte("y"), uint16(9), byte(0x80), uint16(0), uint16(30))
	f.Fuzz(func(t *testing.T, a, b []byte, pos uint16, xor byte, cut, splice uint16) {
		s := session(t, codec.SuiteAES256GCM)
		wire := sealStream(t, s, a, b)
		bad := bytes.Clone(wire)
		bad[int(pos)%len(bad)] ^= xor
		if cut > 0 {
			bad = bad[:int(cut)%len(bad)]
		}
		if splice > 0 {
			// Put bytes of a stream with the same content but another
			// ID in the middle.
			var other bytes.Buffer
			w := s.NewWriter(&other, 8, codec.FromInitiator)
			w.Write(a)
			w.Write(b)
			w.Close()
			at := int(splice) % (len(bad) + 1)
			bad = append(bad[:at:at], append(other.Bytes()[codec.PreambleSize:], bad[at:]...)...)
		}
		got, err := readStream(t, s, bad)
		if bytes.Equal(bad, wire) {
			if err != nil {
				t.Fatalf("unchanged stream rejected: %v", err)
			}
			return
		}
		want := append(bytes.Clone(a), b...)
		if err == nil {
			// Damage after the close record is trailing data too.
			t.Fatalf("damaged stream accepted, %d bytes of plaintext", len(got))
		}
		if !bytes.HasPrefix(want, got) {
			t.Fatal("damaged stream yielded plaintext that was never sealed")
		}
	})
}
