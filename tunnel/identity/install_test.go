package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallFromGroupReadableKey: a key delivered 0440, as a Kubernetes
// Secret volume with fsGroup or a systemd credential is, which Load
// refuses, is installed as an owner-only copy that Load accepts; a second
// install replaces it (a restarted init container). THREATS P6.
func TestInstallFromGroupReadableKey(t *testing.T) {
	id, _ := Generate()
	src, _, err := id.WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(src, 0o440); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(src); err == nil {
		t.Fatal("Load accepted a 0440 key")
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, "identity.key")
	for range 2 {
		got, err := Install(src, dst)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Public().Equal(id.Public()) {
			t.Fatal("Install returned another identity")
		}
		fi, err := os.Stat(dst)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("installed key: %v, mode %04o, want 0600", err, fi.Mode().Perm())
		}
		back, err := Load(dst)
		if err != nil || !back.Public().Equal(id.Public()) {
			t.Fatalf("the installed key does not load back: %v", err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".identity-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// TestInstallRefusals: what is not a key, too large, missing, or the same
// file is refused with an error naming the file; nothing is written, and
// no key material is quoted.
func TestInstallRefusals(t *testing.T) {
	id, _ := Generate()
	dir := t.TempDir()
	good, _, err := id.WriteFiles(filepath.Join(dir, "good"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o440); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secretish := strings.Repeat("c2VjcmV0", 8)
	out := filepath.Join(dir, "out", "identity.key")
	os.Mkdir(filepath.Dir(out), 0o700)
	for name, c := range map[string]struct{ from, to, want string }{
		"not a key":   {write("text", []byte(secretish)), out, "not a"},
		"public key":  {write("pub", []byte(id.Public().String())), out, "not a"},
		"too large":   {write("large", make([]byte, maxKeyFile+1)), out, "larger than any key file"},
		"missing":     {filepath.Join(dir, "nosuch"), out, "no such file"},
		"same file":   {good, good, "same file"},
		"no such dir": {good, filepath.Join(dir, "nosuch", "identity.key"), "no such file"},
	} {
		_, err := Install(c.from, c.to)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", name, err, c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.from) && !strings.Contains(err.Error(), c.to) {
			t.Errorf("%s: error names neither file: %v", name, err)
		}
		if strings.Contains(err.Error(), secretish) {
			t.Errorf("%s: error quotes the file: %v", name, err)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Fatalf("%s: %s written", name, out)
		}
	}
	if _, err := Load(good); err != nil {
		t.Fatalf("the same-file refusal harmed the source: %v", err)
	}
}
