package apiguard

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkMatch is the match path of one request without validation:
// kin-openapi's router, the peer's allow list and its rate bucket. The
// router allocates the path-parameter map and the match's strings
// (routers/legacy FindRoute: a map, and "METHOD path" concatenated for
// the trie), so this path is not allocation-free.
func BenchmarkMatch(b *testing.B) {
	p := testPolicy(b, 1<<20)
	p.ValidateRequest = false
	p.Limits[p.Spec.Operation("getPayment")] = Rate{PerSecond: 1e12, Burst: 1 << 30}
	g := NewGuard(p, nil)
	c := &conn{g: g, peer: "bank-a"}
	req, _ := http.ReadRequest(bufio.NewReader(strings.NewReader("GET /v1/payments/42 HTTP/1.1\r\nHost: p\r\n\r\n")))
	b.ReportAllocs()
	for b.Loop() {
		if d := c.decide(p, req, nil); d.status != 0 {
			b.Fatal(d.reason)
		}
	}
}

// BenchmarkMatchValidate adds parameter validation (validate: [request])
// for a GET with a path parameter: openapi3filter decodes the parameter
// and visits its schema, allocating for both.
func BenchmarkMatchValidate(b *testing.B) {
	p := testPolicy(b, 1<<20)
	g := NewGuard(p, nil)
	c := &conn{g: g, peer: "bank-a"}
	req, _ := http.ReadRequest(bufio.NewReader(strings.NewReader("GET /v1/payments/42 HTTP/1.1\r\nHost: p\r\n\r\n")))
	b.ReportAllocs()
	for b.Loop() {
		if d := c.decide(p, req, nil); d.status != 0 {
			b.Fatal(d.reason)
		}
	}
}

// BenchmarkMatchValidateBody validates a 1 KiB-class JSON body against its
// schema (createPayment): buffering, JSON decoding and the schema visit.
func BenchmarkMatchValidateBody(b *testing.B) {
	p := testPolicy(b, 1<<20)
	g := NewGuard(p, nil)
	c := &conn{g: g, peer: "bank-a"}
	body := `{"amount":1200,"currency":"EUR","creditor":"ACME","reference":"` + strings.Repeat("r", 100) + `"}`
	raw := post("/v1/payments", body, "Idempotency-Key: k-12345678\r\n")
	var bw bufio.Writer
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		req, _ := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if d := c.decide(p, req, &bw); d.status != 0 {
			b.Fatal(d.reason, d.detail)
		}
		g.budget("bank-a").Add(-req.ContentLength)
	}
}

// BenchmarkRequestReader is the parser: header block bounds and smuggling
// checks, then net/http's ReadRequest (which allocates the Request, its
// URL and header map).
func BenchmarkRequestReader(b *testing.B) {
	raw := []byte("GET /v1/payments/42?limit=10 HTTP/1.1\r\nHost: payments\r\nAccept: application/json\r\nUser-Agent: bench\r\n\r\n")
	var r bytes.Reader
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		r.Reset(raw)
		req, err := NewRequestReader(&r).Next()
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, req.Body)
	}
}

// rawUpstream answers every request on a kept-alive connection with a
// fixed 1 KiB JSON response, parsing with net/http as a server would.
func rawUpstream(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n\r\n" + strings.Repeat("x", 1024))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// benchRequests sends GET /v1/payments/42 one at a time on rw and reads
// each response.
func benchRequests(b *testing.B, rw io.ReadWriter) {
	req := []byte("GET /v1/payments/42 HTTP/1.1\r\nHost: payments\r\nAccept: application/json\r\n\r\n")
	br := bufio.NewReader(rw)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rw.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
	}
}

// BenchmarkRequestDirect is a request/response with a 1 KiB answer over
// loopback TCP, without the guard: the baseline of BenchmarkRequestGuarded.
func BenchmarkRequestDirect(b *testing.B) {
	c, err := net.Dial("tcp", rawUpstream(b))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	benchRequests(b, c)
}

// BenchmarkRequestGuarded is the same through a guard with validate:
// [request] (the pump's side of the pipes driven directly): the
// difference to BenchmarkRequestDirect is what the guard adds per request.
func BenchmarkRequestGuarded(b *testing.B) {
	c, err := net.Dial("tcp", rawUpstream(b))
	if err != nil {
		b.Fatal(err)
	}
	g := NewGuard(testPolicy(b, 1<<20), nil)
	gc := g.Wrap("bank-a", c.(*net.TCPConn))
	defer gc.Close()
	benchRequests(b, gc)
}
