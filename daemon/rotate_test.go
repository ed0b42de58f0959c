package daemon_test

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// TestRotateUnderDownload: with real daemons, dyad rotate at A under a
// running download: the download completes with equal SHA-256; B pins the
// new key, learned over the tunnel; both sides audit both fingerprints
// (A with the caller's uid); A restarted keeps the new identity, B
// restarted keeps the key it learned, traffic flows on it, and A's journal
// verifies with the old key and the new one
// (a signed handover); after the overlap B refuses the old key.
func TestRotateUnderDownload(t *testing.T) {
	up := newUpstreamServer(t)
	root := t.TempDir()
	a, b := newSite(t, root, "site-a"), newSite(t, root, "site-b")
	local := freeTCP(t)
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "stream", Upstream: up.addr, Allow: []string{"site-a"}}}
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	a.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: "site-b", Service: "stream"}}
	for _, s := range []*daemontest.Site{a, b} {
		s.Config.Tunnel.ConnectTimeout = daemon.Duration(3 * time.Second)
		s.Config.Tunnel.ShutdownTimeout = daemon.Duration(2 * time.Second)
	}
	start(t, b)
	start(t, a)
	oldPub, err := identity.ParsePublicKey(a.PublicKey)
	if err != nil {
		t.Fatal(err)
	}

	const seed, size = 31, int64(64 << 20)
	tr := startDownload(local, size, seed, transferLimit)
	awaitMoved(t, tr, 1<<20)
	const overlap = 12 * time.Second
	out, code := runDyad(t, "rotate", "--config", a.ConfigPath(), "--overlap", overlap.String(), "--json")
	if code != 0 {
		t.Fatalf("dyad rotate: exit %d: %s", code, out)
	}
	var res daemon.RotateResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("dyad rotate --json: %v: %s", err, out)
	}
	if len(res.Peers) != 1 || res.Peers[0].Outcome != "accepted" || res.JournalHandover != "" {
		t.Fatalf("dyad rotate: %+v", res)
	}
	newPub, err := identity.ParsePublicKey(res.PublicKey)
	if err != nil || res.Fingerprint != newPub.Fingerprint() || res.PreviousFingerprint != oldPub.Fingerprint() {
		t.Fatalf("dyad rotate: fingerprints %+v (%v)", res, err)
	}
	awaitDone(t, "the download across the rotation", tr, transferLimit)
	if verdict, err := cutVerdict(tr.n, tr.sum, tr.err, size, seed); err != nil || verdict != "complete" {
		t.Fatalf("the download across the rotation: %s %v", verdict, err)
	}
	e := eventWith(t, a, audit.IdentityRotated, nil)
	if e.Attr(audit.KeyFingerprint).AsString() != res.Fingerprint || e.Attr(audit.KeyPreviousFingerprint).AsString() != res.PreviousFingerprint ||
		e.Attr(audit.KeyControlUID).AsInt64() != int64(os.Getuid()) {
		t.Fatalf("%s: %v", audit.IdentityRotated, e.Attrs)
	}
	e = eventWith(t, b, audit.PeerKeyRotated, nil)
	if e.Attr(audit.KeyPeerFingerprint).AsString() != res.Fingerprint || e.Attr(audit.KeyPeerPreviousFingerprint).AsString() != res.PreviousFingerprint {
		t.Fatalf("%s: %v", audit.PeerKeyRotated, e.Attrs)
	}

	// Both restart: A uses the state directory's identity, B the key it
	// learned (its YAML file still pins the old one); traffic flows on the
	// new key, and A's journal continues across the handover.
	for _, s := range []*daemontest.Site{a, b} {
		if err := s.Stop(15 * time.Second); err != nil {
			t.Fatal(err)
		}
		if err := s.StartReady(10 * time.Second); err != nil {
			t.Fatalf("%s: restart after the rotation: %v\n%s", s.Name, err, s.Logs())
		}
	}
	fresh := startDownload(local, 4<<20, seed+1, transferLimit)
	awaitDone(t, "a download after the restart", fresh, transferLimit)
	if verdict, err := cutVerdict(fresh.n, fresh.sum, fresh.err, 4<<20, seed+1); err != nil || verdict != "complete" {
		t.Fatalf("a download after the restart: %s %v", verdict, err)
	}
	for _, k := range []identity.PublicKey{oldPub, newPub} {
		v, err := journal.NewVerifier("dyad/site-a", ed25519.PublicKey(k.Sign[:]))
		if err != nil {
			t.Fatal(err)
		}
		r, err := journal.Verify(filepath.Join(a.Dir, "audit"), journal.VerifyOptions{Verifier: v})
		if err != nil || !r.OK() {
			t.Fatalf("site-a's journal with key %s: %v %v", k.Fingerprint(), err, r.Bad)
		}
	}
	if out, code := runDyad(t, "audit", "verify", "--config", a.ConfigPath()); code != 0 {
		t.Fatalf("dyad audit verify after the rotation: exit %d: %s", code, out)
	}

	// After the overlap, the old key (still in A's key file) is refused.
	time.Sleep(time.Until(res.OverlapUntil) + 2*time.Second)
	eventWith(t, b, audit.PeerKeyRetired, nil)
	stale := newSite(t, root, "site-stale")
	key, err := os.ReadFile(filepath.Join(a.Dir, "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale.Dir, "identity.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	stale.Config.Site = "site-a"
	stale.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	start(t, stale)
	eventWith(t, b, audit.PeerAuthRefused, func(e journal.Entry) bool {
		return e.Attr(audit.KeyPeerFingerprint).AsString() == oldPub.Fingerprint() && e.Attr(audit.KeyReason).AsString() == "unknown_key"
	})
	fresh = startDownload(local, 1<<20, seed+2, transferLimit)
	awaitDone(t, "a download after the overlap", fresh, transferLimit)
	if verdict, err := cutVerdict(fresh.n, fresh.sum, fresh.err, 1<<20, seed+2); err != nil || verdict != "complete" {
		t.Fatalf("a download after the overlap: %s %v", verdict, err)
	}
}
