//go:build !linux

package tunnel

import (
	"io"
	"net"
)

// waitingSource returns src: elsewhere than Linux an idle stream's
// ReadFrom waits in Read, holding its small record buffer.
func waitingSource(src io.Reader, _ *net.TCPConn) io.Reader { return src }
