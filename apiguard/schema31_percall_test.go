package apiguard

import (
	"bufio"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// TestCheck31PerCallBrokenBodyBounded is TestCheck31BrokenBodyBounded for
// a schema that refers to a component and uses a 2020-12 keyword, which
// kin-openapi's VisitJSON was still called for (perCall31) until its
// components were copied as kin-openapi copies them (componentDefs): on
// main a 512 KiB body of numbers allocates 3.2 GB and takes 4 s, with no
// size bound and no listing turn.
func TestCheck31PerCallBrokenBodyBounded(t *testing.T) {
	// Items a component, a 2020-12 keyword in the schema: the
	// commonest shape of a 3.1 body schema, compiled31 with the component
	// copied (componentDefs).
	s := listSpec31(t, `{type: array, items: {$ref: "#/components/schemas/name"}, unevaluatedItems: false}`, "name: {type: string}")
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
	if m := s.check31(s.doc.Paths.Find("/l").Post.RequestBody.Value.Content["application/json"].Schema.Value).mode; m != compiled31 {
		t.Fatalf("the body schema is checked in mode %d, want compiled31 (its component copied into $defs)", m)
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
// for a schema that refers to a component and uses a 2020-12 keyword
// (perCall31 before componentDefs):
// the check must build a broken body's errors under the forward's turn
// and within the same bound. On main it allocates 797 MB without the
// turn.
func TestResponse31PerCallBrokenBodyBounded(t *testing.T) {
	for _, items := range []string{
		`{$ref: "#/components/schemas/item"}`,                   // compiled31
		`{$ref: "#/components/schemas/item", minProperties: 1}`, // perCall31: a keyword beside the reference
	} {
		response31TurnHeld(t, items)
	}
}

func response31TurnHeld(t *testing.T, items string) {
	s := listResponseSpec31(t, `{type: array, items: `+items+`, unevaluatedItems: false}`, "item: {type: object, properties: {n: {type: string}}}")
	body := "[" + strings.Repeat(`{"n":1},`, 64<<10) + `{"n":1}]`
	stats := &ResponseStats{}
	stats.collect() // another check of the forward is collecting errors
	reason, keyword, alloc, got := checkResponse31(t, s, stats, body)
	t.Logf("%d KiB body: %s/%s, %d MB allocated, err %.100v", len(body)>>10, reason, keyword, alloc, got)
	if alloc > 256 {
		t.Errorf("the check allocated %d MB, want at most 256", alloc)
	}
	if got != errJSONBudget {
		t.Errorf("while another check collects errors: %.100v, want errJSONBudget (unchecked_busy)", got)
	}
}

// TestCheck31PerCallTurn: kin-openapi's own check (perCall31) builds an
// error for each of a broken body's values, so a body over listBody is
// checked only with the peer's listing turn: while another request holds
// it, 503 memory_budget after budgetWait; once free, checked, and the
// turn given back with the check.
func TestCheck31PerCallTurn(t *testing.T) {
	// A keyword beside the component reference (3.1 allows it): the
	// schema kin-openapi's loader gives such a reference is not the
	// guard's to name, so its check stays kin-openapi's (perCall31).
	s := listSpec31(t, `{type: array, items: {$ref: "#/components/schemas/name", maxLength: 3}, unevaluatedItems: false}`, "name: {type: string}")
	if m := s.check31(s.doc.Paths.Find("/l").Post.RequestBody.Value.Content["application/json"].Schema.Value).mode; m != perCall31 {
		t.Fatalf("the body schema is checked in mode %d, want perCall31", m)
	}
	p := &Policy{Service: "lists", Spec: s, ValidateRequest: true, MaxBody: 1 << 20, Limits: map[*Operation]Rate{}}
	g := NewGuard(p, nil)
	body := "[" + strings.Repeat(`"a",`, 25<<10) + `"a"]` // 100 KiB, keeps the schema
	decide := func() decision {
		req := parseRaw(t, "POST /l HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: "+
			strconv.Itoa(len(body))+"\r\n\r\n"+body)
		c := &conn{g: g, peer: "p"}
		defer c.release()
		return c.decide(p, req, bufio.NewWriter(io.Discard))
	}
	b := g.budget("p")
	b.listing.Store(true) // another request of the peer holds the turn
	if d := decide(); d.status != http.StatusServiceUnavailable || d.reason != "memory_budget" {
		t.Errorf("with the turn held: %d %s, want 503 memory_budget", d.status, d.reason)
	}
	b.listing.Store(false)
	if d := decide(); d.status != 0 {
		t.Errorf("with the turn free: %d %s %.200q, want it forwarded", d.status, d.reason, d.detail)
	}
	if b.listing.Load() {
		t.Error("the listing turn is held after the check")
	}
}
