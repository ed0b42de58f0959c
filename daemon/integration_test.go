package daemon_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// These tests run the built dyad binary as separate processes on loopback.

var dyadBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dyad-bin")
	if err != nil {
		panic(err)
	}
	dyadBin, err = daemontest.Build("..", dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// twoSites starts B exporting "echo" (to A) and "private" (to nobody),
// and A forwarding a local port to B's echo. It returns A's local address.
func twoSites(t *testing.T, upstream string) (a, b *daemontest.Site, local string) {
	t.Helper()
	root := t.TempDir()
	a, b = newSite(t, root, "site-a"), newSite(t, root, "site-b")
	local = freeTCP(t)
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{
		{Name: "echo", Upstream: upstream, Allow: []string{"site-a"}},
		{Name: "private", Upstream: upstream},
	}
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	a.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: "site-b", Service: "echo"}}
	a.Config.Tunnel.ConnectTimeout = daemon.Duration(2 * time.Second)
	a.Config.Tunnel.DialTimeout = daemon.Duration(time.Second)
	start(t, b)
	start(t, a)
	return a, b, local
}

func newSite(t *testing.T, root, name string) *daemontest.Site {
	t.Helper()
	s, err := daemontest.NewSite(dyadBin, root, name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func start(t *testing.T, s *daemontest.Site) {
	t.Helper()
	if err := s.StartReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(15 * time.Second); err != nil && !strings.Contains(err.Error(), "signal: killed") {
			t.Errorf("%s: %v\n%s", s.Name, err, s.Logs())
		}
		if t.Failed() {
			t.Logf("%s logs:\n%s", s.Name, s.Logs())
		}
	})
}

func freeTCP(t *testing.T) string {
	addr, err := daemontest.FreeTCP()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// echoRoundTrip sends n pseudo-random bytes through addr to an echo
// upstream while reading them back, and compares SHA-256 of both ways.
func echoRoundTrip(addr string, n int64, seed uint64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	src := io.LimitReader(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}), n)
	sent, got := sha256.New(), sha256.New()
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.TeeReader(src, sent))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	m, err := io.Copy(got, c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("send: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("receive after %d bytes: %w", m, err)
	}
	if m != n || !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return fmt.Errorf("received %d of %d bytes, SHA-256 equal: %v", m, n, bytes.Equal(sent.Sum(nil), got.Sum(nil)))
	}
	return nil
}

// TestBulkTransferSHA256: 1 GiB each way (at once, through an echo) arrives
// intact. THREATS P3.
func TestBulkTransferSHA256(t *testing.T) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 64 << 20
	}
	echo, _ := tunneltest.EchoServer(t)
	_, _, local := twoSites(t, echo)
	start := time.Now()
	if err := echoRoundTrip(local, size, 1); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	t.Logf("%d MiB each way in %v (%.2f Gbit/s each way)", size>>20, d, float64(size*8)/d.Seconds()/1e9)
}

func TestHundredConcurrentConnections(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	_, b, local := twoSites(t, echo)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := echoRoundTrip(local, 256<<10, uint64(i)); err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st, err := b.Status()
	if err != nil || st.Counters["streams_accepted"] != 100 {
		t.Fatalf("B accepted %d streams (%v)", st.Counters["streams_accepted"], err)
	}
}

// TestHalfClose: the client sends its request and half-closes; the upstream
// reads to EOF before it answers, and the answer still arrives in full.
func TestHalfClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, _ := io.ReadAll(c) // only returns at the client's FIN
		fmt.Fprintf(c, "got %d bytes, then EOF", len(req))
	}()
	_, _, local := twoSites(t, ln.Addr().String())
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(bytes.Repeat([]byte("q"), 100000))
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := io.ReadAll(c)
	if err != nil || string(resp) != "got 100000 bytes, then EOF" {
		t.Fatalf("response %q, err %v", resp, err)
	}
}

// refusedPromptly checks that a connection to addr is closed by dyad within
// limit without delivering any byte.
func refusedPromptly(t *testing.T, addr string, limit time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return // refused so fast that the reset beat connect's own check
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(limit))
	n, err := c.Read(make([]byte, 100))
	if n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection not refused within %v: %d bytes, %v", limit, n, err)
	}
}

// TestUnpairedDaemonsRefused: a third daemon that B does not know can not
// reach B's services, and a daemon that dials an impostor for B refuses it;
// each side counts the refusal. THREATS P1.
func TestUnpairedDaemonsRefused(t *testing.T) {
	echo, accepted := tunneltest.EchoServer(t)
	_, b, _ := twoSites(t, echo)
	root := t.TempDir()

	stranger := newSite(t, root, "stranger")
	strangerLocal := freeTCP(t)
	stranger.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	stranger.Config.Forwards = []daemon.ForwardConfig{{Listen: strangerLocal, Peer: "site-b", Service: "echo"}}
	stranger.Config.Tunnel.ConnectTimeout = daemon.Duration(time.Second)
	// Dark off: the stranger answers first flights sealed for another key,
	// so the fooled daemon below gets to check the stranger's key. A dark
	// stranger would stay silent (TestDarkListenerSilent).
	dark := false
	stranger.Config.Tunnel.Dark = &dark
	start(t, stranger)
	refusedPromptly(t, strangerLocal, 3*time.Second)

	// A client pins B's key but dials the stranger's endpoint.
	fooled := newSite(t, root, "fooled")
	fooledLocal := freeTCP(t)
	impostor := b.Peer(false)
	impostor.Endpoint = stranger.Config.Listen
	fooled.Config.Peers = []daemon.PeerFile{impostor}
	fooled.Config.Forwards = []daemon.ForwardConfig{{Listen: fooledLocal, Peer: "site-b", Service: "echo"}}
	fooled.Config.Tunnel.ConnectTimeout = daemon.Duration(time.Second)
	start(t, fooled)
	refusedPromptly(t, fooledLocal, 3*time.Second)

	if st, _ := b.Status(); st.Counters["handshakes_refused"] == 0 {
		t.Errorf("B did not count the stranger: %v", st.Counters)
	}
	if st, _ := fooled.Status(); st.Counters["handshakes_refused"] == 0 {
		t.Errorf("the fooled daemon did not count the impostor: %v", st.Counters)
	}
	if accepted() != 0 {
		t.Errorf("the upstream was reached %d times", accepted())
	}
	strangerKey, _ := identity.ParsePublicKey(stranger.PublicKey)
	if !hasEvent(t, b, audit.PeerAuthRefused, func(e journal.Entry) bool {
		return e.Attr(audit.KeyPeerFingerprint).AsString() == strangerKey.Fingerprint() &&
			e.Attr(audit.KeyPeerAddress).AsString() == "127.0.0.1" && e.Attr(audit.KeyReason).AsString() == "unknown_key"
	}) {
		t.Errorf("B's journal lacks the refusal with the stranger's fingerprint and address: %v", b.Events())
	}
	if !strings.Contains(b.Logs(), `"event":"dyad.peer.auth_refused"`) {
		t.Errorf("B's log does not mirror the refusal")
	}
}

// TestNotAllowedAndUpstreamDown: refusals come back typed and fast, and the
// upstream of a service not allowed to the peer is never dialed. THREATS P2.
func TestNotAllowedAndUpstreamDown(t *testing.T) {
	echo, accepted := tunneltest.EchoServer(t)
	a, b, _ := twoSites(t, echo)
	privateLocal, downLocal := freeTCP(t), freeTCP(t)
	b.Config.Services = append(b.Config.Services, daemon.ServiceFile{Name: "down", Upstream: freeTCP(t), Allow: []string{"site-a"}})
	a.Config.Forwards = append(a.Config.Forwards,
		daemon.ForwardConfig{Listen: privateLocal, Peer: "site-b", Service: "private"},
		daemon.ForwardConfig{Listen: downLocal, Peer: "site-b", Service: "down"})
	reload(t, b)
	reload(t, a)
	refusedPromptly(t, privateLocal, 2*time.Second)
	refusedPromptly(t, downLocal, 2*time.Second)
	st, _ := b.Status()
	if st.Counters["streams_refused.not_allowed"] != 1 || st.Counters["streams_refused.upstream_unreachable"] != 1 {
		t.Errorf("refusals not counted: %v", st.Counters)
	}
	if accepted() != 0 {
		t.Errorf("the private upstream was dialed")
	}
	// The same refusals as Prometheus metrics on the admin address.
	resp, err := http.Get("http://" + b.Config.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`dyad_refusals_total{reason="not_allowed"} 1`, `dyad_refusals_total{reason="upstream_unreachable"} 1`,
		`dyad_audit_events_total{event="dyad.policy.denied"} 1`, fmt.Sprintf(`dyad_tunnels_active{network_transport="quic",peer="site-a"} %d`, tunnel.DefaultConnections), // one per connection
		"dyad_tunnel_handshake_duration_seconds_bucket"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !hasEvent(t, b, audit.PolicyDenied, func(e journal.Entry) bool { return e.Attr(audit.KeyService).AsString() == "private" }) ||
		!hasEvent(t, b, audit.StreamFailed, func(e journal.Entry) bool { return e.Attr(audit.KeyReason).AsString() == "upstream_unreachable" }) {
		t.Errorf("B's journal lacks the refusals: %v", b.Events())
	}
}

// hasEvent waits up to 3 s for a journal entry of s named name that
// satisfies match; the journal must verify.
func hasEvent(t *testing.T, s *daemontest.Site, name string, match func(journal.Entry) bool) bool {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		es, res, err := s.Journal() // entries reach the disk within the group-commit interval
		ok := err == nil && res.OK()
		for _, e := range es {
			if ok && e.Name == name && match(e) {
				return true
			}
		}
		if time.Now().After(deadline) {
			if !ok {
				t.Fatalf("%s journal: %v %v", s.Name, err, res.Bad)
			}
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reload rewrites s's configuration and sends SIGHUP, then waits for the
// reload to be logged.
func reload(t *testing.T, s *daemontest.Site) {
	t.Helper()
	before := strings.Count(s.Logs(), `"event":"dyad.config.reloaded"`)
	if err := s.Write(); err != nil {
		t.Fatal(err)
	}
	s.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(s.Logs(), `"event":"dyad.config.reloaded"`) == before {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not reload:\n%s", s.Name, s.Logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPeerRestart: B is killed and restarted; new connections through A
// work again within 2 s of B's return.
func TestPeerRestart(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	_, b, local := twoSites(t, echo)
	if err := echoRoundTrip(local, 1000, 1); err != nil {
		t.Fatal(err)
	}
	b.Kill()
	refusedPromptly(t, local, 5*time.Second) // outage: refused after the connect timeout
	if err := b.StartReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	var err error
	for time.Since(back) < 2*time.Second {
		if err = echoRoundTrip(local, 1000, 2); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("no connection within 2 s of B's return: %v", err)
	}
	t.Logf("working again %v after B was ready", time.Since(back))
}

// TestReloadAddsForwardKeepsLiveConnection: SIGHUP adds a forward while a
// connection is open; the new forward works and the old connection keeps
// flowing.
func TestReloadAddsForwardKeepsLiveConnection(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, _, local := twoSites(t, echo)
	live, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	ping := func(msg string) {
		t.Helper()
		live.SetDeadline(time.Now().Add(5 * time.Second))
		live.Write([]byte(msg))
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(live, buf); err != nil || string(buf) != msg {
			t.Fatalf("live connection: %q, %v", buf, err)
		}
	}
	ping("before reload")
	added := freeTCP(t)
	a.Config.Forwards = append(a.Config.Forwards, daemon.ForwardConfig{Listen: added, Peer: "site-b", Service: "echo"})
	reload(t, a)
	if err := echoRoundTrip(added, 1<<20, 3); err != nil {
		t.Fatalf("added forward: %v", err)
	}
	ping("after reload")

	// A bad configuration is rejected and the running one stays.
	a.Config.Peers[0].PublicKey = "dyad1:broken"
	if err := a.Write(); err != nil {
		t.Fatal(err)
	}
	a.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(a.Logs(), `"event":"dyad.config.rejected"`) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(a.Logs(), `"event":"dyad.config.rejected"`) {
		t.Fatal("bad configuration not rejected")
	}
	ping("after rejected reload")
}

// TestSigtermDrainsLiveTransfer: SIGTERM during a transfer lets it finish,
// then the daemon exits 0.
func TestSigtermDrainsLiveTransfer(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, _, local := twoSites(t, echo)
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("start"))
	io.ReadFull(c, make([]byte, 5)) // the stream is up
	a.Signal(syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond) // A is draining now
	payload := bytes.Repeat([]byte("d"), 8<<20)
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("drained transfer: %d of %d bytes, %v", len(got), len(payload), err)
	}
	if err := a.Wait(10 * time.Second); err != nil {
		t.Fatalf("exit after drain: %v", err)
	}
	if _, err := net.Dial("tcp", local); err == nil {
		t.Fatal("forward still accepting after shutdown")
	}
	// The journal tells the whole story and ends with a signed checkpoint
	// of everything before it.
	es, res, err := a.Journal()
	if err != nil || !res.OK() {
		t.Fatalf("journal: %v %v", err, res.Bad)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name)
	}
	all := strings.Join(names, " ")
	for _, want := range []string{audit.ConfigLoaded, audit.DaemonStarted, audit.TunnelEstablished, audit.StreamOpened,
		audit.StreamClosed, audit.DaemonStopped} {
		if !strings.Contains(all, want) {
			t.Errorf("journal lacks %s: %s", want, all)
		}
	}
	last := es[len(es)-1]
	if last.Name != audit.JournalCheckpoint || res.Covered != last.Seq {
		t.Errorf("journal ends with %s, covered %d of %d", last.Name, res.Covered, len(es))
	}
	for _, e := range es {
		if spec, ok := audit.SpecOf(e.Name); !ok {
			t.Errorf("%s not in the catalogue", e.Name)
		} else if err := spec.Check(e.Attrs); err != nil {
			t.Error(err)
		}
	}
}

// TestKeyFileModeRefused: THREATS P6.
func TestKeyFileModeRefused(t *testing.T) {
	s := newSite(t, t.TempDir(), "loose")
	os.Chmod(filepath.Join(s.Dir, "identity.key"), 0o644)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	err := s.Wait(10 * time.Second)
	if err == nil || !strings.Contains(s.Logs(), "chmod 600") {
		t.Fatalf("daemon started with a 0644 key file: %v\n%s", err, s.Logs())
	}
}

// TestAuditVerifyCommand: `dyad audit verify` passes a real daemon's journal
// and names the entry an editor changed. THREATS P7.
func TestAuditVerifyCommand(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, _, local := twoSites(t, echo)
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("ping"))
	io.ReadFull(c, make([]byte, 4))
	c.Close()
	if err := a.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	verify := func(args ...string) (string, int) { return runDyad(t, append([]string{"audit", "verify"}, args...)...) }
	out, code := verify("--config", a.ConfigPath())
	if code != 0 || !strings.Contains(out, ": OK") {
		t.Fatalf("clean journal: exit %d\n%s", code, out)
	}
	out, code = verify("--journal", filepath.Join(a.Dir, "audit"), "--public-key", a.PublicKey, "--site", a.Name)
	if code != 0 {
		t.Fatalf("with --public-key: exit %d\n%s", code, out)
	}
	// Change the peer name in the tunnel.established entry.
	files, _ := journal.Files(filepath.Join(a.Dir, "audit"))
	path := filepath.Join(a.Dir, "audit", files[0])
	data, _ := os.ReadFile(path)
	lines := strings.Split(string(data), "\n")
	edited := -1
	for i, l := range lines {
		if strings.Contains(l, `"name":"dyad.tunnel.established"`) {
			lines[i] = strings.Replace(l, `"dyad.peer":"site-b"`, `"dyad.peer":"site-x"`, 1)
			edited = i
			break
		}
	}
	if edited < 0 {
		t.Fatal("no tunnel.established entry")
	}
	os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o600)
	out, code = verify("--config", a.ConfigPath())
	if code != 1 || !strings.Contains(out, fmt.Sprintf("entry %d:", edited)) {
		t.Fatalf("edited entry %d: exit %d\n%s", edited, code, out)
	}
	os.WriteFile(path, data, 0o600)
	// Another key does not verify the checkpoints.
	out, code = verify("--journal", filepath.Join(a.Dir, "audit"), "--public-key", newSite(t, t.TempDir(), "other").PublicKey, "--site", a.Name)
	if code != 1 || !strings.Contains(out, "signature") {
		t.Fatalf("foreign key: exit %d\n%s", code, out)
	}
}
