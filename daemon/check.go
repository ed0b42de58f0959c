package daemon

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/dyad-tunnel/dyad/daemon/state"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// Check validates the configuration and its key file, and summarises it:
// this site's fingerprint and every peer's, to compare by phone with what
// the partner's `dyad check` prints (TestCheckMessages).
func Check(path string, out io.Writer) error {
	cfg, err := LoadConfig(path)
	if err != nil {
		return err
	}
	id, err := siteIdentity(cfg)
	if err != nil {
		return err
	}
	self := id.Public()
	for i, p := range cfg.Tunnel.Peers {
		// The daemon refuses to start with it (tunnel.Config.ValidateSelf);
		// say what probably happened.
		if p.Key.Sign == self.Sign || p.Key.DH == self.DH {
			var root yaml.Node
			line := 0
			if data, err := os.ReadFile(path); err == nil && yaml.Unmarshal(data, &root) == nil {
				line = lineOf(&root, "peers", i, "public_key")
			}
			return &ConfigError{Path: path, Line: line, Field: fmt.Sprintf("peers[%d].public_key", i),
				Err: fmt.Errorf("peer %q has this site's own key (%s): pin the key the partner's `dyad keygen` printed, not this site's", p.Name, self.Fingerprint())}
		}
		if _, err := id.PairingSecret(p.Key); err != nil {
			return fmt.Errorf("%s: peer %q: %w", path, p.Name, err)
		}
	}
	for _, n := range cfg.Notes {
		fmt.Fprintf(out, "%s: warning: %s\n", path, n)
	}
	for _, w := range append(ConnectionWarnings(cfg.Tunnel), startWarnings(cfg, id)...) {
		fmt.Fprintf(out, "%s: warning: %s\n", path, w)
	}
	for i, p := range cfg.File.Peers {
		if strings.HasPrefix(strings.TrimSpace(p.PublicKey), identity.LegacyPublicKeyPrefix) {
			fmt.Fprintf(out, "%s: note: peer %q: key in the older dyad1: form, without a checksum; the same key with one: %s\n",
				path, p.Name, cfg.Tunnel.Peers[i].Key)
		}
	}
	fmt.Fprintf(out, "%s: ok: site %s, identity %s, %d peers, %d services, %d forwards\n", path, cfg.Site,
		self.Fingerprint(), len(cfg.Tunnel.Peers), len(cfg.Tunnel.Services), len(cfg.File.Forwards))
	fmt.Fprintf(out, "%s: state %s, control socket %s\n", path, cfg.StateDir, cfg.ControlSocket)
	if addr := cfg.File.Tunnel.TCPListen.address(cfg.File.Listen); addr != "" {
		fmt.Fprintf(out, "%s: tcp fallback listener on %s (TCP is not dark: the kernel answers every SYN)\n", path, addr)
	}
	for _, name := range sortedKeys(cfg.APIs) {
		p := cfg.APIs[name]
		host := ""
		if p.Host != "" {
			// api.host: the Host upstream sees on every request.
			host = ", Host " + p.Host
		}
		fmt.Fprintf(out, "%s: service %s: API guard: %s (OpenAPI %s, %d operations, sha256 %s%s)\n", path, name,
			p.Spec.File, p.Spec.Version, len(p.Spec.Operations), p.Spec.SHA256, host)
	}
	for _, f := range cfg.File.Forwards {
		if p := cfg.ForwardAPIs[f.key()]; p != nil {
			action := "reported"
			if p.Block {
				action = "blocked (502)"
			}
			fmt.Fprintf(out, "%s: forward %s → %s/%s: responses checked against %s (OpenAPI %s, sha256 %s), broken ones %s\n", path,
				f.Listen, f.Peer, f.Service, p.Spec.File, p.Spec.Version, p.Spec.SHA256, action)
		}
	}
	for _, s := range cfg.Tunnel.Services {
		if s.TLS != nil {
			fmt.Fprintf(out, "%s: service %s: upstream %s over TLS, verified as %s\n", path, s.Name, s.Upstream, s.TLS.ServerName)
		}
	}
	fmt.Fprintf(out, "  this site  %s  %s\n", self.Fingerprint(), self)
	for _, p := range cfg.Tunnel.Peers {
		where := "dials us"
		if p.Endpoint != "" {
			where = "we dial " + p.Endpoint
		}
		fmt.Fprintf(out, "  peer %-20s %s  (%s)\n", p.Name, p.Key.Fingerprint(), where)
	}
	return nil
}

// loadIdentity loads cfg's key file; a missing one says how to make it.
// siteIdentity is the identity the daemon runs with, read only: the state
// directory's rotated one (dyad rotate) if there is one, else the key file.
func siteIdentity(cfg *Config) (*identity.Identity, error) {
	r, err := state.LoadRotation(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return loadIdentity(cfg)
	}
	id, err := identity.Parse([]byte(r.Current))
	if err != nil {
		return nil, fmt.Errorf("state %s: current identity: %w", state.RotationPath(cfg.StateDir), err)
	}
	return id, nil
}

func loadIdentity(cfg *Config) (*identity.Identity, error) {
	id, err := identity.Load(cfg.IdentityPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: identity: key file %s does not exist: make it with `dyad keygen --out %s` (then give partners the public_key line it prints)",
			cfg.Path, cfg.IdentityPath, filepath.Dir(cfg.IdentityPath))
	}
	return id, err
}
