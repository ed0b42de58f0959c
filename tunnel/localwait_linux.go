package tunnel

import (
	"io"
	"net"
	"syscall"
)

// localSource is a local connection as the codec's Writer.ReadFrom reads
// it: a codec.ReadWaiter, so that a stream whose client is quiet waits for
// data without holding a pooled record buffer (10,000 idle forwarded
// connections would otherwise pin 10,000 of them).
type localSource struct {
	io.Reader // the local connection, metered or not
	rc        syscall.RawConn
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
	return localSource{src, rc}
}

// WaitRead returns once a Read of the connection would not block: data,
// its end or an error is there. It peeks (MSG_PEEK, one byte, not
// consumed) rather than trusting the poller's readiness alone, which a
// Read that left data in the socket does not re-arm.
func (s localSource) WaitRead() error {
	return s.rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN
	})
}
