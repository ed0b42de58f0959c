package enroll

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// TokenPrefix starts every invitation token and names its format version.
const TokenPrefix = "dyadinv1"

// Sizes and limits of a token (FORMAT.md section 11).
const (
	SecretSize   = 32
	MaxEndpoints = 4
	MaxServices  = 32
	MaxTokenLen  = 4096 // characters, prefix included
	maxSite      = 64
	maxEndpoint  = 255
	checksumSize = 4
	tokenVersion = 1
	keySize      = 64 // identity.PublicKey: Ed25519 || X25519
)

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// Errors a token parse returns (wrapped with detail).
var (
	ErrTokenFormat = errors.New("not a dyad invitation token")
	ErrChecksum    = errors.New("invitation token checksum does not match: it was mistyped, cut or changed; copy it again from the inviter")
)

// Token is an invitation.
type Token struct {
	Site      string             // the inviter's site name: the joiner's name for it unless told otherwise
	Key       identity.PublicKey // the inviter's identity, pinned by the joiner
	Endpoints []string           // where the inviter's QUIC port is, host:port, first preferred
	Services  []string           // the inviter's services the invitation allows the joiner
	Expires   time.Time          // whole seconds
	Secret    [SecretSize]byte   // one-time: the inviter keeps only SecretHash of it
}

// Check validates the fields a token can hold.
func (t *Token) Check() error {
	if !ValidSite(t.Site) {
		return fmt.Errorf("site %q: 1-64 of A-Z a-z 0-9 . _ -", t.Site)
	}
	if len(t.Endpoints) == 0 || len(t.Endpoints) > MaxEndpoints {
		return fmt.Errorf("%d endpoints: 1 to %d", len(t.Endpoints), MaxEndpoints)
	}
	for _, e := range t.Endpoints {
		if !validEndpoint(e) {
			return fmt.Errorf("endpoint %q is not host:port", e)
		}
	}
	if len(t.Services) > MaxServices {
		return fmt.Errorf("%d services: at most %d", len(t.Services), MaxServices)
	}
	for _, s := range t.Services {
		if !tunnel.ValidServiceName(s) {
			return fmt.Errorf("service %q: 1-64 of a-z 0-9 . _ -", s)
		}
	}
	if t.Expires.Unix() <= 0 {
		return errors.New("no expiry")
	}
	return nil
}

// ValidSite reports whether s is a valid site (and peer) name.
func ValidSite(s string) bool {
	if len(s) == 0 || len(s) > maxSite {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validEndpoint(e string) bool {
	if len(e) < 3 || len(e) > maxEndpoint {
		return false
	}
	for i := 0; i < len(e); i++ {
		if e[i] <= ' ' || e[i] > '~' {
			return false
		}
	}
	i := strings.LastIndexByte(e, ':')
	return i > 0 && i < len(e)-1
}

// Encode returns the token as one line: TokenPrefix, then the body and its
// checksum in lower-case base32 without padding.
func (t *Token) Encode() (string, error) {
	if err := t.Check(); err != nil {
		return "", fmt.Errorf("invitation token: %w", err)
	}
	b := []byte{tokenVersion}
	b = binary.BigEndian.AppendUint64(b, uint64(t.Expires.Unix()))
	b = append(b, t.Key.Sign[:]...)
	b = append(b, t.Key.DH[:]...)
	b = append(b, t.Secret[:]...)
	b = appendString(b, t.Site)
	b = append(b, byte(len(t.Endpoints)))
	for _, e := range t.Endpoints {
		b = appendString(b, e)
	}
	b = append(b, byte(len(t.Services)))
	for _, s := range t.Services {
		b = appendString(b, s)
	}
	sum := checksum(b)
	b = append(b, sum[:]...)
	return TokenPrefix + strings.ToLower(b32.EncodeToString(b)), nil
}

func checksum(body []byte) [checksumSize]byte {
	h := sha256.New()
	h.Write([]byte(TokenPrefix))
	h.Write(body)
	var out [checksumSize]byte
	copy(out[:], h.Sum(nil))
	return out
}

func appendString(b []byte, s string) []byte {
	return append(append(b, byte(len(s))), s...)
}

// ParseToken reads a token as Encode writes it. Case does not matter and
// white space (a line broken by a mail client) is skipped. A mistyped
// token gives ErrChecksum; nothing in the token is trusted beyond its
// checksum (see the package comment).
func ParseToken(s string) (*Token, error) {
	if len(s) > MaxTokenLen {
		return nil, fmt.Errorf("%w: %d characters, at most %d", ErrTokenFormat, len(s), MaxTokenLen)
	}
	s = strings.Join(strings.Fields(s), "")
	body, ok := cutPrefixFold(s, TokenPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: it starts with %q", ErrTokenFormat, TokenPrefix)
	}
	raw, err := b32.DecodeString(strings.ToUpper(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %v (was it cut or mistyped?)", ErrChecksum, err)
	}
	// One token, one spelling: a last character whose unused bits are
	// set decodes to the same bytes but is not what Encode wrote.
	if !strings.EqualFold(b32.EncodeToString(raw), body) {
		return nil, ErrChecksum
	}
	if len(raw) < checksumSize+1 {
		return nil, fmt.Errorf("%w: too short", ErrChecksum)
	}
	b, sum := raw[:len(raw)-checksumSize], raw[len(raw)-checksumSize:]
	if want := checksum(b); !bytes.Equal(sum, want[:]) {
		return nil, ErrChecksum
	}
	if b[0] != tokenVersion {
		return nil, fmt.Errorf("%w: version %d; this dyad reads version %d (upgrade it)", ErrTokenFormat, b[0], tokenVersion)
	}
	r := reader{b: b[1:]}
	t := &Token{}
	exp := r.uint64()
	copy(t.Key.Sign[:], r.next(32))
	copy(t.Key.DH[:], r.next(32))
	copy(t.Secret[:], r.next(SecretSize))
	t.Site = r.string()
	n := r.byte()
	for range min(int(n), MaxEndpoints+1) {
		t.Endpoints = append(t.Endpoints, r.string())
	}
	n = r.byte()
	for range min(int(n), MaxServices+1) {
		t.Services = append(t.Services, r.string())
	}
	if r.bad || len(r.b) != 0 {
		return nil, fmt.Errorf("%w: malformed body", ErrTokenFormat)
	}
	if exp > 1<<62 {
		return nil, fmt.Errorf("%w: expiry out of range", ErrTokenFormat)
	}
	t.Expires = time.Unix(int64(exp), 0)
	if _, err := identity.ParsePublicKey(t.Key.String()); err != nil {
		return nil, fmt.Errorf("%w: inviter key: %v", ErrTokenFormat, err)
	}
	if err := t.Check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTokenFormat, err)
	}
	return t, nil
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

// reader reads a body; the first short read sets bad and every later read
// returns zeros.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) next(n int) []byte {
	if r.bad || len(r.b) < n {
		r.bad = true
		return make([]byte, n)
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) byte() byte     { return r.next(1)[0] }
func (r *reader) uint64() uint64 { return binary.BigEndian.Uint64(r.next(8)) }
func (r *reader) string() string { return string(r.next(int(r.byte()))) }
