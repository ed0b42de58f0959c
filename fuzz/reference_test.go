package fuzz

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"

	"github.com/dyad-tunnel/dyad/codec"
)

// A second implementation of codec/FORMAT.md, written from the document
// alone (x/crypto's HKDF, the standard library's AEADs): the differential
// target checks the codec against it on streams the fuzzer writes, which
// reach cases random bytes never do (authenticated records of an unknown
// type, empty data, key updates, oversize bodies under a valid key).

// refDirection is one sealed direction's key state (FORMAT.md sections 4, 5).
type refDirection struct {
	secret []byte
	aead   cipher.AEAD
	iv     []byte
	seq    uint64 // records under the key, counted when their nonce is taken
	bytes  uint64 // plaintext bytes opened under the key
}

// The usage limits of FORMAT.md section 6 and the payload limit of section 3.
const (
	refRecordsPerKey = 1 << 23
	refBytesPerKey   = 1 << 35
	refMaxPayload    = 65536
)

func newRefDirection(preamble []byte, id uint64, initiator bool) *refDirection {
	prk := hkdf.Extract(sha256.New, connSecret, pairingSecret)
	info := append([]byte("dyad/1 stream"), preamble...)
	info = binary.BigEndian.AppendUint64(info, id)
	info = append(info, map[bool]byte{true: 0x01, false: 0x02}[initiator])
	d := &refDirection{secret: expand(prk, info, 32)}
	d.install(preamble[5])
	return d
}

func expand(secret, info []byte, n int) []byte {
	out := make([]byte, n)
	if _, err := io.ReadFull(hkdf.Expand(sha256.New, secret, info), out); err != nil {
		panic(err)
	}
	return out
}

// install derives key and IV from the current traffic secret.
func (d *refDirection) install(suite byte) {
	key := expand(d.secret, []byte("dyad/1 key"), 32)
	d.iv = expand(d.secret, []byte("dyad/1 iv"), 12)
	d.seq, d.bytes = 0, 0
	if suite == 0x02 {
		d.aead, _ = chacha20poly1305.New(key)
		return
	}
	block, _ := aes.NewCipher(key)
	d.aead, _ = cipher.NewGCM(block)
}

func (d *refDirection) update(suite byte) {
	d.secret = expand(d.secret, []byte("dyad/1 update"), 32)
	d.install(suite)
}

func (d *refDirection) nonce() []byte {
	n := bytes.Clone(d.iv)
	for i := range 8 {
		n[4+i] ^= byte(d.seq >> (56 - 8*i))
	}
	d.seq++
	return n
}

// refRecord is one record the fuzzer asks the reference to seal, valid or
// not: any type byte, any payload.
type refRecord struct {
	typ     byte
	payload []byte
}

const (
	refData      = 0x01
	refClose     = 0x02
	refKeyUpdate = 0x03
)

// refSeal writes a direction: preamble, then each record sealed in turn.
func refSeal(suite byte, id uint64, initiator bool, recs []refRecord) []byte {
	preamble := []byte{'d', 'y', 'a', 'd', 0x01, suite, 0, 0}
	d := newRefDirection(preamble, id, initiator)
	wire := bytes.Clone(preamble)
	for _, r := range recs {
		header := []byte{r.typ, 0, 0, 0}
		n := len(r.payload) + d.aead.Overhead()
		header[1], header[2], header[3] = byte(n>>16), byte(n>>8), byte(n)
		wire = append(wire, header...)
		wire = d.aead.Seal(wire, d.nonce(), r.payload, header)
		if r.typ == refKeyUpdate {
			d.update(suite)
		}
	}
	return wire
}

// refOpen reads a direction as FORMAT.md section 7 says a reader must: the
// plaintext of the records before the first failure, and the failure (nil
// after a valid close record that ends the input).
func refOpen(wire []byte) ([]byte, error) {
	if len(wire) < 8 {
		return nil, codec.ErrTruncated
	}
	preamble, rest := wire[:8], wire[8:]
	if string(preamble[:4]) != "dyad" || preamble[4] != 0x01 || preamble[6] != 0 || preamble[7] != 0 ||
		(preamble[5] != 0x01 && preamble[5] != 0x02) {
		return nil, codec.ErrVersion
	}
	d := newRefDirection(preamble, 4, true)
	var plain []byte
	for {
		if len(rest) < 4 {
			return plain, codec.ErrTruncated
		}
		header := rest[:4]
		n := int(header[1])<<16 | int(header[2])<<8 | int(header[3])
		switch {
		case n > codec.MaxPayload+16:
			return plain, codec.ErrOversize
		case n < 16:
			return plain, codec.ErrMalformed
		case len(rest) < 4+n:
			return plain, codec.ErrTruncated
		}
		payload, err := d.aead.Open(nil, d.nonce(), rest[4:4+n], header)
		if err != nil {
			return plain, codec.ErrAuth
		}
		rest = rest[4+n:]
		switch typ := header[0]; {
		case typ != refData && typ != refClose && typ != refKeyUpdate:
			return plain, codec.ErrRecordType
		case (typ == refData) == (len(payload) == 0):
			return plain, codec.ErrMalformed
		case typ == refClose && len(rest) > 0:
			return plain, codec.ErrTrailingData
		case typ == refClose:
			return plain, nil
		case typ == refKeyUpdate:
			// Section 5: due only at the record limit or within one
			// maximal record of the byte limit; seq already counts
			// this record.
			if before := d.seq - 1; before+1 < refRecordsPerKey && d.bytes+refMaxPayload <= refBytesPerKey {
				return plain, codec.ErrKeyUpdateNotDue
			}
			d.update(preamble[5])
		default:
			d.bytes += uint64(len(payload))
			plain = append(plain, payload...)
		}
	}
}

// script turns fuzzer bytes into records: per record a type selector, a
// 16-bit length and that many payload bytes; a selector with its high bit
// set pads the payload to the 64 KiB limit and up to 3 bytes past it.
func script(b []byte) []refRecord {
	var recs []refRecord
	for len(b) >= 3 && len(recs) < 64 {
		sel, n := b[0], int(binary.BigEndian.Uint16(b[1:3]))
		b = b[3:]
		n = min(n, len(b))
		r := refRecord{typ: []byte{refData, refData, refClose, refKeyUpdate, 0x00, 0x04, 0xff}[int(sel&0x7f)%7]}
		r.payload, b = bytes.Clone(b[:n]), b[n:]
		if sel&0x80 != 0 {
			r.payload = append(r.payload, make([]byte, codec.MaxPayload+int(sel&3)-len(r.payload))...)
		}
		recs = append(recs, r)
	}
	return recs
}

// FuzzReference: the codec against the reference written from FORMAT.md.
// For any sequence of records the reference seals (valid or not), with any
// one byte then changed and any tail cut, the codec's Reader returns the
// same plaintext and the same error as the reference reader; and for the
// sequences a Writer can produce, the Writer's bytes equal the reference's.
func FuzzReference(f *testing.F) {
	f.Add([]byte("\x00\x00\x05hello\x01\x00\x03abc\x02\x00\x00"), false, uint32(0), byte(0), uint32(0))
	f.Add([]byte("\x00\x00\x01a\x03\x00\x00\x00\x00\x01b\x02\x00\x00"), true, uint32(0), byte(0), uint32(0))
	f.Add([]byte("\x04\x00\x01z\x02\x00\x00"), false, uint32(20), byte(1), uint32(0))
	f.Add([]byte("\x80\x00\x00\x02\x00\x00"), false, uint32(0), byte(0), uint32(9))
	f.Add([]byte("\x83\x00\x00\x02\x00\x00"), true, uint32(0), byte(0), uint32(0))
	f.Add([]byte("\x02\x00\x02no"), false, uint32(0), byte(0), uint32(0))
	f.Fuzz(func(t *testing.T, b []byte, chacha bool, pos uint32, xor byte, cut uint32) {
		suite, codecSuite := byte(0x01), codec.SuiteAES256GCM
		if chacha && codec.SuiteChaCha20Poly1305.Available() {
			suite, codecSuite = 0x02, codec.SuiteChaCha20Poly1305
		}
		recs := script(b)
		wire := refSeal(suite, 4, true, recs)
		if xor != 0 {
			wire[int(pos)%len(wire)] ^= xor
		}
		if cut > 0 {
			wire = wire[:int(cut)%len(wire)]
		}
		s := session(t, codecSuite)
		got, err := readStream(t, s, wire)
		want, wantErr := refOpen(wire)
		if !bytes.Equal(got, want) || !errors.Is(err, wantErr) || (err == nil) != (wantErr == nil) {
			t.Fatalf("%d records, %d bytes: codec read %d bytes, %v; reference %d bytes, %v",
				len(recs), len(wire), len(got), err, len(want), wantErr)
		}
		if writable(recs) {
			var payloads [][]byte
			for _, r := range recs[:len(recs)-1] {
				payloads = append(payloads, r.payload)
			}
			if w := sealStream(t, s, payloads...); !bytes.Equal(w, refSeal(suite, 4, true, recs)) {
				t.Fatalf("writer and reference differ for %d records", len(recs))
			}
		}
	})
}

// writable reports whether a Writer produces exactly recs: data records of
// 1 to 64 KiB, then one close record.
func writable(recs []refRecord) bool {
	if len(recs) == 0 || recs[len(recs)-1].typ != refClose || len(recs[len(recs)-1].payload) != 0 {
		return false
	}
	for _, r := range recs[:len(recs)-1] {
		if r.typ != refData || len(r.payload) == 0 || len(r.payload) > codec.MaxPayload {
			return false
		}
	}
	return true
}
