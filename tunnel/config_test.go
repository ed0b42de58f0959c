package tunnel

import (
	"strings"
	"testing"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// TestValidateKeyHalves: two peers may not share either half of a key
// (connections are attributed by the Ed25519 half, pairing secrets come
// from the X25519 half), nor may a peer hold this site's own key.
func TestValidateKeyHalves(t *testing.T) {
	k1, k2 := newIdentity(t).Public(), newIdentity(t).Public()
	sameSign := identity.PublicKey{Sign: k1.Sign, DH: k2.DH}
	sameDH := identity.PublicKey{Sign: k2.Sign, DH: k1.DH}
	for name, tc := range map[string]struct {
		peers []Peer
		want  string
	}{
		"ed25519": {[]Peer{{Name: "a", Key: k1}, {Name: "b", Key: sameSign}}, `peer "b": same Ed25519 key as peer "a"`},
		"x25519":  {[]Peer{{Name: "a", Key: k1}, {Name: "b", Key: sameDH}}, `peer "b": same X25519 key as peer "a"`},
		"whole":   {[]Peer{{Name: "a", Key: k1}, {Name: "b", Key: k1}}, `peer "b": same Ed25519 key as peer "a"`},
	} {
		err := Config{Peers: tc.peers}.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
	if err := (Config{Peers: []Peer{{Name: "a", Key: k1}, {Name: "b", Key: k2}}}).Validate(); err != nil {
		t.Fatalf("distinct keys refused: %v", err)
	}
	own := Config{Peers: []Peer{{Name: "a", Key: k2}, {Name: "me", Key: identity.PublicKey{Sign: k1.Sign}}}}
	if err := own.ValidateSelf(k1); err == nil || !strings.Contains(err.Error(), `peer "me": this site's own key`) {
		t.Errorf("own key: err = %v", err)
	}
	if err := own.ValidateSelf(newIdentity(t).Public()); err != nil {
		t.Errorf("another site's key refused: %v", err)
	}
}
