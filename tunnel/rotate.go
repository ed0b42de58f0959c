package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// Identity rotation (codec/FORMAT.md, "Identity rotation"; README, "Key
// rotation").
//
// The rotating side (Rotate) makes the new identity current at once: new
// connections it accepts present the new key. It signs an Announcement with
// both keys and sends it to each peer over a live tunnel. A peer verifies
// it, pins the new key and keeps the old one pinned as a PreviousKey until
// the announced deadline (the overlap). Until a peer has taken the
// announcement, we dial it with the old identity and announce again on
// every connection, so a peer that was down at the rotation learns the new
// key when it comes back within the overlap. At the deadline both sides
// close the connections the old key authenticated, and the old key is
// refused from then on. A peer that was away for the whole overlap no
// longer recognises us: it logs the key it expected and the one it was
// shown, and must be given the new key by hand (or pair again).
//
// State machine of a node's own identity:
//
//	single(cur) --Rotate--> overlap(cur=new, prev=old, until) --until--> single(new)

// selfKeys is the node's own identity: cur, and during a rotation's
// overlap prev, the identity rotated away from. Immutable; swapped whole.
type selfKeys struct {
	cur  *identity.Identity
	cert tls.Certificate
	// During an overlap: the previous identity, its certificate, the
	// deadline, and the signed announcement of cur.
	prev     *identity.Identity
	prevCert tls.Certificate
	until    time.Time
	ann      *Announcement
}

func newSelfKeys(id *identity.Identity, h *Handover) (*selfKeys, error) {
	cert, err := id.Certificate()
	if err != nil {
		return nil, err
	}
	s := &selfKeys{cur: id, cert: cert}
	if h == nil || h.Previous == nil || !time.Now().Before(h.Announcement.Until) {
		return s, nil // no handover, or its overlap is over: the old key is gone
	}
	a := h.Announcement
	if !a.New.Equal(id.Public()) || !a.Old.Equal(h.Previous.Public()) {
		return nil, errors.New("identity handover: its announcement is not from the previous identity to this one")
	}
	if err := a.Verify(); err != nil {
		return nil, fmt.Errorf("identity handover: %w", err)
	}
	if s.prevCert, err = h.Previous.Certificate(); err != nil {
		return nil, err
	}
	s.prev, s.until, s.ann = h.Previous, a.Until, &a
	return s, nil
}

// forPeer returns the identity and certificate to dial a peer with: the
// previous one until the peer took our announcement (acked).
func (s *selfKeys) forPeer(acked bool) (*identity.Identity, tls.Certificate) {
	if s.prev != nil && !acked {
		return s.prev, s.prevCert
	}
	return s.cur, s.cert
}

// validate refuses a configuration in which a peer holds our key (current
// or previous).
func (s *selfKeys) validate(c Config) error {
	if err := c.ValidateSelf(s.cur.Public()); err != nil {
		return err
	}
	if s.prev != nil {
		return c.ValidateSelf(s.prev.Public())
	}
	return nil
}

// Identity returns the node's current public key.
func (n *Node) Identity() identity.PublicKey { return n.self.Load().cur.Public() }

// withLearned returns cfg with the rotations learned from peers applied: a
// peer whose configured key is the one a rotation started from gets the
// new key, the old one accepted until the deadline. A configured key that
// is neither (the operator pinned another by hand) wins, and the learned
// rotation is forgotten.
func (n *Node) withLearned(cfg Config) Config {
	if len(n.learned) == 0 {
		return cfg
	}
	peers := make([]Peer, len(cfg.Peers))
	copy(peers, cfg.Peers)
	for i, p := range peers {
		r, ok := n.learned[p.Name]
		if !ok {
			continue
		}
		a := r.Announcement
		if p.Key.Equal(r.Base) || p.Key.Equal(a.Old) || p.Key.Equal(a.New) {
			p.Key = a.New
			if time.Now().Before(a.Until) {
				p.Previous = append(p.Previous[:len(p.Previous):len(p.Previous)], PreviousKey{Key: a.Old, Until: a.Until})
			}
			peers[i] = p
		} else {
			delete(n.learned, p.Name)
		}
	}
	cfg.Peers = peers
	return cfg
}

// scheduleOverlaps sets a timer for the earliest deadline of a previous
// key in snap: the connections that key authenticated close then.
func (n *Node) scheduleOverlaps(snap *snapshot) {
	var first time.Time
	now := time.Now()
	for _, p := range snap.cfg.Peers {
		for _, k := range p.Previous {
			if k.Until.After(now) && (first.IsZero() || k.Until.Before(first)) {
				first = k.Until
			}
		}
	}
	if first.IsZero() {
		return
	}
	time.AfterFunc(time.Until(first)+10*time.Millisecond, func() {
		if n.ctx.Err() != nil || n.cfg.Load() != snap {
			return // closed, or a newer snapshot has its own timer
		}
		n.retirePeerKeys()
	})
}

// retirePeerKeys drops the previous keys whose overlap ended, closing
// their connections and auditing each (dyad.peer.key_retired).
func (n *Node) retirePeerKeys() {
	n.updateMu.Lock()
	defer n.updateMu.Unlock()
	now := time.Now()
	for _, p := range n.cfg.Load().cfg.Peers {
		for _, k := range p.Previous {
			if !now.Before(k.Until) {
				n.audit.Emit(audit.PeerKeyRetired, attribute.String(audit.KeyPeer, p.Name),
					attribute.String(audit.KeyPeerFingerprint, p.Key.Fingerprint()),
					attribute.String(audit.KeyPeerPreviousFingerprint, k.Key.Fingerprint()))
			}
		}
	}
	if err := n.updateLocked(n.given); err != nil {
		n.log.Error().Err(err).Msg("retire previous peer keys")
	}
}

// AnnounceOutcome is what one peer made of our announcement.
type AnnounceOutcome struct {
	Peer string `json:"peer"`
	// Outcome is "accepted" (the peer pinned the new key), "refused" (it
	// answered with a refusal: see its dyad.peer.key_rotation_refused
	// event), "previous_release" (the peer does not know announcements),
	// "no_tunnel" (no live connection now: it is told when a connection
	// comes up within the overlap) or "failed" (the stream broke).
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

// RotateResult is what Rotate did.
type RotateResult struct {
	Announcement Announcement
	Peers        []AnnounceOutcome
}

// ErrRotationInProgress refuses a rotation while the previous one's
// overlap runs: a node holds at most two identities.
var ErrRotationInProgress = errors.New("a rotation's overlap is still running")

// Rotate makes next this node's identity and announces it to every peer
// over its live tunnels, signed by the current key; the current key stays
// in use for connections it authenticated, and for dialing peers that have
// not taken the announcement, until overlap (zero: DefaultOverlap) has
// passed. It audits dyad.identity.rotated (with attrs, e.g. the control
// caller) and one dyad.identity.announced per peer, and waits for the
// peers' answers until ctx ends. The caller stores next (and the handover)
// first, so that a restart keeps it.
func (n *Node) Rotate(ctx context.Context, next *identity.Identity, overlap time.Duration, attrs ...attribute.KeyValue) (RotateResult, error) {
	a, err := n.PrepareRotation(next, overlap)
	if err != nil {
		return RotateResult{}, err
	}
	return n.CommitRotation(ctx, next, a, attrs...)
}

// PrepareRotation signs the announcement of next with the node's current
// identity, its overlap (zero: DefaultOverlap) starting now, and changes
// nothing: the daemon stores it with next before CommitRotation, so that a
// restart during the overlap resumes it (Config.Handover).
func (n *Node) PrepareRotation(next *identity.Identity, overlap time.Duration) (Announcement, error) {
	if overlap == 0 {
		overlap = DefaultOverlap
	}
	if overlap < time.Second || overlap > MaxOverlap {
		return Announcement{}, fmt.Errorf("rotate: overlap %v is outside 1s..%v", overlap, MaxOverlap)
	}
	old := n.self.Load()
	if old.prev != nil {
		return Announcement{}, fmt.Errorf("rotate: %w (until %s)", ErrRotationInProgress, old.until.UTC().Format(time.RFC3339))
	}
	a := NewAnnouncement(old.cur, next, uint64(time.Now().UnixNano()), time.Now().Add(overlap))
	if err := a.Verify(); err != nil { // the new key shares a half with the old
		return Announcement{}, fmt.Errorf("rotate: %w", err)
	}
	if err := n.cfg.Load().cfg.ValidateSelf(next.Public()); err != nil {
		return Announcement{}, fmt.Errorf("rotate: new identity: %w", err)
	}
	return a, nil
}

// CommitRotation makes next current and announces a (PrepareRotation's)
// to the peers: Rotate's second half.
func (n *Node) CommitRotation(ctx context.Context, next *identity.Identity, a Announcement, attrs ...attribute.KeyValue) (RotateResult, error) {
	n.updateMu.Lock()
	old := n.self.Load()
	if old.prev != nil {
		n.updateMu.Unlock()
		return RotateResult{}, fmt.Errorf("rotate: %w (until %s)", ErrRotationInProgress, old.until.UTC().Format(time.RFC3339))
	}
	if !a.Old.Equal(old.cur.Public()) || !a.New.Equal(next.Public()) || a.Verify() != nil {
		n.updateMu.Unlock()
		return RotateResult{}, errors.New("rotate: the announcement is not from this node's identity to the new one")
	}
	cert, err := next.Certificate()
	if err != nil {
		n.updateMu.Unlock()
		return RotateResult{}, fmt.Errorf("rotate: %w", err)
	}
	ns := &selfKeys{cur: next, cert: cert, prev: old.cur, prevCert: old.cert, until: a.Until, ann: &a}
	n.mu.Lock()
	links := make([]*link, 0, len(n.links))
	for _, l := range n.links {
		l.acked.Store(false)
		links = append(links, l)
	}
	n.mu.Unlock()
	n.self.Store(ns)
	n.dark.setKeys(newDarkKey(next.Public()), n.dark.keys.Load().own)
	n.updateMu.Unlock()
	time.AfterFunc(time.Until(a.Until), n.endOverlap)
	n.audit.Emit(audit.IdentityRotated, append([]attribute.KeyValue{
		attribute.String(audit.KeyFingerprint, next.Public().Fingerprint()),
		attribute.String(audit.KeyPreviousFingerprint, old.cur.Public().Fingerprint()),
		attribute.String(audit.KeyOverlapUntil, a.Until.UTC().Format(time.RFC3339))}, attrs...)...)
	n.log.Info().Str("fingerprint", next.Public().Fingerprint()).Str("previous_fingerprint", old.cur.Public().Fingerprint()).
		Time("overlap_until", a.Until).Msg("identity rotated; announcing to peers")

	res := RotateResult{Announcement: a, Peers: make([]AnnounceOutcome, len(links))}
	done := make(chan struct{}, len(links))
	for i, l := range links {
		go func() {
			defer func() { done <- struct{}{} }()
			tc, _ := l.pick()
			if tc == nil {
				res.Peers[i] = AnnounceOutcome{Peer: l.peer.Name, Outcome: "no_tunnel"}
				n.auditAnnounced(l, ns, "no_tunnel")
				return
			}
			res.Peers[i] = n.announceTo(ctx, l, tc, ns)
		}()
	}
	for range links {
		<-done
	}
	return res, nil
}

// endOverlap retires our previous identity: the connections it
// authenticated close, the dark listener stops taking its MAC, and we dial
// every peer with the new identity.
func (n *Node) endOverlap() {
	n.updateMu.Lock()
	s := n.self.Load()
	if s.prev == nil || time.Now().Before(s.until) || n.ctx.Err() != nil {
		n.updateMu.Unlock()
		return
	}
	n.self.Store(&selfKeys{cur: s.cur, cert: s.cert})
	n.dark.setKeys(n.dark.keys.Load().own, nil)
	n.mu.Lock()
	for _, l := range n.links {
		l.acked.Store(true)
		l.closeLocal(s.prev)
	}
	n.mu.Unlock()
	n.updateMu.Unlock()
	n.audit.Emit(audit.IdentityRetired, attribute.String(audit.KeyFingerprint, s.cur.Public().Fingerprint()),
		attribute.String(audit.KeyPreviousFingerprint, s.prev.Public().Fingerprint()))
	n.log.Info().Str("previous_fingerprint", s.prev.Public().Fingerprint()).Msg("previous identity retired: the overlap is over")
}

// announceTimeout bounds one announcement's round trip.
const announceTimeout = 10 * time.Second

// announceTo sends self's announcement on tc and reads the peer's answer.
func (n *Node) announceTo(ctx context.Context, l *link, tc *tconn, self *selfKeys) AnnounceOutcome {
	out := AnnounceOutcome{Peer: l.peer.Name}
	status, err := n.sendAnnouncement(ctx, tc, self.ann)
	switch {
	case err != nil:
		out.Outcome, out.Error = "failed", err.Error()
	case status == StatusAccepted:
		out.Outcome = "accepted"
		if n.self.Load() == self {
			l.acked.Store(true)
		}
	case status == StatusBadRequest:
		out.Outcome = "previous_release"
	default:
		out.Outcome, out.Error = "refused", status.String()
	}
	n.auditAnnounced(l, self, out.Outcome)
	if out.Outcome != "accepted" {
		n.log.Warn().Str("peer", l.peer.Name).Str("outcome", out.Outcome).Str("error", out.Error).
			Msg("peer did not take our new identity; it is told again on its next connection within the overlap")
	}
	return out
}

func (n *Node) sendAnnouncement(ctx context.Context, tc *tconn, a *Announcement) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, announceTimeout)
	defer cancel()
	s, err := tc.qc.OpenStreamSync(ctx)
	if err != nil {
		return 0, fmt.Errorf("open stream: %w", err)
	}
	tc.streamStarted()
	defer tc.streamDone()
	id := uint64(s.StreamID())
	w := tc.sess.NewWriter(s, id, codec.FromInitiator)
	r := tc.sess.NewReader(s, id, codec.FromResponder)
	defer r.Release()
	defer s.CancelRead(codeStreamRefused) // nothing follows the answer
	if _, err := w.Write(AppendAnnouncementRequest(nil, a)); err != nil {
		s.CancelWrite(codeProtocol)
		return 0, fmt.Errorf("send announcement: %w", err)
	}
	w.Close()
	s.Close()
	deadline, _ := ctx.Deadline()
	s.SetReadDeadline(deadline)
	resp, err := r.Next()
	if err != nil {
		return 0, fmt.Errorf("read answer: %w", err)
	}
	return ParseResponse(resp)
}

func (n *Node) auditAnnounced(l *link, self *selfKeys, outcome string) {
	n.audit.Emit(audit.IdentityAnnounced, attribute.String(audit.KeyPeer, l.peer.Name),
		attribute.String(audit.KeyFingerprint, self.cur.Public().Fingerprint()),
		attribute.String(audit.KeyPreviousFingerprint, self.prev.Public().Fingerprint()),
		attribute.String(audit.KeyReason, outcome))
}

// serveAnnouncement answers a peer's identity announcement, body the
// request after its version and kind. It pins the new key only if the old
// one is the key this connection authenticated and the peer's current
// key, both signatures verify, the sequence is newer than the last taken
// and the deadline lies within MaxOverlap; every refusal is counted and
// audited (THREATS P1, tested by TestRotationTamperedAnnouncementRefused).
func (n *Node) serveAnnouncement(l *link, tc *tconn, body []byte) Status {
	a, err := ParseAnnouncement(body)
	reason := ""
	now := time.Now()
	switch {
	case err != nil:
		reason = reasonMalformed
	case a.Old.Sign != tc.key:
		reason = reasonNotConnKey
	default:
		reason = a.check()
	}
	if reason == "" {
		n.updateMu.Lock()
		reason = n.pinAnnounced(l, a, now)
		n.updateMu.Unlock()
	}
	if reason != "" {
		n.Stats.countAnnouncementRefused(reason)
		n.audit.Emit(audit.PeerKeyRotationRefused, attribute.String(audit.KeyPeer, l.peer.Name),
			attribute.String(audit.KeyPeerFingerprint, identity.Fingerprint(tc.key[:])), attribute.String(audit.KeyReason, reason))
		n.log.Warn().Str("peer", l.peer.Name).Str("reason", reason).Msg("identity announcement refused")
		return StatusAnnouncementRefused
	}
	return StatusAccepted
}

// pinAnnounced pins a verified announcement's new key (n.updateMu held)
// and returns "" or the reason it refused.
func (n *Node) pinAnnounced(l *link, a Announcement, now time.Time) string {
	cur := l.current()
	if cur.Key.Equal(a.New) {
		// Already taken (the announcer dialed again before it saw our
		// answer, or restarted within the overlap): nothing changes.
		if last, ok := n.learned[l.peer.Name]; ok && last.Announcement.Seq == a.Seq {
			return ""
		}
		return reasonStale
	}
	if !cur.Key.Equal(a.Old) {
		return reasonNotPinned
	}
	if last, ok := n.learned[l.peer.Name]; ok && a.Seq <= last.Announcement.Seq {
		return reasonStale
	}
	if !a.Until.After(now) || a.Until.Sub(now) > MaxOverlap {
		return reasonDeadline
	}
	if err := n.self.Load().validate(Config{Peers: []Peer{{Name: l.peer.Name, Key: a.New}}}); err != nil {
		return reasonKeyInUse
	}
	for _, p := range n.cfg.Load().cfg.Peers {
		if p.Name == l.peer.Name {
			continue
		}
		if _, ok := p.accepts(a.New.Sign, now); ok || p.Key.DH == a.New.DH {
			return reasonKeyInUse
		}
	}
	r := KeyRotation{Peer: l.peer.Name, Base: a.Old, Announcement: a}
	if last, ok := n.learned[l.peer.Name]; ok {
		r.Base = last.Base
	}
	if hook := n.cfg.Load().cfg.OnPeerKeyRotated; hook != nil {
		if err := hook(r); err != nil {
			n.log.Error().Err(err).Str("peer", l.peer.Name).Msg("cannot store the peer's new key")
			return reasonStateFailed
		}
	}
	prev, had := n.learned[l.peer.Name]
	n.learned[l.peer.Name] = r
	if err := n.updateLocked(n.given); err != nil {
		if had {
			n.learned[l.peer.Name] = prev
		} else {
			delete(n.learned, l.peer.Name)
		}
		n.log.Error().Err(err).Str("peer", l.peer.Name).Msg("cannot pin the peer's new key")
		return reasonKeyInUse
	}
	n.Stats.PeerKeysRotated.Add(1)
	n.audit.Emit(audit.PeerKeyRotated, attribute.String(audit.KeyPeer, l.peer.Name),
		attribute.String(audit.KeyPeerFingerprint, a.New.Fingerprint()),
		attribute.String(audit.KeyPeerPreviousFingerprint, a.Old.Fingerprint()),
		attribute.String(audit.KeyOverlapUntil, a.Until.UTC().Format(time.RFC3339)))
	n.log.Info().Str("peer", l.peer.Name).Str("fingerprint", a.New.Fingerprint()).Str("previous_fingerprint", a.Old.Fingerprint()).
		Time("overlap_until", a.Until).Msg("peer rotated its identity: new key pinned, old key accepted until the deadline")
	return ""
}
