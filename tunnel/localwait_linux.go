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
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch err {
		case syscall.EAGAIN:
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
// its end is there (nil), or an error (returned). It peeks (MSG_PEEK, one
// byte, not consumed) rather than trusting the poller's readiness alone,
// which a Read that left data in the socket does not re-arm.
func (s *localSource) WaitRead() error {
	s.err = nil
	if err := s.rc.Read(s.peek); err != nil {
		return err
	}
	return s.err
}
