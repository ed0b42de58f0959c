package apiguard

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// numbersResponseSpec is one operation whose response body is an array of
// integers (JSON, among the densest: about 52 bytes decoded per body byte,
// TestJSONDecodeCharge), and one whose response is the same as YAML, which
// kin-openapi decodes itself.
const numbersResponseSpec = `openapi: 3.0.3
info: {title: numbers, version: "1"}
paths:
  /numbers:
    get:
      operationId: getNumbers
      responses:
        "200":
          description: numbers
          content:
            application/json:
              schema: {type: array, items: {type: integer}}
  /yaml:
    get:
      operationId: getYAML
      responses:
        "200":
          description: numbers
          content:
            application/yaml:
              schema: {type: array, items: {type: integer}}
`

// numbersPartner serves body on every path, with its Content-Length, as
// application/yaml on /yaml and application/json elsewhere.
func numbersPartner(t *testing.T, body string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ct := "application/json"
		if r.URL.Path == "/yaml" {
			ct = "application/yaml"
		}
		w.Header().Set("Content-Type", ct)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// getOnce sends one GET for path on c and reads its response: status,
// body and the error, if any.
func getOnce(c io.ReadWriter, path string) (int, string, error) {
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: partner\r\n\r\n", path); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "GET"})
	if err != nil {
		return 0, "", err
	}
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestResponseDecodedFormCharged: a JSON response body's decoded form
// counts in the forward's budget (BudgetFactor x (max_body+1)) while it
// is checked, as a request body's does at the exporting side (THREATS
// P5). Four connections of one forward get, at once, dense bodies within
// max_body whose decoded forms (over 50 times the body) together are
// almost three times the budget. With the budget taken but for room for
// the raw bodies, each is unchecked_busy: passed on unchecked when
// report-only, 502 response_check_busy when blocking. With the budget
// free, the forward's charged bytes go above what the raw bodies take (the
// decoded forms are charged: on main they never were, and the four were
// decoded at once, uncharged) and never above the budget; those that did
// not fit are unchecked_busy; every byte is given back after.
func TestResponseDecodedFormCharged(t *testing.T) {
	const maxBody = 64 << 10
	const n = 4
	body := denseBody(maxBody)
	srv := numbersPartner(t, body)
	spec, err := ParseSpec("numbers.yaml", []byte(numbersResponseSpec))
	if err != nil {
		t.Fatal(err)
	}
	limit := int64(BudgetFactor * (maxBody + 1))
	for _, block := range []bool{false, true} {
		t.Run(fmt.Sprintf("block=%v", block), func(t *testing.T) {
			noCheckerLeak(t)
			stats := &ResponseStats{}
			p := &ResponsePolicy{Peer: "bank-b", Service: "numbers", Spec: spec, Block: block, MaxBody: maxBody}
			run := func() (statuses []int) {
				conns := make([]io.ReadWriter, n)
				for i := range conns {
					c := checkedPairOnly(t, srv.Listener.Addr().String(), p, stats, nil)
					c.SetDeadline(time.Now().Add(20 * time.Second))
					conns[i] = c
				}
				statuses = make([]int, n)
				var wg sync.WaitGroup
				for i, c := range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						st, got, err := getOnce(c, "/numbers")
						switch {
						case err != nil:
							t.Errorf("connection %d: %v", i, err)
						case st == http.StatusOK && got != body:
							t.Errorf("connection %d: 200 with %d bytes, want the partner's %d", i, len(got), len(body))
						case st == http.StatusBadGateway && !strings.Contains(got, ReasonBusy):
							t.Errorf("connection %d: 502 %q, want %s", i, got, ReasonBusy)
						}
						statuses[i] = st
					}()
				}
				wg.Wait()
				return statuses
			}
			busyStatus := http.StatusOK
			if block {
				busyStatus = http.StatusBadGateway
			}

			// Room for the raw bodies (twice over), not their decoded forms.
			taken := limit - 2*n*int64(len(body))
			stats.buffered.Store(taken)
			for i, st := range run() {
				if st != busyStatus {
					t.Errorf("connection %d with room for raw bodies only: status %d, want %d", i, st, busyStatus)
				}
			}
			if s := stats.Snapshot(); s["unchecked_busy"] != n || s["valid"] != 0 || s["invalid"] != 0 {
				t.Errorf("with room for raw bodies only: counters %v, want %d unchecked_busy", s, n)
			}
			if cur := chargedAfter(stats, taken); cur != taken {
				t.Fatalf("the busy responses left %d bytes charged, want 0", cur-taken)
			}

			// The whole budget free: n at once, sampled.
			stats = &ResponseStats{}
			var peak atomic.Int64
			stop, sampled := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(sampled)
				for {
					select {
					case <-stop:
						return
					default:
					}
					if cur := stats.buffered.Load(); cur > peak.Load() {
						peak.Store(cur)
					}
					time.Sleep(20 * time.Microsecond)
				}
			}()
			statuses := run()
			close(stop)
			<-sampled
			s := stats.Snapshot()
			t.Logf("%d of %d checked at once (%v), peak charged %d bytes", s["valid"], n, statuses, peak.Load())
			// Blocking, decodes wait for each other: at least one is
			// checked. Report-only ones do not wait, and may in a rare
			// race all find the budget held by the others' partial
			// decodes (each then gives back what it took).
			if block && s["valid"] == 0 || s["valid"]+s["unchecked_busy"] != n || s["invalid"] != 0 {
				t.Errorf("with the budget free: counters %v, want %d valid or unchecked_busy (blocking: at least one valid)", s, n)
			}
			for i, st := range statuses {
				if st != http.StatusOK && st != busyStatus {
					t.Errorf("connection %d with the budget free: status %d", i, st)
				}
			}
			if pk := peak.Load(); pk > limit || pk <= n*int64(len(body)) {
				t.Errorf("peak charged %d bytes: want above the raw bodies' %d (decoded forms charged) and at most the budget %d",
					pk, n*len(body), limit)
			}
			if cur := chargedAfter(stats, 0); cur != 0 {
				t.Errorf("the forward's budget holds %d bytes after the responses, want 0", cur)
			}
		})
	}
}

// TestResponseKinDecodedBodiesBounded: a response body that kin-openapi
// decodes itself (here YAML), whose decoded form is not charged, holds
// BudgetFactor/8 times its size of the forward's budget while it is
// checked, so that at most 8 bodies of max_body are decoded uncharged at
// once, as when the budget was 8 x max_body of bodies (THREATS P5). With
// room for 8 times the body it is unchecked_busy; with room for 9 times it
// is checked, and gives all of it back. (On main the budget was 8 x
// (max_body+1): with the rest taken, neither fitted.)
func TestResponseKinDecodedBodiesBounded(t *testing.T) {
	const maxBody = 16 << 10
	body := denseBody(maxBody)
	srv := numbersPartner(t, body)
	spec, err := ParseSpec("numbers.yaml", []byte(numbersResponseSpec))
	if err != nil {
		t.Fatal(err)
	}
	p := &ResponsePolicy{Peer: "bank-b", Service: "numbers", Spec: spec, MaxBody: maxBody}
	limit := int64(BudgetFactor * (maxBody + 1))
	for _, tc := range []struct {
		room int64  // times the body
		want string // the counter it lands in
	}{{BudgetFactor / 8, "valid"}, {BudgetFactor/8 - 1, "unchecked_busy"}} {
		t.Run(fmt.Sprintf("room=%d", tc.room), func(t *testing.T) {
			stats := &ResponseStats{}
			taken := limit - tc.room*int64(len(body))
			stats.buffered.Store(taken)
			c := checkedPair(t, srv.Listener.Addr().String(), p, stats, nil)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			st, got, err := getOnce(c, "/yaml")
			if err != nil || st != http.StatusOK || got != body {
				t.Errorf("%d, %d bytes, %v; want 200 with the partner's %d", st, len(got), err, len(body))
			}
			if s := stats.Snapshot(); s[tc.want] != 1 || s["valid"]+s["unchecked_busy"] != 1 {
				t.Errorf("counters %v, want 1 %s", s, tc.want)
			}
			if cur := chargedAfter(stats, taken); cur != taken {
				t.Errorf("%d bytes left charged, want 0", cur-taken)
			}
		})
	}
}

// TestResponseErrorsCollectedOneAtATime: the errors kin-openapi builds
// for a body that breaks its schema (all of them: one per wrong-typed
// value here, more bytes than the decoded form) are not charged, so one
// check of a forward at a time collects them (THREATS P5). With that turn
// held elsewhere, a broken body waits up to 1 s, then is unchecked_busy
// (passed on unchecked when report-only, 502 response_check_busy when
// blocking; on main it was collected at once, and as many at a time as
// the partner sent), while a body that keeps its schema, checked failing
// fast without building an error, passes as ever. With the turn free,
// concurrent broken bodies take it in turn: each is found invalid, with
// kin-openapi's reason and keyword, and the turn is free after.
func TestResponseErrorsCollectedOneAtATime(t *testing.T) {
	const maxBody = 16 << 10
	broken := "[" + strings.Repeat(`"",`, (maxBody-3)/3) + `""]`
	bad, good := numbersPartner(t, broken), numbersPartner(t, denseBody(maxBody))
	spec, err := ParseSpec("numbers.yaml", []byte(numbersResponseSpec))
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range []bool{false, true} {
		t.Run(fmt.Sprintf("block=%v", block), func(t *testing.T) {
			noCheckerLeak(t)
			var mu sync.Mutex
			var found []ResponseFinding
			report := func(f ResponseFinding) { mu.Lock(); found = append(found, f); mu.Unlock() }
			stats := &ResponseStats{}
			p := &ResponsePolicy{Peer: "bank-b", Service: "numbers", Spec: spec, Block: block, MaxBody: maxBody}
			get := func(srv *httptest.Server) (int, string) {
				c := checkedPairOnly(t, srv.Listener.Addr().String(), p, stats, report)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				st, got, err := getOnce(c, "/numbers")
				if err != nil {
					t.Fatal(err)
				}
				return st, got
			}

			stats.collecting.Store(true) // another check collects its errors
			st, got := get(bad)
			switch {
			case !block && (st != http.StatusOK || got != broken):
				t.Errorf("report-only, the turn held: %d, %d bytes; want the broken body passed on unchecked", st, len(got))
			case block && (st != http.StatusBadGateway || !strings.Contains(got, ReasonBusy)):
				t.Errorf("blocking, the turn held: %d %.80q; want 502 %s", st, got, ReasonBusy)
			}
			if st, _ := get(good); st != http.StatusOK {
				t.Errorf("a valid body with the turn held: status %d, want 200", st)
			}
			if s := stats.Snapshot(); s["unchecked_busy"] != 1 || s["valid"] != 1 || s["invalid"] != 0 {
				t.Errorf("with the turn held: counters %v, want 1 unchecked_busy, 1 valid", s)
			}
			stats.collecting.Store(false)

			const n = 3
			var wg sync.WaitGroup
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					st, _ := get(bad)
					if want := map[bool]int{false: http.StatusOK, true: http.StatusBadGateway}[block]; st != want {
						t.Errorf("a broken body with the turn free: status %d, want %d", st, want)
					}
				}()
			}
			wg.Wait()
			mu.Lock()
			defer mu.Unlock()
			if s := stats.Snapshot(); s["invalid"] != n || s["unchecked_busy"] != 1 {
				t.Errorf("with the turn free: counters %v, want %d invalid", s, n)
			}
			for _, f := range found {
				if f.Reason != ReasonSchemaViolation || f.Keyword != "type" {
					t.Errorf("finding %+v, want %s/type", f, ReasonSchemaViolation)
				}
			}
			if chargedAfter(stats, 0) != 0 || stats.collecting.Load() {
				t.Errorf("after the responses: turn held %v, %d bytes charged; want free, 0", stats.collecting.Load(), stats.buffered.Load())
			}
		})
	}
}

// TestResponseErrorListSize: what TestResponseErrorsCollectedOneAtATime
// bounds is worth bounding: kin-openapi's errors for a body of
// wrong-typed values (all of them collected, MultiError) take more than
// the body's decoded form, which the decoder charges.
func TestResponseErrorListSize(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	spec, err := ParseSpec("numbers.yaml", []byte(numbersResponseSpec))
	if err != nil {
		t.Fatal(err)
	}
	schema := spec.doc.Paths.Value("/numbers").Get.Responses.Status(200).Value.Content.Get("application/json").Schema.Value
	body := "[" + strings.Repeat(`"",`, 1<<14) + `""]`
	v, charged, err := decodeCharged([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	verr := schema.VisitJSON(v, respOpts30...)
	runtime.ReadMemStats(&m1)
	built := int64(m1.TotalAlloc - m0.TotalAlloc)
	t.Logf("%d-byte body: decoded form charged %d bytes, its errors %d", len(body), charged, built)
	if verr == nil || built <= charged {
		t.Errorf("errors %d bytes (err %v), want more than the decoded form's %d", built, verr != nil, charged)
	}
}

// chargedAfter returns what the forward's checks hold once it is want, or
// after 2 s: a response loop gives its charge back when it has written the
// response, just after the client may have read it.
func chargedAfter(stats *ResponseStats, want int64) int64 {
	deadline := time.Now().Add(2 * time.Second)
	for {
		cur := stats.buffered.Load()
		if cur == want || time.Now().After(deadline) {
			return cur
		}
		time.Sleep(time.Millisecond)
	}
}
