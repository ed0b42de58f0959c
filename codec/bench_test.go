package codec

import (
	"fmt"
	"math"
	"testing"
)

// BenchmarkRecord measures the record layer against its baseline in pairs
// that run back to back: .../aead is the raw AEAD doing the same work as
// .../codec (one Seal, one Open or both, in place, on a payload of the same
// size), so their ratio is the record layer's overhead: header, nonce and
// key-limit bookkeeping. `make bench` prints that ratio. The open pair first
// copies a sealed record into the working buffer, in both members, because
// opening in place consumes the ciphertext.
func BenchmarkRecord(b *testing.B) {
	for _, suite := range suites {
		for _, size := range []int{1 << 10, 16 << 10, 64 << 10} {
			aead, err := suite.newAEAD(make([]byte, keySize))
			if err != nil {
				b.Fatal(err)
			}
			nonce, aad := make([]byte, nonceSize), make([]byte, HeaderSize)
			buf := make([]byte, size+TagSize)
			rawSealed := aead.Seal(nil, nonce, buf[:size], aad)

			rec := make([]byte, HeaderSize+size+TagSize)
			payload := rec[HeaderSize : HeaderSize+size]
			sealer, opener := benchKeys(b, suite)
			sealed := make([]byte, len(rec))
			sealer.seal(sealed, typeData, make([]byte, size))
			sealer.seq = 0

			ops := []struct {
				name        string
				aead, codec func(b *testing.B)
			}{
				{"seal",
					func(b *testing.B) { aead.Seal(buf[:0], nonce, buf[:size], aad) },
					func(b *testing.B) { sealer.seal(rec, typeData, payload) }},
				{"open",
					func(b *testing.B) {
						copy(buf, rawSealed)
						if _, err := aead.Open(buf[:0], nonce, buf, aad); err != nil {
							b.Fatal(err)
						}
					},
					func(b *testing.B) {
						copy(rec, sealed)
						opener.seq = 0
						if _, _, err := opener.open(rec); err != nil {
							b.Fatal(err)
						}
					}},
				{"roundtrip",
					func(b *testing.B) {
						ct := aead.Seal(buf[:0], nonce, buf[:size], aad)
						if _, err := aead.Open(buf[:0], nonce, ct, aad); err != nil {
							b.Fatal(err)
						}
					},
					func(b *testing.B) {
						sealer.seal(rec, typeData, payload)
						opener.seq = sealer.seq - 1
						if _, _, err := opener.open(rec); err != nil {
							b.Fatal(err)
						}
					}},
			}
			for _, op := range ops {
				for _, side := range []struct {
					name string
					f    func(*testing.B)
				}{{"aead", op.aead}, {"codec", op.codec}} {
					b.Run(fmt.Sprintf("%v/%s/%dK/%s", suite, op.name, size>>10, side.name), func(b *testing.B) {
						b.SetBytes(int64(size))
						b.ReportAllocs()
						for b.Loop() {
							side.f(b)
						}
					})
				}
			}
		}
	}
}

// benchKeys returns a sealing and an opening key state for one direction,
// with limits out of the way: key updates are measured by TestKeyUpdate.
func benchKeys(b *testing.B, suite Suite) (sealer, opener *halfKeys) {
	s := newTestSession(b, suite, testConn, testPairing)
	sec, err := s.trafficSecret(preamble(suite), 0, FromInitiator)
	if err != nil {
		b.Fatal(err)
	}
	unlimited := limits{recordsPerKey: math.MaxUint64, bytesPerKey: math.MaxUint64}
	sealer = &halfKeys{suite: suite, limits: unlimited}
	opener = &halfKeys{suite: suite, limits: unlimited}
	if err := sealer.install(sec); err != nil {
		b.Fatal(err)
	}
	if err := opener.install(sec); err != nil {
		b.Fatal(err)
	}
	return sealer, opener
}

// BenchmarkStream is the whole stream path the tunnel uses, Writer.Write to
// Reader.Next over an in-memory transport: the AEAD plus two transport
// copies (into and out of the transport) per record.
func BenchmarkStream(b *testing.B) {
	for _, suite := range suites {
		for _, size := range []int{1 << 10, 16 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%v/%dK", suite, size>>10), func(b *testing.B) {
				s := newTestSession(b, suite, testConn, testPairing)
				l := &loopback{buf: make([]byte, 0, 2*MaxRecordSize)}
				w := s.NewWriter(l, 4, FromInitiator)
				r := s.NewReader(l, 4, FromInitiator)
				p := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := w.Write(p); err != nil {
						b.Fatal(err)
					}
					if _, err := r.Next(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
