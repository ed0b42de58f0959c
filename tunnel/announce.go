package tunnel

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// An identity announcement tells a peer, over a tunnel it already
// authenticated, that this site rotated its identity (codec/FORMAT.md,
// "Identity rotation"). It travels as the request of its own stream:
//
//	request  (announcer → peer): version 0x01 | kind 0x02 (identity) | body (announceSize bytes)
//	response (peer → announcer): version 0x01 | status (StatusAccepted or StatusAnnouncementRefused)
//
//	body: format 0x01 | old public key (64) | new public key (64) | sequence (8, big-endian)
//	      | overlap deadline (8, big-endian Unix seconds) | old key's Ed25519 signature (64)
//	      | new key's Ed25519 signature (64)
//
// Both signatures are over the same transcript: announceContext, then the
// body's first 145 bytes (format to deadline). The old key's signature is
// the authority (only the holder of the key the peer pinned can name its
// successor); the new key's proves possession, so no one can announce a
// key they do not hold.
const (
	kindIdentity       = 0x02
	announceFormat     = 0x01
	identityPublicSize = 64 // Ed25519 then X25519
	announceSigned     = 1 + 2*identityPublicSize + 8 + 8
	announceSize       = announceSigned + 2*ed25519.SignatureSize
	announceContext    = "dyad identity rotation v1\x00"
)

// MaxOverlap bounds an announced overlap: a deadline further away is
// refused (a stolen old key must not be able to keep itself pinned).
const MaxOverlap = 30 * 24 * time.Hour

// DefaultOverlap is how long both keys are accepted after a rotation
// unless the caller says otherwise.
const DefaultOverlap = 24 * time.Hour

// Announcement is a signed identity rotation: Old hands over to New, and
// the peer accepts both until Until.
type Announcement struct {
	Old, New identity.PublicKey
	// Seq orders one site's rotations (the rotation time in Unix
	// nanoseconds): a peer refuses one not newer than the last it took.
	Seq   uint64
	Until time.Time // whole seconds
	// OldSig and NewSig are the two keys' signatures of the transcript.
	OldSig, NewSig [ed25519.SignatureSize]byte
}

// ErrAnnouncement is every malformed or badly signed announcement: one
// opaque error, the reason is counted apart.
var ErrAnnouncement = errors.New("identity announcement refused")

func (a *Announcement) transcript() []byte {
	b := make([]byte, 0, len(announceContext)+announceSigned)
	b = append(b, announceContext...)
	return a.appendSigned(b)
}

func (a *Announcement) appendSigned(b []byte) []byte {
	b = append(b, announceFormat)
	b = append(b, a.Old.Sign[:]...)
	b = append(b, a.Old.DH[:]...)
	b = append(b, a.New.Sign[:]...)
	b = append(b, a.New.DH[:]...)
	b = binary.BigEndian.AppendUint64(b, a.Seq)
	return binary.BigEndian.AppendUint64(b, uint64(a.Until.Unix()))
}

// Append appends the announcement's body to b.
func (a *Announcement) Append(b []byte) []byte {
	b = a.appendSigned(b)
	b = append(b, a.OldSig[:]...)
	return append(b, a.NewSig[:]...)
}

// NewAnnouncement signs the handover from old to next, overlapping until.
func NewAnnouncement(old, next *identity.Identity, seq uint64, until time.Time) Announcement {
	a := Announcement{Old: old.Public(), New: next.Public(), Seq: seq, Until: time.Unix(until.Unix(), 0)}
	t := a.transcript()
	copy(a.OldSig[:], ed25519.Sign(old.Signer(), t))
	copy(a.NewSig[:], ed25519.Sign(next.Signer(), t))
	return a
}

// ParseAnnouncement decodes a body. It checks the form only (sizes,
// format, valid X25519 keys); Verify checks the signatures.
func ParseAnnouncement(b []byte) (Announcement, error) {
	var a Announcement
	if len(b) != announceSize {
		return a, fmt.Errorf("%w: %d bytes, want %d", ErrAnnouncement, len(b), announceSize)
	}
	if b[0] != announceFormat {
		return a, fmt.Errorf("%w: format %d", ErrAnnouncement, b[0])
	}
	p := b[1:]
	var err error
	if a.Old, err = identity.PublicKeyFromBytes(p[:identityPublicSize]); err != nil {
		return a, fmt.Errorf("%w: old key: %w", ErrAnnouncement, err)
	}
	p = p[identityPublicSize:]
	if a.New, err = identity.PublicKeyFromBytes(p[:identityPublicSize]); err != nil {
		return a, fmt.Errorf("%w: new key: %w", ErrAnnouncement, err)
	}
	p = p[identityPublicSize:]
	a.Seq = binary.BigEndian.Uint64(p)
	until := binary.BigEndian.Uint64(p[8:])
	if until > 1<<40 { // far beyond any deadline MaxOverlap allows; keeps time.Unix in range
		return a, fmt.Errorf("%w: deadline out of range", ErrAnnouncement)
	}
	a.Until = time.Unix(int64(until), 0)
	p = p[16:]
	copy(a.OldSig[:], p)
	copy(a.NewSig[:], p[ed25519.SignatureSize:])
	return a, nil
}

// Verify checks both signatures, and that the two keys differ in both
// halves. It returns ErrAnnouncement with the reason.
func (a *Announcement) Verify() error {
	if r := a.check(); r != "" {
		return fmt.Errorf("%w: %s", ErrAnnouncement, r)
	}
	return nil
}

// check returns why a is not valid (a refusal reason), or "".
func (a *Announcement) check() string {
	if a.Old.Sign == a.New.Sign || a.Old.DH == a.New.DH {
		return reasonKeyInUse
	}
	t := a.transcript()
	if !ed25519.Verify(a.Old.Sign[:], t, a.OldSig[:]) {
		return reasonBadOldSignature
	}
	if !ed25519.Verify(a.New.Sign[:], t, a.NewSig[:]) {
		return reasonBadNewSignature
	}
	return ""
}

// Reasons an announcement is refused, counted in Stats and audited in
// dyad.peer.key_rotation_refused.
const (
	reasonMalformed       = "malformed"
	reasonBadOldSignature = "bad_old_signature"
	reasonBadNewSignature = "bad_new_signature"
	reasonNotConnKey      = "not_connection_key" // the old key is not the one the tunnel authenticated
	reasonNotPinned       = "old_key_not_pinned" // the old key is not the peer's current key
	reasonStale           = "stale_sequence"     // not newer than the last taken
	reasonDeadline        = "bad_deadline"       // in the past or beyond MaxOverlap
	reasonKeyInUse        = "key_in_use"         // the new key is ours or another peer's
	reasonStateFailed     = "state_write_failed" // OnPeerKeyRotated failed: nothing pinned
)

// AppendAnnouncementRequest appends the request that carries a's body.
func AppendAnnouncementRequest(b []byte, a *Announcement) []byte {
	b = append(b, protoVersion, kindIdentity)
	return a.Append(b)
}

// requestKind returns a request's kind byte (0 if too short).
func requestKind(b []byte) byte {
	if len(b) < 2 || b[0] != protoVersion {
		return 0
	}
	return b[1]
}
