package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Stream protocol of the bulk server. The client sends a 17-byte header:
// op ('D' download, 'U' upload), size and seed (big-endian uint64s), then
// half-closes (download) or sends size bytes and half-closes (upload).
// Download answer: the size bytes, their SHA-256, FIN. Upload answer:
// status ('K' all bytes then EOF, 'S' EOF before size, 'X' bytes after
// size), the count received (uint64), their SHA-256, FIN.
const (
	headerLen = 17
	replyLen  = 1 + 8 + sha256.Size
	maxBlob   = 64 << 10 // largest HTTP body
	serverTTL = 10 * time.Minute
)

// payload is the deterministic byte stream of a transfer.
func payload(seed uint64) io.Reader {
	var key [32]byte
	binary.BigEndian.PutUint64(key[:], seed)
	return rand.NewChaCha8(key)
}

// upstream is the pair of servers one flow's exporting daemon dials: an
// HTTP API for small requests and a bulk stream server. stop drops every
// connection with a TCP reset, as a crash would, so that a cut is an error
// all the way back to the client; start listens again on the same ports.
type upstream struct {
	exporter string // the site whose daemon dials these servers
	led      *ledger
	httpAddr string
	bulkAddr string

	mu    sync.Mutex // guards the following
	lns   []net.Listener
	srv   *http.Server
	conns map[*net.TCPConn]bool
	wg    sync.WaitGroup // serving goroutines
}

func newUpstream(exporter string, led *ledger) (*upstream, error) {
	u := &upstream{exporter: exporter, led: led, httpAddr: "127.0.0.1:0", bulkAddr: "127.0.0.1:0"}
	return u, u.start()
}

// start listens (on the ports of the first start) and serves.
func (u *upstream) start() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	hl, err := net.Listen("tcp", u.httpAddr)
	if err != nil {
		return fmt.Errorf("upstream http: %w", err)
	}
	bl, err := net.Listen("tcp", u.bulkAddr)
	if err != nil {
		hl.Close()
		return fmt.Errorf("upstream bulk: %w", err)
	}
	u.httpAddr, u.bulkAddr = hl.Addr().String(), bl.Addr().String()
	u.lns, u.conns = []net.Listener{hl, bl}, map[*net.TCPConn]bool{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /blob", u.blob)
	mux.HandleFunc("POST /sum", u.sum)
	u.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ConnState: u.httpConnState}
	u.wg.Add(2)
	go func() { defer u.wg.Done(); u.srv.Serve(hl) }()
	go func() { defer u.wg.Done(); u.acceptBulk(bl) }()
	return nil
}

// stop resets every connection and closes the listeners; bounded by the
// handlers' deadlines.
func (u *upstream) stop() {
	u.mu.Lock()
	for _, ln := range u.lns {
		ln.Close()
	}
	for c := range u.conns {
		c.SetLinger(0)
		c.Close()
	}
	srv := u.srv
	u.mu.Unlock()
	srv.Close()
	u.wg.Wait()
}

func (u *upstream) track(c net.Conn, on bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if on {
		u.conns[tc] = true
	} else {
		delete(u.conns, tc)
	}
}

func (u *upstream) httpConnState(c net.Conn, s http.ConnState) {
	switch s {
	case http.StateNew:
		u.track(c, true)
	case http.StateClosed, http.StateHijacked:
		u.track(c, false)
	}
}

// blob answers GET /blob?size=&seed= with the payload and its SHA-256 in
// X-Sha256.
func (u *upstream) blob(w http.ResponseWriter, r *http.Request) {
	size, err1 := strconv.Atoi(r.URL.Query().Get("size"))
	seed, err2 := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
	if err1 != nil || err2 != nil || size < 0 || size > maxBlob {
		http.Error(w, "bad size or seed", http.StatusBadRequest)
		return
	}
	body := make([]byte, size)
	io.ReadFull(payload(seed), body)
	sum := sha256.Sum256(body)
	w.Header().Set("X-Sha256", hex.EncodeToString(sum[:]))
	w.Header().Set("Content-Length", strconv.Itoa(size))
	w.Write(body)
}

// sum answers POST /sum with the hex SHA-256 of the body. A body that ends
// cleanly before its Content-Length is a server-side clean cut.
func (u *upstream) sum(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	h := sha256.New()
	if _, err := io.Copy(h, r.Body); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			u.led.server(u.exporter, start, "POST /sum body ended cleanly before its Content-Length", true)
		}
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	io.WriteString(w, hex.EncodeToString(h.Sum(nil)))
}

func (u *upstream) acceptBulk(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed by stop
		}
		u.track(c, true)
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			defer u.track(c, false)
			tc := c.(*net.TCPConn)
			if !u.serveBulk(tc) {
				tc.SetLinger(0) // a failure must reach the client as one, not as a short answer
			}
			tc.Close()
		}()
	}
}

// serveBulk answers one stream-protocol request and reports whether it
// finished its answer. Clean EOFs where bytes were due are recorded as
// server-side cuts; other failures are the client's to see and count.
func (u *upstream) serveBulk(c *net.TCPConn) bool {
	start := time.Now()
	c.SetDeadline(start.Add(serverTTL))
	var hdr [headerLen]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			u.led.server(u.exporter, start, "bulk header cut by a clean EOF", true)
		}
		return false
	}
	size, seed := binary.BigEndian.Uint64(hdr[1:9]), binary.BigEndian.Uint64(hdr[9:17])
	switch hdr[0] {
	case 'D':
		if n, err := c.Read(hdr[:1]); n > 0 {
			u.led.server(u.exporter, start, "data after a download header", false)
			return false
		} else if err != io.EOF {
			return false // the client half-closes after the header
		}
		h := sha256.New()
		if _, err := io.CopyN(io.MultiWriter(c, h), payload(seed), int64(size)); err != nil {
			return false
		}
		_, err := c.Write(h.Sum(nil))
		return err == nil
	case 'U':
		h := sha256.New()
		n, err := io.CopyN(h, c, int64(size))
		status := byte('K')
		switch {
		case err == io.EOF:
			status = 'S'
			u.led.server(u.exporter, start, fmt.Sprintf("upload ended cleanly after %d of %d bytes", n, size), true)
		case err != nil:
			return false
		default:
			if m, err := c.Read(hdr[:1]); m > 0 {
				status = 'X'
				u.led.server(u.exporter, start, "data after an upload's last byte", false)
			} else if err != io.EOF {
				return false
			}
		}
		var reply [replyLen]byte
		reply[0] = status
		binary.BigEndian.PutUint64(reply[1:9], uint64(n))
		copy(reply[9:], h.Sum(nil))
		_, err = c.Write(reply[:])
		return err == nil
	}
	u.led.server(u.exporter, start, fmt.Sprintf("unknown bulk op %q", hdr[0]), false)
	return false
}
