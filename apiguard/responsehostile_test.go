package apiguard

import (
	"bufio"
	"io"
	"net"
	"net/http"
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
	var mu sync.Mutex
	var found []ResponseFinding
	stats := &ResponseStats{}
	c := checkedPair(t, up, &ResponsePolicy{Peer: "bank-b", Service: "payments", Spec: hostileSpec(t), Block: true}, stats,
		func(f ResponseFinding) { mu.Lock(); found = append(found, f); mu.Unlock() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /item HTTP/1.1\r\nHost: partner\r\n\r\n")
	out, err := io.ReadAll(c)
	if !strings.HasPrefix(string(out), "HTTP/1.1 502") || strings.Contains(string(out), "SECRET") {
		t.Fatalf("client got %q, %v: want a 502 once the head is over the bound", out, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(found) != 1 || found[0].Reason != ReasonMalformedResponse || found[0].Operation != "getItem" {
		t.Errorf("findings %+v", found)
	}
}
