package apiguard

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawPartner is a partner upstream that reads n requests' heads, then
// writes answer as it is and holds the connection open for hold.
func rawPartner(t *testing.T, n int, answer func(w io.Writer), hold time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for i := 0; i < n; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
		}
		answer(c)
		select {
		case <-done:
		case <-time.After(hold):
		}
	}()
	t.Cleanup(func() {
		close(done)
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// hostileSpec has an operation whose responses are a default without
// content (any status passes it) and one that declares 101 for an upgrade.
func hostileSpec(t *testing.T) *Spec {
	t.Helper()
	s, err := ParseSpec("hostile.yaml", []byte(`openapi: 3.0.3
info: {title: hostile, version: "1"}
paths:
  /any:
    get:
      operationId: getAny
      responses:
        default: {description: anything}
  /item:
    get:
      operationId: getItem
      responses:
        "200":
          description: an item
          content:
            application/json:
              schema: {type: object, additionalProperties: false, properties: {id: {type: integer}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// findingLog collects a checker's findings: report is its report func,
// found returns a copy of what was reported so far (under the lock, as
// the checker reports from its own goroutine).
func findingLog() (report func(ResponseFinding), found func() []ResponseFinding) {
	var mu sync.Mutex // guards log
	var log []ResponseFinding
	report = func(f ResponseFinding) { mu.Lock(); log = append(log, f); mu.Unlock() }
	found = func() []ResponseFinding {
		mu.Lock()
		defer mu.Unlock()
		return append([]ResponseFinding(nil), log...)
	}
	return report, found
}

// hostileConn is checkedPair on the partner up with hostileSpec's policy
// (peer bank-b, service payments, block as given, max_body maxBody: zero
// is the default) and a 5 s deadline on the client's end. It returns that
// end, the checker's stats and its findings so far.
func hostileConn(t *testing.T, up string, block bool, maxBody int64) (net.Conn, *ResponseStats, func() []ResponseFinding) {
	t.Helper()
	report, found := findingLog()
	stats := &ResponseStats{}
	c := checkedPair(t, up, &ResponsePolicy{Peer: "bank-b", Service: "payments", Spec: hostileSpec(t), Block: block, MaxBody: maxBody}, stats, report)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, stats, found
}

// TestResponseHeadBounded: a partner whose response head never ends (one
// endless header line) makes the checker hold at most its bound of it
// (THREATS P5; README: a 32 KiB response buffer per connection), then
// the response is malformed: a 502 when blocking, a finding without the
// header's value. Before, http.ReadResponse buffered the whole line.
func TestResponseHeadBounded(t *testing.T) {
	up := rawPartner(t, 1, func(w io.Writer) {
		io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: SECRETVALUE")
		pad := []byte(strings.Repeat("a", 64<<10))
		for i := 0; i < 64; i++ { // 4 MiB of one header line, never ended
			if _, err := w.Write(pad); err != nil {
				return
			}
		}
	}, 10*time.Second)
	c, _, findings := hostileConn(t, up, true, 0)
	io.WriteString(c, "GET /item HTTP/1.1\r\nHost: partner\r\n\r\n")
	out, err := io.ReadAll(c)
	if !strings.HasPrefix(string(out), "HTTP/1.1 502") || strings.Contains(string(out), "SECRET") {
		t.Fatalf("client got %q, %v: want a 502 once the head is over the bound", out, err)
	}
	found := findings()
	if len(found) != 1 || found[0].Reason != ReasonMalformedResponse || found[0].Operation != "getItem" {
		t.Errorf("findings %+v", found)
	}
}

// TestResponseUnaskedSwitch: a 101 to a request that asked for no
// upgrade (RFC 9110 7.8: a server must not switch then) is malformed; it
// does not turn the rest of the connection into unchecked bytes. Before,
// a 101 that passed its operation's check (a default response) made the
// checker pass everything after it unchecked, so a client that takes a
// 101 as a bodiless final response (Python's http.client) read the next,
// broken response as the answer to its next request, even with block.
func TestResponseUnaskedSwitch(t *testing.T) {
	up := rawPartner(t, 2, func(w io.Writer) {
		io.WriteString(w, "HTTP/1.1 101 Switching Protocols\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n{\"id\":1,\"iban\":\"SECRETVALU\"}")
	}, 10*time.Second)
	c, stats, findings := hostileConn(t, up, true, 0)
	io.WriteString(c, "GET /any HTTP/1.1\r\nHost: partner\r\n\r\nGET /item HTTP/1.1\r\nHost: partner\r\n\r\n")
	out, _ := io.ReadAll(c)
	if strings.Contains(string(out), "SECRET") || !strings.HasPrefix(string(out), "HTTP/1.1 502") {
		t.Fatalf("client got %q: want a 502 and nothing of the partner's bytes after the 101", out)
	}
	found := findings()
	if len(found) != 1 || found[0].Reason != ReasonMalformedResponse || found[0].Operation != "getAny" {
		t.Errorf("findings %+v", found)
	}
	if n := stats.UncheckedStream.Load(); n != 0 {
		t.Errorf("unchecked_not_http %d, want 0", n)
	}
}

// TestResponseAfterClose: a partner that answers with "Connection: close"
// and then goes on writing responses gets none of them to the client
// unchecked: they are paired and checked as any other (a pipelining
// client may read them). Before, every byte after a close response passed
// unchecked.
func TestResponseAfterClose(t *testing.T) {
	up := rawPartner(t, 2, func(w io.Writer) {
		io.WriteString(w, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"id\":1}"+
			"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n{\"id\":2,\"iban\":\"SECRETVALU\"}")
	}, 10*time.Second)
	c, _, findings := hostileConn(t, up, true, 0)
	io.WriteString(c, "GET /item HTTP/1.1\r\nHost: partner\r\n\r\nGET /item HTTP/1.1\r\nHost: partner\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("first response %d close=%v, want 200 with Connection: close", resp.StatusCode, resp.Close)
	}
	resp, err = http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadGateway || strings.Contains(string(rest), "SECRET") {
		t.Fatalf("after the close response the client got %d %q", resp.StatusCode, rest)
	}
	found := findings()
	if len(found) != 1 || found[0].Reason != ReasonUndeclaredProperty || !found[0].Blocked {
		t.Errorf("findings %+v, want the second response's undeclared_property", found)
	}
}

// TestResponseAskedSwitch: a 101 to a request that asked for an upgrade
// still switches: the other protocol's bytes reach the client as they are.
func TestResponseAskedSwitch(t *testing.T) {
	up := rawPartner(t, 1, func(w io.Writer) {
		io.WriteString(w, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi")
	}, 10*time.Second)
	c, _, _ := hostileConn(t, up, true, 0)
	io.WriteString(c, "GET /any HTTP/1.1\r\nHost: partner\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("response %v, %v: want the 101", resp, err)
	}
	frame := make([]byte, 4)
	if _, err := io.ReadFull(br, frame); err != nil || string(frame) != "\x81\x02hi" {
		t.Errorf("after the 101 the client got %q, %v", frame, err)
	}
}

// checkedLocal is a CheckedConn on a local TCP pair without a partner
// connection: the test writes the partner's bytes itself, as the pump's
// tunnel → client side does. It returns the client's end too. The test
// calls noCheckerLeak first.
func checkedLocal(t *testing.T, p *ResponsePolicy, stats *ResponseStats, report func(ResponseFinding)) (*CheckedConn, net.Conn) {
	t.Helper()
	client, local := localPair(t)
	cc := NewCheckedConn(local, p, stats, report)
	go io.Copy(io.Discard, readerOnly{cc}) // the pump's client → tunnel side
	t.Cleanup(func() {
		client.Close()
		cc.Close()
	})
	return cc, client
}

// TestResponseErrorNoPartnerBytes: the error a malformed response gives
// the pump (which the daemon logs as "forward failed") quotes none of the
// partner's bytes (THREATS P6). Before, it wrapped net/http's parse error,
// which quotes the status or header line.
func TestResponseErrorNoPartnerBytes(t *testing.T) {
	noCheckerLeak(t)
	for _, data := range []string{
		"SSH-2.0-OpenSSH_9.6 SECRETVALUE\r\n\r\n",
		"HTTP/1.1 200 OK\r\nSECRETVALUE without a colon\r\n\r\n",
		"HTTP/1.1 2x0 SECRETVALUE\r\n\r\n",
		// a trailer line net/http refuses, after a body the check reads
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\n{}\r\n0\r\nSECRETVALUE no colon\r\n\r\n",
	} {
		for _, block := range []bool{true, false} {
			cc, client := checkedLocal(t, &ResponsePolicy{Peer: "bank-b", Service: "payments", Spec: hostileSpec(t), Block: block}, &ResponseStats{}, nil)
			client.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(client, "GET /item HTTP/1.1\r\nHost: partner\r\n\r\n")
			_, werr := cc.Write([]byte(data)) // nil once the loop took the bytes, or the loop's error
			if werr != nil && strings.Contains(werr.Error(), "SECRET") {
				t.Errorf("block=%v %q: Write's error %v quotes the partner's bytes", block, data, werr)
			}
			if err := cc.CloseWrite(); err == nil || strings.Contains(err.Error(), "SECRET") {
				t.Errorf("block=%v %q: CloseWrite's error %v, want one without the partner's bytes", block, data, err)
			}
		}
	}
}

// TestResponseCloseNoFinding: a connection closed on the importing side
// (the client's reset, the daemon's shutdown) while a response head is on
// its way is no finding of the partner: no dyad.api.response_invalid.
// Before, the checker's own close read as a malformed response.
func TestResponseCloseNoFinding(t *testing.T) {
	report, findings := findingLog()
	stats := &ResponseStats{}
	noCheckerLeak(t)
	cc, client := checkedLocal(t, &ResponsePolicy{Peer: "bank-b", Service: "payments", Spec: hostileSpec(t), Block: true}, stats, report)
	io.WriteString(client, "GET /item HTTP/1.1\r\nHost: partner\r\n\r\n")
	if _, err := cc.Write([]byte("HTTP/1.1 200 OK\r\nContent-")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the loop waits in the head
	cc.Close()
	found := findings()
	if len(found) != 0 || stats.Invalid.Load() != 0 {
		t.Errorf("findings %+v, counters %v: want none for the checker's own close", found, stats.Snapshot())
	}
}

// TestResponseStatusLineNoBareCR: a partner's reason phrase with a bare
// CR (which net/http's parser keeps, and a client may take for the end of
// the line, reading a field the check never saw) reaches the client
// without it, in an interim response and a final one (report-only: a
// blocking forward drops a 103).
func TestResponseStatusLineNoBareCR(t *testing.T) {
	up := rawPartner(t, 1, func(w io.Writer) {
		io.WriteString(w, "HTTP/1.1 103 Early\rContent-Length: 0\r\n\r\n"+
			"HTTP/1.1 200 OK\rContent-Length: 0\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"id\":1}")
	}, 10*time.Second)
	c, stats, _ := hostileConn(t, up, false, 0)
	io.WriteString(c, "GET /item HTTP/1.1\r\nHost: partner\r\n\r\n")
	br := bufio.NewReader(c)
	var got []byte
	for i := 0; i < 2; i++ { // the two heads, up to their empty lines
		for {
			line, err := br.ReadBytes('\n')
			got = append(got, line...)
			if err != nil {
				t.Fatalf("after %q: %v", got, err)
			}
			if string(line) == "\r\n" {
				break
			}
		}
	}
	for i, b := range got {
		if b == '\r' && (i+1 == len(got) || got[i+1] != '\n') {
			t.Fatalf("client got a bare CR at %d of %q", i, got)
		}
	}
	if stats.Valid.Load() != 1 {
		t.Errorf("counters %v, want the final response valid", stats.Snapshot())
	}
}

// TestResponseOverMaxBody: a body with a schema over max_body, which the
// check cannot hold, does not reach the client of a blocking forward
// (502, as a body the budget could not take); a report-only forward passes
// it on. Both count it unchecked_over_max_body. Before, a partner padded a
// broken body past max_body (white space after the JSON value) and it
// reached the client of a blocking forward unchecked.
func TestResponseOverMaxBody(t *testing.T) {
	body := `{"id":1,"iban":"SECRETVALUE"}` + strings.Repeat(" ", 2<<10)
	for _, block := range []bool{true, false} {
		t.Run(fmt.Sprintf("block=%v", block), func(t *testing.T) { overMaxBody(t, body, block) })
	}
}

func overMaxBody(t *testing.T, body string, block bool) {
	{
		up := rawPartner(t, 2, func(w io.Writer) {
			for i := 0; i < 2; i++ {
				io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
			}
		}, 10*time.Second)
		c, stats, _ := hostileConn(t, up, block, 1<<10)
		io.WriteString(c, "GET /item HTTP/1.1\r\nHost: partner\r\n\r\nGET /item HTTP/1.1\r\nHost: partner\r\n\r\n")
		br := bufio.NewReader(c)
		for i := 0; i < 2; i++ { // the connection stays in step
			resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
			if err != nil {
				t.Fatalf("block=%v response %d: %v", block, i, err)
			}
			got, _ := io.ReadAll(resp.Body)
			want := http.StatusOK
			if block {
				want = http.StatusBadGateway
			}
			if resp.StatusCode != want || block && strings.Contains(string(got), "SECRET") {
				t.Errorf("block=%v response %d: %d %.80q, want %d", block, i, resp.StatusCode, got, want)
			}
		}
		if s := stats.Snapshot(); s["unchecked_over_max_body"] != 2 || s["invalid"] != 0 || s["valid"] != 0 {
			t.Errorf("block=%v: %v", block, s)
		}
		if n := chargedAfter(stats, 0); n != 0 {
			t.Errorf("block=%v: %d bytes of the budget still held", block, n)
		}
	}
}

// TestResponseSwitchToH2C: a partner that takes a client's offer of h2c
// (Java's HttpClient makes it on every plain-HTTP request by default)
// would go on in HTTP/2, whose responses the check cannot read: a blocking
// forward answers 502 instead and ends the connection, a report-only one
// passes the switch on; both count it unchecked_not_http. Before, every
// later response reached the client of a blocking forward unchecked.
func TestResponseSwitchToH2C(t *testing.T) {
	for _, block := range []bool{true, false} {
		t.Run(fmt.Sprintf("block=%v", block), func(t *testing.T) {
			up := rawPartner(t, 1, func(w io.Writer) {
				io.WriteString(w, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: H2C\r\n\r\n\x00\x00\x0bSECRETVALUE")
			}, 10*time.Second)
			c, stats, _ := hostileConn(t, up, block, 0)
			io.WriteString(c, "GET /any HTTP/1.1\r\nHost: partner\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQBAAAAAAIAAAAA\r\nUpgrade: h2c\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
			if err != nil {
				t.Fatal(err)
			}
			if block {
				rest, _ := io.ReadAll(br)
				if resp.StatusCode != http.StatusBadGateway || strings.Contains(string(rest), "SECRET") {
					t.Errorf("got %d then %q: want a 502 and none of the HTTP/2 bytes", resp.StatusCode, rest)
				}
			} else if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Errorf("got %d, want the 101 passed on", resp.StatusCode)
			}
			if n := stats.UncheckedStream.Load(); n != 1 {
				t.Errorf("counters %v, want unchecked_not_http 1", stats.Snapshot())
			}
		})
	}
}

// TestResponseUndeclaredRedirect: a redirect the operation does not
// declare (301, 307, 308: statuses kin-openapi's ValidateResponse never
// checks) is undeclared_status like any other, so a blocking forward's app
// does not follow the partner to an address of its choosing (OWASP API10:
// following redirects blindly). Declared by the operation (or its
// default), it passes as before.
func TestResponseUndeclaredRedirect(t *testing.T) {
	const redirect = "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/latest/meta-data/\r\nContent-Length: 0\r\n\r\n"
	up := rawPartner(t, 2, func(w io.Writer) { io.WriteString(w, redirect+redirect) }, 10*time.Second)
	c, stats, findings := hostileConn(t, up, true, 0)
	io.WriteString(c, "GET /item HTTP/1.1\r\nHost: partner\r\n\r\nGET /any HTTP/1.1\r\nHost: partner\r\n\r\n")
	br := bufio.NewReader(c)
	for i, want := range []int{http.StatusBadGateway, http.StatusTemporaryRedirect} {
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != want {
			t.Errorf("response %d: %d (Location %q), want %d", i, resp.StatusCode, resp.Header.Get("Location"), want)
		}
	}
	found := findings()
	if len(found) != 1 || found[0].Reason != ReasonUndeclaredStatus || found[0].Status != http.StatusTemporaryRedirect || found[0].Operation != "getItem" {
		t.Errorf("findings %+v, want getItem's undeclared 307", found)
	}
	if s := stats.Snapshot(); s["valid"] != 1 || s["blocked"] != 1 {
		t.Errorf("counters %v", s)
	}
}

// TestResponseInterimBlock: with block, an interim response other than
// 100 Continue (103 Early Hints, 102, 199) is dropped and counted, not
// passed on: a client that takes any 1xx but 100 for the final response
// (Python's http.client does) would read its status and fields, which no
// check saw, as the answer to its call, and the checked final response as
// the answer to its next call. Report-only passes them on.
func TestResponseInterimBlock(t *testing.T) {
	for _, block := range []bool{true, false} {
		t.Run(fmt.Sprintf("block=%v", block), func(t *testing.T) {
			up := rawPartner(t, 1, func(w io.Writer) {
				io.WriteString(w, "HTTP/1.1 103 Early Hints\r\nX-Smuggled: SECRETVALUE\r\n\r\nHTTP/1.1 199 Odd\r\n\r\n"+
					"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"id\":1}")
			}, 10*time.Second)
			c, stats, _ := hostileConn(t, up, block, 0)
			io.WriteString(c, "GET /item HTTP/1.1\r\nHost: partner\r\n\r\n")
			var got []byte
			buf := make([]byte, 4<<10)
			for !strings.HasSuffix(string(got), `{"id":1}`) { // up to the final response's body
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					t.Fatalf("after %q: %v", got, err)
				}
			}
			want, dropped := "HTTP/1.1 103 Early Hints\r\n", uint64(0)
			if block {
				want, dropped = "HTTP/1.1 200 OK\r\n", 2
			}
			if !strings.HasPrefix(string(got), want) || block && strings.Contains(string(got), "SECRET") {
				t.Errorf("client got %q, want it to start with %q", got, want)
			}
			if s := stats.Snapshot(); s["interim_dropped"] != dropped || s["valid"] != 1 {
				t.Errorf("counters %v, want interim_dropped %d", s, dropped)
			}
		})
	}
}

// TestResponseNoBodyInStep: what a partner sends as the "body" of a 204,
// a 304 or a HEAD response (which have none, whatever their
// Content-Length says) is read as the next response and checked against
// the next request's operation: a broken response hidden there is
// blocked; the client gets each bodiless response without the bytes.
func TestResponseNoBodyInStep(t *testing.T) {
	const smuggled = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n{\"id\":1,\"iban\":\"SECRETVALU\"}"
	cl := "Content-Length: " + strconv.Itoa(len(smuggled)) + "\r\n\r\n"
	up := rawPartner(t, 6, func(w io.Writer) {
		io.WriteString(w, "HTTP/1.1 204 No Content\r\n"+cl+smuggled+
			"HTTP/1.1 200 OK\r\n"+cl+smuggled+ // to HEAD
			"HTTP/1.1 304 Not Modified\r\n"+cl+smuggled)
	}, 10*time.Second)
	c, stats, _ := hostileConn(t, up, true, 0)
	methods := []string{"GET", "GET", "HEAD", "GET", "GET", "GET"}
	paths := []string{"/any", "/item", "/any", "/item", "/any", "/item"}
	for i := range methods {
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: partner\r\n\r\n", methods[i], paths[i])
	}
	br := bufio.NewReader(c)
	for i, want := range []int{204, 502, 200, 502, 304, 502} {
		resp, err := http.ReadResponse(br, &http.Request{Method: methods[i]})
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want || strings.Contains(string(body), "SECRET") {
			t.Errorf("response %d: %d %q, want %d", i, resp.StatusCode, body, want)
		}
	}
	if s := stats.Snapshot(); s["blocked"] != 3 {
		t.Errorf("counters %v, want the three hidden responses blocked", s)
	}
}

// TestResponseGzipChecked: a body with Content-Encoding gzip (what a
// partner sends a client that accepts it, as Go's http.Client and Python's
// requests do by default) is checked as what it encodes, at most max_body
// of it, and passed on as it came: a valid one passes, a broken one is
// found, a gzip bomb is over max_body (502 with block), bytes that are not
// gzip are undecodable_body. Before, the check read the compressed bytes
// as JSON: every gzip response was undecodable_body, 502 with block.
func TestResponseGzipChecked(t *testing.T) {
	gz := func(s string) string {
		var b strings.Builder
		zw := gzip.NewWriter(&b)
		io.WriteString(zw, s)
		zw.Close()
		return b.String()
	}
	bodies := []string{gz(`{"id":1}`), gz(`{"id":2,"iban":"SECRETVALUE"}`), gz(`{"id":3}` + strings.Repeat(" ", 64<<10)), "SECRETVALUE, not gzip"}
	up := rawPartner(t, len(bodies), func(w io.Writer) {
		for _, b := range bodies {
			io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: "+strconv.Itoa(len(b))+"\r\n\r\n"+b)
		}
	}, 10*time.Second)
	c, stats, findings := hostileConn(t, up, true, 1<<10)
	for range bodies {
		io.WriteString(c, "GET /item HTTP/1.1\r\nHost: partner\r\nAccept-Encoding: gzip\r\n\r\n")
	}
	br := bufio.NewReader(c)
	for i, want := range []int{200, 502, 502, 502} {
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		got, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want || strings.Contains(string(got), "SECRET") {
			t.Errorf("response %d: %d %.80q, want %d", i, resp.StatusCode, got, want)
		}
		if want == 200 && string(got) != bodies[i] {
			t.Errorf("response %d: the body is not passed on as it came", i)
		}
	}
	found := findings()
	if len(found) != 2 || found[0].Reason != ReasonUndeclaredProperty || found[1].Reason != ReasonUndecodableBody {
		t.Errorf("findings %+v, want undeclared_property, then undecodable_body", found)
	}
	if s := stats.Snapshot(); s["valid"] != 1 || s["unchecked_over_max_body"] != 1 {
		t.Errorf("counters %v", s)
	}
	if n := chargedAfter(stats, 0); n != 0 {
		t.Errorf("%d bytes of the budget still held", n)
	}
}
