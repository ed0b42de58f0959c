package tunnel

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestTCPControlBeforeAccept: a reset_stream or stop_sending that arrives
// before the stream is accepted reaches it when it is, as over QUIC. On
// main the reset was dropped: the reader got the stream's bytes and, a
// second later, its FIN (a record cut short: counted as truncation).
func TestTCPControlBeforeAccept(t *testing.T) {
	l, d := muxPair(t, Config{KeepAlive: time.Second, IdleTimeout: 10 * time.Second}, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	reset, err := d.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reset.Write(make([]byte, 100))
	reset.CancelWrite(7)
	stopped, err := d.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stopped.Write([]byte{1})
	stopped.CancelRead(9)
	time.Sleep(200 * time.Millisecond) // both messages are in, neither stream accepted

	r, err := l.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(r)
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != 7 || !se.Remote {
		t.Fatalf("reading a stream reset before it was accepted: %v, want the peer's reset 7", err)
	}

	w, err := l.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Write([]byte("answer"))
	if !errors.As(err, &se) || se.ErrorCode != 9 || !se.Remote {
		t.Fatalf("writing a stream stopped before it was accepted: %v, want the peer's stop 9", err)
	}
}

// TestTCPEarlyControlBounded: control messages for streams that were
// never opened are kept at most acceptBacklog at a time, and ours or ones
// accepted before are not kept at all.
func TestTCPEarlyControlBounded(t *testing.T) {
	l, d := muxPair(t, Config{KeepAlive: time.Second, IdleTimeout: 10 * time.Second}, time.Millisecond)
	for id := uint32(1); id < 4*acceptBacklog; id++ {
		d.sendCtl(ctlResetStream, id, 1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.OpenStreamSync(ctx) // behind the messages on the wire
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte{1})
	if _, err := l.AcceptStream(ctx); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	kept := len(l.early)
	l.mu.Unlock()
	if kept > acceptBacklog {
		t.Fatalf("the listener keeps %d early control messages, want at most %d", kept, acceptBacklog)
	}
	for id := uint32(2); id < 64; id += 2 { // the listener's own IDs
		l.mu.Lock()
		_, ok := l.early[id]
		l.mu.Unlock()
		if ok {
			t.Fatalf("kept a message for the listener's own stream %d", id)
		}
	}
}
