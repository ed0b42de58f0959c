package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/control"
	"github.com/dyad-tunnel/dyad/daemon/state"
	"github.com/dyad-tunnel/dyad/enroll"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

func init() { registerControl("revoke", (*Daemon).controlRevoke) }

// RevokeArgs are dyad revoke's arguments.
type RevokeArgs struct {
	Peer string `json:"peer"`
}

// RevokeResult is what dyad revoke prints.
type RevokeResult struct {
	Peer        string `json:"peer"`
	Fingerprint string `json:"fingerprint,omitempty"`
	// Source is "state" (an enrolled peer, removed from the state
	// directory), "config" (a peer of the YAML file: its key is recorded
	// in revoked.json and stays unpinned until the file drops it) or
	// "invitation" (only pending invitations for the name, cancelled).
	Source string `json:"source"`
	// Invitations counts the pending invitations for the name cancelled.
	Invitations int    `json:"invitations"`
	Note        string `json:"note,omitempty"`
}

// controlRevoke removes a peer and cuts it: node.Update closes every
// connection of its key at once and no stream is admitted on any of them
// (THREATS P1, tested by TestRevokeCutsTransfer).
func (d *Daemon) controlRevoke(_ context.Context, c control.Caller, raw json.RawMessage) (any, error) {
	var a RevokeArgs
	if err := strictJSON(raw, &a); err != nil {
		return nil, err
	}
	if !enroll.ValidSite(a.Peer) {
		return nil, fmt.Errorf("peer %q: a peer name is 1-64 of A-Z a-z 0-9 . _ -", a.Peer)
	}
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	cfg := d.cfg.Load()
	st, err := state.Load(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	res := RevokeResult{Peer: a.Peer}
	now := time.Now()
	kept := st.Invites[:0]
	for _, in := range st.Invites {
		if in.Peer == a.Peer && in.Used.IsZero() && now.Before(in.Expires) {
			res.Invitations++
			continue
		}
		kept = append(kept, in)
	}
	st.Invites = kept
	p, pinned := cfg.peer(a.Peer)
	i, enrolled := st.Peer(a.Peer)
	inFile := pinned && slices.ContainsFunc(cfg.Written.Peers, func(w PeerFile) bool { return w.Name == a.Peer })
	if enrolled && !pinned {
		// In the state but not in force (a revoked YAML entry shadows it).
		if k, err := identity.ParsePublicKey(st.Peers[i].PublicKey); err == nil {
			p.Key = k
		}
	}
	if enrolled {
		st.Peers = append(st.Peers[:i], st.Peers[i+1:]...)
		if err := st.SavePeers(); err != nil {
			return nil, err
		}
	}
	switch {
	case inFile:
		// A peer of the YAML file (perhaps also in the state): the daemon
		// never writes the file, so the key is recorded as revoked, which
		// overrides the file until the operator removes the peer there.
		res.Source, res.Fingerprint = "config", p.Key.Fingerprint()
		st.Revoked = append(st.Revoked, state.Revocation{Name: a.Peer, Fingerprint: p.Key.Fingerprint(),
			PublicKey: p.Key.String(), At: now.UTC(), By: c.UID})
		if err := st.SaveRevoked(); err != nil {
			return nil, err
		}
		res.Note = fmt.Sprintf("peer %q is in %s: its key stays revoked (%s) until you remove the peer there; then delete its entry from %s if you ever pin that key again",
			a.Peer, cfg.Path, st.Path(state.RevokedFile), st.Path(state.RevokedFile))
	case enrolled:
		res.Source, res.Fingerprint = "state", p.Key.Fingerprint()
	case res.Invitations > 0:
		res.Source = "invitation"
	default:
		return nil, fmt.Errorf("no peer or pending invitation named %q", a.Peer)
	}
	if res.Invitations > 0 {
		if err := st.SaveInvites(); err != nil {
			return nil, err
		}
	}
	if err := d.applyStateLocked(); err != nil {
		return nil, fmt.Errorf("revocation of %q recorded in %s but not applied: %w", a.Peer, cfg.StateDir, err)
	}
	attrs := []attribute.KeyValue{attribute.String(audit.KeyPeer, a.Peer), attribute.String(audit.KeyPeerSource, res.Source)}
	if res.Fingerprint != "" {
		attrs = append(attrs, attribute.String(audit.KeyPeerFingerprint, res.Fingerprint))
	}
	d.au.auditor.Emit(audit.PeerRevoked, append(attrs, c.Attrs()...)...)
	d.log.Warn().Str("peer", a.Peer).Str("source", res.Source).Str("by", c.String()).Msg("peer revoked")
	return res, nil
}
