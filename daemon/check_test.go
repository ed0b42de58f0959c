package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// TestCheckMessages: each mistake an operator makes in a first
// configuration gets a message naming its line and what to do, and a good
// file prints this site's and every peer's fingerprint.
func TestCheckMessages(t *testing.T) {
	peer, _ := identity.Generate()
	peerKey := peer.Public().String()
	// A one-character mistype inside the key's body.
	c := peerKey[20]
	typo := byte('A')
	if c == 'A' {
		typo = 'B'
	}
	mistyped := peerKey[:20] + string(typo) + peerKey[21:]

	cases := []struct {
		name     string
		from, to string
		noKey    bool     // remove the identity file
		ownKey   bool     // pin this site's own key
		wantErr  string   // "" means check passes
		wantOut  []string // lines check prints
		noSecret bool
	}{
		{name: "good", wantOut: []string{"ok: site site-a", "this site  SHA256:", "peer site-b", peer.Public().Fingerprint(), "we dial 127.0.0.1:7100"}},
		{name: "unknown key snake", from: "    public_key:", to: "    publickey:", wantErr: `dyad.yaml:11: peers[0].publickey: unknown key "publickey"; did you mean public_key?`},
		{name: "unknown key camel", from: "    public_key:", to: "    publicKey:", wantErr: `dyad.yaml:11: peers[0].publicKey: unknown key "publicKey"; did you mean public_key?`},
		{name: "unknown key typo", from: "    endpoint:", to: "    endpont:", wantErr: `dyad.yaml:12: peers[0].endpont: unknown key "endpont"; did you mean endpoint?`},
		{name: "unknown tunnel key", from: "  keepalive: 5s", to: "  keepalve: 5s", wantErr: `dyad.yaml:7: tunnel.keepalve: unknown key "keepalve"; did you mean keepalive?`},
		{name: "unknown key far", from: "  keepalive: 5s", to: "  zzzzzz: 5s", wantErr: `dyad.yaml:7: tunnel.zzzzzz: unknown key "zzzzzz"; known keys here: suite, keepalive`},
		{name: "tab", from: "    endpoint:", to: "\tendpoint:", wantErr: "dyad.yaml:12: a tab indents this line: YAML indents with spaces only"},
		{name: "public key empty", from: "    public_key: KEY", to: "    public_key:", wantErr: "dyad.yaml:11: peers[0].public_key: required"},
		{name: "public key missing", from: "    public_key: KEY\n", to: "", wantErr: "dyad.yaml:10: peers[0].public_key: required"},
		{name: "upstream empty", from: "    upstream: 127.0.0.1:8080", to: "    upstream:", wantErr: "dyad.yaml:15: services[0].upstream: required"},
		{name: "forward service missing", from: "    service: payments\n", to: "", wantErr: "dyad.yaml:18: forwards[0].service: required"},
		{name: "duplicate key", from: "    endpoint: 127.0.0.1:7100", to: "    endpoint: 127.0.0.1:7100\n    endpoint: 127.0.0.1:7101",
			wantErr: `dyad.yaml:13: key "endpoint" is set twice in this mapping (first at line 12)`},
		{name: "duplicate section", from: "peers:", to: "tunnel:\n  suite: aes-256-gcm\npeers:",
			wantErr: `dyad.yaml:9: key "tunnel" is set twice in this mapping (first at line 6)`},
		{name: "mistyped key", from: "KEY", to: mistyped, wantErr: "dyad.yaml:11: peers[0].public_key: public key checksum does not match", noSecret: true},
		{name: "own key", ownKey: true, wantErr: `dyad.yaml:11: peers[0].public_key: peer "site-b" has this site's own key (SHA256:`},
		{name: "no identity file", noKey: true, wantErr: "does not exist: make it with `dyad keygen --out "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var kout strings.Builder
			if err := Keygen(filepath.Join(dir, "keys"), &kout); err != nil {
				t.Fatal(err)
			}
			own, err := os.ReadFile(filepath.Join(dir, "keys", "identity.pub"))
			if err != nil {
				t.Fatal(err)
			}
			text := goodConfig
			if tc.from != "" {
				text = strings.Replace(text, tc.from, tc.to, 1)
				if text == goodConfig {
					t.Fatal("replacement did not apply")
				}
			}
			key := peerKey
			if tc.ownKey {
				key = strings.TrimSpace(string(own))
			}
			text = strings.Replace(text, "KEY", key, 1)
			if tc.noKey {
				os.Remove(filepath.Join(dir, "keys", "identity.key"))
			}
			path := filepath.Join(dir, "dyad.yaml")
			os.WriteFile(path, []byte(text), 0o644)
			var out strings.Builder
			err = Check(path, &out)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("check: %v", err)
				}
				for _, w := range tc.wantOut {
					if !strings.Contains(out.String(), w) {
						t.Errorf("output lacks %q:\n%s", w, out.String())
					}
				}
				return
			}
			if err == nil {
				t.Fatalf("check accepted it:\n%s", out.String())
			}
			got := strings.Replace(err.Error(), path, "dyad.yaml", 1)
			if !strings.Contains(got, tc.wantErr) {
				t.Errorf("error:\n  %s\nwant it to contain\n  %s", got, tc.wantErr)
			}
			if tc.noKey && !strings.Contains(got, filepath.Join(dir, "keys")) {
				t.Errorf("keygen hint lacks the folder: %s", got)
			}
			if tc.noSecret && strings.Contains(got, mistyped[6:]) {
				t.Errorf("error repeats the key: %s", got)
			}
		})
	}
}

// TestCheckLegacyKeyForm: a dyad1: key (no checksum) still passes, with a
// note giving the same key's dyad2: form.
func TestCheckLegacyKeyForm(t *testing.T) {
	dir := t.TempDir()
	if err := Keygen(filepath.Join(dir, "keys"), &strings.Builder{}); err != nil {
		t.Fatal(err)
	}
	peer, _ := identity.Generate()
	path := filepath.Join(dir, "dyad.yaml")
	os.WriteFile(path, []byte(strings.Replace(goodConfig, "KEY", peer.Public().LegacyString(), 1)), 0o644)
	var out strings.Builder
	if err := Check(path, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "older dyad1: form") || !strings.Contains(out.String(), peer.Public().String()) {
		t.Fatalf("no note with the dyad2: form:\n%s", out.String())
	}
}
