// Package identity is a dyad daemon's identity: an Ed25519 key that signs its
// TLS certificate and an X25519 key from which each pair of daemons derives
// the pairing secret that binds the codec's record keys (THREATS P1, P4).
// Both private keys live in one key file, written 0600 and refused when
// readable by anyone else (THREATS P6).
package identity

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// PublicKeyPrefix starts every public key string dyad prints: the
// checksummed form (String). LegacyPublicKeyPrefix starts the form of the
// first release, without a checksum, which ParsePublicKey still accepts.
const (
	PublicKeyPrefix       = "dyad2:"
	LegacyPublicKeyPrefix = "dyad1:"
)

// checksumSize is the bytes of SHA-256 a dyad2: key carries after the two
// keys: a mistyped character fails the check except with probability 2^-32.
const checksumSize = 4

const (
	pemType        = "DYAD IDENTITY KEY"
	keyFileVersion = 1
	keyFileSize    = 1 + ed25519.SeedSize + 32 // version, Ed25519 seed, X25519 private key
	pubSize        = ed25519.PublicKeySize + 32

	// KeyFileName and PublicFileName are the files keygen writes.
	KeyFileName    = "identity.key"
	PublicFileName = "identity.pub"
)

// PublicKey is what a partner pins in its configuration: the Ed25519 key
// that must sign our TLS handshake and the X25519 key for the pairing secret.
type PublicKey struct {
	Sign [ed25519.PublicKeySize]byte
	DH   [32]byte
}

// String encodes the key as one copy-pasteable string: "dyad2:" followed
// by base64url (no padding) of the two keys and a 4-byte checksum, the
// first bytes of SHA-256("dyad2 public key" | keys). It is the form every
// command prints (codec/FORMAT.md, "Public keys").
func (p PublicKey) String() string {
	raw := p.raw()
	sum := keyChecksum(raw)
	return PublicKeyPrefix + base64.RawURLEncoding.EncodeToString(append(raw, sum[:]...))
}

// LegacyString is the first release's dyad1: form, without a checksum. It
// is part of the pairing secret's derivation (PairingSecret), so it must
// never change.
func (p PublicKey) LegacyString() string {
	return LegacyPublicKeyPrefix + base64.RawURLEncoding.EncodeToString(p.raw())
}

func (p PublicKey) raw() []byte { return append(p.Sign[:len(p.Sign):len(p.Sign)], p.DH[:]...) }

func keyChecksum(raw []byte) [checksumSize]byte {
	h := sha256.New()
	h.Write([]byte("dyad2 public key"))
	h.Write(raw)
	var out [checksumSize]byte
	copy(out[:], h.Sum(nil))
	return out
}

// ErrKeyChecksum says a dyad2: key decoded but its checksum does not match:
// a character was mistyped or lost in copying.
var ErrKeyChecksum = errors.New("public key checksum does not match: a character was mistyped or lost in copying; copy the key again from the partner's `dyad keygen` or `dyad check` output")

// ParsePublicKey decodes a string made by PublicKey.String (dyad2:, its
// checksum checked, tested by TestParsePublicKeyChecksum) or by the first
// release (dyad1:, no checksum). Errors never quote the input.
func ParsePublicKey(s string) (PublicKey, error) {
	var p PublicKey
	s = strings.TrimSpace(s)
	want := pubSize
	body, ok := strings.CutPrefix(s, PublicKeyPrefix)
	if ok {
		want += checksumSize
	} else if body, ok = strings.CutPrefix(s, LegacyPublicKeyPrefix); !ok {
		return p, fmt.Errorf("public key must start with %q (or %q, the older form)", PublicKeyPrefix, LegacyPublicKeyPrefix)
	}
	// Strict: the unused low bits of the last character must be zero, so
	// that character's mistype is caught too.
	raw, err := base64.RawURLEncoding.Strict().DecodeString(body)
	if err != nil {
		return p, fmt.Errorf("public key is not valid base64url: %w", err)
	}
	if len(raw) != want {
		return p, fmt.Errorf("public key is %d bytes, want %d: characters were lost or added in copying", len(raw), want)
	}
	if want > pubSize {
		sum := keyChecksum(raw[:pubSize])
		if subtle.ConstantTimeCompare(sum[:], raw[pubSize:]) != 1 {
			return p, ErrKeyChecksum
		}
	}
	return PublicKeyFromBytes(raw[:pubSize])
}

// PublicKeyFromBytes decodes the 64 raw bytes of a public key (Ed25519,
// then X25519), as PublicKey.Bytes returns them.
func PublicKeyFromBytes(raw []byte) (PublicKey, error) {
	var p PublicKey
	if len(raw) != pubSize {
		return p, fmt.Errorf("public key is %d bytes, want %d", len(raw), pubSize)
	}
	copy(p.Sign[:], raw)
	copy(p.DH[:], raw[ed25519.PublicKeySize:pubSize])
	if _, err := ecdh.X25519().NewPublicKey(p.DH[:]); err != nil {
		return p, fmt.Errorf("public key has an invalid X25519 part: %w", err)
	}
	return p, nil
}

// Bytes returns the key's 64 raw bytes: Ed25519, then X25519.
func (p PublicKey) Bytes() []byte { return append(p.Sign[:len(p.Sign):len(p.Sign)], p.DH[:]...) }

// Fingerprint is the short name of a key for people and audit events.
func (p PublicKey) Fingerprint() string { return Fingerprint(p.Sign[:]) }

// Fingerprint returns the fingerprint of an Ed25519 public key: "SHA256:"
// and the first 12 bytes of its SHA-256 in hex. It is what a refused
// handshake's audit event shows, so it needs only the presented key.
func Fingerprint(signKey []byte) string {
	sum := sha256.Sum256(signKey)
	return "SHA256:" + hex.EncodeToString(sum[:12])
}

// Equal compares two keys in constant time.
func (p PublicKey) Equal(q PublicKey) bool {
	return subtle.ConstantTimeCompare(p.Sign[:], q.Sign[:])&subtle.ConstantTimeCompare(p.DH[:], q.DH[:]) == 1
}

// Identity is a daemon's private keys.
type Identity struct {
	sign    ed25519.PrivateKey
	dh      *ecdh.PrivateKey
	public  PublicKey
	created time.Time // zero: unknown (a key file written before dyad recorded it)
}

// createdHeader is the key file's PEM header holding the identity's
// creation time (RFC 3339, UTC). Key files without it stay valid; their
// age is unknown.
const createdHeader = "Created"

// Generate makes a new identity from the system's random source.
func Generate() (*Identity, error) {
	raw := make([]byte, keyFileSize)
	raw[0] = keyFileVersion
	if _, err := rand.Read(raw[1:]); err != nil {
		return nil, fmt.Errorf("identity: random source: %w", err)
	}
	defer clear(raw)
	id, err := fromRaw(raw)
	if err != nil {
		return nil, err
	}
	id.created = time.Now().UTC().Truncate(time.Second)
	return id, nil
}

// Created returns when the identity was made; the zero time means unknown
// (its key file predates the Created header).
func (id *Identity) Created() time.Time { return id.created }

func fromRaw(raw []byte) (*Identity, error) {
	if len(raw) != keyFileSize || raw[0] != keyFileVersion {
		return nil, errors.New("identity: key material has the wrong size or version")
	}
	id := &Identity{sign: ed25519.NewKeyFromSeed(raw[1 : 1+ed25519.SeedSize])}
	dh, err := ecdh.X25519().NewPrivateKey(raw[1+ed25519.SeedSize:])
	if err != nil {
		return nil, fmt.Errorf("identity: X25519 key: %w", err)
	}
	id.dh = dh
	copy(id.public.Sign[:], id.sign.Public().(ed25519.PublicKey))
	copy(id.public.DH[:], dh.PublicKey().Bytes())
	return id, nil
}

// Public returns the identity's public key.
func (id *Identity) Public() PublicKey { return id.public }

// Signer returns the Ed25519 private key, for the TLS certificate.
func (id *Identity) Signer() ed25519.PrivateKey { return id.sign }

// MarshalPEM returns the key file's PEM text (secret: the caller writes it
// 0600 and clears it).
func (id *Identity) MarshalPEM() []byte { return id.marshal() }

// marshal returns the key file's PEM text.
func (id *Identity) marshal() []byte {
	raw := make([]byte, 0, keyFileSize)
	raw = append(raw, keyFileVersion)
	raw = append(raw, id.sign.Seed()...)
	raw = append(raw, id.dh.Bytes()...)
	defer clear(raw)
	b := &pem.Block{Type: pemType, Bytes: raw}
	if !id.created.IsZero() {
		b.Headers = map[string]string{createdHeader: id.created.UTC().Format(time.RFC3339)}
	}
	return pem.EncodeToMemory(b)
}

// Parse decodes a key file's contents. Errors never quote the contents.
func Parse(data []byte) (*Identity, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != pemType {
		return nil, fmt.Errorf("identity: not a %q PEM file", pemType)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("identity: trailing data after the key")
	}
	defer clear(block.Bytes)
	id, err := fromRaw(block.Bytes)
	if err != nil {
		return nil, err
	}
	if c, ok := block.Headers[createdHeader]; ok {
		t, err := time.Parse(time.RFC3339, c)
		if err != nil { // not quoted, like the rest of the file
			return nil, fmt.Errorf("identity: the %s header is not an RFC 3339 time", createdHeader)
		}
		id.created = t.UTC()
	}
	return id, nil
}

// Load reads a key file, refusing one that group or others can read or
// write (THREATS P6; tested by TestLoadRefusesOpenPermissions).
func Load(path string) (*Identity, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if mode := fi.Mode().Perm(); mode&0o077 != 0 {
		return nil, fmt.Errorf("identity: key file %s has mode %04o, readable beyond its owner; run: chmod 600 %s (or, where the file cannot be changed, copy it with dyad install-key)", path, mode, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	defer clear(data)
	id, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, path)
	}
	return id, nil
}

// WriteFiles writes dir/identity.key (0600, created new: an existing key is
// never overwritten) and dir/identity.pub, and returns their paths.
func (id *Identity) WriteFiles(dir string) (keyPath, pubPath string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("identity: %w", err)
	}
	keyPath, pubPath = filepath.Join(dir, KeyFileName), filepath.Join(dir, PublicFileName)
	f, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", "", fmt.Errorf("identity: %w", err)
	}
	data := id.marshal()
	defer clear(data)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return "", "", fmt.Errorf("identity: write %s: %w", keyPath, err)
	}
	if err := f.Close(); err != nil {
		return "", "", fmt.Errorf("identity: write %s: %w", keyPath, err)
	}
	pub := id.public.String() + "\n"
	if err := os.WriteFile(pubPath, []byte(pub), 0o644); err != nil {
		return "", "", fmt.Errorf("identity: %w", err)
	}
	return keyPath, pubPath, nil
}

// PairingSecret derives the 32-byte secret this identity shares with peer:
// HKDF-SHA256 over the X25519 shared secret, with both public keys (in a
// fixed order) in the info so the secret is bound to this exact pair.
func (id *Identity) PairingSecret(peer PublicKey) ([]byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(peer.DH[:])
	if err != nil {
		return nil, fmt.Errorf("identity: peer X25519 key: %w", err)
	}
	shared, err := id.dh.ECDH(pub) // fails on the all-zero output of a low-order key
	if err != nil {
		return nil, fmt.Errorf("identity: pairing with %s: %w", peer.Fingerprint(), err)
	}
	defer clear(shared)
	// The dyad1: form, as the first release derived it: both forms of a
	// key pair the same way.
	a, b := id.public.LegacyString(), peer.LegacyString()
	if a > b {
		a, b = b, a
	}
	return hkdf.Key(sha256.New, shared, []byte("dyad/1 pairing"), a+"|"+b, 32)
}

// DerivedKey returns a 32-byte key for a local purpose named by label (the
// QUIC stateless reset key, so a restarted daemon can reset its peers' stale
// connections). It is independent of every other key.
func (id *Identity) DerivedKey(label string) [32]byte {
	var out [32]byte
	k, err := hkdf.Key(sha256.New, id.sign.Seed(), []byte("dyad/1 local"), label, 32)
	if err != nil {
		panic("identity: hkdf of 32 bytes cannot fail: " + err.Error())
	}
	copy(out[:], k)
	return out
}
