package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// build compiles this command with its version stamped, as the Makefile
// does.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dyad")
	cmd := exec.Command("go", "build", "-ldflags", "-X github.com/dyad-tunnel/dyad/daemon.Version=v0.0.0-stamped", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestVersionFlag: dyad --version and dyad version print the stamped
// version and the FIPS 140-3 state.
func TestVersionFlag(t *testing.T) {
	bin := build(t)
	for _, arg := range []string{"--version", "version", "-version"} {
		out, err := exec.Command(bin, arg).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "dyad v0.0.0-stamped\n") || !strings.Contains(string(out), "fips 140-3:   off") {
			t.Errorf("dyad %s: %v\n%s", arg, err, out)
		}
	}
}

// TestDefaultConfigPath: without --config, check, run and report read
// $DYAD_CONFIG, else /etc/dyad/dyad.yaml, and say so when it is missing.
func TestDefaultConfigPath(t *testing.T) {
	bin := build(t)
	dir := t.TempDir()
	if out, err := exec.Command(bin, "keygen", "--out", dir).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "site.yaml")
	if err := os.WriteFile(cfg, []byte("site: s\nidentity: identity.key\nlisten: 127.0.0.1:0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(env string, args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "DYAD_CONFIG="+env)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(cfg, "check"); err != nil || !strings.Contains(out, cfg+": ok: site s") {
		t.Fatalf("dyad check with DYAD_CONFIG=%s: %v\n%s", cfg, err, out)
	}
	missing := filepath.Join(dir, "none.yaml")
	for _, args := range [][]string{{"check"}, {"run"}, {"report"}} {
		out, err := run(missing, args...)
		if err == nil || !strings.Contains(out, missing) {
			t.Errorf("dyad %s with DYAD_CONFIG=%s: %v\n%s", args[0], missing, err, out)
		}
	}
	if _, err := os.Stat(defaultConfigPath); err == nil {
		t.Skipf("%s exists on this host", defaultConfigPath)
	}
	out, err := run("", "check")
	if err == nil || !strings.Contains(out, "open "+defaultConfigPath) || !strings.Contains(out, "without --config, dyad reads $DYAD_CONFIG, else "+defaultConfigPath) {
		t.Errorf("dyad check without --config or DYAD_CONFIG: %v\n%s", err, out)
	}
}

// TestCompletionScriptsParse: each completion script is valid for its
// shell (bash -n; zsh -n and fish -n where installed), and an unknown
// shell is an error.
func TestCompletionScriptsParse(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		t.Run(sh, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeCompletion(&b, sh); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(b.String(), "install-key") || !strings.Contains(b.String(), "accept-broken-journal") {
				t.Fatalf("script lacks commands or flags:\n%s", b.String())
			}
			path, err := exec.LookPath(sh)
			if err != nil {
				t.Skipf("%s is not installed", sh)
			}
			f := filepath.Join(t.TempDir(), "dyad."+sh)
			if err := os.WriteFile(f, b.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(path, "-n", f).CombinedOutput(); err != nil {
				t.Fatalf("%s -n: %v\n%s\n%s", sh, err, out, b.String())
			}
		})
	}
	if err := writeCompletion(&bytes.Buffer{}, "tcsh"); err == nil {
		t.Fatal("tcsh accepted")
	}
}

// TestCompletionBash: sourced into bash, the script completes command
// names and a command's flags.
func TestCompletionBash(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	var b bytes.Buffer
	writeCompletion(&b, "bash")
	script := b.String() + `
COMP_WORDS=(dyad ch); COMP_CWORD=1; _dyad; echo "1:${COMPREPLY[*]}"
COMP_WORDS=(dyad report --f); COMP_CWORD=2; _dyad; echo "2:${COMPREPLY[*]}"
COMP_WORDS=(dyad completion ''); COMP_CWORD=2; _dyad; echo "3:${COMPREPLY[*]}"
`
	out, err := exec.Command("bash", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	for _, want := range []string{"1:check\n", "2:--format --framework --from\n", "3:bash zsh fish\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("want %q in\n%s", want, out)
		}
	}
}

// TestCompletionCoversUsage: every command the usage lists is in the
// completion table, so a new command cannot be left out of it.
func TestCompletionCoversUsage(t *testing.T) {
	known := map[string]bool{}
	for _, c := range commands {
		known[c.name] = true
	}
	for _, m := range regexp.MustCompile(`(?m)^  dyad ([a-z-]+)`).FindAllStringSubmatch(usage, -1) {
		if !known[m[1]] {
			t.Errorf("dyad %s is in the usage but not in the completion table (completion.go)", m[1])
		}
	}
}

// TestCompletionZshFish: sourced into zsh the script registers itself for
// dyad; loaded into fish it completes command names, flags and arguments.
func TestCompletionZshFish(t *testing.T) {
	dir := t.TempDir()
	for _, sh := range []string{"zsh", "fish"} {
		var b bytes.Buffer
		writeCompletion(&b, sh)
		os.WriteFile(filepath.Join(dir, "dyad."+sh), b.Bytes(), 0o644)
	}
	if _, err := exec.LookPath("zsh"); err == nil {
		out, err := exec.Command("zsh", "-f", "-c", "autoload -U compinit; compinit -u -D; source "+filepath.Join(dir, "dyad.zsh")+"; print -r -- ${_comps[dyad]}").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "_dyad" {
			t.Errorf("zsh: %v\n%s", err, out)
		}
	}
	if _, err := exec.LookPath("fish"); err == nil {
		out, err := exec.Command("fish", "-c", "source "+filepath.Join(dir, "dyad.fish")+`; complete -C "dyad rep"; complete -C "dyad report --fo"; complete -C "dyad completion "`).CombinedOutput()
		if err != nil {
			t.Fatalf("fish: %v\n%s", err, out)
		}
		for _, want := range []string{"report\t", "--format", "bash", "zsh", "fish"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("fish completions lack %q:\n%s", want, out)
			}
		}
	}
}
