package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// muxPair is a listener's and a dialer's yamux session over a pipe, as
// newTCPConn makes them after a TLS handshake that took rtt, with cfg.
func muxPair(t *testing.T, cfg Config, rtt time.Duration) (listener, dialer *tcpConn) {
	t.Helper()
	n := &Node{log: zerolog.Nop()}
	n.cfg.Store(newSnapshot(cfg))
	a, b := net.Pipe()
	var l *tcpConn
	lerr := make(chan error, 1)
	go func() { // net.Pipe is synchronous: the listener's control stream needs the dialer
		var err error
		l, err = n.newMuxConn(context.Background(), a, tls.ConnectionState{}, nil, true, rtt)
		lerr <- err
	}()
	d, err := n.newMuxConn(context.Background(), b, tls.ConnectionState{}, nil, false, rtt)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-lerr; err != nil {
		t.Fatal(err)
	}
	go l.SignalReady()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.AwaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.CloseWithError(codeShutdown, "")
		d.CloseWithError(codeShutdown, "")
	})
	return l, d
}

// TestTCPWindowForLink: one stream over TCP may have 1 Gbit/s times the
// round trip in flight (12.5 MB at 100 ms), not 256 KiB, so that one
// connection keeps a long lossy link busy (the bench's 1% loss row): the
// dialer writes 12.5 MB that nobody reads yet without waiting. On a short
// link the window stays at shortLinkWindow (yamux's windows do not grow
// with use).
func TestTCPWindowForLink(t *testing.T) {
	cfg := Config{KeepAlive: time.Second, IdleTimeout: 10 * time.Second}
	for rtt, want := range map[time.Duration]uint32{0: shortLinkWindow, time.Millisecond: shortLinkWindow, 10 * time.Millisecond: shortLinkWindow, 20 * time.Millisecond: 2_500_000,
		40 * time.Millisecond: 5_000_000, time.Second: maxStreamWindow} {
		if w := tcpWindow(cfg, rtt); w != want {
			t.Errorf("window at %v: %d, want %d", rtt, w, want)
		}
	}
	l, d := muxPair(t, cfg, 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const inFlight = 1e9 / 8 / 10 // 1 Gbit/s at 100 ms
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(make([]byte, inFlight))
		done <- err
	}()
	r, err := l.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		held, _ := l.rx.stats()
		t.Fatalf("a write of %d bytes did not fit the stream's window (the listener holds %d bytes)", int(inFlight), held)
	}
	s.Close()
	if n, err := io.Copy(io.Discard, r); err != nil || n != inFlight {
		t.Fatalf("read %d bytes, %v", n, err)
	}
}

// TestTCPReceiveGate: yamux's windows are per stream; the connection's
// streams together hold at most the peer's budget (C * W_conn, here 1 *
// 32 MiB) plus one frame, however many streams the peer fills while we do
// not read; every byte still arrives once we read, and the count returns
// to zero when the streams end (THREATS P5).
func TestTCPReceiveGate(t *testing.T) {
	cfg := Config{KeepAlive: time.Second, IdleTimeout: 30 * time.Second, MaxConnectionsPerPeer: 1}
	l, d := muxPair(t, cfg, time.Second)
	budget, window := tcpBudget(cfg), int64(tcpWindow(cfg, time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const streams = 4
	payload := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, int(window)) }
	var writers sync.WaitGroup
	for i := range streams {
		s, err := d.OpenStreamSync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		writers.Add(1)
		go func() {
			defer writers.Done()
			s.Write(payload(i))
			s.Close()
		}()
	}
	var got []muxStream
	for range streams {
		r, err := l.AcceptStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	// Nobody reads: wait for the held bytes to reach the budget and stop
	// growing (slowly under -race).
	var held int64
	for last, still := int64(-1), 0; still < 5 || held < budget; time.Sleep(100 * time.Millisecond) {
		held, _ = l.rx.stats()
		if held == last {
			still++
		} else {
			last, still = held, 0
		}
		if ctx.Err() != nil {
			break
		}
	}
	if bound := budget + window + 64<<10; held > bound || held < budget {
		t.Fatalf("the listener holds %d bytes of %d sent, want between the budget %d and %d", held, streams*window, budget, bound)
	}
	var readers sync.WaitGroup
	for _, r := range got {
		readers.Add(1)
		go func() {
			defer readers.Done()
			b, err := io.ReadAll(r)
			i := int(b[0] - 'a')
			if err != nil || !bytes.Equal(b, payload(i)) {
				t.Errorf("stream %d: read %d bytes, %v", r.StreamID(), len(b), err)
			}
			r.Close()
		}()
	}
	readers.Wait()
	writers.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		held, n := l.rx.stats()
		if held == 0 && n <= 1 { // the control stream stays
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the streams ended the gate still counts %d bytes on %d streams", held, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTCPGateCountsOnlyOpenStreams: the gate counts a data frame only on a
// stream yamux keeps a buffer for, one the peer opened (SYN) or we did
// (our SYN, seen as it is written); an ACK for a stream we never opened
// is drained by yamux, and counting it stopped the drain at the budget.
func TestTCPGateCountsOnlyOpenStreams(t *testing.T) {
	g := newRxGate(1 << 20)
	g.parse(yamuxFrame(yamuxData, yamuxACK, 7, 2<<20, nil)) // never opened: yamux drains it
	g.parse(make([]byte, 2<<20))
	g.sent(yamuxFrame(yamuxUpdate, yamuxSYN, 9, 0, nil)) // ours
	g.parse(yamuxFrame(yamuxData, yamuxACK, 9, 100, make([]byte, 100)))
	g.parse(yamuxFrame(yamuxData, yamuxSYN, 4, 50, make([]byte, 50))) // the peer's
	if held, streams := g.stats(); held != 150 || streams != 2 {
		t.Fatalf("held %d on %d streams, want 150 on 2", held, streams)
	}
	g.took(9, 100)
	g.sent(yamuxFrame(yamuxUpdate, yamuxRST, 4, 0, nil))
	if held, streams := g.stats(); held != 0 || streams != 1 {
		t.Fatalf("held %d on %d streams, want 0 on 1", held, streams)
	}
}

// TestTCPGateCountsOwnStreams: what the peer sends on a stream we opened
// is counted too (our SYN registers it as yamux writes it).
func TestTCPGateCountsOwnStreams(t *testing.T) {
	l, d := muxPair(t, Config{KeepAlive: time.Second, IdleTimeout: 10 * time.Second}, 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte{1}) // the listener sees the stream with its first byte
	r, err := l.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const size = 1 << 20
	go r.Write(make([]byte, size))
	for held := int64(0); held != size; time.Sleep(10 * time.Millisecond) {
		if ctx.Err() != nil {
			t.Fatalf("the dialer counts %d bytes on its own stream, want %d", held, size)
		}
		held, _ = d.rx.stats()
	}
	if _, err := io.ReadFull(s, make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	if held, _ := d.rx.stats(); held != 0 {
		t.Fatalf("after reading, the dialer counts %d bytes", held)
	}
}
