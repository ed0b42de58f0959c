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

// dyadReport runs `dyad report` and returns its exit status.
func dyadReport(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(dyadBin, append([]string{"report"}, args...)...).CombinedOutput()
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
