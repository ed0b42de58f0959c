package daemon_test

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/daemon/state"
	"github.com/dyad-tunnel/dyad/enroll"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// enrollRig is an inviter B exporting "stream" and a joiner A, neither
// pinning the other: no key is ever copied between them.
type enrollRig struct {
	a, b *daemontest.Site
	up   *upstreamServer
}

func newEnrollRig(t *testing.T) *enrollRig {
	t.Helper()
	r := &enrollRig{up: newUpstreamServer(t)}
	root := t.TempDir()
	r.a, r.b = newSite(t, root, "site-a"), newSite(t, root, "site-b")
	r.b.Config.Services = []daemon.ServiceFile{{Name: "stream", Upstream: r.up.addr}, {Name: "hidden", Upstream: r.up.addr}}
	for _, s := range []*daemontest.Site{r.a, r.b} {
		s.Config.Tunnel.ConnectTimeout = daemon.Duration(2 * time.Second)
		s.Config.Tunnel.ShutdownTimeout = daemon.Duration(2 * time.Second)
	}
	start(t, r.b)
	start(t, r.a)
	return r
}

// invite runs dyad invite at s and returns the token.
func invite(t *testing.T, s *daemontest.Site, args ...string) string {
	t.Helper()
	out, code := runDyad(t, append([]string{"invite", "--config", s.ConfigPath(), "--json", "--endpoint", s.Config.Listen}, args...)...)
	if code != 0 {
		t.Fatalf("dyad invite: exit %d: %s", code, out)
	}
	var r daemon.InviteResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("dyad invite output: %v: %s", err, out)
	}
	return r.Token
}

// join runs dyad join at s; it returns the output and exit code.
func join(t *testing.T, s *daemontest.Site, token string, args ...string) (string, int) {
	t.Helper()
	return runDyad(t, append([]string{"join", "--config", s.ConfigPath()}, append(args, token)...)...)
}

func stateFiles(t *testing.T, s *daemontest.Site) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range []string{state.PeersFile, state.RevokedFile} {
		b, err := os.ReadFile(filepath.Join(s.Dir, "state", f))
		if err == nil {
			out[f] = string(b)
		}
	}
	return out
}

func eventWith(t *testing.T, s *daemontest.Site, name string, match func(journal.Entry) bool) journal.Entry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		es, _, _ := s.Journal()
		for _, e := range es {
			if e.Name == name && (match == nil || match(e)) {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s in the journal", s.Name, name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestInviteJoinTraffic: with real daemons, dyad invite at B and dyad join
// at A pair the sites with no key copied: both pin each other, both audit
// dyad.peer.enrolled with the same verification phrase and the caller's
// uid, and a download through A's new forward arrives whole.
func TestInviteJoinTraffic(t *testing.T) {
	r := newEnrollRig(t)
	// dyad invite --wait: the token on the first line, the phrase on the
	// second once A joined.
	inv := exec.Command(dyadBin, "invite", "--config", r.b.ConfigPath(), "--json", "--endpoint", r.b.Config.Listen,
		"--peer", "site-a", "--service", "stream", "--wait", "30s")
	stdout, err := inv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Start(); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(stdout)
	var invited daemon.InviteResult
	if err := dec.Decode(&invited); err != nil {
		t.Fatalf("dyad invite --wait: %v", err)
	}
	token := invited.Token
	local := freeTCP(t)
	out, code := join(t, r.a, token, "--json", "--forward", local+"=stream")
	if code != 0 {
		t.Fatalf("dyad join: exit %d: %s", code, out)
	}
	var res daemon.JoinResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.Peer != "site-b" || len(strings.Fields(res.Phrase)) != enroll.PhraseWords {
		t.Fatalf("join result %+v", res)
	}
	var joined daemon.WaitResult
	if err := dec.Decode(&joined); err != nil || inv.Wait() != nil {
		t.Fatalf("dyad invite --wait after the join: %v", err)
	}
	if joined.Phrase != res.Phrase || joined.Peer != "site-a" {
		t.Fatalf("inviter's phrase %q for %s, joiner's %q", joined.Phrase, joined.Peer, res.Phrase)
	}
	const seed, size = 7, 4 << 20
	tr := startDownload(local, size, seed, 20*time.Second)
	awaitDone(t, "the download through the enrolled pair", tr, 25*time.Second)
	if verdict, err := cutVerdict(tr.n, tr.sum, tr.err, size, seed); err != nil || verdict != "complete" {
		t.Fatalf("download: %s %v", verdict, err)
	}
	uid := int64(os.Getuid())
	for _, c := range []struct {
		s          *daemontest.Site
		peer, role string
	}{{r.b, "site-a", "inviter"}, {r.a, "site-b", "joiner"}} {
		e := eventWith(t, c.s, audit.PeerEnrolled, nil)
		if e.Attr(audit.KeyPeer).AsString() != c.peer || e.Attr(audit.KeyEnrollRole).AsString() != c.role ||
			e.Attr(audit.KeyEnrollPhrase).AsString() != res.Phrase || e.Attr(audit.KeyControlUID).AsInt64() != uid {
			t.Errorf("%s: %s = %v, want peer %s role %s phrase %q uid %d", c.s.Name, audit.PeerEnrolled, e.Attrs, c.peer, c.role, res.Phrase, uid)
		}
	}
	eventWith(t, r.b, audit.PeerInvited, func(e journal.Entry) bool { return e.Attr(audit.KeyControlUID).AsInt64() == uid })
	// The YAML files are untouched: the pairing lives in the state.
	for _, s := range []*daemontest.Site{r.a, r.b} {
		b, _ := os.ReadFile(s.ConfigPath())
		if strings.Contains(string(b), "dyad1:") {
			t.Errorf("%s: the YAML file holds a key", s.Name)
		}
		fi, err := os.Stat(filepath.Join(s.Dir, "state", state.PeersFile))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: peers.json: %v %v", s.Name, fi, err)
		}
	}
	// A restart reads the state: the pair comes back by itself.
	if err := r.a.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	start(t, r.a)
	tr = startDownload(local, 1<<20, seed, 20*time.Second)
	awaitDone(t, "the download after A's restart", tr, 25*time.Second)
	if verdict, err := cutVerdict(tr.n, tr.sum, tr.err, 1<<20, seed); err != nil || verdict != "complete" {
		t.Fatalf("download after restart: %s %v", verdict, err)
	}
}

// TestInviteJoinRefusals: a mistyped, tampered, replayed, expired or
// unknown token is refused with a clear error, and nothing changes on
// either side; each refusal at the inviter is audited with the reason.
func TestInviteJoinRefusals(t *testing.T) {
	r := newEnrollRig(t)
	c := newSite(t, filepath.Dir(r.a.Dir), "site-c")
	start(t, c)
	token := invite(t, r.b, "--peer", "site-a", "--service", "stream")
	if out, code := join(t, r.a, token); code != 0 {
		t.Fatalf("first join: %s", out)
	}
	bState := stateFiles(t, r.b)
	tok, err := enroll.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	reencode := func(change func(*enroll.Token)) string {
		x := *tok
		change(&x)
		s, err := x.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// No invitation is pending now: the used one still answers "used".
	if out, code := join(t, c, token); code == 0 || !strings.Contains(out, "used already") {
		t.Fatalf("replay with no invitation pending: %d %s", code, out)
	}
	mistyped := []byte(token)
	i := len(mistyped) / 2
	mistyped[i] = map[bool]byte{true: 'b', false: 'a'}[mistyped[i] == 'a']
	fresh := invite(t, r.b, "--peer", "site-x")
	// site-x's invitation expires at B (its record is rewritten into the
	// past) while the token still looks valid.
	st, err := state.Load(filepath.Join(r.b.Dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range st.Invites {
		if st.Invites[i].Peer == "site-x" {
			st.Invites[i].Expires = time.Now().Add(-time.Second)
		}
	}
	if err := st.SaveInvites(); err != nil {
		t.Fatal(err)
	}
	bState = stateFiles(t, r.b)

	for _, tc := range []struct {
		name, token, want, reason string
	}{
		{"replayed", token, "used already", "used_token"},
		{"mistyped", string(mistyped), "checksum", ""},
		{"cut", token[:len(token)-5], "checksum", ""},
		{"tampered secret", reencode(func(x *enroll.Token) { x.Secret[0] ^= 1 }), "no pending invitation", "invalid_token"},
		{"tampered services", reencode(func(x *enroll.Token) { x.Services = []string{"stream", "hidden"}; x.Secret[1] ^= 1 }), "no pending invitation", "invalid_token"},
		{"expired token", reencode(func(x *enroll.Token) { x.Expires = time.Now().Add(-time.Minute) }), "expired", ""},
		{"expired at the inviter", fresh, "expired", "expired_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := join(t, c, tc.token)
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, output %q; want a refusal saying %q", code, out, tc.want)
			}
			if got := stateFiles(t, c); len(got) != 0 {
				t.Errorf("the refused joiner wrote state: %v", got)
			}
			if tc.reason != "" {
				eventWith(t, r.b, audit.PeerEnrollRefused, func(e journal.Entry) bool { return e.Attr(audit.KeyReason).AsString() == tc.reason })
			}
		})
	}
	if got := stateFiles(t, r.b); got[state.PeersFile] != bState[state.PeersFile] {
		t.Errorf("B's peers changed by refused joins:\n%s\nwas\n%s", got[state.PeersFile], bState[state.PeersFile])
	}
	// A refused joiner never reached a service: B pins only site-a.
	var status struct{ Peers []struct{ Name string } }
	if st, err := r.b.Status(); err == nil {
		b, _ := json.Marshal(st)
		json.Unmarshal(b, &status)
	}
	for _, p := range status.Peers {
		if p.Name != "site-a" {
			t.Errorf("B pins %q", p.Name)
		}
	}
	// Joining the same inviter twice is refused locally.
	if out, code := join(t, r.a, invite(t, r.b, "--peer", "site-a2")); code == 0 || !strings.Contains(out, "pinned already") {
		t.Errorf("second join of the same inviter: %d %s", code, out)
	}
}

// TestRevokeCutsTransfer: dyad revoke at the inviter removes the enrolled
// peer and cuts its running download within a second; the event names the
// caller's uid; new connections are refused; and a revoked YAML peer's key
// stays unpinned across a reload. THREATS P1.
func TestRevokeCutsTransfer(t *testing.T) {
	r := newEnrollRig(t)
	token := invite(t, r.b, "--peer", "site-a", "--service", "stream")
	local := freeTCP(t)
	if out, code := join(t, r.a, token, "--forward", local+"=stream"); code != 0 {
		t.Fatalf("join: %s", out)
	}
	const seed = 11
	tr := startDownload(local, faultBig, seed, transferLimit)
	defer func() { awaitDone(t, "the revoked download", tr, 15*time.Second) }()
	awaitMoved(t, tr, 1<<20)
	revoked := time.Now()
	out, code := runDyad(t, "revoke", "--config", r.b.ConfigPath(), "site-a")
	if code != 0 || !strings.Contains(out, "Revoked site-a") {
		t.Fatalf("dyad revoke: exit %d: %s", code, out)
	}
	awaitDone(t, "the download of the revoked peer", tr, 5*time.Second)
	if took := tr.ended.Sub(revoked); took > 2*time.Second {
		t.Fatalf("the download was cut %v after dyad revoke was run, want within 1 s of it taking effect", took)
	}
	if verdict, err := cutVerdict(tr.n, tr.sum, tr.err, faultBig, seed); err != nil || verdict != "reset" {
		t.Fatalf("the revoked download: %s %v", verdict, err)
	}
	e := eventWith(t, r.b, audit.PeerRevoked, nil)
	if e.Attr(audit.KeyControlUID).AsInt64() != int64(os.Getuid()) || e.Attr(audit.KeyPeerSource).AsString() != "state" {
		t.Fatalf("%s: %v", audit.PeerRevoked, e.Attrs)
	}
	fresh := startDownload(local, 64<<10, seed+1, 10*time.Second)
	awaitDone(t, "a new connection after the revocation", fresh, 10*time.Second)
	if fresh.err == nil || errors.Is(fresh.err, os.ErrDeadlineExceeded) {
		t.Fatalf("a new connection after the revocation: %d bytes, %v; want a refusal", fresh.n, fresh.err)
	}
	if out, code := runDyad(t, "revoke", "--config", r.b.ConfigPath(), "site-a"); code == 0 || !strings.Contains(out, "no peer") {
		t.Fatalf("second revoke: %d %s", code, out)
	}
}

// TestRevokeConfigPeer: dyad revoke of a peer the YAML file lists cuts its
// tunnel and records the key as revoked; a reload of the unchanged file
// keeps it unpinned. Another local user cannot run it: the control
// socket refuses uid 65534 and nothing changes.
func TestRevokeConfigPeer(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b, local := twoSites(t, echo)
	echoOnce(t, local)
	if os.Getuid() == 0 {
		// A copy of the binary that uid 65534 may run.
		dir, err := os.MkdirTemp("", "dyad-nobody-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		os.Chmod(dir, 0o755)
		bin, _ := os.ReadFile(dyadBin)
		nb := filepath.Join(dir, "dyad")
		os.WriteFile(nb, bin, 0o755)
		os.Chmod(b.Dir, 0o755) // let it read the configuration: the socket's own modes must refuse it
		os.Chmod(b.ConfigPath(), 0o644)
		cmd := exec.Command(nb, "revoke", "--config", b.ConfigPath(), "site-a")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "permission denied") {
			t.Fatalf("dyad revoke as uid 65534: %v: %s", err, out)
		}
		echoOnce(t, local) // still paired
	}
	out, code := runDyad(t, "revoke", "--config", b.ConfigPath(), "site-a")
	if code != 0 || !strings.Contains(out, "stays revoked") {
		t.Fatalf("dyad revoke: %d %s", code, out)
	}
	e := eventWith(t, b, audit.PeerRevoked, nil)
	if e.Attr(audit.KeyPeerSource).AsString() != "config" || e.Attr(audit.KeyControlUID).AsInt64() != int64(os.Getuid()) {
		t.Fatalf("%s: %v", audit.PeerRevoked, e.Attrs)
	}
	refused := func() {
		t.Helper()
		c, err := net.DialTimeout("tcp", local, 2*time.Second)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("x"))
		if n, _ := c.Read(make([]byte, 1)); n > 0 {
			t.Fatal("the revoked peer still reaches the service")
		}
	}
	refused()
	if err := b.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventWith(t, b, audit.ConfigReloaded, nil)
	refused()
	if out, _ := runDyad(t, "check", "--config", b.ConfigPath()); !strings.Contains(out, "was revoked") {
		t.Fatalf("dyad check does not say the YAML peer is revoked: %s", out)
	}
	_ = a
}

// echoOnce sends one byte through local and reads it back.
func echoOnce(t *testing.T, local string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", local, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("echo through %s: %v", local, err)
	}
}

// TestJoinPrintAndInviteChecks: dyad join --print enrols (the inviter pins
// the joiner) but writes no state and prints the entry to add; dyad invite
// refuses a service this site does not have, a name already pinned, and a
// listen address nobody can dial without --endpoint.
func TestJoinPrintAndInviteChecks(t *testing.T) {
	r := newEnrollRig(t)
	token := invite(t, r.b, "--peer", "site-a", "--service", "stream")
	out, code := join(t, r.a, token, "--print")
	if code != 0 || !strings.Contains(out, "peers:") || !strings.Contains(out, r.b.PublicKey) || !strings.Contains(out, "Verification phrase:") {
		t.Fatalf("dyad join --print: %d %s", code, out)
	}
	if got := stateFiles(t, r.a); len(got) != 0 {
		t.Fatalf("join --print wrote state: %v", got)
	}
	if !strings.Contains(stateFiles(t, r.b)[state.PeersFile], `"site-a"`) {
		t.Fatal("the inviter did not pin the --print joiner")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--peer", "site-c", "--service", "nope"}, "not a service"},
		{[]string{"--peer", "site-a"}, "pinned already"},
		{[]string{"--peer", "bad name"}, "peer name"},
		{[]string{"--peer", "site-c", "--expires", "800h"}, "--expires"},
	} {
		out, code := runDyad(t, append([]string{"invite", "--config", r.b.ConfigPath(), "--endpoint", r.b.Config.Listen}, tc.args...)...)
		if code == 0 || !strings.Contains(out, tc.want) {
			t.Errorf("dyad invite %v: %d %s; want %q", tc.args, code, out, tc.want)
		}
	}
}
