package report

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
)

func (s *scan) period() Period {
	p := Period{From: s.o.From, To: s.o.To, Entries: s.entries}
	if s.entries > 0 {
		first, last := s.first, s.last
		p.FirstEvent, p.LastEvent = &first, &last
	}
	if p.From.IsZero() { // from the journal's start
		p.From = p.To
		if s.entries > 0 {
			p.From = s.first
		}
	}
	return p
}

// daemon overlays what the daemon journalled at its last start on d.
func (s *scan) daemon(d Daemon) Daemon {
	if e := s.started; e != nil {
		d.Version = str(e, audit.KeyServiceVersion)
		d.FIPS = e.Attr(audit.KeyFIPS).AsBool()
		if m := str(e, audit.KeyFIPSModule); m != "" { // absent before this release
			d.FIPSModule = m
			d.FIPSCertified = e.Attr(audit.KeyFIPSCertified).AsBool()
			d.FIPSRequired = e.Attr(audit.KeyFIPSRequired).AsBool()
			d.RequirePostQuantum = e.Attr(audit.KeyRequirePQ).AsBool()
		}
		d.Suite = str(e, audit.KeyCodecSuite)
		d.KeyExchange = str(e, audit.KeyTLSCurve)
	}
	return d
}

func (s *scan) integrity(res *journal.Result) Integrity {
	in := Integrity{
		Verified: res.OK(), Dir: s.o.Journal, Files: res.Files, Entries: res.Entries,
		Checkpoints: res.Checkpoints, Covered: res.Covered, Unsigned: res.After,
	}
	if in.Files == nil {
		in.Files = []string{}
	}
	if n := len(s.checkpoints); n > 0 {
		last := s.checkpoints[n-1]
		in.Checkpoint = &last
		in.PeriodCovered = s.entries == 0 || s.lastSeq < uint64(last.Size)
		// The anchor a previous report may have cited: the last checkpoint
		// before the period, else the first one.
		cps := s.checkpoints
		if len(cps) > 1 && cps[0].Size == 0 {
			cps = cps[1:] // the genesis checkpoint (empty tree) proves no consistency
		}
		from := cps[0]
		for _, c := range cps {
			if c.Time.Before(s.o.From) {
				from = c
			}
		}
		if from.Size >= 1 && from.Size < last.Size {
			in.Consistency = &Consistency{From: from}
		}
	} else {
		in.PeriodCovered = s.entries == 0
	}
	in.Breaks = s.breaks
	if in.Breaks == nil {
		in.Breaks = []uint64{}
	}
	if s.cut != noCut {
		in.EvidenceEnds = u64(s.cut)
	}
	switch {
	case !res.OK():
		in.Problem = res.Bad.String()
		in.Verdict = fmt.Sprintf("NOT VERIFIED: %s. Nothing from entry #%d on is evidence: the figures below count only the entries before it, and no row is evidenced.", in.Problem, s.cut)
	case len(in.Breaks) > 0:
		in.Verdict = fmt.Sprintf("%s in %s, hash chain intact, %s; but the journal records a break at entry #%d (the daemon was started on a journal that did not verify), so no row is evidenced",
			plural(int(res.Entries), "entry", "entries"), plural(len(res.Files), "file", "files"), plural(res.Checkpoints, "signed checkpoint", "signed checkpoints"), in.Breaks[0])
	case in.Checkpoint == nil:
		in.Verdict = fmt.Sprintf("chain intact over %s in %s, but no signed checkpoint yet: nothing is signed", plural(int(res.Entries), "entry", "entries"), plural(len(res.Files), "file", "files"))
	default:
		in.Verdict = fmt.Sprintf("%s in %s, hash chain intact, %s; the last covers %d entries, %d newer are chained but not yet signed",
			plural(int(res.Entries), "entry", "entries"), plural(len(res.Files), "file", "files"),
			plural(res.Checkpoints, "signed checkpoint", "signed checkpoints"), in.Checkpoint.Size, res.After)
	}
	return in
}

func (s *scan) evidence() Evidence {
	ev := Evidence{
		EventCounts: s.counts, Suppressed: s.suppressed, Refusals: s.ref, Keys: s.keys,
		Configs: s.configs, Lifecycle: s.lifecycle, AuditPath: s.auditPath, TLS: top(s.tls),
	}
	ev.API = s.api
	ev.API.Operations, ev.API.Shadow, ev.API.Deprecated = []string{}, []string{}, []string{}
	for _, k := range slices.Sorted(maps.Keys(s.inventory)) {
		inv := s.inventory[k]
		for _, o := range inv.ops {
			ev.API.Operations = append(ev.API.Operations, k+": "+o)
		}
		for _, o := range inv.shadow {
			ev.API.Shadow = append(ev.API.Shadow, k+": "+o)
		}
		for _, o := range inv.deprecated {
			ev.API.Deprecated = append(ev.API.Deprecated, k+": "+o)
		}
	}
	for _, h := range slices.SortedFunc(maps.Keys(s.hours), time.Time.Compare) {
		ev.Hourly = append(ev.Hourly, Bucket{Start: h, Counts: s.hours[h]})
	}
	for _, p := range s.o.Controls.Peers {
		s.peer(p.Name)
	}
	for _, name := range slices.Sorted(maps.Keys(s.peers)) {
		a := *s.peers[name].act
		if a.Fingerprints == nil {
			a.Fingerprints, a.Addresses, a.Intervals = []string{}, []string{}, []Interval{}
		}
		ev.Tunnels = append(ev.Tunnels, a)
	}
	ev.Uptime = s.uptime(ev.Tunnels)
	ev.Services = []ServiceUse{}
	for _, u := range s.uses {
		ev.Services = append(ev.Services, *u)
	}
	slices.SortFunc(ev.Services, func(a, b ServiceUse) int {
		return cmp.Or(cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Service, b.Service), cmp.Compare(a.Peer, b.Peer))
	})
	ev.Unused = []string{}
	for _, svc := range s.o.Controls.Services {
		used := false
		for _, u := range s.uses {
			used = used || u.Service == svc.Name && u.Direction == "inbound" && u.Streams > 0
		}
		if !used {
			ev.Unused = append(ev.Unused, svc.Name)
		}
	}
	r := &ev.Refusals
	r.Sources, r.DistinctSources = head(top(s.sources)), len(s.sources)
	r.Fingerprints, r.DistinctFingerprints = head(top(s.fps)), len(s.fps)
	r.Policy, r.RateLimits = top(s.policy), top(s.limits)
	for _, fp := range slices.SortedFunc(maps.Values(s.ownKeys), func(a, b *KeySeen) int { return a.First.Compare(b.First) }) {
		ev.Keys.Own = append(ev.Keys.Own, *fp)
	}
	ev.Incidents = s.incidents()
	ev.IncidentsOmitted = s.moreIncids
	ev.Register = s.register()
	if ev.Keys.Changes == nil {
		ev.Keys.Changes = []KeyChange{}
	}
	if ev.Keys.Rotations == nil {
		ev.Keys.Rotations = []KeyChange{}
	}
	for _, l := range []*[]ConfigChange{&ev.Configs} {
		if *l == nil {
			*l = []ConfigChange{}
		}
	}
	if ev.Lifecycle == nil {
		ev.Lifecycle = []LifecycleStep{}
	}
	return ev
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func head(c []Count) []Count { return c[:min(len(c), topN)] }

// incidents lists tunnel outages of at least OutageMin and bursts of at
// least BurstEvents refusals in a BurstWindow, as candidates.
func (s *scan) incidents() []Incident {
	var out []Incident
	for _, g := range s.gaps {
		if g.Cause == GapUnclean && g.To.Sub(g.From) >= s.o.OutageMin {
			out = append(out, s.gapIncident(g))
		}
	}
	for _, o := range s.outages {
		if o.dropped {
			continue
		}
		end := o.end
		if end.IsZero() {
			end = s.o.To
		}
		if end.Sub(o.start) < s.o.OutageMin || !end.After(s.o.From) || !o.start.Before(s.o.To) {
			continue
		}
		out = append(out, s.outageIncident(o, end))
	}
	var bursts []*slot
	for _, start := range slices.SortedFunc(maps.Keys(s.slots), time.Time.Compare) {
		sl := s.slots[start]
		if sl.count < int64(s.o.BurstEvents) {
			continue
		}
		if n := len(bursts); n > 0 && bursts[n-1].start.Add(s.o.BurstWindow).Equal(sl.start) {
			merge(bursts[n-1], sl)
			continue
		}
		cp := *sl
		cp.kinds, cp.sources, cp.peers = maps.Clone(sl.kinds), maps.Clone(sl.sources), maps.Clone(sl.peers)
		bursts = append(bursts, &cp)
	}
	for _, b := range bursts {
		out = append(out, s.burstIncident(b))
	}
	slices.SortStableFunc(out, func(a, b Incident) int { return a.Start.Compare(b.Start) })
	if len(out) > maxIncidents {
		s.moreIncids = len(out) - maxIncidents
		out = out[:maxIncidents]
	}
	for i := range out {
		out[i].ID = fmt.Sprintf("I-%d", i+1)
	}
	if out == nil {
		out = []Incident{}
	}
	return out
}

func merge(into, sl *slot) {
	into.count += sl.count
	into.last = sl.last
	for k, v := range sl.kinds {
		into.kinds[k] += v
	}
	for k, v := range sl.sources {
		bump(into.sources, k, v)
	}
	for k := range sl.peers {
		into.peers[k] = true
	}
}

// affected are the services a partner link carries, and whether the link
// is tagged critical or important.
func (s *scan) affected(peer string) (services []string, critical bool, country string) {
	for _, p := range s.o.Controls.Peers {
		if p.Name == peer {
			critical, country = p.Critical, p.Country
		}
	}
	for _, svc := range s.o.Controls.Services {
		if slices.Contains(svc.Allow, peer) {
			services = append(services, svc.Name+" (exported)")
			critical = critical || svc.Critical
		}
	}
	for _, f := range s.o.Controls.Forwards {
		if f.Peer == peer {
			services = append(services, f.Service+" (imported at "+f.Listen+")")
		}
	}
	return services, critical, country
}

func (s *scan) outageIncident(o *outage, end time.Time) Incident {
	services, critical, country := s.affected(o.peer)
	d := end.Sub(o.start).Round(time.Second)
	state := fmt.Sprintf("restored at %s", end.Format(time.RFC3339))
	if o.endNote != "" {
		state = fmt.Sprintf("%s at %s", o.endNote, end.Format(time.RFC3339))
	}
	if services == nil {
		services = []string{}
	}
	geo := "country of the partner not configured (peers[].country)"
	if country != "" {
		geo = "partner site in " + country + "; other Member States affected: outside dyad's evidence"
	}
	crit := "the link is not tagged critical_or_important_function in the configuration"
	if critical {
		crit = "the link or a service on it is tagged critical_or_important_function: ICT services supporting a critical or important function were affected (Art. 6(a))"
	}
	return Incident{
		Kind: "tunnel_outage", Start: o.start, End: end, Ongoing: o.ongoing, Detected: o.start,
		Summary: fmt.Sprintf("tunnel to %s down for %s (cause: %s), %s", o.peer, d, o.cause, state),
		Peers:   []string{o.peer}, Services: services, Critical: critical, Citations: o.cites,
		Criteria: []Criterion{
			{"2024/1772 Art. 1", "Clients, financial counterparts and transactions",
				fmt.Sprintf("1 financial counterpart link (%s) unavailable; %d forwarded connections refused for want of the tunnel; the clients and transactions behind them are outside dyad's evidence", o.peer, o.failed), false},
			{"2024/1772 Art. 2", "Reputational impact", "outside dyad's evidence", true},
			{"2024/1772 Art. 3", "Duration and service downtime", fmt.Sprintf("down from %s, %s; %s", o.start.Format(time.RFC3339), d, state), false},
			{"2024/1772 Art. 4", "Geographical spread", geo, country == ""},
			{"2024/1772 Art. 5", "Data losses", "availability: data could not flow over this link while it was down; integrity, authenticity, confidentiality: no record was accepted without authentication (records are sealed end to end)", false},
			{"2024/1772 Art. 6", "Critical services affected", crit, false},
			{"2024/1772 Art. 7", "Economic impact", "outside dyad's evidence", true},
		},
	}
}

func (s *scan) burstIncident(b *slot) Incident {
	var kinds []string
	for _, k := range top(b.kinds) {
		kinds = append(kinds, fmt.Sprintf("%d %s", k.Count, k.Key))
	}
	peers := slices.Sorted(maps.Keys(b.peers))
	var services []string
	critical := false
	for _, p := range peers {
		svcs, c, _ := s.affected(p)
		services = append(services, svcs...)
		critical = critical || c
	}
	if services == nil {
		services = []string{}
	}
	sources := "no source addresses recorded (QUIC drops and suppressed counts carry none)"
	if len(b.sources) > 0 {
		t := top(b.sources)
		sources = fmt.Sprintf("%d distinct source addresses, most from %s (%d); where they are is outside dyad's evidence", len(b.sources), t[0].Key, t[0].Count)
	}
	who := "unpaired parties"
	if len(peers) > 0 {
		who = "unpaired parties and paired peer(s) " + strings.Join(peers, ", ")
	}
	return Incident{
		Kind: "attack_burst", Start: b.first, End: b.last, Detected: b.first,
		Summary: fmt.Sprintf("%d refusals between %s and %s: %s", b.count, b.first.Format(time.RFC3339), b.last.Format(time.RFC3339), strings.Join(kinds, ", ")),
		Peers:   orEmpty(peers), Services: services, Critical: critical, Citations: b.cites,
		Criteria: []Criterion{
			{"2024/1772 Art. 1", "Clients, financial counterparts and transactions", "attempts by " + who + "; every one was refused, so no partner traffic was carried for them", false},
			{"2024/1772 Art. 2", "Reputational impact", "outside dyad's evidence", true},
			{"2024/1772 Art. 3", "Duration and service downtime", fmt.Sprintf("%s of activity; downtime: see tunnel outages in the same period, if any", b.last.Sub(b.first).Round(time.Second)), false},
			{"2024/1772 Art. 4", "Geographical spread", sources, false},
			{"2024/1772 Art. 5", "Data losses", "none evidenced: every handshake, stream and record in the burst was refused before it reached an API", false},
			{"2024/1772 Art. 6", "Critical services affected", "no successful unauthorised access evidenced (Art. 6(c)): all attempts were refused", false},
			{"2024/1772 Art. 7", "Economic impact", "outside dyad's evidence", true},
		},
	}
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// register is one row per partner link: configured now, or seen in the
// journal.
func (s *scan) register() []RegisterRow {
	rows := map[string]*RegisterRow{}
	for _, p := range s.o.Controls.Peers {
		rows[p.Name] = &RegisterRow{Peer: p.Name, Fingerprint: p.Fingerprint, Endpoint: p.Endpoint, Country: p.Country, Critical: p.Critical, Configured: true}
	}
	for name, p := range s.peers {
		r := rows[name]
		if r == nil {
			r = &RegisterRow{Peer: name}
			if len(p.act.Fingerprints) > 0 {
				r.Fingerprint = p.act.Fingerprints[len(p.act.Fingerprints)-1]
			}
			rows[name] = r
		}
		r.FirstSeen, r.LastSeen = p.act.FirstSeen, p.act.LastSeen
	}
	var out []RegisterRow
	for _, name := range slices.Sorted(maps.Keys(rows)) {
		r := rows[name]
		r.Exports, r.Imports = []string{}, []string{}
		for _, svc := range s.o.Controls.Services {
			if slices.Contains(svc.Allow, name) {
				r.Exports = append(r.Exports, svc.Name)
				r.Critical = r.Critical || svc.Critical
			}
		}
		for _, f := range s.o.Controls.Forwards {
			if f.Peer == name {
				r.Imports = addUnique(r.Imports, f.Service)
			}
		}
		out = append(out, *r)
	}
	if out == nil {
		out = []RegisterRow{}
	}
	return out
}
