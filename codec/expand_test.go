package codec

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"math/rand/v2"
	"testing"
)

// TestExpandMatchesHKDF: expand is crypto/hkdf's Expand with SHA-256 for
// every output length up to one block and info lengths up to the largest
// it accepts, with random secrets.
func TestExpandMatchesHKDF(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for infoLen := 0; infoLen <= maxExpandInfo; infoLen++ {
		for _, n := range []int{1, nonceSize, keySize - 1, keySize} {
			var secret [keySize]byte
			for i := range secret {
				secret[i] = byte(rng.Uint32())
			}
			info := make([]byte, infoLen)
			for i := range info {
				info[i] = byte(rng.Uint32())
			}
			want, err := hkdf.Expand(sha256.New, secret[:], string(info), n)
			if err != nil {
				t.Fatal(err)
			}
			out := make([]byte, n)
			expand(&secret, info, out)
			if !bytes.Equal(out, want) {
				t.Fatalf("info %d bytes, %d out: %x, want %x", infoLen, n, out, want)
			}
		}
	}
}

// TestStreamDerivationAllocatesNothing: deriving a stream's traffic secret
// and its key and IV allocates nothing (every new stream derives four of
// each; crypto/hkdf allocated ~20 objects per direction, 20% of a churn
// run's allocations). Only the AEAD itself is allocated.
func TestStreamDerivationAllocatesNothing(t *testing.T) {
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	pre := preamble(SuiteAES256GCM)
	var key [keySize]byte
	var iv [nonceSize]byte
	n := testing.AllocsPerRun(100, func() {
		secret, err := s.trafficSecret(pre, 4, FromInitiator)
		if err != nil {
			t.Fatal(err)
		}
		deriveKeyIV(&secret, &key, &iv)
	})
	if n != 0 {
		t.Fatalf("%v allocations per stream direction", n)
	}
}
