// Package daemon turns a YAML configuration into a running dyad: it loads
// and validates the file, wires the identity, the tunnel node, the forward
// listeners and the admin endpoints, and runs the lifecycle (SIGHUP reload,
// SIGTERM drain).
package daemon

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.yaml.in/yaml/v3"

	"github.com/dyad-tunnel/dyad/codec"
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
}

// LogFile sets the operational log.
type LogFile struct {
	// Level is trace, debug, info, warn or error. Empty means info.
	Level string `yaml:"level,omitempty"`
	// Format is json or console. Empty means json.
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
	Name     string   `yaml:"name"`
	Upstream string   `yaml:"upstream"`
	Allow    []string `yaml:"allow,omitempty"`
	// Critical tags a service supporting a critical or important function
	// (DORA), for the report.
	Critical bool `yaml:"critical_or_important_function,omitempty"`
	// Limits bound the service's streams from all peers together.
	Limits LimitsFile `yaml:"limits,omitempty"`
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
}

// Duration is a time.Duration written as "30s", "1m30s".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string ("unlimited" where a limit
// takes it).
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Value == unlimited {
		*d = -1
		return nil
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
	Path            string
	File            File
	Site            string
	IdentityPath    string
	LogLevel        zerolog.Level
	Tunnel          tunnel.Config
	ShutdownTimeout time.Duration
	Audit           AuditConfig
	SHA256          string // of the file as read, hex
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
		return nil, &ConfigError{Path: path, Err: yamlError(err)}
	}
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &ConfigError{Path: path, Err: err}
	}
	v := validator{path: path, root: &root}
	c := v.check(f)
	v.checkAudit(f.Audit, c)
	if v.err != nil {
		return nil, v.err
	}
	sum := sha256.Sum256(data)
	c.SHA256 = hex.EncodeToString(sum[:])
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
		if err == nil && !s.Available() {
			err = fmt.Errorf("%v is not available in FIPS 140-3 mode", s)
		}
		if err != nil {
			v.fail(err, "tunnel", "suite")
		}
		t.Suite = s
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
		if err != nil {
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
		t.Services = append(t.Services, tunnel.Service{Name: s.Name, Upstream: s.Upstream, Allow: s.Allow, Limits: s.Limits.tunnel()})
	}
	listens := map[string]bool{}
	for i, fw := range f.Forwards {
		if err := hostPort(fw.Listen); err != nil {
			v.fail(err, "forwards", i, "listen")
		} else if listens[fw.Listen] {
			v.fail(fmt.Errorf("%s is used by another forward", fw.Listen), "forwards", i, "listen")
		}
		listens[fw.Listen] = true
		if !peers[fw.Peer] {
			v.fail(fmt.Errorf("%q is not a configured peer", fw.Peer), "forwards", i, "peer")
		}
		if !tunnel.ValidServiceName(fw.Service) {
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
	}
	if v.err == nil {
		if err := t.Validate(); err != nil {
			v.fail(err)
		}
	}
	return c
}
