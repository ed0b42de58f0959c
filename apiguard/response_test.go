package apiguard

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// partnerHandler is a partner upstream that breaks its contract on
// purpose for some payment ids.
func partnerHandler(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/payments/1":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":1,"amount":5,"status":"settled"}`)
	case "/v1/payments/2": // a property the schema forbids, carrying a value that must not leak
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":2,"amount":5,"status":"settled","iban":"DE89SECRETVALUE"}`)
	case "/v1/payments/3": // wrong type
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"SECRETVALUE","amount":5,"status":"settled"}`)
	case "/v1/payments/4": // a status the operation does not declare
		w.WriteHeader(http.StatusTeapot)
	case "/v1/payments/5": // not JSON
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `SECRETVALUE`)
	case "/v1/payments/6": // two types: checked as the first, a client may read the last
		w.Header()["Content-Type"] = []string{"application/json", "text/html"}
		io.WriteString(w, `{"id":6,"amount":5,"status":"settled"}`)
	case "/v1/payments/7": // a type the operation does not declare
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, `<p>SECRETVALUE</p>`)
	case "/v1/statements/1": // a long binary body: no schema, streams
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(make([]byte, 3<<20))
	case "/v1/health":
		io.WriteString(w, "ok")
	default:
		http.NotFound(w, r)
	}
}

// checkedPair runs a CheckedConn between a test client and upstream the
// way the tunnel's pump does (two copies, CloseWrite at the end of the
// responses). It returns the client's side.
func checkedPair(t *testing.T, upstream string, p *ResponsePolicy, stats *ResponseStats, report func(ResponseFinding)) net.Conn {
	t.Helper()
	noCheckerLeak(t)
	return checkedPairOnly(t, upstream, p, stats, report)
}

// localPair is a connected TCP pair on 127.0.0.1: the client's end and
// the one the checker gets, as the forward's listener accepts it.
func localPair(t *testing.T) (client net.Conn, local *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return client, c.(*net.TCPConn)
}

// checkedPairOnly is checkedPair without its leak check, for a test that
// opens several (and calls noCheckerLeak once, before the first).
func checkedPairOnly(t *testing.T, upstream string, p *ResponsePolicy, stats *ResponseStats, report func(ResponseFinding)) net.Conn {
	t.Helper()
	client, local := localPair(t)
	up, err := net.Dial("tcp", upstream)
	if err != nil {
		t.Fatal(err)
	}
	cc := NewCheckedConn(local, p, stats, report)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(up, readerOnly{cc})
		up.(*net.TCPConn).CloseWrite()
	}()
	go func() {
		defer wg.Done()
		io.Copy(writerOnly{cc}, up)
		cc.CloseWrite()
	}()
	t.Cleanup(func() {
		client.Close()
		up.Close()
		cc.Close()
		wg.Wait()
	})
	return client
}

func loadResponseSpec(t *testing.T) *Spec {
	t.Helper()
	s, err := LoadSpec("testdata/partner-responses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestResponseCheck: pipelined requests on one keep-alive connection get
// their responses in order; each broken one is found with the right reason
// and no value of the body; block replaces it by a 502 problem response and
// the connection goes on; a response without an operation and a long body
// with no schema pass unchanged.
func TestResponseCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(partnerHandler))
	defer srv.Close()
	spec := loadResponseSpec(t)
	paths := []string{"/v1/payments/1", "/v1/payments/2", "/v1/payments/3", "/v1/payments/4", "/v1/payments/5", "/v1/payments/6", "/v1/payments/7", "/v1/nowhere", "/v1/statements/1", "/v1/health"}
	want := map[string]string{"/v1/payments/2": ReasonUndeclaredProperty, "/v1/payments/3": ReasonSchemaViolation,
		"/v1/payments/4": ReasonUndeclaredStatus, "/v1/payments/5": ReasonUndecodableBody, "/v1/payments/6": ReasonDuplicateContentType,
		"/v1/payments/7": ReasonContentType}
	for _, block := range []bool{false, true} {
		t.Run(fmt.Sprintf("block=%v", block), func(t *testing.T) {
			var mu sync.Mutex
			var found []ResponseFinding
			stats := &ResponseStats{}
			c := checkedPair(t, srv.Listener.Addr().String(), &ResponsePolicy{Peer: "bank-b", Service: "payments", Spec: spec, Block: block}, stats,
				func(f ResponseFinding) { mu.Lock(); found = append(found, f); mu.Unlock() })
			c.SetDeadline(time.Now().Add(10 * time.Second))
			var reqs strings.Builder
			for _, p := range paths { // pipelined: all requests before any response is read
				fmt.Fprintf(&reqs, "GET %s HTTP/1.1\r\nHost: partner\r\n\r\n", p)
			}
			if _, err := io.WriteString(c, reqs.String()); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			for _, p := range paths {
				resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatalf("%s: body: %v", p, err)
				}
				if reason, bad := want[p]; bad && block {
					if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Content-Type") != "application/problem+json" ||
						!strings.Contains(string(body), reason) || strings.Contains(string(body), "SECRET") {
						t.Errorf("%s: %d %q, want a 502 problem naming %s", p, resp.StatusCode, body, reason)
					}
					continue
				}
				if resp.StatusCode == http.StatusBadGateway {
					t.Errorf("%s: replaced: %s", p, body)
				}
				if p == "/v1/statements/1" && len(body) != 3<<20 {
					t.Errorf("%s: %d bytes", p, len(body))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(found) != len(want) {
				t.Fatalf("findings %+v, want %d", found, len(want))
			}
			for i, f := range found {
				p := paths[i+1]
				if f.Reason != want[p] || f.Operation != "getPayment" || f.Route != "/payments/{id}" || f.Method != "GET" || f.Blocked != block {
					t.Errorf("%s: finding %+v, want %s", p, f, want[p])
				}
				if strings.Contains(fmt.Sprintf("%+v", f), "SECRET") {
					t.Errorf("a body value leaked into %+v", f)
				}
			}
			if found[1].Keyword != "type" {
				t.Errorf("the wrong type is keyword %q", found[1].Keyword)
			}
			s := stats.Snapshot()
			wantBlocked := uint64(0)
			if block {
				wantBlocked = 6
			}
			if s["valid"] != 3 || s["invalid"] != 6 || s["blocked"] != wantBlocked || s["unchecked_no_operation"] != 1 {
				t.Errorf("counters %v", s)
			}
		})
	}
}

// TestResponseCheckNotHTTP: a response that is not HTTP/1.1 is found as
// malformed; with block the client gets a 502 and the connection ends.
func TestResponseCheckNotHTTP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "SSH-2.0-OpenSSH_9.6 SECRETVALUE\r\n\r\n")
		time.Sleep(time.Second)
	}()
	var found []ResponseFinding
	stats := &ResponseStats{}
	c := checkedPair(t, ln.Addr().String(), &ResponsePolicy{Peer: "bank-b", Service: "payments", Spec: loadResponseSpec(t), Block: true}, stats,
		func(f ResponseFinding) { found = append(found, f) })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /v1/payments/1 HTTP/1.1\r\nHost: partner\r\n\r\n")
	out, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(out), "HTTP/1.1 502") || strings.Contains(string(out), "SECRET") {
		t.Errorf("client got %q", out)
	}
	if len(found) != 1 || found[0].Reason != ReasonMalformedResponse || found[0].Operation != "getPayment" {
		t.Errorf("findings %+v", found)
	}
}

// noCheckerLeak fails t if a response checker's goroutine outlives the
// test (registered first, so it runs after the connections are closed).
func noCheckerLeak(t *testing.T) {
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			if !strings.Contains(stacks, "apiguard.(*CheckedConn).re") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("a response checker goroutine outlived its connection:\n%s", stacks)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// TestResponseCheckBudget: the response bodies a forward holds for
// validation are bounded (BudgetFactor x (max_body+1) over its connections):
// with the budget in use a report-only forward passes the response
// unchecked, a blocking one answers 502 after waiting 1 s; both count it.
func TestResponseCheckBudget(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(partnerHandler))
	defer srv.Close()
	spec := loadResponseSpec(t)
	for _, block := range []bool{false, true} {
		t.Run(fmt.Sprintf("block=%v", block), func(t *testing.T) { checkBudget(t, srv.Listener.Addr().String(), spec, block) })
	}
}

func checkBudget(t *testing.T, upstream string, spec *Spec, block bool) {
	stats := &ResponseStats{}
	stats.buffered.Store(BudgetFactor * (1<<10 + 1)) // every byte of the budget taken by other connections
	c := checkedPair(t, upstream, &ResponsePolicy{Peer: "bank-b", Service: "payments", Spec: spec, Block: block, MaxBody: 1 << 10}, stats, nil)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /v1/payments/2 HTTP/1.1\r\nHost: partner\r\n\r\nGET /v1/health HTTP/1.1\r\nHost: partner\r\n\r\n")
	br := bufio.NewReader(c)
	want := http.StatusOK
	if block {
		want = http.StatusBadGateway
	}
	for i, w := range []int{want, http.StatusOK} {
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != w {
			t.Errorf("block=%v response %d: %d, want %d", block, i, resp.StatusCode, w)
		}
	}
	if s := stats.Snapshot(); s["unchecked_busy"] != 1 || s["invalid"] != 0 || s["valid"] != 1 {
		t.Errorf("block=%v: %v", block, s)
	}
	if n := stats.buffered.Load(); n != BudgetFactor*(1<<10+1) {
		t.Errorf("block=%v: %d bytes reserved after the responses, want the %d taken before", block, n, BudgetFactor*(1<<10+1))
	}
}

// TestResponseCheckContinue: an informational response (100 Continue)
// reaches the client before the final one, which is checked as usual.
func TestResponseCheckContinue(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		io.Copy(io.Discard, req.Body)
		body := `{"id":7,"amount":5,"status":"pending"}`
		fmt.Fprintf(c, "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		time.Sleep(time.Second)
	}()
	stats := &ResponseStats{}
	c := checkedPair(t, ln.Addr().String(), &ResponsePolicy{Peer: "bank-b", Service: "payments", Spec: loadResponseSpec(t), Block: true}, stats, nil)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST /v1/payments HTTP/1.1\r\nHost: partner\r\nContent-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("first line %q, %v: want the 100 before the body is sent", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, "{}")
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusCreated || stats.Valid.Load() != 1 {
		t.Errorf("final response %d, counters %v", resp.StatusCode, stats.Snapshot())
	}
}
