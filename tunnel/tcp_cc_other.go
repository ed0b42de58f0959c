//go:build !linux

package tunnel

import "syscall"

// ccRestartFunc: only Linux's congestion control is restarted (ccRestarter).
func ccRestartFunc(syscall.RawConn) func() bool { return nil }
