package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// TestFIPSConfig: fips: true refuses the ChaCha20-Poly1305 suite at the
// line of tunnel.suite, whatever mode the checking process is in (so that
// `dyad check` on a workstation catches it); fips and
// tls.require_post_quantum reach the tunnel; changing either needs a
// restart.
func TestFIPSConfig(t *testing.T) {
	key := testKey(t)
	cfg := func(extra string) string {
		return strings.Replace(goodConfig, "KEY", key, 1) + extra
	}
	_, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(strings.Replace(cfg("fips: true\n"), "  keepalive: 5s", "  suite: chacha20-poly1305\n  keepalive: 5s", 1)))
	if err == nil || !strings.Contains(err.Error(), "dyad.yaml:7: tunnel.suite: chacha20-poly1305 is not FIPS 140-3 approved") {
		t.Fatalf("fips: true with chacha20-poly1305: %v", err)
	}
	c, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(cfg("fips: true\ntls:\n  require_post_quantum: true\n")))
	if err != nil {
		t.Fatal(err)
	}
	if !c.File.FIPS || !c.Tunnel.FIPS || !c.Tunnel.RequirePostQuantum {
		t.Fatalf("fips %v, tunnel fips %v, require_post_quantum %v", c.File.FIPS, c.Tunnel.FIPS, c.Tunnel.RequirePostQuantum)
	}
	if c.Tunnel.Suite != 0 && c.Tunnel.Suite != codec.SuiteAES256GCM {
		t.Fatalf("suite %v", c.Tunnel.Suite)
	}
	if _, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(cfg("tls:\n  require_post_quantm: true\n"))); err == nil {
		t.Fatal("a misspelt tls key was accepted")
	}
	plain, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(cfg("")))
	if err != nil {
		t.Fatal(err)
	}
	if err := restartOnly(plain, c); err == nil || !strings.Contains(err.Error(), "fips changed") {
		t.Fatalf("reload turning fips on: %v", err)
	}
	pq, _ := ParseConfig("/etc/dyad/dyad.yaml", []byte(cfg("tls:\n  require_post_quantum: true\n")))
	if err := restartOnly(plain, pq); err == nil || !strings.Contains(err.Error(), "tls changed") {
		t.Fatalf("reload turning require_post_quantum on: %v", err)
	}
}

// TestIdentityMaxAge: identity_max_age defaults to 365 days, takes days or
// Go durations and "unlimited"; a key older than it is warned about, one
// whose age is unknown gets a note, a young one nothing.
func TestIdentityMaxAge(t *testing.T) {
	key := testKey(t)
	parse := func(extra string) *Config {
		t.Helper()
		c, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(strings.Replace(goodConfig, "KEY", key, 1)+extra))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if got := parse("").IdentityMaxAge; got != 365*24*time.Hour {
		t.Fatalf("default identity_max_age %v", got)
	}
	if got := parse("identity_max_age: 90d\n").IdentityMaxAge; got != 90*24*time.Hour {
		t.Fatalf("identity_max_age 90d: %v", got)
	}
	if got := parse("identity_max_age: 720h\n").IdentityMaxAge; got != 30*24*time.Hour {
		t.Fatalf("identity_max_age 720h: %v", got)
	}
	if _, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(strings.Replace(goodConfig, "KEY", key, 1)+"identity_max_age: 1y\n")); err == nil ||
		!strings.Contains(err.Error(), "identity_max_age") {
		t.Fatalf("identity_max_age 1y: %v", err)
	}
	c := parse("identity_max_age: 30d\n")
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	now := id.Created()
	if w := IdentityAgeWarning(c, id, now.Add(29*24*time.Hour)); w != "" {
		t.Errorf("a 29-day-old key under 30d: %q", w)
	}
	if w := IdentityAgeWarning(c, id, now.Add(31*24*time.Hour)); !strings.Contains(w, "is 31d old") || !strings.Contains(w, "older than identity_max_age 30d") {
		t.Errorf("a 31-day-old key under 30d: %q", w)
	}
	if w := IdentityAgeWarning(parse("identity_max_age: unlimited\n"), id, now.Add(10000*24*time.Hour)); w != "" {
		t.Errorf("unlimited: %q", w)
	}
	keyPath, _, err := id.WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(keyPath)
	old, err := identity.Parse(withoutCreated(t, data))
	if err != nil {
		t.Fatal(err)
	}
	if w := IdentityAgeWarning(c, old, now); !strings.Contains(w, "age unknown") {
		t.Errorf("a key file without a creation time: %q", w)
	}
}

// withoutCreated returns a key file as releases before the Created header
// wrote it.
func withoutCreated(t *testing.T, data []byte) []byte {
	t.Helper()
	out := regexp.MustCompile(`Created: [^\n]*\n\n`).ReplaceAll(data, nil)
	if len(out) == len(data) {
		t.Fatalf("no Created header in\n%s", data)
	}
	return out
}

// TestCertifiedModulesMatchToolchain: the module versions dyad calls
// certified are those the toolchain's $GOROOT/lib/fips140/certified.txt
// names (GOFIPS140=certified), so a Go upgrade that certifies another
// snapshot fails here until certifiedModules says so.
func TestCertifiedModulesMatchToolchain(t *testing.T) {
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Skipf("go env GOROOT: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(goroot)), "lib", "fips140", "certified.txt"))
	if err != nil {
		t.Skipf("this toolchain names no certified snapshot: %v", err)
	}
	var named []string
	for _, l := range strings.Fields(string(data)) {
		v, _, _ := strings.Cut(l, "-") // v1.0.0-c2097c7c: the version and the snapshot's hash
		named = append(named, v)
	}
	if !slices.Equal(named, certifiedModules) {
		t.Fatalf("certified.txt names %v, certifiedModules says %v", named, certifiedModules)
	}
}

// TestCheckWarnsFIPSAndAge: dyad check says that fips: true needs
// GODEBUG=fips140=on when the checking process runs without it, and that
// an identity's age is unknown (a key file of an earlier release).
func TestCheckWarnsFIPSAndAge(t *testing.T) {
	dir := t.TempDir()
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	keyPath, _, err := id.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(keyPath)
	if err := os.WriteFile(keyPath, withoutCreated(t, data), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "dyad.yaml")
	if err := os.WriteFile(cfg, []byte("site: s\nidentity: identity.key\nlisten: 127.0.0.1:0\nfips: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := Check(cfg, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "age unknown") {
		t.Errorf("no identity age warning:\n%s", out.String())
	}
	if fipsOn := CurrentFIPS().Enabled; strings.Contains(out.String(), "run the daemon with GODEBUG=fips140=on") == fipsOn {
		t.Errorf("FIPS warning with the mode %v:\n%s", fipsOn, out.String())
	}
}
