package report

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
)

// Journal entries the report reads that the journal writes by itself.
const (
	// JournalBreak records that the daemon started on a journal that did
	// not verify because the operator chose to go on.
	JournalBreak = journal.BreakEvent
	// AttrLastEntryTime, on dyad.journal.recovered, is when the last entry
	// of the adopted crash tail was written (RFC 3339).
	AttrLastEntryTime = journal.AttrLastEntryTime
	// AttrRecoveredEntries, on dyad.journal.recovered, counts the adopted
	// crash tail's entries.
	AttrRecoveredEntries = journal.AttrRecoveredEntries
)

// Causes of a Gap.
const (
	GapUnclean       = "unclean_stop"         // the daemon ended without daemon.stopped
	GapAfterEvidence = "after_last_evidence"  // no entry since the last one: running, stopped or crashed is unknown
	GapBeforeJournal = "before_journal_start" // the period starts before the journal's first entry
)

// States of an Interval.
const (
	StateUp      = "up"
	StateDown    = "down"
	StateUnknown = "unknown" // the daemon was not provably running
	StateRunning = "running"
	StateStopped = "stopped" // cleanly stopped
)

// shutdownGrace bounds the time between a tunnel closed by our own
// shutdown and the daemon.stopped that follows: such a close is part of
// the clean stop, not an outage.
const shutdownGrace = time.Minute

// Uptime is the daemon's life as the journal proves it.
type Uptime struct {
	RunningSeconds float64 `json:"running_seconds"` // between a start and the last entry or clean stop
	StoppedSeconds float64 `json:"stopped_seconds"` // after a clean stop (daemon.stopped), before the next start
	// UnknownSeconds is time in which the daemon was not provably running:
	// after the last entry before an unclean stop, after the last entry of
	// the journal, before its first. Never counted as uptime.
	UnknownSeconds float64    `json:"unknown_seconds"`
	Intervals      []Interval `json:"intervals"` // running, stopped and unknown, within the period
	Gaps           []Gap      `json:"gaps"`      // the unknown stretches and why
}

// Gap is a stretch in which the journal cannot say whether the daemon ran.
type Gap struct {
	From    time.Time `json:"from"` // the last evidence
	To      time.Time `json:"to"`   // the next start, or the period's end
	Seconds float64   `json:"seconds"`
	Cause   string    `json:"cause"`              // GapUnclean, GapAfterEvidence, GapBeforeJournal
	LastSeq *uint64   `json:"last_seq,omitempty"` // the last entry before the gap
	NextSeq *uint64   `json:"next_seq,omitempty"` // the new process's first entry
	Peers   []string  `json:"peers"`              // partners with a tunnel up or down when the evidence ends
	Detail  string    `json:"detail"`
}

func u64(n uint64) *uint64 { return &n }

// live follows the daemon's life; it sees every entry before the
// period's end, before state does.
func (s *scan) live(e *journal.Entry, line []byte) {
	if s.life == "" {
		s.life, s.lifeSince = lifeStopped, e.Time
		if !s.o.From.IsZero() && e.Time.After(s.o.From) {
			s.gap(Gap{From: s.o.From, To: e.Time, Cause: GapBeforeJournal, NextSeq: u64(e.Seq),
				Detail: "before the journal's first entry: whether a daemon ran then is unknown"})
		}
	}
	switch e.Name {
	case JournalBreak:
		s.breaks = append(s.breaks, e.Seq)
		s.keep(e, line)
		fallthrough
	case audit.ConfigLoaded, audit.JournalRecovered, audit.DaemonStarted:
		if s.life == lifeRunning && !s.starting {
			s.unclean(e, line)
		}
		if e.Name != audit.DaemonStarted {
			s.starting = true
			return
		}
		s.starting = false
		if s.life == lifeRunning {
			return
		}
		s.daemonInterval(s.lifeSince, e.Time, StateStopped)
		s.life, s.lifeSince = lifeRunning, e.Time
		for _, name := range slices.Sorted(maps.Keys(s.peers)) {
			p := s.peers[name]
			if _, pinned := s.pinned[name]; !p.everUp || !pinned && len(s.pinned) > 0 {
				continue
			}
			// Up before the stop: down from the start until it is up again.
			p.downSince = e.Time
			p.outage = &outage{peer: name, start: e.Time, cause: "not up again since the daemon started", cites: []uint64{e.Seq}}
			s.keep(e, line)
			s.outages = append(s.outages, p.outage)
		}
	case audit.DaemonStopped:
		s.starting = false
		if s.life != lifeRunning {
			return // a start that failed before daemon.started
		}
		for _, p := range s.peers {
			switch o := p.outage; {
			case p.open > 0:
				s.interval(p, p.upSince, e.Time, StateUp, "")
			case o != nil && o.shutdown && e.Time.Sub(o.start) <= shutdownGrace:
				o.dropped = true // closed by this clean stop
			case o != nil:
				s.interval(p, p.downSince, e.Time, StateDown, o.cause)
				o.end, o.endNote = e.Time, "the daemon was then stopped cleanly"
			}
			p.open, p.outage, p.downSince = 0, nil, time.Time{}
		}
		s.daemonInterval(s.lifeSince, e.Time, StateRunning)
		s.life, s.lifeSince = lifeStopped, e.Time
	}
}

// uncleanBefore says whether the start at seq followed an unclean stop.
func (s *scan) uncleanBefore(seq uint64) bool {
	for _, g := range s.gaps {
		if g.Cause == GapUnclean && g.NextSeq != nil && *g.NextSeq <= seq && seq-*g.NextSeq < 16 {
			return true
		}
	}
	return false
}

// unclean ends a running stretch that never stopped at its last evidence;
// e is the next process's first entry.
func (s *scan) unclean(e *journal.Entry, line []byte) {
	// The last entry before e is the last proof of life. (The recovered
	// entry's AttrLastEntryTime is not used to move it earlier: entries
	// between would then overlap the gap.)
	from := s.lastEv
	peers := s.evidenceEnds(from, "evidence ends: the daemon stopped without a clean stop", false)
	s.daemonInterval(s.lifeSince, from, StateRunning)
	s.keep(&s.lastEvEntry, s.lastEvLine)
	s.keep(e, line)
	s.gap(Gap{From: from, To: e.Time, Cause: GapUnclean, LastSeq: u64(s.lastEvSeq), NextSeq: u64(e.Seq), Peers: peers,
		Detail: fmt.Sprintf("the daemon ended without a clean stop after entry #%d; the next process began at entry #%d", s.lastEvSeq, e.Seq)})
	s.life, s.lifeSince = lifeStopped, e.Time
}

// evidenceEnds closes every peer's state at t, the last evidence, and
// returns the peers that had a tunnel up or an outage open.
func (s *scan) evidenceEnds(t time.Time, note string, ongoing bool) []string {
	peers := []string{}
	for _, name := range slices.Sorted(maps.Keys(s.peers)) {
		p := s.peers[name]
		if p.open > 0 {
			s.interval(p, p.upSince, t, StateUp, "")
			peers = append(peers, name)
		} else if o := p.outage; o != nil {
			s.interval(p, p.downSince, t, StateDown, o.cause)
			o.end, o.endNote, o.ongoing = t, note, ongoing
			peers = append(peers, name)
		}
		p.open, p.outage, p.downSince = 0, nil, time.Time{}
	}
	return peers
}

// gap records an unknown stretch.
func (s *scan) gap(g Gap) {
	if g.Peers == nil {
		g.Peers = []string{}
	}
	g.Seconds = s.daemonInterval(g.From, g.To, StateUnknown)
	if g.Seconds > 0 {
		s.gaps = append(s.gaps, g)
	}
}

// daemonInterval records a stretch of the daemon's life clipped to the
// period and returns its seconds.
func (s *scan) daemonInterval(from, to time.Time, state string) float64 {
	if from.IsZero() {
		return 0
	}
	from = maxTime(from, s.o.From)
	to = minTime(to, s.o.To)
	if !to.After(from) {
		return 0
	}
	d := to.Sub(from).Seconds()
	s.daemonIv = append(s.daemonIv, Interval{From: from, To: to, State: state})
	return d
}

// finishLife ends the daemon's life at the period's end: a running
// daemon's evidence ends at its last entry, not at the period's end.
func (s *scan) finishLife() {
	switch s.life {
	case lifeRunning:
		end := s.lastEv
		note := "evidence ends: no entry after the journal's last"
		cause := "no entry after this one: whether the daemon kept running, stopped or crashed is unknown"
		if s.cut != noCut {
			note = fmt.Sprintf("evidence ends: the journal does not verify from entry #%d", s.cut)
			cause = note
		}
		peers := s.evidenceEnds(end, note, true)
		s.daemonInterval(s.lifeSince, end, StateRunning)
		s.keep(&s.lastEvEntry, s.lastEvLine)
		s.gap(Gap{From: end, To: s.o.To, Cause: GapAfterEvidence, LastSeq: u64(s.lastEvSeq), Peers: peers, Detail: cause})
	case lifeStopped:
		s.daemonInterval(s.lifeSince, s.o.To, StateStopped)
	default:
		if !s.o.From.IsZero() {
			s.gap(Gap{From: s.o.From, To: s.o.To, Cause: GapBeforeJournal, Detail: "no journal entry before the period's end"})
		}
	}
}

// uptime sums the daemon's stretches and lays the unknown ones over each
// partner's lane.
func (s *scan) uptime(tunnels []PeerActivity) Uptime {
	u := Uptime{Intervals: []Interval{}, Gaps: s.gaps}
	if u.Gaps == nil {
		u.Gaps = []Gap{}
	}
	slices.SortStableFunc(s.daemonIv, func(a, b Interval) int { return a.From.Compare(b.From) })
	for _, iv := range s.daemonIv {
		d := iv.To.Sub(iv.From).Seconds()
		switch iv.State {
		case StateRunning:
			u.RunningSeconds += d
		case StateStopped:
			u.StoppedSeconds += d
		case StateUnknown:
			u.UnknownSeconds += d
			for i := range tunnels {
				tunnels[i].Intervals = append(tunnels[i].Intervals, iv)
				tunnels[i].UnknownSeconds += d
			}
		}
		u.Intervals = append(u.Intervals, iv)
	}
	for i := range tunnels {
		slices.SortStableFunc(tunnels[i].Intervals, func(a, b Interval) int { return a.From.Compare(b.From) })
	}
	return u
}

// gapIncident is an unclean stop whose unknown gap reached OutageMin.
func (s *scan) gapIncident(g Gap) Incident {
	var services []string
	critical, countries := false, []string{}
	for _, p := range g.Peers {
		svcs, c, country := s.affected(p)
		services = append(services, svcs...)
		critical = critical || c
		if country != "" {
			countries = addUnique(countries, country)
		}
	}
	if services == nil {
		services = []string{}
	}
	d := g.To.Sub(g.From).Round(time.Second)
	links := "no partner tunnel was up when the evidence ends"
	if len(g.Peers) > 0 {
		links = fmt.Sprintf("%d partner links (%s) had a tunnel up or an outage open when the evidence ends; whether they carried traffic in the gap is unknown", len(g.Peers), strings.Join(g.Peers, ", "))
	}
	geo := "outside dyad's evidence"
	if len(countries) > 0 {
		geo = "partner sites in " + strings.Join(countries, ", ") + "; other Member States affected: outside dyad's evidence"
	}
	crit := "no link tagged critical_or_important_function was up when the evidence ends"
	if critical {
		crit = "a link or service tagged critical_or_important_function was up when the evidence ends: its availability during the gap is unknown"
	}
	cites := []uint64{}
	for _, n := range []*uint64{g.LastSeq, g.NextSeq} {
		if n != nil {
			cites = append(cites, *n)
		}
	}
	return Incident{
		Kind: "unclean_stop", Start: g.From, End: g.To, Detected: g.To,
		Summary: fmt.Sprintf("the daemon stopped without a clean stop: %s unknown, from its last entry at %s to the next start at %s; never counted as uptime",
			d, g.From.Format(time.RFC3339), g.To.Format(time.RFC3339)),
		Peers: orEmpty(g.Peers), Services: services, Critical: critical, Citations: cites,
		Criteria: []Criterion{
			{"2024/1772 Art. 1", "Clients, financial counterparts and transactions", links, false},
			{"2024/1772 Art. 2", "Reputational impact", "outside dyad's evidence", true},
			{"2024/1772 Art. 3", "Duration and service downtime", fmt.Sprintf("unknown for %s: the journal proves the daemon running until %s and again from %s; in between it may have been down, and it is counted as neither up nor down", d, g.From.Format(time.RFC3339), g.To.Format(time.RFC3339)), false},
			{"2024/1772 Art. 4", "Geographical spread", geo, len(countries) == 0},
			{"2024/1772 Art. 5", "Data losses", "unknown for the gap: events of a process that ended without a clean stop may not have been journalled; records are sealed end to end, so no unauthenticated byte was accepted", false},
			{"2024/1772 Art. 6", "Critical services affected", crit, false},
			{"2024/1772 Art. 7", "Economic impact", "outside dyad's evidence", true},
		},
	}
}
