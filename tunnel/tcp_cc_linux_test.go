package tunnel

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// bbrStartupGain is BBR's startup pacing and window gain as TCP_CC_INFO
// reports it (2/ln 2 in units of 1/256, net/ipv4/tcp_bbr.c).
const bbrStartupGain = 739

// bbrInfo reads a BBR socket's state: its bandwidth estimate (bytes per
// second) and its pacing and window gains (1/256 units).
func bbrInfo(t *testing.T, c *net.TCPConn) (bw uint64, pacing, cwnd uint32) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info [20]byte // struct tcp_bbr_info
	var serr error
	rc.Control(func(fd uintptr) {
		n := uint32(len(info))
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_CC_INFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&n)), 0)
		if e != 0 {
			serr = e
		}
	})
	if serr != nil {
		t.Fatalf("TCP_CC_INFO: %v", serr)
	}
	le := binary.LittleEndian
	return uint64(le.Uint32(info[0:])) | uint64(le.Uint32(info[4:]))<<32, le.Uint32(info[12:]), le.Uint32(info[16:])
}

// TestTCPCongestionRestartBBR: on a TCP connection whose socket runs BBR,
// a data frame sent after a quiet second finds BBR in its startup again,
// as on a new connection (ccRestarter, issue 21's 1% loss collapse): the
// kernel takes setting the algorithm a socket already has for nothing,
// so this proves the switch through reno restarts it, and that the
// transport does it. Before, the bulk transfer left BBR out of startup for
// good.
func TestTCPCongestionRestartBBR(t *testing.T) {
	l, d, lsock, _ := tlsMuxPair(t, time.Millisecond)
	raw := lsock.Conn.(*net.TCPConn)
	rc, err := raw.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, ccRestartable)
	})
	if serr != nil || l.cc == nil {
		t.Skipf("BBR cannot be set and restarted here (setsockopt: %v; allowed: %v)", serr, ccAllowed())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := l.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	rs, err := d.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan int64, 1)
	go func() { n, _ := io.Copy(io.Discard, rs); got <- n }()
	// A bulk transfer until BBR has filled loopback and left startup.
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(10 * time.Second)
	for {
		for range 256 {
			if _, err := s.Write(buf); err != nil {
				t.Fatal(err)
			}
		}
		if _, pacing, _ := bbrInfo(t, raw); pacing != bbrStartupGain {
			break
		}
		if time.Now().After(deadline) {
			t.Skip("BBR did not leave startup on loopback in 10 s")
		}
	}
	bw, pacing, cwnd := bbrInfo(t, raw)
	t.Logf("after the bulk transfer: estimate %d Mbit/s, gains %d/%d (1/256)", bw*8/1e6, pacing, cwnd)
	// A quiet second, then one small frame.
	time.Sleep(ccRestartQuiet + 100*time.Millisecond)
	if _, err := s.Write([]byte{2}); err != nil {
		t.Fatal(err)
	}
	// The restart comes before the frame; BBR sets its gains on the
	// frame's acknowledgment.
	for time.Now().Before(deadline) {
		if bw, pacing, cwnd = bbrInfo(t, raw); pacing != 0 && l.cc.restarts.Load() > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("after a quiet second and one frame: estimate %d Mbit/s, gains %d/%d, %d restarts", bw*8/1e6, pacing, cwnd, l.cc.restarts.Load())
	if pacing != bbrStartupGain || cwnd != bbrStartupGain {
		t.Errorf("BBR's gains %d/%d after the quiet second, want startup's %d/%d", pacing, cwnd, bbrStartupGain, bbrStartupGain)
	}
	if n := l.cc.restarts.Load(); n != 1 {
		t.Errorf("%d congestion control restarts, want 1", n)
	}
	var name string
	rc.Control(func(fd uintptr) { name, serr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION) })
	if serr != nil || name != ccRestartable {
		t.Errorf("socket's congestion control %q (%v) after the restart, want %q", name, serr, ccRestartable)
	}
	s.Close()
	select {
	case <-got:
	case <-ctx.Done():
		t.Fatal("stream not ended")
	}
}
