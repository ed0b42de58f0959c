package daemon

import (
	"crypto/ed25519"
	"crypto/fips140"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/dyad-tunnel/dyad/audit/journal"
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

// InstallKey installs the key file at from, delivered readable by a group
// (a Kubernetes Secret volume, a systemd credential), as the owner-only
// file to that dyad loads, and prints where it went and its fingerprint.
func InstallKey(from, to string, out io.Writer) error {
	id, err := identity.Install(from, to)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "installed %s as %s (mode 0600), fingerprint %s\n", from, to, id.Public().Fingerprint())
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
	if err := cfg.Tunnel.ValidateSelf(id.Public()); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, p := range cfg.Tunnel.Peers {
		if _, err := id.PairingSecret(p.Key); err != nil {
			return fmt.Errorf("%s: peer %q: %w", path, p.Name, err)
		}
	}
	for _, w := range ConnectionWarnings(cfg.Tunnel) {
		fmt.Fprintf(out, "%s: warning: %s\n", path, w)
	}
	fmt.Fprintf(out, "%s: ok: site %s, identity %s, %d peers, %d services, %d forwards\n", path, cfg.Site,
		id.Public().Fingerprint(), len(cfg.Tunnel.Peers), len(cfg.Tunnel.Services), len(cfg.File.Forwards))
	if addr := cfg.File.Tunnel.TCPListen.address(cfg.File.Listen); addr != "" {
		fmt.Fprintf(out, "%s: tcp fallback listener on %s (TCP is not dark: the kernel answers every SYN)\n", path, addr)
	}
	return nil
}

// ConnectionWarnings names the peers this daemon dials with more
// connections than its own tunnel.max_connections_per_peer: partners
// usually share the defaults, so the peer's cap is likely the same and
// would refuse the extra connections (counted as limited.connections_per_peer).
func ConnectionWarnings(c tunnel.Config) []string {
	limit := c.MaxConnectionsPerPeer
	if limit == 0 {
		limit = tunnel.DefaultMaxConnectionsPerPeer
	}
	def := c.Connections
	if def == 0 {
		def = tunnel.DefaultConnections
	}
	var out []string
	for _, p := range c.Peers {
		n := def
		if p.Connections > 0 {
			n = p.Connections
		}
		if p.Endpoint != "" && limit > 0 && n > limit {
			out = append(out, fmt.Sprintf("peer %q: connections %d exceeds tunnel.max_connections_per_peer %d; "+
				"a partner with the same setting refuses the extra connections (it must allow connections × the instances sharing this identity)", p.Name, n, limit))
		}
	}
	return out
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

// VerifyOptions say what `dyad audit verify` checks.
type VerifyOptions struct {
	Journal    string // journal folder; empty means the configuration's
	Config     string // configuration file: gives the folder, the site and the identity key
	PublicKey  string // dyad1:… key, instead of the configuration's identity
	Site       string // with PublicKey: the site whose journal it is
	AnchorFile string // a signed checkpoint held outside the journal (optional)
}

// AuditVerify checks a journal's chain, sequence and signed checkpoints and
// prints the verdict. It returns false when the journal does not verify,
// and an error when it could not be checked at all.
func AuditVerify(o VerifyOptions, out io.Writer) (bool, error) {
	dir, site := o.Journal, o.Site
	var pub ed25519.PublicKey
	var tail journal.Options
	if o.Config != "" {
		cfg, err := LoadConfig(o.Config)
		if err != nil {
			return false, err
		}
		tail = cfg.Audit.Journal.WithDefaults()
		if dir == "" {
			dir = cfg.Audit.Journal.Dir
		}
		if site == "" {
			site = cfg.Site
		}
		if o.PublicKey == "" {
			id, err := identity.Load(cfg.IdentityPath)
			if err != nil {
				return false, err
			}
			k := id.Public()
			pub = ed25519.PublicKey(k.Sign[:])
		}
	}
	if o.PublicKey != "" {
		k, err := identity.ParsePublicKey(o.PublicKey)
		if err != nil {
			return false, fmt.Errorf("--public-key: %w", err)
		}
		pub = ed25519.PublicKey(k.Sign[:])
	}
	switch {
	case dir == "":
		return false, errors.New("no journal: give --journal or --config")
	case pub == nil:
		return false, errors.New("no key to check signatures with: give --config or --public-key")
	case site == "":
		return false, errors.New("no site: give --config or --site")
	}
	v, err := journal.NewVerifier(journalOrigin(site), pub)
	if err != nil {
		return false, err
	}
	vo := journal.VerifyOptions{Verifier: v, TailEntries: tail.CheckpointEvery, TailInterval: tail.CheckpointInterval}
	if o.AnchorFile != "" {
		data, err := os.ReadFile(o.AnchorFile)
		if err != nil {
			return false, err
		}
		a, err := journal.OpenCheckpoint(string(data), v)
		if err != nil {
			return false, fmt.Errorf("anchor %s: %w", o.AnchorFile, err)
		}
		vo.Anchor = &a
	}
	res, err := journal.Verify(dir, vo)
	if err != nil {
		return false, fmt.Errorf("journal %s: %w", dir, err)
	}
	if !res.OK() {
		fmt.Fprintf(out, "journal %s: FAILED\n  first bad entry: %s\n  entries before it: %d, covered by %d verified signed checkpoints up to entry %d\n",
			dir, res.Bad, res.Bad.Seq, res.Checkpoints, res.Covered)
		printBreaks(out, res)
		return false, nil
	}
	fmt.Fprintf(out, "journal %s: OK\n", dir)
	files := res.Files[0]
	if len(res.Files) > 1 {
		files += " … " + res.Files[len(res.Files)-1]
	}
	fmt.Fprintf(out, "  files:       %d (%s)\n", len(res.Files), files)
	fmt.Fprintf(out, "  entries:     %d, chained by SHA-256\n", res.Entries)
	fmt.Fprintf(out, "  checkpoints: %d signed by %s, the last covers %d entries", res.Checkpoints, identity.Fingerprint(pub), res.Covered)
	if res.After > 0 {
		fmt.Fprintf(out, "\n  NOTE:        the last %d entries are chained but not yet covered by a signed checkpoint: they could\n"+
			"               have been altered or cut without trace (a cleanly stopped daemon ends its journal with a checkpoint)", res.After)
	}
	fmt.Fprintf(out, "\n  tree root:   %s (size %d)\n", base64.StdEncoding.EncodeToString(res.Root[:]), res.Entries)
	if vo.Anchor != nil {
		fmt.Fprintf(out, "  anchor:      matches the external checkpoint of size %d\n", vo.Anchor.Size)
	} else {
		fmt.Fprintf(out, "  anchor:      none given: entries cut from the very end after the last checkpoint would not show; pass --anchor with the last dyad.journal.checkpoint your SIEM received\n")
	}
	return true, nil
}

// printBreaks reports the starts at which the daemon found the journal
// broken and the operator chose to go on (dyad.journal.break entries).
func printBreaks(out io.Writer, res *journal.Result) {
	for _, b := range res.Breaks {
		verified := "unverified: it follows the first bad entry"
		if b.Seq < res.Entries {
			verified = "verified"
		}
		fmt.Fprintf(out, "  BREAK:       entry %d (%s, %s): the daemon started over a broken journal at the operator's choice; it found entry %d bad: %s (%d entries unverified)\n",
			b.Seq, b.Time.Format(time.RFC3339), verified, b.Attr(journal.AttrBadSeq).AsInt64(), b.Attr(journal.AttrReason).AsString(),
			b.Attr(journal.AttrUnverified).AsInt64())
	}
}
