package identity

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestWriteLoadRoundTrip(t *testing.T) {
	id, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyPath, pubPath, err := id.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(keyPath); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	back, err := Load(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Public().Equal(id.Public()) {
		t.Fatal("loaded identity has another public key")
	}
	pub, _ := os.ReadFile(pubPath)
	parsed, err := ParsePublicKey(string(pub))
	if err != nil || !parsed.Equal(id.Public()) {
		t.Fatalf("public file does not parse back: %v", err)
	}
	if _, _, err := id.WriteFiles(dir); err == nil {
		t.Fatal("WriteFiles overwrote an existing key")
	}
}

// TestLoadRefusesOpenPermissions: a key file readable by group or others is
// refused, and the error names the file and the fix. THREATS P6.
func TestLoadRefusesOpenPermissions(t *testing.T) {
	id, _ := Generate()
	keyPath, _, err := id.WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644} {
		os.Chmod(keyPath, mode)
		_, err := Load(keyPath)
		if err == nil || !strings.Contains(err.Error(), keyPath) || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %04o: err = %v", mode, err)
		}
	}
}

func TestParseErrorsDoNotQuoteKeyMaterial(t *testing.T) {
	id, _ := Generate()
	good := id.marshal()
	cases := map[string][]byte{
		"empty":          nil,
		"not pem":        []byte("hello"),
		"wrong type":     bytes.Replace(good, []byte(pemType), []byte("PRIVATE KEY"), 2),
		"trailing data":  append(bytes.Clone(good), "junk"...),
		"truncated body": append(good[:40:40], "\n-----END "+pemType+"-----\n"...),
	}
	for name, data := range cases {
		_, err := Parse(data)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if strings.Contains(err.Error(), string(good[40:60])) {
			t.Errorf("%s: error quotes the key file: %v", name, err)
		}
	}
}

func TestParsePublicKey(t *testing.T) {
	id, _ := Generate()
	s := id.Public().String()
	if !strings.HasPrefix(s, PublicKeyPrefix) {
		t.Fatalf("%q lacks the prefix", s)
	}
	for _, bad := range []string{"", "dyad3:" + s[6:], "dyad1:" + s[6:], s[:len(s)-2], s + "AA", "dyad1:!!!", "dyad2:!!!"} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted", bad)
		}
	}
	if got, err := ParsePublicKey("  " + s + "\n"); err != nil || !got.Equal(id.Public()) {
		t.Errorf("surrounding space not accepted: %v", err)
	}
}

// TestPairingSecret: both ends of a pair derive the same secret, and any
// other pair a different one. THREATS P4.
func TestPairingSecret(t *testing.T) {
	a, _ := Generate()
	b, _ := Generate()
	c, _ := Generate()
	ab, err := a.PairingSecret(b.Public())
	if err != nil {
		t.Fatal(err)
	}
	ba, _ := b.PairingSecret(a.Public())
	ac, _ := a.PairingSecret(c.Public())
	cb, _ := c.PairingSecret(b.Public())
	if !bytes.Equal(ab, ba) || len(ab) != 32 {
		t.Fatal("the two ends derive different pairing secrets")
	}
	if bytes.Equal(ab, ac) || bytes.Equal(ab, cb) {
		t.Fatal("different pairs share a pairing secret")
	}
	// A peer that claims a's signing key but has its own X25519 key gets
	// another secret: the pinned DH key is what counts.
	forged := a.Public()
	forged.DH = c.Public().DH
	if s, _ := b.PairingSecret(forged); bytes.Equal(s, ab) {
		t.Fatal("pairing secret does not depend on the pinned X25519 key")
	}
	// A low-order X25519 point yields an all-zero shared secret: refused.
	var zero PublicKey
	zero.Sign = b.Public().Sign
	if _, err := a.PairingSecret(zero); err == nil {
		t.Fatal("pairing with an all-zero X25519 key accepted")
	}
}

func TestCertificateCarriesKey(t *testing.T) {
	id, _ := Generate()
	cert, err := id.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	key, err := CertificateKey(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pub := id.Public()
	if !bytes.Equal(key, pub.Sign[:]) || Fingerprint(key) != id.Public().Fingerprint() {
		t.Fatal("certificate key or fingerprint differs from the identity")
	}
	if a, b := id.DerivedKey("x"), id.DerivedKey("y"); a == b {
		t.Fatal("derived keys do not depend on the label")
	}
}

// TestParsePublicKeyChecksum: the printed form carries a checksum, so every
// one-character mistype or transposition of a key is refused with the
// checksum error (`dyad check` catches it before it becomes a silent dial
// failure); the first release's dyad1: form still parses to the same key,
// and the pairing secret of a pair is what the first release derived.
func TestParsePublicKeyChecksum(t *testing.T) {
	id, _ := Generate()
	s := id.Public().String()
	if !strings.HasPrefix(s, "dyad2:") {
		t.Fatalf("printed key %q is not the checksummed dyad2: form", s)
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := len(PublicKeyPrefix); i < len(s); i++ {
		for _, c := range []byte{alphabet[(strings.IndexByte(alphabet, s[i])+1)%64], alphabet[(strings.IndexByte(alphabet, s[i])+37)%64]} {
			bad := s[:i] + string(c) + s[i+1:]
			if _, err := ParsePublicKey(bad); err == nil {
				t.Fatalf("key with character %d changed to %q accepted", i, c)
			}
		}
		if i+1 < len(s) && s[i] != s[i+1] {
			bad := s[:i] + s[i+1:i+2] + s[i:i+1] + s[i+2:]
			if _, err := ParsePublicKey(bad); err == nil {
				t.Fatalf("key with characters %d and %d swapped accepted", i, i+1)
			}
		}
	}
	// A change inside the body decodes and fails the checksum itself.
	bad := s[:10] + string(alphabet[(strings.IndexByte(alphabet, s[10])+1)%64]) + s[11:]
	if _, err := ParsePublicKey(bad); !errors.Is(err, ErrKeyChecksum) {
		t.Fatalf("mistyped key: err = %v, want ErrKeyChecksum", err)
	}
	legacy := id.Public().LegacyString()
	if k, err := ParsePublicKey(legacy); err != nil || !k.Equal(id.Public()) {
		t.Fatalf("dyad1: form no longer parses to the same key: %v", err)
	}

	// A fixed pair: the secret is the first release's (hex from dyad1 code).
	ra, rb := make([]byte, keyFileSize), make([]byte, keyFileSize)
	ra[0], rb[0] = keyFileVersion, keyFileVersion
	for i := 1; i < keyFileSize; i++ {
		ra[i], rb[i] = byte(i), byte(200-i)
	}
	a, _ := fromRaw(ra)
	b, _ := fromRaw(rb)
	sec, err := a.PairingSecret(b.Public())
	if err != nil || hex.EncodeToString(sec) != "8286996cc20c4219c3a66f6138c33dfdace75339838220d5902dd0e13780f24f" {
		t.Fatalf("pairing secret changed from the first release's: %x %v", sec, err)
	}
}

// TestCreatedTime: a new identity's key file records when it was made (a
// PEM header, not secret), Load reads it back, install-key keeps it, and a
// key file of an earlier release (no header) stays valid with an unknown
// (zero) creation time; a malformed header is refused.
func TestCreatedTime(t *testing.T) {
	before := time.Now().Add(-time.Second)
	id, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	if c := id.Created(); c.Before(before) || c.After(time.Now()) {
		t.Fatalf("created %v", c)
	}
	dir := t.TempDir()
	keyPath, _, err := id.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Load(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Created().Equal(id.Created()) {
		t.Fatalf("loaded created %v, made %v", back.Created(), id.Created())
	}
	installed, err := Install(keyPath, dir+"/installed.key")
	if err != nil || !installed.Created().Equal(id.Created()) {
		t.Fatalf("install-key: %v, created %v", err, installed.Created())
	}
	data, _ := os.ReadFile(keyPath)
	if !bytes.Contains(data, []byte("Created: "+id.Created().Format(time.RFC3339))) {
		t.Fatalf("key file without its Created header:\n%s", data)
	}
	old := regexp.MustCompile(`Created: [^\n]*\n\n`).ReplaceAll(data, nil)
	legacy, err := Parse(old)
	if err != nil {
		t.Fatalf("a key file without Created: %v", err)
	}
	if !legacy.Created().IsZero() || !legacy.Public().Equal(id.Public()) {
		t.Fatalf("legacy key: created %v", legacy.Created())
	}
	bad := bytes.Replace(data, []byte("Created: "+id.Created().Format(time.RFC3339)), []byte("Created: yesterday"), 1)
	if _, err := Parse(bad); err == nil || !strings.Contains(err.Error(), "Created header") {
		t.Fatalf("a malformed Created header: %v", err)
	}
}
