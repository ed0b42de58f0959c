package codec

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// SecretSize is the size in bytes of both inputs to the key schedule: the
// per-connection secret and the pairing secret.
const SecretSize = 32

const (
	keySize   = 32 // both suites use 256-bit keys
	nonceSize = 12 // both suites use 96-bit nonces

	labelStream = "dyad/1 stream"
	labelKey    = "dyad/1 key"
	labelIV     = "dyad/1 iv"
	labelUpdate = "dyad/1 update"
)

// Direction says which end of a stream sealed a direction. Each direction of
// each stream has its own keys, so a record cannot be reflected back to its
// sender or spliced into the other direction.
type Direction uint8

const (
	// FromInitiator is the direction sealed by the end that opened the stream.
	FromInitiator Direction = 1
	// FromResponder is the direction sealed by the end that accepted it.
	FromResponder Direction = 2
)

// String names the direction for logs and audit events.
func (d Direction) String() string {
	switch d {
	case FromInitiator:
		return "from-initiator"
	case FromResponder:
		return "from-responder"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// limits are the per-key usage limits of FORMAT.md, "Key usage limits".
// Tests lower them to exercise key updates; production always uses
// defaultLimits.
type limits struct {
	recordsPerKey uint64 // records sealed under one key, key update record included
	bytesPerKey   uint64 // plaintext bytes sealed under one key
	keyUpdates    uint32 // key updates per stream direction
}

var defaultLimits = limits{
	recordsPerKey: 1 << 23,
	bytesPerKey:   1 << 35,
	keyUpdates:    math.MaxUint32,
}

// Config chooses the suites of a Session. The zero Config is the default:
// seal with AES-256-GCM, accept every suite available in this process.
type Config struct {
	// Suite seals the directions this side writes. Zero means
	// SuiteAES256GCM.
	Suite Suite
	// Accept lists the suites accepted from the peer. Empty means every
	// suite available in this process (see Suites).
	Accept []Suite
	// OnKeyUpdate, if set, is called (synchronously, from the Writer or
	// Reader) each time a stream direction moves to its next key.
	OnKeyUpdate func(KeyUpdate)
}

// KeyUpdate describes one key update, for audit.
type KeyUpdate struct {
	StreamID   uint64
	Dir        Direction
	Sending    bool   // this side's Writer updated (else its Reader followed the peer)
	Generation uint32 // key updates done in this direction, this one included
}

// Session holds the key material of one tunnel connection: the pseudorandom
// key extracted from the connection's secret and the pairing secret. It makes
// the Writer and Reader of each stream direction and is safe for concurrent
// use.
type Session struct {
	prk    [sha256.Size]byte
	suite  Suite
	accept [256]bool // indexed by suite byte
	limits limits
	onKey  func(KeyUpdate)
}

// NewSession extracts the connection's key from connSecret (fresh per
// connection: the tunnel passes the QUIC connection's TLS exporter output)
// and pairingSecret (held only by the two paired daemons). Both must be
// SecretSize bytes; an all-zero pairing secret is refused, since it is what a
// low-order X25519 public key would produce.
func NewSession(connSecret, pairingSecret []byte, cfg Config) (*Session, error) {
	if len(connSecret) != SecretSize {
		return nil, fmt.Errorf("codec: connection secret is %d bytes, want %d", len(connSecret), SecretSize)
	}
	if len(pairingSecret) != SecretSize {
		return nil, fmt.Errorf("codec: pairing secret is %d bytes, want %d", len(pairingSecret), SecretSize)
	}
	var zero [SecretSize]byte
	if subtle.ConstantTimeCompare(pairingSecret, zero[:]) == 1 {
		return nil, errors.New("codec: pairing secret is all zero")
	}
	s := &Session{suite: cfg.Suite, limits: defaultLimits, onKey: cfg.OnKeyUpdate}
	if s.suite == 0 {
		s.suite = SuiteAES256GCM
	}
	if !s.suite.Available() {
		return nil, fmt.Errorf("codec: suite %v is not available in this process", s.suite)
	}
	accept := cfg.Accept
	if len(accept) == 0 {
		accept = Suites()
	}
	for _, a := range accept {
		if !a.Available() {
			return nil, fmt.Errorf("codec: accepted suite %v is not available in this process", a)
		}
		s.accept[a] = true
	}
	// The pairing secret is the HKDF salt, i.e. the HMAC key: HMAC is a
	// dual PRF, so the output stays secret if either input does.
	prk, err := hkdf.Extract(sha256.New, connSecret, pairingSecret)
	if err != nil {
		return nil, fmt.Errorf("codec: extract: %w", err)
	}
	copy(s.prk[:], prk)
	clear(prk)
	return s, nil
}

// Suite returns the suite this side seals with.
func (s *Session) Suite() Suite { return s.suite }

// trafficSecret derives the first secret of one stream direction. The
// preamble is in the info, so a changed version or suite byte yields
// other keys and every record then fails authentication.
func (s *Session) trafficSecret(preamble [PreambleSize]byte, streamID uint64, dir Direction) ([keySize]byte, error) {
	var info [len(labelStream) + PreambleSize + 8 + 1]byte
	n := copy(info[:], labelStream)
	n += copy(info[n:], preamble[:])
	binary.BigEndian.PutUint64(info[n:], streamID)
	info[n+8] = byte(dir)
	var out [keySize]byte
	expand(&s.prk, info[:], out[:])
	return out, nil
}

// maxExpandInfo is the longest info expand takes: the stream label's.
const maxExpandInfo = len(labelStream) + PreambleSize + 8 + 1

// expand is HKDF-Expand (RFC 5869) with SHA-256 for an output of at most
// one hash (len(out) <= 32): T(1) = HMAC-SHA256(secret, info || 0x01). The
// HMAC (RFC 2104) is written out over stack buffers so that a new stream's
// key derivation allocates nothing (crypto/hkdf builds a crypto/hmac per
// call); TestExpandMatchesHKDF checks it against crypto/hkdf.
func expand(secret *[keySize]byte, info []byte, out []byte) {
	const block = 64 // SHA-256's block; the secret is shorter, so it is the HMAC key as is
	var inner [block + maxExpandInfo + 1]byte
	var outer [block + sha256.Size]byte
	for i := range block {
		k := byte(0)
		if i < keySize {
			k = secret[i]
		}
		inner[i], outer[i] = k^0x36, k^0x5c
	}
	n := block + copy(inner[block:block+maxExpandInfo], info)
	inner[n] = 1
	h := sha256.Sum256(inner[:n+1])
	copy(outer[block:], h[:])
	t := sha256.Sum256(outer[:])
	copy(out, t[:])
	clear(inner[:])
	clear(outer[:])
	clear(h[:])
	clear(t[:])
}

// deriveKeyIV derives a traffic secret's AEAD key and IV.
func deriveKeyIV(secret *[keySize]byte, key *[keySize]byte, iv *[nonceSize]byte) {
	expand(secret, []byte(labelKey), key[:])
	expand(secret, []byte(labelIV), iv[:])
}

// halfKeys is the key state of one stream direction, shared in shape by the
// sealing and the opening side (crypto/tls calls it halfConn).
type halfKeys struct {
	suite  Suite
	aead   cipher.AEAD
	secret [keySize]byte   // current traffic secret
	iv     [nonceSize]byte // current IV
	nonce  [nonceSize]byte // scratch, so sealing does not allocate
	seq    uint64          // records sealed or opened under the current key
	bytes  uint64          // plaintext bytes under the current key
	gen    uint32          // key updates done
	limits limits
}

// install derives key and IV from secret and resets the counters.
func (h *halfKeys) install(secret [keySize]byte) error {
	var key [keySize]byte
	var iv [nonceSize]byte
	deriveKeyIV(&secret, &key, &iv)
	defer clear(key[:])
	aead, err := h.suite.newAEAD(key[:])
	if err != nil {
		return fmt.Errorf("codec: %v: %w", h.suite, err)
	}
	h.aead, h.secret, h.iv, h.seq, h.bytes = aead, secret, iv, 0, 0
	return nil
}

// update moves to the next key: secret' = HKDF-Expand(secret, "dyad/1 update").
func (h *halfKeys) update() error {
	if h.gen >= h.limits.keyUpdates {
		return fmt.Errorf("%w: %d key updates done", ErrKeyExhausted, h.gen)
	}
	var secret [keySize]byte
	expand(&h.secret, []byte(labelUpdate), secret[:])
	if err := h.install(secret); err != nil {
		return err
	}
	h.gen++
	return nil
}

// updateDue reports whether a data record of n more plaintext bytes may not
// be sealed under the current key: it would be the last record the record
// limit allows (the key_update must still fit), or it would take the bytes
// under the key past the byte limit. The Writer asks it before each data
// record; the Reader asks it with n = MaxPayload, the most a writer may
// have been about to send, to tell a due key update from a forced one.
func (h *halfKeys) updateDue(n int) bool {
	return h.seq+1 >= h.limits.recordsPerKey || h.bytes+uint64(n) > h.limits.bytesPerKey
}

// nextNonce returns IV XOR the 64-bit sequence number, right-aligned, as in
// TLS 1.3. The sequence number never wraps: keys are updated long before.
func (h *halfKeys) nextNonce() []byte {
	h.nonce = h.iv
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], h.seq)
	subtle.XORBytes(h.nonce[nonceSize-8:], h.nonce[nonceSize-8:], seq[:])
	return h.nonce[:]
}
