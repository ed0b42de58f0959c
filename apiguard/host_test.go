package apiguard

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// TestGuardPinnedHost: behind an upstream that routes on Host (an ingress,
// nginx server blocks, a shared gateway), a partner's "Host: admin.internal"
// on a path its contract allows ran another application's handler. With
// Policy.Host (api.host) every forwarded request carries exactly that Host,
// whatever the partner sent, none included; without it the partner's Host
// goes upstream as it came. A second Host field is refused by the parser
// either way and never reaches upstream. A reload (SetPolicy) applies it to
// the next request on an open stream. THREATS P2.
func TestGuardPinnedHost(t *testing.T) {
	noLeak(t)
	var mu sync.Mutex
	var hosts []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hosts = append(hosts, r.Host)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"ok"}`))
	}))
	defer srv.Close()
	took := func() []string {
		mu.Lock()
		defer mu.Unlock()
		h := hosts
		hosts = nil
		return h
	}
	const pinned = "payments.bank-b.internal:8443"
	for _, c := range []struct {
		pin, req string
		status   int
		want     []string // the Host upstream saw; nil: upstream saw nothing
	}{
		{pinned, "GET /v1/health HTTP/1.1\r\nHost: admin.internal\r\n\r\n", 200, []string{pinned}},
		{pinned, "GET /v1/health HTTP/1.1\r\n\r\n", 200, []string{pinned}},
		{pinned, "GET /v1/health HTTP/1.1\r\nHost: " + pinned + "\r\n\r\n", 200, []string{pinned}},
		{pinned, "GET /v1/health HTTP/1.1\r\nHost: a b\r\n\r\n", 200, []string{pinned}},
		{pinned, "GET /v1/health HTTP/1.1\r\nHost: p\r\nHost: admin.internal\r\n\r\n", 400, nil},
		{"", "GET /v1/health HTTP/1.1\r\nHost: admin.internal\r\n\r\n", 200, []string{"admin.internal"}},
		{"", "GET /v1/health HTTP/1.1\r\nHost: p\r\nHost: admin.internal\r\n\r\n", 400, nil},
	} {
		p := testPolicy(t, 1<<10)
		p.Host = c.pin
		g := NewGuard(p, &events{})
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s := &stream{c: wrap(g, "bank-a", conn.(*net.TCPConn))}
		s.br = bufio.NewReader(s.c)
		s.send(c.req)
		r := s.read(t)
		s.c.Close()
		got := took()
		if r.StatusCode != c.status || strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("pin %q, %q: %d, upstream saw Host %q; want %d, %q", c.pin, c.req, r.StatusCode, got, c.status, c.want)
		}
	}

	// A reload pins the next request of a stream already open.
	g := NewGuard(testPolicy(t, 1<<10), &events{})
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := &stream{c: wrap(g, "bank-a", conn.(*net.TCPConn))}
	s.br = bufio.NewReader(s.c)
	defer s.c.Close()
	s.send("GET /v1/health HTTP/1.1\r\nHost: admin.internal\r\n\r\n")
	s.read(t)
	p := testPolicy(t, 1<<10)
	p.Host = pinned
	g.SetPolicy(p)
	s.send("GET /v1/health HTTP/1.1\r\nHost: admin.internal\r\n\r\n")
	s.read(t)
	if got := took(); strings.Join(got, ",") != "admin.internal,"+pinned {
		t.Errorf("before and after the reload, upstream saw Host %q", got)
	}
}
