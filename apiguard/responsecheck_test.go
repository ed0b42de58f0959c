package apiguard

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
)

// respSpec30 and respSpec31 are response schemas for
// TestCheckJSONResponseAsKin: additional properties forbidden (at the top
// and nested), limits, a required header, a default response, a titled
// and a referenced schema, +json, YAML, text and binary media types.
const respSpec30 = `openapi: 3.0.3
info: {title: responses, version: "1"}
paths:
  /a:
    get:
      operationId: a
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema:
                type: object
                additionalProperties: false
                required: [id]
                properties:
                  id: {type: integer, minimum: 1}
                  name: {type: string, maxLength: 8}
                  tags: {type: array, items: {type: string}, maxItems: 3}
                  nested:
                    type: object
                    properties:
                      inner: {type: object, additionalProperties: false, properties: {n: {type: integer}}}
            application/vnd.api+json:
              schema: {type: object, required: [data], properties: {data: {type: string}}}
            text/plain:
              schema: {type: string}
            application/yaml:
              schema: {type: object, required: [id], properties: {id: {type: integer}}}
            application/octet-stream:
              schema: {type: string, format: binary}
        "201":
          description: created, with a header
          headers:
            X-Rate: {required: true, schema: {type: integer}}
          content:
            application/json:
              schema: {type: array, items: {type: integer}}
        "301": {description: moved, content: {application/json: {schema: {type: object, required: [to]}}}}
        "404": {description: none}
        default:
          description: an error
          content:
            application/*:
              schema: {$ref: "#/components/schemas/Problem"}
  /t:
    get:
      operationId: titled
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {title: Thing, type: object, properties: {x: {type: boolean}}}
    head:
      operationId: headTitled
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {type: object, required: [x]}
components:
  schemas:
    Problem: {type: object, required: [title], properties: {title: {type: string}, status: {type: integer}}}
`

const respSpec31 = `openapi: 3.1.0
info: {title: responses 3.1, version: "1"}
paths:
  /a:
    get:
      operationId: a
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema:
                type: object
                required: [name]
                unevaluatedProperties: false
                properties:
                  name: {type: [string, "null"]}
                  kind: {type: string, enum: [k, l]}
                  n: {type: integer, exclusiveMinimum: 0}
  /r:
    get:
      operationId: referenced
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {type: array, items: {$ref: "#/components/schemas/Item"}}
        "201":
          description: ok, nullable (not a 3.1 keyword)
          content:
            application/json:
              schema: {type: object, properties: {item: {$ref: "#/components/schemas/Item"}, note: {type: string, nullable: true}}}
components:
  schemas:
    Item: {type: object, additionalProperties: false, required: [id], properties: {id: {type: integer}, at: {type: string, format: date-time}}}
`

// TestCheckJSONResponseAsKin: a response checked by checkJSONResponse (a
// JSON body, decoded by the guard's charged decoder) gets the same error,
// and so the same finding (reason and keyword), as from kin-openapi's
// whole ValidateResponse, which the checker called for every response
// before; responses it does not take are left to kin-openapi (fast false).
func TestCheckJSONResponseAsKin(t *testing.T) {
	type tc struct {
		method, path string
		status       int
		ctype, body  string
		header       string // another header field, "" for none
		fast         bool   // checkJSONResponse takes it
	}
	deep := strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1)
	cases30 := []tc{
		{"GET", "/a", 200, "application/json", `{"id":1}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1,"name":"n","tags":["a","b"],"nested":{"inner":{"n":2}}}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":"x"}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":0}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1,"name":"far too long"}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1,"tags":["a","b","c","d"]}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1,"iban":"DE89"}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":"x","iban":"DE89","name":5}`, "", true},
		{"GET", "/a", 200, "application/json", `{}`, "", true},
		{"GET", "/a", 200, "application/json", `{"name":"n"}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1,"nested":{"inner":{"n":"x"}}}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1,"nested":{"inner":{"z":1}}}`, "", true},
		{"GET", "/a", 200, "application/json", `[]`, "", true},
		{"GET", "/a", 200, "application/json", `null`, "", true},
		{"GET", "/a", 200, "application/json", `nope`, "", true},
		{"GET", "/a", 200, "application/json", ``, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1}{"id":"x"}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1,"id":"x"}`, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1,"ID":"x"}`, "", true},
		{"GET", "/a", 200, "application/json", deep, "", true},
		{"GET", "/a", 200, "application/json", `{"id":1,"name":"\u00e9\ud83d\ude00"}`, "", true},
		{"GET", "/a", 200, "application/json; charset=utf-8", `{"id":1}`, "", true},
		{"GET", "/a", 200, "Application/JSON", `{"id":"x"}`, "", true},
		{"GET", "/a", 200, "application/vnd.api+json", `{"data":"x"}`, "", true},
		{"GET", "/a", 200, "application/vnd.api+json", `{"data":1}`, "", true},
		{"GET", "/a", 200, "text/plain", `hello`, "", false},
		{"GET", "/a", 200, "application/yaml", "id: x\n", "", false},
		{"GET", "/a", 200, "application/yaml", "id: 1\n", "", false},
		{"GET", "/a", 200, "application/octet-stream", "\x00\x01", "", false},
		{"GET", "/a", 200, "application/xml", `<a/>`, "", false},
		{"GET", "/a", 200, "", `{"id":1}`, "", false},
		{"GET", "/a", 201, "application/json", `[1,2,3]`, "X-Rate: 5", true},
		{"GET", "/a", 201, "application/json", `[1,"2",3,"4"]`, "X-Rate: 5", true},
		{"GET", "/a", 201, "application/json", `[1,2,3]`, "", true},
		{"GET", "/a", 201, "application/json", `[1,2,3]`, "X-Rate: many", true},
		{"GET", "/a", 201, "application/json", `{"not":"an array"}`, "", true},
		{"GET", "/a", 301, "application/json", `{}`, "", false},
		{"GET", "/a", 404, "application/json", `{"anything":1}`, "", false},
		{"GET", "/a", 418, "application/json", `{"id":1}`, "", true}, // the default response
		{"GET", "/t", 418, "application/json", `{"x":true}`, "", false},
		{"GET", "/a", 500, "application/problem+json", `{"title":"t","status":500}`, "", true},
		{"GET", "/a", 500, "application/problem+json", `{"status":"500"}`, "", true},
		{"GET", "/a", 503, "application/x-custom+json", `{"title":1}`, "", true},
		{"GET", "/a", 502, "text/html", `<p>bad gateway</p>`, "", false},
		{"HEAD", "/t", 200, "application/json", ``, "", false},
		{"GET", "/t", 200, "application/json", `{"x":true}`, "", true},
		{"GET", "/t", 200, "application/json", `{"x":"no"}`, "", true},
	}
	cases31 := []tc{
		{"GET", "/a", 200, "application/json", `{"name":null}`, "", true},
		{"GET", "/a", 200, "application/json", `{"name":"n","kind":"l","n":1}`, "", true},
		{"GET", "/a", 200, "application/json", `{"name":"n","kind":"z"}`, "", true},
		{"GET", "/a", 200, "application/json", `{"name":"n","n":0}`, "", true},
		{"GET", "/a", 200, "application/json", `{"name":5}`, "", true},
		{"GET", "/a", 200, "application/json", `{"name":"n","extra":1}`, "", true},
		{"GET", "/a", 200, "application/json", `{"kind":"k"}`, "", true},
		{"GET", "/r", 200, "application/json", `[{"id":1},{"id":2,"at":"2026-12-07T02:00:00Z"}]`, "", true},
		{"GET", "/r", 200, "application/json", `[{"id":1,"extra":1}]`, "", true},
		{"GET", "/r", 200, "application/json", `[{"id":"x","at":"noon"}]`, "", true},
		{"GET", "/r", 201, "application/json", `{"item":{"id":1},"note":null}`, "", true},
		{"GET", "/r", 201, "application/json", `{"item":{"id":1,"x":2}}`, "", true},
	}
	for _, sc := range []struct {
		spec  string
		cases []tc
	}{{respSpec30, cases30}, {respSpec31, cases31}} {
		s, err := ParseSpec("responses.yaml", []byte(sc.spec))
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range sc.cases {
			fast := compareResponseWithKin(t, s, k.method, k.path, k.status, k.ctype, k.header, k.body)
			if fast != k.fast {
				t.Errorf("%s %s %s %d %s %.40s: checkJSONResponse takes it: %v, want %v", s.doc.OpenAPI, k.method, k.path, k.status, k.ctype, k.body, fast, k.fast)
			}
		}
	}
}

// compareResponseWithKin checks one response as CheckedConn.final does
// and with kin-openapi's whole ValidateResponse (as the checker did before
// checkJSONResponse) and reports any difference in the error's text and
// the finding's reason and keyword; fast says whether checkJSONResponse
// took it. The forward's budget is 0 again after.
func compareResponseWithKin(t *testing.T, s *Spec, method, path string, status int, ctype, header, body string) (fast bool) {
	t.Helper()
	name := fmt.Sprintf("%s %s %s %d %q %q %.60q", s.doc.OpenAPI, method, path, status, ctype, header, body)
	raw := fmt.Sprintf("HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	if ctype != "" {
		raw += "Content-Type: " + ctype + "\r\n"
	}
	if header != "" {
		raw += header + "\r\n"
	}
	raw += fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(body), body)
	req := parseRaw(t, method+" "+path+" HTTP/1.1\r\nHost: h\r\n\r\n")
	route, params, err := s.findRoute(req)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	readResp := func() *http.Response {
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return resp
	}

	// The checker's path, as final takes it.
	stats := &ResponseStats{}
	c := &CheckedConn{p: &ResponsePolicy{Peer: "p", Service: "s", Spec: s, Block: true}, stats: stats}
	pr := pairedRequest{req: req, route: route, params: params, op: s.byOp[route.Operation]}
	resp := readResp()
	jmt := jsonResponseCase(route, req, resp)
	var held []byte
	if needsBody(route, resp) {
		held, _ = io.ReadAll(resp.Body)
	}
	got := c.check(resp, pr, jmt, held)
	defer func() {
		c.release()
		if stats.collecting.Load() {
			t.Errorf("%s: the forward's turn to collect errors is held after the finding", name)
		}
	}()
	if n := stats.buffered.Load(); n != 0 {
		t.Errorf("%s: the forward's budget holds %d bytes after the check, want 0", name, n)
	}

	// kin-openapi's whole path, the body as it came.
	kresp := readResp()
	data, _ := io.ReadAll(kresp.Body)
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 kresp.StatusCode,
		Header:                 kresp.Header,
		Body:                   io.NopCloser(bytes.NewReader(data)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	want := openapi3filter.ValidateResponse(context.Background(), in)
	switch {
	case (got == nil) != (want == nil):
		t.Errorf("%s:\nchecker     %v\nkin-openapi %v", name, got, want)
	case got != nil:
		gr, gk := responseReason(got)
		c.release()
		wr, wk := responseReason(want)
		if gr != wr || gk != wk || !sameErrors(got.Error(), want.Error()) {
			t.Errorf("%s:\nchecker     %s/%s %q\nkin-openapi %s/%s %q", name, gr, gk, got, wr, wk, want)
		}
	}
	return jmt != nil
}

// sameErrors says whether two error texts list the same errors (" | "
// between them): kin-openapi's JSON Schema 2020-12 validator lists some in
// an order that changes from run to run.
func sameErrors(a, b string) bool {
	if a == b {
		return true
	}
	// A list's first error follows its "validation failed due to: ".
	split := func(s string) []string {
		return strings.Split(strings.ReplaceAll(s, "validation failed due to: ", "validation failed due to:  | "), " | ")
	}
	as, bs := split(a), split(b)
	slices.Sort(as)
	slices.Sort(bs)
	return slices.Equal(as, bs)
}

// FuzzCheckJSONResponseAsKin is TestCheckJSONResponseAsKin on any body,
// status and media type: checkJSONResponse and kin-openapi's
// ValidateResponse decide alike.
func FuzzCheckJSONResponseAsKin(f *testing.F) {
	f.Add(false, "/a", 200, "application/json", `{"id":1}`)
	f.Add(false, "/a", 200, "application/json; charset=utf-8", `{"id":"x","extra":[1,{"a":null}]}`)
	f.Add(false, "/a", 201, "application/json", `[1,"2"]`)
	f.Add(false, "/a", 500, "application/problem+json", `{"title":"t"}`)
	f.Add(false, "/t", 200, "Application/JSON", `{"x":true}`)
	f.Add(true, "/a", 200, "application/json", `{"name":null,"kind":"l"}`)
	f.Add(true, "/r", 200, "application/json", `[{"id":1,"at":"x"}]`)
	f.Add(true, "/r", 201, "application/json", `{"note":null}`)
	specs := map[bool]*Spec{}
	for v31, text := range map[bool]string{false: respSpec30, true: respSpec31} {
		s, err := ParseSpec("responses.yaml", []byte(text))
		if err != nil {
			f.Fatal(err)
		}
		specs[v31] = s
	}
	f.Fuzz(func(t *testing.T, v31 bool, path string, status int, ctype, body string) {
		switch path {
		case "/a", "/t", "/r":
		default:
			return
		}
		if v31 && path == "/t" || !v31 && path == "/r" || status < 200 || status > 599 || strings.ContainsAny(ctype, "\r\n") || !validFieldValue(ctype) {
			return
		}
		compareResponseWithKin(t, specs[v31], "GET", path, status, ctype, "", body)
	})
}

// TestResponseReason31Undeclared: under OpenAPI 3.1 (JSON Schema
// 2020-12), a property that unevaluatedProperties: false forbids is an
// undeclared property (OWASP API3), as additionalProperties: false is
// under 3.0: kin-openapi's error for it carries no keyword, only the false
// schema it failed.
func TestResponseReason31Undeclared(t *testing.T) {
	s, err := ParseSpec("r31.yaml", []byte(respSpec31))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "/a", nil)
	route, params, err := s.findRoute(req)
	if err != nil {
		t.Fatal(err)
	}
	for body, want := range map[string][2]string{
		`{"name":"x","extra":1}`: {ReasonUndeclaredProperty, "unevaluatedProperties"},
		`{"name":5}`:             {ReasonSchemaViolation, "type"},
	} {
		in := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
			Status:                 200, Header: http.Header{"Content-Type": {"application/json"}},
			Body:    io.NopCloser(strings.NewReader(body)),
			Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
		}
		err := openapi3filter.ValidateResponse(context.Background(), in)
		if reason, keyword := responseReason(err); reason != want[0] || keyword != want[1] {
			t.Errorf("%s: %s %q, want %s %q (%v)", body, reason, keyword, want[0], want[1], err)
		}
	}
}
