package daemon_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
)

// paymentsUpstream is a real HTTP upstream for apiguard/testdata/
// payments.yaml that answers every path (so only the guard refuses) and
// counts what reached it.
func paymentsUpstream(t *testing.T) (addr string, hits *atomic.Int64) {
	hits = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		if r.Method == "POST" {
			w.WriteHeader(201)
		}
		fmt.Fprintf(w, `{"path":%q,"bytes":%d}`, r.URL.Path, n)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), hits
}

// guardedSites starts B exporting "payments" behind the API guard to A,
// and A forwarding a local port to it.
func guardedSites(t *testing.T, upstream string) (a, b *daemontest.Site, local string) {
	t.Helper()
	root := t.TempDir()
	a, b = newSite(t, root, "site-a"), newSite(t, root, "site-b")
	spec, err := os.ReadFile("../apiguard/testdata/payments.yaml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(b.Dir, "payments-openapi.yaml"), spec, 0o644)
	local = freeTCP(t)
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "payments", Upstream: upstream, Allow: []string{"site-a"},
		API: &daemon.APIFile{
			Spec:       "payments-openapi.yaml",
			Operations: map[string][]string{"site-a": {"tag:payments", "tag:refunds", "health"}},
			Validate:   []string{"request"},
			Limits:     map[string]daemon.APILimitsFile{"createRefund": {RequestsPerSecond: 1, RequestBurst: 1}},
			MaxBody:    4 << 10,
		}}}
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	a.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: "site-b", Service: "payments"}}
	start(t, b)
	start(t, a)
	return a, b, local
}

type call struct {
	raw    string
	status int
	reason string
}

// exchange writes calls on conn (pipelined when together) and checks the
// answers in order.
func exchange(t *testing.T, c net.Conn, br *bufio.Reader, together bool, calls ...call) {
	t.Helper()
	if together {
		var all strings.Builder
		for _, c := range calls {
			all.WriteString(c.raw)
		}
		go c.Write([]byte(all.String()))
	}
	for i, cl := range calls {
		if !together {
			if _, err := c.Write([]byte(cl.raw)); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("call %d (%q): %v", i, strings.SplitN(cl.raw, "\r\n", 2)[0], err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != cl.status || cl.reason != "" && !strings.Contains(string(body), `"reason":"`+cl.reason+`"`) {
			t.Fatalf("call %d (%q): %d %s, want %d %s", i, strings.SplitN(cl.raw, "\r\n", 2)[0], resp.StatusCode, body, cl.status, cl.reason)
		}
	}
}

func postJSON(path, body string, extra string) string {
	return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: payments\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s", path, len(body), extra, body)
}

// TestAPIGuardEndToEnd: real daemons, a real upstream, the spec in
// apiguard/testdata. One keep-alive client connection through A's forward
// gets allowed calls through and each denial (403, 404, 400, 429, 413)
// answered by B's guard, in order, pipelined too; each is audited in B's
// journal; smuggling shapes and non-HTTP bytes are refused; the shadow call is in /statusz's inventory; a SIGHUP with a
// broken spec is rejected and the running one stays, a good one is put in
// force; the stop emits the inventory event.
func TestAPIGuardEndToEnd(t *testing.T) {
	upstream, hits := paymentsUpstream(t)
	_, b, local := guardedSites(t, upstream)
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: payments\r\n\r\n" }
	refund := postJSON("/v1/payments/7/refunds", `{"amount":5}`, "")
	exchange(t, c, br, false,
		call{get("/v1/payments/42"), 200, ""},
		call{"POST /v1/admin/settlements HTTP/1.1\r\nHost: payments\r\nContent-Length: 0\r\n\r\n", 403, "not_allowed"},
		call{get("/v1/debug/9913/vars"), 404, "no_route"},
		call{get("/v1/payments/forty-two"), 400, "invalid_parameter"},
		call{postJSON("/v1/payments", `{"amount":1,"currency":"XXX","creditor":"a"}`, "Idempotency-Key: key-12345678\r\n"), 400, "invalid_body"},
		call{refund, 201, ""},
		call{refund, 429, "rate_limited"},
		call{get("/v1/payments/42/status"), 200, ""},
	)
	// Pipelined on the same connection: answered in order.
	exchange(t, c, br, true,
		call{get("/v1/payments/1"), 200, ""},
		call{get("/v1/nope"), 404, "no_route"},
		call{postJSON("/v1/payments", `{"amount":1200,"currency":"EUR","creditor":"ACME"}`, "Idempotency-Key: key-12345678\r\n"), 201, ""},
		call{get("/v1/health"), 200, ""},
	)
	// Too large for max_body (4 KiB): 413, and the connection ends.
	exchange(t, c, br, false, call{postJSON("/v1/payments", `{"creditor":"`+strings.Repeat("a", 5000)+`"}`, "Idempotency-Key: key-12345678\r\n"), 413, "body_too_large"})
	if _, err := http.ReadResponse(br, nil); err == nil {
		t.Error("the connection went on after 413")
	}
	c.Close()
	// Smuggling shapes and non-HTTP bytes, each on its own connection:
	// refused, the connection ended, nothing reaches the upstream.
	for _, raw := range []string{
		"POST /v1/payments HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET /v1/health HTTP/1.1\r\nHost: p\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
		"POST /v1/payments HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
	} {
		s, err := net.Dial("tcp", local)
		if err != nil {
			t.Fatal(err)
		}
		sbr := bufio.NewReader(s)
		exchange(t, s, sbr, false, call{raw + "GET /v1/health HTTP/1.1\r\nHost: p\r\n\r\n", 400, ""})
		if _, err := http.ReadResponse(sbr, nil); err == nil {
			t.Errorf("the connection went on after %q", raw)
		}
		s.Close()
	}
	s, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"))
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(s); len(b) != 0 || err != nil {
		t.Errorf("non-HTTP bytes got %q, %v", b, err)
	}
	s.Close()
	if !hasEvent(t, b, audit.APIStreamRefused, func(e journal.Entry) bool { return e.Attr(audit.KeyReason).AsString() == "not_http" }) {
		t.Error("B's journal lacks dyad.api.stream_refused")
	}
	if h := hits.Load(); h != 6 {
		t.Errorf("upstream got %d requests, want the 6 allowed ones", h)
	}
	for status, reason := range map[int64]string{403: "not_allowed", 404: "no_route", 400: "invalid_parameter", 429: "rate_limited", 413: "body_too_large"} {
		if !hasEvent(t, b, audit.APIDenied, func(e journal.Entry) bool {
			return e.Attr(audit.KeyHTTPStatus).AsInt64() == status && e.Attr(audit.KeyReason).AsString() == reason &&
				e.Attr(audit.KeyPeer).AsString() == "site-a" && e.Attr(audit.KeyService).AsString() == "payments"
		}) {
			t.Errorf("B's journal lacks dyad.api.denied %d %s: %v", status, reason, b.Events())
		}
	}
	if !hasEvent(t, b, audit.APIDenied, func(e journal.Entry) bool {
		return e.Attr(audit.KeyAPIOperation).AsString() == "/v1/debug/{num}/vars"
	}) {
		t.Error("the shadow denial does not name the path's shape")
	}
	// /statusz: the inventory.
	var st struct {
		API map[string]daemon.APIStatus `json:"api"`
	}
	resp, err := http.Get("http://" + b.Config.Admin + "/statusz")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	pay := st.API["payments"]
	if len(pay.SHA256) != 64 || len(pay.Inventory) != 1 || pay.Inventory[0].Peer != "site-a" ||
		len(pay.Inventory[0].DeprecatedCalled) != 1 || len(pay.Inventory[0].Shadow) != 2 {
		t.Fatalf("/statusz api: %+v", pay)
	}
	// A broken spec on reload: rejected, the running guard stays.
	specPath := filepath.Join(b.Dir, "payments-openapi.yaml")
	good, _ := os.ReadFile(specPath)
	os.WriteFile(specPath, []byte(strings.Replace(string(good), "#/components/schemas/Refund", "#/components/schemas/Refnd", 1)), 0o644)
	b.Signal(syscall.SIGHUP)
	if !hasEvent(t, b, audit.ConfigRejected, func(e journal.Entry) bool {
		return strings.Contains(e.Attr(audit.KeyError).AsString(), "Refnd")
	}) {
		t.Fatalf("the broken spec was not rejected: %v", b.Events())
	}
	c2, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	br2 := bufio.NewReader(c2)
	exchange(t, c2, br2, false, call{get("/v1/payments/5"), 200, ""}, call{get("/v1/debug/1/vars"), 404, "no_route"})
	c2.Close()
	// A good reload puts the new operations in force for new requests.
	os.WriteFile(specPath, good, 0o644)
	b.Config.Services[0].API.Operations = map[string][]string{"site-a": {"health"}}
	reload(t, b)
	c3, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	exchange(t, c3, bufio.NewReader(c3), false, call{get("/v1/payments/5"), 403, "not_allowed"}, call{get("/v1/health"), 200, ""})
	c3.Close() // a kept-alive connection would hold the drain
	if err := b.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !hasEvent(t, b, audit.APIInventory, func(e journal.Entry) bool {
		dep := e.Attr(audit.KeyAPIDeprecated).AsStringSlice()
		return e.Attr(audit.KeyPeer).AsString() == "site-a" && len(dep) == 1 && dep[0] == "getPaymentStatusV0"
	}) {
		t.Errorf("no dyad.api.inventory at stop: %v", b.Events())
	}
	if !hasEvent(t, b, audit.ConfigLoaded, func(e journal.Entry) bool {
		s := e.Attr(audit.KeyAPISpecSHA256).AsStringSlice()
		return len(s) == 1 && strings.HasPrefix(s[0], "payments=") && s[0][len("payments="):] == pay.SHA256
	}) {
		t.Error("dyad.config.loaded lacks the spec's SHA-256")
	}
}

// TestAPIGuardMetrics: after real guarded traffic, B's /metrics has the
// guard's decisions by peer, service, outcome, status and reason (each
// count exact) and its inventory sizes; no path or value a peer sent is
// in any label. Main had no dyad_api_* metrics.
func TestAPIGuardMetrics(t *testing.T) {
	upstream, _ := paymentsUpstream(t)
	_, b, local := guardedSites(t, upstream)
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(path string) string { return "GET " + path + " HTTP/1.1\r\nHost: payments\r\n\r\n" }
	refund := postJSON("/v1/payments/7/refunds", `{"amount":5}`, "")
	exchange(t, c, br, false,
		call{get("/v1/payments/42"), 200, ""},
		call{get("/v1/payments/43"), 200, ""},
		call{get("/v1/payments/42/status"), 200, ""}, // deprecated
		call{"POST /v1/admin/settlements HTTP/1.1\r\nHost: payments\r\nContent-Length: 0\r\n\r\n", 403, "not_allowed"},
		call{get("/v1/debug/9913/vars"), 404, "no_route"},
		call{get("/v1/secret-probe-x9/a"), 404, "no_route"},
		call{get("/v1/payments/forty-two"), 400, "invalid_parameter"},
		call{refund, 201, ""},
		call{refund, 429, "rate_limited"},
	)
	c.Close()
	s, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"))
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadAll(s)
	s.Close()
	if !hasEvent(t, b, audit.APIStreamRefused, func(e journal.Entry) bool { return true }) {
		t.Fatal("no dyad.api.stream_refused")
	}
	want := []string{
		`dyad_api_requests_total{outcome="forwarded",peer="site-a",reason="",service="payments",status="2xx"} 4`,
		`dyad_api_requests_total{outcome="denied",peer="site-a",reason="not_allowed",service="payments",status="403"} 1`,
		`dyad_api_requests_total{outcome="denied",peer="site-a",reason="no_route",service="payments",status="404"} 2`,
		`dyad_api_requests_total{outcome="denied",peer="site-a",reason="invalid_parameter",service="payments",status="400"} 1`,
		`dyad_api_requests_total{outcome="denied",peer="site-a",reason="rate_limited",service="payments",status="429"} 1`,
		`dyad_api_requests_total{outcome="stream_refused",peer="site-a",reason="not_http",service="payments",status=""} 1`,
		`dyad_api_inventory_operations{peer="site-a",service="payments"} 4`,
		`dyad_api_inventory_deprecated{peer="site-a",service="payments"} 1`,
		`dyad_api_inventory_shadow{peer="site-a",service="payments"} 2`,
	}
	var metrics string
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp, err := http.Get("http://" + b.Config.Admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		metrics = string(body)
		missing := 0
		for _, w := range want {
			if !strings.Contains(metrics, w+"\n") {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var api []string
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "dyad_api_") {
			api = append(api, l)
			// THREATS P6 and bounded cardinality: identifiers and
			// probed paths are in no label.
			for _, leak := range []string{"9913", "secret-probe", "forty-two", "/v1/"} {
				if strings.Contains(l, leak) {
					t.Errorf("label carries %q: %s", leak, l)
				}
			}
		}
	}
	for _, w := range want {
		if !strings.Contains(metrics, w+"\n") {
			t.Errorf("/metrics lacks %s; it has:\n%s", w, strings.Join(api, "\n"))
		}
	}
}
