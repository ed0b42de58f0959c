package tunnel

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/dyad-tunnel/dyad/codec"
)

// drainLimit and drainTime bound what pumpServer reads and discards of
// the client's bytes after a StreamGuard ended the stream early, so the
// client reads its last answer before the stream's reset can overtake it.
const (
	drainLimit = 64 << 10
	drainTime  = 2 * time.Second
)

// errGuardEnded ends a stream whose client kept sending after the
// guard ended it (past drainLimit or drainTime).
var errGuardEnded = errors.New("the API guard ended the stream; the client kept sending")

// pumpServer runs an accepted stream that serve serves (a StreamGuard)
// with local, its upstream: one goroutine, the caller's, for both
// directions. Failures end it as
// the pump's do: a rejected record resets both sides (THREATS P3), a limit
// or a reset local end resets them too.
func (n *Node) pumpServer(serve func(in io.Reader, out io.Writer), local Conn, s muxStream, r *codec.Reader, w *codec.Writer, g guard) pumpResult {
	var (
		res      pumpResult
		once     sync.Once
		abortErr error
	)
	ctx, cancel := context.WithCancel(n.ctx)
	defer cancel()
	// answered: the guard's answers and our FIN are written. A failure
	// after that stops only the reading side, so no reset overtakes the
	// last answer (over TCP a yamux reset discards what the peer has not
	// read yet).
	var answered atomic.Bool
	abort := func(err error, code quic.StreamErrorCode) {
		once.Do(func() {
			cancel()
			abortErr = err
			s.CancelRead(code)
			if !answered.Load() {
				s.CancelWrite(code)
			}
			local.SetLinger(0)
			local.Close()
		})
	}
	// The guard reads what the pump would write to local and writes what
	// it would read: the buckets swap places.
	swapped := g
	swapped.send, swapped.received = g.received, g.send
	in, out, stop := swapped.wrap(ctx, r, w, func(err error) { abort(err, codeLimit) })
	cin, cout := &countingReader{r: in}, &countingWriter{w: out}
	serve(cin, cout)
	res.received, res.sent = cin.n, cout.n
	n.Stats.BytesReceived.Add(uint64(res.received))
	n.Stats.BytesSent.Add(uint64(res.sent))
	switch {
	case cin.err != nil && cin.err != io.EOF:
		code := codeLocalReset
		if codec.Reason(cin.err) != "" {
			code = codeRecord
		}
		abort(cin.err, code)
	case cout.err != nil:
		abort(cout.err, codeLocalReset)
	}
	if err := w.Close(); err == nil {
		if err = s.Close(); err != nil {
			abort(err, codeLocalReset)
		} else {
			answered.Store(true)
		}
	} else {
		abort(err, codeLocalReset)
	}
	if cin.err == io.EOF {
		if err := expectFIN(s); err != nil {
			code := codeLocalReset
			if errors.Is(err, errTrailing) {
				code = codeProtocol
			}
			abort(err, code)
		}
	} else if cin.err == nil {
		// The guard ended the stream before the client's end.
		s.SetReadDeadline(time.Now().Add(drainTime))
		_, err := io.CopyN(io.Discard, r, drainLimit)
		s.SetReadDeadline(time.Time{})
		switch {
		case err == io.EOF:
			if err := expectFIN(s); err != nil {
				abort(err, codeProtocol)
			}
		case err == nil:
			abort(errGuardEnded, codeLocalReset)
		case codec.Reason(err) != "":
			abort(err, codeRecord)
		default:
			abort(err, codeLocalReset)
		}
	}
	stop()
	once.Do(func() {}) // no abort after this: abortErr is final
	r.Release()
	local.Close()
	res.err = abortErr
	return res
}

// countingReader counts what its reader gave and keeps its first error.
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	k, err := c.r.Read(p)
	c.n += int64(k)
	c.err = err
	return k, err
}

// countingWriter counts what its writer took and keeps its first error.
type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	k, err := c.w.Write(p)
	c.n += int64(k)
	c.err = err
	return k, err
}
