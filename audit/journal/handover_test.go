package journal

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/mod/sumdb/note"
)

type testSigningKey struct {
	s   note.Signer
	v   note.Verifier
	key string
}

func seededKey(t *testing.T, b byte) testSigningKey {
	t.Helper()
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
	s, err := NewSigner(origin, k)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(origin, k.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	vk, err := VerifierKey(origin, k.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return testSigningKey{s, v, vk}
}

func openWith(t *testing.T, dir string, k testSigningKey, prev ...testSigningKey) (*Journal, error) {
	t.Helper()
	opts := Options{Dir: dir, Origin: origin, Signer: k.s, Key: k.key}
	for _, p := range prev {
		opts.Previous = append(opts.Previous, PreviousSigner{Signer: p.s, Key: p.key})
	}
	return Open(opts)
}

func appendEvents(t *testing.T, j *Journal, n int) {
	t.Helper()
	for i := range n {
		if _, err := j.Append("dyad.test.event", "INFO", time.Now(), []attribute.KeyValue{attribute.Int("i", i)}); err != nil {
			t.Fatal(err)
		}
	}
}

func verifyWith(t *testing.T, dir string, v note.Verifier) *Result {
	t.Helper()
	res, err := Verify(dir, VerifyOptions{Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestHandoverVerifiesAcrossRotation: the daemon's key rotates while the
// journal runs; the old key hands over in a signed entry, the journal
// reopens under the new key (a restart after the rotation) and verifies
// with either key; an unrelated key, or an entry changed before the
// handover, fails.
func TestHandoverVerifiesAcrossRotation(t *testing.T) {
	dir := t.TempDir()
	k0, k1, other := seededKey(t, 1), seededKey(t, 2), seededKey(t, 3)
	j, err := openWith(t, dir, k0)
	if err != nil {
		t.Fatal(err)
	}
	appendEvents(t, j, 5)
	if err := j.Handover(k1.s, k1.key); err != nil {
		t.Fatal(err)
	}
	appendEvents(t, j, 5)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	// The restart: the new key only.
	j, err = openWith(t, dir, k1)
	if err != nil {
		t.Fatalf("reopen under the new key after a handover: %v", err)
	}
	appendEvents(t, j, 3)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]testSigningKey{"old": k0, "new": k1} {
		if res := verifyWith(t, dir, k.v); !res.OK() {
			t.Fatalf("verify with the %s key: %v", name, res.Bad)
		}
	}
	if res := verifyWith(t, dir, other.v); res.OK() {
		t.Fatal("a key that is none of the journal's verified it")
	}

	// An entry before the handover changed: found.
	files, _ := Files(dir)
	path := filepath.Join(dir, files[0])
	data, _ := os.ReadFile(path)
	bad := strings.Replace(string(data), `"i":2`, `"i":7`, 1)
	if bad == string(data) {
		t.Fatal("test entry not found")
	}
	os.WriteFile(path, []byte(bad), 0o600)
	if res := verifyWith(t, dir, k1.v); res.OK() {
		t.Fatal("a changed entry before the handover verified with the new key")
	}
}

// TestHandoverAtOpen: the rotation stored the new identity but crashed
// before the journal's handover; Open, given the previous key, accepts the
// previous key's last checkpoint and writes the handover itself. Without
// it (main before this change), the journal is broken for the new key.
func TestHandoverAtOpen(t *testing.T) {
	dir := t.TempDir()
	k0, k1 := seededKey(t, 1), seededKey(t, 2)
	j, err := openWith(t, dir, k0)
	if err != nil {
		t.Fatal(err)
	}
	appendEvents(t, j, 4)
	j.Close()
	if _, err := openWith(t, dir, k1); err == nil {
		t.Fatal("a journal signed by another key opened without a handover")
	}
	j, err = openWith(t, dir, k1, k0)
	if err != nil {
		t.Fatalf("open with the previous key: %v", err)
	}
	appendEvents(t, j, 2)
	j.Close()
	for _, k := range []testSigningKey{k0, k1} {
		if res := verifyWith(t, dir, k.v); !res.OK() {
			t.Fatalf("verify: %v", res.Bad)
		}
	}
	// A forged handover (by a key not in force) is refused.
	dir2 := t.TempDir()
	j, _ = openWith(t, dir2, k0)
	appendEvents(t, j, 2)
	j.mu.Lock()
	j.opts.Signer, j.opts.Key = k1.s, k1.key // the forger signs with its own key
	j.handoverLocked(seededKey(t, 4).s, seededKey(t, 4).key)
	j.writeLocked(j.next)
	j.mu.Unlock()
	j.Close()
	if res := verifyWith(t, dir2, k0.v); res.OK() {
		t.Fatal("a handover signed by a key not in force verified")
	}
}
