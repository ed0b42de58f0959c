//go:build !linux

package tunnel

import "io"

// waitingSource returns src: elsewhere than Linux an idle stream's
// ReadFrom waits in Read, holding its small record buffer.
func waitingSource(src io.Reader, _ Conn) io.Reader { return src }
