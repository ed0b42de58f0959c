package apiguard

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// itemsSpec has a templated route (getItem, which the peer may call) next
// to a static one at the same place (exportItems, which it may not): the
// shape of most APIs with a collection action (/users/me, /orders/export).
const itemsSpec = `openapi: 3.0.3
info: {title: items, version: "1"}
%s
paths:
  /items/{id}:
    get:
      operationId: getItem
      parameters:
        - {name: id, in: path, required: true, schema: {type: string, minLength: 3, maxLength: 40}}
      responses: {"200": {description: ok}}
  /items/export:
    get:
      operationId: exportItems
      responses: {"200": {description: ok}}
  /items/{id}/notes:
    post:
      operationId: addNote
      parameters:
        - {name: id, in: path, required: true, schema: {type: string, maxLength: 40}}
        - {name: X-Request-Id, in: header, required: true, schema: {type: string, pattern: "^[a-z0-9-]{8,36}$"}}
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, properties: {text: {type: string}}}
      responses: {"200": {description: ok}}
`

// itemsUpstream is a real upstream for itemsSpec: a Go 1.22 ServeMux with
// the spec's routes under prefix, recording which handler ran and the
// header and trailer fields it got.
type itemsUpstream struct {
	mu   sync.Mutex
	ran  []string
	reqs []*http.Request
	srv  *httptest.Server
}

func newItemsUpstream(t *testing.T, prefix string, h func(http.Handler) http.Handler) *itemsUpstream {
	u := &itemsUpstream{}
	mux := http.NewServeMux()
	for pattern, name := range map[string]string{
		"GET " + prefix + "/items/{id}":        "getItem",
		"GET " + prefix + "/items/export":      "exportItems",
		"POST " + prefix + "/items/{id}/notes": "addNote",
	} {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			u.mu.Lock()
			u.ran = append(u.ran, name)
			u.reqs = append(u.reqs, r)
			u.mu.Unlock()
			fmt.Fprint(w, name)
		})
	}
	var handler http.Handler = mux
	if h != nil {
		handler = h(mux)
	}
	u.srv = httptest.NewServer(handler)
	t.Cleanup(u.srv.Close)
	return u
}

func (u *itemsUpstream) handlers() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.ran...)
}

// itemsGuard guards itemsSpec (servers as given) for peer bank-a, which
// may call getItem and addNote only.
func itemsGuard(t *testing.T, servers string, ev *events) *Guard {
	t.Helper()
	s, err := ParseSpec("items.yaml", []byte(fmt.Sprintf(itemsSpec, servers)))
	if err != nil {
		t.Fatal(err)
	}
	p := &Policy{Service: "items", Spec: s, ValidateRequest: true,
		Allowed: map[string]map[*Operation]bool{"bank-a": {s.Operation("getItem"): true, s.Operation("addNote"): true}}}
	return NewGuard(p, ev)
}

func openItems(t *testing.T, g *Guard, up *itemsUpstream) *stream {
	t.Helper()
	c, err := net.Dial("tcp", up.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := &stream{c: wrap(g, "bank-a", c.(*net.TCPConn))}
	s.br = bufioReader(s.c)
	t.Cleanup(func() { s.c.Close() })
	return s
}

// TestGuardEscapedPathRoutes: a path escaped where it need not be is
// matched by the operation of its decoded path, with or without a server
// base path. The router matched a spec with servers on the escaped path:
// the peer reached exportItems, which its list does not name, as getItem
// (id "%65xport"), and a Go ServeMux upstream ran exportItems; so with a
// reserved character (/items/export%3Aall for /items/export:all). Escaped
// unreserved characters are refused since (TestGuardEscapedUnreserved);
// either refusal keeps exportItems from the peer.
func TestGuardEscapedPathRoutes(t *testing.T) {
	noLeak(t) // first, so that it runs after every stream's cleanup
	for _, c := range []struct{ servers, prefix string }{
		{"servers: [{url: https://items.example/v1}]", "/v1"},
		{"", ""},
	} {
		ev := &events{}
		g := itemsGuard(t, c.servers, ev)
		up := newItemsUpstream(t, c.prefix, nil)
		for _, target := range []string{"/items/%65xport", "/items/%65%78%70%6f%72%74", "/items/%65xport/"} {
			s := openItems(t, g, up)
			s.send("GET " + c.prefix + target + " HTTP/1.1\r\nHost: i\r\n\r\n")
			r := s.read(t)
			if body := bodyOf(r); !(r.StatusCode == 403 && strings.Contains(body, "not_allowed") || r.StatusCode == 400 && strings.Contains(body, reasonPath)) {
				t.Errorf("servers %q, %s: %d %s, want 403 not_allowed or 400 %s", c.servers, target, r.StatusCode, body, reasonPath)
			}
		}
		// A value escaped where it must be still reaches getItem, and
		// is validated as upstream reads it (decoded): " " is shorter
		// than id's minLength of 3, "%20" is not.
		s := openItems(t, g, up)
		s.send("GET " + c.prefix + "/items/%20 HTTP/1.1\r\nHost: i\r\n\r\n")
		if r := s.read(t); r.StatusCode != 400 {
			t.Errorf("servers %q, /items/%%20: %d, want 400 (minLength)", c.servers, r.StatusCode)
		}
		s = openItems(t, g, up)
		s.send("GET " + c.prefix + "/items/a%20b HTTP/1.1\r\nHost: i\r\n\r\n")
		if r := s.read(t); r.StatusCode != 200 || bodyOf(r) != "getItem" {
			t.Errorf("servers %q, /items/a%%20b: %d, want 200 from getItem", c.servers, r.StatusCode)
		}
		if got := up.handlers(); len(got) != 1 || got[0] != "getItem" {
			t.Errorf("servers %q: upstream ran %v, want getItem once", c.servers, got)
		}
		// A reserved character escaped: routed as upstream decodes it.
		spec := strings.Replace(fmt.Sprintf(itemsSpec, c.servers), "  /items/export:", "  /items/export:all:", 1)
		sp, err := ParseSpec("items.yaml", []byte(spec))
		if err != nil {
			t.Fatal(err)
		}
		g2 := NewGuard(&Policy{Service: "items", Spec: sp, ValidateRequest: true,
			Allowed: map[string]map[*Operation]bool{"bank-a": {sp.Operation("getItem"): true}}}, ev)
		s = openItems(t, g2, up)
		s.send("GET " + c.prefix + "/items/export%3Aall HTTP/1.1\r\nHost: i\r\n\r\n")
		if r := s.read(t); r.StatusCode != 403 {
			t.Errorf("servers %q, /items/export%%3Aall: %d %s, want 403 (exportItems)", c.servers, r.StatusCode, bodyOf(r))
		}
	}
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

// TestGuardUpstreamPathNormalisation: a path parameter's value that an
// upstream's router would read as the static segment next to it is
// refused. Express and ASP.NET Core route without case by default
// (/items/EXPORT is /items/export), Tomcat and Spring drop a segment's
// ";..." before routing (/items/export;x=1), Rails takes a last segment's
// ".json" as the format (/items/export.json): the guard matched getItem
// (id "EXPORT", "export;x=1", "export.json") and the upstream ran
// exportItems, which the peer may not call.
func TestGuardUpstreamPathNormalisation(t *testing.T) {
	noLeak(t) // first, so that it runs after every stream's cleanup
	for name, c := range map[string]struct {
		norm    func(string) string
		targets []string
	}{
		"no case": {strings.ToLower, []string{"/v1/items/EXPORT", "/v1/items/Export/", "/v1/items/EXPOR%54"}},
		"drop ;": {func(p string) string {
			segs := strings.Split(p, "/")
			for i, s := range segs {
				segs[i], _, _ = strings.Cut(s, ";")
			}
			return strings.Join(segs, "/")
		}, []string{"/v1/items/export;x=1", "/v1/items/export;"}},
		"format": {func(p string) string {
			i := strings.LastIndexByte(p, '/')
			if j := strings.IndexByte(p[i:], '.'); j > 0 {
				return p[:i+j]
			}
			return p
		}, []string{"/v1/items/export.json", "/v1/items/export.csv"}},
	} {
		ev := &events{}
		g := itemsGuard(t, "servers: [{url: /v1}]", ev)
		up := newItemsUpstream(t, "/v1", func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				r.URL.Path, r.URL.RawPath = c.norm(r.URL.Path), ""
				h.ServeHTTP(w, r)
			})
		})
		for _, target := range c.targets {
			s := openItems(t, g, up)
			s.send("GET " + target + " HTTP/1.1\r\nHost: i\r\n\r\n")
			r := s.read(t)
			if body := bodyOf(r); r.StatusCode != 400 || !strings.Contains(body, reasonPath) {
				t.Errorf("%s, %s: %d %s, want 400 %s", name, target, r.StatusCode, body, reasonPath)
			}
		}
		// Values that no upstream reads as another segment pass.
		for _, target := range []string{"/v1/items/exports", "/v1/items/item-42", "/v1/items/x.export", "/v1/items/a;export"} {
			s := openItems(t, g, up)
			s.send("GET " + target + " HTTP/1.1\r\nHost: i\r\n\r\n")
			if r := s.read(t); r.StatusCode != 200 || bodyOf(r) != "getItem" {
				t.Errorf("%s, %s: %d, want 200 from getItem", name, target, r.StatusCode)
			}
		}
		if got := up.handlers(); len(got) != 4 || strings.Contains(strings.Join(got, " "), "exportItems") {
			t.Errorf("%s: upstream ran %v, want getItem 4 times", name, got)
		}
		if n := len(ev.all("dyad.api.denied")); n != len(c.targets) {
			t.Errorf("%s: %d denials audited, want %d", name, n, len(c.targets))
		}
	}
}

// TestGuardRepeatedHeaderParameter: a declared header parameter given in
// more than one field, or a declared cookie parameter more than once, is
// refused (duplicate_parameter). kin-openapi validates the first field and
// the first cookie; Node and the CGI gateways (PHP, WSGI) join repeated
// fields into one value ("ok-12345678, <anything>"), Go's Header.Values
// and some frameworks read the last, Django and Python's http.cookies the
// last cookie: the value upstream acted on was never validated.
func TestGuardRepeatedHeaderParameter(t *testing.T) {
	noLeak(t) // first, so that it runs after every stream's cleanup
	spec := strings.Replace(fmt.Sprintf(itemsSpec, ""), `        - {name: X-Request-Id`,
		`        - {name: sid, in: cookie, schema: {type: string, pattern: "^[a-z]{4}$"}}
        - {name: X-Request-Id`, 1)
	s, err := ParseSpec("items.yaml", []byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	g := NewGuard(&Policy{Service: "items", Spec: s, ValidateRequest: true}, ev)
	up := newItemsUpstream(t, "", nil)
	note := func(fields string) string {
		return "POST /items/7/notes HTTP/1.1\r\nHost: i\r\nContent-Type: application/json\r\nContent-Length: 2\r\n" + fields + "\r\n{}"
	}
	for name, c := range map[string]struct {
		fields string
		status int
	}{
		"one":            {"X-Request-Id: ok-12345678\r\n", 200},
		"two":            {"X-Request-Id: ok-12345678\r\nX-Request-Id: ' OR 1=1 --\r\n", 400},
		"two, case":      {"X-Request-Id: ok-12345678\r\nx-request-id: ' OR 1=1 --\r\n", 400},
		"cookie":         {"X-Request-Id: ok-12345678\r\nCookie: sid=abcd\r\n", 200},
		"two cookies":    {"X-Request-Id: ok-12345678\r\nCookie: sid=abcd; sid=' OR 1=1 --\r\n", 400},
		"cookie fields":  {"X-Request-Id: ok-12345678\r\nCookie: sid=abcd\r\nCookie: sid=x%27\r\n", 400},
		"other cookies":  {"X-Request-Id: ok-12345678\r\nCookie: sid=abcd; a=1; a=2\r\n", 200},
		"other repeated": {"X-Request-Id: ok-12345678\r\nAccept: a/b\r\nAccept: c/d\r\n", 200},
	} {
		st := openItems(t, g, up)
		st.send(note(c.fields))
		r := st.read(t)
		body := bodyOf(r)
		if r.StatusCode != c.status || c.status == 400 && !strings.Contains(body, reasonDupParam) {
			t.Errorf("%s: %d %s, want %d", name, r.StatusCode, body, c.status)
		}
	}
	if got := up.handlers(); len(got) != 4 {
		t.Errorf("upstream ran %v, want the 4 requests with one value each", got)
	}
	for _, e := range ev.all("dyad.api.denied") {
		if s := fmt.Sprint(e); strings.Contains(s, "OR 1=1") || e["dyad.reason"] != reasonDupParam {
			t.Errorf("event %v", e)
		}
	}
}

// TestGuardHopByHop: a field the client's Connection field names is
// hop-by-hop (RFC 9110, 7.6.1): an intermediary upstream of the guard
// (Go's httputil.ReverseProxy here, nginx, HAProxy, Envoy) drops it before
// the application sees it. So the guard drops it too before validating:
// "Connection: X-Request-Id" hid the required, validated X-Request-Id
// from the application behind such a proxy, which ran addNote without it.
func TestGuardHopByHop(t *testing.T) {
	noLeak(t) // first, so that it runs after every stream's cleanup
	ev := &events{}
	g := itemsGuard(t, "", ev)
	var (
		mu     sync.Mutex
		fields []string
	)
	up := newItemsUpstream(t, "", func(h http.Handler) http.Handler {
		app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			fields = append(fields, r.Header.Get("X-Request-Id"))
			mu.Unlock()
			h.ServeHTTP(w, r)
		}))
		t.Cleanup(app.Close)
		u, _ := url.Parse(app.URL)
		return httputil.NewSingleHostReverseProxy(u)
	})
	note := func(fields string) string {
		return "POST /items/7/notes HTTP/1.1\r\nHost: i\r\nContent-Type: application/json\r\nContent-Length: 2\r\n" +
			"X-Request-Id: ok-12345678\r\n" + fields + "\r\n{}"
	}
	for name, c := range map[string]struct {
		fields string
		status int
	}{
		"nominated":            {"Connection: X-Request-Id\r\n", 400},
		"nominated, 2nd token": {"Connection: keep-alive, x-request-id\r\n", 400},
		"keep-alive":           {"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n", 200},
		"close":                {"Connection: close\r\n", 200},
	} {
		s := openItems(t, g, up)
		s.send(note(c.fields))
		r := s.read(t)
		if body := bodyOf(r); r.StatusCode != c.status {
			t.Errorf("%s: %d %s, want %d", name, r.StatusCode, body, c.status)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(fields) != 2 || fields[0] != "ok-12345678" || fields[1] != "ok-12345678" {
		t.Errorf("the application saw X-Request-Id %q, want the 2 requests that keep it", fields)
	}
}

// TestGuardUndeclaredTrailer: after a chunked body the guard forwards the
// trailer fields the head declared (Trailer), as its doc says, not others:
// net/http's parser puts every field of the trailer section in the
// declared map, and an undeclared X-HTTP-Method-Override went upstream,
// where Tomcat (allowedTrailerHeaders) and Apache (MergeTrailers) can be
// set to merge trailers into the header fields the method-override check
// looked at before the body came.
func TestGuardUndeclaredTrailer(t *testing.T) {
	noLeak(t)
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		got <- r.Trailer
	}))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(testPolicy(t, 1<<10), &events{})
	s := &stream{c: wrap(g, "bank-a", c.(*net.TCPConn))}
	s.br = bufioReader(s.c)
	defer s.c.Close()
	s.send("POST /v1/accounts/DE44500105175407324931/statements HTTP/1.1\r\nHost: p\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n" +
		"3\r\nabc\r\n0\r\nX-Sum: 3\r\nX-Http-Method-Override: DELETE\r\n\r\n")
	if r := s.read(t); r.StatusCode != 200 {
		t.Fatalf("status %d: %s", r.StatusCode, bodyOf(r))
	}
	if tr := <-got; len(tr) != 1 || tr.Get("X-Sum") != "3" {
		t.Errorf("upstream got trailer %v, want X-Sum only", tr)
	}
}

// TestGuardQueryKeyAliases: a query key that is not a declared parameter's
// name but that upstream frameworks read as that parameter is refused
// (duplicate_parameter): ASP.NET Core reads keys without case (?LIMIT=),
// PHP turns '.', ' ' and an unclosed '[' of a key into '_' (?page.size=
// is $_GET['page_size']), and PHP, Rails and Express's qs read key[] and
// key[n] as the parameter's array. kin-openapi validated "limit" (or saw
// no value at all) while upstream took 100000.
func TestGuardQueryKeyAliases(t *testing.T) {
	s, err := ParseSpec("q.yaml", []byte(`openapi: 3.0.3
info: {title: q, version: "1"}
paths:
  /list:
    get:
      operationId: list
      parameters:
        - {name: limit, in: query, schema: {type: integer, maximum: 100}}
        - {name: page_size, in: query, schema: {type: integer, maximum: 100}}
        - {name: tag, in: query, schema: {type: array, items: {type: string, maxLength: 3}}}
        - {name: filter, in: query, style: deepObject, explode: true, schema: {type: object, properties: {kind: {type: string, maxLength: 3}}}}
      responses: {"200": {description: ok}}
`))
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	g := NewGuard(&Policy{Service: "q", Spec: s, ValidateRequest: true}, ev)
	up := newPayments(t)
	for _, c := range []struct {
		query  string
		status int
	}{
		{"limit=5&LIMIT=100000", 400},
		{"Limit=100000", 400},
		{"limit=5&limit[]=100000", 400},
		{"limit[0]=100000", 400},
		{"page_size=10&page.size=100000", 400},
		{"page+size=100000", 400},
		{"page[size=100000", 400},
		{"PAGE_SIZE=100000", 400},
		{"tag=a&tag[]=toolong", 400},
		{"limit=5&page_size=10&tag=a&tag=b", 200},
		{"filter[kind]=abc&limit=1", 200},
		{"other[]=1&Other=2&limit.x=3&limits=4", 200},
	} {
		st := openStream(t, g, up, "bank-a")
		st.send("GET /list?" + c.query + " HTTP/1.1\r\nHost: q\r\n\r\n")
		r := st.read(t)
		body := bodyOf(r)
		if r.StatusCode != c.status || c.status == 400 && !strings.Contains(body, reasonDupParam) {
			t.Errorf("?%s: %d %s, want %d", c.query, r.StatusCode, body, c.status)
		}
	}
	for _, e := range ev.all("dyad.api.denied") {
		if strings.Contains(fmt.Sprint(e), "100000") {
			t.Errorf("event quotes the query: %v", e)
		}
	}
}

// TestGuardParsedHeadBounded: a header block within MaxHeaderBytes made of
// many tiny fields ("1:", "2:", ...) is refused (431 header_too_large)
// past maxHeaderFields: net/http's parsed form of 2,800 of them is ~250
// KB (a map entry, a key and a slice per field), held while upstream
// answers and, through the conn's validation input, while the stream then
// idles: fifteen times B_guard's 16 KiB block per stream, outside the
// README's memory formula (THREATS P5). Measured: the heap a stream holds
// with such a block, less one with a small request, both waiting for
// upstream's answer.
func TestGuardParsedHeadBounded(t *testing.T) {
	noLeak(t)
	g := NewGuard(testPolicy(t, 1<<10), &events{})
	small := "GET /v1/health HTTP/1.1\r\nHost: p\r\n\r\n"
	var b strings.Builder
	b.WriteString("GET /v1/health HTTP/1.1\r\nHost: p\r\n")
	for i := 0; b.Len() < MaxHeaderBytes-16; i++ {
		fmt.Fprintf(&b, "%x:\r\n", i)
	}
	b.WriteString("\r\n")
	big := b.String()
	// The most a block the guard forwards holds: maxHeaderFields
	// fields filling MaxHeaderBytes.
	b.Reset()
	b.WriteString("GET /v1/health HTTP/1.1\r\nHost: p\r\n")
	for i := range maxHeaderFields - 1 {
		fmt.Fprintf(&b, "X-%03x: %s\r\n", i, strings.Repeat("v", (MaxHeaderBytes-64)/(maxHeaderFields-1)-10))
	}
	b.WriteString("\r\n")
	full := b.String()
	held := heldPerStream(t, g, "\r\n\r\n", small, big, full)
	t.Logf("heap per stream: %d bytes with a small request, %d with %d tiny fields, %d with %d fields in %d bytes",
		held[0], held[1], strings.Count(big, "\r\n")-3, held[2], maxHeaderFields, len(full))
	if held[1]-held[0] > 32<<10 || held[2]-held[0] > 32<<10 {
		t.Errorf("a stream with a %d-byte header block of tiny fields holds %d bytes more than one with a small request, one with %d fields %d more; want at most 32 KiB",
			len(big), held[1]-held[0], maxHeaderFields, held[2]-held[0])
	}
}

// TestGuardParsedTrailerDropped: a chunked body's trailer section (up to
// MaxHeaderBytes, net/http's limit for it is the reader's size) of tiny
// fields is parsed by net/http into the request's Trailer, ~250 KB; the
// guard forwards the declared fields and then drops the map, so a stream
// waiting for upstream's answer does not hold it (THREATS P5).
func TestGuardParsedTrailerDropped(t *testing.T) {
	noLeak(t)
	p := testPolicy(t, 1<<10)
	p.ValidateRequest = false
	g := NewGuard(p, &events{})
	head := "POST /v1/accounts/DE44500105175407324931/statements HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
	var b strings.Builder
	b.WriteString(head)
	for i := 0; b.Len()-len(head) < MaxHeaderBytes-64; i++ {
		fmt.Fprintf(&b, "%x:\r\n", i)
	}
	b.WriteString("\r\n")
	trailer := b.String()[len(head):]
	held := heldPerStream(t, g, "\r\n0\r\n\r\n", head+"\r\n", b.String())
	t.Logf("heap per stream: %d bytes without a trailer, %d with %d tiny trailer fields", held[0], held[1], strings.Count(trailer, "\r\n")-1)
	if held[1]-held[0] > 16<<10 {
		t.Errorf("a stream whose body had a %d-byte trailer section holds %d bytes more than one without, want at most 16 KiB", len(trailer), held[1]-held[0])
	}
	// A validated request refused after its body was read: the stream
	// idles for the next request, holding neither the request nor its
	// trailer (the conn's validation input kept the request).
	g = NewGuard(testPolicy(t, 1<<10), &events{})
	refund := "POST /v1/payments HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nIdempotency-Key: k-12345678\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"c\r\n{\"amount\":0}\r\n0\r\n"
	invalid := "POST /v1/accounts/x/statements HTTP/1.1\r\nHost: p\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
	held = heldPerStream(t, g, "never", refund+"\r\n", refund+trailer, invalid+"\r\n", invalid+trailer)
	t.Logf("heap per idle stream after a refused body: %d bytes without a trailer, %d with; after a refused parameter %d, %d", held[0], held[1], held[2], held[3])
	if held[1]-held[0] > 16<<10 || held[3]-held[2] > 16<<10 {
		t.Errorf("an idle stream after a refused request with a %d-byte trailer section holds %d (body) and %d (parameter) bytes more than one without, want at most 16 KiB",
			len(trailer), held[1]-held[0], held[3]-held[2])
	}
}

// heldPerStream opens 32 guarded streams for each of raws in turn (to an
// upstream that reads up to end, then never answers) and returns the heap
// each stream of each holds, once every stream was forwarded or answered.
func heldPerStream(t *testing.T, g *Guard, end string, raws ...string) []int64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	signal := make(chan struct{}, 256)
	var held []net.Conn
	var heldMu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			heldMu.Lock()
			held = append(held, c)
			heldMu.Unlock()
			go func() { // reads up to end, then holds the connection
				var buf [4096]byte
				var tail []byte
				for {
					n, err := c.Read(buf[:])
					if err != nil {
						return
					}
					tail = append(tail, buf[:n]...)
					if bytes.Contains(tail, []byte(end)) {
						signal <- struct{}{}
						return
					}
					tail = tail[max(0, len(tail)-len(end)):]
				}
			}()
		}
	}()
	defer func() {
		heldMu.Lock()
		for _, c := range held {
			c.Close()
		}
		heldMu.Unlock()
	}()
	const n = 32
	// The streams end before this returns: none is left to give its
	// memory back while the next measurement runs.
	var streams []*stream
	defer func() {
		for _, s := range streams {
			s.c.Close()
		}
		deadline := time.Now().Add(3 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			if !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "apiguard.(*conn).loop") || time.Now().After(deadline) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC() // the pools' victim caches too
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	open := func(raw string) {
		answered := make(chan struct{}, n)
		for range n {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			s := &stream{c: wrap(g, "bank-a", c.(*net.TCPConn))}
			s.br = bufioReader(s.c)
			streams = append(streams, s)
			s.send(raw)
			go func() {
				if _, err := http.ReadResponse(s.br, nil); err == nil {
					answered <- struct{}{}
				}
			}()
		}
		deadline := time.After(10 * time.Second)
		for range n {
			select {
			case <-signal:
			case <-answered:
			case <-deadline:
				t.Fatal("the streams were neither forwarded nor answered")
			}
		}
		time.Sleep(50 * time.Millisecond) // the answered streams' goroutines end
	}
	var out []int64
	before := heap()
	for _, raw := range raws {
		open(raw)
		after := heap()
		out = append(out, (int64(after)-int64(before))/n)
		before = after
	}
	return out
}

// TestGuardBrokenStreamedBody: a streamed body the client breaks (a chunk
// size that is not hex, a body shorter than its Content-Length) is the
// partner's refusal, as it is for a body the guard buffers: 400 truncated,
// dyad.api.denied, counted as denied. It was counted as the upstream's
// failure (502 upstream_write, outcome failed), without an event: a
// partner probing chunked framing was invisible, and could make an
// operation's upstream look broken in the inventory and the report.
func TestGuardBrokenStreamedBody(t *testing.T) {
	up := newPayments(t)
	ev := &events{}
	p := testPolicy(t, 1<<10)
	g := NewGuard(p, ev)
	const upload = "POST /v1/accounts/DE44500105175407324931/statements HTTP/1.1\r\nHost: p\r\nContent-Type: application/octet-stream\r\n"
	for name, raw := range map[string]string{
		"chunk size": upload + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n",
		"chunk end":  upload + "Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
	} {
		s := openStream(t, g, up, "bank-a")
		s.send(raw)
		r := s.read(t)
		if body := bodyOf(r); r.StatusCode != 400 || !strings.Contains(body, reasonTruncated) || !r.Close {
			t.Errorf("%s: %d %s, want 400 %s and the stream's end", name, r.StatusCode, body, reasonTruncated)
		}
	}
	// A body shorter than its length, the stream then ended.
	s := openStream(t, g, up, "bank-a")
	s.c.Write([]byte(upload + "Content-Length: 10\r\n\r\nabc"))
	s.c.(*pipeConn).CloseWrite()
	if r, err := http.ReadResponse(s.br, nil); err == nil && r.StatusCode != 400 {
		t.Errorf("short body: %d, want 400 (or no answer: the client is gone)", r.StatusCode)
	}
	time.Sleep(50 * time.Millisecond)
	denied := ev.all("dyad.api.denied")
	if len(denied) != 3 {
		t.Errorf("%d denials audited, want 3: %v", len(denied), denied)
	}
	for _, e := range denied {
		if e["dyad.reason"] != reasonTruncated || e["dyad.api.operation"] != "uploadStatement" {
			t.Errorf("event %v", e)
		}
	}
	for _, d := range g.Inventory().Decisions() {
		if d.Outcome == OutcomeFailed {
			t.Errorf("decision %+v: the client's broken body counted as upstream's failure", d)
		}
	}
}

// TestGuardURLOverride: X-Original-URL and X-Rewrite-URL are refused
// (request_target): Symfony before 2.7.49/3.4.14/4.1.3, Zend Framework and
// Laminas before their 2018 fixes, and applications behind IIS's URL
// Rewrite module route on them instead of the request line, so GET
// /v1/health with X-Original-URL: /v1/admin/settlements ran the admin
// operation the peer's list does not name (the handler below routes as
// they did).
func TestGuardURLOverride(t *testing.T) {
	noLeak(t) // first, so that it runs after every stream's cleanup
	ev := &events{}
	g := itemsGuard(t, "", ev)
	up := newItemsUpstream(t, "", func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for _, f := range []string{"X-Original-Url", "X-Rewrite-Url"} {
				if v := r.Header.Get(f); v != "" {
					r.URL.Path, r.URL.RawPath = v, ""
				}
			}
			h.ServeHTTP(w, r)
		})
	})
	for _, f := range []string{"X-Original-URL", "x-rewrite-url"} {
		s := openItems(t, g, up)
		s.send("GET /items/item-7 HTTP/1.1\r\nHost: i\r\n" + f + ": /items/export\r\n\r\n")
		r := s.read(t)
		if body := bodyOf(r); r.StatusCode != 400 || !strings.Contains(body, reasonTarget) {
			t.Errorf("%s: %d %s, want 400 %s", f, r.StatusCode, body, reasonTarget)
		}
	}
	if got := up.handlers(); len(got) != 0 {
		t.Errorf("upstream ran %v", got)
	}
	if d := ev.all("dyad.api.denied"); len(d) != 2 || d[0]["dyad.api.operation"] != "getItem" {
		t.Errorf("denials %v", d)
	}
}

// TestGuardEscapedUnreserved: a path with a letter, digit, '-', '.', '_'
// or '~' %-escaped (RFC 3986 says never to, and no client does) is
// refused: upstreams disagree on it. Go's ServeMux, Spring and ASP.NET
// decode it before routing, Express matches its routes on the raw path:
// /items/%65xport is exportItems to the first and getItem("export") to
// Express, so whichever the guard matched, some upstream ran the other.
// Here the peer may call exportItems only; an Express-like upstream (the
// handler routes on the raw path) ran getItem.
func TestGuardEscapedUnreserved(t *testing.T) {
	noLeak(t) // first, so that it runs after every stream's cleanup
	s, err := ParseSpec("items.yaml", []byte(fmt.Sprintf(itemsSpec, "")))
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	g := NewGuard(&Policy{Service: "items", Spec: s, ValidateRequest: true,
		Allowed: map[string]map[*Operation]bool{"bank-a": {s.Operation("exportItems"): true}}}, ev)
	up := newItemsUpstream(t, "", func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.URL.Path, r.URL.RawPath = r.URL.EscapedPath(), "" // route on the raw path
			h.ServeHTTP(w, r)
		})
	})
	for _, target := range []string{"/items/%65xport", "/items/expor%74", "/items/export%2E", "/items/ex%2Dport", "/items/%7Eexport"} {
		st := openItems(t, g, up)
		st.send("GET " + target + " HTTP/1.1\r\nHost: i\r\n\r\n")
		r := st.read(t)
		if body := bodyOf(r); r.StatusCode != 400 || !strings.Contains(body, reasonPath) {
			t.Errorf("%s: %d %s, want 400 %s", target, r.StatusCode, body, reasonPath)
		}
	}
	// Escapes of what a path must escape pass.
	st := openItems(t, g, up)
	st.send("GET /items/export HTTP/1.1\r\nHost: i\r\n\r\n")
	if r := st.read(t); r.StatusCode != 200 || bodyOf(r) != "exportItems" {
		t.Errorf("/items/export: %d, want 200 from exportItems", r.StatusCode)
	}
	if got := up.handlers(); len(got) != 1 || got[0] != "exportItems" {
		t.Errorf("upstream ran %v, want exportItems once", got)
	}
}

// TestGuardBadHost: a Host field the guard cannot forward ("a/b", a
// quote) is the partner's malformed request: 400 malformed_header,
// audited, counted as denied. It was answered 502 upstream_write and
// counted as upstream's failure, without an event.
func TestGuardBadHost(t *testing.T) {
	up := newPayments(t)
	ev := &events{}
	g := NewGuard(testPolicy(t, 1<<10), ev)
	for _, host := range []string{"a/b", `a"b`, "a b"} {
		s := openStream(t, g, up, "bank-a")
		s.send("GET /v1/health HTTP/1.1\r\nHost: " + host + "\r\n\r\n")
		r := s.read(t)
		if body := bodyOf(r); r.StatusCode != 400 || !strings.Contains(body, reasonMalformed) {
			t.Errorf("Host %q: %d %s, want 400 %s", host, r.StatusCode, body, reasonMalformed)
		}
	}
	if n := len(ev.all("dyad.api.denied")); n != 3 {
		t.Errorf("%d denials audited, want 3", n)
	}
	for _, d := range g.Inventory().Decisions() {
		if d.Outcome == OutcomeFailed {
			t.Errorf("decision %+v: the partner's Host counted as upstream's failure", d)
		}
	}
	if got := up.seen(); len(got) != 0 {
		t.Errorf("upstream saw %+v", got)
	}
}

// TestGuardFormBodyOverride: a form body (urlencoded or multipart) to an
// operation whose contract declares no form media type is refused
// (method_override), with or without validation: Rails (Rack's
// MethodOverride) and Laravel (Symfony's _method) read a POST form body's
// _method and run that method instead. The upload below (contract:
// application/octet-stream, no schema, so nothing reads the body) became a
// DELETE of the statements upstream. With validation, a body of another
// undeclared media type is refused too (invalid_body), as kin-openapi
// refuses one for an operation whose body has a schema.
func TestGuardFormBodyOverride(t *testing.T) {
	noLeak(t)
	var mu sync.Mutex
	var methods []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Rack::MethodOverride: a POST form body's _method wins.
		if r.Method == "POST" && r.ParseForm() == nil && r.PostForm.Get("_method") != "" {
			r.Method = strings.ToUpper(r.PostForm.Get("_method"))
		}
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		methods = append(methods, r.Method)
		mu.Unlock()
		w.WriteHeader(202)
	}))
	defer srv.Close()
	const target = "POST /v1/accounts/DE44500105175407324931/statements HTTP/1.1\r\nHost: p\r\n"
	for _, validate := range []bool{false, true} {
		p := testPolicy(t, 1<<10)
		p.ValidateRequest = validate
		ev := &events{}
		g := NewGuard(p, ev)
		for _, c := range []struct {
			ct, body, reason string
		}{
			{"application/x-www-form-urlencoded", "_method=DELETE", reasonMethodOverride},
			{"Application/X-WWW-Form-Urlencoded; charset=utf-8", "_method=DELETE", reasonMethodOverride},
			{"multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n", reasonMethodOverride},
			{"application/json", `{"_method":"DELETE"}`, "invalid_body"},
			{"application/octet-stream", "%PDF-1.7", ""},
			{"", "%PDF-1.7", "invalid_body"},
		} {
			if c.reason == "invalid_body" && !validate {
				c.reason = "" // not validated: it streams
			}
			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			s := &stream{c: wrap(g, "bank-a", conn.(*net.TCPConn))}
			s.br = bufioReader(s.c)
			ct := ""
			if c.ct != "" {
				ct = "Content-Type: " + c.ct + "\r\n"
			}
			s.send(fmt.Sprintf("%s%sContent-Length: %d\r\n\r\n%s", target, ct, len(c.body), c.body))
			r := s.read(t)
			body := bodyOf(r)
			s.c.Close()
			if c.reason == "" && r.StatusCode != 202 || c.reason != "" && (r.StatusCode != 400 || !strings.Contains(body, c.reason)) {
				t.Errorf("validate %v, %q: %d %s, want %q", validate, c.ct, r.StatusCode, body, c.reason)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, m := range methods {
		if m != "POST" {
			t.Errorf("upstream ran %v, want POSTs only", methods)
			break
		}
	}
}

// TestGuardMethodOverrideSpellings: PHP reads a query key with its leading
// spaces dropped and '.', ' ' or an unclosed '[' as '_', so ?.method=,
// ?+_method= and ?[method= are $_GET['_method'], which Symfony (Laravel
// enables it) takes as a POST's method: they are method_override as
// ?_method= is.
func TestGuardMethodOverrideSpellings(t *testing.T) {
	up := newPayments(t)
	ev := &events{}
	g := NewGuard(testPolicy(t, 1<<10), ev)
	for _, q := range []string{"?.method=DELETE", "?+_method=DELETE", "?%20_method=DELETE", "?[method=DELETE", "?a=1&.method=DELETE"} {
		s := openStream(t, g, up, "bank-a")
		s.send(fmt.Sprintf("POST /v1/payments%s HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nIdempotency-Key: k-12345678\r\nContent-Length: %d\r\n\r\n%s",
			q, len(newPayment), newPayment))
		r := s.read(t)
		if body := bodyOf(r); r.StatusCode != 400 || !strings.Contains(body, reasonMethodOverride) {
			t.Errorf("%s: %d %s, want 400 %s", q, r.StatusCode, body, reasonMethodOverride)
		}
	}
	if got := up.seen(); len(got) != 0 {
		t.Errorf("upstream saw %+v", got)
	}
}

// TestGuardUnderscoreFields: a field whose name has '_' where a field the
// guard checks has '-' (X_HTTP_Method_Override, X_Original_URL,
// Idempotency_Key) is refused as that field is: CGI, FastCGI and WSGI
// gateways (PHP, Python; RFC 9110, 17.10) map both to the same
// HTTP_X_HTTP_METHOD_OVERRIDE, which the guard never looked at. Caddy and
// nginx drop such fields by default for this reason; the guard refuses
// only those that alias a field it checks, so api_key passes.
func TestGuardUnderscoreFields(t *testing.T) {
	noLeak(t)
	var mu sync.Mutex
	var ran []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		env := map[string]string{} // as a CGI gateway builds it
		for k, vs := range r.Header {
			env["HTTP_"+strings.ToUpper(strings.ReplaceAll(k, "-", "_"))] = vs[0]
		}
		method := r.Method
		if m := env["HTTP_X_HTTP_METHOD_OVERRIDE"]; m != "" {
			method = m
		}
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		ran = append(ran, method)
		mu.Unlock()
		w.WriteHeader(201)
	}))
	defer srv.Close()
	ev := &events{}
	g := NewGuard(testPolicy(t, 1<<10), ev)
	for _, c := range []struct {
		field  string
		status int
		reason string
	}{
		{"X_HTTP_Method_Override: DELETE\r\n", 400, reasonMethodOverride},
		{"x-http-method_override: DELETE\r\n", 400, reasonMethodOverride},
		{"X_Original_URL: /v1/admin/settlements\r\n", 400, reasonTarget},
		{"Idempotency_Key: x\r\n", 400, reasonDupParam},
		{"api_key: k\r\nX_Trace: 1\r\n", 201, ""},
	} {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s := &stream{c: wrap(g, "bank-a", conn.(*net.TCPConn))}
		s.br = bufioReader(s.c)
		s.send(post("/v1/payments", newPayment, "Idempotency-Key: k-12345678\r\n"+c.field))
		r := s.read(t)
		body := bodyOf(r)
		s.c.Close()
		if r.StatusCode != c.status || !strings.Contains(body, c.reason) {
			t.Errorf("%q: %d %s, want %d %s", c.field, r.StatusCode, body, c.status, c.reason)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != 1 || ran[0] != "POST" {
		t.Errorf("upstream ran %v, want one POST", ran)
	}
}

// TestLooseRisk: only an operation with a parameter where another of its
// method has a static segment (getItem beside exportItems) pays for the
// loose check; the payments spec's operations have no such neighbour.
func TestLooseRisk(t *testing.T) {
	s, err := ParseSpec("items.yaml", []byte(fmt.Sprintf(itemsSpec, "")))
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]bool{"getItem": true, "exportItems": false, "addNote": false} {
		if got := s.Operation(key).looseRisk; got != want {
			t.Errorf("%s: looseRisk %v, want %v", key, got, want)
		}
	}
	for _, o := range testPolicy(t, 1<<10).Spec.Operations {
		if o.looseRisk {
			t.Errorf("payments %s: looseRisk, want none", o.Key)
		}
	}
}
