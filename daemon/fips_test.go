package daemon_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// TestFIPSPairEndToEnd: two daemons with fips: true and
// tls.require_post_quantum, run with GODEBUG=fips140=on, pair and carry
// traffic both ways (SHA-256 compared); each journals the FIPS state at
// start, and every tunnel negotiated an approved hybrid group
// (SecP256r1MLKEM768: both halves approved) and an AES-GCM TLS suite. The
// test build is not from a certified snapshot, so each daemon warns;
// DYAD_FIPS_BIN names a build made with GOFIPS140=certified (make release)
// to run the pair on instead, which must say v1.0.0, certified, and not warn.
func TestFIPSPairEndToEnd(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	root := t.TempDir()
	bin, module, certified := dyadBin, "latest", "false"
	if b := os.Getenv("DYAD_FIPS_BIN"); b != "" {
		bin, module, certified = b, "v1.0.0", "true"
	}
	a, b := siteOf(t, bin, root, "site-a"), siteOf(t, bin, root, "site-b")
	local := freeTCP(t)
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "echo", Upstream: echo, Allow: []string{"site-a"}}}
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	a.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: "site-b", Service: "echo"}}
	for _, s := range []*daemontest.Site{a, b} {
		s.Env = []string{"GODEBUG=fips140=on"}
		s.Config.FIPS = true
		s.Config.TLS.RequirePostQuantum = true
	}
	start(t, b)
	start(t, a)
	for i := range 3 {
		if err := echoRoundTrip(local, 1<<20, uint64(i)); err != nil {
			t.Fatalf("round trip %d through the FIPS pair: %v", i, err)
		}
	}
	for _, s := range []*daemontest.Site{a, b} {
		if n := counters(t, s)["handshakes_refused"]; n != 0 {
			t.Errorf("%s refused %d handshakes", s.Name, n)
		}
		if warned := strings.Contains(s.Logs(), "not a certified snapshot"); warned != (certified == "false") {
			t.Errorf("%s warned %v that its module %s is not certified:\n%s", s.Name, warned, module, s.Logs())
		}
		es, _, err := s.Journal()
		if err != nil {
			t.Fatalf("%s journal: %v", s.Name, err)
		}
		started, tunnels := 0, 0
		for i := range es {
			e := &es[i]
			switch e.Name {
			case audit.DaemonStarted:
				started++
				want := map[string]string{audit.KeyFIPS: "true", audit.KeyFIPSRequired: "true", audit.KeyRequirePQ: "true",
					audit.KeyFIPSCertified: certified, audit.KeyFIPSModule: module, audit.KeyTLSCurve: "SecP256r1MLKEM768"}
				for k, v := range want {
					if got := e.Attr(k).Emit(); got != v {
						t.Errorf("%s %s: %s = %q, want %q", s.Name, e.Name, k, got, v)
					}
				}
			case audit.TunnelEstablished:
				tunnels++
				checkFIPSTunnel(t, s.Name, e)
			}
		}
		if started != 1 || tunnels == 0 {
			t.Errorf("%s journalled %d starts and %d tunnels", s.Name, started, tunnels)
		}
	}
	if bin != dyadBin {
		return
	}
	// dyad version says so too.
	out, err := exec.Command(dyadBin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "fips 140-3:   off") {
		t.Errorf("dyad version without GODEBUG: %v\n%s", err, out)
	}
	cmd := exec.Command(dyadBin, "version")
	cmd.Env = append(cmd.Environ(), "GODEBUG=fips140=on")
	out, err = cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "fips 140-3:   on, Go Cryptographic Module latest (not a certified snapshot") {
		t.Errorf("dyad version with GODEBUG=fips140=on: %v\n%s", err, out)
	}
}

func siteOf(t *testing.T, bin, root, name string) *daemontest.Site {
	t.Helper()
	s, err := daemontest.NewSite(bin, root, name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func checkFIPSTunnel(t *testing.T, site string, e *journal.Entry) {
	t.Helper()
	if got := e.Attr(audit.KeyTLSCurve).Emit(); got != "SecP256r1MLKEM768" {
		t.Errorf("%s tunnel key exchange %s, want SecP256r1MLKEM768", site, got)
	}
	if got := e.Attr(audit.KeyTLSCipher).Emit(); got != "TLS_AES_128_GCM_SHA256" && got != "TLS_AES_256_GCM_SHA384" {
		t.Errorf("%s tunnel TLS suite %s, want AES-GCM", site, got)
	}
}

// TestFIPSRefusesWithoutModule: fips: true in a process where Go's FIPS
// 140-3 module is not active stops the start with an error that says how
// to turn it on; nothing is journalled as started.
func TestFIPSRefusesWithoutModule(t *testing.T) {
	s := newSite(t, t.TempDir(), "site-a")
	s.Config.FIPS = true
	s.Env = []string{"GODEBUG=fips140=off"}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	err := s.Wait(10 * time.Second)
	if err == nil {
		t.Fatalf("dyad run with fips: true and no FIPS module exited 0:\n%s", s.Logs())
	}
	if logs := s.Logs(); !strings.Contains(logs, "fips: true, but Go's FIPS 140-3 module is not active") ||
		!strings.Contains(logs, "GODEBUG=fips140=on") {
		t.Fatalf("the refusal does not say why and how to fix it:\n%s", logs)
	}
	for _, e := range s.Events() {
		if e == audit.DaemonStarted {
			t.Fatal("journalled dyad.daemon.started")
		}
	}
}
