//go:build unix

package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockFile is the lock file in a journal folder: held (flock, exclusive)
// by the one process that writes the journal, and holding its pid and
// description. The kernel releases it when that process ends, however it
// ends.
const LockFile = "dyad-audit.lock"

// ErrLocked reports a journal folder another process writes.
var ErrLocked = errors.New("journal is in use by another writer")

// lockDir takes the journal folder's lock or says who holds it. One
// journal, one writer: THREATS P7, tested by TestSecondWriterRefused and
// TestTwoDaemonsOneJournal.
func lockDir(dir, holder string) (*os.File, error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		data := make([]byte, 512)
		n, _ := f.ReadAt(data, 0)
		f.Close()
		who := strings.TrimSpace(string(data[:n]))
		if who == "" {
			who = "an unknown process"
		}
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("journal %s: %w: %s", dir, ErrLocked, who)
		}
		return nil, fmt.Errorf("journal: lock %s: %w", path, err)
	}
	desc := "pid " + strconv.Itoa(os.Getpid())
	if holder != "" {
		desc += " (" + holder + ")"
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(desc+"\n"), 0)
	}
	return f, nil
}

// unlockDir releases the lock (closing the file releases the flock).
func unlockDir(f *os.File) {
	if f != nil {
		f.Truncate(0)
		f.Close()
	}
}
