package tunnel

import (
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// ccRestartQuiet is how long a TCP connection sends no stream data before
// its next data restarts the kernel's congestion control (ccRestarter).
// A second is 25 round trips at 40 ms and above Linux's minimum RTO, its
// own threshold for restarting a window after idle.
const ccRestartQuiet = time.Second

// envNoCCRestart turns the restart off when it parses as true ("1",
// "true"), as DYAD_DISABLE_GRO does for receive offload: the A/B switch.
const envNoCCRestart = "DYAD_DISABLE_BBR_RESTART"

// ccRestarter restarts the congestion control of a TCP connection's socket
// when the connection sends stream data again after ccRestartQuiet without:
// the connection then probes the path as a new one does, as stunnel's
// connection per client does every time.
//
// Why: one long-lived TCP connection carries every stream to a peer, and
// BBR (the kernel's, when the host chose it) leaves its startup for good
// once it has filled the path. Light traffic with losses (a few small
// requests on a 1% loss link) then feeds it samples of a few Mbit/s that
// are not marked application-limited (the window was cut by the loss), and
// its bandwidth estimate falls to them; a bulk transfer that starts later
// grows that estimate by a quarter per eight round trips instead of
// doubling it per round trip. Seen on the bench's 40 ms, 1% loss link
// (issue 21): a download that followed the rr-64 cell started at an
// estimate of 7.9 Mbit/s and needed three seconds to reach 100, where
// the repetitions whose estimate survived moved 140-160 Mbit/s.
// TestTCPCongestionRestartAfterQuiet.
//
// Only BBR is restarted: Linux already restarts a loss-based window
// after idle (tcp_slow_start_after_idle), and BBR keeps its estimate
// across idle by design. The restart switches the socket to reno and
// back, as setting the algorithm it already has does nothing; it is
// done only when both are allowed to this process
// (tcp_allowed_congestion_control), so a failure cannot leave the
// connection on reno.
type ccRestarter struct {
	restart  func() bool  // restarts the socket's congestion control; reports whether it did
	last     atomic.Int64 // unix nanoseconds of the last data frame sent (0: none yet)
	restarts atomic.Int64 // restarts done, for tests
}

// newCCRestarter returns a restarter for the TCP socket c, or nil when c
// is not a socket this system can restart (another OS, a proxy's wrapper).
func newCCRestarter(c net.Conn) *ccRestarter {
	if off, err := strconv.ParseBool(os.Getenv(envNoCCRestart)); err == nil && off {
		return nil
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	restart := ccRestartFunc(rc)
	if restart == nil {
		return nil
	}
	return &ccRestarter{restart: restart}
}

// dataFrame is called as each yamux data frame is about to be sent (by
// yamux's send loop only), at now.
func (r *ccRestarter) dataFrame(now time.Time) {
	if r == nil {
		return
	}
	t := now.UnixNano()
	if last := r.last.Swap(t); last != 0 && t-last >= int64(ccRestartQuiet) && r.restart() {
		r.restarts.Add(1)
	}
}
