package identity

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// maxKeyFile bounds what Install reads: a key file is under 200 bytes.
const maxKeyFile = 64 << 10

// Install copies the key file at from to a new owner-only (0600) file at
// to, after checking that it parses, and returns the identity. It is for
// keys delivered readable by a group, which Load refuses: a Kubernetes
// Secret volume with fsGroup, a systemd credential. The copy is written
// to a temporary file in to's folder and renamed, so to holds the whole
// key or nothing; an existing to is replaced, so a restarted installer
// succeeds. Errors name the files, never their contents.
func Install(from, to string) (*Identity, error) {
	data, err := readKeyFile(from)
	if err != nil {
		return nil, err
	}
	defer clear(data)
	id, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, from)
	}
	if fi, err := os.Stat(to); err == nil {
		if src, serr := os.Stat(from); serr == nil && os.SameFile(fi, src) {
			return nil, fmt.Errorf("identity: %s and %s are the same file", from, to)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(to), ".identity-*.tmp") // mode 0600
	if err != nil {
		return nil, fmt.Errorf("identity: install %s: %w", to, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, nothing is left to remove
	key := id.marshal()
	defer clear(key)
	_, err = tmp.Write(key)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), to)
	}
	if err != nil {
		return nil, fmt.Errorf("identity: install %s: %w", to, err)
	}
	return id, nil
}

// readKeyFile reads a key file of plausible size.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err == nil && len(data) > maxKeyFile {
		err = errors.New("larger than any key file")
	}
	if err != nil {
		clear(data)
		return nil, fmt.Errorf("identity: read %s: %w", path, err)
	}
	return data, nil
}
