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

// Files of an identity rotation (dyad rotate), in IdentityDir and the
// state directory.
const (
	// RotationFile holds the rotated identity, and during the overlap the
	// previous one: private keys, so it is written 0600 and refused when
	// readable by others, like a key file.
	RotationFile = "rotation.json"
	// LearnedFile holds the keys peers announced when they rotated.
	LearnedFile = "learned.json"
)

// Rotation is this site's identity as rotations made it.
type Rotation struct {
	// Current is the identity in use (identity key file PEM): it replaces
	// the configuration's identity file.
	Current string `json:"current_key"`
	// Previous, Announcement and Until exist during the overlap: the
	// identity rotated away from, the signed announcement (base64 of its
	// body) and the overlap's end. They are removed once it ends.
	Previous     string    `json:"previous_key,omitempty"`
	Announcement string    `json:"announcement,omitempty"`
	Until        time.Time `json:"overlap_until,omitzero"`
	// Rotated is when Current was made.
	Rotated time.Time `json:"rotated"`
	// History lists every rotation, oldest first.
	History []RotationRecord `json:"history"`
}

// RotationRecord is one rotation.
type RotationRecord struct {
	At   time.Time `json:"at"`
	From string    `json:"from"` // fingerprints
	To   string    `json:"to"`
	By   uint32    `json:"by_uid"`
}

// LearnedKey is a peer's rotation this daemon took: the peer's key is
// Announcement's new key wherever the configuration pins Base (the key
// the peer had when it was configured or enrolled).
type LearnedKey struct {
	Peer         string    `json:"peer"`
	Base         string    `json:"base_key"`
	Announcement string    `json:"announcement"` // base64 of the body
	At           time.Time `json:"at"`
}

// RotationPath returns the rotation file's path in dir.
func RotationPath(dir string) string { return filepath.Join(dir, IdentityDir, RotationFile) }

// LoadRotation reads dir's rotation file; nil when there is none. A file
// readable by group or others is refused (THREATS P6).
func LoadRotation(dir string) (*Rotation, error) {
	path := RotationPath(dir)
	fi, err := os.Stat(path)
	if absent(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	if mode := fi.Mode().Perm(); mode&0o077 != 0 {
		return nil, fmt.Errorf("state %s has mode %04o, readable beyond its owner: it holds private keys; run: chmod 600 %s", path, mode, path)
	}
	var r Rotation
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	defer clear(data)
	if err := json.Unmarshal(data, &r); err != nil {
		// The error of encoding/json quotes no value of a string field.
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	return &r, nil
}

// SaveRotation writes dir's rotation file (0600, atomically).
func SaveRotation(dir string, r *Rotation) error {
	if err := os.MkdirAll(filepath.Join(dir, IdentityDir), 0o700); err != nil {
		return fmt.Errorf("state %s: %w", dir, err)
	}
	return WriteJSON(RotationPath(dir), r)
}

// LoadLearned reads dir's learned peer keys.
func LoadLearned(dir string) ([]LearnedKey, error) {
	var out []LearnedKey
	if _, err := os.Stat(filepath.Join(dir, LearnedFile)); absent(err) {
		return nil, nil
	}
	return out, readJSON(filepath.Join(dir, LearnedFile), &out)
}

// absent reports whether a stat error means the file is not there: missing,
// or a file where the state folder should be (a default state folder that
// cannot be made does not stop the start; TestControlSocketDefaultUnwritable).
func absent(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// SaveLearned writes dir's learned peer keys.
func SaveLearned(dir string, ks []LearnedKey) error {
	return WriteJSON(filepath.Join(dir, LearnedFile), ks)
}
