// Command dyad is the paired tunnel daemon for partner APIs. It parses the
// command line and hands over to package daemon.

// A build against a FIPS module snapshot (GOFIPS140=certified, make
// release) would default to FIPS 140-3 mode; dyad keeps one binary for both
// modes, chosen at run time with GODEBUG=fips140=on (README, "FIPS 140-3
// mode").
//
//go:debug fips140=off
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dyad-tunnel/dyad/audit/report"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/state"
	"github.com/dyad-tunnel/dyad/internal/gcfloor"
)

const usage = `dyad links a local port at one site to an API at a partner site through a
paired, sealed QUIC tunnel.

Usage:
  dyad keygen --out DIR      make this site's identity (DIR/identity.key, 0600)
  dyad install-key --from FILE --to FILE
                             copy a group-readable key (Kubernetes Secret, systemd
                             credential) to the owner-only file dyad reads
  dyad check [[--config FILE]] validate a configuration and its key file
  dyad run [[--config FILE]]   run the daemon (SIGHUP reloads, SIGTERM drains)
  dyad invite [--config FILE] --peer NAME [--service S]... [--expires 24h] [--wait 15m]
                             print a one-time token that pairs a partner with this site
  dyad join [--config FILE] [--forward LISTEN=SERVICE]... TOKEN
                             pair with the site that printed TOKEN
  dyad revoke [--config FILE] PEER
                             unpin a peer (or cancel its invitation) and cut its tunnels now
  dyad rotate [--config FILE] [--overlap 24h]
                             make a new identity and hand it to every peer over its tunnel
  dyad status [--config FILE] [--json]
                             each peer's tunnels: state, since, RTT, bytes, streams,
                             last handshake, pinned fingerprint
  dyad ping [--config FILE] PEER [SERVICE]
                             probe a peer (and a service) with this site's identity;
                             exit 0 ok, 3 no answer, 4 refused our key, 5 service
                             unknown or not allowed, 6 upstream unreachable, 7 other
                             refusal, 1 could not probe
  dyad audit verify --config FILE
                             check the audit journal's chain and signed checkpoints
  dyad report --config FILE --framework all --since 30d --format html --out FILE
                             write DORA / OWASP API Top 10 evidence from the journal
  dyad version               show the build and its cryptography (also dyad --version)
  dyad completion bash|zsh|fish
                             print a shell completion script

Without --config, a command reads $DYAD_CONFIG, else /etc/dyad/dyad.yaml.
Run "dyad COMMAND --help" for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	// dyad prints its own UDP buffer warning, with the fix.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "keygen":
		fs := newFlags("keygen", "make a new identity")
		out := fs.String("out", "", "folder for identity.key and identity.pub (required)")
		fs.Parse(args)
		if *out == "" {
			usageError(fs, "--out is required")
		}
		err = daemon.Keygen(*out, os.Stdout)
	case "install-key":
		fs := newFlags("install-key", "copy an identity key delivered readable by a group to an owner-only (0600) file, checking that it parses")
		from := fs.String("from", "", "the delivered key file, e.g. a Secret volume's (required)")
		to := fs.String("to", "", "the file to write, the configuration's identity (required)")
		fs.Parse(args)
		if *from == "" || *to == "" {
			usageError(fs, "--from and --to are required")
		}
		err = daemon.InstallKey(*from, *to, os.Stdout)
	case "check":
		fs := newFlags("check", "validate a configuration file and its key file")
		var cfg string
		configFlag(fs, &cfg, "configuration file")
		fs.Parse(args)
		err = daemon.Check(cfg, os.Stdout)
	case "run":
		fs := newFlags("run", "run the daemon until SIGTERM or SIGINT; SIGHUP reloads the configuration")
		var cfg string
		configFlag(fs, &cfg, "configuration file")
		var o daemon.RunOptions
		fs.BoolVar(&o.AcceptBrokenJournal, "accept-broken-journal", false,
			"start even if the audit journal does not verify, recording a signed dyad.journal.break entry that dyad audit verify reports for ever")
		fs.Parse(args)
		// Fewer collections while the live heap is small (README, Performance).
		defer gcfloor.Start(gcfloor.DefaultFloor).Stop()
		err = daemon.RunWith(context.Background(), cfg, os.Stderr, o)
	case "invite":
		fs := newFlags("invite", "ask the running daemon for a one-time invitation token for a new peer")
		var cfg string
		configFlag(fs, &cfg, "configuration file")
		var a daemon.InviteArgs
		fs.StringVar(&a.Peer, "peer", "", "the name the partner gets here (required)")
		fs.Func("service", "a service of this site the partner may use (repeat for more)", func(v string) error {
			a.Services = append(a.Services, v)
			return nil
		})
		fs.Func("endpoint", "HOST:PORT where the partner reaches this site's QUIC port (repeat for more; default: listen, if it is not 0.0.0.0)", func(v string) error {
			a.Endpoints = append(a.Endpoints, v)
			return nil
		})
		fs.DurationVar(&a.Expires, "expires", daemon.DefaultInviteExpiry, "how long the token is valid (at most 720h)")
		wait := fs.Duration("wait", 0, "then wait this long (at most 1h) for the partner to join, and print the verification phrase")
		print := fs.Bool("print", false, "with --wait: also print the joined peer's YAML entry, for a declarative configuration")
		asJSON := fs.Bool("json", false, "print the result as JSON (with --wait, a second line once joined)")
		rest := parseInterleaved(fs, args)
		if a.Peer == "" || len(rest) > 0 {
			usageError(fs, "--peer is required, and nothing else")
		}
		if *print && *wait == 0 {
			usageError(fs, "--print needs --wait")
		}
		err = daemon.Invite(cfg, a, *wait, *print, *asJSON, os.Stdout)
	case "join":
		fs := newFlags("join", "pair with the site whose invitation token is given (- reads it from standard input)")
		var cfg string
		configFlag(fs, &cfg, "configuration file")
		var a daemon.JoinArgs
		fs.StringVar(&a.Name, "name", "", "the name the inviting site gets here (default: its site name)")
		fs.Func("forward", "LISTEN=SERVICE: carry a local port to one of the invitation's services (repeat for more)", func(v string) error {
			listen, svc, ok := strings.Cut(v, "=")
			if !ok || listen == "" || svc == "" {
				return fmt.Errorf("%q is not LISTEN=SERVICE, e.g. 127.0.0.1:9000=payments", v)
			}
			a.Forwards = append(a.Forwards, state.Forward{Listen: listen, Service: svc})
			return nil
		})
		fs.BoolVar(&a.Print, "print", false, "enrol, but write no state: print the peers/forwards entries for a declarative configuration (Kubernetes)")
		asJSON := fs.Bool("json", false, "print the result as JSON")
		rest := parseInterleaved(fs, args)
		if len(rest) != 1 {
			usageError(fs, "one TOKEN is required")
		}
		a.Token = rest[0]
		if a.Token == "-" {
			b, rerr := io.ReadAll(io.LimitReader(os.Stdin, 64<<10))
			if rerr != nil {
				fmt.Fprintln(os.Stderr, "dyad join: read token:", rerr)
				os.Exit(1)
			}
			a.Token = string(b)
		}
		err = daemon.Join(cfg, a, *asJSON, os.Stdout)
	case "revoke":
		fs := newFlags("revoke", "unpin a peer (or cancel its pending invitation) and close its connections at once")
		var cfg string
		configFlag(fs, &cfg, "configuration file")
		asJSON := fs.Bool("json", false, "print the result as JSON")
		rest := parseInterleaved(fs, args)
		if len(rest) != 1 {
			usageError(fs, "one PEER is required")
		}
		err = daemon.Revoke(cfg, rest[0], *asJSON, os.Stdout)
	case "rotate":
		fs := newFlags("rotate", "make a new identity and roll it out: each peer learns it over its tunnel, signed by the old key; both are accepted for the overlap, then the old one is gone")
		var cfg string
		configFlag(fs, &cfg, "configuration file")
		overlap := fs.String("overlap", "", "how long both keys are accepted, 1s to 30d (default 24h)")
		asJSON := fs.Bool("json", false, "print the result as JSON")
		fs.Parse(args)
		if fs.NArg() != 0 {
			usageError(fs, "no arguments")
		}
		err = daemon.Rotate(cfg, daemon.RotateArgs{Overlap: *overlap}, *asJSON, os.Stdout)
	case "status":
		err = cmdStatus(args)
	case "ping":
		os.Exit(cmdPing(args))
	case "audit":
		if len(args) == 0 || args[0] != "verify" {
			fmt.Fprint(os.Stderr, "usage: dyad audit verify [flags]; run dyad audit verify --help\n")
			os.Exit(2)
		}
		fs := newFlags("audit verify", "check the audit journal: hash chain, sequence, signed checkpoints; exit 0 verified, 1 not verified, 2 could not check")
		var o daemon.VerifyOptions
		fs.StringVar(&o.Journal, "journal", "", "journal folder (default: the configuration's audit.journal.dir)")
		fs.StringVar(&o.Config, "config", "", "configuration file: the journal folder, the site and the identity key (default without --public-key: $DYAD_CONFIG, else "+defaultConfigPath+")")
		fs.StringVar(&o.PublicKey, "public-key", "", "the daemon's dyad2:… (or dyad1:…) public key, instead of reading its identity file")
		fs.StringVar(&o.Site, "site", "", "the daemon's site name, with --public-key")
		fs.StringVar(&o.AnchorFile, "anchor", "", "file holding a signed checkpoint kept outside the journal (the dyad.journal.checkpoint attribute your SIEM received)")
		fs.Parse(args[1:])
		if o.Config == "" && o.PublicKey == "" {
			o.Config = defaultConfig()
		}
		ok, verr := daemon.AuditVerify(o, os.Stdout)
		if verr != nil {
			fmt.Fprintln(os.Stderr, "dyad:", verr)
			os.Exit(2)
		}
		if !ok {
			os.Exit(1)
		}
	case "report":
		fs := newFlags("report", "write a DORA and OWASP API Security Top 10 (2023) evidence report from the audit journal;\nexit 0 written, 1 written but the journal does not verify (the report says where), 2 not written")
		var o daemon.ReportOptions
		configFlag(fs, &o.Config, "configuration file: the controls in effect, the site, the identity and the journal")
		fs.StringVar(&o.Journal, "journal", "", "journal folder (default: the configuration's audit.journal.dir)")
		fs.StringVar(&o.Framework, "framework", "all", "dora, owasp-api-2023 or all")
		fs.StringVar(&o.Since, "since", "", "the period: this long back from now, e.g. 720h or 30d")
		fs.StringVar(&o.From, "from", "", "the period's start, RFC 3339 or a date (default: the journal's first entry)")
		fs.StringVar(&o.To, "to", "", "the period's end, exclusive, RFC 3339 or a date (default: now)")
		fs.StringVar(&o.Format, "format", "html", "html (one self-contained file), md or json")
		fs.StringVar(&o.Out, "out", "", "file to write (default: standard output)")
		fs.DurationVar(&o.OutageMin, "outage-min", time.Minute, "shortest tunnel outage, or unknown gap after an unclean stop, listed as an incident candidate")
		fs.Parse(args)
		rerr := daemon.Report(o, os.Stdout)
		switch {
		case errors.Is(rerr, report.ErrNotVerified):
			fmt.Fprintln(os.Stderr, "dyad: report written, but", rerr)
			os.Exit(1)
		case rerr != nil:
			fmt.Fprintln(os.Stderr, "dyad:", rerr)
			os.Exit(2)
		}
		if o.Out != "" && o.Out != "-" {
			fmt.Fprintf(os.Stderr, "dyad: report written to %s\n", o.Out)
		}
	case "version", "--version", "-version":
		newFlags("version", "show the build and its cryptography").Parse(args)
		printVersion()
	case "completion":
		if len(args) != 1 {
			fmt.Fprint(os.Stderr, "usage: dyad completion bash|zsh|fish\n")
			os.Exit(2)
		}
		err = writeCompletion(os.Stdout, args[0])
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "dyad: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dyad:", err)
		if errors.Is(err, os.ErrNotExist) && strings.Contains(err.Error(), defaultConfig()) {
			fmt.Fprintf(os.Stderr, "dyad: without --config, dyad reads $DYAD_CONFIG, else %s\n", defaultConfigPath)
		}
		os.Exit(1)
	}
}

// parseInterleaved parses flags that may come before or after the
// positional arguments, and returns the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) []string {
	var rest []string
	for {
		fs.Parse(args)
		args = fs.Args()
		if len(args) == 0 {
			return rest
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
}

func newFlags(name, what string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "dyad %s: %s\n\nFlags:\n", name, what)
		fs.PrintDefaults()
	}
	return fs
}

func usageError(fs *flag.FlagSet, msg string) {
	fmt.Fprintf(os.Stderr, "dyad %s: %s\n\n", fs.Name(), msg)
	fs.Usage()
	os.Exit(2)
}
