package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dyad-tunnel/dyad/codec"
)

// callCounter counts the system calls on a TCP socket: each Read and
// Write is one read(2) or write(2).
type callCounter struct {
	net.Conn
	reads, writes atomic.Int64
	maxWrite      atomic.Int64 // the largest write(2)
	segments      atomic.Int64 // TCP segments of oneSegment bytes the writes fill, at least
}

// oneSegment is what the kernel sends as one TCP segment at the least
// (GSO at an MSS of 1448; loopback's MSS is larger).
const oneSegment = 45 * 1448

func (c *callCounter) Read(b []byte) (int, error) { c.reads.Add(1); return c.Conn.Read(b) }

func (c *callCounter) Write(b []byte) (int, error) {
	c.writes.Add(1)
	c.segments.Add(int64((len(b) + oneSegment - 1) / oneSegment))
	for n := int64(len(b)); ; {
		m := c.maxWrite.Load()
		if n <= m || c.maxWrite.CompareAndSwap(m, n) {
			break
		}
	}
	return c.Conn.Write(b)
}

// SyscallConn is the socket's, for the congestion control restart
// (ccRestarter); it makes no read(2) or write(2).
func (c *callCounter) SyscallConn() (syscall.RawConn, error) {
	return c.Conn.(syscall.Conn).SyscallConn()
}

// tlsMuxPair is a listener's and a dialer's TCP transport over loopback
// TLS, as dialTCP and handshakeTCP make them after a handshake that took
// rtt, with each side's socket counted.
func tlsMuxPair(t *testing.T, rtt time.Duration) (l, d *tcpConn, lsock, dsock *callCounter) {
	t.Helper()
	n := &Node{log: zerolog.Nop()}
	n.cfg.Store(newSnapshot(Config{KeepAlive: time.Hour, IdleTimeout: time.Hour}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	draw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	lraw, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	lsock, dsock = &callCounter{Conn: lraw}, &callCounter{Conn: draw}
	cert := foreignCert(t)
	scfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	ccfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	ls, ds := newSockConn(lsock, &wireCount{}), newSockConn(dsock, &wireCount{})
	ltc, dtc := tls.Server(ls, scfg), tls.Client(ds, ccfg)
	herr := make(chan error, 1)
	go func() { herr <- ltc.Handshake() }()
	if err := dtc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-herr; err != nil {
		t.Fatal(err)
	}
	lerr := make(chan error, 1)
	go func() {
		var err error
		l, err = n.newTCPConn(context.Background(), ltc, ls, true, rtt)
		lerr <- err
	}()
	d, err = n.newTCPConn(context.Background(), dtc, ds, false, rtt)
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
	return l, d, lsock, dsock
}

// TestTCPFrameSyscalls: a yamux frame carrying a whole codec record (64
// KiB of payload) leaves the sender in one write(2), not one per TLS
// record (five, the last a few dozen bytes), and the receiver takes it
// in at most a few read(2)s (crypto/tls alone reads about one record
// per call). Counted over 64 frames on loopback TLS.
func TestTCPFrameSyscalls(t *testing.T) {
	const frames = 64
	const frame = codec.MaxRecordSize // one whole record per yamux frame
	l, d, lsock, dsock := tlsMuxPair(t, 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte{1}); err != nil { // the SYN, before counting
		t.Fatal(err)
	}
	rs, err := l.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rs, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	w0, r0 := dsock.writes.Load(), lsock.reads.Load()
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(rs, frames*frame))
		got <- b
	}()
	rec := bytes.Repeat([]byte{7}, frame)
	for range frames {
		if _, err := s.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	var b []byte
	select {
	case b = <-got:
	case <-ctx.Done():
		t.Fatal("frames not received")
	}
	if len(b) != frames*frame {
		t.Fatalf("received %d bytes, want %d", len(b), frames*frame)
	}
	writes, reads := dsock.writes.Load()-w0, lsock.reads.Load()-r0
	t.Logf("%d frames of %d bytes: %d write(2) on the sender, %d read(2) on the receiver", frames, frame, writes, reads)
	if writes > frames+2 {
		t.Errorf("sender made %d write(2)s for %d frames, want one each", writes, frames)
	}
	if reads > 3*frames {
		t.Errorf("receiver made %d read(2)s for %d frames, want at most 3 each", reads, frames)
	}
}

// TestTCPFrameOneSegment: a bulk stream's codec records, in their yamux
// frames and TLS records, fill whole TCP segments: the sender's write(2)s
// come to at most one segment of 65,160 bytes per record (with 64 KiB
// records a frame was 65,700 bytes, a full segment and a tail of a few
// hundred bytes). The bytes arrive intact through the codec.
func TestTCPFrameOneSegment(t *testing.T) {
	_, dsock, records := tcpBulkThroughCodec(t, 4<<20)
	if n := dsock.segments.Load(); n > int64(records)+1 { // and the close record
		t.Errorf("the write(2)s of %d records and the close record fill %d segments of %d bytes, want one per record at most", records, n, oneSegment)
	}
}

// TestTCPBulkBatchesRecords: a bulk stream sends tcpBatchRecords records
// per yamux frame, so one frame, one hand-off to yamux's send loop and
// one write(2) carry two records, not one (tcpBatchRecords). The bytes
// arrive intact through the codec.
func TestTCPBulkBatchesRecords(t *testing.T) {
	_, dsock, records := tcpBulkThroughCodec(t, 4<<20)
	writes := dsock.writes.Load()
	t.Logf("%d records in %d write(2)s", records, writes)
	if want := int64(records/tcpBatchRecords + 5); writes > want {
		t.Errorf("the sender made %d write(2)s for %d records, want at most %d (%d records a frame)", writes, records, want, tcpBatchRecords)
	}
}

// tcpBulkThroughCodec sends size bytes of payload from a codec Writer's
// ReadFrom through the TCP transport to a codec Reader, checks they arrive
// intact, and returns the sockets' counts from the stream's first byte on
// and the number of data records that size makes.
func tcpBulkThroughCodec(t *testing.T, size int) (lsock, dsock *callCounter, records int) {
	t.Helper()
	l, d, lsock, dsock := tlsMuxPair(t, 100*time.Millisecond)
	pairing := make([]byte, 32)
	pairing[0] = 1
	sess, err := codec.NewSession(make([]byte, codec.SecretSize), pairing, codec.Config{Suite: codec.SuiteAES256GCM})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := sess.NewWriter(s, s.StreamID(), codec.FromInitiator)
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	dsock.writes.Store(0)
	dsock.segments.Store(0)
	dsock.maxWrite.Store(0)
	sent := make(chan error, 1)
	go func() {
		_, err := w.ReadFrom(bytes.NewReader(data))
		if err == nil {
			err = w.Close()
		}
		sent <- err
	}()
	rs, err := l.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(sess.NewReader(rs, rs.StreamID(), codec.FromInitiator))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("received %d bytes, not the %d sent", len(got), len(data))
	}
	return lsock, dsock, (size + tcpRecordPayload - 1) / tcpRecordPayload
}

// TestTCPCloseCutsStuckFrame: a frame batched under TLS is written after
// crypto/tls's Write returned, so crypto/tls no longer sees a Write in
// progress when the connection closes; closing must still cut a frame
// stuck in write(2) to a peer that reads nothing, at once, not after
// the close alert's 5 s write deadline.
func TestTCPCloseCutsStuckFrame(t *testing.T) {
	ours, theirs := net.Pipe()
	defer theirs.Close()
	cert := foreignCert(t)
	sock := newSockConn(ours, &wireCount{})
	tc := tls.Client(sock, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	srv := tls.Server(theirs, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	herr := make(chan error, 1)
	go func() { herr <- srv.Handshake() }()
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-herr; err != nil {
		t.Fatal(err)
	}
	// From here the peer reads nothing: net.Pipe has no buffer, so the
	// frame's write(2) blocks.
	w := &frameWriter{Conn: tc, sock: sock, rx: newRxGate(1)}
	hdr := make([]byte, yamuxHeader)
	hdr[0] = 0 // version
	binary.BigEndian.PutUint32(hdr[4:], 1)
	binary.BigEndian.PutUint32(hdr[8:], 1000)
	werr := make(chan error, 1)
	go func() {
		if _, err := w.Write(hdr); err != nil {
			werr <- err
			return
		}
		_, err := w.Write(make([]byte, 1000))
		werr <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !sock.flushing.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the frame never reached write(2)")
		}
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	w.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("close took %v with a frame stuck in write(2)", d)
	}
	select {
	case err := <-werr:
		if err == nil {
			t.Error("the stuck frame's write succeeded")
		}
	case <-time.After(time.Second):
		t.Error("the stuck frame's write did not end with the close")
	}
}

// TestTCPShortLinkWindowUpdates: on a short link (loopback, a LAN) a
// stream's window is at least shortLinkWindow, so a bulk transfer is not
// stop-and-wait at a few frames: the receiver sends a window update per
// half window read (yamux), each a frame, a write(2) and a hand-off on
// both sides; with 256 KiB windows that was one update per two 64 KiB
// frames (126 for 256), and the sender cut one frame in five at the
// window's edge.
func TestTCPShortLinkWindowUpdates(t *testing.T) {
	const frames = 256
	const frame = codec.MaxRecordSize
	l, d, lsock, dsock := tlsMuxPair(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	rs, err := l.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rs, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	w0, u0 := dsock.writes.Load(), lsock.writes.Load()
	got := make(chan int64, 1)
	go func() {
		n, _ := io.CopyBuffer(io.Discard, io.LimitReader(rs, frames*frame), make([]byte, codec.MaxPayload))
		got <- n
	}()
	rec := bytes.Repeat([]byte{7}, frame)
	for range frames {
		if _, err := s.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case n := <-got:
		if n != frames*frame {
			t.Fatalf("received %d bytes, want %d", n, frames*frame)
		}
	case <-ctx.Done():
		t.Fatal("frames not received")
	}
	writes, updates := dsock.writes.Load()-w0, lsock.writes.Load()-u0
	t.Logf("window %d: %d frames written in %d write(2)s, %d window updates", tcpWindow(Config{}, 0), frames, writes, updates)
	// One update per half window (16 here, one per MiB), with slack for
	// timing; a 1 MiB window sent 32, each a hand-off on the reader's path.
	if updates > frames/12 {
		t.Errorf("%d window updates for %d frames of %d bytes, want about one per %d bytes", updates, frames, frame, shortLinkWindow/2)
	}
	if writes > frames+frames/4 {
		t.Errorf("%d frames took %d write(2)s: cut at the window's edge", frames, writes)
	}
}
