package daemon

import (
	"crypto/ed25519"
	"crypto/fips140"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/dyad-tunnel/dyad/apiguard"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/audit/report"
	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// ReportOptions say what `dyad report` covers.
type ReportOptions struct {
	Config    string // configuration file: controls, site, identity, journal folder
	Journal   string // journal folder; empty means the configuration's
	Framework string // dora, owasp-api-2023 or all
	Since     string // a duration back from now (720h, 30d); or From and To
	From, To  string // RFC 3339 times or dates (2026-10-01)
	Format    string // html, md or json
	Out       string // file to write; empty or "-" means standard output
	// OutageMin is the shortest tunnel outage or unknown gap after an
	// unclean stop listed as an incident candidate; zero means 1 minute.
	OutageMin time.Duration
	Now       time.Time
}

// Report writes the evidence report. When the journal does not verify it
// still writes the report, which says so, and returns
// report.ErrNotVerified.
func Report(o ReportOptions, stdout io.Writer) (err error) {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.OutageMin < 0 {
		return fmt.Errorf("--outage-min %v: want a positive duration", o.OutageMin)
	}
	opts := report.Options{Now: o.Now, Generator: fmt.Sprintf("dyad %s (%s)", Version, runtime.Version()), OutageMin: o.OutageMin}
	switch o.Framework {
	case "", "all":
	case report.DORA, report.OWASP:
		opts.Frameworks = []string{o.Framework}
	default:
		return fmt.Errorf("--framework %q: want dora, owasp-api-2023 or all", o.Framework)
	}
	switch o.Format {
	case report.FormatHTML, report.FormatMarkdown, report.FormatJSON:
	default:
		return fmt.Errorf("--format %q: want html, md or json", o.Format)
	}
	if opts.From, opts.To, err = period(o); err != nil {
		return err
	}
	if o.Config == "" {
		return errors.New("--config is required: the report reads the controls in effect from it")
	}
	cfg, err := LoadConfig(o.Config)
	if err != nil {
		return err
	}
	pub, keyTime, err := publicIdentity(cfg.IdentityPath)
	if err != nil {
		return err
	}
	opts.Journal = o.Journal
	if opts.Journal == "" {
		opts.Journal = cfg.Audit.Journal.Dir
	}
	if opts.Verifier, err = journal.NewVerifier(journalOrigin(cfg.Site), ed25519.PublicKey(pub.Sign[:])); err != nil {
		return err
	}
	opts.Daemon, opts.Controls = reportDaemon(cfg, pub), reportControls(cfg, keyTime)

	r, buildErr := report.Build(opts)
	if buildErr != nil && !errors.Is(buildErr, report.ErrNotVerified) {
		return buildErr
	}
	out, closeOut := stdout, func() error { return nil }
	if o.Out != "" && o.Out != "-" {
		f, err := os.OpenFile(o.Out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		out, closeOut = f, f.Close
	}
	if err := r.Write(out, o.Format); err != nil {
		closeOut()
		return fmt.Errorf("writing the report: %w", err)
	}
	if err := closeOut(); err != nil {
		return err
	}
	return buildErr
}

// period turns --since or --from/--to into times.
func period(o ReportOptions) (from, to time.Time, err error) {
	if o.Since != "" && (o.From != "" || o.To != "") {
		return from, to, errors.New("give --since or --from/--to, not both")
	}
	if o.Since != "" {
		d, err := parseSince(o.Since)
		if err != nil {
			return from, to, err
		}
		return o.Now.Add(-d), o.Now, nil
	}
	if o.From != "" {
		if from, err = parseTime(o.From); err != nil {
			return from, to, fmt.Errorf("--from: %w", err)
		}
	}
	if o.To != "" {
		if to, err = parseTime(o.To); err != nil {
			return from, to, fmt.Errorf("--to: %w", err)
		}
	}
	return from, to, nil
}

// parseSince reads a Go duration or a number of days ("30d").
func parseSince(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err == nil && days > 0 {
			return time.Duration(days) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--since %q: want a duration such as 720h or a number of days such as 30d", s)
	}
	return d, nil
}

func parseTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time (2026-10-01T00:00:00Z) or a date (2026-10-01)", s)
}

// publicIdentity returns the daemon's public key and when its key file was
// last written. The key file is read when it can be; otherwise the
// identity.pub beside it (a compliance officer need not read private keys).
func publicIdentity(keyPath string) (identity.PublicKey, time.Time, error) {
	fi, statErr := os.Stat(keyPath)
	var mod time.Time
	if statErr == nil {
		mod = fi.ModTime().UTC()
	}
	id, err := identity.Load(keyPath)
	if err == nil {
		return id.Public(), mod, nil
	}
	data, perr := os.ReadFile(filepath.Join(filepath.Dir(keyPath), identity.PublicFileName))
	if perr != nil {
		return identity.PublicKey{}, mod, fmt.Errorf("%w (and no readable %s beside it)", err, identity.PublicFileName)
	}
	pub, perr := identity.ParsePublicKey(string(data))
	if perr != nil {
		return identity.PublicKey{}, mod, fmt.Errorf("%s: %w", filepath.Join(filepath.Dir(keyPath), identity.PublicFileName), perr)
	}
	return pub, mod, nil
}

func reportDaemon(cfg *Config, pub identity.PublicKey) report.Daemon {
	var suites []string
	for _, s := range codec.Suites() {
		suites = append(suites, s.String())
	}
	suite := cfg.Tunnel.Suite
	if suite == 0 {
		suite = codec.SuiteAES256GCM
	}
	return report.Daemon{
		Site: cfg.Site, Fingerprint: pub.Fingerprint(), PublicKey: pub.String(),
		Version: Version, FIPS: fips140.Enabled(), KeyExchange: preferredGroup(cfg).String(),
		FIPSRequired: cfg.File.FIPS, RequirePostQuantum: cfg.Tunnel.RequirePostQuantum,
		TLS:   fmt.Sprintf("TLS 1.3 only, ALPN %s, no 0-RTT, mutual authentication with pinned keys", tunnel.ALPN),
		Suite: suite.String(), Suites: suites,
	}
}

func reportControls(cfg *Config, keyTime time.Time) report.Controls {
	c := report.Controls{
		ConfigPath: cfg.Path, ConfigSHA256: cfg.SHA256, Listen: cfg.File.Listen, Admin: cfg.File.Admin,
		IdentityKeyModified: keyTime, CountConnectionDrops: cfg.Tunnel.CountConnectionDrops,
		IdentityMaxAge: reportIdentityMaxAge(cfg),
		Peers:          []report.Peer{}, Services: []report.Service{}, Forwards: []report.Forward{},
	}
	for i, p := range cfg.File.Peers {
		c.Peers = append(c.Peers, report.Peer{Name: p.Name, Fingerprint: cfg.Tunnel.Peers[i].Key.Fingerprint(),
			Endpoint: p.Endpoint, Country: p.Country, Critical: p.Critical})
	}
	for _, s := range cfg.File.Services {
		allow := s.Allow
		if allow == nil {
			allow = []string{}
		}
		c.Services = append(c.Services, report.Service{Name: s.Name, Upstream: s.Upstream, Allow: allow, Critical: s.Critical})
	}
	for _, f := range cfg.File.Forwards {
		c.Forwards = append(c.Forwards, report.Forward{Listen: f.Listen, Peer: f.Peer, Service: f.Service})
		if p := cfg.ForwardAPIs[f.key()]; p != nil {
			c.ResponseChecks = append(c.ResponseChecks, report.ResponseCheck{Forward: f.Listen + "→" + f.Peer + "/" + f.Service,
				Spec: p.Spec.File, SHA256: p.Spec.SHA256, Block: p.Block})
		}
	}
	for _, s := range cfg.File.Services {
		if p := cfg.APIs[s.Name]; p != nil {
			c.APIGuards = append(c.APIGuards, reportGuard(p, s.Allow))
		}
	}
	for _, l := range cfg.Tunnel.LimitsInEffect() {
		c.Limits = append(c.Limits, report.Limit{Name: l.Name, Value: l.Value, Scope: l.Scope, Kind: l.Kind})
	}
	j := cfg.Audit.Journal.WithDefaults()
	c.Journal = report.Journal{Dir: j.Dir, Fsync: j.Sync.String(), MaxFileMB: int(j.MaxFileBytes >> 20),
		CheckpointEvery: j.CheckpointEvery, CheckpointInterval: j.CheckpointInterval.String()}
	if o := cfg.Audit.OTLP; o != nil {
		c.Export = report.Export{Enabled: true, Protocol: o.ProtocolOrEnv(), Endpoint: o.EndpointOrEnv(), TLS: exportTLS(o.Endpoint, o.Insecure, o.CertFile != "")}
	}
	return c
}

func exportTLS(endpoint string, insecure, mutual bool) string {
	switch {
	case insecure:
		return "insecure (plaintext)"
	case mutual:
		return "mutual TLS"
	case endpoint == "":
		return "as the OTEL_EXPORTER_OTLP_* environment says"
	}
	return "TLS"
}

// reportGuard describes a service's API guard for the report.
func reportGuard(p *apiguard.Policy, allow []string) report.APIGuard {
	g := report.APIGuard{Service: p.Service, Spec: p.Spec.File, SHA256: p.Spec.SHA256, Operations: len(p.Spec.Operations),
		AllowLists: map[string]int{}, Unrestricted: []string{}, ValidateRequest: p.ValidateRequest, RateLimited: []string{}, Deprecated: []string{}}
	for _, peer := range allow {
		if ops, ok := p.Allowed[peer]; ok {
			g.AllowLists[peer] = len(ops)
		} else {
			g.Unrestricted = append(g.Unrestricted, peer)
		}
	}
	for _, o := range p.Spec.Operations { // sorted by key
		if _, ok := p.Limits[o]; ok {
			g.RateLimited = append(g.RateLimited, o.Key)
		}
		if o.Deprecated {
			g.Deprecated = append(g.Deprecated, o.Key)
		}
	}
	return g
}
