//go:build !unix

package journal

import (
	"errors"
	"os"
)

// LockFile is the lock file in a journal folder; not used where flock is
// missing.
const LockFile = "dyad-audit.lock"

// ErrLocked reports a journal folder another process writes.
var ErrLocked = errors.New("journal is in use by another writer")

// lockDir takes no lock on systems without flock: one writer per journal
// is then the operator's duty.
func lockDir(dir, holder string) (*os.File, error) { return nil, nil }

func unlockDir(f *os.File) {}
