package deploy

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
)

// systemdMaxExposure is the highest `systemd-analyze security` score the
// unit may reach: just above what it has (1.1 with systemd 252; scores
// move in steps of 0.1, so dropping any one setting fails). What is left is
// inherent to a network daemon (host network, INET and UNIX sockets, the
// host's root) or site-specific (IPAddressDeny=).
const systemdMaxExposure = 1.15

// The installed paths the unit and the example configuration agree on.
const (
	systemdBin    = "/usr/local/bin/dyad"
	systemdConfig = "/etc/dyad/dyad.yaml"
)

// TestSdUnit checks deploy/systemd ("sd" as systemd abbreviates itself)
// with the real tools: the example configuration with `dyad check`, the
// unit with `systemd-analyze verify` and `security`, the user with
// `systemd-sysusers`, and the syscall filter and address families against
// what dyad really calls (under strace). No systemd runs as PID 1 here, so
// the unit itself is never started.
func TestSdUnit(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "dyad")
	build := exec.Command("go", "build", "-o", bin, "./cmd/dyad")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	unit := systemdReadUnit(t, "systemd/dyad.service")

	t.Run("ExampleConfig", func(t *testing.T) { systemdExampleConfig(t, bin) })
	t.Run("Layout", func(t *testing.T) { systemdLayout(t, bin, unit) })

	// systemd-analyze checks a copy whose binary exists (verify requires it),
	// under the same name: the unit's name appears in its paths.
	copyPath := filepath.Join(dir, "unit", "dyad.service")
	data, err := os.ReadFile("systemd/dyad.service")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(copyPath), 0o755)
	if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(string(data), systemdBin, bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	analyze := func(t *testing.T) string {
		t.Helper()
		p, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Skip("systemd-analyze is not installed (package systemd): the unit is not checked")
		}
		return p
	}

	t.Run("Verify", func(t *testing.T) {
		out, err := exec.Command(analyze(t), "verify", copyPath).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
		}
		// Unknown keys and bad values are only warnings: any line about
		// the unit fails the test; lines about the host's own units do not.
		for line := range strings.Lines(string(out)) {
			if strings.Contains(line, "dyad.service") {
				t.Errorf("systemd-analyze verify: %s", strings.TrimSpace(line))
			} else if strings.TrimSpace(line) != "" {
				t.Logf("systemd-analyze verify (not about dyad): %s", strings.TrimSpace(line))
			}
		}
	})

	t.Run("Security", func(t *testing.T) {
		out, err := exec.Command(analyze(t), "security", "--offline=yes", "--no-pager", copyPath).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze security: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`Overall exposure level for dyad\.service: ([0-9.]+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("no overall exposure level in:\n%s", out)
		}
		score, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("exposure %.1f (threshold %.2f)", score, systemdMaxExposure)
		if score > systemdMaxExposure {
			t.Errorf("exposure %.1f is above %.2f; what is exposed:\n%s", score, systemdMaxExposure, systemdExposed(out))
		}
	})

	t.Run("Sysusers", func(t *testing.T) {
		sysusers, err := exec.LookPath("systemd-sysusers")
		if err != nil {
			t.Skip("systemd-sysusers is not installed")
		}
		conf, err := filepath.Abs("systemd/dyad-sysusers.conf")
		if err != nil {
			t.Fatal(err)
		}
		root := t.TempDir()
		os.Mkdir(filepath.Join(root, "etc"), 0o755)
		out, err := exec.Command(sysusers, "--root="+root, "--dry-run", conf).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-sysusers: %v\n%s", err, out)
		}
		if user := unit.get("User"); !strings.Contains(string(out), "user '"+user+"'") {
			t.Errorf("dyad-sysusers.conf does not create User=%s:\n%s", user, out)
		}
	})

	t.Run("SyscallFilter", func(t *testing.T) { systemdSyscalls(t, analyze(t), bin, unit) })
}

// systemdUnit is a unit file's assignments, in order, by key.
type systemdUnit map[string][]string

func systemdReadUnit(t *testing.T, path string) systemdUnit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := systemdUnit{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			u[k] = append(u[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// get is the key's last value ("" when unset).
func (u systemdUnit) get(key string) string {
	if v := u[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// systemdExample writes the example configuration into dir as it would
// be in /etc/dyad: with a fresh identity.key beside it and a fresh partner
// key in place of the placeholder. It returns the file's path.
func systemdExample(t *testing.T, bin, dir string) string {
	t.Helper()
	for _, d := range []string{dir, filepath.Join(dir, "partner")} {
		if out, err := exec.Command(bin, "keygen", "--out", d).CombinedOutput(); err != nil {
			t.Fatalf("keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "partner", "identity.pub"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("systemd/dyad.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const placeholder = "dyad2:PARTNER-PUBLIC-KEY"
	if n := strings.Count(string(data), placeholder); n != 1 {
		t.Fatalf("systemd/dyad.yaml: %d %s placeholders, want 1", n, placeholder)
	}
	path := filepath.Join(dir, "dyad.yaml")
	data = []byte(strings.Replace(string(data), placeholder, strings.TrimSpace(string(pub)), 1))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// systemdExampleConfig: `dyad check` accepts the example as shipped, and
// with its commented-out OTLP export switched on.
func systemdExampleConfig(t *testing.T, bin string) {
	dir := t.TempDir()
	path := systemdExample(t, bin, dir)
	check := func(token string) (string, error) {
		cmd := exec.Command(bin, "check", "--config", path)
		cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "DYAD_OTLP_TOKEN=") })
		if token != "" {
			cmd.Env = append(cmd.Env, "DYAD_OTLP_TOKEN="+token)
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := check("")
	if err != nil || !strings.Contains(out, "ok: site bank-b") {
		t.Fatalf("dyad check on the example: %v\n%s", err, out)
	}

	// Uncomment the otlp block ("  # otlp:" → "  otlp:").
	data, _ := os.ReadFile(path)
	var b strings.Builder
	n := 0
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "  # "); ok {
			line, n = "  "+rest, n+1
		}
		b.WriteString(line)
	}
	if n == 0 {
		t.Fatal("systemd/dyad.yaml has no commented-out otlp block")
	}
	os.WriteFile(path, []byte(b.String()), 0o644)
	systemdWriteCA(t, filepath.Join(dir, "collector-ca.pem"))
	if out, err := check(""); err == nil || !strings.Contains(out, "DYAD_OTLP_TOKEN") {
		t.Errorf("dyad check with the otlp block and no DYAD_OTLP_TOKEN: %v, want an error naming it\n%s", err, out)
	}
	out, err = check("test-token")
	if err != nil || !strings.Contains(out, "ok: site bank-b") {
		t.Fatalf("dyad check on the example with otlp: %v\n%s", err, out)
	}
	if strings.Contains(out, "test-token") {
		t.Errorf("dyad check printed the token:\n%s", out)
	}
}

// systemdWriteCA writes a self-signed CA certificate (the collector's CA
// the example names).
func systemdWriteCA(t *testing.T, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test collector CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

// systemdLayout: the unit and the example agree on where things are, and
// the stop timeout covers the drain.
func systemdLayout(t *testing.T, bin string, unit systemdUnit) {
	path := systemdExample(t, bin, t.TempDir())
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := daemon.ParseConfig(systemdConfig, data) // as installed
	if err != nil {
		t.Fatal(err)
	}
	if got := unit.get("ExecStart"); got != systemdBin+" run --config "+systemdConfig {
		t.Errorf("ExecStart=%s", got)
	}
	if !slices.Contains(unit["ExecReload"], "/bin/kill -HUP $MAINPID") {
		t.Errorf("ExecReload=%v: no SIGHUP", unit["ExecReload"])
	}
	if got, want := "/etc/"+unit.get("ConfigurationDirectory")+"/", filepath.Dir(systemdConfig)+"/"; got != want {
		t.Errorf("ConfigurationDirectory is %s, the configuration is in %s", got, want)
	}
	if state := "/var/lib/" + unit.get("StateDirectory") + "/"; !strings.HasPrefix(cfg.Audit.Journal.Dir+"/", state) {
		t.Errorf("audit.journal.dir %s is outside StateDirectory %s, the only writable place", cfg.Audit.Journal.Dir, state)
	}
	if state := "/var/lib/" + unit.get("StateDirectory"); cfg.StateDir != state && !strings.HasPrefix(cfg.StateDir, state+"/") {
		t.Errorf("state_dir %s is outside StateDirectory %s: enrolled peers could not be written", cfg.StateDir, state)
	}
	if run := "/run/" + unit.get("RuntimeDirectory") + "/"; unit.get("RuntimeDirectory") == "" || !strings.HasPrefix(cfg.ControlSocket, run) {
		t.Errorf("control.socket %s is not in RuntimeDirectory %s", cfg.ControlSocket, run)
	}
	if m := unit.get("RuntimeDirectoryMode"); m != "0700" && m != "0750" {
		t.Errorf("RuntimeDirectoryMode=%s: the control socket's folder must keep other users out", m)
	}
	if filepath.Dir(cfg.IdentityPath) != filepath.Dir(systemdConfig) {
		t.Errorf("identity %s is not in %s", cfg.IdentityPath, filepath.Dir(systemdConfig))
	}
	stop, err := time.ParseDuration(unit.get("TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	// The drain, then up to 10 s to close the journal (daemon.stopped).
	if need := cfg.ShutdownTimeout + 10*time.Second; stop < need {
		t.Errorf("TimeoutStopSec=%v is shorter than the drain and journal close, %v", stop, need)
	}
	if unit.get("Type") != "notify" || unit.get("WatchdogSec") == "" {
		t.Errorf("Type=%s WatchdogSec=%s: want notify and a watchdog", unit.get("Type"), unit.get("WatchdogSec"))
	}
}

// systemdExposed lists the lines systemd-analyze security marks ✗.
func systemdExposed(out []byte) string {
	var b strings.Builder
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "✗") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// systemdSyscalls runs dyad under strace through start, a forwarded
// connection, admin requests, a reload and a drain, with NOTIFY_SOCKET and
// the watchdog on, and checks every system call against the unit's
// SystemCallFilter= and every socket against RestrictAddressFamilies=.
// Under systemd a call outside the filter fails with EPERM.
func systemdSyscalls(t *testing.T, analyze, bin string, unit systemdUnit) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed: the syscall filter is not checked against dyad's calls")
	}
	if out, err := exec.Command(strace, "-f", "-qq", "-o", os.DevNull, "true").CombinedOutput(); err != nil {
		t.Skipf("strace cannot trace here: %v %s", err, out)
	}
	allowed := systemdFilter(t, analyze, unit["SystemCallFilter"])
	families := strings.Fields(unit.get("RestrictAddressFamilies"))

	dir := t.TempDir()
	if out, err := exec.Command(bin, "keygen", "--out", dir).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	partner := filepath.Join(dir, "partner")
	if out, err := exec.Command(bin, "keygen", "--out", partner).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	pub, _ := os.ReadFile(filepath.Join(partner, "identity.pub"))
	free := func() string {
		addr, err := daemontest.FreeTCP()
		if err != nil {
			t.Fatal(err)
		}
		return addr
	}
	admin, forward := free(), free()
	// The peer's endpoint is a closed port: dyad dials it (QUIC sends and
	// ICMP errors) and never connects.
	cfg := fmt.Sprintf(`site: strace
identity: identity.key
listen: %s
admin: %s
tunnel: {connect_timeout: 1s}
peers:
  - {name: partner, public_key: %s, endpoint: %s}
services:
  - {name: api, upstream: %s, allow: [partner]}
forwards:
  - {listen: %s, peer: partner, service: api}
`, free(), admin, strings.TrimSpace(string(pub)), free(), free(), forward)
	cfgPath := filepath.Join(dir, "dyad.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(dir, "notify")
	if len(sock) >= 108 {
		sdDir, err := os.MkdirTemp("", "sd")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sdDir) })
		sock = filepath.Join(sdDir, "notify")
	}
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ready := make(chan struct{}, 8)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := nc.ReadFromUnix(buf)
			if err != nil {
				return
			}
			if slices.Contains(strings.Split(string(buf[:n]), "\n"), "READY=1") {
				ready <- struct{}{}
			}
		}
	}()
	waitReady := func(what string) {
		t.Helper()
		select {
		case <-ready:
		case <-time.After(60 * time.Second):
			t.Fatalf("no READY=1 %s within 60 s", what)
		}
	}

	trace := filepath.Join(dir, "trace")
	cmd := exec.Command(strace, "-f", "-qq", "-o", trace, bin, "run", "--config", cfgPath)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000", "WATCHDOG_PID=")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	pid := 0
	defer func() {
		if pid != 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("dyad logs:\n%s", logs.String())
		}
	}()

	waitReady("at start")
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + admin + "/statusz")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Process daemon.ProcessStatus `json:"process"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st.Process.PID == 0 {
		t.Fatalf("statusz: %v", err)
	}
	pid = st.Process.PID // dyad's, not strace's
	if resp, err := c.Get("http://" + admin + "/metrics"); err == nil {
		resp.Body.Close()
	}
	if conn, err := net.Dial("tcp", forward); err == nil {
		conn.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		conn.Close()
	}
	time.Sleep(500 * time.Millisecond) // a few watchdog ticks and dial attempts
	syscall.Kill(pid, syscall.SIGHUP)
	waitReady("after SIGHUP")
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err // for the deferred wait
		if err != nil {
			t.Fatalf("dyad under strace: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("dyad did not exit within 90 s of SIGTERM")
	}
	pid = 0

	data, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^\d+ +([a-z0-9_]+)\(`).FindAllSubmatch(data, -1) {
		calls[string(m[1])]++
	}
	if calls["socket"] == 0 || calls["execve"] == 0 {
		t.Fatalf("the trace holds no socket or execve call: strace output format changed?")
	}
	var denied []string
	for c := range calls {
		if !allowed[c] {
			denied = append(denied, c)
		}
	}
	slices.Sort(denied)
	if len(denied) > 0 {
		t.Errorf("dyad calls %v, outside SystemCallFilter=%v", denied, unit["SystemCallFilter"])
	}
	opened := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\d+ +socket\((AF_[A-Z0-9]+)`).FindAllSubmatch(data, -1) {
		opened[string(m[1])] = true
	}
	for f := range opened {
		if !slices.Contains(families, f) {
			t.Errorf("dyad opens %s sockets, outside RestrictAddressFamilies=%s", f, unit.get("RestrictAddressFamilies"))
		}
	}
	t.Logf("%d distinct system calls, socket families %v", len(calls), slices.Sorted(maps.Keys(opened)))
}

// systemdFilter expands SystemCallFilter= lines into the allowed calls:
// the first, an allow list, adds; each "~" line removes.
func systemdFilter(t *testing.T, analyze string, lines []string) map[string]bool {
	t.Helper()
	cache := map[string]map[string]bool{}
	var expand func(name string) map[string]bool
	expand = func(name string) map[string]bool {
		if !strings.HasPrefix(name, "@") {
			return map[string]bool{name: true}
		}
		if s, ok := cache[name]; ok {
			return s
		}
		out, err := exec.Command(analyze, "syscall-filter", name).Output()
		if err != nil {
			t.Fatalf("systemd-analyze syscall-filter %s: %v", name, err)
		}
		s := map[string]bool{}
		for i, line := range strings.Split(string(out), "\n") {
			line = strings.TrimSpace(line)
			if i == 0 || line == "" || strings.HasPrefix(line, "#") {
				continue // the set's own name, blanks, comments
			}
			for c := range expand(line) {
				s[c] = true
			}
		}
		cache[name] = s
		return s
	}
	if len(lines) == 0 || strings.HasPrefix(lines[0], "~") {
		t.Fatalf("SystemCallFilter=%v: want an allow list first", lines)
	}
	allowed := map[string]bool{}
	for _, l := range lines {
		deny := strings.HasPrefix(l, "~")
		for _, name := range strings.Fields(strings.TrimPrefix(l, "~")) {
			for c := range expand(name) {
				if deny {
					delete(allowed, c)
				} else {
					allowed[c] = true
				}
			}
		}
	}
	return allowed
}
