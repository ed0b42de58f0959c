// Package state is what a dyad daemon writes and keeps across restarts in
// its state directory (configuration key state_dir), beside the operator's
// YAML file, which the daemon never writes:
//
//	peers.json     peers enrolled with dyad join / dyad invite
//	invites.json   pending and used invitations: a hash of each secret, never the secret
//	revoked.json   keys revoked with dyad revoke that the YAML file still lists
//	identity/      reserved for rotated identities (dyad rotate)
//	control.sock   the control socket, unless control.socket says otherwise
//
// Every file is JSON, written 0600 and atomically (a temporary file in the
// same folder, fsync, rename, fsync of the folder), so a crash leaves the
// old or the new file, never a mix. A missing file is an empty list.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// File names in the state directory.
const (
	PeersFile   = "peers.json"
	InvitesFile = "invites.json"
	RevokedFile = "revoked.json"
	// IdentityDir is reserved for rotated identities.
	IdentityDir = "identity"
)

// Peer is an enrolled peer.
type Peer struct {
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
	// Endpoint is where this daemon dials it; empty when the peer dials.
	Endpoint string `json:"endpoint,omitempty"`
	// Services are this site's services the peer may use (the
	// invitation's); they add the peer to those services' allow lists.
	Services []string `json:"services,omitempty"`
	// Forwards are local ports carried to the peer's services (dyad join
	// --forward).
	Forwards []Forward `json:"forwards,omitempty"`
	// Enrolled says when and how: "invite" (we invited it) or "join".
	Enrolled time.Time `json:"enrolled"`
	Role     string    `json:"role"`
	// By is the uid that ran the command.
	By uint32 `json:"by_uid"`
	// Phrase is the enrollment's verification phrase (not a secret: a
	// hash of both keys and the used secret), for dyad invite --wait.
	Phrase string `json:"phrase,omitempty"`
}

// Forward is a local port carried to a service of an enrolled peer.
type Forward struct {
	Listen  string `json:"listen"`
	Service string `json:"service"`
}

// Invite is an invitation this daemon issued.
type Invite struct {
	// SecretHash is enroll.SecretHash of the one-time secret.
	SecretHash string    `json:"secret_sha256"`
	Peer       string    `json:"peer"` // the name the joiner gets here
	Services   []string  `json:"services,omitempty"`
	Created    time.Time `json:"created"`
	Expires    time.Time `json:"expires"`
	By         uint32    `json:"by_uid"`
	// Used is when a joiner used it (zero: pending). A used invitation is
	// kept until it expires, so a replay is told "used".
	Used time.Time `json:"used,omitzero"`
}

// Revocation is a key revoked while the YAML file still lists it: the
// key is not pinned however the YAML names it, until the operator removes
// it there.
type Revocation struct {
	Name        string    `json:"name"`
	Fingerprint string    `json:"fingerprint"`
	PublicKey   string    `json:"public_key"`
	At          time.Time `json:"at"`
	By          uint32    `json:"by_uid"`
}

// State is the content of a state directory.
type State struct {
	Dir     string
	Peers   []Peer
	Invites []Invite
	Revoked []Revocation
}

// Load reads the state directory dir; a missing directory or file is
// empty.
func Load(dir string) (*State, error) {
	s := &State{Dir: dir}
	for _, f := range []struct {
		name string
		v    any
	}{{PeersFile, &s.Peers}, {InvitesFile, &s.Invites}, {RevokedFile, &s.Revoked}} {
		if err := readJSON(filepath.Join(dir, f.name), f.v); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	// No directory (or a file where it would be) holds no state.
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state %s: %w", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("state %s: %w", path, err)
	}
	return nil
}

// Path returns the file name in the state directory.
func (s *State) Path(name string) string { return filepath.Join(s.Dir, name) }

// SavePeers writes peers.json.
func (s *State) SavePeers() error { return WriteJSON(s.Path(PeersFile), s.Peers) }

// SaveInvites writes invites.json.
func (s *State) SaveInvites() error { return WriteJSON(s.Path(InvitesFile), s.Invites) }

// SaveRevoked writes revoked.json.
func (s *State) SaveRevoked() error { return WriteJSON(s.Path(RevokedFile), s.Revoked) }

// Peer returns the enrolled peer named name.
func (s *State) Peer(name string) (int, bool) {
	for i, p := range s.Peers {
		if p.Name == name {
			return i, true
		}
	}
	return -1, false
}

// Prune drops invitations that expired before now.
func (s *State) Prune(now time.Time) bool {
	n := len(s.Invites)
	kept := s.Invites[:0]
	for _, in := range s.Invites {
		if now.Before(in.Expires) {
			kept = append(kept, in)
		}
	}
	s.Invites = kept
	return len(kept) != n
}

// WriteJSON writes v as JSON to path, 0600, atomically: a temporary file
// in the same folder, fsync, rename over path, fsync of the folder. The
// folder is created 0700 if missing.
func WriteJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("state %s: %w", path, err)
	}
	data = append(data, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("state %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// CreateTemp makes the file 0600; say so in case that ever changes.
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("state %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("state %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("state %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("state %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("state %s: %w", path, err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
