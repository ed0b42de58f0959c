package deploy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/modfile"
)

// TestReleaseReproducible runs deploy/release/release.sh twice for
// linux/amd64, each into its own folder with its own empty GOCACHE, so the
// second build shares nothing with the first but the source. The first takes
// its version and SOURCE_DATE_EPOCH from git, as `make release` does; the
// second is given them, as someone verifying a release would be. The
// binaries and SBOMs must be byte-identical, SHA256SUMS must verify, the SBOM
// must describe the binary (its hash, the quic-go of go.mod with its go.sum
// hash, the toolchain), and the binary must report the stamped version.
// linux/arm64 is left to `make release`: a third cold build costs another
// minute of CPU and tests nothing new.
func TestReleaseReproducible(t *testing.T) {
	// Two cold builds take two minutes of CPU: `make release-check` (in
	// CI) runs this test on its own rather than beside make test's
	// timing-sensitive daemon tests.
	if os.Getenv("DYAD_RELEASE_CHECK") != "1" {
		t.Skip("two cold builds of dyad: run by `make release-check` (DYAD_RELEASE_CHECK=1)")
	}
	if err := exec.Command("git", "-C", "..", "rev-parse", "HEAD").Run(); err != nil {
		t.Skip("not a git checkout: release.sh takes the version from git describe")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	describe := func() string {
		out, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}

	release := func(extraEnv ...string) string {
		t.Helper()
		dir := t.TempDir()
		dist := filepath.Join(dir, "dist")
		cmd := exec.Command("sh", filepath.Join(root, "deploy", "release", "release.sh"))
		cmd.Env = append(os.Environ(), "DIST="+dist, "PLATFORMS=linux/amd64", "GOCACHE="+filepath.Join(dir, "gocache"))
		cmd.Env = append(cmd.Env, extraEnv...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("release.sh: %v\n%s", err, out)
		}
		t.Logf("release.sh into %s: %v", dist, time.Since(start).Round(time.Second))
		return dist
	}
	before := describe()
	dist1 := release()
	after := describe()
	bins, _ := filepath.Glob(filepath.Join(dist1, "dyad-*-linux-amd64"))
	if len(bins) != 1 {
		t.Fatalf("release.sh made %q, want one dyad-<version>-linux-amd64", bins)
	}
	name := filepath.Base(bins[0])
	version := strings.TrimSuffix(strings.TrimPrefix(name, "dyad-"), "-linux-amd64")
	if version != before && version != after {
		t.Errorf("version %q, git describe says %q", version, before)
	}
	bom := readSBOM(t, filepath.Join(dist1, name+".cdx.json"))
	epoch, err := time.Parse(time.RFC3339, bom.Metadata.Timestamp)
	if err != nil {
		t.Fatalf("SBOM timestamp %q: %v", bom.Metadata.Timestamp, err)
	}
	dist2 := release("VERSION="+version, "SOURCE_DATE_EPOCH="+strconv.FormatInt(epoch.Unix(), 10))

	for _, f := range []string{name, name + ".cdx.json", "SHA256SUMS"} {
		a, errA := os.ReadFile(filepath.Join(dist1, f))
		b, errB := os.ReadFile(filepath.Join(dist2, f))
		if errA != nil || errB != nil {
			t.Fatalf("%s: %v %v", f, errA, errB)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between the two builds: SHA-256 %x and %x", f, sha256.Sum256(a), sha256.Sum256(b))
		}
	}

	// SHA256SUMS verifies with the usual tool, and covers every file.
	if _, err := exec.LookPath("sha256sum"); err == nil {
		cmd := exec.Command("sha256sum", "-c", "SHA256SUMS")
		cmd.Dir = dist1
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sha256sum -c: %v\n%s", err, out)
		}
	}
	sums, _ := os.ReadFile(filepath.Join(dist1, "SHA256SUMS"))
	for _, f := range []string{name, name + ".cdx.json"} {
		if !strings.Contains(string(sums), "  "+f+"\n") {
			t.Errorf("SHA256SUMS does not list %s:\n%s", f, sums)
		}
	}

	checkSBOM(t, bom, bins[0], version)

	if runtime.GOOS == "linux" && runtime.GOARCH == "amd64" {
		out, err := exec.Command(bins[0], "version").Output()
		if err != nil {
			t.Fatalf("dyad version: %v", err)
		}
		if first, _, _ := strings.Cut(string(out), "\n"); first != "dyad "+version {
			t.Errorf("dyad version prints %q, want %q", first, "dyad "+version)
		}
	}
}

// sbom is the part of a CycloneDX document the test reads.
type sbom struct {
	BOMFormat    string `json:"bomFormat"`
	SpecVersion  string `json:"specVersion"`
	SerialNumber string `json:"serialNumber"`
	Metadata     struct {
		Timestamp string        `json:"timestamp"`
		Component sbomComponent `json:"component"`
	} `json:"metadata"`
	Components   []sbomComponent `json:"components"`
	Dependencies []struct {
		Ref       string   `json:"ref"`
		DependsOn []string `json:"dependsOn"`
	} `json:"dependencies"`
}

type sbomComponent struct {
	Type    string `json:"type"`
	BOMRef  string `json:"bom-ref"`
	Name    string `json:"name"`
	Version string `json:"version"`
	PURL    string `json:"purl"`
	Hashes  []struct {
		Alg     string `json:"alg"`
		Content string `json:"content"`
	} `json:"hashes"`
}

func (c sbomComponent) sha256() string {
	for _, h := range c.Hashes {
		if h.Alg == "SHA-256" {
			return h.Content
		}
	}
	return ""
}

func readSBOM(t *testing.T, path string) sbom {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var b sbom
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&b); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

// checkSBOM holds the SBOM to the binary and to go.mod and go.sum.
func checkSBOM(t *testing.T, b sbom, binaryPath, version string) {
	t.Helper()
	binary, err := os.ReadFile(binaryPath)
	if err != nil {
		t.Fatal(err)
	}
	if b.BOMFormat != "CycloneDX" || b.SpecVersion != "1.5" || !strings.HasPrefix(b.SerialNumber, "urn:uuid:") {
		t.Errorf("SBOM header: %q %q %q", b.BOMFormat, b.SpecVersion, b.SerialNumber)
	}
	main := b.Metadata.Component
	sum := sha256.Sum256(binary)
	if main.Name != "github.com/dyad-tunnel/dyad" || main.Version != version || main.sha256() != hex.EncodeToString(sum[:]) {
		t.Errorf("SBOM subject %s %s SHA-256 %s; want the binary, %s, %x", main.Name, main.Version, main.sha256(), version, sum)
	}

	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	mf, err := modfile.Parse("go.mod", gomod, nil)
	if err != nil {
		t.Fatal(err)
	}
	const quic = "github.com/quic-go/quic-go"
	var quicVersion string
	for _, r := range mf.Require {
		if r.Mod.Path == quic {
			quicVersion = r.Mod.Version
		}
	}
	gosum, err := os.ReadFile("../go.sum")
	if err != nil {
		t.Fatal(err)
	}
	var quicHash string // go.sum's h1: for the module's files, in hex
	for line := range strings.Lines(string(gosum)) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == quic && f[1] == quicVersion {
			raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(f[2], "h1:"))
			quicHash = hex.EncodeToString(raw)
		}
	}

	goVersion, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]sbomComponent{}
	for _, c := range b.Components {
		found[c.Name] = c
		if !strings.HasPrefix(c.PURL, "pkg:golang/") || c.BOMRef != c.PURL {
			t.Errorf("component %s: purl %q, bom-ref %q", c.Name, c.PURL, c.BOMRef)
		}
		if h := c.sha256(); c.Name != "std" && len(h) != 64 {
			t.Errorf("component %s: SHA-256 %q", c.Name, h)
		}
	}
	// Every module `go version -m` reads from the binary is listed, with
	// its go.sum hash.
	out, err := exec.Command("go", "version", "-m", binaryPath).Output()
	if err != nil {
		t.Fatal(err)
	}
	deps := 0
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "dep" {
			continue
		}
		deps++
		raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(f[3], "h1:"))
		if c := found[f[1]]; c.Version != f[2] || c.sha256() != hex.EncodeToString(raw) {
			t.Errorf("go version -m: %s %s %s; SBOM: %q %q", f[1], f[2], f[3], c.Version, c.sha256())
		}
	}
	if deps == 0 || deps != len(b.Components)-1 {
		t.Errorf("go version -m lists %d modules, the SBOM %d besides std", deps, len(b.Components)-1)
	}
	q := found[quic]
	if q.Version != quicVersion || q.PURL != "pkg:golang/"+quic+"@"+quicVersion+"?type=module" || q.sha256() != quicHash || quicHash == "" {
		t.Errorf("SBOM lists quic-go %s %s SHA-256 %s; go.mod says %s, go.sum %s", q.Version, q.PURL, q.sha256(), quicVersion, quicHash)
	}
	if std := found["std"]; std.Version != strings.TrimSpace(string(goVersion)) {
		t.Errorf("SBOM toolchain component %q, go env GOVERSION %q", std.Version, goVersion)
	}
	if len(b.Dependencies) != 1 || b.Dependencies[0].Ref != main.BOMRef || len(b.Dependencies[0].DependsOn) != len(b.Components) {
		t.Errorf("SBOM dependencies do not tie the binary to its %d components", len(b.Components))
	}
}

// TestDockerfileMatchesRelease keeps the image's build flags those of
// release.sh, so the image carries the release binary byte for byte. (No
// container engine runs in CI; the image itself is built by make image.)
func TestDockerfileMatchesRelease(t *testing.T) {
	dockerfile, err := os.ReadFile("container/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile("release/release.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{
		"CGO_ENABLED=0", "GOAMD64=v1", "GOARM64=v8.0", "GOEXPERIMENT= ", "GOFIPS140=certified", "GOFLAGS=-mod=readonly",
		"build -trimpath -buildvcs=false",
		`-ldflags "-s -w -buildid= -X github.com/dyad-tunnel/dyad/daemon.Version=$VERSION"`,
		"./cmd/dyad",
	} {
		inDocker, inScript := bytes.Contains(dockerfile, []byte(flag)), bytes.Contains(script, []byte(flag))
		if !inDocker || !inScript {
			t.Errorf("%q: in Dockerfile %v, in release.sh %v", flag, inDocker, inScript)
		}
	}
}
