package enroll

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

func testToken(t *testing.T) (*Token, string) {
	t.Helper()
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	tok := &Token{Site: "bank-b", Key: id.Public(), Endpoints: []string{"b.example.net:7443", "[2001:db8::1]:7443"},
		Services: []string{"payments", "fx"}, Expires: time.Unix(1_900_000_000, 0)}
	for i := range tok.Secret {
		tok.Secret[i] = byte(i * 7)
	}
	s, err := tok.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return tok, s
}

// TestTokenRoundTrip: a token reads back equal, also upper-cased or broken
// over lines by a mail client; it is one copy-paste-safe word.
func TestTokenRoundTrip(t *testing.T) {
	tok, s := testToken(t)
	if !strings.HasPrefix(s, TokenPrefix) || strings.ContainsAny(s, " \n=+/:-") {
		t.Fatalf("token %q is not one plain word", s)
	}
	for _, in := range []string{s, strings.ToUpper(s), s[:40] + "\n  " + s[40:] + "\n"} {
		got, err := ParseToken(in)
		if err != nil {
			t.Fatal(err)
		}
		if got.Site != tok.Site || !got.Key.Equal(tok.Key) || got.Secret != tok.Secret || !got.Expires.Equal(tok.Expires) ||
			strings.Join(got.Endpoints, ",") != strings.Join(tok.Endpoints, ",") || strings.Join(got.Services, ",") != strings.Join(tok.Services, ",") {
			t.Fatalf("read back %+v, want %+v", got, tok)
		}
	}
}

// TestTokenMistypeCaught: every one-character change, every cut and every
// swap of neighbours is refused with ErrChecksum.
func TestTokenMistypeCaught(t *testing.T) {
	_, s := testToken(t)
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	for i := len(TokenPrefix); i < len(s); i++ {
		b := []byte(s)
		b[i] = alphabet[(strings.IndexByte(alphabet, b[i])+1+i%31)%32]
		if _, err := ParseToken(string(b)); !errors.Is(err, ErrChecksum) {
			t.Fatalf("character %d changed: %v", i, err)
		}
		if i+1 < len(s) && s[i] != s[i+1] {
			b = []byte(s)
			b[i], b[i+1] = b[i+1], b[i]
			if _, err := ParseToken(string(b)); !errors.Is(err, ErrChecksum) {
				t.Fatalf("characters %d and %d swapped: %v", i, i+1, err)
			}
		}
	}
	for _, cut := range []int{1, 5, 8, len(s) / 2} {
		if _, err := ParseToken(s[:len(s)-cut]); err == nil {
			t.Fatalf("cut by %d accepted", cut)
		}
	}
	if _, err := ParseToken("dyad1:" + s[8:]); !errors.Is(err, ErrTokenFormat) {
		t.Fatalf("a public key given as a token: %v", err)
	}
}

func TestMessagesRoundTrip(t *testing.T) {
	tok, _ := testToken(t)
	j := &Join{Secret: tok.Secret, Key: tok.Key, Site: "bank-a"}
	b, err := j.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxMessage {
		t.Fatalf("join is %d bytes, MaxMessage %d", len(b), MaxMessage)
	}
	got, err := ParseJoin(b)
	if err != nil || *got != *j {
		t.Fatalf("join read back %+v %v", got, err)
	}
	for cut := range b {
		if _, err := ParseJoin(b[:cut]); err == nil {
			t.Fatalf("join cut to %d bytes accepted", cut)
		}
	}
	s, err := ParseReply(AppendReply(nil, StatusUsed))
	if err != nil || s != StatusUsed {
		t.Fatalf("reply: %v %v", s, err)
	}
}

// TestPhrase: both sides compute the same phrase; another key or secret
// gives another.
func TestPhrase(t *testing.T) {
	tok, _ := testToken(t)
	a, _ := identity.Generate()
	p := Phrase(tok.Key, a.Public(), tok.Secret)
	if len(strings.Fields(p)) != PhraseWords || p != Phrase(tok.Key, a.Public(), tok.Secret) {
		t.Fatalf("phrase %q", p)
	}
	other := tok.Secret
	other[0] ^= 1
	if Phrase(tok.Key, a.Public(), other) == p || Phrase(a.Public(), tok.Key, tok.Secret) == p {
		t.Fatal("phrase does not depend on the secret and the keys' roles")
	}
	seen := map[string]bool{}
	for _, w := range words {
		if seen[w] || w == "" {
			t.Fatalf("word %q twice", w)
		}
		seen[w] = true
	}
}
