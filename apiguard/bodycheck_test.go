package apiguard

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
)

// bodySpec30 and bodySpec31 are schemas for TestCheckJSONBodyAsKin:
// limits, additional properties, defaults, a titled and a referenced
// schema, +json and non-JSON media types.
const bodySpec30 = `openapi: 3.0.3
info: {title: bodies, version: "1"}
paths:
  /a:
    post:
      operationId: a
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              additionalProperties: false
              required: [data]
              properties:
                data: {type: string, maxLength: 8}
                n: {type: integer, minimum: 1}
                d: {type: string, default: "dflt"}
                list: {type: array, items: {type: number}, maxItems: 3}
          application/vnd.api+json:
            schema: {type: object, required: [data], properties: {data: {type: string}}}
          text/plain:
            schema: {type: string}
      responses:
        "200": {description: ok}
  /t:
    post:
      operationId: titled
      requestBody:
        content:
          application/json:
            schema: {title: Thing, type: object, properties: {x: {type: boolean}}}
      responses:
        "200": {description: ok}
  /r:
    post:
      operationId: referenced
      requestBody:
        content:
          application/*:
            schema: {$ref: "#/components/schemas/Ref"}
      responses:
        "200": {description: ok}
components:
  schemas:
    Ref: {type: object, required: [id], properties: {id: {type: integer}, tag: {type: string, default: t}}}
`

const bodySpec31 = `openapi: 3.1.0
info: {title: bodies 3.1, version: "1"}
paths:
  /a:
    post:
      operationId: a
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [name]
              properties:
                name: {type: [string, "null"]}
                kind: {type: string, default: k, enum: [k, l]}
                n: {type: integer, exclusiveMinimum: 0}
      responses:
        "200": {description: ok}
  /t:
    post:
      operationId: keywords2020
      requestBody:
        content:
          application/json:
            schema:
              type: object
              properties:
                at: {type: string, format: date-time}
                kind: {const: card}
                tags: {type: array, prefixItems: [{type: string}], items: false}
              if: {properties: {kind: {const: card}}, required: [kind]}
              then: {required: [at]}
              unevaluatedProperties: false
      responses:
        "200": {description: ok}
  /r:
    post:
      operationId: referenced
      requestBody:
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Ref"}
      responses:
        "200": {description: ok}
  /n:
    post:
      operationId: referencedNullable
      requestBody:
        content:
          application/json:
            schema: {type: object, properties: {ref: {$ref: "#/components/schemas/Ref"}, note: {type: string, nullable: true}}}
      responses:
        "200": {description: ok}
components:
  schemas:
    Ref: {type: object, required: [id], properties: {id: {type: integer}, tag: {type: string, default: t}}}
`

// TestCheckJSONBodyAsKin: checkJSONBody decides every body it takes as
// kin-openapi's ValidateRequestBody does (the same error text, reason and
// forwarded body, defaults written in), and the bodies it does not take
// are left to kin-openapi (fast false).
func TestCheckJSONBodyAsKin(t *testing.T) {
	type tc struct {
		path, ctype, body string
		fast              bool // checkJSONBody takes it
	}
	cases30 := []tc{
		{"/a", "application/json", `{"data":"x"}`, true},
		{"/a", "application/json", `{"data":"x","d":"given","n":3,"list":[1,2.5]}`, true},
		{"/a", "application/json; charset=utf-8", `{"data":"x"}`, true},
		{"/a", "Application/JSON", `{"data":"x"}`, true},
		{"/a", " application/json ;charset=utf-8", `{"data":"x"}`, true},
		{"/a", "application/json", `{"data":"toolongvalue"}`, true},
		{"/a", "application/json", `{"data":"x","other":1}`, true},
		{"/a", "application/json", `{"data":5}`, true},
		{"/a", "application/json", `{"n":0,"data":"x"}`, true},
		{"/a", "application/json", `{"data":"x","list":[1,2,3,4]}`, true},
		{"/a", "application/json", `{}`, true},
		{"/a", "application/json", `[]`, true},
		{"/a", "application/json", `"str"`, true},
		{"/a", "application/json", `{"data":"x","data":"y"}`, true},
		{"/a", "application/json", `{"data":"x"}{"data":"y"}`, true},
		{"/a", "application/json", `{"data":"x"`, true},
		{"/a", "application/json", `{"data":"\u00e9\ud83d\ude00"}`, true},
		{"/a", "application/json", `{"data":"x"}  ` + "\n", true},
		{"/a", "application/vnd.api+json", `{"data":"x"}`, true},
		{"/a", "application/vnd.api+json", `{"nodata":1}`, true},
		{"/a", "text/plain", `hello`, false},
		{"/a", "application/xml", `<a/>`, false},
		{"/a", "", `{"data":"x"}`, false},
		{"/a", "application/merge-patch+json", `{"data":"x"}`, false},
		{"/t", "application/json", `{"x":true}`, true},
		{"/t", "application/json", `{"x":"no"}`, true},
		{"/r", "application/json", `{"id":1}`, true},
		{"/r", "application/json", `{"id":"one"}`, true},
		{"/r", "application/problem+json", `{"id":2,"tag":"given"}`, true},
		{"/r", "application/ld+json", `{"tag":"x"}`, true},
		{"/r", "application/x-custom+json", `{"id":1}`, true}, // kin-openapi falls back to the JSON decoder: charged here
	}
	cases31 := []tc{
		{"/a", "application/json", `{"name":null}`, true},
		{"/a", "application/json", `{"name":"n","kind":"l","n":1}`, true},
		{"/a", "application/json", `{"name":"n","kind":"z"}`, true},
		{"/a", "application/json", `{"name":"n","n":0}`, true},
		{"/a", "application/json", `{"name":5}`, true},
		{"/t", "application/json", `{"kind":"card","at":"2026-12-07T02:00:00Z"}`, true},
		{"/t", "application/json", `{"kind":"card"}`, true},
		{"/t", "application/json", `{"kind":"card","at":"yesterday"}`, true},
		{"/t", "application/json", `{"kind":"cash","x":1}`, true},
		{"/t", "application/json", `{"tags":["a",1]}`, true},
		{"/r", "application/json", `{"id":1}`, true},
		{"/r", "application/json", `{"id":1,"tag":"given"}`, true},
		{"/r", "application/json", `{"id":"one"}`, true},
		{"/n", "application/json", `{"ref":{"id":2},"note":null}`, true},
		{"/n", "application/json", `{"ref":{"id":2},"note":"x"}`, true},
	}
	for _, sc := range []struct {
		spec  string
		cases []tc
	}{{bodySpec30, cases30}, {bodySpec31, cases31}} {
		s, err := ParseSpec("bodies.yaml", []byte(sc.spec))
		if err != nil {
			t.Fatal(err)
		}
		p := &Policy{Service: "bodies", Spec: s, ValidateRequest: true, Limits: map[*Operation]Rate{}}
		g := NewGuard(p, nil)
		for _, k := range sc.cases {
			fast := compareWithKin(t, s, p, g, k.path, k.ctype, k.body)
			if fast != k.fast {
				t.Errorf("%s %s %s %s: checkJSONBody takes it: %v, want %v", s.doc.OpenAPI, k.path, k.ctype, k.body, fast, k.fast)
			}
		}
	}
}

// compareWithKin runs one request through the guard's decide and through
// kin-openapi's whole ValidateRequest (as the guard took it before
// checkJSONBody) and reports any difference in reason, problem text or
// forwarded body; fast says whether checkJSONBody took the body.
func compareWithKin(t *testing.T, s *Spec, p *Policy, g *Guard, path, ctype, body string) (fast bool) {
	t.Helper()
	name := s.doc.OpenAPI + " " + path + " " + ctype + " " + body
	raw := "POST " + path + " HTTP/1.1\r\nHost: h\r\n"
	if ctype != "" {
		raw += "Content-Type: " + ctype + "\r\n"
	}
	raw += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body

	// The guard's path.
	req := parseRaw(t, raw)
	c := &conn{g: g, peer: "p"}
	route, _, err := s.findRoute(req)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	fast = jsonBodyCase(route, req, []byte(body)).mt != nil
	d := c.decide(p, req, bufio.NewWriter(io.Discard))
	if r := bodyCharset([]string{ctype}); r != "" && body != "" {
		// The guard's own check of a body's charset, before
		// kin-openapi's and stricter (TestGuardBodyCharset): nothing to
		// compare. An empty body has none to check.
		if d.reason != r {
			t.Errorf("%s: guard %q, want its charset check's %q", name, d.reason, r)
		}
		c.release()
		return fast
	}
	var fwd []byte
	if d.status == 0 {
		fwd, _ = io.ReadAll(req.Body)
		if int64(len(fwd)) != req.ContentLength {
			t.Errorf("%s: forwarded %d bytes, Content-Length %d", name, len(fwd), req.ContentLength)
		}
	}
	c.release()

	// kin-openapi's whole path.
	kreq := parseRaw(t, raw)
	data, _ := io.ReadAll(kreq.Body)
	kreq.Body = io.NopCloser(bytes.NewReader(data))
	kreq.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	kroute, kparams, _ := s.findRoute(kreq)
	in := &openapi3filter.RequestValidationInput{Request: kreq, PathParams: kparams, Route: kroute, Options: validateAll}
	var kreason, kdetail string
	var kfwd []byte
	if err := openapi3filter.ValidateRequest(validateDoc, in); err != nil {
		kreason, kdetail = validationReason(err), truncate(err.Error(), 400)
	} else {
		kfwd, _ = io.ReadAll(kreq.Body)
	}
	if d.reason != kreason || !sameDetail(d.detail, kdetail) {
		t.Errorf("%s:\nguard       %q %q\nkin-openapi %q %q", name, d.reason, d.detail, kreason, kdetail)
	}
	if !bytes.Equal(fwd, kfwd) {
		t.Errorf("%s: forwarded body %q, kin-openapi's %q", name, fwd, kfwd)
	}
	return fast
}

// FuzzCheckJSONBodyAsKin is TestCheckJSONBodyAsKin on any body and media
// type: checkJSONBody and kin-openapi's ValidateRequestBody decide alike.
func FuzzCheckJSONBodyAsKin(f *testing.F) {
	f.Add(false, "/a", "application/json", `{"data":"x"}`)
	f.Add(false, "/a", "application/json; charset=utf-8", `{"data":"x","d":"y","n":2,"list":[1]}`)
	f.Add(false, "/r", "application/problem+json", `{"id":1}`)
	f.Add(false, "/t", "Application/JSON", `{"x":true}`)
	f.Add(true, "/a", "application/json", `{"name":null,"kind":"l"}`)
	specs := map[bool]*Spec{}
	for v31, text := range map[bool]string{false: bodySpec30, true: bodySpec31} {
		s, err := ParseSpec("bodies.yaml", []byte(text))
		if err != nil {
			f.Fatal(err)
		}
		specs[v31] = s
	}
	f.Fuzz(func(t *testing.T, v31 bool, path, ctype, body string) {
		switch path {
		case "/a", "/t", "/r":
		case "/n":
			if !v31 {
				return
			}
		default:
			return
		}
		if strings.ContainsAny(ctype, "\r\n") || !validFieldValue(ctype) {
			return
		}
		s := specs[v31]
		p := &Policy{Service: "bodies", Spec: s, ValidateRequest: true, Limits: map[*Operation]Rate{}}
		compareWithKin(t, s, p, NewGuard(p, nil), path, ctype, body)
	})
}

// sameDetail says whether two problem details (error texts cut at 400
// bytes) are the same: equal, or the same list of errors in another order
// (sameErrors), or both a list cut short, whose order kin-openapi's JSON
// Schema 2020-12 validator takes from Go's map order: which errors are in
// the first 400 bytes is then chance, for kin-openapi as for the guard.
func sameDetail(a, b string) bool {
	if sameErrors(a, b) {
		return true
	}
	cut := func(s string) bool { return strings.HasSuffix(s, "…") && strings.Contains(s, " | ") }
	return cut(a) && cut(b)
}

// validFieldValue says whether net/http's parser takes v as a field value.
func validFieldValue(v string) bool {
	for _, c := range []byte(v) {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func parseRaw(t *testing.T, raw string) *http.Request {
	t.Helper()
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestGuardRequiredBodyMissing: a request without a body to an operation
// whose body the spec requires is refused 400 invalid_body, not
// forwarded. (On main it was forwarded: a request without a body skipped
// kin-openapi's body check.)
func TestGuardRequiredBodyMissing(t *testing.T) {
	s, err := ParseSpec("bodies.yaml", []byte(bodySpec30))
	if err != nil {
		t.Fatal(err)
	}
	p := &Policy{Service: "bodies", Spec: s, ValidateRequest: true, Limits: map[*Operation]Rate{}}
	g := NewGuard(p, nil)
	for _, raw := range []string{
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		c := &conn{g: g, peer: "p"}
		d := c.decide(p, parseRaw(t, raw), bufio.NewWriter(io.Discard))
		c.release()
		if d.status != http.StatusBadRequest || d.reason != "invalid_body" {
			t.Errorf("%q: status %d reason %q, want 400 invalid_body", raw, d.status, d.reason)
		}
	}
	// Not required: no body passes.
	c := &conn{g: g, peer: "p"}
	d := c.decide(p, parseRaw(t, "POST /t HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"), bufio.NewWriter(io.Discard))
	c.release()
	if d.status != 0 {
		t.Errorf("an optional body left out: status %d reason %q, want forwarded", d.status, d.reason)
	}
}

// TestCheckJSONBodyNoAlias: a validated body is decoded where it is held
// (checkJSONBody shares the pooled buffer's bytes), so what outlives the
// request must be copies: the problem detail, which quotes the body's
// names, stays as it was when the buffer is given back and written over
// by another request, and the next request's decision does not see the
// first one's bytes.
func TestCheckJSONBodyNoAlias(t *testing.T) {
	p := benchPolicy(t)
	c := &conn{g: NewGuard(p, nil), peer: "bench"}
	decide := func(body string) decision { return decidePost(t, c, p, "/v1/echo", "application/json", body) }
	first := decide(`{"data":"x","q7q7q7":1}`)
	if first.status != http.StatusBadRequest || !strings.Contains(first.detail, "q7q7q7") {
		t.Fatalf("first request: status %d, detail %q; want 400 naming q7q7q7", first.status, first.detail)
	}
	detail := strings.Clone(first.detail)
	// Write over the buffers the pool holds now (the first one's among
	// them), through another request and by hand.
	if d := decide(`{"data":"x","r8r8r8":2}`); d.status != http.StatusBadRequest || strings.Contains(d.detail, "q7q7q7") ||
		!strings.Contains(d.detail, "r8r8r8") {
		t.Errorf("second request: status %d, detail %q; want 400 naming r8r8r8 only", d.status, d.detail)
	}
	var held []*[chunkHead + bodyChunk + 2]byte
	for range 4 {
		b := bodyBufs.Get().(*[chunkHead + bodyChunk + 2]byte)
		for i := range b {
			b[i] = '#'
		}
		held = append(held, b)
	}
	for _, b := range held {
		bodyBufs.Put(b)
	}
	if first.detail != detail {
		t.Errorf("the first request's detail changed after its buffer was reused: %q, was %q", first.detail, detail)
	}
}
