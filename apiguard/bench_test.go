package apiguard

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkMatch is the match path of one request without validation:
// kin-openapi's router, the peer's allow list and its rate bucket, for a
// path with a parameter. The guard's own part allocates nothing; the
// router allocates the path-parameter map and the match's strings
// (routers/legacy FindRoute: 5 allocations), which the guard cannot avoid
// for a templated path. A static path is remembered (BenchmarkMatchStatic).
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

// BenchmarkMatchStatic is the match path for an operation without
// parameters (GET /v1/health, rate-limited): 0 allocations, the router's
// match remembered per method and path.
func BenchmarkMatchStatic(b *testing.B) {
	p := testPolicy(b, 1<<20)
	p.Limits[p.Spec.Operation("health")] = Rate{PerSecond: 1e12, Burst: 1 << 30}
	g := NewGuard(p, nil)
	c := &conn{g: g, peer: "bank-a"}
	req, _ := http.ReadRequest(bufio.NewReader(strings.NewReader("GET /v1/health HTTP/1.1\r\nHost: p\r\n\r\n")))
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
		c.release()
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
	gc := wrap(g, "bank-a", c.(*net.TCPConn))
	defer gc.Close()
	benchRequests(b, gc)
}

// benchPolicy is bench/apiguard.go's guarded service: testdata/bench.yaml
// with validate: [request].
func benchPolicy(b testing.TB) *Policy {
	s, err := LoadSpec("testdata/bench.yaml")
	if err != nil {
		b.Fatal(err)
	}
	return &Policy{Service: "bench", Spec: s, ValidateRequest: true, Limits: map[*Operation]Rate{}}
}

// echoRequest is rr-api's request: POST /v1/echo with a 1 KiB JSON body
// that satisfies echo's schema.
var echoRequest = func() []byte {
	body := `{"data":"` + strings.Repeat("x", 1024-11) + `"}`
	return []byte("POST /v1/echo HTTP/1.1\r\nHost: target\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}()

// echoRequests sends rr-api's request one at a time on rw and reads each
// 1 KiB response.
func echoRequests(b *testing.B, rw io.ReadWriter) {
	br := bufio.NewReader(rw)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rw.Write(echoRequest); err != nil {
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

// BenchmarkEchoDirect is rr-api-1 without the guard: a 1 KiB JSON
// request and 1 KiB response over loopback TCP.
func BenchmarkEchoDirect(b *testing.B) {
	c, err := net.Dial("tcp", rawUpstream(b))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	echoRequests(b, c)
}

// BenchmarkEchoGuarded is rr-api-1 through the guard (validate: [request],
// so the body is buffered and checked against its schema): compare with
// BenchmarkEchoDirect in the same run.
func BenchmarkEchoGuarded(b *testing.B) {
	c, err := net.Dial("tcp", rawUpstream(b))
	if err != nil {
		b.Fatal(err)
	}
	g := NewGuard(benchPolicy(b), nil)
	gc := wrap(g, "bench", c.(*net.TCPConn))
	defer gc.Close()
	echoRequests(b, gc)
}

// upload sends one chunked upload of n 256 KiB chunks on rw (as
// bench/apiguard.go's bulk-api-up does) and reads the answer.
func upload(b *testing.B, rw io.ReadWriter, chunks int) {
	chunk := make([]byte, 256<<10)
	bw := bufio.NewWriterSize(rw, 64<<10)
	b.SetBytes(int64(len(chunk) * chunks))
	b.ReportAllocs()
	br := bufio.NewReader(rw)
	for b.Loop() {
		bw.WriteString("POST /v1/blobs HTTP/1.1\r\nHost: target\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		for range chunks {
			bw.WriteString(strconv.FormatInt(int64(len(chunk)), 16) + "\r\n")
			bw.Write(chunk)
			bw.WriteString("\r\n")
		}
		bw.WriteString("0\r\n\r\n")
		if err := bw.Flush(); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
	}
}

// BenchmarkUploadDirect is bulk-api-up without the guard: 16 MiB chunked
// uploads over loopback TCP.
func BenchmarkUploadDirect(b *testing.B) {
	c, err := net.Dial("tcp", rawUpstream(b))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	upload(b, c, 64)
}

// BenchmarkUploadGuarded is the same through the guard: the binary body is
// not validated and streams; compare with BenchmarkUploadDirect.
func BenchmarkUploadGuarded(b *testing.B) {
	c, err := net.Dial("tcp", rawUpstream(b))
	if err != nil {
		b.Fatal(err)
	}
	g := NewGuard(benchPolicy(b), nil)
	gc := wrap(g, "bench", c.(*net.TCPConn))
	defer gc.Close()
	upload(b, gc, 64)
}

// BenchmarkEchoGuardedNoValidate is BenchmarkEchoGuarded without
// validate: [request]: the body streams. The difference to
// BenchmarkEchoGuarded is the body's validation; the difference to
// BenchmarkEchoDirect is the guard's frame (the stream's two pipes and its
// goroutine, parsing, matching, writing the request and the answer anew).
func BenchmarkEchoGuardedNoValidate(b *testing.B) {
	c, err := net.Dial("tcp", rawUpstream(b))
	if err != nil {
		b.Fatal(err)
	}
	p := benchPolicy(b)
	p.ValidateRequest = false
	g := NewGuard(p, nil)
	gc := wrap(g, "bench", c.(*net.TCPConn))
	defer gc.Close()
	echoRequests(b, gc)
}

// echoParallel is rr-api-64's shape in one process: 64 connections (32
// per core), each one request at a time, direct or each through its own
// guarded stream. The machine's CPU is the limit, so the ratio of the two
// is what the guard's work per request costs in throughput.
func echoParallel(b *testing.B, guard bool) {
	addr := rawUpstream(b)
	g := NewGuard(benchPolicy(b), nil)
	b.SetParallelism(32)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		var rw io.ReadWriteCloser = c
		if guard {
			rw = wrap(g, "bench", c.(*net.TCPConn))
		}
		defer rw.Close()
		br := bufio.NewReader(rw)
		for pb.Next() {
			if _, err := rw.Write(echoRequest); err != nil {
				b.Error(err)
				return
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
		}
	})
}

// BenchmarkEchoParallelDirect is echoParallel without the guard.
func BenchmarkEchoParallelDirect(b *testing.B) { echoParallel(b, false) }

// BenchmarkEchoParallelGuarded is echoParallel through the guard.
func BenchmarkEchoParallelGuarded(b *testing.B) { echoParallel(b, true) }
