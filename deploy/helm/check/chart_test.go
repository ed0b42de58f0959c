package check

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
)

// valueSets lists the files in testdata/dir.
func valueSets(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no value sets in testdata/%s: %v", dir, err)
	}
	return files
}

// readValues reads a value set; key-in-values.yaml gets the key file `dyad
// keygen` made, as `--set-file identity.key=identity.key` would give it.
func readValues(t *testing.T, file string) map[string]any {
	t.Helper()
	vals, err := chartutil.ReadValuesFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(file) == "key-in-values.yaml" {
		key, err := os.ReadFile(mustTools(t).keyFile)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := vals["identity"].(map[string]any)
		if id == nil {
			id = map[string]any{}
		}
		id["key"] = string(key)
		vals["identity"] = id
	}
	return vals
}

// want is the "# want: ..." line of a value set that must be refused.
func want(t *testing.T, file string) string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for s := bufio.NewScanner(f); s.Scan(); {
		if w, ok := strings.CutPrefix(s.Text(), "# want: "); ok {
			return w
		}
	}
	t.Fatalf("%s has no '# want: ' line", file)
	return ""
}

// TestLint runs Helm's linter on every good value set, strictly: a warning
// fails as `helm lint --strict` would.
func TestLint(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range valueSets(t, "good") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			l := lint.AllWithKubeVersion(chartDir, readValues(t, file), namespace, kv)
			for _, msg := range l.Messages {
				if msg.Severity >= support.WarningSev {
					t.Errorf("lint: %s", msg)
				} else {
					t.Logf("lint: %s", msg)
				}
			}
		})
	}
}

// TestRender renders every good value set, decodes each manifest strictly
// into its API type, checks the pod's security and wiring, and runs `dyad
// check` on the rendered dyad.yaml.
func TestRender(t *testing.T) {
	ch := loadChart(t)
	for _, file := range valueSets(t, "good") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			out, final, err := render(t, ch, readValues(t, file))
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			m, err := decode(out)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if m.deployment == nil {
				t.Fatal("no Deployment rendered")
			}
			v := parseValues(t, final)
			text, cfg := parseDyadFile(t, m)
			checkMetadata(t, m)
			checkSecurity(t, v, m)
			checkIdentity(t, v, m, cfg)
			checkDeployment(t, v, m, cfg)
			checkServices(t, v, m)
			checkNetworkPolicy(t, v, m)
			checkPolicyObjects(t, v, m)
			checkNotes(t, v, m)
			if err := dyadCheck(t, m, text, cfg); err != nil {
				t.Error(err)
			}
		})
	}
}

func checkNotes(t *testing.T, v *chartValues, m *manifests) {
	t.Helper()
	spec, _ := pod(t, m.deployment)
	secret := volume(t, spec, "identity-secret").Secret.SecretName
	if !strings.Contains(m.notes, secret) {
		t.Errorf("NOTES.txt does not name the identity Secret %s:\n%s", secret, m.notes)
	}
	if strings.Contains(m.notes, "WARNING: the audit journal is on an emptyDir") == v.Persistence.Enabled {
		t.Errorf("NOTES.txt journal warning does not match persistence.enabled %v:\n%s", v.Persistence.Enabled, m.notes)
	}
}

// TestBadValues renders every value set in testdata/bad: each must be
// refused, by the schema or by the chart's own checks, with an error that
// names the problem.
func TestBadValues(t *testing.T) {
	ch := loadChart(t)
	for _, file := range valueSets(t, "bad") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			_, _, err := render(t, ch, readValues(t, file))
			if err == nil {
				t.Fatal("rendered; want an error")
			}
			if w := want(t, file); !strings.Contains(err.Error(), w) {
				t.Errorf("error does not mention %q:\n%v", w, err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// TestDyadRejects renders the value sets in testdata/dyadbad, which the
// chart accepts, and expects `dyad check` to refuse the result: proof that
// the check in TestRender can fail.
func TestDyadRejects(t *testing.T) {
	ch := loadChart(t)
	for _, file := range valueSets(t, "dyadbad") {
		t.Run(filepath.Base(file), func(t *testing.T) {
			out, _, err := render(t, ch, readValues(t, file))
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			m, err := decode(out)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			text, cfg := parseDyadFile(t, m)
			err = dyadCheck(t, m, text, cfg)
			if err == nil {
				t.Fatal("dyad check accepted it")
			}
			if w := want(t, file); !strings.Contains(err.Error(), w) {
				t.Errorf("dyad check error does not mention %q:\n%v", w, err)
			}
		})
	}
}

// TestConfigChangeRollsPods: the pod template's checksum follows dyad.yaml,
// so `helm upgrade` with a new peer restarts the pods (nothing sends dyad a
// SIGHUP in a pod), and stays put when nothing changed.
func TestConfigChangeRollsPods(t *testing.T) {
	ch := loadChart(t)
	sum := func(vals map[string]any) string {
		t.Helper()
		out, _, err := render(t, ch, vals)
		if err != nil {
			t.Fatal(err)
		}
		m, err := decode(out)
		if err != nil {
			t.Fatal(err)
		}
		return m.deployment.Spec.Template.Annotations["checksum/config"]
	}
	base := readValues(t, "testdata/good/production.yaml")
	a, b := sum(base), sum(readValues(t, "testdata/good/production.yaml"))
	if a != b {
		t.Errorf("same values, different checksums %s %s", a, b)
	}
	base["tunnel"].(map[string]any)["keepalive"] = "4s"
	if c := sum(base); c == a {
		t.Error("a changed tunnel.keepalive leaves checksum/config unchanged")
	}
}

// TestValuesReadme: the README's values table names every top-level value.
func TestValuesReadme(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ReadValuesFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for k := range vals {
		if !bytes.Contains(readme, []byte("`"+k+"`")) && !bytes.Contains(readme, []byte("`"+k+".")) {
			t.Errorf("README.md's values table lacks %s", k)
		}
	}
}

// TestValuesDocumented: every key in values.yaml carries a comment, above it
// or on its line, except the entries of example objects (resources and
// the like), which their parent's comment describes.
func TestValuesDocumented(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	examples := map[string]bool{"resources": true, "to": true, "requests": true, "limits": true}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode, yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := strings.TrimPrefix(path+"."+k.Value, ".")
				if k.HeadComment == "" && k.LineComment == "" && v.LineComment == "" {
					t.Errorf("values.yaml:%d: %s has no comment", k.Line, p)
				}
				if !examples[k.Value] {
					walk(v, p)
				}
			}
		}
	}
	walk(&doc, "")
}
