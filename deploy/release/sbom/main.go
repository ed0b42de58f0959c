// Command sbom writes a CycloneDX 1.5 JSON software bill of materials for a
// Go binary from the build information the Go linker embeds in it
// (debug/buildinfo), so the SBOM lists exactly the modules and the toolchain
// that went into those bytes, not what go.mod allows:
//
//	sbom -version v1.2.3 -o dyad.cdx.json dyad
//
// The main module is the SBOM's subject, with the binary's SHA-256 and its
// build settings; each dependency module is a component with its version, a
// pkg:golang purl and its go.sum hash; the Go standard library and runtime
// is a component named "std" at the toolchain's version. The output depends
// only on the binary, -version and SOURCE_DATE_EPOCH (the timestamp; none
// without it), so a reproducible build gets a reproducible SBOM.
//
// Written with the standard library only: cyclonedx-gomod (the CycloneDX
// project's generator) did not install from this project's module proxy,
// and the subset needed here is small.
package main

import (
	"crypto/sha1"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

func main() {
	version := flag.String("version", "", "the main module's version (default: the one in the build information, often (devel))")
	out := flag.String("o", "-", "file to write; - is standard output")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: sbom [-version V] [-o FILE] BINARY\n\nWrites a CycloneDX 1.5 JSON SBOM for a Go binary from its embedded build information.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *version, *out); err != nil {
		fmt.Fprintln(os.Stderr, "sbom:", err)
		os.Exit(1)
	}
}

func run(binPath, version, outPath string) error {
	data, err := os.ReadFile(binPath)
	if err != nil {
		return err
	}
	bi, err := buildinfo.Read(bytesReaderAt(data))
	if err != nil {
		return fmt.Errorf("%s: %w", binPath, err)
	}
	sum := sha256.Sum256(data)
	bom, err := newBOM(bi, filepath.Base(binPath), hex.EncodeToString(sum[:]), version, os.Getenv("SOURCE_DATE_EPOCH"))
	if err != nil {
		return err
	}
	enc, err := json.MarshalIndent(bom, "", "  ")
	if err != nil {
		return err
	}
	enc = append(enc, '\n')
	if outPath == "-" {
		_, err = os.Stdout.Write(enc)
		return err
	}
	return os.WriteFile(outPath, enc, 0o644)
}

// bytesReaderAt lets buildinfo.Read parse a file already in memory (it is
// hashed too, so it is read once).
type bytesReaderAt []byte

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// BOM is the subset of the CycloneDX 1.5 JSON format written here
// (https://cyclonedx.org/docs/1.5/json/); field order is the schema's.
type BOM struct {
	BOMFormat    string       `json:"bomFormat"`
	SpecVersion  string       `json:"specVersion"`
	SerialNumber string       `json:"serialNumber"`
	Version      int          `json:"version"`
	Metadata     Metadata     `json:"metadata"`
	Components   []Component  `json:"components"`
	Dependencies []Dependency `json:"dependencies"`
}

// Metadata names the SBOM's subject (the binary's main module) and its maker.
type Metadata struct {
	Timestamp string    `json:"timestamp,omitempty"`
	Tools     Tools     `json:"tools"`
	Component Component `json:"component"`
}

// Tools lists what made the SBOM.
type Tools struct {
	Components []Component `json:"components"`
}

// Component is a module, the toolchain, the application or the tool.
type Component struct {
	Type        string     `json:"type"`
	BOMRef      string     `json:"bom-ref,omitempty"`
	Name        string     `json:"name"`
	Version     string     `json:"version,omitempty"`
	Description string     `json:"description,omitempty"`
	Hashes      []Hash     `json:"hashes,omitempty"`
	PURL        string     `json:"purl,omitempty"`
	Properties  []Property `json:"properties,omitempty"`
}

// Hash is a digest of a component; Content is lowercase hex.
type Hash struct {
	Alg     string `json:"alg"`
	Content string `json:"content"`
}

// Property is a name and value; names follow the CycloneDX property taxonomy
// (cdx:gomod:build:env:*) where it has one, and are dyad:* otherwise.
type Property struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Dependency says which components a component uses, by bom-ref.
type Dependency struct {
	Ref       string   `json:"ref"`
	DependsOn []string `json:"dependsOn,omitempty"`
}

// newBOM describes the binary named name with the given SHA-256 (hex).
// version overrides the main module's recorded version; epoch is
// SOURCE_DATE_EPOCH, or "" for no timestamp.
func newBOM(bi *buildinfo.BuildInfo, name, sha256hex, version, epoch string) (*BOM, error) {
	if version == "" {
		version = bi.Main.Version
	}
	main := Component{
		Type: "application", Name: bi.Main.Path, Version: version,
		Hashes: []Hash{{"SHA-256", sha256hex}},
		PURL:   purl(bi.Main.Path, version),
	}
	main.BOMRef = main.PURL
	main.Properties = append(main.Properties, Property{"dyad:binary:name", name},
		Property{"dyad:build:package", bi.Path}, Property{"cdx:gomod:build:env:GOVERSION", bi.GoVersion})
	for _, s := range bi.Settings {
		main.Properties = append(main.Properties, setting(s))
	}
	std := Component{
		Type: "library", Name: "std", Version: bi.GoVersion,
		Description: "Go standard library and runtime, from toolchain " + bi.GoVersion,
		PURL:        purl("std", bi.GoVersion),
	}
	std.BOMRef = std.PURL
	b := &BOM{
		BOMFormat: "CycloneDX", SpecVersion: "1.5", Version: 1,
		SerialNumber: serial(sha256hex, version),
		Metadata: Metadata{
			Tools: Tools{Components: []Component{{Type: "application", Name: "dyad deploy/release/sbom",
				Description: "CycloneDX SBOM from Go build information (debug/buildinfo)"}}},
			Component: main,
		},
		Components: []Component{std},
	}
	if epoch != "" {
		sec, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("SOURCE_DATE_EPOCH %q is not a number of seconds", epoch)
		}
		b.Metadata.Timestamp = time.Unix(sec, 0).UTC().Format(time.RFC3339)
	}
	refs := []string{std.BOMRef}
	for _, d := range bi.Deps {
		c, err := module(d)
		if err != nil {
			return nil, err
		}
		b.Components = append(b.Components, c)
		refs = append(refs, c.BOMRef)
	}
	// Build information lists every module linked in, but not who requires
	// whom, so the only edges known are from the binary to each of them.
	b.Dependencies = []Dependency{{Ref: main.BOMRef, DependsOn: refs}}
	return b, nil
}

// module describes a dependency as linked: a replaced module is described by
// its replacement (those are its bytes), the original named in a property.
func module(d *debug.Module) (Component, error) {
	m := d
	if d.Replace != nil {
		m = d.Replace
	}
	c := Component{Type: "library", Name: m.Path, Version: m.Version, PURL: purl(m.Path, m.Version)}
	c.BOMRef = c.PURL
	if d.Replace != nil {
		c.Properties = []Property{{"dyad:gomod:replaces", d.Path + "@" + d.Version}}
	}
	if m.Sum != "" { // empty for a replacement by a local folder
		h, err := goSumHash(m.Sum)
		if err != nil {
			return c, fmt.Errorf("module %s: %w", m.Path, err)
		}
		c.Hashes = []Hash{{"SHA-256", h}}
	}
	return c, nil
}

// goSumHash turns a go.sum hash ("h1:" and base64) into hex. h1 is SHA-256
// over the module's sorted file list with each file's SHA-256
// (golang.org/x/mod/sumdb/dirhash), so it is a SHA-256, though not of one file.
func goSumHash(sum string) (string, error) {
	b64, ok := strings.CutPrefix(sum, "h1:")
	if !ok {
		return "", fmt.Errorf("hash %q is not an h1: go.sum hash", sum)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != sha256.Size {
		return "", errors.New("malformed h1: go.sum hash")
	}
	return hex.EncodeToString(raw), nil
}

// purl is the package URL of a Go module: pkg:golang/<path>@<version>
// with ?type=module, as cyclonedx-gomod writes it. The purl spec wants the
// golang namespace and name lowercased; each segment is percent-encoded.
func purl(path, version string) string {
	var b strings.Builder
	b.WriteString("pkg:golang/")
	for i, seg := range strings.Split(strings.ToLower(path), "/") {
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(url.PathEscape(seg))
	}
	if version != "" {
		b.WriteString("@" + url.PathEscape(version))
	}
	b.WriteString("?type=module")
	return b.String()
}

// setting names a build setting as a property: environment settings
// (GOOS, CGO_ENABLED, GOAMD64 …) in the taxonomy's cdx:gomod:build:env
// namespace, flags (-trimpath, -ldflags …), which it has no names for, under
// dyad:build:setting.
func setting(s debug.BuildSetting) Property {
	if s.Key != "" && strings.ToUpper(s.Key) == s.Key && !strings.HasPrefix(s.Key, "-") {
		return Property{"cdx:gomod:build:env:" + s.Key, s.Value}
	}
	return Property{"dyad:build:setting:" + s.Key, s.Value}
}

// serial is a name-based (version 5, RFC 9562) UUID URN of the binary's
// hash and version: the same binary always gets the same serial number,
// another binary another one.
func serial(sha256hex, version string) string {
	// The URL namespace of RFC 9562, appendix A.
	ns := []byte{0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8}
	h := sha1.New()
	h.Write(ns)
	h.Write([]byte("urn:dyad:sbom:" + sha256hex + ":" + version))
	u := h.Sum(nil)[:16]
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	x := hex.EncodeToString(u)
	return "urn:uuid:" + x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
}
