// Package daemon turns a YAML configuration into a running dyad: it loads
// and validates the file, wires the identity, the tunnel node, the forward
// listeners and the admin endpoints, and runs the lifecycle (SIGHUP reload,
// SIGTERM drain).
package daemon

import (
	"bytes"
	"crypto/fips140"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.yaml.in/yaml/v3"

	"github.com/dyad-tunnel/dyad/apiguard"
	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/daemon/state"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// File is the YAML configuration as written. Decoding is strict: an unknown
// key is an error naming its line.
type File struct {
	// Site names this daemon in logs and events. Empty means the host name.
	Site string `yaml:"site"`
	// Identity is the key file made by `dyad keygen`, relative to the
	// configuration file's folder.
	Identity string `yaml:"identity"`
	// Listen is the QUIC (UDP) address, host:port.
	Listen string `yaml:"listen"`
	// Admin is the HTTP address of /healthz, /readyz, /statusz and /metrics. Empty
	// means no admin endpoint.
	Admin    string          `yaml:"admin,omitempty"`
	Log      LogFile         `yaml:"log,omitempty"`
	Tunnel   TunnelFile      `yaml:"tunnel,omitempty"`
	Peers    []PeerFile      `yaml:"peers,omitempty"`
	Services []ServiceFile   `yaml:"services,omitempty"`
	Forwards []ForwardConfig `yaml:"forwards,omitempty"`
	Audit    AuditFile       `yaml:"audit,omitempty"`
	// FIPS requires FIPS 140-3 mode: the daemon refuses to start unless Go's
	// FIPS 140-3 module is active (GODEBUG=fips140=on), seals records with
	// AES-256-GCM only and offers only approved TLS groups (README, "FIPS
	// 140-3 mode"). False (the default) runs in whichever mode the process
	// is in.
	FIPS bool `yaml:"fips,omitempty"`
	// TLS sets the tunnel's TLS handshake.
	TLS TLSFile `yaml:"tls,omitempty"`
	// IdentityMaxAge warns at start when the identity key is older than
	// this (e.g. 365d, 8760h). Zero means 365d; "unlimited" never warns.
	IdentityMaxAge Duration `yaml:"identity_max_age,omitempty"`
	// StateDir holds what the daemon itself writes and keeps across
	// restarts: enrolled peers (dyad join, dyad invite) and, by default, the
	// control socket. Relative to the configuration file's folder; empty
	// means "state" beside it. Under systemd: /var/lib/dyad
	// (StateDirectory=dyad).
	StateDir string `yaml:"state_dir,omitempty"`
	// Control is the local control socket the dyad commands reach a running
	// daemon through.
	Control ControlFile `yaml:"control,omitempty"`
}

// ControlFile sets the local control socket (package control).
type ControlFile struct {
	// Socket is the unix socket's path, relative to the configuration
	// file's folder. Empty means control.sock in the state directory.
	Socket string `yaml:"socket,omitempty"`
	// Group, when set, lets the members of this group call too (socket
	// mode 0660); empty means only the daemon's user (and root), mode 0600.
	Group string `yaml:"group,omitempty"`
}

// TLSFile sets the tunnel's TLS handshake.
type TLSFile struct {
	// RequirePostQuantum refuses every handshake, in both directions, whose
	// key exchange is not a hybrid ML-KEM group (X25519MLKEM768,
	// SecP256r1MLKEM768, SecP384r1MLKEM1024); refusals are audited as
	// dyad.peer.auth_refused (reason not_post_quantum) and counted. False
	// (the default) accepts the classical groups a partner without ML-KEM
	// needs.
	RequirePostQuantum bool `yaml:"require_post_quantum,omitempty"`
}

// DefaultIdentityMaxAge is identity_max_age when the file does not set it.
const DefaultIdentityMaxAge = 365 * 24 * time.Hour

// LogFile sets the operational log.
type LogFile struct {
	// Level is trace, debug, info, warn or error. Empty means info.
	Level string `yaml:"level,omitempty"`
	// Format is json or console. Empty means console when the log goes to
	// a terminal, JSON otherwise (a file, journald, a container runtime).
	Format string `yaml:"format,omitempty"`
}

// TunnelFile tunes the tunnel; every zero value means the documented default.
type TunnelFile struct {
	Suite           string   `yaml:"suite,omitempty"`            // aes-256-gcm (default) or chacha20-poly1305
	KeepAlive       Duration `yaml:"keepalive,omitempty"`        // default 5s
	IdleTimeout     Duration `yaml:"idle_timeout,omitempty"`     // default 30s
	ConnectTimeout  Duration `yaml:"connect_timeout,omitempty"`  // default 5s: a new local connection waits this long for a tunnel
	DialTimeout     Duration `yaml:"dial_timeout,omitempty"`     // default 5s: the upstream dial
	ShutdownTimeout Duration `yaml:"shutdown_timeout,omitempty"` // default 30s: drain on SIGTERM
	// CountConnectionDrops counts undecryptable packets of established
	// tunnels too (dyad.quic.packets_dropped); costs ~18% of bulk throughput.
	CountConnectionDrops bool `yaml:"count_connection_drops,omitempty"`
	// Dark keeps the QUIC port silent to anyone without this daemon's
	// public key (default true); partners' daemons must be dyad too.
	Dark *bool `yaml:"dark,omitempty"`
	// HandshakesPerSecond (per source address, default 10), MaxHalfOpen
	// (default 64) and MaxTunnels (default 256) bound handshakes.
	HandshakesPerSecond Number `yaml:"handshakes_per_second,omitempty"`
	MaxHalfOpen         Number `yaml:"max_half_open,omitempty"`
	MaxTunnels          Number `yaml:"max_tunnels,omitempty"`
	// MaxConnectionsPerPeer bounds the connections one peer key holds with
	// this daemon, replaced ones included (default 8).
	MaxConnectionsPerPeer Number `yaml:"max_connections_per_peer,omitempty"`
	// Connections is how many QUIC connections this daemon dials to each
	// peer with an endpoint (default 3, at most 16; peers[].connections
	// overrides it). The peer's max_connections_per_peer must allow it,
	// times the instances sharing this identity (README, "Several
	// connections per peer").
	Connections Number `yaml:"connections,omitempty"`
	// Limits are the per-peer defaults (README, "Limits").
	Limits LimitsFile `yaml:"limits,omitempty"`
	// TCPListen opens the TCP fallback's listener: true for listen's
	// address and port on TCP, or a host:port of its own. Off by default:
	// unlike the dark QUIC port, a TCP port answers every SYN (README,
	// "TCP fallback"). A change needs a restart.
	TCPListen TCPListen `yaml:"tcp_listen,omitempty"`
}

// TCPListen is tunnel.tcp_listen as written: false (the default), true,
// or a host:port. Same is true for "listen's address, on TCP".
type TCPListen struct {
	Same bool
	Addr string
}

// UnmarshalYAML reads a boolean or an address.
func (t *TCPListen) UnmarshalYAML(n *yaml.Node) error {
	var b bool
	if n.Tag == "!!bool" && n.Decode(&b) == nil {
		*t = TCPListen{Same: b}
		return nil
	}
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		return &valueError{n.Line, n.Column, fmt.Sprintf("%q is not true, false or host:port", n.Value)}
	}
	*t = TCPListen{Addr: n.Value}
	return nil
}

// MarshalYAML writes it back as written.
func (t TCPListen) MarshalYAML() (any, error) {
	if t.Addr != "" {
		return t.Addr, nil
	}
	return t.Same, nil
}

// IsZero reports the default (off), for omitempty.
func (t TCPListen) IsZero() bool { return !t.Same && t.Addr == "" }

// address is the TCP address to listen on ("" for none).
func (t TCPListen) address(listen string) string {
	if t.Addr != "" {
		return t.Addr
	}
	if t.Same {
		return listen
	}
	return ""
}

// LimitsFile is a set of limits as written; every field may be omitted
// (inherit) or say "unlimited".
type LimitsFile struct {
	StreamsPerSecond Number   `yaml:"streams_per_second,omitempty"`
	StreamBurst      Number   `yaml:"stream_burst,omitempty"`
	MaxStreams       Number   `yaml:"max_streams,omitempty"`
	BytesPerSecond   Bytes    `yaml:"bytes_per_second,omitempty"`
	DialTimeout      Duration `yaml:"dial_timeout,omitempty"`
	IdleTimeout      Duration `yaml:"idle_timeout,omitempty"`
	MaxLifetime      Duration `yaml:"max_lifetime,omitempty"`
}

func (l LimitsFile) tunnel() tunnel.Limits {
	return tunnel.Limits{
		StreamsPerSecond: float64(l.StreamsPerSecond), StreamBurst: int(l.StreamBurst), MaxStreams: int(l.MaxStreams),
		BytesPerSecond: int64(l.BytesPerSecond), DialTimeout: time.Duration(l.DialTimeout),
		IdleTimeout: time.Duration(l.IdleTimeout), MaxLifetime: time.Duration(l.MaxLifetime),
	}
}

// unlimited is how the file says "no limit"; it is stored as -1.
const unlimited = "unlimited"

// Number is a non-negative number or "unlimited".
type Number float64

// UnmarshalYAML parses a number or "unlimited".
func (v *Number) UnmarshalYAML(n *yaml.Node) error {
	if n.Value == unlimited {
		*v = -1
		return nil
	}
	f, err := strconv.ParseFloat(n.Value, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return &valueError{n.Line, n.Column, fmt.Sprintf("%q is not a non-negative number or %q", n.Value, unlimited)}
	}
	*v = Number(f)
	return nil
}

// Bytes is a byte count such as 1048576, 512KiB, 10MiB or 1GiB, or
// "unlimited".
type Bytes int64

// MarshalYAML writes "unlimited" back as such.
func (v Number) MarshalYAML() (any, error) {
	if v < 0 {
		return unlimited, nil
	}
	return float64(v), nil
}

// MarshalYAML writes "unlimited" back as such.
func (v Bytes) MarshalYAML() (any, error) {
	if v < 0 {
		return unlimited, nil
	}
	return int64(v), nil
}

// valueError is a scalar the file's types refuse, with its place; ParseConfig
// names the field it belongs to.
type valueError struct {
	line, column int
	msg          string
}

func (e *valueError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

// fieldAt returns the path (peers[0].limits.max_streams) of the value at
// line and column, or "".
func fieldAt(n *yaml.Node, line, column int, path string) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if f := fieldAt(c, line, column, path); f != "" {
				return f
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			if v := n.Content[i+1]; v.Line == line && v.Column == column {
				return p
			}
			if f := fieldAt(n.Content[i+1], line, column, p); f != "" {
				return f
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if c.Line == line && c.Column == column {
				return p
			}
			if f := fieldAt(c, line, column, p); f != "" {
				return f
			}
		}
	}
	return ""
}

// UnmarshalYAML parses a byte count.
func (v *Bytes) UnmarshalYAML(n *yaml.Node) error {
	if n.Value == unlimited {
		*v = -1
		return nil
	}
	num, mult := n.Value, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	i, err := strconv.ParseInt(num, 10, 64)
	if err != nil || i < 0 || i > math.MaxInt64/mult {
		return &valueError{n.Line, n.Column, fmt.Sprintf("%q is not a byte count like 1048576, 512KiB or 10MiB, or %q", n.Value, unlimited)}
	}
	*v = Bytes(i * mult)
	return nil
}

// PeerFile is a paired daemon.
type PeerFile struct {
	Name      string `yaml:"name"`
	PublicKey string `yaml:"public_key"`
	Endpoint  string `yaml:"endpoint,omitempty"`
	// Country (ISO 3166-1 alpha-2) and Critical describe the partner link
	// for the DORA report (register of information, incident criteria).
	Country  string `yaml:"country,omitempty"`
	Critical bool   `yaml:"critical_or_important_function,omitempty"`
	// Limits override tunnel.limits for this peer.
	Limits LimitsFile `yaml:"limits,omitempty"`
	// Connections overrides tunnel.connections for this peer.
	Connections Number `yaml:"connections,omitempty"`
	// Transport is quic, tcp or auto (default): auto dials QUIC and falls
	// back to TLS over TCP (the peer needs tunnel.tcp_listen) when QUIC
	// gets no answer within FallbackAfter (default 2s), returning to QUIC
	// once it answers (README, "TCP fallback").
	Transport     string   `yaml:"transport,omitempty"`
	FallbackAfter Duration `yaml:"fallback_after,omitempty"`
	// Proxy is an http:// proxy the TCP transport goes through with
	// CONNECT; credentials come from DYAD_PROXY_USER and
	// DYAD_PROXY_PASSWORD, never from this file.
	Proxy string `yaml:"proxy,omitempty"`
}

// ServiceFile is an upstream this site exports.
type ServiceFile struct {
	Name     string `yaml:"name"`
	Upstream string `yaml:"upstream"`
	// UpstreamTLS makes the exporter dial the upstream over verified TLS;
	// absent means plain TCP.
	UpstreamTLS *UpstreamTLSFile `yaml:"upstream_tls,omitempty"`
	Allow       []string         `yaml:"allow,omitempty"`
	// Critical tags a service supporting a critical or important function
	// (DORA), for the report.
	Critical bool `yaml:"critical_or_important_function,omitempty"`
	// Limits bound the service's streams from all peers together.
	Limits LimitsFile `yaml:"limits,omitempty"`
	// API guards the service's HTTP/1.1 requests with an OpenAPI contract
	// (README, "API guard"); absent means the stream's bytes pass as they
	// are.
	API *APIFile `yaml:"api,omitempty"`
}

// APIFile is a service's API guard as written.
type APIFile struct {
	// Spec is the OpenAPI 3.0 or 3.1 document, relative to the
	// configuration file's folder.
	Spec string `yaml:"spec"`
	// Operations lists per peer the operations it may call: operationIds
	// (or "METHOD /template" for operations without one), "tag:NAME" or
	// "*". A peer left out may call every operation.
	Operations map[string][]string `yaml:"operations,omitempty"`
	// Validate lists what is checked against the spec: "request"
	// (parameters, headers and body schemas). Empty means no validation:
	// the guard still matches, allows and rate-limits.
	Validate []string `yaml:"validate,omitempty,flow"`
	// Limits rate-limit each peer's calls, per operation: keys are
	// operationIds, "tag:NAME" or "*"; the most specific key wins
	// (operationId, then tag, then "*").
	Limits map[string]APILimitsFile `yaml:"limits,omitempty"`
	// MaxBody bounds a request body the guard buffers to validate against
	// its schema (default 1MiB; "unlimited" is refused).
	MaxBody Bytes `yaml:"max_body,omitempty"`
	// Host is the Host header every request the guard forwards carries, in
	// place of the partner's (a host, optionally ":port"): for an upstream
	// that routes on Host (an ingress, nginx server blocks, a shared
	// gateway), where the partner's Host would choose another
	// application. Empty means the partner's Host is forwarded as sent.
	Host string `yaml:"host,omitempty"`
}

// APILimitsFile is one operation's per-peer rate limit, named like the
// stream limits (streams_per_second, stream_burst).
type APILimitsFile struct {
	RequestsPerSecond Number `yaml:"requests_per_second"`
	// RequestBurst is the bucket's size; zero means requests_per_second
	// rounded up (at least 1).
	RequestBurst Number `yaml:"request_burst,omitempty"`
}

// UpstreamTLSFile is how the exporter speaks TLS to a service's upstream
// (README, "HTTPS upstreams"). Verification is always on: there is no key
// to turn it off. Paths are relative to the configuration file's folder.
type UpstreamTLSFile struct {
	// ServerName is the name the upstream's certificate must carry; empty
	// means the host of upstream (an IP address is then checked against the
	// certificate's IP addresses).
	ServerName string `yaml:"server_name,omitempty"`
	// CAFile holds the PEM certificates trusted to sign the upstream's
	// certificate; empty means the system's roots.
	CAFile string `yaml:"ca_file,omitempty"`
	// CertFile and KeyFile are the client certificate (PEM, chain after the
	// leaf) and its key for an upstream that asks for one (mTLS); both or
	// neither. The key file must not be readable by others (group read is
	// allowed, as Kubernetes mounts Secrets 0440).
	CertFile string `yaml:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty"`
}

// ForwardConfig is a local port carried to a peer's service.
type ForwardConfig struct {
	Listen  string `yaml:"listen"`
	Peer    string `yaml:"peer"`
	Service string `yaml:"service"`
	// AllowFrom lists the source ranges (CIDR, or single addresses) that
	// may connect; empty means any source that can reach Listen.
	AllowFrom []string `yaml:"allow_from,omitempty,flow"`
	// MaxConnections caps the forward's connections at once (default
	// 1024; "unlimited" for none).
	MaxConnections Number `yaml:"max_connections,omitempty"`
	// API checks the partner's HTTP/1.1 responses against its OpenAPI
	// contract (README, "API guard: responses"); absent means the bytes
	// pass as they are.
	API *ForwardAPIFile `yaml:"api,omitempty"`
}

// ForwardAPIFile is a forward's response check as written.
type ForwardAPIFile struct {
	// Spec is the partner's OpenAPI 3.0 or 3.1 document, relative to the
	// configuration file's folder.
	Spec string `yaml:"spec"`
	// Validate lists what is checked: "response" (status, headers, body
	// schema). Required: it is the only thing a forward checks.
	Validate []string `yaml:"validate,flow"`
	// Block replaces a response that breaks the contract with a 502
	// application/problem+json; false (the default) only audits it.
	Block bool `yaml:"block,omitempty"`
	// MaxBody bounds a response body buffered to validate against its
	// schema (default 1MiB); a longer one streams on unchecked, counted.
	MaxBody Bytes `yaml:"max_body,omitempty"`
}

// Duration is a time.Duration written as "30s", "1m30s".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string, or a whole number of days
// such as 365d ("unlimited" where a limit takes it).
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Value == unlimited {
		*d = -1
		return nil
	}
	if days, ok := strings.CutSuffix(n.Value, "d"); ok {
		if v, err := strconv.ParseUint(days, 10, 16); err == nil {
			*d = Duration(time.Duration(v) * 24 * time.Hour)
			return nil
		}
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return &valueError{n.Line, n.Column, fmt.Sprintf("%q is not a duration like 30s or 1m", n.Value)}
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back as a string.
func (d Duration) MarshalYAML() (any, error) {
	if d < 0 {
		return unlimited, nil
	}
	return time.Duration(d).String(), nil
}

// Config is a loaded, validated configuration.
type Config struct {
	Path string
	// File is the configuration in force: the YAML file as written, with
	// the state directory's enrolled peers added (their allow-list entries
	// and forwards too) and the peers of revoked keys removed.
	File File
	// Written is the YAML file as written.
	Written File
	// State is what the state directory held when the file was loaded.
	State *state.State
	// Notes are warnings about the merge, for dyad check and the start
	// log: a revoked key the YAML still lists, an enrolled peer's service
	// that is gone.
	Notes           []string
	Site            string
	IdentityPath    string
	LogLevel        zerolog.Level
	Tunnel          tunnel.Config
	ShutdownTimeout time.Duration
	Audit           AuditConfig
	SHA256          string // of the file as read, hex
	StateDir        string // resolved state_dir
	ControlSocket   string // resolved control.socket
	// APIs are the API guards' policies by service name (spec loaded and
	// resolved); a service without api: has none.
	APIs map[string]*apiguard.Policy
	// ForwardAPIs are the forwards' response checks by ForwardConfig.key;
	// a forward without api: has none.
	ForwardAPIs map[string]*apiguard.ResponsePolicy
	// IdentityMaxAge is identity_max_age with its default; negative means
	// never warn.
	IdentityMaxAge time.Duration
}

// ConfigError is a problem in the configuration file, with its place.
type ConfigError struct {
	Path  string // the file
	Line  int    // 0 when unknown
	Field string // e.g. peers[1].public_key
	Err   error
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	b.WriteString(": " + e.Err.Error())
	return b.String()
}

func (e *ConfigError) Unwrap() error { return e.Err }

// LoadConfig reads and validates the configuration file at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, data)
}

// ParseConfig validates data as the configuration file at path (used to
// resolve the identity path).
func ParseConfig(path string, data []byte) (*Config, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var root yaml.Node
	if err := dec.Decode(&f); err != nil {
		var ve *valueError
		if errors.As(err, &ve) && yaml.Unmarshal(data, &root) == nil {
			return nil, &ConfigError{Path: path, Line: ve.line, Field: fieldAt(&root, ve.line, ve.column, ""), Err: errors.New(ve.msg)}
		}
		return nil, explainYAML(path, data, err)
	}
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &ConfigError{Path: path, Err: err}
	}
	sum := sha256.Sum256(data)
	return build(path, f, &root, hex.EncodeToString(sum[:]))
}

// build validates f, the file at path as written, with the state
// directory's peers merged in (stateconfig.go). root is the file's YAML
// tree for line numbers (nil: none).
func build(path string, f File, root *yaml.Node, sum string) (*Config, error) {
	v := validator{path: path, root: root}
	written := f
	merged, st, notes := v.mergeState(f)
	c := v.check(merged)
	v.checkAudit(merged.Audit, c)
	if v.err != nil {
		return nil, v.err
	}
	c.Written, c.State, c.Notes = written, st, notes
	c.SHA256 = sum
	return c, nil
}

// yamlError drops the decoder's "yaml: unmarshal errors:" preamble.
func yamlError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return errors.New(strings.Join(te.Errors, "; "))
	}
	if errors.Is(err, io.EOF) {
		return errors.New("empty configuration")
	}
	return err
}

// validator checks a File and keeps the first problem with its line.
type validator struct {
	path string
	root *yaml.Node
	err  error
}

func (v *validator) fail(err error, path ...any) {
	if v.err != nil {
		return
	}
	field := ""
	for _, p := range path {
		switch p := p.(type) {
		case string:
			if field != "" {
				field += "."
			}
			field += p
		case int:
			field += fmt.Sprintf("[%d]", p)
		}
	}
	v.err = &ConfigError{Path: v.path, Line: lineOf(v.root, path...), Field: field, Err: err}
}

// lineOf finds the line of the node at path (map keys and list indexes),
// or of its deepest ancestor that exists.
func lineOf(n *yaml.Node, path ...any) int {
	if n == nil {
		return 0
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, p := range path {
		var next *yaml.Node
		switch p := p.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == p {
						next = n.Content[i+1]
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && p < len(n.Content) {
				next = n.Content[p]
			}
		}
		if next == nil {
			return line
		}
		n, line = next, next.Line
	}
	return line
}

// stateDir resolves f's state_dir.
func (v *validator) stateDir(f File) string { return v.resolve(f.StateDir, "state") }

// resolve makes a path from the file absolute against the file's folder;
// empty means def.
func (v *validator) resolve(p, def string) string {
	if p == "" {
		p = def
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(v.path), p)
	}
	return filepath.Clean(p)
}

func validSite(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validCountry(s string) bool {
	return len(s) == 2 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z'
}

func hostPort(s string) error {
	if s == "" {
		return errors.New("required: host:port")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	if port == "" || host == "" && !strings.HasPrefix(s, ":") {
		return fmt.Errorf("%q lacks a host or port", s)
	}
	return nil
}

// connections reads a connection count: a whole number in 0..16, zero
// meaning the default.
func (v *validator) connections(n Number, path ...any) int {
	if n != Number(int(n)) || n < 0 || n > tunnel.MaxDialConnections {
		v.fail(fmt.Errorf("%v is not a whole number from 1 to %d", n, tunnel.MaxDialConnections), path...)
		return 0
	}
	return int(n)
}

// checkLimits names a limit that cannot be met.
func (v *validator) checkLimits(l LimitsFile, path ...any) {
	whole := func(n Number, name string) {
		if n != Number(int(n)) {
			v.fail(fmt.Errorf("%v is not a whole number", n), append(path, name)...)
		}
	}
	whole(l.StreamBurst, "stream_burst")
	whole(l.MaxStreams, "max_streams")
	// QUIC caps the streams of one connection at MaxStreamsCap; a peer
	// reaches connections × that.
	if ceiling := tunnel.MaxStreamsCap * tunnel.MaxDialConnections; l.MaxStreams > Number(ceiling) {
		v.fail(fmt.Errorf("%v is above %d connections × the QUIC stream cap %d", l.MaxStreams, tunnel.MaxDialConnections, tunnel.MaxStreamsCap), append(path, "max_streams")...)
	}
	if l.BytesPerSecond > 0 && l.BytesPerSecond < 1024 {
		v.fail(fmt.Errorf("%d is below the 1KiB floor", l.BytesPerSecond), append(path, "bytes_per_second")...)
	}
}

// parsePrefix reads a CIDR range or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR range like 10.0.0.0/8 or an address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (v *validator) check(f File) *Config {
	c := &Config{Path: v.path, File: f, Site: f.Site}
	if c.Site == "" {
		c.Site, _ = os.Hostname()
	}
	if !validSite(c.Site) {
		v.fail(fmt.Errorf("%q: a site name is 1-64 of A-Z a-z 0-9 . _ - (it names the audit journal's checkpoints)", c.Site), "site")
	}
	if f.Identity == "" {
		v.fail(errors.New("required: the key file made by `dyad keygen`"), "identity")
	}
	c.IdentityPath = f.Identity
	if f.Identity != "" && !filepath.IsAbs(f.Identity) {
		c.IdentityPath = filepath.Join(filepath.Dir(v.path), f.Identity)
	}
	c.StateDir = v.stateDir(f)
	c.ControlSocket = filepath.Join(c.StateDir, "control.sock")
	if f.Control.Socket != "" {
		c.ControlSocket = v.resolve(f.Control.Socket, "")
	}
	// sun_path holds 108 bytes with the terminating NUL.
	if len(c.ControlSocket) > 107 {
		v.fail(fmt.Errorf("socket path %s is %d bytes, a unix socket's is at most 107: set control.socket to a shorter path", c.ControlSocket, len(c.ControlSocket)), "control", "socket")
	}
	if f.Listen == "" {
		v.fail(errors.New("required: the QUIC address, host:port"), "listen")
	} else if err := hostPort(f.Listen); err != nil {
		v.fail(err, "listen")
	}
	if f.Admin != "" {
		if err := hostPort(f.Admin); err != nil {
			v.fail(err, "admin")
		}
	}
	if a := f.Tunnel.TCPListen.Addr; a != "" {
		if err := hostPort(a); err != nil {
			v.fail(err, "tunnel", "tcp_listen")
		}
	}
	c.LogLevel = zerolog.InfoLevel
	if f.Log.Level != "" {
		lvl, err := zerolog.ParseLevel(f.Log.Level)
		if err != nil || f.Log.Level != strings.ToLower(f.Log.Level) {
			v.fail(fmt.Errorf("%q is not trace, debug, info, warn or error", f.Log.Level), "log", "level")
		}
		c.LogLevel = lvl
	}
	if f.Log.Format != "" && f.Log.Format != "json" && f.Log.Format != "console" {
		v.fail(fmt.Errorf("%q is not json or console", f.Log.Format), "log", "format")
	}

	t := &c.Tunnel
	if f.Tunnel.Suite != "" {
		s, err := codec.ParseSuite(f.Tunnel.Suite)
		if err == nil && f.FIPS && s != codec.SuiteAES256GCM {
			// FIPS mode seals with the approved suite only (tested by
			// TestFIPSConfig).
			err = fmt.Errorf("%v is not FIPS 140-3 approved; fips: true wants aes-256-gcm", s)
		} else if err == nil && !s.Available() {
			err = fmt.Errorf("%v is not available in FIPS 140-3 mode", s)
		}
		if err != nil {
			v.fail(err, "tunnel", "suite")
		}
		t.Suite = s
	}
	// A process in FIPS 140-3 mode keeps to the approved TLS groups even
	// without fips: true; fips: true also requires the mode (checkFIPS).
	t.FIPS, t.RequirePostQuantum = f.FIPS || fips140.Enabled(), f.TLS.RequirePostQuantum
	c.IdentityMaxAge = time.Duration(f.IdentityMaxAge)
	if c.IdentityMaxAge == 0 {
		c.IdentityMaxAge = DefaultIdentityMaxAge
	}
	t.KeepAlive, t.IdleTimeout = time.Duration(f.Tunnel.KeepAlive), time.Duration(f.Tunnel.IdleTimeout)
	t.ConnectTimeout, t.DialTimeout = time.Duration(f.Tunnel.ConnectTimeout), time.Duration(f.Tunnel.DialTimeout)
	c.ShutdownTimeout = time.Duration(f.Tunnel.ShutdownTimeout)
	t.CountConnectionDrops = f.Tunnel.CountConnectionDrops
	t.DisableDark = f.Tunnel.Dark != nil && !*f.Tunnel.Dark
	t.HandshakesPerSecond = float64(f.Tunnel.HandshakesPerSecond)
	t.MaxHalfOpen, t.MaxTunnels = int(f.Tunnel.MaxHalfOpen), int(f.Tunnel.MaxTunnels)
	t.MaxConnectionsPerPeer = int(f.Tunnel.MaxConnectionsPerPeer)
	t.Connections = v.connections(f.Tunnel.Connections, "tunnel", "connections")
	t.Limits = f.Tunnel.Limits.tunnel()
	v.checkLimits(f.Tunnel.Limits, "tunnel", "limits")
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if t.KeepAlive != 0 && t.IdleTimeout != 0 && t.KeepAlive >= t.IdleTimeout {
		v.fail(fmt.Errorf("keepalive %v must be shorter than idle_timeout %v", t.KeepAlive, t.IdleTimeout), "tunnel", "keepalive")
	}

	peers := map[string]bool{}
	signs, dhs := map[[32]byte]string{}, map[[32]byte]string{} // key halves seen → peer name
	for i, p := range f.Peers {
		if p.Name == "" {
			v.fail(errors.New("required"), "peers", i, "name")
		} else if peers[p.Name] {
			v.fail(fmt.Errorf("peer %q is listed twice", p.Name), "peers", i, "name")
		}
		peers[p.Name] = true
		key, err := identity.ParsePublicKey(p.PublicKey)
		if p.PublicKey == "" {
			v.fail(errors.New("required: the partner's public key (dyad2:…), as its `dyad keygen` or `dyad check` printed it"), "peers", i, "public_key")
		} else if err != nil {
			v.fail(err, "peers", i, "public_key")
		} else if other, dup := signs[key.Sign]; dup {
			// Named at the second peer's line, as tunnel.Config.Validate
			// would refuse it without one (TestConfigErrorsNameLineAndField).
			v.fail(fmt.Errorf("same Ed25519 key as peer %q", other), "peers", i, "public_key")
		} else if other, dup := dhs[key.DH]; dup {
			v.fail(fmt.Errorf("same X25519 key as peer %q", other), "peers", i, "public_key")
		} else {
			signs[key.Sign], dhs[key.DH] = p.Name, p.Name
		}
		if p.Endpoint != "" {
			if err := hostPort(p.Endpoint); err != nil {
				v.fail(err, "peers", i, "endpoint")
			}
		}
		if p.Country != "" && !validCountry(p.Country) {
			v.fail(fmt.Errorf("%q is not an ISO 3166-1 alpha-2 code such as DE or FR", p.Country), "peers", i, "country")
		}
		v.checkLimits(p.Limits, "peers", i, "limits")
		tp := tunnel.Peer{Name: p.Name, Key: key, Endpoint: p.Endpoint, Limits: p.Limits.tunnel(),
			Connections: v.connections(p.Connections, "peers", i, "connections"),
			Transport:   p.Transport, FallbackAfter: time.Duration(p.FallbackAfter), Proxy: p.Proxy}
		switch p.Transport {
		case "", tunnel.TransportQUIC, tunnel.TransportTCP, tunnel.TransportAuto:
		default:
			v.fail(fmt.Errorf("%q is not quic, tcp or auto", p.Transport), "peers", i, "transport")
		}
		if p.FallbackAfter < 0 {
			v.fail(errors.New("unlimited is not a fallback delay"), "peers", i, "fallback_after")
		}
		if p.Proxy != "" {
			if err := tp.ValidateProxy(); err != nil {
				v.fail(err, "peers", i, "proxy")
			}
		}
		t.Peers = append(t.Peers, tp)
	}
	services := map[string]bool{}
	for i, s := range f.Services {
		switch {
		case s.Name == "":
			v.fail(errors.New("required"), "services", i, "name")
		case !tunnel.ValidServiceName(s.Name):
			v.fail(fmt.Errorf("%q: a service name is 1-64 of a-z 0-9 . _ -", s.Name), "services", i, "name")
		case services[s.Name]:
			v.fail(fmt.Errorf("service %q is listed twice", s.Name), "services", i, "name")
		}
		services[s.Name] = true
		if err := hostPort(s.Upstream); err != nil {
			v.fail(err, "services", i, "upstream")
		}
		for j, a := range s.Allow {
			if !peers[a] {
				v.fail(fmt.Errorf("%q is not a configured peer", a), "services", i, "allow", j)
			}
		}
		v.checkLimits(s.Limits, "services", i, "limits")
		var tc *tls.Config
		if s.UpstreamTLS != nil {
			tc = v.upstreamTLS(*s.UpstreamTLS, s.Name, s.Upstream, "services", i, "upstream_tls")
		}
		if s.API != nil {
			allowed := map[string]bool{}
			for _, a := range s.Allow {
				allowed[a] = peers[a]
			}
			if p := v.api(*s.API, s.Name, allowed, "services", i, "api"); p != nil {
				if c.APIs == nil {
					c.APIs = map[string]*apiguard.Policy{}
				}
				c.APIs[s.Name] = p
			}
		}
		t.Services = append(t.Services, tunnel.Service{Name: s.Name, Upstream: s.Upstream, Allow: s.Allow, Limits: s.Limits.tunnel(), TLS: tc})
	}
	listens := map[string]bool{}
	for i, fw := range f.Forwards {
		if err := hostPort(fw.Listen); err != nil {
			v.fail(err, "forwards", i, "listen")
		} else if listens[fw.Listen] {
			v.fail(fmt.Errorf("%s is used by another forward", fw.Listen), "forwards", i, "listen")
		}
		listens[fw.Listen] = true
		if fw.Peer == "" {
			v.fail(errors.New("required: the peer that exports the service"), "forwards", i, "peer")
		} else if !peers[fw.Peer] {
			v.fail(fmt.Errorf("%q is not a configured peer", fw.Peer), "forwards", i, "peer")
		}
		if fw.Service == "" {
			v.fail(errors.New("required: the service's name at the peer"), "forwards", i, "service")
		} else if !tunnel.ValidServiceName(fw.Service) {
			v.fail(fmt.Errorf("%q: a service name is 1-64 of a-z 0-9 . _ -", fw.Service), "forwards", i, "service")
		}
		for j, a := range fw.AllowFrom {
			if _, err := parsePrefix(a); err != nil {
				v.fail(err, "forwards", i, "allow_from", j)
			}
		}
		if m := fw.MaxConnections; m != Number(int(m)) {
			v.fail(fmt.Errorf("%v is not a whole number", m), "forwards", i, "max_connections")
		}
		if fw.API != nil {
			if p := v.forwardAPI(*fw.API, fw, "forwards", i, "api"); p != nil {
				if c.ForwardAPIs == nil {
					c.ForwardAPIs = map[string]*apiguard.ResponsePolicy{}
				}
				c.ForwardAPIs[fw.key()] = p
			}
		}
	}
	if v.err == nil {
		if err := t.Validate(); err != nil {
			v.fail(err)
		}
	}
	return c
}

// api loads a service's spec (relative to the configuration file) and
// resolves its operations and limits into a policy; nil after a failure.
// allowed are the service's allowed peers: operations names no other.
func (v *validator) api(a APIFile, service string, allowed map[string]bool, path ...any) *apiguard.Policy {
	at := func(more ...any) []any { return append(append([]any{}, path...), more...) }
	if a.Spec == "" {
		v.fail(errors.New("required: the OpenAPI 3.0 or 3.1 document, relative to this file"), at("spec")...)
		return nil
	}
	file := a.Spec
	if !filepath.IsAbs(file) {
		file = filepath.Join(filepath.Dir(v.path), file)
	}
	spec, err := apiguard.LoadSpec(file)
	if err != nil {
		// `dyad check` and a reload name the file and kin-openapi's own
		// error (TestCheckMalformedSpec).
		v.fail(err, at("spec")...)
		return nil
	}
	p := &apiguard.Policy{Service: service, Spec: spec, MaxBody: int64(a.MaxBody), Host: a.Host}
	if err := checkHost(a.Host); err != nil {
		v.fail(fmt.Errorf("service %s: %q: %w", service, a.Host, err), at("host")...)
	}
	if a.MaxBody < 0 {
		v.fail(errors.New("unlimited is not allowed: a validated body is buffered, so it needs a bound"), at("max_body")...)
	}
	for j, w := range a.Validate {
		switch w {
		case "request":
			p.ValidateRequest = true
		default:
			v.fail(fmt.Errorf("%q is not request", w), at("validate", j)...)
		}
	}
	for _, peer := range sortedKeys(a.Operations) {
		if !allowed[peer] {
			v.fail(fmt.Errorf("%q is not a configured peer on this service's allow list", peer), at("operations", peer)...)
			continue
		}
		ops := map[*apiguard.Operation]bool{}
		for j, ref := range a.Operations[peer] {
			resolved, err := spec.Resolve(ref)
			if err != nil {
				v.fail(err, at("operations", peer, j)...)
			}
			for _, o := range resolved {
				ops[o] = true
			}
		}
		if p.Allowed == nil {
			p.Allowed = map[string]map[*apiguard.Operation]bool{}
		}
		p.Allowed[peer] = ops
	}
	// The most specific key wins: "*", then tags, then operationIds.
	rank := func(k string) int {
		switch {
		case k == "*":
			return 0
		case strings.HasPrefix(k, "tag:"):
			return 1
		}
		return 2
	}
	keys := sortedKeys(a.Limits)
	sort.SliceStable(keys, func(i, j int) bool { return rank(keys[i]) < rank(keys[j]) })
	for _, k := range keys {
		l := a.Limits[k]
		if l.RequestsPerSecond <= 0 {
			v.fail(errors.New("required: a rate above 0 (leave the operation out for no limit)"), at("limits", k, "requests_per_second")...)
			continue
		}
		if l.RequestBurst < 0 || l.RequestBurst != Number(int(l.RequestBurst)) {
			v.fail(fmt.Errorf("%v is not a whole number", l.RequestBurst), at("limits", k, "request_burst")...)
			continue
		}
		resolved, err := spec.Resolve(k)
		if err != nil {
			v.fail(err, at("limits", k)...)
			continue
		}
		if p.Limits == nil {
			p.Limits = map[*apiguard.Operation]apiguard.Rate{}
		}
		for _, o := range resolved {
			p.Limits[o] = apiguard.Rate{PerSecond: float64(l.RequestsPerSecond), Burst: int(l.RequestBurst)}
		}
	}
	return p
}

// checkHost says why h is not a Host header value for api.host: a DNS
// name, an IPv4 address or a bracketed IPv6 address, optionally ":port".
// A URL's other parts (scheme, userinfo, path, query) are refused, not
// cut off: the operator meant something else. Empty is fine (unset).
func checkHost(h string) error {
	if h == "" {
		return nil
	}
	if strings.Contains(h, "://") {
		return errors.New("a host, not a URL: leave the scheme out")
	}
	if i := strings.IndexAny(h, "/?#@ \t\r\n"); i >= 0 {
		what := map[byte]string{'/': "a path", '?': "a query", '#': "a fragment", '@': "userinfo"}[h[i]]
		if what == "" {
			what = "a space"
		}
		return fmt.Errorf("a host, optionally :port, without %s", what)
	}
	name, port := h, ""
	if strings.HasPrefix(h, "[") || strings.Count(h, ":") == 1 {
		if end := strings.LastIndexByte(h, ']'); strings.LastIndexByte(h, ':') > end {
			var err error
			if name, port, err = net.SplitHostPort(h); err != nil {
				return errors.New("a host, optionally :port")
			}
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
				return fmt.Errorf("port %q is not a number from 1 to 65535", port)
			}
		} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			name = h[1 : len(h)-1]
		}
		if strings.HasPrefix(h, "[") {
			if ip, err := netip.ParseAddr(name); err != nil || !ip.Is6() {
				return errors.New("brackets hold an IPv6 address")
			}
			return nil
		}
	} else if strings.Contains(h, ":") {
		return errors.New("an IPv6 address goes in brackets: [fd00::1]:443")
	}
	if name == "" {
		return errors.New("a host is required before :port")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return fmt.Errorf("%q is not a host name's letter, digit, '-', '.' or '_'", c)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
