package tunnel

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/audittest"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// peerConnWithKey waits up to 5 s for n's link to peer to hold a live
// connection the peer authenticated with key.
func peerConnWithKey(t *testing.T, n *Node, peer string, key identity.PublicKey) *tconn {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, tc := range n.link(peer).live() {
			if tc.key == key.Sign {
				return tc
			}
		}
	}
	t.Fatalf("no live connection from %s with key %s", peer, key.Fingerprint())
	return nil
}

// TestRotationUnderTraffic: A rotates its identity while a download runs.
// The download finishes with equal SHA-256 on the connection the old key
// authenticated; B learns the new key over the tunnel, signed by the old
// one, and both sides audit both fingerprints; a new connection
// authenticates A with the new key and carries traffic.
func TestRotationUnderTraffic(t *testing.T) { bothTransports(t, testRotationUnderTraffic) }

func testRotationUnderTraffic(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b := pairConns(t, echo, 1)
	oldA := a.Identity()
	old := liveConns(t, a, "b", 1)[0]

	type result struct {
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		ok, err := transfer(t, a, 8<<20)
		done <- result{ok, err}
	}()
	for deadline := time.Now().Add(5 * time.Second); old.active.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the download did not start")
		}
	}
	next := newIdentity(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := a.Rotate(ctx, next, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Peers) != 1 || res.Peers[0].Outcome != "accepted" {
		t.Fatalf("announcement outcomes %+v, want b accepted", res.Peers)
	}
	if r := <-done; !r.ok || r.err != nil {
		t.Fatalf("download across the rotation: equal %v, err %v", r.ok, r.err)
	}
	if !old.alive() {
		t.Fatal("the old key's connection ended at the rotation; it must live through the overlap")
	}
	event(t, a, audit.IdentityRotated, attribute.String(audit.KeyFingerprint, next.Public().Fingerprint()),
		attribute.String(audit.KeyPreviousFingerprint, oldA.Fingerprint()))
	event(t, a, audit.IdentityAnnounced, attribute.String(audit.KeyPeer, "b"), attribute.String(audit.KeyReason, "accepted"))
	event(t, b, audit.PeerKeyRotated, attribute.String(audit.KeyPeer, "a"),
		attribute.String(audit.KeyPeerFingerprint, next.Public().Fingerprint()),
		attribute.String(audit.KeyPeerPreviousFingerprint, oldA.Fingerprint()))
	if got := b.Stats.PeerKeysRotated.Load(); got != 1 {
		t.Fatalf("peer_keys_rotated %d, want 1", got)
	}
	if st := b.Status(); len(st) != 1 || st[0].Fingerprint != next.Public().Fingerprint() {
		t.Fatalf("b's status shows %+v, want a's new fingerprint", st)
	}

	// A new connection: A presents the new key (B took the announcement).
	fresh := redial(t, a)
	if fresh.local != next {
		t.Fatal("a new connection after the announcement still presents the old identity")
	}
	peerConnWithKey(t, b, "a", next.Public())
	if err := echoOn(fresh, "echo"); err != nil {
		t.Fatalf("echo on the new key's connection: %v", err)
	}
	if err := echoOn(old, "echo"); err != nil {
		t.Fatalf("echo on the old key's connection within the overlap: %v", err)
	}
}

// TestRotationOldKeyRefusedAfterOverlap: when the overlap ends, both sides
// close the connections the old key authenticated and audit it, the old
// key is refused from then on, and traffic flows on the new key.
func TestRotationOldKeyRefusedAfterOverlap(t *testing.T) {
	bothTransports(t, testRotationOldKeyRefusedAfterOverlap)
}

func testRotationOldKeyRefusedAfterOverlap(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b := pairConns(t, echo, 1)
	oldID := a.self.Load().cur
	old := liveConns(t, a, "b", 1)[0]
	next := newIdentity(t)
	res, err := a.Rotate(context.Background(), next, 2*time.Second)
	if err != nil || res.Peers[0].Outcome != "accepted" {
		t.Fatalf("rotate: %v %+v", err, res.Peers)
	}
	closedWithin(t, old, 5*time.Second, "the old key's connection after the overlap")
	event(t, a, audit.IdentityRetired, attribute.String(audit.KeyPreviousFingerprint, oldID.Public().Fingerprint()))
	event(t, b, audit.PeerKeyRetired, attribute.String(audit.KeyPeerPreviousFingerprint, oldID.Public().Fingerprint()))
	for _, tc := range b.link("a").live() {
		if tc.key == oldID.Public().Sign {
			t.Fatal("b still holds a connection of a's old key after the overlap")
		}
	}
	if ok, err := transfer(t, a, 1<<20); !ok || err != nil {
		t.Fatalf("traffic on the new key after the overlap: equal %v, err %v", ok, err)
	}
	peerConnWithKey(t, b, "a", next.Public())

	// The old key, presented again (a copy of the old key file), is
	// refused like a stranger's.
	stale := startNode(t, oldID, Config{ConnectTimeout: time.Second,
		Peers: []Peer{{Name: "b", Key: b.Identity(), Endpoint: b.Addr().String()}}})
	_ = stale
	event(t, b, audit.PeerAuthRefused, attribute.String(audit.KeyPeerFingerprint, oldID.Public().Fingerprint()),
		attribute.String(audit.KeyReason, "unknown_key"))
}

// TestRotationPeerOfflineAtAnnouncement: a peer that is down when A
// rotates learns the new key when A dials it within the overlap (A dials
// with the old key and announces on that connection). A peer away for the
// whole overlap no longer reaches A with the key it pinned, until the new
// key is pinned by hand.
func TestRotationPeerOfflineAtAnnouncement(t *testing.T) {
	bothTransports(t, testRotationPeerOfflineAtAnnouncement)
}

func testRotationPeerOfflineAtAnnouncement(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	ida, idb, idc := newIdentity(t), newIdentity(t), newIdentity(t)
	bAddr := tunneltest.FreeAddr(t) // b's port (UDP and TCP), free until b starts
	a := startNode(t, ida, Config{ConnectTimeout: time.Second, Peers: []Peer{
		{Name: "b", Key: idb.Public(), Endpoint: bAddr},
		{Name: "c", Key: idc.Public()}, // c dials a
	}, Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"b", "c"}}}})
	next := newIdentity(t)
	// The overlap leaves b time to come back after Rotate has waited out
	// both peers' connect timeouts (3 s was too short for CI under -race).
	res, err := a.Rotate(context.Background(), next, 8*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range res.Peers {
		if o.Outcome != "no_tunnel" {
			t.Fatalf("outcome %+v, want no_tunnel for both", o)
		}
	}

	// b comes back within the overlap, knowing a by its old key.
	pc, err := net.ListenPacket("udp", bAddr)
	if err != nil {
		t.Skipf("b's port was taken meanwhile: %v", err)
	}
	aud := audittest.NewJournal(t)
	b, err := New(pc, idb, Config{Peers: []Peer{{Name: "a", Key: ida.Public(), Endpoint: a.Addr().String()}}},
		zerolog.New(zerolog.NewTestWriter(t)), aud.Auditor)
	if err != nil {
		t.Fatal(err)
	}
	journals.Store(b, aud)
	t.Cleanup(b.Close)
	if defaultTransport == TransportTCP { // a dials b's TCP port of the same number
		ln, err := net.Listen("tcp", bAddr)
		if err != nil {
			t.Skipf("b's TCP port was taken meanwhile: %v", err)
		}
		b.ServeTCP(ln)
	}
	event(t, b, audit.PeerKeyRotated, attribute.String(audit.KeyPeerFingerprint, next.Public().Fingerprint()),
		attribute.String(audit.KeyPeerPreviousFingerprint, ida.Public().Fingerprint()))
	event(t, a, audit.IdentityAnnounced, attribute.String(audit.KeyPeer, "b"), attribute.String(audit.KeyReason, "accepted"))
	if !a.link("b").acked.Load() {
		t.Fatal("a does not know that b took its new key")
	}

	// c was away for the whole overlap: pinned to a's old key, it does
	// not get through (the dark listener does not answer the old key's
	// MAC any more, and a presents the new key).
	time.Sleep(time.Until(res.Announcement.Until) + 200*time.Millisecond)
	c := startNode(t, idc, Config{ConnectTimeout: time.Second, Peers: []Peer{{Name: "a", Key: ida.Public(), Endpoint: a.Addr().String()}}})
	time.Sleep(2 * time.Second)
	if tc, _ := c.link("a").pick(); tc != nil {
		t.Fatal("a peer pinned to the retired key connected after the overlap")
	}
	// Pinned by hand, the new key works.
	if err := c.Update(Config{ConnectTimeout: time.Second, Peers: []Peer{{Name: "a", Key: next.Public(), Endpoint: a.Addr().String()}}}); err != nil {
		t.Fatal(err)
	}
	current(t, c, "a")
}

// TestRotationTamperedAnnouncementRefused: an announcement whose old-key
// signature does not verify, one signed by a key other than the
// connection's, and one with a deadline beyond MaxOverlap are refused,
// counted by reason and audited; nothing is pinned.
func TestRotationTamperedAnnouncementRefused(t *testing.T) {
	bothTransports(t, testRotationTamperedAnnouncementRefused)
}

func testRotationTamperedAnnouncementRefused(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b := pairConns(t, echo, 1)
	tc := liveConns(t, a, "b", 1)[0]
	cur := a.self.Load().cur
	next := newIdentity(t)
	ctx := context.Background()

	bad := NewAnnouncement(cur, next, 1, time.Now().Add(time.Hour))
	bad.Until = bad.Until.Add(time.Hour) // signed for another deadline
	if st, err := a.sendAnnouncement(ctx, tc, &bad); err != nil || st != StatusAnnouncementRefused {
		t.Fatalf("tampered announcement: status %v, err %v", st, err)
	}
	stranger := newIdentity(t)
	foreign := NewAnnouncement(stranger, next, 2, time.Now().Add(time.Hour))
	if st, err := a.sendAnnouncement(ctx, tc, &foreign); err != nil || st != StatusAnnouncementRefused {
		t.Fatalf("foreign announcement: status %v, err %v", st, err)
	}
	far := NewAnnouncement(cur, next, 3, time.Now().Add(MaxOverlap+time.Hour))
	if st, err := a.sendAnnouncement(ctx, tc, &far); err != nil || st != StatusAnnouncementRefused {
		t.Fatalf("announcement beyond the maximum overlap: status %v, err %v", st, err)
	}
	snap := b.Stats.Snapshot()
	for _, r := range []string{reasonBadOldSignature, reasonNotConnKey, reasonDeadline} {
		if snap["announcements_refused."+r] != 1 {
			t.Fatalf("announcements_refused.%s = %d, want 1 (%v)", r, snap["announcements_refused."+r], snap)
		}
		event(t, b, audit.PeerKeyRotationRefused, attribute.String(audit.KeyPeer, "a"), attribute.String(audit.KeyReason, r),
			attribute.String(audit.KeyPeerFingerprint, cur.Public().Fingerprint()))
	}
	if b.Stats.PeerKeysRotated.Load() != 0 || b.link("a").current().Key != cur.Public() {
		t.Fatal("a refused announcement changed the pinned key")
	}
	if err := echoOn(tc, "echo"); err != nil {
		t.Fatalf("the tunnel after refused announcements: %v", err)
	}
}

// TestAnnouncementRoundTrip: what Append writes, ParseAnnouncement reads
// back, and Verify accepts; any flipped byte is refused.
func TestAnnouncementRoundTrip(t *testing.T) {
	a := NewAnnouncement(newIdentity(t), newIdentity(t), 42, time.Now().Add(time.Hour))
	body := a.Append(nil)
	got, err := ParseAnnouncement(body)
	if err != nil || got != a || got.Verify() != nil {
		t.Fatalf("round trip: %v, equal %v", err, got == a)
	}
	for i := range body {
		flipped := append([]byte(nil), body...)
		flipped[i] ^= 1
		if p, err := ParseAnnouncement(flipped); err == nil && p.Verify() == nil {
			t.Fatalf("byte %d flipped: still verifies", i)
		}
	}
}

// TestRotationTwiceSurvivesReload: A rotates twice; B, whose configuration
// still pins A's first key, keeps the newest one across a reload of that
// configuration, and the tunnel carries traffic on it. A reload that pins
// another key by hand wins over what B learned.
func TestRotationTwiceSurvivesReload(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	ida, idb := newIdentity(t), newIdentity(t)
	bcfg := Config{Peers: []Peer{{Name: "a", Key: ida.Public()}},
		Services: []Service{{Name: "echo", Upstream: echo, Allow: []string{"a"}}}}
	b := startNode(t, idb, bcfg)
	a := startNode(t, ida, Config{Connections: 1, Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: b.Addr().String()}}})
	liveConns(t, a, "b", 1)
	var last *identity.Identity
	for i := range 2 {
		last = newIdentity(t)
		// An overlap long enough for the announcement's round trip under
		// -race on a busy machine (1 s retired the key first in CI).
		res, err := a.Rotate(context.Background(), last, 3*time.Second)
		if err != nil || res.Peers[0].Outcome != "accepted" {
			t.Fatalf("rotation %d: %v %+v", i, err, res.Peers)
		}
		time.Sleep(time.Until(res.Announcement.Until) + 300*time.Millisecond)
		peerConnWithKey(t, b, "a", last.Public())
	}
	if err := b.Update(bcfg); err != nil { // SIGHUP with the file as written
		t.Fatal(err)
	}
	if got := b.link("a").current().Key; got != last.Public() {
		t.Fatalf("after the reload b pins %s, want a's newest key %s", got.Fingerprint(), last.Public().Fingerprint())
	}
	if ok, err := transfer(t, a, 256<<10); !ok || err != nil {
		t.Fatalf("traffic after two rotations and a reload: %v %v", ok, err)
	}
	other := newIdentity(t)
	bcfg.Peers[0].Key = other.Public()
	if err := b.Update(bcfg); err != nil {
		t.Fatal(err)
	}
	if got := b.link("a").current().Key; got != other.Public() {
		t.Fatal("a key pinned by hand did not win over the learned one")
	}
}
