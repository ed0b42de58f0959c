package journal

import (
	"os"
	"sync/atomic"
)

// FullDisk returns an Options.OpenFile for tests: while failing is set, a
// journal file it opens is /dev/full, where every write fails with ENOSPC
// as on a full disk. A journal meets it at its next rotation.
func FullDisk(failing *atomic.Bool) func(string, int, os.FileMode) (*os.File, error) {
	return func(name string, flag int, perm os.FileMode) (*os.File, error) {
		if failing.Load() {
			return os.OpenFile("/dev/full", os.O_WRONLY, 0)
		}
		return os.OpenFile(name, flag, perm)
	}
}
