package enroll

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// Message types and the reply's status codes (FORMAT.md section 11).
const (
	msgVersion = 1
	typeJoin   = 1
	typeReply  = 2

	// MaxMessage bounds a message: both fit one QUIC datagram.
	MaxMessage = 1 + 1 + SecretSize + keySize + 1 + maxSite
)

// Status is the inviter's answer to a join.
type Status byte

// Statuses.
const (
	StatusOK       Status = 0 // the joiner is pinned with the invitation's services
	StatusInvalid  Status = 1 // no pending invitation has this secret
	StatusUsed     Status = 2 // the invitation was used already
	StatusExpired  Status = 3 // the invitation expired
	StatusConflict Status = 4 // the joiner's key, or the invitation's peer name, is pinned already
	StatusFailed   Status = 5 // the inviter could not store the peer; nothing changed
	StatusBadKey   Status = 6 // the request's key is not the one the joiner proved in TLS
)

// String is the status's name, as audit events give it.
func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusInvalid:
		return "invalid_token"
	case StatusUsed:
		return "used_token"
	case StatusExpired:
		return "expired_token"
	case StatusConflict:
		return "conflict"
	case StatusFailed:
		return "failed"
	case StatusBadKey:
		return "key_mismatch"
	}
	return fmt.Sprintf("status_%d", byte(s))
}

// Explain says what a refusal means to the joining operator.
func (s Status) Explain() string {
	switch s {
	case StatusOK:
		return "enrolled"
	case StatusInvalid:
		return "the inviter has no pending invitation with this token's secret (never issued there, revoked, or the token was changed)"
	case StatusUsed:
		return "this token was used already: an invitation enrols one peer once; ask for a new one"
	case StatusExpired:
		return "the invitation expired at the inviter; ask for a new one"
	case StatusConflict:
		return "the inviter pins this site's key, or the invitation's peer name, already"
	case StatusFailed:
		return "the inviter could not store the enrollment; nothing changed there, try again"
	case StatusBadKey:
		return "the key in the request is not the one this daemon proved in TLS"
	}
	return "unknown status"
}

// Join is the joiner's request: the secret from the token, its own public
// key (whose Ed25519 half must be the one its TLS certificate proved) and
// its site name (the inviter's log names it; the inviter's peer name for
// the joiner is the one its invitation chose).
type Join struct {
	Secret [SecretSize]byte
	Key    identity.PublicKey
	Site   string
}

// ErrMessage is a malformed enrollment message.
var ErrMessage = errors.New("malformed enrollment message")

// Append appends the encoded request to b.
func (j *Join) Append(b []byte) ([]byte, error) {
	if !ValidSite(j.Site) {
		return b, fmt.Errorf("enrollment request: site %q: 1-64 of A-Z a-z 0-9 . _ -", j.Site)
	}
	b = append(b, msgVersion, typeJoin)
	b = append(b, j.Secret[:]...)
	b = append(b, j.Key.Sign[:]...)
	b = append(b, j.Key.DH[:]...)
	return appendString(b, j.Site), nil
}

// ParseJoin reads a request.
func ParseJoin(b []byte) (*Join, error) {
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("%w: %d bytes", ErrMessage, len(b))
	}
	r := reader{b: b}
	if v, t := r.byte(), r.byte(); r.bad || v != msgVersion || t != typeJoin {
		return nil, fmt.Errorf("%w: not a version %d join", ErrMessage, msgVersion)
	}
	j := &Join{}
	copy(j.Secret[:], r.next(SecretSize))
	copy(j.Key.Sign[:], r.next(32))
	copy(j.Key.DH[:], r.next(32))
	j.Site = r.string()
	if r.bad || len(r.b) != 0 {
		return nil, fmt.Errorf("%w: wrong length", ErrMessage)
	}
	if !ValidSite(j.Site) {
		return nil, fmt.Errorf("%w: bad site name", ErrMessage)
	}
	if _, err := identity.ParsePublicKey(j.Key.String()); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMessage, err)
	}
	return j, nil
}

// AppendReply appends the encoded reply to b.
func AppendReply(b []byte, s Status) []byte { return append(b, msgVersion, typeReply, byte(s)) }

// ParseReply reads a reply.
func ParseReply(b []byte) (Status, error) {
	if len(b) != 3 || b[0] != msgVersion || b[1] != typeReply {
		return 0, fmt.Errorf("%w: not a version %d reply", ErrMessage, msgVersion)
	}
	return Status(b[2]), nil
}

// SecretHash is what the inviter keeps of a secret: SHA-256 of a label and
// the secret, hex.
func SecretHash(secret [SecretSize]byte) string {
	h := sha256.New()
	h.Write([]byte("dyad enroll secret v1"))
	h.Write(secret[:])
	return hex.EncodeToString(h.Sum(nil))
}

// PhraseWords is how many words a verification phrase has (40 bits).
const PhraseWords = 5

// Phrase is the verification phrase of an enrollment: PhraseWords words
// from SHA-256 of a label, the inviter's key, the joiner's key and the
// secret. Both daemons compute it after the exchange; equal phrases read
// over the phone prove that each pinned the key the other holds.
func Phrase(inviter, joiner identity.PublicKey, secret [SecretSize]byte) string {
	h := sha256.New()
	h.Write([]byte("dyad enroll phrase v1"))
	for _, k := range []identity.PublicKey{inviter, joiner} {
		h.Write(k.Sign[:])
		h.Write(k.DH[:])
	}
	h.Write(secret[:])
	sum := h.Sum(nil)
	out := make([]string, PhraseWords)
	for i := range out {
		out[i] = words[sum[i]]
	}
	return strings.Join(out, " ")
}
