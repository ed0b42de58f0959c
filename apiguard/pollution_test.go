package apiguard

import (
	"fmt"
	"strings"
	"testing"
)

// TestGuardParameterPollution: a query parameter declared with one value
// (not an array) given twice is refused. kin-openapi validates one of the
// values (the first non-empty one) while an upstream may take another (PHP
// and Rails take the last): "?limit=5&limit=100000" would pass limit's
// maximum of 100 and reach upstream as 100000. Repeats of an array
// parameter, and of a key the operation does not declare, are the
// contract's business and pass.
func TestGuardParameterPollution(t *testing.T) {
	up := newPayments(t)
	ev := &events{}
	g := NewGuard(testPolicy(t, 1<<10), ev)
	for _, c := range []struct {
		target string
		status int
	}{
		{"/v1/payments?limit=5&limit=100000", 400},
		{"/v1/payments?limit=5&limit=6", 400},
		{"/v1/payments?cursor=a&limit=5&cursor=b", 400},
		{"/v1/payments?limit=&limit=5", 400},
		// Go's parser drops a pair with a ';' or a bad escape, so
		// kin-openapi would not see limit; another parser would.
		{"/v1/payments?limit=100000;", 400},
		{"/v1/payments?cursor=a;limit=100000", 400},
		{"/v1/payments?limit=%zz", 400},
		{"/v1/payments?limit=5&cursor=a", 200},
		{"/v1/payments?limit=5&other=1&other=2", 200},
	} {
		s := openStream(t, g, up, "bank-a")
		s.send("GET " + c.target + " HTTP/1.1\r\nHost: p\r\n\r\n")
		r := s.read(t)
		body := bodyOf(r)
		if r.StatusCode != c.status {
			t.Errorf("%s: %d %s, want %d", c.target, r.StatusCode, body, c.status)
			continue
		}
		if c.status == 400 && !strings.Contains(body, reasonDupParam) && !strings.Contains(body, reasonBadQuery) {
			t.Errorf("%s: %s, want reason %s or %s", c.target, body, reasonDupParam, reasonBadQuery)
		}
	}
	if got := up.seen(); len(got) != 2 {
		t.Errorf("upstream saw %d requests %+v, want the 2 allowed", len(got), got)
	}
	denied := ev.all("dyad.api.denied")
	if len(denied) != 7 || denied[0]["dyad.reason"] != reasonDupParam || denied[4]["dyad.reason"] != reasonBadQuery || denied[0]["dyad.api.operation"] != "listPayments" {
		t.Errorf("denied events %v", denied)
	}
	for _, e := range denied {
		if s := fmt.Sprint(e); strings.Contains(s, "100000") || strings.Contains(s, "cursor=") {
			t.Errorf("event quotes the query: %v", e)
		}
	}
}

// TestGuardMethodOverride: a field or query parameter that asks upstream
// to run another method than the request's (X-HTTP-Method-Override and its
// kin, _method) is refused, unless the operation declares it: the guard
// allowed the operation of the method it saw, and frameworks that honour
// the override (Rails, Laravel, Symfony, ASP.NET, Google's APIs) would run
// the other one, which this peer may not be allowed (OWASP API5).
func TestGuardMethodOverride(t *testing.T) {
	up := newPayments(t)
	ev := &events{}
	g := NewGuard(testPolicy(t, 1<<10), ev)
	post := func(extra, query string) string {
		return fmt.Sprintf("POST /v1/payments%s HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nIdempotency-Key: k-12345678\r\n%sContent-Length: %d\r\n\r\n%s",
			query, extra, len(newPayment), newPayment)
	}
	for name, raw := range map[string]string{
		"X-HTTP-Method-Override": post("X-HTTP-Method-Override: DELETE\r\n", ""),
		"X-HTTP-Method":          post("X-Http-Method: DELETE\r\n", ""),
		"X-Method-Override":      post("x-method-override: DELETE\r\n", ""),
		"_method query":          post("", "?_method=DELETE"),
		"_method escaped":        post("", "?%5Fmethod=DELETE"),
	} {
		s := openStream(t, g, up, "bank-a")
		s.send(raw)
		r := s.read(t)
		if body := bodyOf(r); r.StatusCode != 400 || !strings.Contains(body, reasonMethodOverride) {
			t.Errorf("%s: %d %s, want 400 %s", name, r.StatusCode, body, reasonMethodOverride)
		}
	}
	s := openStream(t, g, up, "bank-a")
	s.send(post("", ""))
	if r := s.read(t); r.StatusCode != 201 {
		t.Errorf("plain POST: %d, want 201", r.StatusCode)
	}
	if got := up.seen(); len(got) != 1 {
		t.Errorf("upstream saw %+v, want the plain POST only", got)
	}
	if n := len(ev.all("dyad.api.denied")); n != 5 {
		t.Errorf("%d denied events, want 5", n)
	}
}

// TestQueryRules: which query parameters take one value, and a contract
// that declares a method override allows it.
func TestQueryRules(t *testing.T) {
	s, err := ParseSpec("rules.yaml", []byte(`openapi: 3.0.3
info: {title: t, version: "1"}
paths:
  /v1/items:
    parameters:
      - {name: page, in: query, schema: {type: integer}}
      - {name: tag, in: query, schema: {type: integer}}
    get:
      operationId: list
      parameters:
        - {name: tag, in: query, schema: {type: array, items: {type: string}}}
        - {name: filter, in: query, style: form, explode: true, schema: {type: object, properties: {a: {type: string}}}}
        - {name: q, in: query, content: {application/json: {schema: {type: object}}}}
        - {name: X-HTTP-Method-Override, in: header, schema: {type: string}}
      responses: {"200": {description: ok}}
    post:
      operationId: add
      responses: {"200": {description: ok}}
`))
	if err != nil {
		t.Fatal(err)
	}
	list, add := s.Operation("list"), s.Operation("add")
	if got := strings.Join(list.singleQuery, ","); got != "q,page" || !list.query || !list.overrideOK {
		t.Errorf("list: single %q query %v override %v, want q,page (tag is the operation's array) true true", got, list.query, list.overrideOK)
	}
	if got := strings.Join(add.singleQuery, ","); got != "page,tag" || add.overrideOK {
		t.Errorf("add: single %q override %v, want page,tag (the path's parameters) false", got, add.overrideOK)
	}
}

// TestGuardDotSemicolon: a segment that is "." or ".." before a ';' is
// refused, with or without validation: Tomcat, Jetty and Spring drop
// the ";..." part before resolving dot segments, so upstream would run
// another path than the operation the guard matched and allowed. Without
// validation, nothing else stopped it.
func TestGuardDotSemicolon(t *testing.T) {
	up := newPayments(t)
	p := testPolicy(t, 1<<10)
	p.ValidateRequest = false
	g := NewGuard(p, &events{})
	for _, target := range []string{"/v1/payments/..;/status", "/v1/payments/..;jsessionid=1/status", "/v1/payments/%2E%2E%3B/status"} {
		s := openStream(t, g, up, "bank-a")
		s.send("GET " + target + " HTTP/1.1\r\nHost: p\r\n\r\n")
		if r := s.read(t); r.StatusCode != 400 || !strings.Contains(bodyOf(r), reasonPath) {
			t.Errorf("%s: %d, want 400 %s", target, r.StatusCode, reasonPath)
		}
	}
	if got := up.seen(); len(got) != 0 {
		t.Errorf("upstream saw %+v", got)
	}
}

// TestGuardUndeclaredBody: with validate: [request], a body sent to an
// operation whose contract has no requestBody is refused: kin-openapi
// checks no body there, and an upstream may act on one (a DELETE or GET
// with a JSON body of ids, an upload to a path that takes none). Without
// a body, or with an empty one, the request passes.
func TestGuardUndeclaredBody(t *testing.T) {
	up := newPayments(t)
	ev := &events{}
	g := NewGuard(testPolicy(t, 1<<10), ev)
	s := openStream(t, g, up, "bank-a")
	s.send("GET /v1/payments/7 HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"ids\":[1,2,3]}" +
		"GET /v1/payments/7 HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
		"GET /v1/payments/7 HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n" +
		"GET /v1/payments/7 HTTP/1.1\r\nHost: p\r\n\r\n")
	for i, want := range []int{400, 400, 200, 200} {
		r := s.read(t)
		if body := bodyOf(r); r.StatusCode != want || want == 400 && !strings.Contains(body, reasonUndeclaredBody) {
			t.Errorf("request %d: %d %s, want %d", i+1, r.StatusCode, body, want)
		}
	}
	if got := up.seen(); len(got) != 2 || got[0].n != 0 || got[1].n != 0 {
		t.Errorf("upstream saw %+v, want the two bodiless requests", got)
	}
	if e := ev.all("dyad.api.denied"); len(e) != 2 || e[0]["dyad.reason"] != reasonUndeclaredBody || e[0]["dyad.api.operation"] != "getPayment" {
		t.Errorf("denied events %v", e)
	}
}

// TestGuardBodyCharset: a body the guard validates is read as UTF-8 (as
// kin-openapi does, whatever the charset parameter says); an upstream
// that honours another charset (IIS and ASP.NET read ibm037, Python has
// utf-7) would read other fields than the ones checked, so a charset other
// than UTF-8 (or its subset US-ASCII) is refused with 415.
func TestGuardBodyCharset(t *testing.T) {
	up := newPayments(t)
	ev := &events{}
	g := NewGuard(testPolicy(t, 1<<10), ev)
	for _, c := range []struct {
		ct     string
		status int
	}{
		{"application/json; charset=utf-7", 415},
		{"application/json;charset=ibm037", 415},
		{`application/json; charset="UTF-16"`, 415},
		{"application/json; charset=utf-8", 201},
		{`application/json; charset="US-ASCII"`, 201},
		{"application/json", 201},
		{`application/json; charset="utf-8`, 400}, // unreadable parameters
	} {
		s := openStream(t, g, up, "bank-a")
		s.send(fmt.Sprintf("POST /v1/payments HTTP/1.1\r\nHost: p\r\nContent-Type: %s\r\nIdempotency-Key: k-12345678\r\nContent-Length: %d\r\n\r\n%s", c.ct, len(newPayment), newPayment))
		r := s.read(t)
		if body := bodyOf(r); r.StatusCode != c.status || c.status == 415 && !strings.Contains(body, reasonCharset) {
			t.Errorf("%s: %d %s, want %d", c.ct, r.StatusCode, body, c.status)
		}
	}
	if got := up.seen(); len(got) != 3 {
		t.Errorf("upstream saw %d requests, want the 3 in UTF-8", len(got))
	}
	if e := ev.all("dyad.api.denied"); len(e) != 4 || e[0]["dyad.reason"] != reasonCharset || e[3]["dyad.reason"] != reasonHeaderParams {
		t.Errorf("denied events %v", e)
	}
}
