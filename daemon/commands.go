package daemon

import (
	"crypto/fips140"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// Version is dyad's version, set at build time with
// -ldflags "-X github.com/dyad-tunnel/dyad/daemon.Version=v1.2.3".
var Version = "dev"

// Keygen writes a new identity into dir and prints what the partner needs.
func Keygen(dir string, out io.Writer) error {
	id, err := identity.Generate()
	if err != nil {
		return err
	}
	keyPath, pubPath, err := id.WriteFiles(dir)
	if err != nil {
		return err
	}
	pub := id.Public()
	fmt.Fprintf(out, "private key: %s (mode 0600; keep it on this host)\n", keyPath)
	fmt.Fprintf(out, "public key:  %s\n", pubPath)
	fmt.Fprintf(out, "fingerprint: %s\n\n", pub.Fingerprint())
	fmt.Fprintf(out, "Give your partner this line for their peers: list:\n  public_key: %s\n", pub)
	return nil
}

// Check validates the configuration and its key file, and summarises it.
func Check(path string, out io.Writer) error {
	cfg, err := LoadConfig(path)
	if err != nil {
		return err
	}
	id, err := identity.Load(cfg.IdentityPath)
	if err != nil {
		return err
	}
	for _, p := range cfg.Tunnel.Peers {
		if _, err := id.PairingSecret(p.Key); err != nil {
			return fmt.Errorf("%s: peer %q: %w", path, p.Name, err)
		}
	}
	fmt.Fprintf(out, "%s: ok: site %s, identity %s, %d peers, %d services, %d forwards\n", path, cfg.Site,
		id.Public().Fingerprint(), len(cfg.Tunnel.Peers), len(cfg.Tunnel.Services), len(cfg.File.Forwards))
	return nil
}

// PrintVersion prints the build and the cryptography in use.
func PrintVersion(out io.Writer) {
	quicVersion := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == "github.com/quic-go/quic-go" {
				quicVersion = dep.Version
			}
		}
	}
	var suites []string
	for _, s := range codec.Suites() {
		suites = append(suites, s.String())
	}
	fmt.Fprintf(out, "dyad %s\n", Version)
	fmt.Fprintf(out, "go:           %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(out, "quic-go:      %s (ALPN %s, TLS 1.3 only, no 0-RTT)\n", quicVersion, tunnel.ALPN)
	fmt.Fprintf(out, "key exchange: X25519MLKEM768 (post-quantum hybrid, quic-go default)\n")
	fmt.Fprintf(out, "codec:        format v%d, suites %s\n", codec.Version, strings.Join(suites, ", "))
	fmt.Fprintf(out, "fips 140-3:   %v\n", fips140.Enabled())
}
