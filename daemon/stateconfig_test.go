package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/daemon/state"
)

func writeYAML(t *testing.T, dir, keyB string) string {
	t.Helper()
	path := filepath.Join(dir, "dyad.yaml")
	yml := strings.ReplaceAll(goodConfig, "KEY", keyB)
	if err := os.WriteFile(path, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestStateMerge: enrolled peers join the configuration in force with
// their services' allow entries and forwards; the YAML stays as written.
func TestStateMerge(t *testing.T) {
	dir := t.TempDir()
	path := writeYAML(t, dir, testKey(t))
	st := &state.State{Dir: filepath.Join(dir, "state"), Peers: []state.Peer{{Name: "site-c", PublicKey: testKey(t),
		Services: []string{"ledger", "gone"}, Forwards: []state.Forward{{Listen: "127.0.0.1:9100", Service: "fx"}}, Enrolled: time.Now(), Role: "invite"}}}
	if err := st.SavePeers(); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Tunnel.Peers) != 2 || c.Tunnel.Peers[1].Name != "site-c" || len(c.Written.Peers) != 1 {
		t.Fatalf("peers in force %v, written %v", c.Tunnel.Peers, c.Written.Peers)
	}
	if allow := c.Tunnel.Services[0].Allow; strings.Join(allow, ",") != "site-b,site-c" {
		t.Fatalf("ledger allows %v", allow)
	}
	if len(c.File.Forwards) != 2 || c.File.Forwards[1].Peer != "site-c" {
		t.Fatalf("forwards %v", c.File.Forwards)
	}
	if len(c.Notes) != 1 || !strings.Contains(c.Notes[0], `"gone"`) {
		t.Fatalf("notes %v", c.Notes)
	}
}

// TestStateConflictNamesBoth: a peer name or key both in the YAML file and
// enrolled in the state is refused, naming the YAML line and the state
// file.
func TestStateConflictNamesBoth(t *testing.T) {
	for _, tc := range []struct {
		name  string
		clash func(keyB string) state.Peer
		field string
	}{
		{"same name", func(string) state.Peer { return state.Peer{Name: "site-b", PublicKey: testKey(t)} }, ":10: peers[0].name"},
		{"same key", func(keyB string) state.Peer { return state.Peer{Name: "site-z", PublicKey: keyB} }, ":11: peers[0].public_key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			keyB := testKey(t)
			path := writeYAML(t, dir, keyB)
			st := &state.State{Dir: filepath.Join(dir, "state"), Peers: []state.Peer{tc.clash(keyB)}}
			if err := st.SavePeers(); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(path)
			if err == nil {
				t.Fatal("conflict accepted")
			}
			msg := err.Error()
			for _, want := range []string{path + tc.field, st.Path(state.PeersFile)} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not name %q", msg, want)
				}
			}
		})
	}
}

// TestRevokedConfigPeerDropped: a YAML peer whose key revoked.json lists is
// not pinned, nor allowed, nor forwarded to, and dyad check says why.
func TestRevokedConfigPeerDropped(t *testing.T) {
	dir := t.TempDir()
	keyB := testKey(t)
	path := writeYAML(t, dir, keyB)
	st := &state.State{Dir: filepath.Join(dir, "state"), Revoked: []state.Revocation{{Name: "site-b", PublicKey: keyB, Fingerprint: "SHA256:x", At: time.Now()}}}
	if err := st.SaveRevoked(); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Tunnel.Peers) != 0 || len(c.Tunnel.Services[0].Allow) != 0 || len(c.File.Forwards) != 0 {
		t.Fatalf("revoked peer still in force: %v %v %v", c.Tunnel.Peers, c.Tunnel.Services, c.File.Forwards)
	}
	if len(c.Notes) != 1 || !strings.Contains(c.Notes[0], "revoked") || !strings.Contains(c.Notes[0], path) {
		t.Fatalf("notes %v", c.Notes)
	}
}

// TestStateSamePeerAdopted: a peer moved from the state into the YAML file
// (same name, same key) is not a conflict: the file's entry is used.
func TestStateSamePeerAdopted(t *testing.T) {
	dir := t.TempDir()
	keyB := testKey(t)
	path := writeYAML(t, dir, keyB)
	st := &state.State{Dir: filepath.Join(dir, "state"), Peers: []state.Peer{{Name: "site-b", PublicKey: keyB, Services: []string{"ledger"}}}}
	if err := st.SavePeers(); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Tunnel.Peers) != 1 || c.Tunnel.Peers[0].Endpoint != "127.0.0.1:7100" || len(c.Notes) != 1 {
		t.Fatalf("peers %v, notes %v", c.Tunnel.Peers, c.Notes)
	}
}

// TestAdvertised: dyad invite offers the listen address as the endpoint
// only when a partner can dial it.
func TestAdvertised(t *testing.T) {
	for in, ok := range map[string]bool{"127.0.0.1:7443": true, "b.example.net:7443": true, "0.0.0.0:7443": false, ":7443": false, "[::]:7443": false} {
		ep, err := advertised(in)
		if (err == nil) != ok || ok && ep != in {
			t.Errorf("advertised(%q) = %q, %v", in, ep, err)
		}
		if err != nil && !strings.Contains(err.Error(), "--endpoint") {
			t.Errorf("advertised(%q): %v does not say --endpoint", in, err)
		}
	}
}
