package tunnel

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// Config is what a Node runs with. The daemon builds it from the YAML file;
// a Node takes a new one on reload (Node.Update).
type Config struct {
	Peers    []Peer
	Services []Service
	// Suite seals the streams this side writes. Zero means AES-256-GCM.
	Suite codec.Suite
	// KeepAlive is the QUIC keepalive period. Zero means 5 s.
	KeepAlive time.Duration
	// IdleTimeout closes a tunnel that hears nothing for this long. Zero
	// means 30 s.
	IdleTimeout time.Duration
	// ConnectTimeout bounds how long a new local connection waits for a
	// tunnel (during an outage) before it is refused. Zero means 5 s.
	ConnectTimeout time.Duration
	// DialTimeout bounds the exporting side's dial of an upstream; the
	// importing side waits this long beyond ConnectTimeout for the peer's
	// answer. Zero means 5 s.
	DialTimeout time.Duration
	// CountConnectionDrops also counts the packets quic-go drops inside
	// established connections (undecryptable, duplicate), through its
	// per-connection tracer. Off by default: that tracer makes quic-go build
	// an event per packet, which costs about 18% of bulk throughput here.
	// Drops below the connections (unknown connection ids, unparsable or
	// unsupported packets) are always counted.
	CountConnectionDrops bool

	// Limits are the per-peer limits (each peer has its own buckets and
	// counts); zero fields mean DefaultLimits. Peer.Limits override them,
	// Service.Limits add per-service limits.
	Limits Limits
	// HandshakesPerSecond bounds new handshakes from one source address
	// (burst: twice as many); above it a source must first prove its
	// address (QUIC Retry), and at twice the rate it is refused. Zero
	// means 10; negative, unlimited.
	HandshakesPerSecond float64
	// MaxHalfOpen bounds handshakes in progress; MaxTunnels bounds
	// tunnels accepted at once (peers that dial us, plus handshakes).
	// Zero means 64 and 256; negative, unlimited.
	MaxHalfOpen int
	MaxTunnels  int
	// MaxConnectionsPerPeer bounds the connections one peer key dialed to
	// us and holds at once, live and replaced ones together (ours to it
	// are bounded by Connections); a connection over it
	// is refused after its handshake, counted and audited, and never takes
	// another peer's place. Zero means 8 (room for the scale-out mode of
	// deploy/README: a few instances sharing one identity, each redialing);
	// negative, unlimited.
	MaxConnectionsPerPeer int
	// Connections is how many QUIC connections this side dials to each peer
	// with an endpoint (Peer.Connections overrides it): each its own TLS
	// session and codec keys, a new stream going to the least loaded. Zero
	// means DefaultConnections; at most MaxDialConnections. A peer of the
	// previous release (dyad/1) gets one. The peer's max_connections_per_peer
	// must leave room for it, times the instances sharing this identity.
	Connections int
	// protos, when set, replaces the ALPNs offered (tests play the
	// previous release with ALPNv1 alone).
	protos []string
	// FIPS runs the node in FIPS 140-3 mode (README, "FIPS 140-3 mode"):
	// New refuses to start unless Go's FIPS 140-3 module is active
	// (crypto/fips140.Enabled) and the suite is AES-256-GCM, and TLS offers
	// and accepts only the groups whose every part is approved
	// (fipsCurves). The listener's TLS configuration is built in New, so a
	// change takes a restart (the daemon refuses it on reload).
	FIPS bool
	// RequirePostQuantum refuses, in both directions, every handshake whose
	// key exchange is not a hybrid ML-KEM group (postQuantum), counted as
	// handshakes_refused and handshakes_not_post_quantum and audited as
	// dyad.peer.auth_refused with reason not_post_quantum.
	RequirePostQuantum bool
	// curves, when set, replaces the TLS groups offered and accepted (tests
	// play a partner without post-quantum key exchange).
	curves []tls.CurveID
	// DisableDark turns the dark listener off: the QUIC port then answers
	// every well-formed handshake, including scanners' (codec/FORMAT.md,
	// "Dark listener").
	DisableDark bool

	// OnPeerKeyRotated, if set, is called with every verified peer
	// rotation before the node pins the new key; an error refuses the
	// announcement (the announcer keeps its old key for that peer). The
	// daemon stores the learned key in its state directory here, so that
	// a restart keeps it. Nil: learned keys live in memory only.
	OnPeerKeyRotated func(KeyRotation) error
	// Handover, read by New only, resumes this node's own rotation after
	// a restart during its overlap (Node.Rotate starts one).
	Handover *Handover
	// Learned, read by New only, are the peers' rotations taken before a
	// restart (OnPeerKeyRotated stored them).
	Learned []KeyRotation
}

// Peer is a paired daemon.
type Peer struct {
	Name string
	Key  identity.PublicKey
	// Endpoint is the peer's QUIC address (host:port) to dial. Empty
	// means the peer dials us (for example because we are behind NAT).
	Endpoint string
	// Limits override Config.Limits for this peer.
	Limits Limits
	// Connections overrides Config.Connections for this peer; zero means
	// Config.Connections.
	Connections int
	// Transport is how we dial the peer: TransportQUIC, TransportTCP
	// (TLS over TCP to the same host:port; the peer needs
	// tunnel.tcp_listen), or TransportAuto: QUIC first, TCP when a QUIC
	// dial gets no answer within FallbackAfter, back to QUIC once it
	// answers (fallback.go). Empty means TransportAuto.
	Transport string
	// FallbackAfter is how long an auto dial waits for QUIC's answer
	// before it tries TCP. Zero means 2 s.
	FallbackAfter time.Duration
	// Proxy, if set, is an http:// proxy the TCP transport goes through
	// with CONNECT (credentials from DYAD_PROXY_USER and
	// DYAD_PROXY_PASSWORD, never logged).
	Proxy string
	// Previous are keys the peer rotated away from, still accepted until
	// their deadline (an identity rotation's overlap): connections they
	// authenticated keep flowing and new ones are admitted; at the
	// deadline they are closed like a removed key's (THREATS P1, tested by
	// TestRotationOldKeyRefusedAfterOverlap). We dial expecting Key.
	Previous []PreviousKey
}

// PreviousKey is a peer key accepted until a deadline.
type PreviousKey struct {
	Key   identity.PublicKey
	Until time.Time
}

// accepts returns the full public key among p's keys in force at now
// whose Ed25519 half is sign.
func (p Peer) accepts(sign [32]byte, now time.Time) (identity.PublicKey, bool) {
	if subtle.ConstantTimeCompare(p.Key.Sign[:], sign[:]) == 1 {
		return p.Key, true
	}
	for _, k := range p.Previous {
		if now.Before(k.Until) && subtle.ConstantTimeCompare(k.Key.Sign[:], sign[:]) == 1 {
			return k.Key, true
		}
	}
	return identity.PublicKey{}, false
}

// accepted reports whether k (both halves) is one of p's keys in force at now.
func (p Peer) accepted(k identity.PublicKey, now time.Time) bool {
	got, ok := p.accepts(k.Sign, now)
	return ok && got.Equal(k)
}

// KeyRotation is a peer's identity rotation this node verified, handed to
// Config.OnPeerKeyRotated before it is pinned; Config.Learned gives it back
// after a restart. Base is the key the configuration pins for the peer (the
// key it had before its first rotation that this node took): the rotation
// applies while the configuration still pins Base, and is forgotten once
// the operator pins another key.
type KeyRotation struct {
	Peer         string
	Base         identity.PublicKey
	Announcement Announcement
}

// Handover is a rotation of this node's own identity whose overlap is
// still running (the daemon keeps it in its state directory across
// restarts): Previous is the identity rotated away from, Announcement the
// signed handover to the node's identity.
type Handover struct {
	Previous     *identity.Identity
	Announcement Announcement
}

// Service is an upstream this site exports to the peers on its allow list.
type Service struct {
	Name     string
	Upstream string // host:port, the only address dialed for this service
	Allow    []string
	// TLS, when set, makes the upstream connection a TLS client with this
	// configuration (verification on: ServerName, RootCAs or the system
	// roots, an optional client certificate); nil means plain TCP.
	TLS *tls.Config
	// Limits bound all the service's streams together; zero fields mean
	// no per-service limit.
	Limits Limits
	// Guard, when set, stands between an accepted stream and its upstream
	// (the API guard, package apiguard); nil passes the bytes as they are.
	Guard StreamGuard
}

// StreamGuard serves a service's accepted streams itself (the API guard,
// package apiguard). Serve runs one stream, on the pump's goroutine: it
// reads the client's bytes from in, writes what the client gets back to
// out, and talks to upstream, until the client's end (in gave io.EOF), a
// failure of in or out, or until it ends the stream early; it half-closes
// upstream before it returns, and the pump closes it. peer is the name the
// stream's connection authenticated as. No pipe and no goroutine stand
// between the stream and the guard (README, "API guard").
type StreamGuard interface {
	Serve(peer string, upstream Conn, in io.Reader, out io.Writer)
}

// Conn is the local end of a pumped stream: the client's or upstream's TCP
// connection (a *net.TCPConn), a TLS connection to an upstream over one
// (upstream_tls).
// CloseWrite passes the other side's FIN; SetLinger(0) before Close turns
// the close into a reset.
type Conn interface {
	io.ReadWriter
	CloseWrite() error
	Close() error
	SetLinger(sec int) error
}

var _ Conn = (*net.TCPConn)(nil)

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.KeepAlive, 5*time.Second)
	def(&c.IdleTimeout, 30*time.Second)
	def(&c.ConnectTimeout, 5*time.Second)
	def(&c.DialTimeout, 5*time.Second)
	if c.Suite == 0 {
		c.Suite = codec.SuiteAES256GCM
	}
	c.Limits = c.Limits.inherit(DefaultLimits)
	if c.HandshakesPerSecond == 0 {
		c.HandshakesPerSecond = 10
	}
	if c.MaxHalfOpen == 0 {
		c.MaxHalfOpen = 64
	}
	if c.MaxTunnels == 0 {
		c.MaxTunnels = 256
	}
	if c.MaxConnectionsPerPeer == 0 {
		c.MaxConnectionsPerPeer = DefaultMaxConnectionsPerPeer
	}
	if c.Connections == 0 {
		c.Connections = DefaultConnections
	}
	return c
}

// connectionsTo is how many connections c dials to p (c with defaults).
func (c Config) connectionsTo(p Peer) int {
	if p.Connections > 0 {
		return p.Connections
	}
	return max(c.Connections, 1)
}

// DefaultConnections is Config.Connections's default: README, "Several
// connections per peer", gives the measurement that chose it.
const DefaultConnections = 3

// MaxDialConnections bounds Config.Connections and Peer.Connections.
const MaxDialConnections = 16

// DefaultMaxConnectionsPerPeer is Config.MaxConnectionsPerPeer's default.
const DefaultMaxConnectionsPerPeer = 8

// Limit is one resource limit in effect, as reports list them.
type Limit struct {
	Name  string
	Value string
	Scope string
	Kind  string // rate, concurrency, memory or time
}

// LimitsInEffect lists the limits c puts in effect, defaults applied.
func (c Config) LimitsInEffect() []Limit {
	c = c.withDefaults()
	out := []Limit{
		{"flow-control window", fmt.Sprintf("%d MiB", maxStreamWindow>>20), "per stream", "memory"},
		{"flow-control window", fmt.Sprintf("%d MiB", maxConnWindow>>20), "per partner tunnel", "memory"},
		{"handshake timeout", handshakeTimeout.String(), "per tunnel handshake", "time"},
		{"handshakes per second", perSecond(c.HandshakesPerSecond), "per source address, before TLS completes", "rate"},
		{"half-open handshakes", count(c.MaxHalfOpen), "per daemon", "concurrency"},
		{"tunnels", count(c.MaxTunnels), "accepted at once, per daemon", "concurrency"},
		{"connections per peer", count(c.MaxConnectionsPerPeer), "accepted at once from one peer key, replaced ones included", "concurrency"},
		{"connections dialed", count(c.Connections), "per peer with an endpoint (peers[].connections overrides)", "concurrency"},
		{"stream request deadline", requestTimeout.String(), "per stream, before it counts as refused", "time"},
		{"dark listener", map[bool]string{false: "on", true: "off"}[c.DisableDark], "handshakes without the listener-key MAC get no answer", "exposure"},
		{"idle timeout", c.IdleTimeout.String(), "per tunnel", "time"},
		{"connect timeout", c.ConnectTimeout.String(), "per forwarded connection waiting for a tunnel", "time"},
		{"upstream dial timeout", c.DialTimeout.String(), "per stream to an exported service", "time"},
	}
	if c.MaxHalfOpen > 0 {
		perSource, perPrefix, reserved := halfOpenShares(c.MaxHalfOpen)
		out = append(out,
			Limit{"half-open handshakes", count(perSource), "per source address (IPv6: /64)", "concurrency"},
			Limit{"half-open handshakes", count(perPrefix), "per IPv4 /24 or IPv6 /48, except addresses a peer last completed a handshake from", "concurrency"},
			Limit{"half-open handshakes", count(reserved), "kept for addresses a peer last completed a handshake from", "concurrency"})
	}
	add := func(scope string, l Limits) {
		if l.StreamsPerSecond != 0 {
			out = append(out, Limit{"new streams per second", perSecond(l.StreamsPerSecond), scope, "rate"})
		}
		if l.MaxStreams != 0 {
			out = append(out, Limit{"concurrent streams", count(l.MaxStreams), scope, "concurrency"})
		}
		if l.BytesPerSecond != 0 {
			out = append(out, Limit{"bytes per second, each way", count(int(l.BytesPerSecond)), scope, "rate"})
		}
		if l.DialTimeout > 0 {
			out = append(out, Limit{"upstream dial timeout", l.DialTimeout.String(), scope, "time"})
		}
		if l.IdleTimeout != 0 {
			out = append(out, Limit{"stream idle timeout", duration(l.IdleTimeout), scope, "time"})
		}
		if l.MaxLifetime != 0 {
			out = append(out, Limit{"stream lifetime", duration(l.MaxLifetime), scope, "time"})
		}
	}
	add("per peer (default)", c.Limits)
	for _, p := range c.Peers {
		add("peer "+p.Name, p.Limits)
	}
	for _, s := range c.Services {
		add("service "+s.Name+", all peers together", s.Limits)
	}
	return out
}

func perSecond(v float64) string {
	if v < 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%g/s", v)
}

func count(v int) string {
	if v < 0 {
		return "unlimited"
	}
	return fmt.Sprint(v)
}

func duration(d time.Duration) string {
	if d < 0 {
		return "none"
	}
	return d.String()
}

// Validate checks the configuration and names the first problem.
func (c Config) Validate() error {
	if c.FIPS && c.Suite != 0 && c.Suite != codec.SuiteAES256GCM {
		return fmt.Errorf("suite %v is not FIPS 140-3 approved (fips: true wants aes-256-gcm)", c.Suite)
	}
	peers := map[string]bool{}
	// Either half shared by two peers is refused: connections are
	// attributed by the Ed25519 key, pairing secrets derive from the
	// X25519 one (tested by TestValidateKeyHalves).
	signs, dhs := map[[32]byte]string{}, map[[32]byte]string{}
	for _, p := range c.Peers {
		if p.Name == "" {
			return errors.New("peer with an empty name")
		}
		if peers[p.Name] {
			return fmt.Errorf("peer %q: listed twice", p.Name)
		}
		if other, dup := signs[p.Key.Sign]; dup {
			return fmt.Errorf("peer %q: same Ed25519 key as peer %q", p.Name, other)
		}
		if other, dup := dhs[p.Key.DH]; dup {
			return fmt.Errorf("peer %q: same X25519 key as peer %q", p.Name, other)
		}
		peers[p.Name], signs[p.Key.Sign], dhs[p.Key.DH] = true, p.Name, p.Name
		if p.Connections < 0 || p.Connections > MaxDialConnections {
			return fmt.Errorf("peer %q: connections: %d is outside 0..%d", p.Name, p.Connections, MaxDialConnections)
		}
		if p.Endpoint != "" {
			if _, _, err := net.SplitHostPort(p.Endpoint); err != nil {
				return fmt.Errorf("peer %q: endpoint: %w", p.Name, err)
			}
		}
		if err := p.validateTransport(); err != nil {
			return fmt.Errorf("peer %q: %w", p.Name, err)
		}
	}
	for _, p := range c.Peers {
		for _, k := range p.Previous {
			if other, dup := signs[k.Key.Sign]; dup && other != p.Name {
				return fmt.Errorf("peer %q: previous key is peer %q's key", p.Name, other)
			}
		}
	}
	services := map[string]bool{}
	for _, s := range c.Services {
		if !ValidServiceName(s.Name) {
			return fmt.Errorf("service %q: name must be 1-64 of a-z 0-9 . _ -", s.Name)
		}
		if services[s.Name] {
			return fmt.Errorf("service %q: listed twice", s.Name)
		}
		services[s.Name] = true
		if _, _, err := net.SplitHostPort(s.Upstream); err != nil {
			return fmt.Errorf("service %q: upstream: %w", s.Name, err)
		}
		for _, a := range s.Allow {
			if !peers[a] {
				return fmt.Errorf("service %q: allow names unknown peer %q", s.Name, a)
			}
		}
	}
	if c.Connections < 0 || c.Connections > MaxDialConnections {
		return fmt.Errorf("connections: %d is outside 0..%d", c.Connections, MaxDialConnections)
	}
	if err := c.Limits.validate("limits"); err != nil {
		return err
	}
	for _, p := range c.Peers {
		if err := p.Limits.validate("peer " + p.Name + ": limits"); err != nil {
			return err
		}
	}
	for _, s := range c.Services {
		if err := s.Limits.validate("service " + s.Name + ": limits"); err != nil {
			return err
		}
	}
	if c.Suite != 0 && !c.Suite.Available() {
		return fmt.Errorf("suite %v is not available in this process", c.Suite)
	}
	for name, d := range map[string]time.Duration{"keepalive": c.KeepAlive, "idle_timeout": c.IdleTimeout,
		"connect_timeout": c.ConnectTimeout, "dial_timeout": c.DialTimeout} {
		if d < 0 {
			return fmt.Errorf("%s: negative duration %v", name, d)
		}
	}
	return nil
}

// ValidateSelf refuses a peer that holds either half of self, this site's
// own key (tested by TestValidateKeyHalves).
func (c Config) ValidateSelf(self identity.PublicKey) error {
	for _, p := range c.Peers {
		if p.Key.Sign == self.Sign || p.Key.DH == self.DH {
			return fmt.Errorf("peer %q: this site's own key", p.Name)
		}
		for _, k := range p.Previous {
			if k.Key.Sign == self.Sign || k.Key.DH == self.DH {
				return fmt.Errorf("peer %q: previous key is this site's own key", p.Name)
			}
		}
	}
	return nil
}

// snapshot is an immutable view of a Config, swapped atomically on reload.
type snapshot struct {
	cfg      Config
	services map[string]*serviceEntry
	keys     map[string]Peer // each peer by name, for its pinned keys
}

type serviceEntry struct {
	Service
	allow map[string]bool
}

func newSnapshot(c Config) *snapshot {
	s := &snapshot{cfg: c.withDefaults(), services: map[string]*serviceEntry{}, keys: map[string]Peer{}}
	for _, p := range c.Peers {
		s.keys[p.Name] = p
	}
	for _, svc := range c.Services {
		e := &serviceEntry{Service: svc, allow: map[string]bool{}}
		for _, a := range svc.Allow {
			e.allow[a] = true
		}
		s.services[svc.Name] = e
	}
	return s
}

// pinned reports whether key is a key pinned for peer in this
// configuration (its key, or a previous one within its overlap): a
// connection is admitted, and each of its streams, by the key it
// authenticated with, never by a name alone (THREATS P1,
// TestKeyChangeClosesOldKeysConnections, TestRotationOldKeyRefusedAfterOverlap).
func (s *snapshot) pinned(peer string, key [32]byte) bool {
	p, ok := s.keys[peer]
	if !ok {
		return false
	}
	_, ok = p.accepts(key, time.Now())
	return ok
}

// admit decides a peer's request for a service: THREATS P2, tested by
// TestServiceNotAllowed and TestUnknownService. It never returns an address
// other than the configured upstream: the entry it returns on
// StatusAccepted names the only address dialUpstream will dial.
func (s *snapshot) admit(peer, service string) (Status, *serviceEntry) {
	e, ok := s.services[service]
	if !ok {
		return StatusUnknownService, nil
	}
	if !e.allow[peer] {
		return StatusNotAllowed, nil
	}
	return StatusAccepted, e
}
