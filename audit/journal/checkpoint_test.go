package journal

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestCheckpointNonCanonicalSignatureRefused: a signature whose base64
// differs only in its padding bits decodes to the same bytes; it must not
// open, or the journal's last checkpoint line could be changed unseen.
func TestCheckpointNonCanonicalSignatureRefused(t *testing.T) {
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	s, err := NewSigner("dyad/test", key)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier("dyad/test", key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	signed, err := signCheckpoint(s, "dyad/test", 3, [32]byte{1}, time.Unix(1800000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenCheckpoint(signed, v); err != nil {
		t.Fatalf("canonical checkpoint: %v", err)
	}
	// The signature is 68 bytes: its last base64 character before "=" has
	// two padding bits; flip the lower one.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	at := strings.LastIndex(signed, "=") - 1
	edited := signed[:at] + string(alphabet[strings.IndexByte(alphabet, signed[at])^1]) + signed[at+1:]
	if _, err := OpenCheckpoint(edited, v); !errors.Is(err, ErrMalformed) {
		t.Fatalf("checkpoint with non-zero padding bits: %v, want ErrMalformed", err)
	}
}
