package daemon_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// connected reports whether s's /statusz shows peer connected.
func connected(t *testing.T, s *daemontest.Site, peer string) bool {
	t.Helper()
	st, err := s.Status()
	if err != nil {
		t.Fatalf("%s /statusz: %v", s.Name, err)
	}
	for _, p := range st.Peers {
		if p.Name == peer {
			return p.Connected
		}
	}
	return false
}

// TestDeadPeerNoticed: a partner daemon that stops (SIGSTOP: its socket
// stays open, nothing answers) is noticed within three keepalives, not
// the 30 s idle timeout; while it is down a new local connection to its
// forward is refused after connect_timeout with a log line naming the peer;
// once it runs again the tunnel comes back. The same rule over the TCP
// fallback (tcp: the stopped kernel still ACKs, only yamux pings go
// unanswered).
func TestDeadPeerNoticed(t *testing.T) {
	for _, transport := range []string{tunnel.TransportQUIC, tunnel.TransportTCP} {
		t.Run(transport, func(t *testing.T) { testDeadPeerNoticed(t, transport) })
	}
}

func testDeadPeerNoticed(t *testing.T, transport string) {
	// 2 s: the bound (2.5 periods + RTT, under 3) leaves a second for a loaded machine.
	const keepalive, connectTimeout = 2 * time.Second, time.Second
	echo, _ := tunneltest.EchoServer(t)
	root := t.TempDir()
	a, b := newSite(t, root, "site-a"), newSite(t, root, "site-b")
	local := freeTCP(t)
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "echo", Upstream: echo, Allow: []string{"site-a"}}}
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	if transport == tunnel.TransportTCP {
		addr, err := daemontest.FreeUDPTCP()
		if err != nil {
			t.Fatal(err)
		}
		b.Config.Listen = addr
		b.Config.Tunnel.TCPListen = daemon.TCPListen{Same: true}
		a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
		a.Config.Peers[0].Transport = tunnel.TransportTCP
	}
	a.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: "site-b", Service: "echo"}}
	for _, s := range []*daemontest.Site{a, b} {
		s.Config.Log.Level = "info"
		s.Config.Tunnel.KeepAlive = daemon.Duration(keepalive)
		s.Config.Tunnel.ConnectTimeout = daemon.Duration(connectTimeout)
	}
	start(t, b)
	t.Cleanup(func() { b.Signal(syscall.SIGCONT) }) // before b's Stop: cleanups run last-in first-out
	start(t, a)
	if err := echoRoundTrip(local, 1<<20, 1); err != nil {
		t.Fatalf("before the stop: %v", err)
	}
	// Every dialed connection is up, so none is still dialing when B stops.
	for deadline := time.Now().Add(setupWithin); counter(t, a, "tunnels_established") < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("A established %d of its 3 connections", counter(t, a, "tunnels_established"))
		}
		time.Sleep(20 * time.Millisecond)
	}

	if err := b.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	for connected(t, a, "site-b") {
		if time.Since(stopped) > 10*keepalive {
			t.Fatalf("A still shows site-b connected %v after it stopped", time.Since(stopped))
		}
		time.Sleep(10 * time.Millisecond)
	}
	noticed := time.Since(stopped)
	t.Logf("A marked site-b down %v after SIGSTOP (keepalive %v)", noticed.Round(time.Millisecond), keepalive)
	if noticed > 3*keepalive {
		t.Errorf("dead peer noticed after %v, want within three keepalives (%v)", noticed, 3*keepalive)
	}
	if !strings.Contains(a.Logs(), "peer silent") {
		t.Errorf("A's log does not say the peer went silent")
	}
	for deadline := time.Now().Add(2 * keepalive); counter(t, a, "tunnels_silent") < 3 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := counter(t, a, "tunnels_silent"); n != 3 {
		t.Errorf("tunnels_silent = %d, want each of A's 3 connections", n)
	}

	// A new local connection waits connect_timeout for a tunnel, then is
	// refused, and the log names the peer.
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	c.SetReadDeadline(time.Now().Add(connectTimeout + 5*time.Second))
	n, rerr := c.Read(make([]byte, 1))
	waited := time.Since(began)
	c.Close()
	if n != 0 || rerr == nil || waited < connectTimeout-100*time.Millisecond || waited > connectTimeout+2*time.Second {
		t.Errorf("local connection during the outage: %d bytes, %v after %v; want refused after connect_timeout %v", n, rerr, waited, connectTimeout)
	}
	found := false
	for range 100 {
		for _, line := range strings.Split(a.Logs(), "\n") {
			if strings.Contains(line, "forward failed") && strings.Contains(line, `"peer":"site-b"`) && strings.Contains(line, "no tunnel") {
				found = true
			}
		}
		if found {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !found {
		t.Errorf("no log line names the peer of the refused local connection")
	}

	if err := b.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	for !connected(t, a, "site-b") {
		if time.Since(resumed) > 20*time.Second {
			t.Fatalf("the tunnel did not come back within 20 s of SIGCONT")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := echoRoundTrip(local, 1<<20, 2); err != nil {
		t.Fatalf("after the partner resumed: %v", err)
	}
}

// TestStatusCommandTCP: dyad status over the TCP fallback names the
// transport of each connection, and shows its RTT (yamux pings) and wire
// bytes (the TLS bytes on the socket), as it does for QUIC.
func TestStatusCommandTCP(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	root := t.TempDir()
	a, b := newSite(t, root, "site-a"), newSite(t, root, "site-b")
	addr, err := daemontest.FreeUDPTCP()
	if err != nil {
		t.Fatal(err)
	}
	local := freeTCP(t)
	b.Config.Listen = addr
	b.Config.Tunnel.TCPListen = daemon.TCPListen{Same: true}
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "echo", Upstream: echo, Allow: []string{"site-a"}}}
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	a.Config.Peers[0].Transport = tunnel.TransportTCP
	a.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: "site-b", Service: "echo"}}
	start(t, b)
	start(t, a)
	if err := echoRoundTrip(local, 256<<10, 1); err != nil {
		t.Fatal(err)
	}
	var r daemon.StatusReport
	for deadline := time.Now().Add(10 * time.Second); ; {
		out, code := runDyad(t, "status", "--config", a.ConfigPath(), "--json")
		if code != 0 {
			t.Fatalf("dyad status --json: exit %d\n%s", code, out)
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("dyad status --json: %v\n%s", err, out)
		}
		ready := len(r.Peers) == 1 && len(r.Peers[0].Conns) == 3
		for _, c := range r.Peers[0].Conns {
			ready = ready && c.RTTMillis > 0
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A's three TCP connections with an RTT did not come up: %+v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var moved uint64
	for _, c := range r.Peers[0].Conns {
		moved += c.WireBytesReceived
		if c.Transport != tunnel.TransportTCP {
			t.Errorf("connection %d: transport %q, want tcp", c.ID, c.Transport)
		}
		if c.CongestionWindow != nil || c.PacketsLost != nil || c.MinRTTMillis != nil {
			t.Errorf("connection %d over TCP reports a QUIC congestion state: %+v", c.ID, c)
		}
	}
	if moved < 256<<10 {
		t.Errorf("connections received %d wire bytes, want at least the 256 KiB echoed", moved)
	}
	out, code := runDyad(t, "status", "--config", a.ConfigPath())
	if code != 0 || !strings.Contains(out, "TRANSPORT") || !strings.Contains(out, "dialer/0  tcp") || !strings.Contains(out, "unknown") {
		t.Errorf("dyad status: exit %d, want a TRANSPORT column saying tcp and the congestion columns unknown\n%s", code, out)
	}
	if _, m := httpGet(t, "http://"+a.Config.Admin+"/metrics"); strings.Contains(m, "dyad_quic_connection_cwnd_bytes") {
		t.Errorf("a TCP connection has a dyad_quic_connection_* series:\n%s", m)
	}
}

// httpGet returns the status code and body of GET url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestStatusCommand: `dyad status` against a live pair prints each peer's
// state, pinned fingerprint, last handshake and a row per connection with
// its RTT, bytes each way and streams; --json prints the same report as
// /statusz; the tunnel health endpoints say up, and once the partner stops
// they say down (503) while /readyz stays 200.
func TestStatusCommand(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b, local := twoSites(t, echo)
	if err := echoRoundTrip(local, 256<<10, 1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(setupWithin); counter(t, a, "tunnels_established") < 3; {
		if time.Now().After(deadline) {
			t.Fatal("A's three connections did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	bKey, _ := identity.ParsePublicKey(b.PublicKey)
	out, code := runDyad(t, "status", "--config", a.ConfigPath())
	if code != 0 {
		t.Fatalf("dyad status: exit %d\n%s", code, out)
	}
	t.Logf("dyad status:\n%s", out)
	for _, want := range []string{"site: site-a", "peer: site-b", "state:              up since", "pinned fingerprint: " + bKey.Fingerprint(),
		"endpoint:           " + b.Config.Listen, "last handshake:", "CONN", "RTT", "SENT", "RECEIVED", "STREAMS", "dialer/0", "dialer/2", " ms", "KiB", "dyad/2"} {
		if !strings.Contains(out, want) {
			t.Errorf("dyad status lacks %q", want)
		}
	}

	out, code = runDyad(t, "status", "--config", a.ConfigPath(), "--json")
	if code != 0 {
		t.Fatalf("dyad status --json: exit %d\n%s", code, out)
	}
	var r daemon.StatusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("dyad status --json: %v\n%s", err, out)
	}
	if r.Site != "site-a" || !r.Ready || len(r.Peers) != 1 || r.Peers[0].State != "up" || r.Peers[0].Fingerprint != bKey.Fingerprint() ||
		len(r.Peers[0].Conns) != 3 || r.Peers[0].LastHandshake == "" || r.Counters["tunnels_established"] < 3 {
		t.Fatalf("dyad status --json: %+v", r)
	}
	var moved uint64
	streams := int64(0)
	for _, c := range r.Peers[0].Conns {
		moved += c.WireBytesReceived
		streams += c.Streams
		if c.RTTMillis <= 0 || c.Since == "" {
			t.Errorf("connection %d: RTT %v ms, since %q", c.ID, c.RTTMillis, c.Since)
		}
	}
	if moved < 256<<10 || streams != 1 {
		t.Errorf("connections received %d bytes over %d streams, want at least the 256 KiB echoed over 1", moved, streams)
	}
	// The admin endpoint serves the same report.
	out, code = runDyad(t, "status", "--config", a.ConfigPath(), "--json", "--via", "admin")
	if code != 0 || !strings.Contains(out, `"fingerprint": "`+bKey.Fingerprint()) {
		t.Fatalf("dyad status --via admin: exit %d\n%s", code, out)
	}

	admin := "http://" + a.Config.Admin
	if code, body := httpGet(t, admin+"/healthz/peers"); code != 200 || !strings.HasPrefix(body, "site-b up since ") {
		t.Fatalf("/healthz/peers with the peer up: %d %q", code, body)
	}
	if code, _ := httpGet(t, admin+"/healthz/peers/site-b"); code != 200 {
		t.Fatalf("/healthz/peers/site-b with the peer up: %d", code)
	}
	if code, _ := httpGet(t, admin+"/healthz/peers/nobody"); code != 404 {
		t.Fatalf("/healthz/peers/nobody: %d, want 404", code)
	}
	if err := b.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		code, body := httpGet(t, admin+"/healthz/peers")
		if code == 503 && strings.HasPrefix(body, "site-b down since ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz/peers 10 s after the partner stopped: %d %q", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _ := httpGet(t, admin+"/healthz/peers/site-b"); code != 503 {
		t.Errorf("/healthz/peers/site-b with the peer down: %d, want 503", code)
	}
	if code, _ := httpGet(t, admin+"/readyz"); code != 200 {
		t.Errorf("/readyz with the partner down: %d, want 200 (a partner's outage must not pull this pod out of its Service)", code)
	}
	out, _ = runDyad(t, "status", "--config", a.ConfigPath())
	if !strings.Contains(out, "state:              down since") {
		t.Errorf("dyad status with the partner down:\n%s", out)
	}
}

// connCongestion is one connection of /statusz as TestConnCongestionStatus
// reads it: by JSON key, so that a missing field reads as zero.
type connCongestion struct {
	ID          uint64  `json:"id"`
	Index       *int    `json:"index"`
	RTTMillis   float64 `json:"rtt_ms"`
	MinRTT      float64 `json:"min_rtt_ms"`
	Cwnd        uint64  `json:"cwnd_bytes"`
	PacketsSent uint64  `json:"packets_sent"`
	PacketsRecv uint64  `json:"packets_received"`
	PacketsLost *uint64 `json:"packets_lost"`
	BytesLost   *uint64 `json:"quic_bytes_lost"`
}

// congestion reads s's connections to peer from /statusz.
func congestion(t *testing.T, s *daemontest.Site, peer string) []connCongestion {
	t.Helper()
	_, body := httpGet(t, "http://"+s.Config.Admin+"/statusz")
	var r struct {
		Peers []struct {
			Name  string           `json:"name"`
			Conns []connCongestion `json:"conns"`
		} `json:"peers"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("%s /statusz: %v", s.Name, err)
	}
	for _, p := range r.Peers {
		if p.Name == peer {
			return p.Conns
		}
	}
	t.Fatalf("%s /statusz has no peer %s", s.Name, peer)
	return nil
}

// TestConnCongestionStatus: /statusz, `dyad status` and /metrics show each
// QUIC connection's congestion window, smoothed and minimum RTT, packets
// sent and lost, and the packets sent grow with the traffic; the metrics'
// labels are the peer and a connection index bounded by the peer's
// connections, never an address.
func TestConnCongestionStatus(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b, local := twoSites(t, echo)
	for deadline := time.Now().Add(10 * time.Second); len(congestion(t, a, "site-b")) < 3; {
		if time.Now().After(deadline) {
			t.Fatal("A's three connections did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// One round trip first: every connection then has an RTT sample.
	if err := echoRoundTrip(local, 64<<10, 1); err != nil {
		t.Fatal(err)
	}
	sum := func(cs []connCongestion) (sent uint64) {
		for _, c := range cs {
			sent += c.PacketsSent
		}
		return sent
	}
	before := congestion(t, a, "site-b")
	const moved = 2 << 20
	if err := echoRoundTrip(local, moved, 2); err != nil {
		t.Fatal(err)
	}
	after := congestion(t, a, "site-b")
	// 2 MiB up in QUIC packets of at most 1,452 bytes: at least 1,444 more
	// packets sent, whatever the connection it took.
	if grew := sum(after) - sum(before); sum(after) < sum(before) || grew < moved/1452 {
		t.Errorf("A's connections sent %d packets while 2 MiB went up through them (before %+v, after %+v)", grew, before, after)
	}
	for side, cs := range map[string][]connCongestion{"A": after, "B": congestion(t, b, "site-a")} {
		seen := map[int]bool{}
		for _, c := range cs {
			if c.Index == nil || *c.Index < 0 || *c.Index >= len(cs) || seen[*c.Index] {
				t.Errorf("%s connection %d: index %v, want a distinct one below %d", side, c.ID, c.Index, len(cs))
			} else {
				seen[*c.Index] = true
			}
			if c.Cwnd == 0 || c.MinRTT <= 0 || c.MinRTT > c.RTTMillis || c.PacketsSent == 0 || c.PacketsRecv == 0 ||
				c.PacketsLost == nil || c.BytesLost == nil || *c.PacketsLost > c.PacketsSent {
				t.Errorf("%s connection %d: implausible congestion state %+v", side, c.ID, c)
			}
		}
	}

	out, code := runDyad(t, "status", "--config", a.ConfigPath())
	if code != 0 {
		t.Fatalf("dyad status: exit %d\n%s", code, out)
	}
	for _, want := range []string{"MIN RTT", "CWND", "PACKETS", "LOST"} {
		if !strings.Contains(out, want) {
			t.Errorf("dyad status lacks %q:\n%s", want, out)
		}
	}

	_, metrics := httpGet(t, "http://"+a.Config.Admin+"/metrics")
	series := map[string]int{}
	for _, line := range strings.Split(metrics, "\n") {
		name, rest, ok := strings.Cut(line, "{")
		if !ok || !strings.HasPrefix(name, "dyad_quic_connection_") {
			continue
		}
		series[name]++
		labels, value, _ := strings.Cut(rest, "} ")
		if strings.Contains(labels, "127.0.0.1") || !strings.Contains(labels, `peer="site-b"`) || !strings.Contains(labels, `conn="`) {
			t.Errorf("/metrics: %s: want the labels peer and conn only", line)
		}
		if name == "dyad_quic_connection_cwnd_bytes" && (value == "0" || value == "") {
			t.Errorf("/metrics: %s", line)
		}
	}
	for _, name := range []string{"dyad_quic_connection_cwnd_bytes", "dyad_quic_connection_rtt_seconds", "dyad_quic_connection_min_rtt_seconds",
		"dyad_quic_connection_packets_sent_total", "dyad_quic_connection_packets_lost", "dyad_quic_connection_lost_bytes"} {
		if series[name] != len(after) {
			t.Errorf("/metrics has %d series of %s, want one per connection (%d)", series[name], name, len(after))
		}
	}
}
