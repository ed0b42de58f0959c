package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstall runs `make install` into a temporary DESTDIR with
// PREFIX=/usr: the binary (stamped with git describe's version), the
// systemd unit pointing at $PREFIX/bin/dyad, the sysusers entry, the
// example configuration and the completion scripts, each where its tool
// looks; the bash script parses. `make uninstall` removes them all again.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	version := "v0.0.0-install-test"
	cmd := exec.Command("make", "-C", root, "install", "DESTDIR="+dest, "PREFIX=/usr", "VERSION="+version)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	files := []string{
		"usr/bin/dyad",
		"usr/lib/systemd/system/dyad.service",
		"usr/lib/sysusers.d/dyad.conf",
		"usr/share/dyad/dyad.yaml.example",
		"usr/share/bash-completion/completions/dyad",
		"usr/share/zsh/site-functions/_dyad",
		"usr/share/fish/vendor_completions.d/dyad.fish",
	}
	for _, f := range files {
		fi, err := os.Stat(filepath.Join(dest, f))
		if err != nil {
			t.Errorf("make install: %v", err)
			continue
		}
		want := os.FileMode(0o644)
		if f == "usr/bin/dyad" {
			want = 0o755
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", f, fi.Mode().Perm(), want)
		}
	}
	out, err := exec.Command(filepath.Join(dest, "usr/bin/dyad"), "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "dyad "+version+"\n") {
		t.Errorf("installed dyad --version: %v\n%s", err, out)
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/dyad.service"))
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/dyad run --config /etc/dyad/dyad.yaml") || strings.Contains(string(unit), "/usr/local/bin") {
		t.Errorf("installed unit does not run /usr/bin/dyad:\n%s", unit)
	}
	if bash, err := exec.LookPath("bash"); err == nil {
		if out, err := exec.Command(bash, "-n", filepath.Join(dest, "usr/share/bash-completion/completions/dyad")).CombinedOutput(); err != nil {
			t.Errorf("bash -n on the installed completion: %v\n%s", err, out)
		}
	}
	cmd = exec.Command("make", "-C", root, "uninstall", "DESTDIR="+dest, "PREFIX=/usr")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(dest, f)); err == nil {
			t.Errorf("make uninstall left %s", f)
		}
	}
}

// TestVersionStampedFromGit: `make build` stamps the version git describes
// (checked with make -n: the flags it would pass), and a binary built with
// release.sh's flags against the certified FIPS 140-3 snapshot
// (GOFIPS140=certified) reports that version, keeps FIPS mode off by
// default and turns it on, on the certified module, with
// GODEBUG=fips140=on: one binary serves both modes.
func TestVersionStampedFromGit(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	describe, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	want := strings.TrimSpace(string(describe))
	if _, err := exec.LookPath("make"); err == nil {
		out, err := exec.Command("make", "-C", root, "-n", "build").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "-ldflags \"-X github.com/dyad-tunnel/dyad/daemon.Version="+want+"\"") {
			t.Errorf("make -n build does not stamp %s: %v\n%s", want, err, out)
		}
	}
	bin := filepath.Join(t.TempDir(), "dyad")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X github.com/dyad-tunnel/dyad/daemon.Version="+want, "-o", bin, "./cmd/dyad")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOFIPS140=certified", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build with GOFIPS140=certified: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "dyad "+want+"\n") ||
		!strings.Contains(string(out), "fips 140-3:   off (Go Cryptographic Module v1.0.0 built in") {
		t.Errorf("dyad version of the certified build: %v\n%s", err, out)
	}
	on := exec.Command(bin, "version")
	on.Env = append(os.Environ(), "GODEBUG=fips140=on")
	out, err = on.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "fips 140-3:   on, Go Cryptographic Module v1.0.0 (a certified snapshot)") ||
		!strings.Contains(string(out), "SecP256r1MLKEM768") {
		t.Errorf("dyad version of the certified build with GODEBUG=fips140=on: %v\n%s", err, out)
	}
}
