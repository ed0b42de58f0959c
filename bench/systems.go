package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/udpbatch"
)

// benchLimits are the per-peer limits both dyad daemons run with, above
// anything a scenario reaches: the bench measures dyad's cost, not its
// limits. With the defaults (tunnel.DefaultLimits: 500 new streams a
// second, burst 1000, 1024 open) churn is refused after ~1,100 connections
// and idle at 1,024. max_streams stops at dyadStreamCeiling, the streams
// dyad's connections to one peer carry, which is also the most connections
// idle holds on dyad (idleTarget).
var benchLimits = daemon.LimitsFile{StreamsPerSecond: 100_000, StreamBurst: 100_000, MaxStreams: dyadStreamCeiling}

// dyadStreamCeiling is the most streams one peer carries: QUIC's cap per
// connection times the connections dyad dials by default.
const dyadStreamCeiling = tunnel.MaxStreamsCap * tunnel.DefaultConnections

// benchMaxConnections is the forward's max_connections (default 1024): as
// many as the QUIC connections behind it can carry.
const benchMaxConnections = dyadStreamCeiling

// defaultMaxConnections is daemon's default max_connections of a forward
// (README, "Limits"), for the report.
const defaultMaxConnections = 1024

// limitsNote says in the report which limits dyad ran with, and why; idle
// is the plan's idle target.
func limitsNote(idle int) string {
	d := tunnel.DefaultLimits
	held := fmt.Sprintf("idle holds %d connections on every system", idle)
	if n := min(idle, dyadStreamCeiling); n < idle {
		held = fmt.Sprintf("idle holds %d connections on dyad, not %d as on the others where they can: one QUIC connection carries at most %d streams "+
			"(tunnel.MaxStreamsCap) and dyad dials %d per peer; per-connection figures at different counts compare only roughly", n, idle, tunnel.MaxStreamsCap, tunnel.DefaultConnections)
	}
	if n := min(idle, tunnel.MaxStreamsCap); n < idle {
		held += fmt.Sprintf("; dyad-conn1 (tunnel.connections 1) holds %d, the streams of its one QUIC connection", n)
	}
	return fmt.Sprintf("dyad ran with tunnel.limits {streams_per_second: %v, stream_burst: %v, max_streams: %v} on both sites and max_connections %v on its forward "+
		"(defaults: %v, %v, %v and %v), so that no limit refuses a scenario's connection: with the defaults churn is refused after ~1,100 connections "+
		"and idle at 1,024. Churn opens at least %d connections per system and repetition. %s.",
		benchLimits.StreamsPerSecond, benchLimits.StreamBurst, benchLimits.MaxStreams, benchMaxConnections,
		d.StreamsPerSecond, d.StreamBurst, d.MaxStreams, defaultMaxConnections, churnMin, held)
}

// configuredLimits is what results.json records of benchLimits and the
// forward.
func configuredLimits() limitsRecord {
	return limitsRecord{StreamsPerSecond: float64(benchLimits.StreamsPerSecond), StreamBurst: int(benchLimits.StreamBurst),
		MaxStreams: int(benchLimits.MaxStreams), MaxConnections: benchMaxConnections}
}

// A system carries client traffic to the target server: importing side →
// link → exporting side → target, each side its own process.
type system interface {
	name() string
	// start launches the system in front of target, its two sides placed
	// by pl (nil: both on loopback in the bench's namespace).
	start(dir, target string, pl *placement) error
	entry() string // where clients connect
	pids() []int   // the tunnel processes, for CPU and memory
	stop()
}

// direct: no tunnel; on an emulated link the client's TCP connection
// itself crosses it (the target listens on the exporting end).
type direct struct{ addr string }

func (d *direct) name() string { return "direct" }
func (d *direct) start(_, target string, _ *placement) error {
	d.addr = target
	return nil
}
func (d *direct) entry() string { return d.addr }
func (d *direct) pids() []int   { return nil }
func (d *direct) stop()         {}

// dyadSystem runs two real dyad daemons; with noGRO ("dyad-nogro") the
// same binary with receive offload off (DYAD_DISABLE_GRO=1), the baseline
// of what GRO changes; with conn1 ("dyad-conn1") the same binary with
// tunnel.connections 1, the baseline of what several connections per peer
// change; with tcp ("dyad-tcp") the TCP fallback transport (TLS 1.3 over
// TCP, yamux): site-b listens on TCP too, site-a dials it with
// transport: tcp; with noUDP ("dyad-auto-noudp") site-a dials with
// transport auto (the default) an endpoint where UDP is dropped and
// site-b's TCP listener answers (blackhole), the fallback's setup case.
type dyadSystem struct {
	bin   string
	noGRO bool
	conn1 bool
	tcp   bool
	noUDP bool
	base  bool // another build (-dyad-base), same configuration as dyad
	a, b  *daemontest.Site
	local string
	pl    *placement // where the sides run (nil: loopback)
	hole  *blackhole // noUDP only
}

// The dyad systems' names; ratios (results.finish) and targets compare
// sysDyad with the other two.
const (
	sysDyad  = "dyad"
	sysNoGRO = "dyad-nogro"
	sysConn1 = "dyad-conn1"
	sysBase  = "dyad-base"
	sysTCP   = "dyad-tcp"
	// sysAutoNoUDP runs only in scenarioFallback.
	sysAutoNoUDP = "dyad-auto-noudp"
	sysStunnel   = "stunnel"
	sysRelay     = "quic-relay"
	sysDirect    = "direct"
)

func (d *dyadSystem) name() string {
	switch {
	case d.noGRO:
		return sysNoGRO
	case d.conn1:
		return sysConn1
	case d.tcp:
		return sysTCP
	case d.noUDP:
		return sysAutoNoUDP
	case d.base:
		return sysBase
	}
	return sysDyad
}

// prepare makes the two identities, which a user does once, ahead of time:
// the setup scenario does not count it.
func (d *dyadSystem) prepare(dir string) error {
	var err error
	if d.a, err = daemontest.NewSite(d.bin, dir, "site-a"); err != nil {
		return err
	}
	d.b, err = daemontest.NewSite(d.bin, dir, "site-b")
	return err
}

func (d *dyadSystem) start(dir, target string, pl *placement) error {
	var err error
	if d.a == nil {
		if err := d.prepare(dir); err != nil {
			return err
		}
	}
	if d.tcp { // site-b takes its port on TCP too
		if d.b.Config.Listen, err = daemontest.FreeUDPTCP(); err != nil {
			return err
		}
	}
	// noUDP: site-b's QUIC port is not the endpoint site-a dials; there
	// UDP goes into the blackhole and TCP to site-b's tcp_listen.
	endpoint := ""
	if d.noUDP {
		if pl != nil {
			return fmt.Errorf("%s runs on loopback only", sysAutoNoUDP)
		}
		if endpoint, err = daemontest.FreeUDPTCP(); err != nil {
			return err
		}
		if d.hole, err = listenBlackhole(endpoint); err != nil {
			return err
		}
		d.b.Config.Tunnel.TCPListen = daemon.TCPListen{Addr: endpoint}
	}
	if d.a.Config.Listen, err = pl.rehost(false, d.a.Config.Listen); err != nil {
		return err
	}
	if d.b.Config.Listen, err = pl.rehost(true, d.b.Config.Listen); err != nil {
		return err
	}
	if d.local, err = daemontest.FreeTCP(); err != nil {
		return err
	}
	d.a.Config.Log.Level, d.b.Config.Log.Level = "warn", "warn"
	if d.noGRO {
		d.a.Env, d.b.Env = []string{udpbatch.EnvDisable + "=1"}, []string{udpbatch.EnvDisable + "=1"}
	}
	if d.conn1 {
		d.a.Config.Tunnel.Connections = 1 // site-a dials
	}
	d.a.Config.Tunnel.Limits, d.b.Config.Tunnel.Limits = benchLimits, benchLimits
	d.b.Config.Peers = []daemon.PeerFile{d.a.Peer(false)}
	d.b.Config.Services = []daemon.ServiceFile{{Name: "target", Upstream: target, Allow: []string{"site-a"}}}
	d.a.Config.Peers = []daemon.PeerFile{d.b.Peer(true)}
	if d.noUDP {
		d.a.Config.Peers[0].Endpoint = endpoint // transport auto, the default
	}
	if d.tcp {
		d.b.Config.Tunnel.TCPListen = daemon.TCPListen{Same: true}
		d.a.Config.Peers[0].Transport = tunnel.TransportTCP
	}
	d.a.Config.Forwards = []daemon.ForwardConfig{{Listen: d.local, Peer: "site-b", Service: "target", MaxConnections: benchMaxConnections}}
	d.a.Config.Tunnel.ShutdownTimeout = daemon.Duration(time.Second)
	d.b.Config.Tunnel.ShutdownTimeout = daemon.Duration(time.Second)
	d.pl = pl
	if pl != nil {
		return d.startIn(dir, pl)
	}
	if err := d.b.StartReady(10 * time.Second); err != nil {
		return err
	}
	return d.a.StartReady(10 * time.Second)
}

func (d *dyadSystem) entry() string { return d.local }
func (d *dyadSystem) pids() []int   { return []int{d.a.Pid(), d.b.Pid()} }
func (d *dyadSystem) stop() {
	for _, s := range []*daemontest.Site{d.a, d.b} {
		if s != nil {
			s.Stop(5 * time.Second)
		}
	}
	if d.hole != nil {
		d.hole.close()
	}
}

// blackhole reads and drops every UDP datagram sent to its address: a path
// that blocks UDP without a word (no ICMP either), as a firewall that drops
// outbound UDP does.
type blackhole struct {
	pc      net.PacketConn
	dropped atomic.Int64
	done    chan struct{}
}

func listenBlackhole(addr string) (*blackhole, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("blackhole on %s: %w", addr, err)
	}
	h := &blackhole{pc: pc, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		buf := make([]byte, 64<<10)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return // closed
			}
			h.dropped.Add(1)
		}
	}()
	return h, nil
}

func (h *blackhole) close() {
	h.pc.Close()
	<-h.done
}

// child is a helper process started from this binary or another.
type child struct{ cmd *exec.Cmd }

func startChild(name string, args ...string) (*child, *bufio.Scanner, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	return &child{cmd}, bufio.NewScanner(out), nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// waitLine waits for a line with the given prefix on a child's stdout and
// returns the rest of it.
func waitLine(sc *bufio.Scanner, prefix string) (string, error) {
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			go func() {
				for sc.Scan() {
				}
			}()
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("helper exited before printing %q", prefix)
}

// quicRelay is the baseline: a bare quic-go relay, one stream per TCP
// connection, no codec and no policy (relay.go), as two processes of this
// binary.
type quicRelay struct {
	in, out *child
	local   string
}

func (q *quicRelay) name() string { return "quic-relay" }

func (q *quicRelay) start(_, target string, pl *placement) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	argv := pl.argv(true, self, "relay-out", "-target", target, "-listen", net.JoinHostPort(pl.host(), "0"))
	out, sc, err := startChild(argv[0], argv[1:]...)
	if err != nil {
		return err
	}
	q.out = out
	udp, err := waitLine(sc, "listening ")
	if err != nil {
		return err
	}
	argv = pl.argv(false, self, "relay-in", "-peer", udp)
	in, sc, err := startChild(argv[0], argv[1:]...)
	if err != nil {
		return err
	}
	q.in = in
	q.local, err = waitLine(sc, "listening ")
	return err
}

func (q *quicRelay) entry() string { return q.local }
func (q *quicRelay) pids() []int   { return []int{q.in.pid(), q.out.pid()} }
func (q *quicRelay) stop() {
	for _, c := range []*child{q.in, q.out} {
		if c != nil {
			c.stop()
		}
	}
}

// stunnelSystem is Debian's stunnel4 pair: TLS over TCP.
type stunnelSystem struct {
	bin      string
	cli, srv *child
	local    string
}

func (s *stunnelSystem) name() string { return sysStunnel }

func (s *stunnelSystem) start(dir, target string, pl *placement) error {
	dir = filepath.Join(dir, "stunnel")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := writeSelfSigned(cert, key); err != nil {
		return err
	}
	srvAddr, err := daemontest.FreeTCP()
	if err == nil {
		srvAddr, err = pl.rehost(true, srvAddr)
	}
	if err != nil {
		return err
	}
	if s.local, err = daemontest.FreeTCP(); err != nil {
		return err
	}
	common := "foreground = yes\npid =\nsyslog = no\ndebug = 3\n"
	srvConf := filepath.Join(dir, "server.conf")
	os.WriteFile(srvConf, []byte(common+fmt.Sprintf("[srv]\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\n", srvAddr, target, cert, key)), 0o600)
	argv := pl.argv(true, s.bin, srvConf)
	if s.srv, _, err = startChild(argv[0], argv[1:]...); err != nil {
		return err
	}
	if err := waitListening(pl, true, srvAddr); err != nil {
		return err
	}
	cliConf := filepath.Join(dir, "client.conf")
	os.WriteFile(cliConf, []byte(common+fmt.Sprintf("[cli]\nclient = yes\naccept = %s\nconnect = %s\n", s.local, srvAddr)), 0o600)
	argv = pl.argv(false, s.bin, cliConf)
	if s.cli, _, err = startChild(argv[0], argv[1:]...); err != nil {
		return err
	}
	return waitListening(pl, false, s.local)
}

func (s *stunnelSystem) entry() string { return s.local }
func (s *stunnelSystem) pids() []int   { return []int{s.cli.pid(), s.srv.pid()} }
func (s *stunnelSystem) stop() {
	for _, c := range []*child{s.cli, s.srv} {
		if c != nil {
			c.stop()
		}
	}
}

// waitListening waits until addr accepts connections from one side.
func waitListening(pl *placement, exportSide bool, addr string) error {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := pl.dial(exportSide, addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("nothing listening on %s", addr)
}

// writeSelfSigned writes an ECDSA P-256 certificate and key for stunnel.
func writeSelfSigned(certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
}
