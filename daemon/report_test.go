package daemon_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/report"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// rawEvent is a journal line read with encoding/json alone, to count
// independently of the journal and report packages.
type rawEvent struct {
	Name  string         `json:"name"`
	Attrs map[string]any `json:"attrs"`
}

func rawJournal(t *testing.T, dir string) []rawEvent {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "dyad-audit-*.jsonl"))
	var out []rawEvent
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			var e rawEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
	}
	return out
}

// dyadReport runs `dyad report` and returns its output and exit status.
func dyadReport(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return runDyad(t, append([]string{"report"}, args...)...)
}

// runDyad runs the dyad binary with args and returns its combined output
// and exit status.
func runDyad(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(dyadBin, args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// realRun makes a journal at site B from real traffic: echo connections
// from A, a stream to a service A may not use, an unpaired daemon's
// handshakes, a reload that tags the link; then both daemons stop.
func realRun(t *testing.T) (b *daemontest.Site, echoes int) {
	echo, _ := tunneltest.EchoServer(t)
	a, b, local := twoSites(t, echo)
	echoes = 5
	for i := range echoes {
		if err := echoRoundTrip(local, 64<<10, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	privateLocal := freeTCP(t)
	a.Config.Forwards = append(a.Config.Forwards, daemon.ForwardConfig{Listen: privateLocal, Peer: "site-b", Service: "private"})
	reload(t, a)
	refusedPromptly(t, privateLocal, 2*time.Second)

	stranger := newSite(t, t.TempDir(), "stranger")
	strangerLocal := freeTCP(t)
	stranger.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	stranger.Config.Forwards = []daemon.ForwardConfig{{Listen: strangerLocal, Peer: "site-b", Service: "echo"}}
	stranger.Config.Tunnel.ConnectTimeout = daemon.Duration(time.Second)
	start(t, stranger)
	refusedPromptly(t, strangerLocal, 3*time.Second)

	b.Config.Peers[0].Country, b.Config.Peers[0].Critical = "DE", true
	reload(t, b)
	for _, s := range []*daemontest.Site{stranger, a, b} {
		if err := s.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return b, echoes
}

// TestReportFromRealRun: the JSON report of a real daemon's journal
// agrees with counts taken from the journal lines directly; a tampered
// journal is reported as such, with exit status 1.
func TestReportFromRealRun(t *testing.T) {
	b, echoes := realRun(t)
	journalDir := filepath.Join(b.Dir, "audit")
	events := rawJournal(t, journalDir)
	tally := map[string]int{}
	var fromPeer, toPeer float64
	for _, e := range events {
		tally[e.Name]++
		if e.Name == audit.StreamClosed && e.Attrs[audit.KeyService] == "echo" {
			fromPeer += e.Attrs[audit.KeyBytesReceived].(float64)
			toPeer += e.Attrs[audit.KeyBytesSent].(float64)
		}
	}
	out := filepath.Join(t.TempDir(), "report.json")
	msg, code := dyadReport(t, "--config", b.ConfigPath(), "--format", "json", "--out", out)
	if code != 0 {
		t.Fatalf("dyad report: exit %d\n%s", code, msg)
	}
	data, _ := os.ReadFile(out)
	var r report.Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	if !r.Journal.Verified || r.Period.Entries != len(events) {
		t.Fatalf("verified %v, %d entries in the period; the journal has %d", r.Journal.Verified, r.Period.Entries, len(events))
	}
	for name, n := range tally {
		if r.Evidence.EventCounts[name] != n {
			t.Errorf("%s: report counts %d, the journal has %d", name, r.Evidence.EventCounts[name], n)
		}
	}
	for _, must := range []string{audit.StreamOpened, audit.PolicyDenied, audit.PeerAuthRefused, audit.ConfigReloaded, audit.DaemonStopped} {
		if tally[must] == 0 {
			t.Errorf("the run journalled no %s", must)
		}
	}
	if r.Evidence.Refusals.Handshakes != tally[audit.PeerAuthRefused] {
		t.Errorf("handshakes refused %d, journal %d", r.Evidence.Refusals.Handshakes, tally[audit.PeerAuthRefused])
	}
	var use report.ServiceUse
	for _, u := range r.Evidence.Services {
		if u.Service == "echo" && u.Peer == "site-a" && u.Direction == "inbound" {
			use = u
		}
	}
	if use.Streams != echoes || float64(use.FromPeer) != fromPeer || float64(use.ToPeer) != toPeer || use.FromPeer != int64(echoes)*64<<10 {
		t.Errorf("echo use %+v; journal: %d streams, %.0f bytes in, %.0f out", use, echoes, fromPeer, toPeer)
	}
	if r.Evidence.Unused == nil || strings.Join(r.Evidence.Unused, ",") != "private" {
		t.Errorf("unused services %v, want [private]", r.Evidence.Unused)
	}
	if len(r.Evidence.Register) != 1 || r.Evidence.Register[0].Country != "DE" || !r.Evidence.Register[0].Critical {
		t.Errorf("register %+v", r.Evidence.Register)
	}
	if r.Daemon.Site != "site-b" || r.Daemon.Fingerprint == "" || r.Daemon.KeyExchange != "X25519MLKEM768" || len(r.Evidence.TLS) == 0 {
		t.Errorf("header %+v, TLS in use %v", r.Daemon, r.Evidence.TLS)
	}
	if len(r.Citations) == 0 || r.Citations[0].Proof == nil {
		t.Errorf("no cited entry with a proof: %+v", r.Citations)
	}

	// Markdown, and a period given as --since, work too.
	if msg, code := dyadReport(t, "--config", b.ConfigPath(), "--format", "md", "--since", "1h", "--framework", "owasp-api-2023"); code != 0 ||
		!strings.Contains(msg, "API10:2023") || strings.Contains(msg, "DORA Art. 28(3)") {
		t.Errorf("owasp markdown report: exit %d\n%.500s", code, msg)
	}
	if msg, code := dyadReport(t, "--config", b.ConfigPath(), "--format", "pdf"); code != 2 || !strings.Contains(msg, "--format") {
		t.Errorf("bad --format: exit %d: %s", code, msg)
	}

	// Tampered: exit 1, and the report says so.
	files, _ := filepath.Glob(filepath.Join(journalDir, "dyad-audit-*.jsonl"))
	raw, _ := os.ReadFile(files[0])
	os.WriteFile(files[0], bytes.Replace(raw, []byte(`"dyad.service":"echo"`), []byte(`"dyad.service":"ech0"`), 1), 0o600)
	html := filepath.Join(t.TempDir(), "report.html")
	msg, code = dyadReport(t, "--config", b.ConfigPath(), "--out", html)
	page, _ := os.ReadFile(html)
	if code != 1 || !strings.Contains(msg, "does not verify") || !strings.Contains(string(page), "does NOT verify") {
		t.Errorf("tampered journal: exit %d, %s", code, msg)
	}
}

// chromium finds the browser for the HTML report test: DYAD_CHROMIUM or
// chromium on PATH. CI sets DYAD_REQUIRE_CHROMIUM so a missing browser
// fails there instead of skipping.
func chromium(t *testing.T) string {
	if p := os.Getenv("DYAD_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("DYAD_REQUIRE_CHROMIUM") != "" {
		t.Fatal("DYAD_REQUIRE_CHROMIUM is set but no chromium is installed (apt-get install chromium)")
	}
	t.Skip("no chromium: install Debian's chromium to check the HTML report in a browser")
	return ""
}

// browse loads page in headless Chromium with one output flag and returns
// the console messages it logged.
func browse(t *testing.T, bin, page string, flags ...string) (console []string, stdout string) {
	t.Helper()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
		"--enable-logging=stderr", "--v=0", "--user-data-dir=" + t.TempDir(), "--window-size=1280,2000"}, flags...)
	cmd := exec.Command(bin, append(args, "file://"+page)...)
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("chromium %v: %v\n%s", flags, err, errs.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("chromium %v did not finish in 60 s", flags)
	}
	for _, l := range strings.Split(errs.String(), "\n") {
		if strings.Contains(l, ":CONSOLE") {
			console = append(console, l)
		}
	}
	return console, out.String()
}

// TestReportHTMLInChromium: the HTML report of a real run loads in
// headless Chromium without a console message (its Content-Security-Policy
// turns any attempted fetch or script into one), has every section, and
// renders to a screenshot and a PDF.
func TestReportHTMLInChromium(t *testing.T) {
	bin := chromium(t)
	dir := t.TempDir()

	// The console check must be able to fail: a page that breaks the
	// report's rules is caught.
	bad := filepath.Join(dir, "bad.html")
	os.WriteFile(bad, []byte(`<!DOCTYPE html><meta http-equiv="Content-Security-Policy" content="default-src 'none'"><img src="http://127.0.0.1:9/x.png"><script>console.error("x")</script>`), 0o644)
	if console, _ := browse(t, bin, bad, "--dump-dom"); len(console) == 0 {
		t.Fatal("the console check saw nothing on a page that fetches and scripts")
	}

	b, _ := realRun(t)
	page := filepath.Join(dir, "report.html")
	if msg, code := dyadReport(t, "--config", b.ConfigPath(), "--format", "html", "--out", page); code != 0 {
		t.Fatalf("dyad report: exit %d\n%s", code, msg)
	}
	console, dom := browse(t, bin, page, "--dump-dom")
	if len(console) > 0 {
		t.Errorf("console messages:\n%s", strings.Join(console, "\n"))
	}
	for _, id := range []string{"daemon", "journal", "timeline", report.DORA, report.OWASP, "incidents", "register", "activity", "citations"} {
		if !strings.Contains(dom, fmt.Sprintf(`id="%s"`, id)) {
			t.Errorf("the loaded page lacks section %q", id)
		}
	}
	if !strings.Contains(dom, "Journal verified.") || strings.Count(dom, "<svg") != 2 {
		t.Errorf("the page lacks the verdict or its two charts")
	}
	png, pdf := filepath.Join(dir, "report.png"), filepath.Join(dir, "report.pdf")
	browse(t, bin, page, "--screenshot="+png)
	browse(t, bin, page, "--print-to-pdf="+pdf, "--no-pdf-header-footer")
	if head := readHead(t, png, 8); !bytes.Equal(head, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("screenshot is not a PNG: %q", head)
	}
	if head := readHead(t, pdf, 5); string(head) != "%PDF-" {
		t.Errorf("print is not a PDF: %q", head)
	}
	if fi, err := os.Stat(pdf); err != nil || fi.Size() < 20<<10 {
		t.Errorf("PDF too small to hold the report: %v", fi)
	}
	if dst := os.Getenv("DYAD_REPORT_ARTIFACTS"); dst != "" { // for a human to look at
		for _, f := range []string{page, png, pdf} {
			data, _ := os.ReadFile(f)
			os.WriteFile(filepath.Join(dst, filepath.Base(f)), data, 0o644)
		}
	}
}

func readHead(t *testing.T, path string, n int) []byte {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, n)
	io.ReadFull(f, head)
	return head
}

// reportJSON runs `dyad report --format json` with extra flags and decodes it.
func reportJSON(t *testing.T, site *daemontest.Site, extra ...string) (*report.Report, int) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "report.json")
	msg, code := dyadReport(t, append([]string{"--config", site.ConfigPath(), "--format", "json", "--out", out}, extra...)...)
	var r report.Report
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("dyad report: exit %d, %v\n%s", code, err, msg)
	}
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return &r, code
}

// reportDOM writes the HTML report and returns the DOM headless Chromium
// loaded from it.
func reportDOM(t *testing.T, bin string, site *daemontest.Site, extra ...string) string {
	t.Helper()
	page := filepath.Join(t.TempDir(), "report.html")
	if msg, code := dyadReport(t, append([]string{"--config", site.ConfigPath(), "--format", "html", "--out", page}, extra...)...); code > 1 {
		t.Fatalf("dyad report: exit %d\n%s", code, msg)
	}
	if bin == "" { // no browser here: check the page as written
		data, _ := os.ReadFile(page)
		return string(data)
	}
	if bin == "" { // no browser here: check the page as written
		data, _ := os.ReadFile(page)
		return string(data)
	}
	console, dom := browse(t, bin, page, "--dump-dom")
	if len(console) > 0 {
		t.Errorf("console messages:\n%s", strings.Join(console, "\n"))
	}
	return dom
}

// TestReportCrashInChromium: kill -9 of the exporter, a few seconds down,
// a restart, then a clean stop: with --outage-min 2s the report shows the
// gap as unknown and an incident candidate, never as uptime, and the
// clean stop as no outage; the HTML in Chromium says "unknown". Then one
// byte of one entry is changed: no row is evidenced, and the page names
// the bad entry (THREATS P10).
func TestReportCrashInChromium(t *testing.T) {
	bin := ""
	if _, err := exec.LookPath("chromium"); err == nil || os.Getenv("DYAD_CHROMIUM") != "" || os.Getenv("DYAD_REQUIRE_CHROMIUM") != "" {
		bin = chromium(t)
	} else {
		t.Log("no chromium: the HTML pages are checked as written, not as loaded")
	}
	echo, _ := tunneltest.EchoServer(t)
	a, b, local := twoSites(t, echo)
	for i := range 3 {
		if err := echoRoundTrip(local, 4<<10, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Killed right after the last response: every event B's Emit returned
	// for is in the kernel already (TestKillNineKeepsStreams).
	b.Kill()
	time.Sleep(4 * time.Second)
	if err := b.StartReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for echoRoundTrip(local, 1<<10, 9) != nil {
		if time.Now().After(deadline) {
			t.Fatal("no tunnel after the restart")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, s := range []*daemontest.Site{a, b} {
		if err := s.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}

	r, code := reportJSON(t, b, "--outage-min", "2s")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, r.Journal.Verdict)
	}
	var unclean []report.Gap
	for _, g := range r.Evidence.Uptime.Gaps {
		if g.Cause == report.GapUnclean {
			unclean = append(unclean, g)
		}
	}
	if len(unclean) != 1 || unclean[0].Seconds < 4 || unclean[0].Seconds > 30 {
		t.Fatalf("unclean gaps %+v, want one of 4 s or more", unclean)
	}
	kinds := map[string]int{}
	for _, in := range r.Evidence.Incidents {
		kinds[in.Kind]++
		if in.Kind == "tunnel_outage" && in.Start.Sub(r.Evidence.Uptime.Intervals[len(r.Evidence.Uptime.Intervals)-1].From).Abs() < time.Second {
			t.Errorf("the clean stop is listed as an outage: %s", in.Summary)
		}
	}
	if kinds["unclean_stop"] != 1 {
		t.Errorf("incident candidates %v, want one unclean_stop", kinds)
	}
	for _, tun := range r.Evidence.Tunnels {
		if tun.Peer == "site-a" && tun.UnknownSeconds < unclean[0].Seconds-0.001 {
			t.Errorf("site-a: %v s unknown, the gap is %v s", tun.UnknownSeconds, unclean[0].Seconds)
		}
		for _, iv := range tun.Intervals {
			if iv.State == "up" && iv.From.Before(unclean[0].To) && iv.To.After(unclean[0].From) {
				t.Errorf("site-a up across the crash gap: %+v", iv)
			}
		}
	}
	// With the default threshold (1 minute) the 4 s gap is no candidate.
	if r, _ := reportJSON(t, b); len(r.Evidence.Incidents) != 0 {
		t.Errorf("incidents with a 1-minute threshold: %+v", r.Evidence.Incidents)
	}
	dom := reportDOM(t, bin, b, "--outage-min", "2s")
	for _, want := range []string{"unknown: the daemon was not provably running", "unclean_stop", "never counted as uptime"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %q", want)
		}
	}

	// Tampered: one byte of one stream entry.
	files, _ := filepath.Glob(filepath.Join(b.Dir, "audit", "dyad-audit-*.jsonl"))
	raw, _ := os.ReadFile(files[0])
	at := bytes.Index(raw, []byte(`"dyad.service":"echo"`))
	if at < 0 {
		t.Fatal("no stream entry to change")
	}
	bad := bytes.Count(raw[:at], []byte("\n"))
	raw[at+len(`"dyad.service":"e`)] = 'E'
	os.WriteFile(files[0], raw, 0o600)
	r, code = reportJSON(t, b)
	if code != 1 || r.Journal.EvidenceEnds == nil || *r.Journal.EvidenceEnds > uint64(bad) {
		t.Fatalf("tampered: exit %d, evidence ends %v, the bad entry is %d", code, r.Journal.EvidenceEnds, bad)
	}
	for _, sec := range r.Sections {
		for _, row := range sec.Rows {
			if row.Status == report.Evidenced || row.Status == report.Mitigated {
				t.Errorf("%s is %s", row.ID, row.Status)
			}
		}
	}
	for _, c := range r.Citations {
		if c.Seq >= *r.Journal.EvidenceEnds {
			t.Errorf("cites #%d, at or after the first bad entry", c.Seq)
		}
	}
	dom = reportDOM(t, bin, b)
	if strings.Contains(dom, `class="status evidenced"`) || !strings.Contains(dom, fmt.Sprintf("evidence stops before entry #%d", *r.Journal.EvidenceEnds)) ||
		!strings.Contains(dom, fmt.Sprintf("entry %d", bad)) {
		t.Errorf("the tampered page shows an evidenced row or does not name entry %d", bad)
	}
}
