package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/dyad-tunnel/dyad/codec"
)

// finTimeout bounds the wait for the peer's FIN after its close record.
const finTimeout = 5 * time.Second

var errTrailing = errors.New("data after the close record")

// pumpResult says how a forwarded connection ended.
type pumpResult struct {
	sent, received int64 // plaintext bytes local→tunnel and tunnel→local
	err            error // first failure; nil when both directions closed cleanly
}

// pump copies between a local connection (TCP, or TLS to an upstream) and a tunnel stream until both
// directions end. A FIN maps to the close record plus the stream's FIN and
// back to a TCP half-close; any failure (a TCP reset, a stream reset, a
// rejected record) resets both sides at once and is returned for the
// caller to count and audit (THREATS P3: no byte of a bad record is
// written, since the codec opens a whole record before returning any of it).
//
// answer, on the importing side, reads the exporter's answer before any
// byte goes to the local client; the local → tunnel direction does not
// wait for it (pipelined open, see Forward).
func (n *Node) pump(local Conn, s muxStream, r *codec.Reader, w *codec.Writer, answer func() error, g guard) pumpResult {
	var (
		res      pumpResult
		once     sync.Once
		wg       sync.WaitGroup
		abortErr error
		stopped  error // the exporter's stop of our sending, when the importer's copy ended on it
	)
	ctx, cancel := context.WithCancel(n.ctx)
	defer cancel()
	abort := func(err error, code quic.StreamErrorCode) {
		once.Do(func() {
			cancel() // ends a meter's wait
			abortErr = err
			s.CancelRead(code)
			s.CancelWrite(code)
			local.SetLinger(0) // RST, so the other end sees a failure, not an EOF
			local.Close()
		})
	}
	src, dst, stop := g.wrap(ctx, local, local, func(err error) { abort(err, codeLimit) })
	defer stop()
	src = waitingSource(src, local)
	// local → tunnel on its own goroutine, tunnel → local on the caller's:
	// an idle stream costs one goroutine stack less (README, "Performance").
	wg.Add(1)
	go func() { // local → tunnel
		defer wg.Done()
		var err error
		res.sent, err = w.ReadFrom(src)
		n.Stats.BytesSent.Add(uint64(res.sent))
		if err == nil {
			if err = w.Close(); err == nil {
				err = s.Close()
			}
		}
		if err != nil && answer != nil && stoppedByPeer(err) {
			// The exporter stopped reading (a refusal, or an API guard
			// that ended the stream early) after writing what it had to
			// say: the tunnel → local direction delivers that and its
			// end, or fails on its own. Aborting here would discard
			// answers not yet read (TestGuardedStream, the flooding client).
			stopped = err
			return
		}
		if err != nil {
			abort(err, codeLocalReset)
		}
	}()
	func() { // tunnel → local
		var err error
		if answer != nil {
			if err = answer(); err != nil {
				var refused *RefusedError
				code := codeProtocol
				if errors.As(err, &refused) {
					code = codeStreamRefused
				} else if codec.Reason(err) != "" {
					code = codeRecord
				}
				abort(err, code)
				return
			}
		}
		res.received, err = r.WriteTo(dst)
		n.Stats.BytesReceived.Add(uint64(res.received))
		if err == nil {
			err = expectFIN(s)
		}
		if err != nil {
			code := codeLocalReset
			if errors.Is(err, errTrailing) {
				code = codeProtocol
			} else if codec.Reason(err) != "" {
				code = codeRecord
			}
			abort(err, code)
			return
		}
		local.CloseWrite()
	}()
	wg.Wait()
	r.Release()
	local.Close()
	res.err = abortErr
	if res.err == nil && stopped != nil && !refusedByPeer(stopped) {
		res.err = stopped // the client's bytes were cut: not a clean close
	}
	return res
}

// stoppedByPeer reports the peer's stop of our sending (STOP_SENDING, or
// its TCP transport equivalent).
func stoppedByPeer(err error) bool {
	var se *quic.StreamError
	return errors.As(err, &se) && se.Remote
}

// refusedByPeer reports the exporter's stop of a refused stream. It sends
// its typed answer before the stop, so the importer leaves the abort to the
// direction that reads that answer instead of racing it with a bare reset.
func refusedByPeer(err error) bool {
	var se *quic.StreamError
	return errors.As(err, &se) && se.Remote && se.ErrorCode == codeStreamRefused
}

// expectFIN reads the stream's end after the close record: anything but
// the FIN is a protocol error.
func expectFIN(s muxStream) error {
	s.SetReadDeadline(time.Now().Add(finTimeout))
	defer s.SetReadDeadline(time.Time{})
	var b [1]byte
	n, err := s.Read(b[:])
	switch {
	case n > 0:
		// Counted and audited like trailing bytes the codec saw in the
		// same read (TestTrailingDataResets).
		return fmt.Errorf("%w: %w", errTrailing, codec.ErrTrailingData)
	case err == io.EOF:
		return nil
	}
	return err
}
