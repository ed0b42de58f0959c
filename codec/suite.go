package codec

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/fips140"
	"fmt"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"
)

// Suite identifies the AEAD that seals one stream direction. Its value is the
// suite byte of the stream preamble (FORMAT.md, "Preamble").
type Suite uint8

const (
	// SuiteAES256GCM is AES-256-GCM, the default and the FIPS 140-3
	// approved suite.
	SuiteAES256GCM Suite = 0x01
	// SuiteChaCha20Poly1305 is ChaCha20-Poly1305 (RFC 8439), for hosts
	// without AES hardware. It is not available in FIPS 140-3 mode.
	SuiteChaCha20Poly1305 Suite = 0x02
)

// String returns the suite's name as used in configuration and audit events.
func (s Suite) String() string {
	switch s {
	case SuiteAES256GCM:
		return "aes-256-gcm"
	case SuiteChaCha20Poly1305:
		return "chacha20-poly1305"
	}
	return fmt.Sprintf("suite(0x%02x)", uint8(s))
}

// Available reports whether this process can use the suite: it must be
// defined, and in FIPS 140-3 mode it must be approved.
func (s Suite) Available() bool {
	switch s {
	case SuiteAES256GCM:
		return true
	case SuiteChaCha20Poly1305:
		return !fips140.Enabled()
	}
	return false
}

// Suites returns the suites this process can use, the default first.
func Suites() []Suite {
	var out []Suite
	for _, s := range []Suite{SuiteAES256GCM, SuiteChaCha20Poly1305} {
		if s.Available() {
			out = append(out, s)
		}
	}
	return out
}

// ParseSuite returns the suite with the given name (see Suite.String).
func ParseSuite(name string) (Suite, error) {
	for _, s := range []Suite{SuiteAES256GCM, SuiteChaCha20Poly1305} {
		if strings.EqualFold(name, s.String()) {
			return s, nil
		}
	}
	return 0, fmt.Errorf("codec: unknown suite %q (want aes-256-gcm or chacha20-poly1305)", name)
}

// newAEAD returns the suite's AEAD keyed with key (keySize bytes).
func (s Suite) newAEAD(key []byte) (cipher.AEAD, error) {
	switch s {
	case SuiteAES256GCM:
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(block)
	case SuiteChaCha20Poly1305:
		return chacha20poly1305.New(key)
	}
	return nil, fmt.Errorf("%w: %v", ErrVersion, s)
}
