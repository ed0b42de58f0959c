package daemon_test

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
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
// once it runs again the tunnel comes back.
func TestDeadPeerNoticed(t *testing.T) {
	const keepalive, connectTimeout = time.Second, time.Second
	echo, _ := tunneltest.EchoServer(t)
	root := t.TempDir()
	a, b := newSite(t, root, "site-a"), newSite(t, root, "site-b")
	local := freeTCP(t)
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "echo", Upstream: echo, Allow: []string{"site-a"}}}
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
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
	for deadline := time.Now().Add(10 * time.Second); counter(t, a, "tunnels_established") < 3; {
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
