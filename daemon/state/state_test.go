package state

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestWriteAtomicOwnerOnly: state files are 0600, leave no temporary file
// behind, and read back equal; a missing directory reads as empty.
func TestWriteAtomicOwnerOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Load(dir)
	if err != nil || len(s.Peers)+len(s.Invites)+len(s.Revoked) != 0 {
		t.Fatalf("missing dir: %+v %v", s, err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	s.Peers = []Peer{{Name: "bank-a", PublicKey: "dyad1:x", Services: []string{"payments"}, Enrolled: now, Role: "invite"}}
	s.Invites = []Invite{{SecretHash: "ab", Peer: "bank-c", Created: now, Expires: now.Add(time.Hour)}, {SecretHash: "cd", Expires: now.Add(-time.Second)}}
	if err := s.SavePeers(); err != nil {
		t.Fatal(err)
	}
	if !s.Prune(now) || len(s.Invites) != 1 {
		t.Fatalf("prune kept %+v", s.Invites)
	}
	if err := s.SaveInvites(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 || e.Name()[0] == '.' {
			t.Errorf("%s: mode %v", e.Name(), fi.Mode().Perm())
		}
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v", fi.Mode().Perm())
	}
	back, err := Load(dir)
	if err != nil || len(back.Peers) != 1 || back.Peers[0].Services[0] != "payments" || len(back.Invites) != 1 || !back.Invites[0].Expires.Equal(now.Add(time.Hour)) {
		t.Fatalf("read back %+v %v", back, err)
	}
	os.WriteFile(filepath.Join(dir, PeersFile), []byte("{"), 0o600)
	if _, err := Load(dir); err == nil {
		t.Fatal("broken peers.json loaded")
	}
}
