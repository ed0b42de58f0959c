package tunnel

import (
	"io"
	"net"
	"os"
	"syscall"
)

// localSource is a local connection as the codec's Writer.ReadFrom reads
// it: a codec.ReadWaiter, so that a stream whose client is quiet waits for
// data without holding a pooled record buffer (10,000 idle forwarded
// connections would otherwise pin 10,000 of them).
type localSource struct {
	io.Reader // the local connection, metered or not
	rc        syscall.RawConn
	peek      func(fd uintptr) bool // built once, so that WaitRead allocates nothing
	err       error                 // the error the last peek took from the socket
	peeks     int                   // peek system calls made, for tests
	parked    bool                  // this wait's peek found the socket empty
}

// waitingSource returns src (which reads from c) as a localSource, or src
// itself if c has no raw connection.
func waitingSource(src io.Reader, local Conn) io.Reader {
	// Only a plain socket: a wrapper (the API guard's) may hold bytes it
	// has read, which a peek at the socket would not see.
	c, ok := local.(*net.TCPConn)
	if !ok {
		return src
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return src
	}
	s := &localSource{Reader: src, rc: rc}
	s.peek = func(fd uintptr) bool {
		if s.parked {
			// The poller woke us after the peek found nothing: data, the
			// end or an error arrived since, and the Read that follows
			// makes the one system call that takes it (a reset included,
			// which a second peek would take from the socket). One peek
			// per wait, as many calls as a plain blocking Read makes
			// (TestLocalSourceWaitReadSyscalls).
			return true
		}
		var b [1]byte
		s.peeks++
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch err {
		case syscall.EAGAIN:
			s.parked = true
			return false
		case nil, syscall.EINTR:
		default:
			// The peek took the socket's pending error (a reset): the
			// Read after it would see a clean end of stream, so the error
			// is handed on here (THREATS P3, TestLocalSourceWaitRead and
			// the daemon's TestFaultUpstreamRestart: a reset upstream is
			// never a complete download).
			s.err = &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("recvfrom", err)}
		}
		return true
	}
	return s
}

// WaitRead returns once a Read of the connection would not block: data or
// its end is there (nil), or an error (returned). It peeks first (MSG_PEEK,
// one byte, not consumed) rather than trusting the poller's readiness alone,
// which a Read that left data in the socket does not re-arm; when the peek
// finds nothing it parks in the poller and returns on its wake-up without
// a second peek, so a wait costs the one system call a plain blocking Read
// would spend finding the socket empty.
func (s *localSource) WaitRead() error {
	s.err, s.parked = nil, false
	if err := s.rc.Read(s.peek); err != nil {
		return err
	}
	return s.err
}
