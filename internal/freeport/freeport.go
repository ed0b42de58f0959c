// Package freeport hands tests and the demo loopback ports that a server
// will bind later, and that nothing else on the machine is handed.
//
// Binding port 0 and closing it is not enough: the kernel hands the same
// ephemeral port to the next connect or port-0 bind of any process (a
// parallel test package, a daemon's outgoing TCP connection), and the server
// started later finds it taken ("bind: address already in use", seen in CI).
// So ports come from outside the kernel's ephemeral range (below it), which
// the kernel never picks by itself, in blocks of Block ports that one process claims
// through an flock on a file in the temporary directory (released when the
// process exits), and a port is handed out once per process. Each port is
// checked free on UDP and TCP, since a daemon may listen on both with it.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Block is how many ports one claim takes.
const Block = 64

// lowest is the lowest port handed out; below it lie registered services.
const lowest = 10000

var state struct {
	mu    sync.Mutex // guards the following fields
	next  int        // the next port to try in the claimed block
	end   int        // one past the claimed block's last port; 0 when none
	locks []*os.File // held open so the claims last until exit
}

// UDPTCP returns a 127.0.0.1 address whose port was free for both UDP and
// TCP a moment ago and that no other call, in this process or another
// using this package, returned.
func UDPTCP() (string, error) {
	state.mu.Lock()
	defer state.mu.Unlock()
	for range 4 * Block {
		if state.next >= state.end {
			if err := claim(); err != nil {
				return "", err
			}
		}
		p := state.next
		state.next++
		if free(p) {
			return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
		}
	}
	return "", fmt.Errorf("freeport: no free port in %d tries", 4*Block)
}

// claim takes a block nobody holds, outside the ephemeral range: below it
// from lowest up, or above it when it starts too low to leave room.
func claim() error {
	lo, hi := ephemeralRange()
	var starts []int
	for s := lowest; s+Block <= lo; s += Block {
		starts = append(starts, s)
	}
	for s := hi + 1; s+Block <= 65536; s += Block {
		starts = append(starts, s)
	}
	if len(starts) == 0 {
		return fmt.Errorf("freeport: the ephemeral range %d-%d leaves no block of %d ports", lo, hi, Block)
	}
	dir := filepath.Join(os.TempDir(), "dyad-freeport")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return fmt.Errorf("freeport: %w", err)
	}
	first := rand.IntN(len(starts))
	var lastErr error
	for i := range starts {
		start := starts[(first+i)%len(starts)]
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(start)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			lastErr = err // another user's block, say
			continue
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			lastErr = err // another process holds it
			continue
		}
		state.locks = append(state.locks, f)
		state.next, state.end = start, start+Block
		return nil
	}
	return fmt.Errorf("freeport: no block of %d ports outside the ephemeral range %d-%d could be claimed in %s: %w", Block, lo, hi, dir, lastErr)
}

// ephemeralRange reads the kernel's range for ports it picks itself;
// Linux's default when it cannot be read.
func ephemeralRange() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		f := strings.Fields(string(b))
		if len(f) == 2 {
			l, err1 := strconv.Atoi(f[0])
			h, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil {
				return l, h
			}
		}
	}
	return 32768, 60999
}

// free reports whether p can be bound on 127.0.0.1 for UDP and TCP.
func free(p int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	defer pc.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
