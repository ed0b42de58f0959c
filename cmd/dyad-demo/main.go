// Command dyad-demo shows dyad end to end on loopback (`make demo`): two
// daemons as separate processes paired with `dyad invite` and `dyad join`
// (no key copied), site B exporting a real HTTP API, site A importing it on
// a local port, 100 MiB each way checked by SHA-256, an unpaired third
// daemon and a replayed token being refused, `dyad revoke` cutting the
// pair, and site B's audit journal with its `dyad audit verify` verdict.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
)

func main() {
	bin := flag.String("dyad", "bin/dyad", "the dyad binary to run")
	size := flag.Int64("size", 100<<20, "bytes to upload and to download")
	keep := flag.Bool("keep", false, "keep the demo folder (identities, configs) afterwards")
	reportPath := flag.String("report", "bin/demo-report.html", "where to write site B's evidence report")
	flag.Parse()
	if err := run(*bin, *size, *keep, *reportPath); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

type step struct{ what, result string }

func run(bin string, size int64, keep bool, reportPath string) error {
	start := time.Now()
	root, err := os.MkdirTemp("", "dyad-demo-")
	if err != nil {
		return err
	}
	if keep {
		fmt.Println("demo folder:", root)
	} else {
		defer os.RemoveAll(root)
	}
	var steps []step
	say := func(what, format string, args ...any) {
		r := fmt.Sprintf(format, args...)
		steps = append(steps, step{what, r})
		fmt.Printf("  %-44s %s\n", what, r)
	}

	api, err := startAPI()
	if err != nil {
		return err
	}
	defer api.Close()
	fmt.Printf("site B's payments API (Go net/http) on %s\n\n", api.Addr)

	a, err := daemontest.NewSite(bin, root, "site-a")
	if err != nil {
		return err
	}
	b, err := daemontest.NewSite(bin, root, "site-b")
	if err != nil {
		return err
	}
	a.Config.Log.Level, b.Config.Log.Level = "info", "info"
	local, err := daemontest.FreeTCP()
	if err != nil {
		return err
	}
	// Neither configuration names the other site: they pair below with
	// dyad invite and dyad join, which keep the peer in each daemon's
	// state directory.
	b.Config.Services = []daemon.ServiceFile{{Name: "payments", Upstream: api.Addr}}
	fmt.Println("site A: dyad keygen →", short(a.PublicKey))
	fmt.Println("site B: dyad keygen →", short(b.PublicKey))

	for _, s := range []*daemontest.Site{b, a} {
		if err := s.StartReady(10 * time.Second); err != nil {
			return err
		}
		defer s.Stop(10 * time.Second)
	}
	say("both daemons started, not paired", "ready after %v", time.Since(start).Round(time.Millisecond))

	out, err := exec.Command(bin, "invite", "--config", b.ConfigPath(), "--peer", "site-a", "--service", "payments",
		"--endpoint", b.Config.Listen, "--expires", "10m", "--json").Output()
	if err != nil {
		return fmt.Errorf("dyad invite: %v\n%s", err, stderr(err))
	}
	var inv daemon.InviteResult
	if err := json.Unmarshal(out, &inv); err != nil {
		return fmt.Errorf("dyad invite: %w", err)
	}
	fmt.Printf("\n$ dyad invite --config site-b/dyad.yaml --peer site-a --service payments --endpoint %s\n  %s\n\n", b.Config.Listen, inv.Token)
	say("site B issued a one-time token", "%d characters, expires %s", len(inv.Token), inv.Expires.Format(time.RFC3339))

	fmt.Printf("$ dyad join --config site-a/dyad.yaml --forward %s=payments TOKEN\n", local)
	out, err = exec.Command(bin, "join", "--config", a.ConfigPath(), "--forward", local+"=payments", inv.Token).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dyad join: %v\n%s", err, out)
	}
	fmt.Printf("%s\n", indent(string(out)))
	phrase := enrolledPhrase(b)
	if !strings.Contains(string(out), phrase) {
		return fmt.Errorf("site B logged the verification phrase %q, site A's join printed another", phrase)
	}
	say("site A joined; site B pinned it", "phrases match: %q", phrase)
	fmt.Printf("site A forwards %s → site B / payments → %s\n\n", local, api.Addr)

	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableCompression: true}}
	base := "http://" + local

	t0 := time.Now()
	resp, err := client.Get(base + "/v1/payments/42")
	if err != nil {
		return fmt.Errorf("GET through the tunnel: %w", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	say("GET /v1/payments/42 through the tunnel", "%d %s (%v)", resp.StatusCode, bytes.TrimSpace(body), time.Since(t0).Round(time.Microsecond))

	t0 = time.Now()
	want := sha256.New()
	resp, err = client.Post(base+"/v1/upload", "application/octet-stream", io.TeeReader(payload(size, 1), want))
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(bytes.TrimSpace(got)) != hex.EncodeToString(want.Sum(nil)) {
		return fmt.Errorf("upload: server saw SHA-256 %s, client sent %x", got, want.Sum(nil))
	}
	say(fmt.Sprintf("POST %d MiB upload", size>>20), "SHA-256 match, %s", rate(size, time.Since(t0)))

	t0 = time.Now()
	resp, err = client.Get(base + "/v1/download?size=" + strconv.FormatInt(size, 10))
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || n != size || resp.Trailer.Get("X-Sha256") != hex.EncodeToString(h.Sum(nil)) {
		return fmt.Errorf("download: %d of %d bytes, err %v, hash match %v", n, size, err, resp.Trailer.Get("X-Sha256") == hex.EncodeToString(h.Sum(nil)))
	}
	say(fmt.Sprintf("GET %d MiB download", size>>20), "SHA-256 match, %s", rate(size, time.Since(t0)))

	// The operator's view: the tunnel's state, and an active probe.
	out, err = exec.Command(bin, "status", "--config", a.ConfigPath()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dyad status: %v\n%s", err, out)
	}
	fmt.Printf("\n$ dyad status --config site-a/dyad.yaml\n%s\n", out)
	say("dyad status at site A", "site-b up, each connection's RTT and bytes")
	out, err = exec.Command(bin, "ping", "--config", a.ConfigPath(), "site-b", "payments").CombinedOutput()
	if err != nil {
		return fmt.Errorf("dyad ping: %v\n%s", err, out)
	}
	fmt.Printf("$ dyad ping --config site-a/dyad.yaml site-b payments\n%s", out)
	say("dyad ping site-b payments", "exit 0")

	// A third daemon with its own key tries to reach site B's API.
	c, err := daemontest.NewSite(bin, root, "stranger")
	if err != nil {
		return err
	}
	strangerLocal, _ := daemontest.FreeTCP()
	c.Config.Log.Level = "info"
	c.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	c.Config.Forwards = []daemon.ForwardConfig{{Listen: strangerLocal, Peer: "site-b", Service: "payments"}}
	c.Config.Tunnel.ConnectTimeout = daemon.Duration(time.Second)
	if err := c.StartReady(10 * time.Second); err != nil {
		return err
	}
	defer c.Stop(10 * time.Second)
	_, refusal := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + strangerLocal + "/v1/payments/42")
	if refusal == nil {
		return errors.New("the unpaired daemon reached site B's API")
	}
	st, err := b.Status()
	if err != nil {
		return err
	}
	say("unpaired daemon asks for the same API", "refused (%s)", firstLine(refusal, "connection closed by dyad"))
	say("site B's refused handshakes", "%d, audited with fingerprint %s", st.Counters["handshakes_refused"], refusedFingerprint(b))
	out, err = exec.Command(bin, "ping", "--config", c.ConfigPath(), "site-b").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != daemon.PingRefused {
		return fmt.Errorf("dyad ping from the unpaired daemon: %v, want exit %d\n%s", err, daemon.PingRefused, out)
	}
	say("dyad ping from the unpaired daemon", "exit %d: %s", daemon.PingRefused, strings.SplitN(string(out), "\n", 2)[0])
	// A fourth site that got hold of the used token.
	d, err := daemontest.NewSite(bin, root, "site-d")
	if err != nil {
		return err
	}
	d.Config.Log.Level = "info"
	if err := d.StartReady(10 * time.Second); err != nil {
		return err
	}
	defer d.Stop(10 * time.Second)
	out, err = exec.Command(bin, "join", "--config", d.ConfigPath(), inv.Token).CombinedOutput()
	if err == nil {
		return errors.New("a fourth site enrolled with the used token")
	}
	say("another site replays the used token", "refused, nothing changed")
	fmt.Printf("  %s\n", strings.TrimSpace(string(out)))

	for _, r := range []struct {
		site *daemontest.Site
		peer string
	}{{b, "site-a"}, {a, "site-b"}} {
		out, err = exec.Command(bin, "revoke", "--config", r.site.ConfigPath(), r.peer).CombinedOutput()
		if err != nil {
			return fmt.Errorf("dyad revoke: %v\n%s", err, out)
		}
	}
	client.CloseIdleConnections()
	if _, err := (&http.Client{Timeout: 5 * time.Second}).Get(base + "/v1/payments/42"); err == nil {
		return errors.New("site A still reaches the API after dyad revoke")
	}
	say("dyad revoke at both sites", "the tunnel is cut, site A's requests refused")

	client.CloseIdleConnections() // else A drains the idle keep-alive connection until its deadline
	for _, s := range []*daemontest.Site{d, c, a, b} {
		if err := s.Stop(10 * time.Second); err != nil {
			return fmt.Errorf("%s did not stop cleanly: %w", s.Name, err)
		}
	}
	say("all daemons stopped (SIGTERM)", "exit 0")

	// What the SOC and the auditor get: site B's audit journal.
	entries, _, err := b.Journal()
	if err != nil {
		return err
	}
	fmt.Printf("\nsite B's audit journal (%d events; the same events went to its log, and over OTLP when configured):\n", len(entries))
	for _, e := range entries {
		fmt.Printf("  #%-3d %-26s %s\n", e.Seq, e.Name, summary(e))
	}
	out, err = exec.Command(bin, "audit", "verify", "--config", b.ConfigPath()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dyad audit verify: %v\n%s", err, out)
	}
	fmt.Printf("\n$ dyad audit verify --config site-b/dyad.yaml\n%s", out)
	say("site B's journal verified", "hash chain and signed checkpoints intact")

	// What the compliance officer hands the auditor.
	out, err = exec.Command(bin, "report", "--config", b.ConfigPath(), "--framework", "all", "--format", "html", "--out", reportPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dyad report: %v\n%s", err, out)
	}
	abs, _ := filepath.Abs(reportPath)
	fmt.Printf("\n$ dyad report --config site-b/dyad.yaml --framework all --format html --out %s\n%s", reportPath, out)
	say("site B's DORA + OWASP API Top 10 evidence", "written to %s", abs)

	fmt.Printf("\nsummary: %d steps passed in %v. Every byte crossed a QUIC tunnel (TLS 1.3, X25519MLKEM768)\n", len(steps), time.Since(start).Round(100*time.Millisecond))
	fmt.Println("and was sealed again by dyad's record layer with keys bound to the A-B pairing.")
	return nil
}

// payment API ----------------------------------------------------------------

type api struct {
	Addr string
	srv  *http.Server
}

func (a *api) Close() { a.srv.Close() }

func startAPI() (*api, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/payments/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"id": r.PathValue("id"), "amount": "1250.00", "currency": "EUR", "status": "settled"})
	})
	mux.HandleFunc("POST /v1/upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		if _, err := io.Copy(h, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%x\n", h.Sum(nil))
	})
	mux.HandleFunc("GET /v1/download", func(w http.ResponseWriter, r *http.Request) {
		size, err := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
		if err != nil || size < 0 || size > 1<<32 {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		w.Header().Set("Trailer", "X-Sha256")
		h := sha256.New()
		io.Copy(io.MultiWriter(w, h), payload(size, 2))
		w.Header().Set("X-Sha256", hex.EncodeToString(h.Sum(nil)))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return &api{Addr: ln.Addr().String(), srv: srv}, nil
}

func payload(n int64, seed byte) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{seed}), n)
}

func rate(n int64, d time.Duration) string {
	return fmt.Sprintf("%.2f Gbit/s (%v)", float64(n*8)/d.Seconds()/1e9, d.Round(time.Millisecond))
}

func short(pub string) string { return pub[:20] + "…" }

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}

func stderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// enrolledPhrase is the verification phrase in site's dyad.peer.enrolled
// event: what its operator reads to the joiner's.
func enrolledPhrase(site *daemontest.Site) string {
	for range 50 {
		entries, _, _ := site.Journal()
		for _, e := range entries {
			if e.Name == audit.PeerEnrolled {
				return e.Attr(audit.KeyEnrollPhrase).AsString()
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "(none recorded)"
}

func firstLine(err error, fallback string) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "EOF"), strings.Contains(s, "reset"):
		return fallback
	}
	return s
}

// refusedFingerprint finds the presented fingerprint in site's journal.
func refusedFingerprint(site *daemontest.Site) string {
	entries, _, _ := site.Journal()
	for _, e := range entries {
		if e.Name == audit.PeerAuthRefused {
			return e.Attr(audit.KeyPeerFingerprint).AsString()
		}
	}
	return "(none recorded)"
}

// summary picks the attributes that say what an event is about.
func summary(e journal.Entry) string {
	var parts []string
	for _, k := range []string{audit.KeyPeer, audit.KeyEnrollRole, audit.KeyEnrollPhrase, audit.KeyPeerSource, audit.KeyControlUID, audit.KeyService, audit.KeyDirection, audit.KeyRole, audit.KeyTLSCurve,
		audit.KeyPeerFingerprint, audit.KeyReason, audit.KeyBytesSent, audit.KeyBytesReceived, audit.KeyCloseReason, "dyad.journal.size"} {
		if v := e.Attr(k); v.Type() != attribute.INVALID {
			parts = append(parts, strings.TrimPrefix(k, "dyad.")+"="+v.Emit())
		}
	}
	return strings.Join(parts, " ")
}
