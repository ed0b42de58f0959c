package report

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
)

// Bounds that keep a report's memory and size in check on a hostile
// journal (millions of refusals from as many addresses).
const (
	examplesPerEvent = 3
	maxIncidents     = 500
	maxKeyed         = 100_000 // distinct addresses or keys tracked; more count as "other"
	topN             = 10
)

// noCut says every verified entry is evidence.
const noCut = ^uint64(0)

// scan reads the journal's verified entries in order and keeps what the
// report needs: counts within the period, and the state (tunnels, keys,
// configuration) that entries before the period establish.
type scan struct {
	o *Options

	entries     int
	first, last time.Time
	counts      map[string]int
	suppressed  map[string]int
	hours       map[time.Time]map[string]int
	peers       map[string]*peerState
	uses        map[useKey]*ServiceUse
	ref         Refusals
	api         APIEvidence
	inventory   map[string]apiInventory // by "peer → service"
	sources     map[string]int64
	fps         map[string]int64
	policy      map[string]int64
	limits      map[string]int64
	keys        Keys
	ownKeys     map[string]*KeySeen
	pinned      map[string]string // peer → fingerprint, per the last config event
	configs     []ConfigChange
	lifecycle   []LifecycleStep
	auditPath   AuditPath
	tls         map[string]int64
	examples    map[string][]uint64
	cited       map[uint64]citedEntry
	checkpoints []Checkpoint

	started    *journal.Entry // the last daemon.started before the period's end
	lastSeq    uint64         // of the period's last entry other than a checkpoint
	outages    []*outage
	slots      map[time.Time]*slot
	moreIncids int
	bins       bins     // events by kind over time, for the timeline
	breaks     []uint64 // dyad.journal.break entries
	cut        uint64   // entries from this one on are not evidence (noCut: none)

	// The daemon's life, followed through its entries (see life below).
	life        string    // "" before the first entry, lifeRunning or lifeStopped
	lifeSince   time.Time // when life took its current value
	starting    bool      // a new process's first entries seen, its daemon.started not yet
	lastEv      time.Time // the last entry before the period's end: the last proof of life
	lastEvSeq   uint64
	lastEvEntry journal.Entry
	lastEvLine  []byte
	daemonIv    []Interval // running, stopped and unknown stretches, within the period
	gaps        []Gap
}

// The daemon's life as the journal proves it. A daemon.started begins a
// running stretch; daemon.stopped ends it cleanly. Every entry, minute
// checkpoints included, proves the daemon was running when it was written.
// When a new process's first entry (config.loaded, journal.recovered,
// journal.break, daemon.started) arrives while the last stretch never
// stopped, the stop was unclean: the time from the last entry before it to
// that first entry is unknown, never uptime (THREATS P10, tested by
// TestReportCrashGap and TestReportCrashInChromium).
const (
	lifeRunning = "running"
	lifeStopped = "stopped"
)

type useKey struct{ service, peer, direction string }

type citedEntry struct {
	time time.Time
	name string
	line string
}

type peerState struct {
	act       *PeerActivity
	everUp    bool      // a tunnel was up before: after a restart, the peer is down until it is again
	open      int       // tunnels up now
	upSince   time.Time // when open went from 0 to 1
	downSince time.Time // when open fell to 0; zero before the first tunnel
	outage    *outage   // the current outage
}

type outage struct {
	peer       string
	start, end time.Time
	ongoing    bool   // still down at the last evidence
	endNote    string // how it ended when not by a tunnel coming up: evidence ends, clean stop
	shutdown   bool   // the tunnel was closed by our own shutdown
	dropped    bool   // it was the daemon's clean stop, not an outage
	cause      string
	failed     int // forwarded connections refused for want of the tunnel
	cites      []uint64
}

// slot counts hostile events in one burst window.
type slot struct {
	start, first, last time.Time
	count              int64
	kinds              map[string]int64
	sources            map[string]int64
	peers              map[string]bool
	cites              []uint64
}

func newScan(o *Options) *scan {
	return &scan{
		o: o, counts: map[string]int{}, suppressed: map[string]int{}, hours: map[time.Time]map[string]int{},
		peers: map[string]*peerState{}, uses: map[useKey]*ServiceUse{},
		ref:     Refusals{ByReason: map[string]int{}, Records: map[string]int{}, QUICDrops: map[string]int{}},
		sources: map[string]int64{}, fps: map[string]int64{}, policy: map[string]int64{}, limits: map[string]int64{},
		ownKeys: map[string]*KeySeen{}, pinned: map[string]string{}, tls: map[string]int64{},
		examples: map[string][]uint64{}, cited: map[uint64]citedEntry{}, slots: map[time.Time]*slot{},
		cut:       noCut,
		api:       APIEvidence{SpecsInForce: []string{}, Denied: map[string]int{}, ResponseInvalid: map[string]int{}},
		inventory: map[string]apiInventory{},
	}
}

// apiInventory is the last dyad.api.inventory of one peer and service.
type apiInventory struct{ ops, shadow, deprecated []string }

func str(e *journal.Entry, key string) string { return e.Attr(key).AsString() }

func num(e *journal.Entry, key string) int64 {
	v := e.Attr(key)
	if v.Type() == attribute.FLOAT64 {
		return int64(v.AsFloat64())
	}
	return v.AsInt64()
}

func seconds(e *journal.Entry, key string) float64 {
	v := e.Attr(key)
	if v.Type() == attribute.INT64 {
		return float64(v.AsInt64())
	}
	return v.AsFloat64()
}

// entry is journal.VerifyOptions.Each: called with every verified entry.
func (s *scan) entry(e *journal.Entry, line []byte) error {
	if e.Seq >= s.cut {
		return nil // at or after the first bad entry: never evidence
	}
	if e.Name == journal.CheckpointEvent {
		s.checkpoints = append(s.checkpoints, Checkpoint{
			Seq: e.Seq, Size: num(e, "dyad.journal.size"), Root: str(e, "dyad.journal.root_hash"),
			Time: e.Time, Note: str(e, "dyad.journal.checkpoint"),
		})
	}
	if !e.Time.Before(s.o.To) {
		return nil
	}
	in := !e.Time.Before(s.o.From)
	s.live(e, line)
	s.state(e, line, in)
	s.lastEv, s.lastEvSeq, s.lastEvEntry, s.lastEvLine = e.Time, e.Seq, *e, line
	if !in {
		return nil
	}
	s.entries++
	if e.Name != journal.CheckpointEvent { // a checkpoint is covered only by the next
		s.lastSeq = e.Seq
	}
	if s.first.IsZero() {
		s.first = e.Time
	}
	s.last = e.Time
	s.counts[e.Name]++
	if ex := s.examples[e.Name]; len(ex) < examplesPerEvent {
		s.examples[e.Name] = append(ex, e.Seq)
		s.keep(e, line)
	}
	s.count(e, line)
	return nil
}

// keep remembers an entry's line so the report can cite it.
func (s *scan) keep(e *journal.Entry, line []byte) {
	if _, ok := s.cited[e.Seq]; !ok {
		s.cited[e.Seq] = citedEntry{time: e.Time, name: e.Name, line: string(line)}
	}
}

func (s *scan) peer(name string) *peerState {
	p := s.peers[name]
	if p == nil {
		p = &peerState{act: &PeerActivity{Peer: name, Closed: map[string]int{}}}
		s.peers[name] = p
	}
	return p
}

// state follows what holds over time: tunnels up and down, keys, daemon
// lifetimes. It sees entries before the period too (in false).
func (s *scan) state(e *journal.Entry, line []byte, in bool) {
	switch e.Name {
	case audit.DaemonStarted:
		started := *e
		s.started = &started
		fp := str(e, audit.KeyFingerprint)
		if fp != s.keys.Identity {
			// A start under another identity than the last rotation's: the
			// key file's creation time, when the start recorded it.
			s.keys.Identity, s.keys.IdentitySince, s.keys.IdentitySource = fp, time.Time{}, ""
			if t, err := time.Parse(time.RFC3339, str(e, keyIdentityCreated)); err == nil {
				s.keys.IdentitySince, s.keys.IdentitySource = t, keyIdentityCreated
			}
		}
		if k := s.ownKeys[fp]; k != nil {
			k.Last = e.Time
		} else {
			s.ownKeys[fp] = &KeySeen{Fingerprint: fp, First: e.Time, Last: e.Time}
		}
		if in {
			detail := fmt.Sprintf("version %s, identity %s, suite %s", str(e, audit.KeyServiceVersion), fp, str(e, audit.KeyCodecSuite))
			s.lifecycle = append(s.lifecycle, LifecycleStep{Time: e.Time, Event: e.Name, Detail: detail, Seq: e.Seq, Unclean: s.uncleanBefore(e.Seq)})
		}
	case audit.DaemonStopped:
		if in {
			detail := fmt.Sprintf("%s after %s", str(e, audit.KeyReason), time.Duration(seconds(e, audit.KeyDuration)*float64(time.Second)).Round(time.Second))
			s.lifecycle = append(s.lifecycle, LifecycleStep{Time: e.Time, Event: e.Name, Detail: detail, Seq: e.Seq})
		}
	case audit.ConfigLoaded, audit.ConfigReloaded:
		s.pins(e, line, in)
		s.api.SpecsInForce = append([]string{}, e.Attr(audit.KeyAPISpecSHA256).AsStringSlice()...)
	case audit.IdentityRotated, audit.PeerKeyRotated, audit.PeerEnrolled, audit.PeerRevoked:
		s.lifecycleKey(e, line, in)
	case audit.TunnelEstablished:
		p := s.peer(str(e, audit.KeyPeer))
		a := p.act
		t := e.Time
		if a.FirstSeen == nil {
			a.FirstSeen = &t
		}
		a.LastSeen = &t
		if p.open == 0 {
			cause := ""
			if o := p.outage; o != nil {
				o.end, cause = e.Time, o.cause
				o.cites = append(o.cites, e.Seq)
				s.keep(e, line)
				p.outage = nil
			}
			s.interval(p, p.downSince, e.Time, "down", cause)
			p.upSince = e.Time
		}
		p.open++
		p.everUp = true
		a.Fingerprints = addUnique(a.Fingerprints, str(e, audit.KeyPeerFingerprint))
		a.Addresses = addUnique(a.Addresses, fmt.Sprintf("%s:%d", str(e, audit.KeyPeerAddress), num(e, audit.KeyPeerPort)))
	case audit.TunnelClosed:
		p := s.peer(str(e, audit.KeyPeer))
		t := e.Time
		p.act.LastSeen = &t
		if p.open > 1 {
			p.open--
		} else if s.down(p, e.Time, str(e, audit.KeyCloseReason), e, line); p.outage != nil {
			// Closed by our own shutdown: not an outage if daemon.stopped follows.
			p.outage.shutdown = str(e, audit.KeyCloseReason) == "shutdown"
		}
	case audit.StreamFailed:
		if p := s.peers[str(e, audit.KeyPeer)]; p != nil && p.outage != nil && in {
			p.outage.failed++
		}
	}
}

// down marks a peer's tunnels down at t and opens an outage.
func (s *scan) down(p *peerState, t time.Time, cause string, e *journal.Entry, line []byte) {
	if p.open == 0 {
		return // not up
	}
	p.open = 0
	s.interval(p, p.upSince, t, "up", "")
	if _, pinned := s.pinned[p.act.Peer]; !pinned && len(s.pinned) > 0 {
		p.downSince = time.Time{} // removed from the configuration: retired, not down
		return
	}
	p.downSince = t
	o := &outage{peer: p.act.Peer, start: t, cause: cause, cites: []uint64{e.Seq}}
	s.keep(e, line)
	p.outage = o
	s.outages = append(s.outages, o)
}

// interval records a stretch of a peer's state, clipped to the period.
func (s *scan) interval(p *peerState, from, to time.Time, state, cause string) {
	if from.IsZero() {
		return
	}
	from, to = maxTime(from, s.o.From), minTime(to, s.o.To)
	if !to.After(from) {
		return
	}
	d := to.Sub(from).Seconds()
	if state == "up" {
		p.act.UpSeconds += d
	} else {
		p.act.DownSeconds += d
		p.act.Outages++
	}
	p.act.Intervals = append(p.act.Intervals, Interval{From: from, To: to, State: state, Cause: cause})
}

// keyIdentityCreated is the daemon.started attribute with the identity's
// creation time (written by releases that record it in the key file).
const keyIdentityCreated = "dyad.identity.created"

// lifecycleKey follows the key lifecycle events of the control socket and
// the tunnel: this daemon's rotations, peers' announced rotations,
// enrolments and revocations (the DORA key-lifecycle row).
func (s *scan) lifecycleKey(e *journal.Entry, line []byte, in bool) {
	if e.Name == audit.IdentityRotated {
		s.keys.Identity, s.keys.IdentitySince, s.keys.IdentitySource = str(e, audit.KeyFingerprint), e.Time, audit.IdentityRotated
	}
	if !in {
		return
	}
	s.keep(e, line)
	c := KeyChange{Time: e.Time, Peer: str(e, audit.KeyPeer), Seq: e.Seq}
	switch e.Name {
	case audit.IdentityRotated:
		c.Change, c.Old, c.New = "rotated", str(e, audit.KeyPreviousFingerprint), str(e, audit.KeyFingerprint)
		s.keys.Rotations = append(s.keys.Rotations, c)
		return
	case audit.PeerKeyRotated:
		c.Change, c.Old, c.New = "rotated_by_announcement", str(e, audit.KeyPeerPreviousFingerprint), str(e, audit.KeyPeerFingerprint)
	case audit.PeerEnrolled:
		c.Change, c.New = "enrolled", str(e, audit.KeyPeerFingerprint)
		s.keys.Enrolments++
	case audit.PeerRevoked:
		c.Change, c.Old = "revoked", str(e, audit.KeyPeerFingerprint)
		s.keys.Revocations++
	}
	s.keys.Changes = append(s.keys.Changes, c)
}

// pins follows the pinned peer keys through configuration events.
func (s *scan) pins(e *journal.Entry, line []byte, in bool) {
	now := map[string]string{}
	for _, kv := range e.Attr(audit.KeyPeerKeys).AsStringSlice() {
		name, fp, _ := strings.Cut(kv, "=")
		now[name] = fp
	}
	change := func(peer, what, old, cur string) {
		if in {
			s.keys.Changes = append(s.keys.Changes, KeyChange{Time: e.Time, Peer: peer, Change: what, Old: old, New: cur, Seq: e.Seq})
			s.keep(e, line)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(now)) {
		switch old, ok := s.pinned[name]; {
		case !ok:
			change(name, "pinned", "", now[name])
		case old != now[name]:
			change(name, "rotated", old, now[name])
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.pinned)) {
		if _, ok := now[name]; !ok {
			change(name, "removed", s.pinned[name], "")
		}
	}
	s.pinned = now
}

// count adds one in-period entry to the counts.
func (s *scan) count(e *journal.Entry, line []byte) {
	hour := e.Time.Truncate(time.Hour)
	add := func(kind string, n int) {
		h := s.hours[hour]
		if h == nil {
			h = map[string]int{}
			s.hours[hour] = h
		}
		h[kind] += n
		s.bins.add(e.Time, kind, n)
	}
	switch e.Name {
	case audit.StreamOpened:
		add(KindStreams, 1)
		s.use(e).Streams++
		s.peer(str(e, audit.KeyPeer)).act.Streams++
	case audit.StreamClosed:
		// The Tunnels table's bytes are these same stream figures summed
		// per partner, so the two tables reconcile (tunnel.closed's totals
		// miss tunnels still open or cut by a crash, and count streams that
		// ended before the period).
		u := s.use(e)
		u.Closed[str(e, audit.KeyCloseReason)]++
		sent, recv := num(e, audit.KeyBytesSent), num(e, audit.KeyBytesReceived)
		u.ToPeer += sent
		u.FromPeer += recv
		a := s.peer(str(e, audit.KeyPeer)).act
		a.BytesSent += sent
		a.BytesReceived += recv
	case audit.StreamFailed:
		add(KindFailures, 1)
		s.use(e).Failed[str(e, audit.KeyReason)]++
	case audit.TunnelEstablished:
		add(KindTunnels, 1)
		s.peers[str(e, audit.KeyPeer)].act.Established++
		s.keys.SessionKeys++
		s.tls[str(e, audit.KeyTLSCurve)+" / "+str(e, audit.KeyTLSCipher)]++
	case audit.TunnelClosed:
		add(KindTunnels, 1)
		s.peers[str(e, audit.KeyPeer)].act.Closed[str(e, audit.KeyCloseReason)]++
	case audit.PeerAuthRefused:
		add(KindRefusals, 1)
		s.ref.Handshakes++
		s.ref.ByReason[str(e, audit.KeyReason)]++
		src := str(e, audit.KeyPeerAddress)
		bump(s.sources, src, 1)
		bump(s.fps, str(e, audit.KeyPeerFingerprint), 1)
		s.hostile(e, line, "handshake refused", src, "", 1)
	case audit.PolicyDenied:
		add(KindRefusals, 1)
		peer, svc, reason := str(e, audit.KeyPeer), str(e, audit.KeyService), str(e, audit.KeyReason)
		bump(s.policy, fmt.Sprintf("%s → %s: %s", peer, svc, reason), 1)
		u := s.useOf(svc, peer, "inbound")
		u.Denied[reason]++
		s.hostile(e, line, "policy denied", "", peer, 1)
	case audit.RateLimitExceeded:
		add(KindRefusals, 1)
		peer := str(e, audit.KeyPeer)
		key := peer
		if key == "" { // a listener limit: no peer is known before the handshake
			key = str(e, audit.KeyScope)
		}
		if svc := str(e, audit.KeyService); svc != "" {
			key += "/" + svc
		}
		bump(s.limits, key+": "+str(e, audit.KeyLimit), 1)
		s.hostile(e, line, "rate limited", "", peer, 1)
	case audit.RecordRejected:
		add(KindIntegrity, 1)
		s.ref.Records[str(e, audit.KeyReason)]++
		s.hostile(e, line, "record rejected", "", str(e, audit.KeyPeer), 1)
	case audit.PacketsDropped:
		n := num(e, audit.KeyCount)
		add(KindIntegrity, int(n))
		s.ref.QUICDrops[str(e, audit.KeyReason)] += int(n)
		s.hostile(e, line, "QUIC packets dropped", "", "", n)
	case audit.APIDenied:
		add(KindRefusals, 1)
		s.api.Denied[str(e, audit.KeyReason)]++
	case audit.APIInventory:
		s.api.Inventories++
		k := str(e, audit.KeyPeer) + " → " + str(e, audit.KeyService)
		s.inventory[k] = apiInventory{
			ops: e.Attr(audit.KeyAPIOperations).AsStringSlice(), shadow: e.Attr(audit.KeyAPIShadow).AsStringSlice(),
			deprecated: e.Attr(audit.KeyAPIDeprecated).AsStringSlice(),
		}
	case audit.APIResponseInvalid:
		add(KindIntegrity, 1)
		s.api.ResponseInvalid[str(e, audit.KeyReason)]++
		if str(e, audit.KeyAPIAction) == "blocked" {
			s.api.ResponseBlocked++
		}
	case audit.KeyUpdated:
		s.keys.RecordKeyUpdates++
	case audit.EventsSuppressed:
		name, n := str(e, audit.KeyEventName), num(e, audit.KeyCount)
		s.suppressed[name] += int(n)
		switch name {
		case audit.PeerAuthRefused:
			add(KindRefusals, int(n))
			s.ref.HandshakesSuppressed += int(n)
			s.hostile(e, line, "handshake refused", "", "", n)
		case audit.PolicyDenied, audit.RateLimitExceeded:
			add(KindRefusals, int(n))
			s.hostile(e, line, "refused", "", "", n)
		case audit.RecordRejected:
			add(KindIntegrity, int(n))
			s.hostile(e, line, "record rejected", "", "", n)
		}
	case audit.ConfigLoaded, audit.ConfigReloaded, audit.ConfigRejected:
		if e.Name == audit.ConfigRejected {
			add(KindFailures, 1)
		}
		s.configs = append(s.configs, ConfigChange{Time: e.Time, Event: e.Name, SHA256: str(e, audit.KeyConfigSHA256), Error: str(e, audit.KeyError), Seq: e.Seq})
		s.keep(e, line)
	case audit.ExportFailed:
		add(KindFailures, 1)
		s.auditPath.ExportFailures++
	case audit.ExportRecovered:
		s.auditPath.ExportRecoveries++
		s.auditPath.ExportDownSeconds += seconds(e, audit.KeyDuration)
	case audit.ExportDropped:
		add(KindFailures, 1)
		s.auditPath.DroppedQueueFull += num(e, audit.KeyQueueFull)
		s.auditPath.DroppedExportFailed += num(e, audit.KeyExportFailed)
	case audit.JournalRecovered:
		add(KindFailures, 1)
		s.auditPath.JournalRecoveries++
	case JournalBreak:
		add(KindFailures, 1)
		s.auditPath.JournalBreaks++
	case journal.CheckpointEvent:
		s.auditPath.Checkpoints++
	}
}

func (s *scan) use(e *journal.Entry) *ServiceUse {
	return s.useOf(str(e, audit.KeyService), str(e, audit.KeyPeer), str(e, audit.KeyDirection))
}

func (s *scan) useOf(service, peer, direction string) *ServiceUse {
	k := useKey{service, peer, direction}
	u := s.uses[k]
	if u == nil {
		u = &ServiceUse{Service: service, Peer: peer, Direction: direction,
			Closed: map[string]int{}, Failed: map[string]int{}, Denied: map[string]int{}}
		s.uses[k] = u
	}
	return u
}

// hostile counts a refusal toward attack-burst detection.
func (s *scan) hostile(e *journal.Entry, line []byte, kind, source, peer string, n int64) {
	start := e.Time.Truncate(s.o.BurstWindow)
	sl := s.slots[start]
	if sl == nil {
		sl = &slot{start: start, first: e.Time, kinds: map[string]int64{}, sources: map[string]int64{}, peers: map[string]bool{}}
		s.slots[start] = sl
	}
	sl.count += n
	sl.last = e.Time
	sl.kinds[kind] += n
	if source != "" {
		bump(sl.sources, source, 1)
	}
	if peer != "" {
		sl.peers[peer] = true
	}
	if len(sl.cites) < examplesPerEvent {
		sl.cites = append(sl.cites, e.Seq)
		s.keep(e, line)
	}
}

// bump counts key in m, folding keys past maxKeyed into "other".
func bump(m map[string]int64, key string, n int64) {
	if _, ok := m[key]; !ok && len(m) >= maxKeyed {
		key = "other"
	}
	m[key] += n
}

func addUnique(list []string, s string) []string {
	if s == "" || slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// finish closes what is still open at the period's end.
func (s *scan) finish() { s.finishLife() }

func top(m map[string]int64) []Count {
	out := make([]Count, 0, len(m))
	for k, v := range m {
		out = append(out, Count{k, v})
	}
	slices.SortFunc(out, func(a, b Count) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Key, b.Key))
	})
	return out
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
