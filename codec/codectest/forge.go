// Package codectest seals records as a misbehaving peer would, for tests of
// what a codec.Reader's user does with them: any record type, any payload,
// a key_update whenever asked. It follows codec/FORMAT.md sections 2 to 5
// with the standard library alone, so it never enforces the rules the
// Reader checks.
package codectest

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/dyad-tunnel/dyad/codec"
)

// Record types of FORMAT.md section 3.
const (
	Data      byte = 0x01
	Close     byte = 0x02
	KeyUpdate byte = 0x03
)

// Forger seals the records of one stream direction.
type Forger struct {
	suite    codec.Suite
	preamble []byte
	secret   []byte
	aead     cipher.AEAD
	iv       []byte
	seq      uint64
}

// NewForger derives the keys of direction dir of stream streamID from the
// connection's secret (the TLS exporter output) and the pairing secret.
func NewForger(connSecret, pairingSecret []byte, suite codec.Suite, streamID uint64, dir codec.Direction) (*Forger, error) {
	prk, err := hkdf.Extract(sha256.New, connSecret, pairingSecret)
	if err != nil {
		return nil, fmt.Errorf("codectest: extract: %w", err)
	}
	f := &Forger{suite: suite, preamble: []byte{'d', 'y', 'a', 'd', codec.Version, byte(suite), 0, 0}}
	info := append([]byte("dyad/1 stream"), f.preamble...)
	info = binary.BigEndian.AppendUint64(info, streamID)
	info = append(info, byte(dir))
	if f.secret, err = hkdf.Expand(sha256.New, prk, string(info), 32); err != nil {
		return nil, fmt.Errorf("codectest: stream secret: %w", err)
	}
	return f, f.install()
}

func (f *Forger) install() error {
	key, err := hkdf.Expand(sha256.New, f.secret, "dyad/1 key", 32)
	if err != nil {
		return err
	}
	if f.iv, err = hkdf.Expand(sha256.New, f.secret, "dyad/1 iv", 12); err != nil {
		return err
	}
	f.seq = 0
	if f.suite == codec.SuiteChaCha20Poly1305 {
		f.aead, err = chacha20poly1305.New(key)
		return err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	f.aead, err = cipher.NewGCM(block)
	return err
}

// Preamble appends the direction's preamble to dst.
func (f *Forger) Preamble(dst []byte) []byte { return append(dst, f.preamble...) }

// Seal appends one record of type typ carrying payload to dst, sealed under
// the current key; after a KeyUpdate record later ones use the next key.
func (f *Forger) Seal(dst []byte, typ byte, payload []byte) []byte {
	n := len(payload) + f.aead.Overhead()
	header := []byte{typ, byte(n >> 16), byte(n >> 8), byte(n)}
	nonce := make([]byte, len(f.iv))
	copy(nonce, f.iv)
	for i := range 8 {
		nonce[len(nonce)-8+i] ^= byte(f.seq >> (56 - 8*i))
	}
	f.seq++
	dst = append(dst, header...)
	dst = f.aead.Seal(dst, nonce, payload, header)
	if typ == KeyUpdate {
		next, err := hkdf.Expand(sha256.New, f.secret, "dyad/1 update", 32)
		if err != nil {
			panic(fmt.Sprintf("codectest: next secret: %v", err)) // HKDF-SHA256 fails only past 8160 bytes
		}
		f.secret = next
		if err := f.install(); err != nil {
			panic(fmt.Sprintf("codectest: install: %v", err))
		}
	}
	return dst
}
