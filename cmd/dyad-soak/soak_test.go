package main

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestBulkDetects checks the soak's own detector: through a proxy that
// ends, flips or resets the answer, the client must see a clean cut, a
// mismatch or a failure, and a cleanly cut upload must be caught by the
// server.
func TestBulkDetects(t *testing.T) {
	led := newLedger([]string{"A→B"})
	u, err := newUpstream("site-b", led)
	if err != nil {
		t.Fatal(err)
	}
	defer u.stop()
	for _, upload := range []bool{false, true} {
		if out, err := bulk(u.bulkAddr, upload, 1<<20, 7); out != done {
			t.Fatalf("upload %v without a proxy: %v, %v", upload, out, err)
		}
	}
	cases := []struct {
		name   string
		upload bool
		mode   string
		want   outcome
	}{
		{"download cut cleanly", false, "cut", cleanCut},
		{"download with a flipped byte", false, "flip", mismatch},
		{"download reset", false, "reset", failed},
		{"upload cut cleanly", true, "cut", mismatch}, // the server answers 'S'
	}
	for _, c := range cases {
		addr := mangler(t, u.bulkAddr, c.upload, c.mode, 100_000)
		if out, err := bulk(addr, c.upload, 1<<20, 7); out != c.want {
			t.Errorf("%s: %v (%v), want %v", c.name, out, err, c.want)
		}
	}
	if led.corrupt != 1 {
		t.Errorf("server-side findings: %d, want 1 (the cut upload)", led.corrupt)
	}
}

// mangler proxies to target and damages the upload (client → server) or
// the download direction after at bytes: "cut" ends it with a clean FIN,
// "flip" inverts one byte, "reset" resets the connection.
func mangler(t *testing.T, target string, upload bool, mode string, at int64) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			return
		}
		client, server := c.(*net.TCPConn), s.(*net.TCPConn)
		defer client.Close()
		defer server.Close()
		src, dst := server, client // the damaged direction
		if upload {
			src, dst = client, server
		}
		go func() { io.Copy(src, dst); src.CloseWrite() }()
		io.CopyN(dst, src, at)
		switch mode {
		case "cut":
			dst.CloseWrite()
			time.Sleep(time.Second) // the far end reads the FIN, then its answer has nowhere to go
			return
		case "reset":
			dst.SetLinger(0)
			return
		case "flip":
			var b [1]byte
			if _, err := io.ReadFull(src, b[:]); err != nil {
				return
			}
			b[0] ^= 0xff
			dst.Write(b[:])
		}
		io.Copy(dst, src)
		dst.CloseWrite()
	}()
	return ln.Addr().String()
}

// TestLedgerRules checks how failures and clean cuts are booked.
func TestLedgerRules(t *testing.T) {
	l := newLedger([]string{"A→B"})
	before := time.Now()
	l.record("A→B", "http", "site-a", before, failed, 0, errors.New("reset"))
	if l.unexplained != 1 {
		t.Fatalf("a failure outside faults: unexplained %d", l.unexplained)
	}
	l.record("A→B", "http", "site-a", before, cleanCut, 0, io.ErrUnexpectedEOF)
	if l.corrupt != 1 {
		t.Fatalf("a clean cut without a kill: corrupt %d", l.corrupt)
	}
	start := time.Now()
	f := l.begin("kill", "kill site-a", "site-a", true)
	l.record("A→B", "large", "site-a", start, cleanCut, 0, io.EOF)
	l.record("A→B", "large", "site-b", start, cleanCut, 0, io.EOF)
	l.record("A→B", "medium", "site-a", start, failed, 0, errors.New("refused"))
	if l.kernelCuts != 1 || l.corrupt != 2 || l.interrupted != 2 || f.cut != 2 {
		t.Fatalf("during a kill of site-a: kernel cuts %d, corrupt %d, interrupted %d, fault's %d", l.kernelCuts, l.corrupt, l.interrupted, f.cut)
	}
	l.restore(f, "")
	l.record("A→B", "http", "site-a", time.Now(), done, 10, nil)
	if l.lastBack(f).IsZero() || f.windowEnd.IsZero() {
		t.Fatal("a verified transfer after restore did not close the window")
	}
	l.record("A→B", "http", "site-a", f.windowEnd.Add(time.Millisecond), failed, 0, errors.New("reset"))
	if l.unexplained != 2 {
		t.Fatalf("a failure after the window: unexplained %d", l.unexplained)
	}
}
