package journal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// A key handover lets one journal outlive an identity rotation: the
// daemon's old key signs, in a dyad.journal.key_handover entry, the name
// of its successor together with the tree of every entry before; the next
// entry is a checkpoint signed by the new key, which signs every later
// one. Verify follows the chain of handovers, so a journal verifies with
// any key of the chain that signed a checkpoint (THREATS P7, tested by
// TestHandoverVerifiesAcrossRotation). The signed note's text is
//
//	<origin>\n<tree size>\n<base64 root hash>\nkey-handover <next verifier key>\n
//
// where the verifier key is note's "<name>+<hash>+<base64 key>".
const (
	HandoverEvent = "dyad.journal.key_handover"
	// AttrKey is the note verifier key handing over; AttrNextKey its
	// successor's.
	AttrKey     = "dyad.journal.key"
	AttrNextKey = "dyad.journal.next_key"
	// AttrHandover is the signed note, by the key handing over.
	AttrHandover = "dyad.journal.handover"
)

func handoverText(origin string, size int64, root tlog.Hash, next string) string {
	return origin + "\n" + strconv.FormatInt(size, 10) + "\n" + base64.StdEncoding.EncodeToString(root[:]) + "\n" +
		"key-handover " + next + "\n"
}

// Handover appends a key handover from the journal's signer to next
// (whose verifier key is nextKey, as note.NewEd25519VerifierKey makes it),
// then a checkpoint signed by next, and signs with next from then on. It
// returns once both are written.
func (j *Journal) Handover(next note.Signer, nextKey string) error {
	if _, err := note.NewVerifier(nextKey); err != nil {
		return fmt.Errorf("journal: handover: next key: %w", err)
	}
	j.mu.Lock()
	if j.closed || j.err != nil {
		err := j.err
		j.mu.Unlock()
		if err == nil {
			err = errors.New("journal: closed")
		}
		return err
	}
	cps, err := j.handoverLocked(next, nextKey)
	if err == nil {
		err = j.writeLocked(j.next)
	}
	j.mu.Unlock()
	j.notify(cps)
	return err
}

// handoverLocked appends the handover and the new key's checkpoint (mu
// held) and returns both entries for OnCheckpoint.
func (j *Journal) handoverLocked(next note.Signer, nextKey string) ([]Entry, error) {
	if j.opts.Key == "" {
		return nil, errors.New("journal: handover: Options.Key (the current signer's verifier key) is not set")
	}
	size := int64(j.next)
	root, err := j.tree.root()
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	signed, err := note.Sign(&note.Note{Text: handoverText(j.opts.Origin, size, root, nextKey)}, j.opts.Signer)
	if err != nil {
		return nil, fmt.Errorf("journal: sign handover: %w", err)
	}
	now := j.opts.Now().UTC()
	attrs := []attribute.KeyValue{
		attribute.String(AttrOrigin, j.opts.Origin),
		attribute.Int64(AttrSize, size),
		attribute.String(AttrRootHash, encodeHash(root)),
		attribute.String(AttrKey, j.opts.Key),
		attribute.String(AttrNextKey, nextKey),
		attribute.String(AttrHandover, string(signed)),
	}
	seq, err := j.appendLocked(HandoverEvent, "INFO", now, attrs)
	if err != nil {
		return nil, err
	}
	h := Entry{Seq: seq, Time: now, Name: HandoverEvent, Severity: "INFO", Attrs: attrs}
	j.opts.Signer, j.opts.Key = next, nextKey
	cp, err := j.checkpointLocked()
	if err != nil {
		return nil, err
	}
	return []Entry{h, cp}, nil
}

var handoverMarker = []byte(`,"name":"` + HandoverEvent + `","severity":`)

// scanHandovers returns the journal's key chain as its handovers name it:
// the first handover's key, then each handover's next key (nil: no
// handover). The scan is not evidence: the main pass checks every handover
// and checkpoint against it.
func scanHandovers(dir string, files []string) ([]string, error) {
	var chain []string
	for _, name := range files {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		for line := range bytes.Lines(data) {
			if !bytes.Contains(line, handoverMarker) {
				continue
			}
			if e, err := Decode(bytes.TrimSuffix(line, []byte{'\n'})); err == nil && e.Name == HandoverEvent {
				if chain == nil {
					chain = append(chain, e.Attr(AttrKey).AsString())
				}
				chain = append(chain, e.Attr(AttrNextKey).AsString())
			}
		}
	}
	return chain, nil
}

// keyIndex is where v stands in chain (by key name and hash), or -1.
func keyIndex(v note.Verifier, chain []string) int {
	for i := len(chain) - 1; i >= 0; i-- {
		if nv, err := note.NewVerifier(chain[i]); err == nil && nv.Name() == v.Name() && nv.KeyHash() == v.KeyHash() {
			return i
		}
	}
	return -1
}

// handover checks a handover entry against the tree before it and the key
// in force, and moves the verifier to the next key. It returns what is
// wrong, or "".
func (v *verifier) handover(e *Entry) string {
	if v.key == nil {
		return "no verifier key to check the key handover"
	}
	signed := e.Attr(AttrHandover).AsString()
	n, err := note.Open([]byte(signed), note.VerifierList(v.key))
	if err != nil {
		return fmt.Sprintf("key handover is not signed by the key in force (%s): %v", v.key.Name(), err)
	}
	root, err := v.tree.root()
	if err != nil {
		return err.Error()
	}
	nextKey := e.Attr(AttrNextKey).AsString()
	if n.Text != handoverText(v.key.Name(), int64(e.Seq), root, nextKey) || e.Attr(AttrOrigin).AsString() != v.key.Name() ||
		e.Attr(AttrSize).AsInt64() != int64(e.Seq) || e.Attr(AttrRootHash).AsString() != encodeHash(root) || len(e.Attrs) != 6 {
		return "key handover does not match the entries before it: an entry was changed"
	}
	v.keyPos++
	if v.keyPos >= len(v.chain) || v.chain[v.keyPos] != nextKey {
		return "key handover names another key than the journal's chain of handovers"
	}
	next, err := note.NewVerifier(nextKey)
	if err != nil {
		return "key handover names a malformed key: " + err.Error()
	}
	v.key = next
	return ""
}

// PreviousSigner is a key the journal may have been signed with before
// the current one (Options.Previous).
type PreviousSigner struct {
	Signer note.Signer
	Key    string // its verifier key (VerifierKey)
}

// matchPrevious returns the previous signer whose signature want is (the
// crash case: a rotation stored the new identity but its handover never
// reached the journal), or nil.
func matchPrevious(prev []PreviousSigner, origin string, size int64, root tlog.Hash, t time.Time, want string) *PreviousSigner {
	for i, p := range prev {
		if p.Signer == nil {
			continue
		}
		if got, err := signCheckpoint(p.Signer, origin, size, root, t); err == nil && got == want {
			return &prev[i]
		}
	}
	return nil
}

// VerifierKey returns the note verifier key of an Ed25519 public key under
// the journal's origin, for Handover.
func VerifierKey(origin string, pub []byte) (string, error) {
	k, err := note.NewEd25519VerifierKey(origin, pub)
	if err != nil {
		return "", fmt.Errorf("journal: key name %q: %w", origin, err)
	}
	return k, nil
}
