// Package tunneltest provides real loopback helpers for tests of the tunnel
// and the daemon: TCP echo and sink servers on 127.0.0.1.
package tunneltest

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/dyad-tunnel/dyad/internal/freeport"
)

// EchoServer starts a TCP server on 127.0.0.1 that echoes every byte back
// and half-closes when its client does. It stops when the test ends.
func EchoServer(t testing.TB) (addr string, accepted func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu sync.Mutex
		n  int
		wg sync.WaitGroup
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// FreeAddr returns a loopback TCP address for a server that must be
// started later (or never, to be unreachable); see internal/freeport for
// why it is not a kernel-picked port.
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := freeport.UDPTCP()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// SyncBuffer is a bytes.Buffer safe for concurrent writes (a log sink, a
// child process's output) and reads.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
