package fuzz

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/enroll"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

func seedToken(f *testing.F) (*enroll.Token, string) {
	id, _ := identity.Generate()
	tok := &enroll.Token{Site: "bank-b", Key: id.Public(), Endpoints: []string{"b.example.net:7443"},
		Services: []string{"payments"}, Expires: time.Unix(1_900_000_000, 0)}
	s, err := tok.Encode()
	if err != nil {
		f.Fatal(err)
	}
	return tok, s
}

// FuzzInviteToken: any text given to dyad join parses to an error or a
// token whose one spelling (lower case, no white space) is the input's,
// and which re-encodes to it (THREATS P8).
func FuzzInviteToken(f *testing.F) {
	_, s := seedToken(f)
	f.Add(s)
	f.Add(strings.ToUpper(s))
	f.Add(s[:len(s)-3])
	f.Add(enroll.TokenPrefix)
	f.Add("dyad1:AAAA")
	f.Fuzz(func(t *testing.T, in string) {
		tok, err := enroll.ParseToken(in)
		if err != nil {
			return
		}
		out, err := tok.Encode()
		if err != nil {
			t.Fatalf("parsed token does not encode: %v", err)
		}
		if want := strings.ToLower(strings.Join(strings.Fields(in), "")); out != want {
			t.Fatalf("token %q re-encodes to %q", want, out)
		}
	})
}

// FuzzEnrollMessages: any datagram on an enrollment connection parses to
// an error or a message that re-encodes to the same bytes (THREATS P8).
func FuzzEnrollMessages(f *testing.F) {
	tok, _ := seedToken(f)
	j, _ := (&enroll.Join{Secret: tok.Secret, Key: tok.Key, Site: "bank-a"}).Append(nil)
	f.Add(j)
	f.Add(enroll.AppendReply(nil, enroll.StatusOK))
	f.Add([]byte{1, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if j, err := enroll.ParseJoin(b); err == nil {
			out, err := j.Append(nil)
			if err != nil || !bytes.Equal(out, b) {
				t.Fatalf("join %x re-encodes to %x (%v)", b, out, err)
			}
		}
		if s, err := enroll.ParseReply(b); err == nil && !bytes.Equal(enroll.AppendReply(nil, s), b) {
			t.Fatalf("reply %x re-encodes differently", b)
		}
	})
}
