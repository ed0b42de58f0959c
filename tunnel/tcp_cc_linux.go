package tunnel

import (
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ccRestartable is the congestion control restarted (ccRestarter), and
// ccInterim the one switched to and back from.
const (
	ccRestartable = "bbr"
	ccInterim     = "reno"
)

// ccAllowed reports whether this process may set both, once per process:
// without CAP_NET_ADMIN only tcp_allowed_congestion_control may be set.
var ccAllowed = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
	if err != nil {
		return false
	}
	allowed := strings.Fields(string(b))
	return slices.Contains(allowed, ccRestartable) && slices.Contains(allowed, ccInterim)
})

// ccRestartFunc returns the restart of rc's congestion control
// (ccRestarter), or nil when this process may not do it.
func ccRestartFunc(rc syscall.RawConn) func() bool {
	if !ccAllowed() {
		return nil
	}
	return func() bool {
		done := false
		rc.Control(func(fd uintptr) { done = restartCC(int(fd)) })
		return done
	}
}

// restartCC restarts the socket's congestion control if it is BBR: the
// kernel initialises an algorithm when a socket switches to it (BBR:
// startup, its bandwidth estimate cleared), not when it is set again.
func restartCC(fd int) bool {
	name, err := unix.GetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	if err != nil || name != ccRestartable {
		return false
	}
	if unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, ccInterim) != nil {
		return false
	}
	// Allowed, so this does not fail but on a socket the kernel has torn
	// down, which no longer sends.
	return unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, ccRestartable) == nil
}
