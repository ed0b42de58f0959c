package apiguard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// echoRig31 is newEchoRig on rr-api's spec as an OpenAPI 3.1 document.
func echoRig31(tb testing.TB) *echoRig {
	data, err := os.ReadFile("testdata/bench.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	s, err := ParseSpec("bench31.yaml", bytes.Replace(data, []byte("openapi: 3.0.3"), []byte("openapi: 3.1.0"), 1))
	if err != nil {
		tb.Fatal(err)
	}
	up := &fixedUpstream{}
	r := newEchoRig(tb, up, &up.resp, io.Discard)
	r.c.g = NewGuard(&Policy{Service: "bench", Spec: s, ValidateRequest: true, Limits: map[*Operation]Rate{}}, nil)
	return r
}

// TestGuardRequest31Allocs: an rr-api request to a 3.1 document costs the
// guard what it costs for a 3.0 one, give or take the validator's own
// few: kin-openapi's VisitJSON would build the schema's JSON Schema
// 2020-12 validator again for every body (about 480 allocations and 50 µs
// here; before visitJSON31 this test counted 506).
func TestGuardRequest31Allocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates, and sync.Pool drops at random")
	}
	r := echoRig31(t)
	n := testing.AllocsPerRun(200, func() {
		if !r.one() {
			t.Fatal("the request ended the stream")
		}
	})
	const bound = 40
	t.Logf("%v allocations per request", n)
	if n > bound {
		t.Errorf("one rr-api request to a 3.1 document allocated %v times in the guard, want at most %d", n, bound)
	}
}

// BenchmarkGuardRequest31 is BenchmarkGuardRequest on a 3.1 document.
func BenchmarkGuardRequest31(b *testing.B) {
	r := echoRig31(b)
	b.ReportAllocs()
	for b.Loop() {
		if !r.one() {
			b.Fatal("the request ended the stream")
		}
	}
}

// spec31Schemas are 3.1 schemas for TestVisit31AsKin, by name, and the
// mode visitJSON31 checks each in.
const spec31Schemas = `openapi: 3.1.0
info: {title: schemas, version: "1"}
paths:
  /x:
    get:
      operationId: x
      responses:
        "200": {description: ok}
components:
  schemas:
    plain:
      type: object
      required: [id]
      properties:
        id: {type: integer, minimum: 1}
        name: {type: [string, "null"], maxLength: 5}
        at: {type: string, format: date-time}
        mail: {type: string, format: email}
        n: {type: number, exclusiveMaximum: 10, format: int32}
        kind: {type: string, default: k}
    keywords:
      type: object
      properties:
        kind: {const: card}
        tags: {type: array, prefixItems: [{type: string}], items: false}
        code: {type: string, pattern: "^[A-Z]{3}$"}
      if: {properties: {kind: {const: card}}, required: [kind]}
      then: {required: [code]}
      dependentRequired: {code: [kind]}
      unevaluatedProperties: false
    referencing:
      type: array
      items: {$ref: "#/components/schemas/item"}
    referencingNullable:
      type: object
      properties: {item: {$ref: "#/components/schemas/item"}, note: {type: string, nullable: true}}
    referencing2020:
      type: object
      properties: {item: {$ref: "#/components/schemas/item"}}
      unevaluatedProperties: false
    item:
      type: object
      additionalProperties: false
      required: [id]
      properties:
        id: {type: integer}
        tag: {type: string, default: t}
`

// TestVisit31AsKin: visitJSON31 gives what kin-openapi's VisitJSON with
// JSON Schema 2020-12 gives, for schemas of each mode and values that
// keep and break them: the same error text (the same errors, in any
// order: the validator takes some of its order from Go's maps), the same
// defaults written in, and each schema is checked in the mode expected.
func TestVisit31AsKin(t *testing.T) {
	s, err := ParseSpec("schemas.yaml", []byte(spec31Schemas))
	if err != nil {
		t.Fatal(err)
	}
	modes := map[string]mode31{
		"plain": compiled31, "keywords": compiled31, "item": compiled31,
		"referencing": builtin31, "referencingNullable": perCall31, "referencing2020": compiled31,
	}
	values := map[string][]string{
		"plain": {`{"id":1}`, `{"id":0}`, `{"id":1,"name":null}`, `{"id":1,"name":"toolong"}`, `{"id":1,"at":"2026-12-07T02:00:00Z"}`,
			`{"id":1,"at":"noon"}`, `{"id":1,"mail":"a@b.example"}`, `{"id":1,"mail":"nope"}`, `{"id":1,"n":9.5}`, `{"id":1,"n":10}`,
			`{"id":"1","n":"x"}`, `[]`, `null`, `"s"`},
		"keywords": {`{}`, `{"kind":"card","code":"ABC"}`, `{"kind":"card"}`, `{"kind":"cash"}`, `{"code":"ABC"}`,
			`{"kind":"card","code":"abc"}`, `{"tags":["a"]}`, `{"tags":["a","b"]}`, `{"x":1}`, `{"kind":"card","code":"ABC","x":1,"y":2}`},
		"item":                {`{"id":1}`, `{"id":1,"x":2}`, `{}`},
		"referencing":         {`[]`, `[{"id":1}]`, `[{"id":1,"tag":"given"}]`, `[{"id":"x"}]`, `[{"id":1,"x":2},{"tag":1}]`, `{}`},
		"referencingNullable": {`{"note":null}`, `{"item":{"id":1},"note":"n"}`, `{"item":{}}`},
		"referencing2020":     {`{"item":{"id":1}}`, `{"item":{"id":1},"x":1}`, `{"item":{"id":"x"}}`},
	}
	for name, want := range modes {
		schema := s.doc.Components.Schemas[name].Value
		if got := s.check31(schema).mode; got != want {
			t.Errorf("%s: checked in mode %d, want %d", name, got, want)
		}
		for _, text := range values[name] {
			if msg := compare31(t, s, schema, text); msg != "" {
				t.Errorf("%s %s: %s", name, text, msg)
			}
		}
	}
}

// check31AsVisit is what the body checks do with a schema of a 3.1
// document, every error listed: by its mode (schema31), with the options
// of kin-openapi's VisitJSON with JSON Schema 2020-12 (with) or without it.
func check31AsVisit(s *Spec, schema *openapi3.Schema, value any, with, without []openapi3.SchemaValidationOption) error {
	v := s.check31(schema)
	switch v.mode {
	case builtin31:
		return schema.VisitJSON(value, without...)
	case perCall31:
		return schema.VisitJSON(value, with...)
	}
	if v.keeps(value) {
		return nil
	}
	return v.errorsOf(value)
}

func decodeValue(t *testing.T, text string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(text), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func jsonEqual(t *testing.T, a, b any) bool {
	t.Helper()
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return bytes.Equal(x, y)
}

// TestCheck31Bounded: a 3.1 spec's checks are built once per schema and
// spec, and only for the schemas asked for (a new spec, as a reload
// makes, starts empty).
func TestCheck31Bounded(t *testing.T) {
	s, err := ParseSpec("schemas.yaml", []byte(spec31Schemas))
	if err != nil {
		t.Fatal(err)
	}
	plain := s.doc.Components.Schemas["plain"].Value
	first := s.check31(plain)
	if s.check31(plain) != first {
		t.Error("a second check of the same schema built its validator again")
	}
	n := 0
	s.checks31.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Errorf("the spec holds %d checks after one schema's, want 1", n)
	}
	s2, err := ParseSpec("schemas.yaml", []byte(spec31Schemas))
	if err != nil {
		t.Fatal(err)
	}
	s2.checks31.Range(func(any, any) bool { t.Error("a new spec holds checks"); return false })
}

// listSpec31 is a 3.1 document whose POST /l takes a JSON body of schema,
// with components (YAML under components.schemas, or "").
func listSpec31(t *testing.T, schema, components string) *Spec {
	t.Helper()
	return parseListSpec31(t, `
  /l:
    post:
      operationId: list
      requestBody:
        content:
          application/json:
            schema: `+schema+`
      responses:
        "200": {description: ok}`, components)
}

// listResponseSpec31 is a 3.1 document whose GET /l answers 200 with a
// JSON body of schema, with components as listSpec31's.
func listResponseSpec31(t *testing.T, schema, components string) *Spec {
	t.Helper()
	return parseListSpec31(t, `
  /l:
    get:
      operationId: list
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: `+schema, components)
}

func parseListSpec31(t *testing.T, paths, components string) *Spec {
	t.Helper()
	text := "openapi: 3.1.0\ninfo: {title: lists, version: \"1\"}\npaths:" + paths + "\n"
	if components != "" {
		text += "components:\n  schemas:\n    " + components + "\n"
	}
	s, err := ParseSpec("lists.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCheck31BrokenBodyBounded: the JSON Schema 2020-12 validator builds
// every error of a broken body whatever it is asked, and kin-openapi
// turned each into its own with the subtree's text: a 512 KiB body of
// numbers to a list of strings took 2.2 GB and 2 s of the exporting
// daemon (the peer's memory budget is 72 MiB). The guard checks such a
// body for a yes or no first, lists the errors of a body of at most
// listBody bytes, one request of the peer at a time, and otherwise says
// they are not listed: the same 400 invalid_body.
func TestCheck31BrokenBodyBounded(t *testing.T) {
	// A list of strings: a body of numbers breaks it once per item.
	s := listSpec31(t, `{type: array, items: {type: string}}`, "")
	p := &Policy{Service: "lists", Spec: s, ValidateRequest: true, MaxBody: 1 << 20, Limits: map[*Operation]Rate{}}
	g := NewGuard(p, nil)
	// decide runs one request through c and says what it allocated.
	decide := func(c *conn, body string) (decision, uint64) {
		t.Helper()
		req := parseRaw(t, "POST /l HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: "+
			strconv.Itoa(len(body))+"\r\n\r\n"+body)
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		d := c.decide(p, req, bufio.NewWriter(io.Discard))
		runtime.ReadMemStats(&m1)
		return d, m1.TotalAlloc - m0.TotalAlloc
	}
	numbers := func(n int) string { return "[" + strings.Repeat("1,", n-1) + "1]" }

	c := &conn{g: g, peer: "p"}
	d, alloc := decide(c, numbers(256<<10))
	c.release()
	t.Logf("512 KiB broken body: %d %s, %d MB allocated, detail %q", d.status, d.reason, alloc>>20, d.detail)
	if d.status != http.StatusBadRequest || d.reason != "invalid_body" || !strings.Contains(d.detail, "not listed") {
		t.Errorf("512 KiB broken body: %d %s %q, want 400 invalid_body, errors not listed", d.status, d.reason, d.detail)
	}
	if alloc > 256<<20 {
		t.Errorf("512 KiB broken body: the check allocated %d MB, want at most 256", alloc>>20)
	}
	if d, _ := decide(c, `["a","b"]`); d.status != 0 {
		t.Errorf("a list of strings: %d %s, want it forwarded", d.status, d.reason)
	}
	c.release()

	// A small broken body's errors are listed, by one request of the
	// peer at a time, which gives the turn back once its answer's text
	// is taken (release).
	d, _ = decide(c, numbers(3))
	if d.status != http.StatusBadRequest || !strings.Contains(d.detail, `error at "/0"`) {
		t.Errorf("small broken body: %d %q, want 400 with its errors listed", d.status, d.detail)
	}
	if c.budget.listing.Load() {
		t.Error("the peer's listing turn is held after the answer")
	}
	c.release()
	c.budget.listing.Store(true) // another request of the peer lists
	d, _ = decide(c, numbers(3))
	c.release()
	if d.status != http.StatusBadRequest || !strings.Contains(d.detail, "not listed") {
		t.Errorf("while another request of the peer lists: %d %q, want 400, errors not listed", d.status, d.detail)
	}
	if !c.budget.listing.Load() {
		t.Error("a request that did not take the listing turn gave it back")
	}
	c.budget.listing.Store(false)
}

// TestResponse31BrokenBodyBounded: on the importing side a partner's
// broken 3.1 response body costs one error tree of the validator's, built
// under the forward's turn to collect errors, and at most maxListed of
// kin-openapi's errors (a 512 KiB body of numbers to a list of strings took
// 2.2 GB and 2 s before), and the finding is the one all the errors give.
func TestResponse31BrokenBodyBounded(t *testing.T) {
	s := listResponseSpec31(t, `{type: array, items: {type: object, properties: {n: {type: string}}, unevaluatedProperties: false}}`, "")
	for _, k := range []struct {
		item, reason, keyword string
	}{
		{`{"n":1}`, ReasonSchemaViolation, "type"},
		{`{"n":"a","x":1}`, ReasonUndeclaredProperty, "unevaluatedProperties"},
	} {
		// The undeclared property, if any, comes last: found wherever it is.
		body := "[" + strings.Repeat(`{"n":1},`, 64<<10) + k.item + "]"
		stats := &ResponseStats{}
		reason, keyword, alloc, _ := checkResponse31(t, s, stats, body)
		t.Logf("%d KiB body, last item %s: %s/%s, %d MB allocated", len(body)>>10, k.item, reason, keyword, alloc)
		if reason != k.reason || keyword != k.keyword {
			t.Errorf("last item %s: finding %s/%s, want %s/%s", k.item, reason, keyword, k.reason, k.keyword)
		}
		if alloc > 256 {
			t.Errorf("last item %s: the check allocated %d MB, want at most 256", k.item, alloc)
		}
		if stats.collecting.Load() {
			t.Error("the forward's turn to collect errors is held after the finding")
		}
	}
}

// checkResponse31 checks a 200 answer with body to GET /l of s as the
// importing side does (CheckedConn.check, with stats), and says the
// finding, the MB the check allocated and the error.
func checkResponse31(t *testing.T, s *Spec, stats *ResponseStats, body string) (reason, keyword string, alloc uint64, err error) {
	t.Helper()
	req := parseRaw(t, "GET /l HTTP/1.1\r\nHost: h\r\n\r\n")
	route, params, err := s.findRoute(req)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body)), req)
	if err != nil {
		t.Fatal(err)
	}
	c := &CheckedConn{p: &ResponsePolicy{Peer: "p", Service: "s", Spec: s, Block: true, MaxBody: 1 << 20}, stats: stats}
	pr := pairedRequest{req: req, route: route, params: params, op: s.byOp[route.Operation]}
	jmt := jsonResponseCase(route, req, resp)
	held, _ := io.ReadAll(resp.Body)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	err = c.check(resp, pr, jmt, held)
	reason, keyword = responseReason(err)
	runtime.ReadMemStats(&m1)
	c.release()
	return reason, keyword, (m1.TotalAlloc - m0.TotalAlloc) >> 20, err
}
