package daemon

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/control"
	"github.com/dyad-tunnel/dyad/daemon/state"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// Identity rotation (README, "Key rotation"): dyad rotate asks the running
// daemon, through the control socket, to make a new identity. The daemon
// stores it in its state directory (identity/rotation.json, 0600) with the
// previous identity and the signed announcement, hands the audit journal
// over to the new key, then makes it current and announces it to the peers
// (tunnel.Node.Rotate). The YAML file's identity stays as the operator
// wrote it; from then on the state directory's identity replaces it. When
// the overlap ends, the previous identity is deleted from the state.

func init() { registerControl("rotate", (*Daemon).controlRotate) }

// siteKeys is the identity a daemon runs with, as the state directory and
// the configuration give it.
type siteKeys struct {
	cur      *identity.Identity
	handover *tunnel.Handover // during a rotation's overlap
	rotated  time.Time        // when cur was made by dyad rotate (zero: the key file's)
}

// loadSiteKeys returns the state directory's rotated identity if there is
// one (its previous identity while the overlap runs; once it has ended the
// previous key is deleted here), else the configuration's key file.
func loadSiteKeys(cfg *Config) (siteKeys, error) {
	r, err := state.LoadRotation(cfg.StateDir)
	if err != nil {
		return siteKeys{}, err
	}
	if r == nil {
		id, err := loadIdentity(cfg)
		return siteKeys{cur: id}, err
	}
	cur, err := identity.Parse([]byte(r.Current))
	if err != nil {
		return siteKeys{}, fmt.Errorf("state %s: current identity: %w", state.RotationPath(cfg.StateDir), err)
	}
	k := siteKeys{cur: cur, rotated: r.Rotated}
	if r.Previous == "" {
		return k, nil
	}
	if !time.Now().Before(r.Until) {
		// The overlap ended while the daemon was down: the old key goes.
		r.Previous, r.Announcement, r.Until = "", "", time.Time{}
		return k, state.SaveRotation(cfg.StateDir, r)
	}
	prev, err := identity.Parse([]byte(r.Previous))
	if err != nil {
		return siteKeys{}, fmt.Errorf("state %s: previous identity: %w", state.RotationPath(cfg.StateDir), err)
	}
	body, err := base64.StdEncoding.DecodeString(r.Announcement)
	if err != nil {
		return siteKeys{}, fmt.Errorf("state %s: announcement: %w", state.RotationPath(cfg.StateDir), err)
	}
	a, err := tunnel.ParseAnnouncement(body)
	if err != nil {
		return siteKeys{}, fmt.Errorf("state %s: %w", state.RotationPath(cfg.StateDir), err)
	}
	k.handover = &tunnel.Handover{Previous: prev, Announcement: a}
	return k, nil
}

// journalKeys are the journal options naming the signing key and, during
// an overlap, the previous one (a crash between storing the new identity
// and the journal's handover is repaired at Open).
func journalKeys(origin string, k siteKeys) (string, []journal.PreviousSigner, error) {
	key, err := journal.VerifierKey(origin, signKey(k.cur))
	if err != nil || k.handover == nil {
		return key, nil, err
	}
	prev := k.handover.Previous
	s, err := journal.NewSigner(origin, prev.Signer())
	if err != nil {
		return "", nil, err
	}
	pk, err := journal.VerifierKey(origin, signKey(prev))
	if err != nil {
		return "", nil, err
	}
	return key, []journal.PreviousSigner{{Signer: s, Key: pk}}, nil
}

// signKey returns id's Ed25519 public key.
func signKey(id *identity.Identity) []byte {
	p := id.Public()
	return p.Sign[:]
}

// tunnelConfig is cfg's tunnel configuration with what the daemon adds:
// the peers' learned keys and the hook that stores new ones.
func (d *Daemon) tunnelConfig(cfg *Config) tunnel.Config {
	t := cfg.Tunnel
	t.OnPeerKeyRotated = d.storeLearned
	return t
}

// learnedRotations reads the state directory's learned peer keys for New.
func (d *Daemon) learnedRotations(cfg *Config) []tunnel.KeyRotation {
	ks, err := state.LoadLearned(cfg.StateDir)
	if err != nil {
		d.log.Error().Err(err).Msg("learned peer keys not read: peers that rotated must be pinned by hand")
		return nil
	}
	var out []tunnel.KeyRotation
	for _, k := range ks {
		base, err := identity.ParsePublicKey(k.Base)
		var a tunnel.Announcement
		if err == nil {
			var body []byte
			if body, err = base64.StdEncoding.DecodeString(k.Announcement); err == nil {
				if a, err = tunnel.ParseAnnouncement(body); err == nil {
					err = a.Verify()
				}
			}
		}
		if err != nil {
			d.log.Error().Err(err).Str("peer", k.Peer).Msg("learned peer key ignored")
			continue
		}
		out = append(out, tunnel.KeyRotation{Peer: k.Peer, Base: base, Announcement: a})
	}
	return out
}

// storeLearned is tunnel.Config.OnPeerKeyRotated: it records a peer's new
// key in the state directory before the node pins it.
func (d *Daemon) storeLearned(r tunnel.KeyRotation) error {
	dir := d.cfg.Load().StateDir
	ks, err := state.LoadLearned(dir)
	if err != nil {
		return err
	}
	k := state.LearnedKey{Peer: r.Peer, Base: r.Base.String(),
		Announcement: base64.StdEncoding.EncodeToString(r.Announcement.Append(nil)), At: time.Now().UTC()}
	replaced := false
	for i := range ks {
		if ks[i].Peer == r.Peer {
			ks[i], replaced = k, true
		}
	}
	if !replaced {
		ks = append(ks, k)
	}
	return state.SaveLearned(dir, ks)
}

// RotateArgs are dyad rotate's arguments.
type RotateArgs struct {
	// Overlap is how long both keys are accepted (a Go duration, or days
	// as "7d"); empty means 24h, at most 30 days.
	Overlap string `json:"overlap,omitempty"`
}

// RotateResult is what dyad rotate did.
type RotateResult struct {
	Fingerprint         string                   `json:"fingerprint"`
	PreviousFingerprint string                   `json:"previous_fingerprint"`
	PublicKey           string                   `json:"public_key"`
	OverlapUntil        time.Time                `json:"overlap_until"`
	Peers               []tunnel.AnnounceOutcome `json:"peers"`
	// JournalHandover is empty when the journal took the handover, else
	// why not (it is then written at the next start).
	JournalHandover string `json:"journal_handover,omitempty"`
}

// parseOverlap reads --overlap: a Go duration, or whole days as "7d";
// empty is zero (the default, tunnel.DefaultOverlap).
func parseOverlap(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	var days int
	if n, err := fmt.Sscanf(s, "%dd", &days); err == nil && n == 1 && fmt.Sprintf("%dd", days) == s {
		s = fmt.Sprintf("%dh", 24*days)
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second || d > tunnel.MaxOverlap {
		return 0, fmt.Errorf("rotate: overlap %q: want a duration from 1s to 30d, like 24h or 7d", s)
	}
	return d, nil
}

// controlRotate serves dyad rotate.
func (d *Daemon) controlRotate(ctx context.Context, c control.Caller, args json.RawMessage) (any, error) {
	var a RotateArgs
	if len(args) > 0 {
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, fmt.Errorf("rotate: arguments: %w", err)
		}
	}
	overlap, err := parseOverlap(a.Overlap)
	if err != nil {
		return nil, err
	}
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	cfg := d.cfg.Load()
	old := d.id
	if d.node.Identity() != old.Public() {
		return nil, errors.New("rotate: the daemon's identity is not the node's (a rotation is under way)")
	}
	next, err := identity.Generate()
	if err != nil {
		return nil, err
	}
	ann, err := d.node.PrepareRotation(next, overlap)
	if err != nil {
		return nil, err
	}
	// The state first: a crash from here on restarts with the new
	// identity and the way back to the old one (the handover).
	r, err := state.LoadRotation(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if r == nil {
		r = &state.Rotation{}
	}
	before := *r
	undo := func() {
		if before.Current == "" {
			os.Remove(state.RotationPath(cfg.StateDir))
			return
		}
		state.SaveRotation(cfg.StateDir, &before)
	}
	now := time.Now().UTC()
	curPEM, prevPEM := next.MarshalPEM(), old.MarshalPEM()
	r.Current, r.Previous = string(curPEM), string(prevPEM)
	clear(curPEM)
	clear(prevPEM)
	r.Announcement = base64.StdEncoding.EncodeToString(ann.Append(nil))
	r.Until, r.Rotated = ann.Until.UTC(), now
	r.History = append(r.History, state.RotationRecord{At: now, From: old.Public().Fingerprint(), To: next.Public().Fingerprint(), By: c.UID})
	if err := state.SaveRotation(cfg.StateDir, r); err != nil {
		return nil, fmt.Errorf("rotate: nothing changed: %w", err)
	}
	res := RotateResult{Fingerprint: next.Public().Fingerprint(), PreviousFingerprint: old.Public().Fingerprint(),
		PublicKey: next.Public().String(), OverlapUntil: ann.Until.UTC()}
	if err := d.journalHandover(cfg, next); err != nil {
		res.JournalHandover = err.Error()
		d.log.Error().Err(err).Msg("audit journal: key handover not written now; it is written at the next start")
	}
	out, err := d.node.CommitRotation(ctx, next, ann, c.Attrs()...)
	if err != nil {
		undo() // the node still runs the old identity: so must a restart
		return nil, err
	}
	d.id = next
	res.Peers = out.Peers
	time.AfterFunc(time.Until(ann.Until)+time.Second, d.retirePrevious)
	return res, nil
}

// journalHandover hands the journal over to next.
func (d *Daemon) journalHandover(cfg *Config, next *identity.Identity) error {
	origin := journalOrigin(cfg.Site)
	s, err := journal.NewSigner(origin, next.Signer())
	if err != nil {
		return err
	}
	key, err := journal.VerifierKey(origin, signKey(next))
	if err != nil {
		return err
	}
	return d.au.journal.Handover(s, key)
}

// scheduleRetire deletes the previous identity when the overlap of the
// rotation the daemon started in ends.
func (d *Daemon) scheduleRetire() {
	if h := d.keys.handover; h != nil {
		time.AfterFunc(time.Until(h.Announcement.Until)+time.Second, d.retirePrevious)
	}
}

// retirePrevious deletes the previous identity from the state directory
// once its overlap has ended (the node closed its connections then).
func (d *Daemon) retirePrevious() {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	dir := d.cfg.Load().StateDir
	r, err := state.LoadRotation(dir)
	if err != nil || r == nil || r.Previous == "" || time.Now().Before(r.Until) {
		if err != nil {
			d.log.Error().Err(err).Msg("previous identity not retired")
		}
		return
	}
	r.Previous, r.Announcement, r.Until = "", "", time.Time{}
	if err := state.SaveRotation(dir, r); err != nil {
		d.log.Error().Err(err).Msg("previous identity not deleted from the state directory")
	}
}

// Rotate runs dyad rotate.
func Rotate(configPath string, a RotateArgs, asJSON bool, out io.Writer) error {
	var r RotateResult
	if _, err := parseOverlap(a.Overlap); err != nil {
		return err
	}
	if err := ControlCall(configPath, "rotate", a, &r, 60*time.Second); err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(out).Encode(r)
	}
	fmt.Fprintf(out, "New identity %s (was %s); both are accepted until %s.\n", r.Fingerprint, r.PreviousFingerprint, r.OverlapUntil.Format(time.RFC3339))
	fmt.Fprintf(out, "Public key: %s\n", r.PublicKey)
	for _, p := range r.Peers {
		switch p.Outcome {
		case "accepted":
			fmt.Fprintf(out, "  %s: pinned the new key\n", p.Peer)
		case "no_tunnel":
			fmt.Fprintf(out, "  %s: not connected now; told on its next connection before %s, else pin the new key there by hand\n", p.Peer, r.OverlapUntil.Format(time.RFC3339))
		default:
			fmt.Fprintf(out, "  %s: %s %s: pin the new key there by hand before %s\n", p.Peer, p.Outcome, p.Error, r.OverlapUntil.Format(time.RFC3339))
		}
	}
	if r.JournalHandover != "" {
		fmt.Fprintf(out, "Audit journal: handover not written now (%s); the next start writes it.\n", r.JournalHandover)
	}
	return nil
}

// reportIdentityMaxAge is the identity age the report's key-lifecycle row
// measures against: identity_max_age, zero (no limit shown) when it is
// "unlimited".
func reportIdentityMaxAge(cfg *Config) time.Duration { return max(cfg.IdentityMaxAge, 0) }
