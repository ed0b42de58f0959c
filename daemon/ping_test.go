package daemon_test

import (
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// TestPingOutcomes: `dyad ping` against a real partner daemon produces
// each outcome for real, each with its own exit code and a message that
// says what to do: ok (with the handshake's round trip and group), no
// answer (a dead port, and a pinned key that is not the partner's: the
// same silence, with the pinned fingerprint printed), our certificate
// refused, a service unknown or not allowed (alike), its upstream
// unreachable, and another refusal (the partner's connection cap).
func TestPingOutcomes(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	root := t.TempDir()
	a, b := newSite(t, root, "site-a"), newSite(t, root, "site-b")
	stranger, wrongPin := newSite(t, root, "site-c"), newSite(t, root, "site-d")
	overTCP, strangerTCP := newSite(t, root, "site-e"), newSite(t, root, "site-f")
	downUp := freeTCP(t) // nothing listens there
	addr, err := daemontest.FreeUDPTCP()
	if err != nil {
		t.Fatal(err)
	}
	b.Config.Listen = addr
	b.Config.Tunnel.TCPListen = daemon.TCPListen{Same: true}
	b.Config.Peers = []daemon.PeerFile{a.Peer(false), wrongPin.Peer(false), overTCP.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{
		{Name: "echo", Upstream: echo, Allow: []string{"site-a", "site-e"}},
		{Name: "private", Upstream: echo},
		{Name: "down", Upstream: downUp, Allow: []string{"site-a"}},
	}
	b.Config.Tunnel.MaxConnectionsPerPeer = 1
	start(t, b)

	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	a.Config.Tunnel.Connections = 1
	stranger.Config.Peers = []daemon.PeerFile{b.Peer(true)} // B does not pin site-c
	other := newSite(t, root, "site-x")
	wrong := b.Peer(true)
	wrong.PublicKey = other.PublicKey // site-d pins another key for site-b
	wrongPin.Config.Peers = []daemon.PeerFile{wrong}
	bTCP := b.Peer(true)
	bTCP.Transport = tunnel.TransportTCP
	overTCP.Config.Peers = []daemon.PeerFile{bTCP}
	strangerTCP.Config.Peers = []daemon.PeerFile{bTCP} // B does not pin site-f
	gone := newSite(t, root, "gone")
	deadPeer := gone.Peer(false)
	deadPeer.Endpoint = daemonUDP(t)
	a.Config.Peers = append(a.Config.Peers, deadPeer)
	for _, s := range []*daemontest.Site{a, stranger, wrongPin, overTCP, strangerTCP} {
		if err := s.Write(); err != nil {
			t.Fatal(err)
		}
	}
	goneKey, _ := identity.ParsePublicKey(gone.PublicKey)
	otherKey, _ := identity.ParsePublicKey(other.PublicKey)

	cases := []struct {
		name string
		site *daemontest.Site
		args []string
		code int
		want []string
	}{
		{"tunnel ok", a, []string{"site-b"}, daemon.PingOK, []string{"ok: site-b at " + b.Config.Listen, "round trip", "handshake", "group X25519MLKEM768", "protocol dyad/2"}},
		{"service ok", a, []string{"site-b", "echo"}, daemon.PingOK, []string{"ok: service echo accepted in"}},
		{"not allowed", a, []string{"site-b", "private"}, daemon.PingServiceDenied, []string{"refused service private: unknown there, or not allowed"}},
		{"unknown", a, []string{"site-b", "nosuch"}, daemon.PingServiceDenied, []string{"refused service nosuch: unknown there, or not allowed"}},
		{"upstream down", a, []string{"site-b", "down"}, daemon.PingUpstreamDown, []string{"could not reach the service's upstream"}},
		{"not pinned there", stranger, []string{"site-b"}, daemon.PingRefused, []string{"refused this site's certificate", "public_key: dyad2:"}},
		{"wrong pinned key", wrongPin, []string{"--timeout", "2s", "site-b"}, daemon.PingNoAnswer,
			[]string{"no answer from site-b", "not running", "firewall", "pinned fingerprint: " + otherKey.Fingerprint()}},
		{"tcp ok", overTCP, []string{"site-b", "echo"}, daemon.PingOK, []string{"ok: site-b at " + b.Config.Listen, "protocol dyad/2, over tcp", "ok: service echo accepted in"}},
		{"tcp not pinned there", strangerTCP, []string{"site-b"}, daemon.PingRefused, []string{"refused this site's certificate"}},
		{"dead port", a, []string{"--timeout", "2s", "gone"}, daemon.PingNoAnswer, []string{"no answer from gone", "pinned fingerprint: " + goneKey.Fingerprint()}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"ping", "--config", c.site.ConfigPath()}, c.args...)
			began := time.Now()
			out, code := runDyad(t, args...)
			t.Logf("dyad %s → exit %d in %v\n%s", strings.Join(c.args, " "), code, time.Since(began).Round(time.Millisecond), out)
			if code != c.code {
				t.Errorf("exit %d, want %d", code, c.code)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
		})
	}
	// With A's daemon holding its one allowed connection, a probe is one
	// too many: another refusal.
	start(t, a)
	for deadline := time.Now().Add(10 * time.Second); counter(t, a, "tunnels_established") < 1; {
		if time.Now().After(deadline) {
			t.Fatal("A did not connect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, code := runDyad(t, "ping", "--config", a.ConfigPath(), "site-b")
	if code != daemon.PingOtherRefusal || !strings.Contains(out, "refused") {
		t.Errorf("ping over the partner's connection cap: exit %d, want %d\n%s", code, daemon.PingOtherRefusal, out)
	}
}

// daemonUDP returns a loopback UDP address nothing listens on.
func daemonUDP(t *testing.T) string {
	addr, err := daemontest.FreeUDP()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}
