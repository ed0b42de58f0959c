package apiguard

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestGuardForwardedForm pins what the guard writes upstream, byte for
// byte where the order is fixed: the request line from the parsed request,
// Host first, the client's fields (never its framing ones), the guard's
// own framing (as net/http's Request.Write: none for a bodiless GET or
// DELETE, a chunked body re-chunked with its declared trailer), and no User-Agent
// the client did not send.
func TestGuardForwardedForm(t *testing.T) {
	noLeak(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var all strings.Builder
		br := bufio.NewReader(c)
		for range 3 { // answer each request once its head and body are in
			for {
				line, err := br.ReadString('\n')
				all.WriteString(line)
				if err != nil {
					got <- all.String()
					return
				}
				if line == "0\r\n" || (line == "\r\n" && !strings.Contains(all.String(), "chunked")) {
					if line == "0\r\n" {
						for {
							l, _ := br.ReadString('\n')
							all.WriteString(l)
							if l == "\r\n" || l == "" {
								break
							}
						}
					}
					break
				}
			}
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
		}
		got <- all.String()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p := testPolicy(t, 1<<10)
	p.ValidateRequest = false
	g := NewGuard(p, &events{})
	s := &stream{c: wrap(g, "bank-a", c.(*net.TCPConn))}
	s.br = bufio.NewReader(s.c)
	defer s.c.Close()
	s.send("GET /v1/payments/42?x=1 HTTP/1.1\r\nHost: p\r\nAccept: a/b\r\n\r\n" +
		"DELETE /v1/payments/42 HTTP/1.1\r\nHost: p\r\n\r\n" +
		"POST /v1/accounts/A1/statements HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n" +
		"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")
	for range 3 {
		if r := s.read(t); r.StatusCode != 200 {
			t.Fatalf("status %d: %s", r.StatusCode, bodyOf(r))
		}
	}
	var wire string
	select {
	case wire = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("upstream saw nothing")
	}
	want := "GET /v1/payments/42?x=1 HTTP/1.1\r\nHost: p\r\nAccept: a/b\r\n\r\n" +
		"DELETE /v1/payments/42 HTTP/1.1\r\nHost: p\r\n\r\n" +
		"POST /v1/accounts/A1/statements HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
	if !strings.HasPrefix(wire, want) {
		t.Fatalf("upstream saw\n%q\nwant it to start with\n%q", wire, want)
	}
	// The body's chunking is the guard's (one chunk per read), its bytes
	// the client's, the declared trailer after it.
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(wire[strings.Index(wire, "POST "):])))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(req.Body)
	if err != nil || string(body) != "abcde" || req.Trailer.Get("X-Sum") != "5" {
		t.Fatalf("upstream body %q (%v), trailer %v", body, err, req.Trailer)
	}
	if strings.Contains(wire, "User-Agent") || strings.Contains(wire, "ext=1") {
		t.Fatalf("upstream saw a field or extension the client did not send or the guard must not pass: %q", wire)
	}
}

// TestGuardNothingToValidate: with validate: [request], an operation with
// no parameters and no body schema (health) costs what it costs without
// validation: kin-openapi's validator, which would only run the no-op
// authentication check, is not called for it.
func TestGuardNothingToValidate(t *testing.T) {
	p := testPolicy(t, 1<<10)
	c := &conn{g: NewGuard(p, nil), peer: "bank-a"}
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET /v1/health HTTP/1.1\r\nHost: p\r\n\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	allocs := func(validate bool) float64 {
		p.ValidateRequest = validate
		return testing.AllocsPerRun(100, func() {
			if d := c.decide(p, req, nil); d.status != 0 {
				t.Fatal(d.reason)
			}
		})
	}
	if with, without := allocs(true), allocs(false); with != without {
		t.Errorf("decide allocates %v times with validation, %v without: the validator ran for nothing", with, without)
	}
}

// TestGuardResponseForm pins what the client gets back: a body of known
// length and a chunked one (re-chunked, its declared trailer kept) in the
// guard's own form, upstream's fields without its framing ones, a reason
// phrase with a control byte replaced, and a 204 through net/http's
// Response.Write (the shapes the guard leaves to it).
func TestGuardResponseForm(t *testing.T) {
	noLeak(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	answers := []string{
		"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 299 Odd\x01\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3;e=1\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nX-B: 2\r\n\r\n",
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for _, a := range answers {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			c.Write([]byte(a))
		}
		io.Copy(io.Discard, br)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p := testPolicy(t, 1<<10)
	p.ValidateRequest = false
	g := NewGuard(p, &events{})
	gc := wrap(g, "bank-a", c.(*net.TCPConn))
	defer gc.Close()
	go gc.Write([]byte("GET /v1/health HTTP/1.1\r\nHost: p\r\n\r\nGET /v1/health HTTP/1.1\r\nHost: p\r\n\r\nGET /v1/health HTTP/1.1\r\nHost: p\r\n\r\n"))
	want := "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello" +
		"HTTP/1.1 299 status code 299\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n" +
		"HTTP/1.1 204 No Content\r\nX-B: 2\r\n\r\n"
	got := make([]byte, len(want))
	gc.SetLinger(0)
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(gc, got); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("read: %v (got %q)", err, got)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("timeout; got %q", got)
	}
	if string(got) != want {
		t.Fatalf("client got\n%q\nwant\n%q", got, want)
	}
}

// TestGuardStaticMatchNoAllocs: the guard's match path (target and path
// checks, route, allow list, rate bucket) allocates nothing for an
// operation whose path has no parameters; the router's allocations (its
// parameter map and key strings, routers/legacy) are paid once per path.
func TestGuardStaticMatchNoAllocs(t *testing.T) {
	p := testPolicy(t, 1<<10)
	p.Limits[p.Spec.Operation("health")] = Rate{PerSecond: 1e12, Burst: 1 << 30}
	c := &conn{g: NewGuard(p, nil), peer: "bank-a"}
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET /v1/health HTTP/1.1\r\nHost: p\r\n\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() {
		if d := c.decide(p, req, nil); d.status != 0 || d.op != p.Spec.Operation("health") {
			t.Fatal(d.reason)
		}
	}); n != 0 {
		t.Errorf("decide allocates %v times per request on a static path, want 0", n)
	}
}

// TestGuardBudgetDefaults: a buffered body gives back exactly the budget it
// took, also when validation rewrote it (kin-openapi writes a schema's
// defaults into the body it forwards, which changes its length). Main gave
// back the rewritten length: the budget drifted below zero with every such
// request, and a peer's buffered bodies were no longer bounded (THREATS P5).
func TestGuardBudgetDefaults(t *testing.T) {
	noLeak(t)
	spec, err := ParseSpec("defaults.yaml", []byte(`openapi: 3.0.3
info: {title: defaults, version: "1"}
paths:
  /items:
    post:
      operationId: createItem
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, properties: {name: {type: string}, kind: {type: string, default: "a-long-default-kind"}}}
      responses:
        "201": {description: created}
`))
	if err != nil {
		t.Fatal(err)
	}
	up := newPayments(t)
	g := NewGuard(&Policy{Service: "items", Spec: spec, ValidateRequest: true, MaxBody: 1 << 10}, &events{})
	s := openStream(t, g, up, "bank-a")
	for range 3 {
		s.send(post("/items", `{"name":"x"}`))
		if r := s.read(t); r.StatusCode != 201 {
			t.Fatalf("status %d: %s", r.StatusCode, bodyOf(r))
		}
	}
	if got := up.seen(); len(got) != 3 || got[0].n <= int64(len(`{"name":"x"}`)) {
		t.Fatalf("upstream saw %+v: want the body with its default written in", got)
	}
	if n := g.budget("bank-a").Load(); n != 0 {
		t.Errorf("peer's budget holds %d bytes after its requests ended, want 0", n)
	}
}

// TestReasonPhrase: reasonPhrase is strings.CutPrefix(status,
// strconv.Itoa(code)+" ") where that finds the prefix.
func TestReasonPhrase(t *testing.T) {
	for _, status := range []string{"200 OK", "200 ", "200", "201 Created here", "099 x", "99 x", "0 x", "2000 x",
		"20 x", "200OK", "-1 x", "999 x", "404 Not Found", " 200 OK", "200  two", "x200 OK", ""} {
		for _, code := range []int{0, 20, 99, 200, 201, 404, 999, 2000, -1} {
			want, wok := strings.CutPrefix(status, strconv.Itoa(code)+" ")
			got, ok := reasonPhrase(status, code)
			if ok != wok || ok && got != want {
				t.Errorf("reasonPhrase(%q, %d) = %q, %v; want %q, %v", status, code, got, ok, want, wok)
			}
		}
	}
}
