package codec

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

var (
	testConn    = bytes.Repeat([]byte{0x11}, SecretSize)
	testPairing = bytes.Repeat([]byte{0x22}, SecretSize)
)

func newTestSession(t testing.TB, suite Suite, conn, pairing []byte) *Session {
	t.Helper()
	s, err := NewSession(conn, pairing, Config{Suite: suite})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// seal writes each chunk as one Write through a Writer for stream 4, sent by
// the initiator, then closes it, and returns the bytes on the wire.
func seal(t testing.TB, s *Session, chunks ...[]byte) []byte {
	t.Helper()
	var wire bytes.Buffer
	w := s.NewWriter(&wire, 4, FromInitiator)
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

// openAll reads a whole stream 4, initiator direction, and returns its
// plaintext and the error that ended it (nil for a clean close).
func openAll(s *Session, wire []byte) ([]byte, error) {
	r := s.NewReader(bytes.NewReader(wire), 4, FromInitiator)
	var out bytes.Buffer
	_, err := r.WriteTo(&out)
	return out.Bytes(), err
}

// chunkyReader returns at most a random 1..max bytes per Read, as a real
// transport may.
type chunkyReader struct {
	r   io.Reader
	rng *rand.Rand
	max int
}

func (c *chunkyReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1+c.rng.IntN(min(len(p), c.max))]
	}
	return c.r.Read(p)
}

// records splits a sealed stream into its preamble and its records.
func records(t testing.TB, wire []byte) (pre []byte, recs [][]byte) {
	t.Helper()
	pre, rest := wire[:PreambleSize], wire[PreambleSize:]
	for len(rest) > 0 {
		n, err := bodyLen(rest)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rest[:HeaderSize+n])
		rest = rest[HeaderSize+n:]
	}
	return pre, recs
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// codecErrors are every error the Reader may return on hostile input.
var codecErrors = []error{ErrAuth, ErrTruncated, ErrOversize, ErrVersion, ErrRecordType, ErrMalformed, ErrKeyExhausted}

func isCodecError(err error) bool {
	for _, e := range codecErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

var suites = []Suite{SuiteAES256GCM, SuiteChaCha20Poly1305}
