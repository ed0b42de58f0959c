package daemon

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.yaml.in/yaml/v3"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/control"
	"github.com/dyad-tunnel/dyad/daemon/state"
	"github.com/dyad-tunnel/dyad/enroll"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// The pairing ceremony (codec/FORMAT.md section 11): dyad invite asks this
// daemon for a token (control op "invite"); dyad join hands a token to the
// other daemon (op "join"), which proves the token's secret to this one
// under tunnel.EnrollALPN (Daemon.Enroll). Both sides keep the new peer in
// their state directory and apply it as a reload would.

func init() {
	registerControl("invite", (*Daemon).controlInvite)
	registerControl("invite.wait", (*Daemon).controlInviteWait)
	registerControl("join", (*Daemon).controlJoin)
}

// Invitation lifetimes.
const (
	DefaultInviteExpiry = 24 * time.Hour
	MaxInviteExpiry     = 30 * 24 * time.Hour
	minInviteExpiry     = time.Minute
)

// InviteArgs are dyad invite's arguments.
type InviteArgs struct {
	Peer      string        `json:"peer"`               // the joiner's name here
	Services  []string      `json:"services,omitempty"` // this site's services it may use
	Expires   time.Duration `json:"expires,omitempty"`  // zero: DefaultInviteExpiry
	Endpoints []string      `json:"endpoints,omitempty"`
}

// InviteResult is what dyad invite prints.
type InviteResult struct {
	Token       string    `json:"token"`
	Peer        string    `json:"peer"`
	Services    []string  `json:"services"`
	Endpoints   []string  `json:"endpoints"`
	Expires     time.Time `json:"expires"`
	Fingerprint string    `json:"fingerprint"` // this site's
}

func (d *Daemon) controlInvite(_ context.Context, c control.Caller, raw json.RawMessage) (any, error) {
	var a InviteArgs
	if err := strictJSON(raw, &a); err != nil {
		return nil, err
	}
	switch {
	case !enroll.ValidSite(a.Peer):
		return nil, fmt.Errorf("--peer %q: a peer name is 1-64 of A-Z a-z 0-9 . _ -", a.Peer)
	case a.Expires == 0:
		a.Expires = DefaultInviteExpiry
	case a.Expires < minInviteExpiry || a.Expires > MaxInviteExpiry:
		return nil, fmt.Errorf("--expires %v: from %v to %v", a.Expires, minInviteExpiry, MaxInviteExpiry)
	}
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	cfg := d.cfg.Load()
	if p, ok := cfg.peer(a.Peer); ok {
		return nil, fmt.Errorf("--peer %q: a peer of that name is pinned already (%s)", a.Peer, p.Key.Fingerprint())
	}
	for _, s := range a.Services {
		if !slices.ContainsFunc(cfg.Tunnel.Services, func(x tunnel.Service) bool { return x.Name == s }) {
			return nil, fmt.Errorf("--service %q: not a service of this site's configuration", s)
		}
	}
	if len(a.Endpoints) == 0 {
		ep, err := advertised(cfg.File.Listen)
		if err != nil {
			return nil, err
		}
		a.Endpoints = []string{ep}
	}
	st, err := state.Load(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	st.Prune(now)
	for _, in := range st.Invites {
		if in.Peer == a.Peer && in.Used.IsZero() {
			return nil, fmt.Errorf("--peer %q: an invitation for it is pending until %s; dyad revoke %s cancels it",
				a.Peer, in.Expires.UTC().Format(time.RFC3339), a.Peer)
		}
	}
	tok := enroll.Token{Site: cfg.Site, Key: d.node.Identity(), Endpoints: a.Endpoints, Services: a.Services,
		Expires: now.Add(a.Expires).Truncate(time.Second)}
	if _, err := rand.Read(tok.Secret[:]); err != nil {
		return nil, err
	}
	s, err := tok.Encode()
	if err != nil {
		return nil, err
	}
	st.Invites = append(st.Invites, state.Invite{SecretHash: enroll.SecretHash(tok.Secret), Peer: a.Peer,
		Services: a.Services, Created: now.UTC(), Expires: tok.Expires.UTC(), By: c.UID})
	if err := st.SaveInvites(); err != nil {
		return nil, err
	}
	d.setPending(st, now)
	d.au.auditor.Emit(audit.PeerInvited, append([]attribute.KeyValue{
		attribute.String(audit.KeyPeer, a.Peer), attribute.StringSlice(audit.KeyEnrollServices, nonNil(a.Services)),
		attribute.String(audit.KeyEnrollExpires, tok.Expires.UTC().Format(time.RFC3339)),
	}, c.Attrs()...)...)
	return InviteResult{Token: s, Peer: a.Peer, Services: nonNil(a.Services), Endpoints: a.Endpoints,
		Expires: tok.Expires.UTC(), Fingerprint: d.node.Identity().Fingerprint()}, nil
}

// advertised turns the listen address into one a partner can dial, or
// says to give --endpoint.
func advertised(listen string) (string, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return "", fmt.Errorf("listen %s is not an address a partner can dial: give --endpoint HOST:PORT (the public name or address of this site's QUIC port)", listen)
	}
	return listen, nil
}

// JoinArgs are dyad join's arguments.
type JoinArgs struct {
	Token    string          `json:"token"`
	Name     string          `json:"name,omitempty"` // the inviter's name here; empty: its site name
	Forwards []state.Forward `json:"forwards,omitempty"`
	// Print makes the daemon enrol but write nothing: the result's Entry
	// is the YAML to add to a declarative configuration.
	Print bool `json:"print,omitempty"`
}

// JoinResult is what dyad join prints.
type JoinResult struct {
	Peer        string   `json:"peer"`
	Fingerprint string   `json:"fingerprint"`
	Endpoint    string   `json:"endpoint"`
	Services    []string `json:"services"`
	Phrase      string   `json:"phrase"`
	Entry       string   `json:"entry,omitempty"` // with Print: the YAML peers and forwards entries
}

func (d *Daemon) controlJoin(ctx context.Context, c control.Caller, raw json.RawMessage) (any, error) {
	var a JoinArgs
	if err := strictJSON(raw, &a); err != nil {
		return nil, err
	}
	tok, err := enroll.ParseToken(a.Token)
	if err != nil {
		return nil, err
	}
	if now := time.Now(); !now.Before(tok.Expires) {
		return nil, fmt.Errorf("the invitation expired at %s; ask %s for a new one", tok.Expires.UTC().Format(time.RFC3339), tok.Site)
	}
	name := a.Name
	if name == "" {
		name = tok.Site
	}
	if !enroll.ValidSite(name) {
		return nil, fmt.Errorf("--name %q: a peer name is 1-64 of A-Z a-z 0-9 . _ -", name)
	}
	for _, fw := range a.Forwards {
		if !slices.Contains(tok.Services, fw.Service) {
			return nil, fmt.Errorf("--forward %s=%s: the invitation does not allow service %q (it allows %v)", fw.Listen, fw.Service, fw.Service, tok.Services)
		}
	}
	if err := d.joinConflict(name, tok.Key, a.Forwards); err != nil {
		return nil, err
	}
	req, err := (&enroll.Join{Secret: tok.Secret, Key: d.node.Identity(), Site: d.cfg.Load().Site}).Append(nil)
	if err != nil {
		return nil, err
	}
	// The exchange: each endpoint in turn until one answers.
	var reply []byte
	var endpoint string
	var errs []error
	for _, ep := range tok.Endpoints {
		if reply, err = d.node.Enroll(ctx, ep, tok.Key, req); err == nil {
			endpoint = ep
			break
		}
		errs = append(errs, err)
	}
	if reply == nil {
		for _, e := range errs {
			if errors.Is(e, tunnel.ErrNoEnrollment) {
				return nil, fmt.Errorf("%s takes no enrollment now: no invitation is live there (it was revoked, or it expired); ask for a new one; nothing changed", tok.Site)
			}
		}
		return nil, fmt.Errorf("no answer from %s at %s: %w (is its daemon running and its QUIC port reachable from here?)",
			tok.Site, strings.Join(tok.Endpoints, ", "), errors.Join(errs...))
	}
	status, err := enroll.ParseReply(reply)
	if err != nil {
		return nil, fmt.Errorf("%s answered: %w", tok.Site, err)
	}
	if status != enroll.StatusOK {
		return nil, fmt.Errorf("%s refused the token (%s): %s; nothing changed", tok.Site, status, status.Explain())
	}
	res := JoinResult{Peer: name, Fingerprint: tok.Key.Fingerprint(), Endpoint: endpoint, Services: nonNil(tok.Services),
		Phrase: enroll.Phrase(tok.Key, d.node.Identity(), tok.Secret)}
	sp := state.Peer{Name: name, PublicKey: tok.Key.String(), Endpoint: endpoint, Forwards: a.Forwards,
		Enrolled: time.Now().UTC(), Role: "join", By: c.UID}
	if a.Print {
		res.Entry = printEntry(sp)
	} else if err := d.storePeer(sp); err != nil {
		return nil, fmt.Errorf("%s pinned this site, but storing it here failed: %w; add the peer by hand (dyad join --print shows the entry) or ask %s to revoke it", tok.Site, err, tok.Site)
	}
	d.au.auditor.Emit(audit.PeerEnrolled, append([]attribute.KeyValue{
		attribute.String(audit.KeyPeer, name), attribute.String(audit.KeyPeerFingerprint, res.Fingerprint),
		attribute.String(audit.KeyEnrollRole, "joiner"), attribute.String(audit.KeyPeerAddress, hostOf(endpoint)),
		attribute.String(audit.KeyEnrollPhrase, res.Phrase),
	}, c.Attrs()...)...)
	return res, nil
}

// joinConflict refuses a join whose name, key or forward listen address
// this site uses already.
func (d *Daemon) joinConflict(name string, key identity.PublicKey, fws []state.Forward) error {
	cfg := d.cfg.Load()
	if key.Sign == d.node.Identity().Sign {
		return errors.New("the token is this site's own invitation")
	}
	if p, ok := cfg.peer(name); ok {
		return fmt.Errorf("a peer named %q is pinned already (%s): give --name", name, p.Key.Fingerprint())
	}
	for _, p := range cfg.Tunnel.Peers {
		if p.Key.Sign == key.Sign {
			return fmt.Errorf("the inviter's key %s is pinned already as peer %q", key.Fingerprint(), p.Name)
		}
	}
	for _, fw := range fws {
		if slices.ContainsFunc(cfg.File.Forwards, func(f ForwardConfig) bool { return f.Listen == fw.Listen }) {
			return fmt.Errorf("--forward %s: a forward listens there already", fw.Listen)
		}
		if err := hostPort(fw.Listen); err != nil {
			return fmt.Errorf("--forward: %w", err)
		}
		// Checked before the inviter pins us: a port taken by another
		// program would fail the forward after the exchange.
		ln, err := net.Listen("tcp", fw.Listen)
		if err != nil {
			return fmt.Errorf("--forward %s: %w", fw.Listen, err)
		}
		ln.Close()
	}
	return nil
}

// storePeer adds sp to the state and applies it.
func (d *Daemon) storePeer(sp state.Peer) error {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	cfg := d.cfg.Load()
	st, err := state.Load(cfg.StateDir)
	if err != nil {
		return err
	}
	st.Peers = append(st.Peers, sp)
	if err := st.SavePeers(); err != nil {
		return err
	}
	if err := d.applyStateLocked(); err != nil {
		st.Peers = st.Peers[:len(st.Peers)-1]
		if rerr := st.SavePeers(); rerr != nil {
			return errors.Join(err, rerr)
		}
		return err
	}
	return nil
}

// applyStateLocked applies the state directory as it is now, with the
// YAML file in force (not the file on disk, which the operator may be
// editing): what SIGHUP does for the file. Caller holds applyMu.
func (d *Daemon) applyStateLocked() error {
	old := d.cfg.Load()
	cfg, err := build(old.Path, old.Written, nil, old.SHA256)
	if err != nil {
		return err
	}
	cfg.Audit.Journal.OnBroken = old.Audit.Journal.OnBroken // a start option may have set it
	if err := d.applyForwards(cfg, func() error { return d.node.Update(d.tunnelConfig(cfg)) }); err != nil {
		return err
	}
	d.cfg.Store(cfg)
	d.setPending(cfg.State, time.Now())
	return nil
}

// setPending records whether an invitation is live: pending, or used
// and not yet expired. The listener offers enrollment while one is, so
// that a replayed token is told "used" rather than meeting a closed door.
func (d *Daemon) setPending(st *state.State, now time.Time) {
	n := 0
	for _, in := range st.Invites {
		if now.Before(in.Expires) {
			n++
		}
	}
	d.pendingInvites.Store(int64(n))
}

// Pending implements tunnel.Enroller.
func (d *Daemon) Pending() bool { return d.pendingInvites.Load() > 0 }

// Refused implements tunnel.Enroller.
func (d *Daemon) Refused(signKey []byte, remote net.Addr, reason string) {
	d.auditEnrollRefused(signKey, remote, reason)
}

func (d *Daemon) auditEnrollRefused(signKey []byte, remote net.Addr, reason string) {
	host, port := splitAddr(remote)
	d.au.auditor.Emit(audit.PeerEnrollRefused, attribute.String(audit.KeyPeerFingerprint, identity.Fingerprint(signKey)),
		attribute.String(audit.KeyPeerAddress, host), attribute.Int64(audit.KeyPeerPort, port), attribute.String(audit.KeyReason, reason))
}

// Enroll implements tunnel.Enroller: the inviter's side of the exchange.
// Only the secret (by its hash) and the key the joiner proved in TLS are
// trusted; a refusal changes nothing and is audited (THREATS P1, tested by
// TestInviteJoinRefusals).
func (d *Daemon) Enroll(_ context.Context, signKey []byte, remote net.Addr, req []byte) []byte {
	j, err := enroll.ParseJoin(req)
	if err != nil {
		// Answered as an unknown secret: a malformed request learns no more.
		d.auditEnrollRefused(signKey, remote, "malformed")
		return enroll.AppendReply(nil, enroll.StatusInvalid)
	}
	status, name, phrase, inv := d.enroll(signKey, j)
	if status != enroll.StatusOK {
		d.auditEnrollRefused(signKey, remote, status.String())
		return enroll.AppendReply(nil, status)
	}
	host, _ := splitAddr(remote)
	attrs := []attribute.KeyValue{
		attribute.String(audit.KeyPeer, name), attribute.String(audit.KeyPeerFingerprint, identity.Fingerprint(signKey)),
		attribute.String(audit.KeyEnrollRole, "inviter"), attribute.StringSlice(audit.KeyEnrollServices, nonNil(inv.Services)),
		attribute.String(audit.KeyPeerAddress, host), attribute.String(audit.KeyEnrollPhrase, phrase),
		attribute.Int64(audit.KeyControlUID, int64(inv.By)),
	}
	if u := lookupUser(inv.By); u != "" {
		attrs = append(attrs, attribute.String(audit.KeyControlUser, u))
	}
	d.au.auditor.Emit(audit.PeerEnrolled, attrs...)
	d.log.Info().Str("peer", name).Str("fingerprint", identity.Fingerprint(signKey)).Str("phrase", phrase).
		Msg("enrolled peer: compare the verification phrase with the joiner's")
	return enroll.AppendReply(nil, status)
}

// enroll checks a parsed request against the invitations and, when it
// holds, pins the joiner; it returns the status, and on success the peer
// name, the verification phrase and the invitation.
func (d *Daemon) enroll(signKey []byte, j *enroll.Join) (enroll.Status, string, string, state.Invite) {
	if subtle.ConstantTimeCompare(j.Key.Sign[:], signKey) != 1 {
		return enroll.StatusBadKey, "", "", state.Invite{}
	}
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	cfg := d.cfg.Load()
	st, err := state.Load(cfg.StateDir)
	if err != nil {
		d.log.Error().Err(err).Msg("enrollment: cannot read the state directory")
		return enroll.StatusFailed, "", "", state.Invite{}
	}
	hash := enroll.SecretHash(j.Secret)
	idx, found := -1, 0
	for i, in := range st.Invites {
		if subtle.ConstantTimeCompare([]byte(in.SecretHash), []byte(hash)) == 1 {
			idx, found = i, 1
		}
	}
	now := time.Now()
	if found == 0 {
		return enroll.StatusInvalid, "", "", state.Invite{}
	}
	inv := st.Invites[idx]
	switch {
	case !inv.Used.IsZero():
		return enroll.StatusUsed, "", "", inv
	case !now.Before(inv.Expires):
		return enroll.StatusExpired, "", "", inv
	}
	if _, ok := cfg.peer(inv.Peer); ok {
		return enroll.StatusConflict, "", "", inv
	}
	for _, p := range cfg.Tunnel.Peers {
		if p.Key.Sign == j.Key.Sign {
			return enroll.StatusConflict, "", "", inv
		}
	}
	phrase := enroll.Phrase(d.node.Identity(), j.Key, j.Secret)
	st.Peers = append(st.Peers, state.Peer{Name: inv.Peer, PublicKey: j.Key.String(), Services: inv.Services,
		Enrolled: now.UTC(), Role: "invite", By: inv.By, Phrase: phrase})
	if err := st.SavePeers(); err != nil {
		d.log.Error().Err(err).Msg("enrollment: cannot write the state directory")
		return enroll.StatusFailed, "", "", inv
	}
	if err := d.applyStateLocked(); err != nil {
		d.log.Error().Err(err).Str("peer", inv.Peer).Msg("enrollment: the new peer does not apply; not enrolled")
		st.Peers = st.Peers[:len(st.Peers)-1]
		st.SavePeers()
		return enroll.StatusFailed, "", "", inv
	}
	st.Invites[idx].Used = now.UTC()
	if err := st.SaveInvites(); err != nil {
		// The peer is pinned; the invitation still reads as pending on
		// disk, but its peer name is taken, so a replay gets "conflict".
		d.log.Error().Err(err).Msg("enrollment: cannot mark the invitation used")
	}
	d.setPending(st, now)
	return enroll.StatusOK, inv.Peer, phrase, inv
}

// WaitArgs are dyad invite --wait's arguments.
type WaitArgs struct {
	Peer    string        `json:"peer"`
	Timeout time.Duration `json:"timeout"`
}

// WaitResult is what dyad invite --wait prints once the peer joined.
type WaitResult struct {
	Peer        string `json:"peer"`
	Fingerprint string `json:"fingerprint"`
	Phrase      string `json:"phrase"`
	// Entry is the YAML a declarative configuration adds for the peer
	// (its peers entry and the services' allow lists), to move it out of
	// the state directory.
	Entry string `json:"entry"`
}

// maxWait bounds one invite.wait call.
const maxWait = time.Hour

// controlInviteWait returns once the invitation for a peer was used,
// with the verification phrase, or fails after the timeout.
func (d *Daemon) controlInviteWait(ctx context.Context, _ control.Caller, raw json.RawMessage) (any, error) {
	var a WaitArgs
	if err := strictJSON(raw, &a); err != nil {
		return nil, err
	}
	if a.Timeout <= 0 || a.Timeout > maxWait {
		return nil, fmt.Errorf("--wait %v: from 1s to %v", a.Timeout, maxWait)
	}
	deadline := time.Now().Add(a.Timeout)
	for {
		st, err := state.Load(d.cfg.Load().StateDir)
		if err != nil {
			return nil, err
		}
		if i, ok := st.Peer(a.Peer); ok && st.Peers[i].Role == "invite" {
			p := st.Peers[i]
			k, err := identity.ParsePublicKey(p.PublicKey)
			if err != nil {
				return nil, err
			}
			return WaitResult{Peer: p.Name, Fingerprint: k.Fingerprint(), Phrase: p.Phrase, Entry: inviterEntry(p)}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s has not joined within %v; the invitation stays valid until it expires", a.Peer, a.Timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

var _ tunnel.Enroller = (*Daemon)(nil)

// peer finds a pinned peer by name.
func (c *Config) peer(name string) (tunnel.Peer, bool) {
	for _, p := range c.Tunnel.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return tunnel.Peer{}, false
}

// printEntry is the YAML a declarative configuration adds for sp.
func printEntry(sp state.Peer) string {
	f := File{Peers: []PeerFile{{Name: sp.Name, PublicKey: sp.PublicKey, Endpoint: sp.Endpoint}}}
	for _, fw := range sp.Forwards {
		f.Forwards = append(f.Forwards, ForwardConfig{Listen: fw.Listen, Peer: sp.Name, Service: fw.Service})
	}
	out, _ := yaml.Marshal(struct {
		Peers    []PeerFile      `yaml:"peers"`
		Forwards []ForwardConfig `yaml:"forwards,omitempty"`
	}{f.Peers, f.Forwards})
	return string(out)
}

// inviterEntry is the YAML for an invited peer: its peers entry, and the
// services whose allow lists must name it.
func inviterEntry(p state.Peer) string {
	out, _ := yaml.Marshal(struct {
		Peers []PeerFile `yaml:"peers"`
	}{[]PeerFile{{Name: p.Name, PublicKey: p.PublicKey}}})
	s := string(out)
	if len(p.Services) > 0 {
		s += fmt.Sprintf("# and add %s to the allow list of: %s\n", p.Name, strings.Join(p.Services, ", "))
	}
	return s
}

func strictJSON(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return errors.New("missing arguments")
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("arguments: %w", err)
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func hostOf(endpoint string) string {
	h, _, err := net.SplitHostPort(endpoint)
	if err != nil {
		return endpoint
	}
	return h
}

func splitAddr(a net.Addr) (string, int64) {
	if a == nil {
		return "", 0
	}
	h, p, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String(), 0
	}
	port, _ := strconv.ParseInt(p, 10, 64)
	return h, port
}

func lookupUser(uid uint32) string { return control.UserName(uid) }
