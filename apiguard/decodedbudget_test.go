package apiguard

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// numbersSpec is one operation whose body is an array of integers, among
// the densest JSON (about 52 bytes decoded per body byte,
// TestJSONDecodeCharge).
const numbersSpec = `openapi: 3.0.3
info: {title: numbers, version: "1"}
paths:
  /numbers:
    post:
      operationId: postNumbers
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: array, items: {type: integer}}
      responses:
        "201": {description: created}
`

// numbersGuard is a guard validating requests on numbersSpec, its body's
// media type replaced by mediaType, with max_body maxBody: the guard, its
// upstream and its events.
func numbersGuard(t *testing.T, mediaType string, maxBody int64) (*Guard, *payments, *events) {
	t.Helper()
	spec, err := ParseSpec("numbers.yaml", []byte(strings.ReplaceAll(numbersSpec, "application/json:", mediaType+":")))
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	return NewGuard(&Policy{Service: "numbers", Spec: spec, ValidateRequest: true, MaxBody: maxBody}, ev), newPayments(t), ev
}

// denseBody is a JSON array of one-digit numbers of at most n bytes.
func denseBody(n int) string {
	return "[" + strings.Repeat("0,", (n-3)/2) + "0]"
}

// TestGuardDecodedFormCharged: a JSON body's decoded form counts in the
// peer's budget while it is validated (THREATS P5). The budget is taken
// but for room for n raw bodies (twice over): on main their decoded forms
// (over 50 times the body) were not charged, all n were validated at once
// and forwarded; now each waits for budgetWait, is refused 503
// memory_budget, audited and counted, and gives back what it took. With
// the whole budget free, n concurrent dense bodies pass (each fits alone;
// they wait for each other, or on a slow machine some get 503), the peer's
// charged bytes go above what the raw bodies take (the decoded forms are
// charged: on main they never did) and never above the budget.
func TestGuardDecodedFormCharged(t *testing.T) {
	const maxBody = 16 << 10
	const n = 4
	g, up, ev := numbersGuard(t, "application/json", maxBody)
	body := denseBody(maxBody)
	limit := int64(BudgetFactor * maxBody)
	b := g.budget("bank-a")
	streams := make([]*stream, n)
	for i := range streams {
		streams[i] = openStream(t, g, up, "bank-a")
	}
	run := func() []int {
		statuses := make([]int, n)
		var wg sync.WaitGroup
		for i, s := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.send(post("/numbers", body))
				statuses[i] = s.read(t).StatusCode
			}()
		}
		wg.Wait()
		return statuses
	}

	taken := limit - 2*n*int64(len(body))
	b.Add(taken)
	for i, st := range run() {
		if st != 503 {
			t.Errorf("request %d with room for raw bodies only: status %d, want 503 memory_budget", i, st)
		}
	}
	if d := ev.all("dyad.api.denied"); len(d) != n || d[0]["dyad.reason"] != "memory_budget" {
		t.Errorf("denials %v, want %d memory_budget", d, n)
	}
	if got := g.Inventory().Snapshot(); len(got) != 1 || len(got[0].Operations) != 1 || got[0].Operations[0].Statuses["5xx"] != n {
		t.Errorf("inventory %+v, want %d 5xx for postNumbers", got, n)
	}
	if cur := b.Add(-taken); cur != 0 {
		t.Fatalf("the refused requests left %d bytes charged, want 0", cur)
	}

	// The whole budget free: n at once, sampled.
	for i := range streams {
		streams[i] = openStream(t, g, up, "bank-a") // a 503 ended each
	}
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if cur := b.Load(); cur > peak.Load() {
				peak.Store(cur)
			}
			time.Sleep(20 * time.Microsecond)
		}
	}()
	statuses := run()
	close(stop)
	<-sampled
	passed := 0
	for i, st := range statuses {
		switch st {
		case 201:
			passed++
		case 503: // waited for the others, not long enough on a busy machine
		default:
			t.Errorf("request %d with the budget free: status %d, want 201 (or 503 memory_budget)", i, st)
		}
	}
	t.Logf("%d of %d passed at once", passed, n)
	if passed == 0 {
		t.Errorf("none of %d dense bodies passed with the budget free", n)
	}
	if p := peak.Load(); p > limit || p <= n*int64(len(body)) {
		t.Errorf("peak charged %d bytes: want above the raw bodies' %d (decoded forms charged) and at most the budget %d",
			p, n*len(body), limit)
	}
	if cur := b.Load(); cur != 0 {
		t.Errorf("budget holds %d bytes after the requests ended, want 0", cur)
	}
}

// TestGuardBudgetMixedReturnsToZero: whatever becomes of a body (passed,
// defaulted, schema error, decode error, duplicate names, data after the
// value, escapes, too large, dense), everything reserved for it and its
// decoded form is given back: many mixed requests on streams at once leave
// the peer's budget at 0.
func TestGuardBudgetMixedReturnsToZero(t *testing.T) {
	up := newPayments(t)
	g := NewGuard(testPolicy(t, 1<<10), &events{})
	key := "Idempotency-Key: k-12345678\r\n"
	bodies := []string{
		newPayment,
		`{"amount":"x","currency":"EUR","creditor":"ACME"}`,
		`{"amount":12`,
		`{"amount":1200,"amount":1,"currency":"EUR","creditor":"ACME"}`,
		`{"amount":1200,"currency":"EUR","creditor":"ACME"}{}`,
		`{"amount":1200,"currency":"EUR","creditor":"AC\u004dE \ud800 \"x\""}`,
		`{"Amount":1200,"amount":1,"currency":"EUR","creditor":"ACME"}`,
		`{"amount":1200,"currency":"EUR","creditor":"ACME","reference":"` + strings.Repeat(`\n`, 300) + `"}`,
		denseBody(1 << 10),
		"[" + strings.Repeat(`{"A":{}},`, 100) + "{}]",
		strings.Repeat("[", maxJSONDepth+1),
	}
	const streams, rounds = 4, 5
	var wg sync.WaitGroup
	for k := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := openStream(t, g, up, "bank-a")
			var raw strings.Builder
			for r := range rounds {
				for i := range bodies {
					raw.WriteString(post("/v1/payments", bodies[(i+k+r)%len(bodies)], key))
				}
			}
			s.send(raw.String())
			for range rounds * len(bodies) {
				if st := s.read(t).StatusCode; st != 201 && st != 400 {
					t.Errorf("stream %d: status %d", k, st)
					return
				}
			}
			// Then one over max_body (413 ends the stream).
			s = openStream(t, g, up, "bank-a")
			s.send(post("/v1/payments", `{"reference":"`+strings.Repeat("x", 2<<10)+`"}`, key))
			if st := s.read(t).StatusCode; st != 413 {
				t.Errorf("stream %d: over max_body: status %d", k, st)
			}
		}()
	}
	wg.Wait()
	if n := g.budget("bank-a").Load(); n != 0 {
		t.Errorf("peer's budget holds %d bytes after its requests ended, want 0", n)
	}
}

// TestGuardBudgetRewrittenBody: a body validation rewrote (a schema's
// defaults written in) is held until it is forwarded and counts in the
// peer's budget as the buffered body does. On main it was not charged: a
// 12-byte body whose rewritten form takes 2 KB passed with 1,000 bytes
// of the budget free. Given back after, as the rest.
func TestGuardBudgetRewrittenBody(t *testing.T) {
	spec, err := ParseSpec("defaults.yaml", []byte(`openapi: 3.0.3
info: {title: defaults, version: "1"}
paths:
  /items:
    post:
      operationId: createItem
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, properties: {name: {type: string}, kind: {type: string, default: "`+strings.Repeat("k", 2000)+`"}}}
      responses:
        "201": {description: created}
`))
	if err != nil {
		t.Fatal(err)
	}
	const maxBody = 64
	up := newPayments(t)
	ev := &events{}
	g := NewGuard(&Policy{Service: "items", Spec: spec, ValidateRequest: true, MaxBody: maxBody}, ev)
	b := g.budget("bank-a")
	taken := int64(BudgetFactor*maxBody) - 1000
	b.Add(taken)
	s := openStream(t, g, up, "bank-a")
	s.send(post("/items", `{"name":"x"}`))
	if r := s.read(t); r.StatusCode != 503 {
		t.Errorf("rewritten body over the budget: status %d, want 503 memory_budget", r.StatusCode)
	}
	if cur := b.Add(-taken); cur != 0 {
		t.Errorf("budget holds %d bytes after the refusal, want 0", cur)
	}
	s = openStream(t, g, up, "bank-a")
	s.send(post("/items", `{"name":"x"}`))
	if r := s.read(t); r.StatusCode != 201 {
		t.Errorf("with the budget free: status %d, want 201", r.StatusCode)
	}
	if got := up.seen(); len(got) != 1 || got[0].n < 2000 {
		t.Errorf("upstream saw %+v, want one body with the default written in", got)
	}
	if d := ev.all("dyad.api.denied"); len(d) != 1 || d[0]["dyad.reason"] != "memory_budget" {
		t.Errorf("denials %v, want one memory_budget", d)
	}
	if cur := b.Load(); cur != 0 {
		t.Errorf("budget holds %d bytes after the requests ended, want 0", cur)
	}
}

// TestGuardDecodedFormChargedAnyJSON: a body of a +json type that is not
// among jsonMediaTypes, which kin-openapi hands to the guard's decoder on
// its own, is charged as well (THREATS P5): with room in the budget for a
// few raw bodies only, its decoded form (over 50 times the body) does not
// fit, and it is refused 503 memory_budget. On main it was decoded
// uncharged and forwarded, and a peer could have BudgetFactor of them
// decoded at once, 72 x max_body x 64 beyond the README's formula.
func TestGuardDecodedFormChargedAnyJSON(t *testing.T) {
	const maxBody = 16 << 10
	g, up, ev := numbersGuard(t, "application/vnd.acme+json", maxBody)
	body := denseBody(maxBody)
	b := g.budget("bank-a")
	taken := int64(BudgetFactor*maxBody) - 4*int64(len(body))
	b.Add(taken)
	s := openStream(t, g, up, "bank-a")
	s.send(strings.Replace(post("/numbers", body), "application/json", "application/vnd.acme+json; charset=utf-8", 1))
	if st := s.read(t).StatusCode; st != 503 {
		t.Errorf("a dense application/vnd.acme+json body with room for raw bodies only: status %d, want 503 memory_budget", st)
	}
	if d := ev.all("dyad.api.denied"); len(d) != 1 || d[0]["dyad.reason"] != "memory_budget" {
		t.Errorf("denials %v, want one memory_budget", d)
	}
	if cur := b.Add(-taken); cur != 0 {
		t.Fatalf("the request left %d bytes charged, want 0", cur)
	}
	// With the budget free, it is checked and forwarded.
	s = openStream(t, g, up, "bank-a")
	s.send(strings.Replace(post("/numbers", body), "application/json", "application/vnd.acme+json", 1))
	if st := s.read(t).StatusCode; st != 201 {
		t.Errorf("with the budget free: status %d, want 201", st)
	}
}

// TestGuardKinDecodedBodiesBounded: a body that kin-openapi decodes itself
// (here YAML), whose decoded form is not charged, holds BudgetFactor/8
// times its size of the budget while it is checked, so that at most 8
// bodies of max_body are decoded uncharged at once, as before BudgetFactor
// rose from 8 to 72 to charge decoded JSON (THREATS P5). On main it held
// its size only: 72 of them could be decoded at once. With room for 8
// times the body it is refused 503 memory_budget; with room for 9 times
// it is forwarded, and gives all of it back.
func TestGuardKinDecodedBodiesBounded(t *testing.T) {
	const maxBody = 16 << 10
	g, up, ev := numbersGuard(t, "application/yaml", maxBody)
	body := denseBody(maxBody)
	b := g.budget("bank-a")
	for _, tc := range []struct {
		room   int64 // times the body
		status int
	}{{BudgetFactor / 8, 201}, {BudgetFactor/8 - 1, 503}} {
		taken := int64(BudgetFactor*maxBody) - tc.room*int64(len(body))
		b.Add(taken)
		s := openStream(t, g, up, "bank-a")
		s.send(strings.Replace(post("/numbers", body), "application/json", "application/yaml", 1))
		if st := s.read(t).StatusCode; st != tc.status {
			t.Errorf("a YAML body with room for %d times it: status %d, want %d", tc.room, st, tc.status)
		}
		if cur := b.Add(-taken); cur != 0 {
			t.Fatalf("the request left %d bytes charged, want 0", cur)
		}
	}
	if d := ev.all("dyad.api.denied"); len(d) != 1 || d[0]["dyad.reason"] != "memory_budget" {
		t.Errorf("denials %v, want one memory_budget", d)
	}
}
