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
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
)

// brokenPartner is a partner's upstream that breaks its contract
// (apiguard/testdata/partner-responses.yaml) on some paths, with a value
// that must never reach an event.
func brokenPartner(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/v1/payments/1":
		io.WriteString(w, `{"id":1,"amount":5,"status":"settled"}`)
	case "/v1/payments/2": // a property the schema forbids
		io.WriteString(w, `{"id":2,"amount":5,"status":"settled","iban":"DE89SECRETVALUE"}`)
	case "/v1/payments/3": // wrong type
		io.WriteString(w, `{"id":"SECRETVALUE","amount":5,"status":"settled"}`)
	case "/v1/payments/4": // undeclared status
		w.WriteHeader(http.StatusTeapot)
	case "/v1/health":
		w.Header().Del("Content-Type")
		w.WriteHeader(http.StatusOK)
	default:
		http.NotFound(w, r)
	}
}

// TestForwardResponseValidation: A imports B's service through two
// forwards with forwards[].api validate: [response], one blocking. On one
// keep-alive connection each with pipelined requests, the valid response
// passes; the broken ones are audited (dyad.api.response_invalid: reason,
// operation, status, keyword, action, and never a body value) and, with
// block, replaced by a 502 problem response, the connection going on;
// /statusz counts them and the configuration events name the spec's
// SHA-256.
func TestForwardResponseValidation(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(brokenPartner))
	defer srv.Close()
	root := t.TempDir()
	a, b := newSite(t, root, "site-a"), newSite(t, root, "site-b")
	spec, err := os.ReadFile("../apiguard/testdata/partner-responses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a.Dir, "partner.yaml"), spec, 0o644); err != nil {
		t.Fatal(err)
	}
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "partner", Upstream: srv.Listener.Addr().String(), Allow: []string{"site-a"}}}
	blocking, reporting := freeTCP(t), freeTCP(t)
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	a.Config.Forwards = []daemon.ForwardConfig{
		{Listen: blocking, Peer: "site-b", Service: "partner", API: &daemon.ForwardAPIFile{Spec: "partner.yaml", Validate: []string{"response"}, Block: true}},
		{Listen: reporting, Peer: "site-b", Service: "partner", API: &daemon.ForwardAPIFile{Spec: "partner.yaml", Validate: []string{"response"}}},
	}
	start(t, b)
	start(t, a)
	if out, code := runDyad(t, "check", "--config", a.ConfigPath()); code != 0 || !strings.Contains(out, "forward "+blocking+" → site-b/partner: responses checked against") ||
		!strings.Contains(out, "broken ones blocked (502)") {
		t.Errorf("dyad check: exit %d\n%s", code, out)
	}

	paths := []string{"/v1/payments/1", "/v1/payments/2", "/v1/payments/3", "/v1/payments/4", "/v1/payments/1", "/v1/nowhere"}
	broken := map[string]string{"/v1/payments/2": "undeclared_property", "/v1/payments/3": "schema_violation", "/v1/payments/4": "undeclared_status"}
	for _, local := range []string{blocking, reporting} {
		block := local == blocking
		c, err := net.Dial("tcp", local)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var reqs strings.Builder
		for _, p := range paths {
			fmt.Fprintf(&reqs, "GET %s HTTP/1.1\r\nHost: partner\r\n\r\n", p)
		}
		io.WriteString(c, reqs.String())
		br := bufio.NewReader(c)
		for _, p := range paths {
			resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
			if err != nil {
				t.Fatalf("block=%v %s: %v", block, p, err)
			}
			body, _ := io.ReadAll(resp.Body)
			_, bad := broken[p]
			switch {
			case bad && block:
				if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Content-Type") != "application/problem+json" || strings.Contains(string(body), "SECRET") {
					t.Errorf("block %s: %d %s %q", p, resp.StatusCode, resp.Header.Get("Content-Type"), body)
				}
			case resp.StatusCode == http.StatusBadGateway:
				t.Errorf("block=%v %s replaced: %q", block, p, body)
			case p == "/v1/payments/1" && !strings.Contains(string(body), `"settled"`):
				t.Errorf("block=%v %s: %q", block, p, body)
			}
		}
		c.Close()
	}

	for p, reason := range broken {
		for _, action := range []string{"blocked", "reported"} {
			status := int64(200)
			if p == "/v1/payments/4" {
				status = http.StatusTeapot
			}
			if !hasEvent(t, a, audit.APIResponseInvalid, func(e journal.Entry) bool {
				return e.Attr(audit.KeyReason).AsString() == reason && e.Attr(audit.KeyAPIAction).AsString() == action &&
					e.Attr(audit.KeyAPIOperation).AsString() == "getPayment" && e.Attr(audit.KeyHTTPStatus).AsInt64() == status &&
					e.Attr(audit.KeyPeer).AsString() == "site-b" && e.Attr(audit.KeyService).AsString() == "partner"
			}) {
				t.Errorf("no dyad.api.response_invalid %s %s for %s: %v", reason, action, p, a.Events())
			}
		}
	}
	if !hasEvent(t, a, audit.APIResponseInvalid, func(e journal.Entry) bool { return e.Attr(audit.KeyAPIKeyword).AsString() == "type" }) {
		t.Errorf("the wrong type is not named by its keyword")
	}
	// Never a value of the body in the journal or the logs (THREATS P6).
	entries, _, err := a.Journal()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if j, _ := json.Marshal(e); strings.Contains(string(j), "SECRET") {
			t.Errorf("a body value in the journal: %s", j)
		}
	}
	if strings.Contains(a.Logs(), "SECRET") {
		t.Errorf("a body value in the logs")
	}
	if !hasEvent(t, a, audit.ConfigLoaded, func(e journal.Entry) bool {
		for _, s := range e.Attr(audit.KeyAPISpecSHA256).AsStringSlice() {
			if strings.HasPrefix(s, blocking+"→site-b/partner=") && len(s) == len(blocking+"→site-b/partner=")+64 {
				return true
			}
		}
		return false
	}) {
		t.Errorf("dyad.config.loaded does not name the forward's spec")
	}

	resp, err := http.Get("http://" + a.Config.Admin + "/statusz")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Forwards map[string]struct {
			Block     bool              `json:"block"`
			SHA256    string            `json:"spec_sha256"`
			Responses map[string]uint64 `json:"responses"`
		} `json:"api_forwards"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	for _, local := range []string{blocking, reporting} {
		f := st.Forwards[local]
		wantBlocked := uint64(0)
		if local == blocking {
			wantBlocked = 3
		}
		if r := f.Responses; r["valid"] != 2 || r["invalid"] != 3 || r["blocked"] != wantBlocked || r["unchecked_no_operation"] != 1 || len(f.SHA256) != 64 {
			t.Errorf("%s: /statusz api_forwards %+v", local, f)
		}
	}
	// The same findings in /metrics, by peer, service, reason and action
	// (main had no dyad_api_responses_invalid_total).
	resp, err = http.Get("http://" + a.Config.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, reason := range broken {
		for _, action := range []string{"blocked", "reported"} {
			want := fmt.Sprintf(`dyad_api_responses_invalid_total{action=%q,peer="site-b",reason=%q,service="partner"} 1`, action, reason)
			if !strings.Contains(string(metrics), want+"\n") {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	}
}

// blockingResponseSites is twoSites with brokenPartner behind site b and
// site a's forward checking responses against partner-responses.yaml,
// written to partner.yaml in a's directory, with block, in force: the
// check's 502 for /v1/payments/2 seen. It returns site a, the forward's
// local address, the spec's bytes and its path, for a test that rewrites
// it and reloads.
func blockingResponseSites(t *testing.T) (a *daemontest.Site, local string, spec []byte, specPath string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(brokenPartner))
	t.Cleanup(srv.Close)
	a, _, local = twoSites(t, srv.Listener.Addr().String())
	spec, err := os.ReadFile("../apiguard/testdata/partner-responses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	specPath = filepath.Join(a.Dir, "partner.yaml")
	os.WriteFile(specPath, spec, 0o644)
	a.Config.Forwards[0].API = &daemon.ForwardAPIFile{Spec: "partner.yaml", Validate: []string{"response"}, Block: true}
	reload(t, a)
	if got := getEach(t, local, "/v1/payments/2"); got[0] != http.StatusBadGateway {
		t.Fatalf("blocking check: %v", got)
	}
	return a, local, spec, specPath
}

// TestForwardResponseReload: a SIGHUP with a broken partner spec is
// rejected and the running check stays; a good one that turns block off
// applies to new connections.
func TestForwardResponseReload(t *testing.T) {
	a, local, spec, specPath := blockingResponseSites(t)
	os.WriteFile(specPath, []byte("openapi: 3.0.3\ninfo: [broken\n"), 0o644)
	a.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(a.Logs(), `"event":"dyad.config.rejected"`) {
		if time.Now().After(deadline) {
			t.Fatalf("the broken spec was not rejected:\n%s", a.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := getEach(t, local, "/v1/payments/2"); got[0] != http.StatusBadGateway {
		t.Errorf("after the rejected reload the check is gone: %v", got)
	}
	os.WriteFile(specPath, spec, 0o644)
	a.Config.Forwards[0].API.Block = false
	reload(t, a)
	if got := getEach(t, local, "/v1/payments/2"); got[0] != http.StatusOK {
		t.Errorf("block: false not in force after the reload: %v", got)
	}
}

// TestForwardAPIConfigErrors: a forward's api: is strict and names what is
// wrong, the spec's file and kin-openapi's own error included.
func TestForwardAPIConfigErrors(t *testing.T) {
	dir := t.TempDir()
	spec, err := os.ReadFile("../apiguard/testdata/partner-responses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "partner.yaml"), spec, 0o644)
	os.WriteFile(filepath.Join(dir, "broken.yaml"), []byte("openapi: 3.0.3\ninfo: {title: x, version: '1'}\npaths:\n  /x: {get: {responses: {'200': {description: ok, content: {application/json: {schema: {$ref: '#/nope'}}}}}}}\n"), 0o644)
	key := newSite(t, dir, "other").PublicKey
	base := "site: a\nidentity: id.key\nlisten: 127.0.0.1:7000\npeers:\n  - {name: site-b, public_key: " + key +
		", endpoint: 127.0.0.1:7100}\nforwards:\n  - listen: 127.0.0.1:9000\n    peer: site-b\n    service: partner\n    api: "
	cfgPath := filepath.Join(dir, "dyad.yaml")
	if c, err := daemon.ParseConfig(cfgPath, []byte(base+"{spec: partner.yaml, validate: [response], block: true, max_body: 64KiB}\n")); err != nil ||
		len(c.ForwardAPIs) != 1 {
		t.Fatalf("good forward api: %v", err)
	}
	for _, tc := range []struct{ name, api, want string }{
		{"no spec", "{validate: [response]}", "forwards[0].api.spec: required"},
		{"no validate", "{spec: partner.yaml}", "forwards[0].api.validate: required"},
		{"request on a forward", "{spec: partner.yaml, validate: [request]}", `forwards[0].api.validate[0]: "request" is not response`},
		{"unlimited body", "{spec: partner.yaml, validate: [response], max_body: unlimited}", "forwards[0].api.max_body"},
		{"missing spec", "{spec: nope.yaml, validate: [response]}", "forwards[0].api.spec: API spec " + filepath.Join(dir, "nope.yaml")},
		{"broken spec", "{spec: broken.yaml, validate: [response]}", "forwards[0].api.spec: API spec " + filepath.Join(dir, "broken.yaml")},
		{"unknown key", "{spec: partner.yaml, validate: [response], blok: true}", `unknown key "blok"; did you mean block?`},
	} {
		_, err := daemon.ParseConfig(cfgPath, []byte(base+tc.api+"\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestForwardResponseSpecOnlyReload: a SIGHUP with the configuration file
// unchanged and only the spec's file changed applies the new spec to new
// connections (the spec is read again at every reload, not only when the
// configuration changed).
func TestForwardResponseSpecOnlyReload(t *testing.T) {
	a, local, spec, specPath := blockingResponseSites(t)
	loose := strings.Replace(string(spec), "additionalProperties: false", "additionalProperties: true", 1)
	if loose == string(spec) {
		t.Fatal("the test spec no longer forbids additional properties")
	}
	os.WriteFile(specPath, []byte(loose), 0o644)
	reload(t, a) // the same configuration file, rewritten as it was
	if got := getEach(t, local, "/v1/payments/2"); got[0] != http.StatusOK {
		t.Errorf("the changed spec is not in force after the reload: %v", got)
	}
}

// TestForwardResponseMalformedLogged: a partner answering with a line that
// is not HTTP/1.1 gets the app a 502 and a dyad.api.response_invalid
// malformed_response, and the importing daemon's log of the failed forward
// carries none of its bytes (THREATS P6). Before, the log quoted net/http's
// error, which quotes the line.
func TestForwardResponseMalformedLogged(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nSECRETVALUE without a colon\r\n\r\n")
				time.Sleep(200 * time.Millisecond)
				io.WriteString(c, "more") // the importer's write of it fails: the forward fails
				time.Sleep(2 * time.Second)
			}()
		}
	}()
	a, _, local := twoSites(t, ln.Addr().String())
	spec, err := os.ReadFile("../apiguard/testdata/partner-responses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(a.Dir, "partner.yaml"), spec, 0o644)
	a.Config.Forwards[0].API = &daemon.ForwardAPIFile{Spec: "partner.yaml", Validate: []string{"response"}, Block: true}
	reload(t, a)
	if got := getEach(t, local, "/v1/payments/1"); got[0] != http.StatusBadGateway {
		t.Fatalf("malformed response: %v, want 502", got)
	}
	if !hasEvent(t, a, audit.APIResponseInvalid, func(e journal.Entry) bool {
		return e.Attr(audit.KeyReason).AsString() == "malformed_response"
	}) {
		t.Fatalf("no malformed_response event: %v", a.Events())
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(a.Logs(), "forward failed") {
		if time.Now().After(deadline) {
			t.Fatalf("the failed forward was not logged:\n%s", a.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Contains(a.Logs(), "SECRET") {
		t.Errorf("the log quotes the partner's bytes:\n%s", a.Logs())
	}
}
