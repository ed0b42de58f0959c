package tunnel

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/codec"
)

// TestLocalSourceWaitRead: the local connection's WaitRead returns at once
// when data is already there (also data a short Read left behind, which
// the poller does not signal again), blocks while the client is quiet and
// returns when data or the client's FIN arrives, and fails on a deadline
// or a close, so a waiting stream is never stuck.
func TestLocalSourceWaitRead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	src, ok := waitingSource(tc, tc).(codec.ReadWaiter)
	if !ok {
		t.Fatal("the local source is no codec.ReadWaiter")
	}
	waited := func() chan error {
		done := make(chan error, 1)
		go func() { done <- src.WaitRead() }()
		return done
	}
	within := func(done chan error, d time.Duration) (error, bool) {
		select {
		case err := <-done:
			return err, true
		case <-time.After(d):
			return nil, false
		}
	}

	// Quiet client: WaitRead blocks, then returns when data comes.
	done := waited()
	if _, ok := within(done, 100*time.Millisecond); ok {
		t.Fatal("WaitRead returned with nothing to read")
	}
	client.Write([]byte("abcdef"))
	if err, ok := within(done, 5*time.Second); !ok || err != nil {
		t.Fatalf("WaitRead after data: %v (returned: %v)", err, ok)
	}
	// A short Read leaves data behind: WaitRead must see it.
	var b [2]byte
	if n, _ := tc.Read(b[:]); n != 2 {
		t.Fatalf("read %d bytes", n)
	}
	if err, ok := within(waited(), 5*time.Second); !ok || err != nil {
		t.Fatalf("WaitRead with data left in the socket: %v (returned: %v)", err, ok)
	}
	var rest [16]byte
	if n, _ := tc.Read(rest[:]); n != 4 {
		t.Fatalf("read %d bytes, want the 4 left", n)
	}
	// A deadline ends the wait.
	tc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err, ok := within(waited(), 5*time.Second); !ok || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WaitRead past a deadline: %v (returned: %v)", err, ok)
	}
	tc.SetReadDeadline(time.Time{})
	// The client's FIN: WaitRead returns and Read sees the end.
	done = waited()
	client.(*net.TCPConn).CloseWrite()
	if err, ok := within(done, 5*time.Second); !ok || err != nil {
		t.Fatalf("WaitRead after FIN: %v (returned: %v)", err, ok)
	}
	// A reset is an error, never a clean end: the peek takes the socket's
	// pending error, so WaitRead must hand it on.
	c3, _ := net.Dial("tcp", ln.Addr().String())
	s3, _ := ln.Accept()
	defer s3.Close()
	c3.Write([]byte("x"))
	c3.(*net.TCPConn).SetLinger(0)
	c3.Close()
	time.Sleep(50 * time.Millisecond)
	w3 := waitingSource(s3, s3.(*net.TCPConn)).(codec.ReadWaiter)
	if err := w3.WaitRead(); err != nil { // the byte before the reset
		t.Fatalf("WaitRead with data before a reset: %v", err)
	}
	var one [8]byte
	if n, err := s3.Read(one[:]); n != 1 && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %d, %v", n, err)
	}
	if err := w3.WaitRead(); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("WaitRead after a reset: %v, want ECONNRESET", err)
	}
	// Closing the connection (pump's abort) ends a wait with an error.
	c2, _ := net.Dial("tcp", ln.Addr().String())
	defer c2.Close()
	s2, _ := ln.Accept()
	done = make(chan error, 1)
	go func() { done <- waitingSource(s2, s2.(*net.TCPConn)).(codec.ReadWaiter).WaitRead() }()
	time.Sleep(50 * time.Millisecond)
	s2.Close()
	if err, ok := within(done, 5*time.Second); !ok || err == nil {
		t.Fatalf("WaitRead on a closed connection: %v (returned: %v)", err, ok)
	}
}

// BenchmarkLocalSourceWaitRead: a wait on a connection with data costs one
// peek and allocates nothing.
func BenchmarkLocalSourceWaitRead(b *testing.B) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	client, _ := net.Dial("tcp", ln.Addr().String())
	defer client.Close()
	c, _ := ln.Accept()
	defer c.Close()
	client.Write([]byte("x"))
	src := waitingSource(c, c.(*net.TCPConn)).(codec.ReadWaiter)
	b.ReportAllocs()
	for b.Loop() {
		if err := src.WaitRead(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLocalSourceWaitReadSyscalls: a wait costs the system calls a plain
// blocking Read would make, no more: one peek that finds the socket empty
// before it parks, none after the poller wakes it (the Read that follows
// makes the call that takes the data, or its error). A peek after the
// wake-up added a system call per message in each sending direction
// (rr-1's p50, issue 18).
func TestLocalSourceWaitReadSyscalls(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	src := waitingSource(tc, tc).(*localSource)
	var b [64]byte
	for i := range 3 {
		go func() {
			time.Sleep(20 * time.Millisecond)
			client.Write([]byte("ping"))
		}()
		src.peeks = 0
		if err := src.WaitRead(); err != nil {
			t.Fatal(err)
		}
		if src.peeks != 1 {
			t.Fatalf("round %d: WaitRead on a quiet socket made %d peeks, want 1 (the one before it parked)", i, src.peeks)
		}
		if n, err := tc.Read(b[:]); n != 4 || err != nil {
			t.Fatalf("round %d: read %d, %v after the wait", i, n, err)
		}
	}
	// Data already there: one peek, and the data is still there.
	client.Write([]byte("pong"))
	time.Sleep(20 * time.Millisecond)
	src.peeks = 0
	if err := src.WaitRead(); err != nil || src.peeks != 1 {
		t.Fatalf("WaitRead with data there: %v, %d peeks, want nil, 1", err, src.peeks)
	}
	if n, err := tc.Read(b[:]); n != 4 || err != nil {
		t.Fatalf("read %d, %v after the wait", n, err)
	}
	// A reset that arrives during the wait is passed on as a reset
	go func() {
		time.Sleep(20 * time.Millisecond)
		client.(*net.TCPConn).SetLinger(0)
		client.Close()
	}()
	// (from WaitRead or from the Read after it), never as a clean end.
	err = src.WaitRead()
	if err == nil {
		var n int
		n, err = tc.Read(b[:])
		if n != 0 {
			t.Fatalf("read %d bytes after a reset", n)
		}
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a reset during the wait: %v, want ECONNRESET", err)
	}
}
