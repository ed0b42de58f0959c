package check

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// work is a scratch folder for the whole run (the dyad binary, its
// identity, the collector's certificates); TestMain removes it.
var work string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dyad-helm-check-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	work = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tools are the real dyad binary and an identity it made.
type tools struct {
	dyad    string
	keyFile string
}

// dyadTools builds the root module's cmd/dyad once (the same source the
// image is built from) and makes an identity with `dyad keygen`.
var dyadTools = sync.OnceValues(func() (tools, error) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		return tools{}, err
	}
	if mod, err := os.ReadFile(filepath.Join(root, "go.mod")); err != nil || !bytes.HasPrefix(mod, []byte("module github.com/dyad-tunnel/dyad\n")) {
		return tools{}, fmt.Errorf("%s is not dyad's root module", root)
	}
	bin := filepath.Join(work, "dyad")
	build := exec.Command("go", "build", "-o", bin, "./cmd/dyad")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return tools{}, fmt.Errorf("go build ./cmd/dyad: %v\n%s", err, out)
	}
	keys := filepath.Join(work, "keys")
	if out, err := exec.Command(bin, "keygen", "--out", keys).CombinedOutput(); err != nil {
		return tools{}, fmt.Errorf("dyad keygen: %v\n%s", err, out)
	}
	return tools{dyad: bin, keyFile: filepath.Join(keys, "identity.key")}, nil
})

func mustTools(t *testing.T) tools {
	t.Helper()
	tl, err := dyadTools()
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

// collectorPEM is a CA certificate and a client certificate and key, for
// the ca_file, cert_file and key_file dyad loads when it checks audit.otlp.
var collectorPEM = sync.OnceValue(func() map[string][]byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test collector CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		panic(err)
	}
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// One self-signed certificate serves as the CA and the client's.
	return map[string][]byte{"ca.crt": cert, "tls.crt": cert,
		"tls.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})}
})

// dyadCheck runs `dyad check` on the rendered dyad.yaml as the pod would see
// it. Every path in it must lie in one of the container's mounts, and moves
// under a scratch root. The key made by `dyad keygen` is put in the Secret
// volume as kubelet does with fsGroup (0440), and the rendered installer
// arguments, given to the real dyad, copy it to where dyad reads it. The
// container's environment is set (values from Secrets get a placeholder).
func dyadCheck(t *testing.T, m *manifests, text string, cfg *dyadFile) error {
	t.Helper()
	tl := mustTools(t)
	spec, c := pod(t, m.deployment)
	root := t.TempDir()
	inMount := func(ct *corev1.Container, p string) string {
		t.Helper()
		for _, vm := range ct.VolumeMounts {
			if p == vm.MountPath || strings.HasPrefix(p, vm.MountPath+"/") {
				return filepath.Join(root, p)
			}
		}
		t.Fatalf("%s is in none of container %s's mounts", p, ct.Name)
		return ""
	}
	mounted := func(p string) string { t.Helper(); return inMount(c, p) }
	write := func(p string, data []byte, mode os.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	relocate := func(p string) {
		t.Helper()
		if n := strings.Count(text, ": "+p+"\n"); n != 1 {
			t.Fatalf("dyad.yaml: %s appears %d times as a value", p, n)
		}
		text = strings.Replace(text, ": "+p+"\n", ": "+mounted(p)+"\n", 1)
	}

	key, err := os.ReadFile(tl.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	in := &spec.InitContainers[0]
	if len(in.Args) != 5 || in.Args[0] != "install-key" || in.Args[1] != "--from" || in.Args[3] != "--to" {
		t.Fatalf("installer args %q are not install-key --from SRC --to DST", in.Args)
	}
	src, dst := inMount(in, in.Args[2]), inMount(in, in.Args[4])
	write(src, key, 0o440)
	if err := os.Chmod(src, 0o440); err != nil { // whatever the umask
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o777); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(tl.dyad, "install-key", "--from", src, "--to", dst).CombinedOutput(); err != nil {
		t.Fatalf("installer: %v\n%s", err, out)
	}
	if fi, err := os.Stat(mounted(cfg.Identity)); err != nil {
		t.Fatalf("the installer did not write dyad.yaml's identity %s: %v", cfg.Identity, err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Fatalf("the installer wrote %s with mode %04o, want 0600", cfg.Identity, fi.Mode().Perm())
	}
	relocate(cfg.Identity)
	if err := os.MkdirAll(mounted(cfg.Audit.Journal.Dir), 0o700); err != nil {
		t.Fatal(err)
	}
	relocate(cfg.Audit.Journal.Dir)
	if o := cfg.Audit.OTLP; o != nil {
		for _, f := range []string{o.CAFile, o.CertFile, o.KeyFile} {
			if f != "" {
				write(mounted(f), collectorPEM()[filepath.Base(f)], 0o600)
				relocate(f)
			}
		}
	}
	configPath := mounted(c.Args[len(c.Args)-1])
	write(configPath, []byte(text), 0o644)

	cmd := exec.Command(tl.dyad, "check", "--config", configPath)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "OTEL_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, containerEnv(c)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("dyad check: %w\n%s\n--- dyad.yaml ---\n%s", err, out, text)
	}
	if !bytes.Contains(out, []byte(": ok: ")) {
		return errors.New("dyad check: no ok line: " + string(out))
	}
	t.Logf("%s", bytes.TrimSpace(out))
	return nil
}

// containerEnv is the container's environment as far as it is known without
// a cluster: literal values, and a placeholder for each value from a Secret
// or ConfigMap (so ${NAME} references in dyad.yaml resolve).
func containerEnv(c *corev1.Container) []string {
	var env []string
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && (e.ValueFrom.SecretKeyRef != nil || e.ValueFrom.ConfigMapKeyRef != nil):
			env = append(env, e.Name+"=placeholder-"+strings.ToLower(e.Name))
		case e.ValueFrom == nil && !strings.Contains(e.Value, "$("):
			env = append(env, e.Name+"="+e.Value)
		}
	}
	return env
}
