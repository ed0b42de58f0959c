package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// flow is one direction of service: clients connect to the importer's
// forwards, the other daemon dials the upstream servers.
type flow struct {
	name               string
	importer           string // site name
	httpAddr, bulkAddr string // the importer's forward listeners
}

// traffic runs the client workers: a fixed set, so concurrency is bounded.
type traffic struct {
	led  *ledger
	gate *gate

	mu      sync.Mutex // guards clients
	clients []*http.Client
}

// Transfer sizes: HTTP bodies up to maxBlob, medium and large bulk
// transfers, each direction picked at random.
const (
	mediumMin, mediumMax = 256 << 10, 8 << 20
	largeMin, largeMax   = 32 << 20, 128 << 20
	retryPause           = 100 * time.Millisecond // after a failed transfer
)

// result is one finished transfer.
type result struct {
	kind string // http, medium, large
	f    *flow
	out  outcome
	n    int64 // payload bytes
	err  error
}

// job makes one transfer.
type job func(*rand.Rand) result

// run starts the workers for flows (the first is the main one and gets
// more) and returns when ctx ends and every worker has returned.
func (t *traffic) run(ctx context.Context, flows []*flow, seed uint64) {
	var wg sync.WaitGroup
	worker := func(j job) {
		seed++
		rng := rand.New(rand.NewPCG(seed, 0x50a4))
		wg.Go(func() {
			for t.gate.enter(ctx) {
				start := time.Now()
				r := j(rng)
				t.led.record(r.f.name, r.kind, r.f.importer, start, r.out, r.n, r.err)
				t.gate.leave()
				if r.out != done {
					sleepCtx(ctx, retryPause)
				}
			}
		})
	}
	for i, f := range flows {
		worker(t.httpWorker(f, true))
		worker(t.bulkWorker(f, "medium", mediumMin, mediumMax))
		if i == 0 {
			worker(t.httpWorker(f, false))
			worker(t.bulkWorker(f, "large", largeMin, largeMax))
		}
	}
	wg.Wait()
}

// closeIdle closes the HTTP clients' idle keep-alive connections, so a
// quiet daemon holds no stream.
func (t *traffic) closeIdle() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.clients {
		c.CloseIdleConnections()
	}
}

// httpWorker makes small GET /blob and POST /sum requests, on keep-alive
// connections or one connection per request.
func (t *traffic) httpWorker(f *flow, keepAlive bool) job {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		Proxy: nil, DisableCompression: true, DisableKeepAlives: !keepAlive,
		MaxIdleConnsPerHost: 2, IdleConnTimeout: 5 * time.Second, // the client, not the server, ends idle connections
	}}
	t.mu.Lock()
	t.clients = append(t.clients, c)
	t.mu.Unlock()
	base := "http://" + f.httpAddr
	return func(rng *rand.Rand) result {
		size := rng.IntN(maxBlob + 1)
		r := result{kind: "http", f: f, n: int64(size)}
		if rng.IntN(2) == 0 {
			r.out, r.err = getBlob(c, base, size, rng.Uint64())
		} else {
			r.out, r.err = postSum(c, base, size, rng.Uint64())
		}
		return r
	}
}

func getBlob(c *http.Client, base string, size int, seed uint64) (outcome, error) {
	resp, err := c.Get(fmt.Sprintf("%s/blob?size=%d&seed=%d", base, size, seed))
	if err != nil {
		return httpFailure(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return httpFailure(fmt.Errorf("GET /blob body after %d of %d bytes: %w", len(body), size, err))
	case resp.StatusCode != http.StatusOK:
		return failed, fmt.Errorf("GET /blob: %s", resp.Status)
	}
	sum := sha256.Sum256(body)
	if len(body) != size || resp.Header.Get("X-Sha256") != hex.EncodeToString(sum[:]) {
		return mismatch, fmt.Errorf("GET /blob: %d of %d bytes, SHA-256 %x, server sent %s", len(body), size, sum, resp.Header.Get("X-Sha256"))
	}
	return done, nil
}

func postSum(c *http.Client, base string, size int, seed uint64) (outcome, error) {
	body := make([]byte, size)
	io.ReadFull(payload(seed), body)
	resp, err := c.Post(base+"/sum", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		return httpFailure(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return httpFailure(fmt.Errorf("POST /sum answer: %w", err))
	case resp.StatusCode != http.StatusOK:
		return failed, fmt.Errorf("POST /sum: %s", resp.Status)
	}
	if sum := sha256.Sum256(body); string(got) != hex.EncodeToString(sum[:]) {
		return mismatch, fmt.Errorf("POST /sum of %d bytes: server hashed %q, client %x", size, got, sum)
	}
	return done, nil
}

// httpFailure tells a clean end of the connection where an answer was due
// (EOF, or fewer body bytes than Content-Length) from any other error.
func httpFailure(err error) (outcome, error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return cleanCut, err
	}
	return failed, err
}

// bulkWorker makes stream-protocol transfers of sizes in [lo, hi).
func (t *traffic) bulkWorker(f *flow, kind string, lo, hi int64) job {
	return func(rng *rand.Rand) result {
		r := result{kind: kind, f: f, n: lo + rng.Int64N(hi-lo)}
		r.out, r.err = bulk(f.bulkAddr, rng.IntN(2) == 0, r.n, rng.Uint64())
		return r
	}
}

// bulk makes one upload or download of size bytes.
func bulk(addr string, upload bool, size int64, seed uint64) (outcome, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return failed, err
	}
	c := conn.(*net.TCPConn)
	defer c.Close()
	// Generous: a transfer stalled by a path pause still finishes.
	c.SetDeadline(time.Now().Add(30*time.Second + time.Duration(size/(4<<20))*time.Second))
	var hdr [headerLen]byte
	hdr[0] = 'D'
	if upload {
		hdr[0] = 'U'
	}
	binary.BigEndian.PutUint64(hdr[1:9], uint64(size))
	binary.BigEndian.PutUint64(hdr[9:17], seed)
	if _, err := c.Write(hdr[:]); err != nil {
		return failed, err
	}
	if upload {
		return bulkUp(c, size, seed)
	}
	return bulkDown(c, size)
}

func bulkDown(c *net.TCPConn, size int64) (outcome, error) {
	if err := c.CloseWrite(); err != nil {
		return failed, err
	}
	h := sha256.New()
	n, err := io.CopyN(h, c, size)
	if err != nil {
		return readFailure(fmt.Errorf("download: %d of %d bytes: %w", n, size, err))
	}
	var sum [sha256.Size]byte
	if _, err := io.ReadFull(c, sum[:]); err != nil {
		return readFailure(fmt.Errorf("download of %d bytes: its SHA-256: %w", size, err))
	}
	if !bytes.Equal(sum[:], h.Sum(nil)) {
		return mismatch, fmt.Errorf("download of %d bytes: SHA-256 %x, server sent %x", size, h.Sum(nil), sum)
	}
	return expectEOF(c, "download")
}

func bulkUp(c *net.TCPConn, size int64, seed uint64) (outcome, error) {
	h := sha256.New()
	if n, err := io.CopyN(io.MultiWriter(c, h), payload(seed), size); err != nil {
		return failed, fmt.Errorf("upload: %d of %d bytes sent: %w", n, size, err)
	}
	if err := c.CloseWrite(); err != nil {
		return failed, err
	}
	var reply [replyLen]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return readFailure(fmt.Errorf("upload of %d bytes: answer: %w", size, err))
	}
	got := binary.BigEndian.Uint64(reply[1:9])
	if reply[0] != 'K' || got != uint64(size) || !bytes.Equal(reply[9:], h.Sum(nil)) {
		return mismatch, fmt.Errorf("upload of %d bytes: server status %q, %d bytes, SHA-256 %x, client %x", size, reply[0], got, reply[9:], h.Sum(nil))
	}
	return expectEOF(c, "upload")
}

// expectEOF reads the end of an answer: a FIN and nothing else.
func expectEOF(c *net.TCPConn, what string) (outcome, error) {
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		return mismatch, fmt.Errorf("%s: data after the answer", what)
	case err != io.EOF:
		return failed, fmt.Errorf("%s: after the answer: %w", what, err)
	}
	return done, nil
}

func readFailure(err error) (outcome, error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return cleanCut, err
	}
	return failed, err
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// gate lets the workers start transfers, or holds them for a quiet point.
type gate struct {
	mu       sync.Mutex // guards the following
	paused   bool
	resumed  chan struct{} // closed by resume
	inflight int
}

// enter waits while the gate is paused and counts a transfer in; false
// when ctx ended.
func (g *gate) enter(ctx context.Context) bool {
	for {
		if ctx.Err() != nil {
			return false
		}
		g.mu.Lock()
		if !g.paused {
			g.inflight++
			g.mu.Unlock()
			return true
		}
		ch := g.resumed
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

func (g *gate) leave() {
	g.mu.Lock()
	g.inflight--
	g.mu.Unlock()
}

// pause holds new transfers and waits up to timeout for the running ones;
// it reports whether they all ended.
func (g *gate) pause(timeout time.Duration) bool {
	g.mu.Lock()
	g.paused, g.resumed = true, make(chan struct{})
	g.mu.Unlock()
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		g.mu.Lock()
		n := g.inflight
		g.mu.Unlock()
		if n == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func (g *gate) resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.paused {
		g.paused = false
		close(g.resumed)
	}
}
