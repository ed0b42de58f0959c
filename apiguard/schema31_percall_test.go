package apiguard

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// listSpec31Ref is listSpec31 with its items a component and a JSON
// Schema 2020-12 keyword beside the reference: kin-openapi's choice of
// validator then depends on the reference (perCall31), the commonest
// shape of a 3.1 document's body schema.
const listSpec31Ref = `openapi: 3.1.0
info: {title: lists, version: "1"}
paths:
  /l:
    post:
      operationId: list
      requestBody:
        content:
          application/json:
            schema: {type: array, items: {$ref: "#/components/schemas/name"}, unevaluatedItems: false}
      responses:
        "200": {description: ok}
components:
  schemas:
    name: {type: string}
`

// skipUnfixed skips a test of a bound not kept yet (review31): it fails
// on main; DYAD_UNFIXED=1 runs it.
func skipUnfixed(t *testing.T) {
	t.Helper()
	if os.Getenv("DYAD_UNFIXED") == "" {
		t.Skip("fails on main (review31: a perCall31 schema's broken body is not bounded); DYAD_UNFIXED=1 runs it")
	}
}

// TestCheck31PerCallBrokenBodyBounded is TestCheck31BrokenBodyBounded for
// a schema kin-openapi's VisitJSON is still called for (perCall31): on
// main a 512 KiB body of numbers allocates 3.2 GB and takes 4 s, with no
// size bound and no listing turn.
func TestCheck31PerCallBrokenBodyBounded(t *testing.T) {
	skipUnfixed(t)
	s, err := ParseSpec("lists.yaml", []byte(listSpec31Ref))
	if err != nil {
		t.Fatal(err)
	}
	p := &Policy{Service: "lists", Spec: s, ValidateRequest: true, MaxBody: 1 << 20, Limits: map[*Operation]Rate{}}
	g := NewGuard(p, nil)
	body := "[" + strings.Repeat("1,", 256<<10-1) + "1]"
	req := parseRaw(t, "POST /l HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body)
	c := &conn{g: g, peer: "p"}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	d := c.decide(p, req, bufio.NewWriter(io.Discard))
	runtime.ReadMemStats(&m1)
	c.release()
	alloc := (m1.TotalAlloc - m0.TotalAlloc) >> 20
	if m := s.check31(s.doc.Paths.Find("/l").Post.RequestBody.Value.Content["application/json"].Schema.Value).mode; m != perCall31 {
		t.Fatalf("the body schema is checked in mode %d, want perCall31", m)
	}
	t.Logf("512 KiB broken body: %d %s, %d MB allocated, detail %.200q", d.status, d.reason, alloc, d.detail)
	if d.status != http.StatusBadRequest {
		t.Errorf("status %d, want 400", d.status)
	}
	if alloc > 256 {
		t.Errorf("512 KiB broken body to a perCall31 schema: the check allocated %d MB, want at most 256", alloc)
	}
}

// TestResponse31PerCallBrokenBodyBounded is TestResponse31BrokenBodyBounded
// for a schema kin-openapi's VisitJSON is still called for (perCall31):
// the check must build a broken body's errors under the forward's turn
// and within the same bound. On main it allocates 797 MB without the
// turn.
func TestResponse31PerCallBrokenBodyBounded(t *testing.T) {
	skipUnfixed(t)
	s, err := ParseSpec("lists.yaml", []byte(`openapi: 3.1.0
info: {title: lists, version: "1"}
paths:
  /l:
    get:
      operationId: list
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {type: array, items: {$ref: "#/components/schemas/item"}, unevaluatedItems: false}
components:
  schemas:
    item: {type: object, properties: {n: {type: string}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	body := "[" + strings.Repeat(`{"n":1},`, 64<<10) + `{"n":1}]`
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
	stats := &ResponseStats{}
	c := &CheckedConn{p: &ResponsePolicy{Peer: "p", Service: "s", Spec: s, Block: true, MaxBody: 1 << 20}, stats: stats}
	pr := pairedRequest{req: req, route: route, params: params, op: s.byOp[route.Operation]}
	jmt := jsonResponseCase(route, req, resp)
	held, _ := io.ReadAll(resp.Body)
	stats.collect() // another check of the forward is collecting errors
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	got := c.check(resp, pr, jmt, held)
	reason, keyword := responseReason(got)
	runtime.ReadMemStats(&m1)
	c.release()
	alloc := (m1.TotalAlloc - m0.TotalAlloc) >> 20
	t.Logf("%d KiB body: %s/%s, %d MB allocated, err %.100v", len(body)>>10, reason, keyword, alloc, got)
	if alloc > 256 {
		t.Errorf("the check allocated %d MB, want at most 256", alloc)
	}
	if got != errJSONBudget {
		t.Errorf("while another check collects errors: %.100v, want errJSONBudget (unchecked_busy)", got)
	}
}
