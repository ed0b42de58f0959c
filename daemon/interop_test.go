package daemon_test

import (
	"os"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// TestInteropPreviousRelease: a daemon of the previous release (12-byte
// connection IDs, FORMAT.md section 9) and this one pair up and carry
// traffic whichever of them dials, and neither sees a packet it cannot
// use: this daemon sends no first-flight trailer to an ID the old one
// issued, and strips the trailer the old one appends to long headers sent
// to this daemon's 16-byte IDs.
//
// The new daemon runs with tunnel.connections 4: the old one keeps one
// connection and replaces an older one when a newer arrives, so the new one
// must learn (from the ALPN, dyad/1) to keep one too, whichever side dials;
// over ~5 s of traffic neither side may establish tunnels in a loop.
//
// It needs the previous release's binary in DYAD_OLD_BIN: `make test`
// builds it (`make prev-release`, from PREV_RELEASE) and sets it; without it
// the test skips.
func TestInteropPreviousRelease(t *testing.T) {
	oldBin := os.Getenv("DYAD_OLD_BIN")
	if oldBin == "" {
		t.Skip("DYAD_OLD_BIN (the previous release's dyad binary) not set")
	}
	echo, _ := tunneltest.EchoServer(t)
	for _, c := range []struct{ name, dialer, listener string }{
		{"old dials new", oldBin, dyadBin},
		{"new dials old", dyadBin, oldBin},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			a, err := daemontest.NewSite(c.dialer, root, "site-a")
			if err != nil {
				t.Fatal(err)
			}
			b, err := daemontest.NewSite(c.listener, root, "site-b")
			if err != nil {
				t.Fatal(err)
			}
			local := freeTCP(t)
			b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
			b.Config.Services = []daemon.ServiceFile{{Name: "echo", Upstream: echo, Allow: []string{"site-a"}}}
			a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
			a.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: "site-b", Service: "echo"}}
			a.Config.Tunnel.ConnectTimeout = daemon.Duration(5 * time.Second)
			for _, s := range []*daemontest.Site{a, b} {
				s.Config.Tunnel.CountConnectionDrops = true // a trailer QUIC cannot parse counts as a drop
				if s.Bin == dyadBin {
					s.Config.Tunnel.Connections = 4
					continue
				}
				// The previous release reads only the dyad1: form (what
				// `dyad keygen` prints for such a partner).
				for i := range s.Config.Peers {
					k, err := identity.ParsePublicKey(s.Config.Peers[i].PublicKey)
					if err != nil {
						t.Fatal(err)
					}
					s.Config.Peers[i].PublicKey = k.LegacyString()
				}
			}
			start(t, b)
			start(t, a)
			// The handshake and a first round trip: the only time first-flight
			// trailers are in play, and too little traffic for a drop of
			// another cause (under bulk load, quic-go drops datagrams when its
			// receive queue is full: dos_prevention).
			if err := echoRoundTrip(local, 1000, 0); err != nil {
				t.Fatalf("first round trip through %s: %v", c.name, err)
			}
			time.Sleep(300 * time.Millisecond) // the handshake's last acknowledgments
			for _, s := range []*daemontest.Site{a, b} {
				cs := counters(t, s)
				if cs["tunnels_established"] == 0 {
					t.Errorf("%s (%s) counted no tunnel", s.Name, s.Bin)
				}
				if cs["packets_dropped"] != 0 {
					t.Errorf("%s (%s) dropped %d packets of its partner", s.Name, s.Bin, cs["packets_dropped"])
				}
			}
			for i := range 3 {
				if err := echoRoundTrip(local, 1<<20, uint64(i+1)); err != nil {
					t.Fatalf("round trip %d through %s: %v", i+1, c.name, err)
				}
			}
			// No replacement loop: traffic for ~5 s, and no tunnel
			// established meanwhile; one connection on each side.
			before := map[string]uint64{}
			for _, s := range []*daemontest.Site{a, b} {
				before[s.Name] = counters(t, s)["tunnels_established"]
				if before[s.Name] > 2 {
					t.Errorf("%s (%s) established %d tunnels to settle, want at most 2", s.Name, s.Bin, before[s.Name])
				}
			}
			for i := range 25 {
				if err := echoRoundTrip(local, 64<<10, uint64(i+10)); err != nil {
					t.Fatalf("round trip %d through %s: %v", i+10, c.name, err)
				}
				time.Sleep(200 * time.Millisecond)
			}
			for _, s := range []*daemontest.Site{a, b} {
				if got := counters(t, s)["tunnels_established"]; got != before[s.Name] {
					t.Errorf("%s (%s) established %d more tunnels over 5 s of traffic: a replacement loop", s.Name, s.Bin, got-before[s.Name])
				}
				if s.Bin != dyadBin {
					continue
				}
				st, err := s.Status()
				if err != nil {
					t.Fatal(err)
				}
				if len(st.Peers) != 1 || st.Peers[0].Connections != 1 {
					t.Errorf("%s (this release) holds %+v, want one connection to the previous release", s.Name, st.Peers)
				}
			}
		})
	}
}
