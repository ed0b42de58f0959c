package journal

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoint names and attribute keys of the journal's own entries.
const (
	CheckpointEvent = "dyad.journal.checkpoint"
	RecoveredEvent  = "dyad.journal.recovered"

	AttrOrigin     = "dyad.journal.origin"
	AttrSize       = "dyad.journal.size"
	AttrRootHash   = "dyad.journal.root_hash"
	AttrCheckpoint = "dyad.journal.checkpoint"
)

// A checkpoint is a C2SP tlog-checkpoint: a signed note (golang.org/x/mod/sumdb/note)
// whose text is
//
//	<origin>\n<tree size>\n<base64 root hash>\ntime <RFC 3339 time of the entry>\n
//
// signed with the daemon's Ed25519 identity key under the key name origin.
// The time extension line binds the checkpoint entry's own timestamp, so
// that every field of a journal's last entry, a checkpoint covered by no
// later entry, is still signed.

// NewSigner makes a note signer named origin from an Ed25519 private key.
// The origin must be a valid note key name: no spaces, no '+'.
func NewSigner(origin string, key ed25519.PrivateKey) (note.Signer, error) {
	vkey, err := note.NewEd25519VerifierKey(origin, key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("journal: checkpoint key name %q: %w", origin, err)
	}
	// vkey is "<name>+<hash>+<base64(alg||public key)>"; the signer key
	// has the same name and hash and carries the seed instead.
	// The name has no '+' (note refuses it) and the hash is hex, so the
	// first two '+' delimit the hash; the base64 key may hold '+' itself.
	parts := strings.SplitN(vkey, "+", 3)
	seed := append([]byte{1}, key.Seed()...) // 1 is note's Ed25519 algorithm byte
	skey := "PRIVATE+KEY+" + origin + "+" + parts[1] + "+" + base64.StdEncoding.EncodeToString(seed)
	clear(seed)
	return note.NewSigner(skey)
}

// NewVerifier makes the verifier of checkpoints signed by NewSigner.
func NewVerifier(origin string, pub ed25519.PublicKey) (note.Verifier, error) {
	vkey, err := note.NewEd25519VerifierKey(origin, pub)
	if err != nil {
		return nil, fmt.Errorf("journal: checkpoint key name %q: %w", origin, err)
	}
	return note.NewVerifier(vkey)
}

// signCheckpoint returns the signed note for a tree of size entries.
func signCheckpoint(s note.Signer, origin string, size int64, root tlog.Hash, t time.Time) (string, error) {
	text := checkpointText(origin, size, root, t)
	msg, err := note.Sign(&note.Note{Text: text}, s)
	if err != nil {
		return "", fmt.Errorf("journal: sign checkpoint: %w", err)
	}
	return string(msg), nil
}

func checkpointText(origin string, size int64, root tlog.Hash, t time.Time) string {
	return origin + "\n" + strconv.FormatInt(size, 10) + "\n" + base64.StdEncoding.EncodeToString(root[:]) + "\n" +
		"time " + t.UTC().Format(time.RFC3339Nano) + "\n"
}

// Checkpoint is a verified checkpoint's content.
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
	Time   time.Time // from the time extension line; zero when absent
}

// ErrSignature reports a checkpoint whose signature does not verify.
var ErrSignature = errors.New("checkpoint signature does not verify")

// OpenCheckpoint verifies a signed checkpoint note and parses its text.
func OpenCheckpoint(signed string, v note.Verifier) (Checkpoint, error) {
	n, err := note.Open([]byte(signed), note.VerifierList(v))
	var unverified *note.UnverifiedNoteError
	var invalid *note.InvalidSignatureError
	switch {
	case errors.As(err, &unverified) || errors.As(err, &invalid):
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrSignature, err)
	case err != nil: // not a signed note at all (found by FuzzCheckpoint)
		return Checkpoint{}, fmt.Errorf("%w: checkpoint: %v", ErrMalformed, err)
	case !canonicalSignatures(signed):
		return Checkpoint{}, fmt.Errorf("%w: checkpoint signature is not in canonical base64", ErrMalformed)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[len(lines)-1] != "" {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint text has %d lines", ErrMalformed, len(lines)-1)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint size %q", ErrMalformed, lines[1])
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint root hash", ErrMalformed)
	}
	c := Checkpoint{Origin: lines[0], Size: size}
	copy(c.Root[:], raw)
	for _, ext := range lines[3 : len(lines)-1] {
		if v, ok := strings.CutPrefix(ext, "time "); ok {
			if c.Time, err = time.Parse(time.RFC3339Nano, v); err != nil {
				return Checkpoint{}, fmt.Errorf("%w: checkpoint time %q", ErrMalformed, v)
			}
			c.Time = c.Time.UTC()
		}
	}
	return c, nil
}

// canonicalSignatures reports whether every signature line of a note that
// note.Open accepted is in canonical base64. note.Open decodes leniently
// (non-zero padding bits pass), so without this check one checkpoint has
// several encodings, and a changed byte in a journal's last checkpoint
// would still verify (found by FuzzJournalVerify).
func canonicalSignatures(signed string) bool {
	i := strings.LastIndex(signed, "\n\n")
	for _, line := range strings.Split(strings.TrimSuffix(signed[i+2:], "\n"), "\n") {
		sig := line[strings.LastIndexByte(line, ' ')+1:]
		if _, err := base64.StdEncoding.Strict().DecodeString(sig); err != nil {
			return false
		}
	}
	return true
}
