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
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit/report"
	"github.com/dyad-tunnel/dyad/daemon"
)

// getEach sends one GET per path on one keep-alive connection to local and
// returns the statuses.
func getEach(t *testing.T, local string, paths ...string) []int {
	t.Helper()
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	var out []int
	for _, p := range paths {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: partner\r\n\r\n", p)
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		io.Copy(io.Discard, resp.Body)
		out = append(out, resp.StatusCode)
	}
	return out
}

// owaspRows runs `dyad report --framework owasp-api-2023` for site as JSON
// and returns its rows by ID.
func owaspRows(t *testing.T, site string) map[string]report.Row {
	t.Helper()
	out := filepath.Join(t.TempDir(), "report.json")
	if msg, code := dyadReport(t, "--config", site, "--framework", report.OWASP, "--format", "json", "--out", out); code != 0 {
		t.Fatalf("dyad report: exit %d\n%s", code, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r report.Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	rows := map[string]report.Row{}
	for _, row := range r.Sections[0].Rows {
		rows[row.ID] = row
	}
	return rows
}

// TestReportAPIGuardRows: real daemons, B exporting a service behind the
// API guard (operation allow list, a rate limit, request validation) and A
// importing it through a forward that blocks broken responses. Before any
// guard the OWASP rows are a tunnel's; with the guards in force and their
// denials, inventory and response findings journalled, `dyad report` moves
// API3, API5, API6, API9 (exporter) and API10 (importer) with their modes,
// and headless Chromium shows the same in the HTML report.
func TestReportAPIGuardRows(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(brokenPartner))
	defer srv.Close()
	root := t.TempDir()
	a, b := newSite(t, root, "site-a"), newSite(t, root, "site-b")
	spec, err := os.ReadFile("../apiguard/testdata/partner-responses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{a.Dir, b.Dir} {
		os.WriteFile(filepath.Join(s, "partner.yaml"), spec, 0o644)
	}
	local := freeTCP(t)
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "partner", Upstream: srv.Listener.Addr().String(), Allow: []string{"site-a"}}}
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	a.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: "site-b", Service: "partner"}}
	start(t, b)
	start(t, a)

	// No guard: the rows a tunnel alone earns.
	for _, s := range []string{a.ConfigPath(), b.ConfigPath()} {
		rows := owaspRows(t, s)
		for id, want := range map[string]report.Status{"API1:2023": report.NotCovered, "API3:2023": report.NotCovered,
			"API5:2023": report.Partly, "API6:2023": report.NotCovered, "API9:2023": report.Partly, "API10:2023": report.Partly} {
			if rows[id].Status != want || rows[id].Mode != "" {
				t.Errorf("no guard: %s %s (%q), want %s", id, rows[id].Status, rows[id].Mode, want)
			}
		}
	}

	b.Config.Services[0].API = &daemon.APIFile{Spec: "partner.yaml", Operations: map[string][]string{"site-a": {"getPayment", "health"}},
		Validate: []string{"request"}, Limits: map[string]daemon.APILimitsFile{"health": {RequestsPerSecond: 1, RequestBurst: 1}}}
	a.Config.Forwards[0].API = &daemon.ForwardAPIFile{Spec: "partner.yaml", Validate: []string{"response"}, Block: true}
	reload(t, b)
	reload(t, a)
	got := getEach(t, local, "/v1/payments/1", "/v1/payments/2", "/v1/payments", "/v1/health", "/v1/health", "/v1/nowhere")
	// valid; undeclared property blocked by A; GET /v1/payments, which
	// the spec has only as POST, refused by B's guard (its problem+json
	// refusal passes A as a partner refusal, not a broken response);
	// health within, then over its limit (429 from B's guard); a shadow
	// endpoint (404 from B's guard).
	if got[0] != 200 || got[1] != 502 || got[2] < 400 || got[2] == 502 || got[3] != 200 || got[4] != 429 || got[5] != 404 {
		t.Fatalf("statuses %v\n%s", got, a.Logs())
	}
	// B writes its inventory when it stops.
	if err := b.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}

	rowsB, rowsA := owaspRows(t, b.ConfigPath()), owaspRows(t, a.ConfigPath())
	for _, c := range []struct {
		site   string
		rows   map[string]report.Row
		id     string
		status report.Status
		mode   string
	}{
		{"B", rowsB, "API1:2023", report.NotCovered, ""},
		{"B", rowsB, "API5:2023", report.Mitigated, report.Prevention},
		{"B", rowsB, "API6:2023", report.Partly, report.Prevention},
		{"B", rowsB, "API9:2023", report.Mitigated, report.Detection},
		{"B", rowsB, "API3:2023", report.Partly, report.Both},
		{"A", rowsA, "API10:2023", report.Mitigated, report.Both},
		{"A", rowsA, "API3:2023", report.Partly, report.Both},
		{"A", rowsA, "API1:2023", report.NotCovered, ""},
	} {
		if r := c.rows[c.id]; r.Status != c.status || r.Mode != c.mode {
			t.Errorf("%s %s: %s (%q), want %s (%q): %s", c.site, c.id, r.Status, r.Mode, c.status, c.mode, r.Why)
		}
	}
	evidence := func(r report.Row, label string) string {
		for _, f := range r.Evidence {
			if strings.HasPrefix(f.Label, label) {
				return f.Value
			}
		}
		return ""
	}
	if v := evidence(rowsB["API6:2023"], "API requests refused with 429"); v != "1" {
		t.Errorf("B API6 429s: %q", v)
	}
	if v := evidence(rowsB["API9:2023"], "requests to no documented operation"); !strings.Contains(v, "site-a → partner") {
		t.Errorf("B API9 shadow: %q", v)
	}
	if v := evidence(rowsA["API10:2023"], "responses that broke"); v != "1 (undeclared_property 1)" {
		t.Errorf("A API10: %q", v)
	}
	if !strings.Contains(rowsB["API5:2023"].Control, "site-a 2 of 4 operations") {
		t.Errorf("B API5 control: %s", rowsB["API5:2023"].Control)
	}

	// The same in the HTML report, as a browser shows it.
	bin := ""
	if _, err := exec.LookPath("chromium"); err == nil || os.Getenv("DYAD_CHROMIUM") != "" || os.Getenv("DYAD_REQUIRE_CHROMIUM") != "" {
		bin = chromium(t)
	} else {
		t.Log("no chromium: the HTML pages are checked as written, not as loaded")
	}
	dom := reportDOM(t, bin, b, "--framework", report.OWASP)
	for _, want := range []string{
		`API5:2023 Broken Function Level Authorization: <span class="status mitigated">mitigated</span> <span class="mode">(prevention)</span>`,
		`API6:2023 Unrestricted Access to Sensitive Business Flows: <span class="status partly">partly</span> <span class="mode">(prevention)</span>`,
		`API9:2023 Improper Inventory Management: <span class="status mitigated">mitigated</span> <span class="mode">(detection)</span>`,
		`API1:2023 Broken Object Level Authorization: <span class="status not_covered">`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("B's HTML report lacks %s", want)
		}
	}
	domA := reportDOM(t, bin, a, "--framework", report.OWASP)
	if !regexp.MustCompile(`API10:2023 Unsafe Consumption of APIs: <span class="status mitigated">mitigated</span> <span class="mode">\(prevention and detection\)</span>`).MatchString(domA) {
		t.Errorf("A's HTML report lacks API10 mitigated (prevention and detection)")
	}
}
