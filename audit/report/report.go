// Package report turns a daemon's audit journal and its configuration into
// DORA and OWASP API Security Top 10 (2023) evidence: per requirement, the
// control in effect, the runtime evidence from the journal with cited
// entries and their Merkle inclusion proofs, the journal's verification
// verdict, and plain rows for what a network tunnel does not cover. One
// Report renders as JSON (the record), Markdown and self-contained HTML.
package report

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/dyad-tunnel/dyad/audit/journal"
)

// Frameworks a report can cover.
const (
	DORA  = "dora"
	OWASP = "owasp-api-2023"
)

// Schema names the JSON layout; it changes when a field changes meaning.
const Schema = "dyad-report/2"

// Options say what to report on.
type Options struct {
	Journal   string        // journal folder
	Verifier  note.Verifier // the daemon's checkpoint key (journal.NewVerifier)
	Generator string        // e.g. "dyad v1.2.0 (go1.26.8)"
	// Daemon describes the daemon. Version, FIPS, Suite and KeyExchange are
	// replaced by what the daemon journalled at its last start in the
	// period, when it did.
	Daemon     Daemon
	Controls   Controls
	Frameworks []string  // DORA, OWASP; empty means both
	From, To   time.Time // the period; zero From means the journal's start, zero To means Now
	Now        time.Time // zero means time.Now()

	// OutageMin is the shortest tunnel outage, or unknown gap after an
	// unclean stop, listed as an incident candidate; zero means 1 minute.
	OutageMin time.Duration
	// BurstEvents refusals within one BurstWindow make an attack burst;
	// zero means 100 in 5 minutes.
	BurstEvents int
	BurstWindow time.Duration
}

func (o *Options) setDefaults() {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.To.IsZero() {
		o.To = o.Now
	}
	if len(o.Frameworks) == 0 {
		o.Frameworks = []string{DORA, OWASP}
	}
	if o.OutageMin == 0 {
		o.OutageMin = time.Minute
	}
	if o.BurstEvents == 0 {
		o.BurstEvents = 100
	}
	if o.BurstWindow == 0 {
		o.BurstWindow = 5 * time.Minute
	}
	o.From, o.To, o.Now = o.From.UTC(), o.To.UTC(), o.Now.UTC()
}

// Report is the whole evidence report; its JSON encoding is the record the
// other formats are drawn from.
type Report struct {
	Schema     string     `json:"schema"`
	Generated  time.Time  `json:"generated"`
	Generator  string     `json:"generator"` // the dyad build that wrote the report
	Frameworks []string   `json:"frameworks"`
	Daemon     Daemon     `json:"daemon"`
	Period     Period     `json:"period"`
	Journal    Integrity  `json:"journal"`
	Controls   Controls   `json:"controls"`
	Evidence   Evidence   `json:"evidence"`
	Sections   []Section  `json:"sections"`
	Citations  []Citation `json:"citations"`
}

// Daemon says which daemon the report is about.
type Daemon struct {
	Site        string `json:"site"`
	Fingerprint string `json:"fingerprint"`
	PublicKey   string `json:"public_key"`
	Version     string `json:"version"`
	FIPS        bool   `json:"fips_140_3"`
	// FIPSModule is the Go Cryptographic Module version the daemon was
	// built with (v1.0.0 certified; latest: the toolchain's own tree);
	// empty when its journal does not say (a release before it did).
	FIPSModule    string `json:"fips_module_version,omitempty"`
	FIPSCertified bool   `json:"fips_module_certified"`
	// FIPSRequired and RequirePostQuantum are the configuration's fips and
	// tls.require_post_quantum, as journalled at the last start (else as the
	// configuration now says).
	FIPSRequired       bool     `json:"fips_required"`
	RequirePostQuantum bool     `json:"tls_require_post_quantum"`
	KeyExchange        string   `json:"tls_key_exchange"` // the configured TLS group preference
	TLS                string   `json:"tls"`              // protocol settings, e.g. TLS 1.3 only
	Suite              string   `json:"codec_suite"`      // the record suite this daemon seals with
	Suites             []string `json:"codec_suites"`     // suites the build offers
}

// Controls are the settings in effect, read from the configuration.
type Controls struct {
	ConfigPath          string    `json:"config_path"`
	ConfigSHA256        string    `json:"config_sha256"`
	Listen              string    `json:"listen"`
	Admin               string    `json:"admin,omitempty"`
	Peers               []Peer    `json:"peers"`
	Services            []Service `json:"services"`
	Forwards            []Forward `json:"forwards"`
	Limits              []Limit   `json:"limits"`
	IdentityKeyModified time.Time `json:"identity_key_modified"` // the key file's modification time
	// IdentityMaxAge is the age past which the identity should be
	// rotated (identity_max_age); zero: no limit shown.
	IdentityMaxAge       time.Duration `json:"identity_max_age,omitempty"`
	Journal              Journal       `json:"journal"`
	Export               Export        `json:"export"`
	CountConnectionDrops bool          `json:"count_connection_drops"`
	// APIGuards are the services' API guards (services[].api);
	// ResponseChecks the forwards' response checks (forwards[].api).
	APIGuards      []APIGuard      `json:"api_guards,omitempty"`
	ResponseChecks []ResponseCheck `json:"response_checks,omitempty"`
}

// APIGuard is one service's API guard in the configuration.
type APIGuard struct {
	Service    string `json:"service"`
	Spec       string `json:"spec"`
	SHA256     string `json:"spec_sha256"`
	Operations int    `json:"operations"`
	// AllowLists are the allowed peers with an operation list, as
	// peer → the number of operations it may call; Unrestricted the
	// allowed peers without one (they may call every operation).
	AllowLists      map[string]int `json:"allow_lists"`
	Unrestricted    []string       `json:"unrestricted"`
	ValidateRequest bool           `json:"validate_request"`
	// RateLimited are the operations with a per-peer rate limit.
	RateLimited []string `json:"rate_limited"`
	Deprecated  []string `json:"deprecated"` // the spec's deprecated operations
}

// ResponseCheck is one forward's response check in the configuration.
type ResponseCheck struct {
	Forward string `json:"forward"` // listen→peer/service
	Spec    string `json:"spec"`
	SHA256  string `json:"spec_sha256"`
	Block   bool   `json:"block"`
}

// Modes of a row's evidence.
const (
	Prevention = "prevention"
	Detection  = "detection"
	Both       = "prevention and detection"
)

// Peer is a paired partner daemon.
type Peer struct {
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"`
	Endpoint    string `json:"endpoint,omitempty"`
	Country     string `json:"country,omitempty"`
	Critical    bool   `json:"critical_or_important_function"`
}

// Service is an upstream this site exports.
type Service struct {
	Name     string   `json:"name"`
	Upstream string   `json:"upstream"`
	Allow    []string `json:"allow"`
	Critical bool     `json:"critical_or_important_function"`
}

// Forward is a local port carried to a partner's service.
type Forward struct {
	Listen  string `json:"listen"`
	Peer    string `json:"peer"`
	Service string `json:"service"`
}

// Limit is one resource limit in effect.
type Limit struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Scope string `json:"scope"` // per tunnel, per stream, per service …
	Kind  string `json:"kind"`  // rate, concurrency, memory or time
}

// Journal are the journal's settings.
type Journal struct {
	Dir                string `json:"dir"`
	Fsync              string `json:"fsync"`
	MaxFileMB          int    `json:"max_file_mb"`
	CheckpointEvery    int    `json:"checkpoint_every"`
	CheckpointInterval string `json:"checkpoint_interval"`
}

// Export is the OTLP export path's settings.
type Export struct {
	Enabled  bool   `json:"enabled"`
	Protocol string `json:"protocol,omitempty"`
	Endpoint string `json:"endpoint,omitempty"` // credentials removed
	TLS      string `json:"tls,omitempty"`      // insecure, tls or mutual tls
}

// Period is the time the report covers: [From, To).
type Period struct {
	From       time.Time  `json:"from"`
	To         time.Time  `json:"to"`
	Entries    int        `json:"entries"` // journal entries in the period
	FirstEvent *time.Time `json:"first_event,omitempty"`
	LastEvent  *time.Time `json:"last_event,omitempty"`
}

// Integrity is the journal's verification verdict and its anchors.
type Integrity struct {
	Verified    bool     `json:"verified"`
	Verdict     string   `json:"verdict"`
	Problem     string   `json:"problem,omitempty"` // the first bad entry
	Dir         string   `json:"dir"`
	Files       []string `json:"files"`
	Entries     uint64   `json:"entries"`     // verified entries
	Checkpoints int      `json:"checkpoints"` // signed checkpoints verified
	Covered     uint64   `json:"covered"`     // entries under the last signed checkpoint
	Unsigned    uint64   `json:"unsigned"`    // entries after it, chained but not yet signed
	// PeriodCovered is true when every entry of the period is under the
	// last signed checkpoint, so every citation carries a proof.
	PeriodCovered bool        `json:"period_covered"`
	VerifierKey   string      `json:"verifier_key"` // note verifier key of the checkpoints
	Checkpoint    *Checkpoint `json:"checkpoint,omitempty"`
	// Consistency proves that an earlier checkpoint's tree (the last one
	// before the period, which a previous report may have cited) is a
	// prefix of Checkpoint's.
	Consistency *Consistency `json:"consistency,omitempty"`
	// EvidenceEnds is the first entry not used as evidence when the
	// journal does not verify: the first bad entry, or the entry after the
	// last good checkpoint when a checkpoint's root shows an earlier edit.
	EvidenceEnds *uint64 `json:"evidence_ends,omitempty"`
	// Breaks are dyad.journal.break entries: starts on a journal that did
	// not verify.
	Breaks []uint64 `json:"breaks"`
}

// Checkpoint is a signed checkpoint from the journal.
type Checkpoint struct {
	Seq  uint64    `json:"seq"` // the checkpoint entry's own position
	Size int64     `json:"size"`
	Root string    `json:"root_hash"` // base64
	Time time.Time `json:"time"`
	Note string    `json:"signed_note"` // C2SP tlog-checkpoint text and signature
}

// Consistency is a Merkle consistency proof between two checkpoints.
type Consistency struct {
	From  Checkpoint `json:"from"`
	Proof []string   `json:"proof"` // base64 hashes (tlog.TreeProof)
}

// Citation is one journal entry the report cites, with its inclusion proof.
type Citation struct {
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
	Event string    `json:"event"`
	Entry string    `json:"entry"` // the exact journal line: its SHA-256 is the Merkle leaf's data
	// Proof is the inclusion proof (tlog.RecordProof, base64 hashes)
	// against Integrity.Checkpoint; empty with ProofNote when the entry is
	// newer than the last checkpoint.
	Proof     []string `json:"proof,omitempty"`
	ProofNote string   `json:"proof_note,omitempty"`
}

// Status is a row's verdict.
type Status string

// Statuses. OWASP rows are mitigated, partly or not covered; DORA rows are
// evidenced, partly or outside the daemon's evidence.
const (
	Mitigated  Status = "mitigated"
	Evidenced  Status = "evidenced"
	Partly     Status = "partly"
	NotCovered Status = "not_covered"
	Outside    Status = "outside_evidence"
)

// Label is the status as a reader sees it.
func (s Status) Label() string {
	switch s {
	case NotCovered:
		return "not covered by a network tunnel"
	case Outside:
		return "outside dyad's evidence"
	}
	return string(s)
}

// Section is one framework's rows.
type Section struct {
	Framework string `json:"framework"`
	Title     string `json:"title"`
	Source    string `json:"source"` // the text the rows cite
	Rows      []Row  `json:"rows"`
}

// Row is one requirement: what it asks (paraphrased), what dyad does, the
// verdict, and the evidence.
type Row struct {
	ID     string `json:"id"`     // "API2:2023", "DORA Art. 9(2)-(4)"
	Title  string `json:"title"`  // the requirement, paraphrased
	Status Status `json:"status"` //
	// Mode says what the row's evidence shows: prevention (the control
	// refuses), detection (it sees and records), or both; empty where a
	// row makes no such claim.
	Mode      string   `json:"mode,omitempty"`
	Control   string   `json:"control"`   // the control in effect, from the configuration
	Why       string   `json:"why"`       // why this status
	Evidence  []Fact   `json:"evidence"`  // runtime figures from the journal
	Outside   string   `json:"outside"`   // what the daemon cannot see or do for it
	Citations []uint64 `json:"citations"` // cited entries (Report.Citations)
	// EvidenceStops says where this row's evidence stops when the journal
	// does not verify or records a break; such a row is never evidenced
	// or mitigated.
	EvidenceStops string `json:"evidence_stops,omitempty"`
}

// Fact is one figure of evidence.
type Fact struct {
	Label string `json:"label"`
	Value string `json:"value"`
}

// ErrNotVerified is returned, with a complete report, when the journal
// does not verify: the report's header says where it failed and its
// evidence stops before the bad entry.
var ErrNotVerified = errors.New("the audit journal does not verify")

// Build reads the journal, verifies it, and builds the report. When the
// journal does not verify it returns the report and ErrNotVerified.
func Build(o Options) (*Report, error) {
	o.setDefaults()
	if o.To.Before(o.From) {
		return nil, fmt.Errorf("report: period ends (%s) before it starts (%s)", o.To.Format(time.RFC3339), o.From.Format(time.RFC3339))
	}
	for _, f := range o.Frameworks {
		if f != DORA && f != OWASP {
			return nil, fmt.Errorf("report: unknown framework %q (want %s or %s)", f, DORA, OWASP)
		}
	}
	s := newScan(&o)
	res, err := journal.Verify(o.Journal, journal.VerifyOptions{Verifier: o.Verifier, Each: s.entry})
	if err != nil {
		return nil, fmt.Errorf("report: reading the journal: %w", err)
	}
	if cut := evidenceCut(o.Journal, res); cut != noCut {
		if cut < res.Bad.Seq {
			// Entries since the last good checkpoint were passed on before
			// the checkpoint showed one of them edited: read again without
			// them, so no suspect entry is counted or quoted.
			s = newScan(&o)
			s.cut = cut
			if res, err = journal.Verify(o.Journal, journal.VerifyOptions{Verifier: o.Verifier, Each: s.entry}); err != nil {
				return nil, fmt.Errorf("report: reading the journal: %w", err)
			}
		}
		s.cut = cut
	}
	s.finish()
	r := &Report{
		Schema:     Schema,
		Generated:  o.Now,
		Generator:  o.Generator,
		Frameworks: o.Frameworks,
		Daemon:     s.daemon(o.Daemon),
		Controls:   o.Controls,
		Period:     s.period(),
		Journal:    s.integrity(res),
		Evidence:   s.evidence(),
	}
	r.Evidence.Timeline = s.timeline(r.Period.From, r.Period.To)
	if r.Controls.Peers == nil {
		r.Controls.Peers = []Peer{}
	}
	r.Journal.VerifierKey = verifierKey(o.Verifier)
	b := builder{r: r, s: s}
	for _, f := range o.Frameworks {
		switch f {
		case OWASP:
			r.Sections = append(r.Sections, b.owasp())
		case DORA:
			r.Sections = append(r.Sections, b.dora())
		}
	}
	b.stops(res)
	if err := b.cite(o.Journal); err != nil {
		return nil, err
	}
	if !res.OK() {
		return r, ErrNotVerified
	}
	return r, nil
}

// evidenceCut is the first entry that is not evidence: noCut when the
// journal verifies; else the first bad entry or, when that is a
// checkpoint (whose root or signature shows that something since the last
// good checkpoint was changed, even if the chain was rebuilt), the entry
// after the last good checkpoint. THREATS P10, tested by
// TestReportTamperedEvidence.
func evidenceCut(dir string, res *journal.Result) uint64 {
	if res.OK() {
		return noCut
	}
	cut := res.Bad.Seq
	if isCheckpointLine(dir, res.Bad) {
		cut = 0
		if res.Checkpoints > 0 {
			cut = res.Covered + 1 // the good checkpoint entry stands at seq Covered
		}
	}
	return min(cut, res.Bad.Seq)
}

// isCheckpointLine says whether the bad entry's line is a checkpoint.
func isCheckpointLine(dir string, p *journal.Problem) bool {
	if p.File == "" || p.Line < 1 {
		return false
	}
	f, err := os.Open(filepath.Join(dir, p.File))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		if n == p.Line {
			e, err := journal.Decode(sc.Bytes())
			return err == nil && e.Name == journal.CheckpointEvent
		}
	}
	return false
}

// stops marks every row of a report whose journal does not verify, or
// records a break, with where its evidence stops; no such row is
// evidenced or mitigated. THREATS P10, tested by TestReportTamperedEvidence
// and TestReportTamperedInChromium.
func (b *builder) stops(res *journal.Result) {
	var msg string
	switch in := &b.r.Journal; {
	case in.EvidenceEnds != nil && *in.EvidenceEnds < res.Bad.Seq:
		msg = fmt.Sprintf("evidence stops before entry #%d: entry #%d does not verify (%s), and the entries since the last good signed checkpoint cannot be told apart from an edit; nothing from entry #%d on is counted or cited",
			*in.EvidenceEnds, res.Bad.Seq, res.Bad.Reason, *in.EvidenceEnds)
	case in.EvidenceEnds != nil:
		msg = fmt.Sprintf("evidence stops before entry #%d, the first entry that does not verify (%s); nothing from entry #%d on is counted or cited",
			*in.EvidenceEnds, res.Bad.Reason, *in.EvidenceEnds)
	case len(in.Breaks) > 0:
		msg = fmt.Sprintf("the journal records a break at entry #%d: the journal before it did not verify when the daemon started, so its evidence is not established", in.Breaks[0])
	default:
		return
	}
	for i := range b.r.Sections {
		for j := range b.r.Sections[i].Rows {
			row := &b.r.Sections[i].Rows[j]
			row.EvidenceStops = msg
			if row.Status == Evidenced || row.Status == Mitigated {
				row.Status = Partly
				row.Why = "the control is configured, but " + msg + ". " + row.Why
			}
		}
	}
}

// verifierKey is the note verifier key string, when the verifier can say.
func verifierKey(v note.Verifier) string {
	if k, ok := v.(interface{ Key() string }); ok {
		return k.Key()
	}
	return v.Name() + "+" + fmt.Sprintf("%08x", v.KeyHash())
}

// cite fills Report.Citations with every entry the rows cite and proves
// each one that the last signed checkpoint covers.
func (b *builder) cite(dir string) error {
	seqs := map[uint64]bool{}
	for _, sec := range b.r.Sections {
		for _, row := range sec.Rows {
			for _, n := range row.Citations {
				seqs[n] = true
			}
		}
	}
	for _, inc := range b.r.Evidence.Incidents {
		for _, n := range inc.Citations {
			seqs[n] = true
		}
	}
	cp := b.r.Journal.Checkpoint
	var leaves []int64
	for n := range seqs {
		if cp != nil && int64(n) < cp.Size {
			leaves = append(leaves, int64(n))
		}
	}
	slices.Sort(leaves)
	var olds []int64
	if c := b.r.Journal.Consistency; c != nil {
		olds = append(olds, c.From.Size)
	}
	var proofs *journal.Proofs
	if cp != nil && (len(leaves) > 0 || len(olds) > 0) {
		var err error
		if proofs, err = journal.Prove(dir, cp.Size, leaves, olds); err != nil {
			return fmt.Errorf("report: proofs: %w", err)
		}
		if c := b.r.Journal.Consistency; c != nil {
			c.Proof = hashes(proofs.Trees[c.From.Size])
		}
	}
	b.r.Citations = []Citation{}
	for _, n := range slices.Sorted(maps.Keys(seqs)) {
		e := b.s.cited[n]
		c := Citation{Seq: n, Time: e.time, Event: e.name, Entry: e.line}
		if proofs != nil && cp != nil && int64(n) < cp.Size {
			c.Proof = hashes(proofs.Records[int64(n)])
			if c.Proof == nil {
				c.Proof = []string{} // a one-entry tree: the leaf is the root
			}
		} else {
			c.ProofNote = "newer than the last signed checkpoint: chained, not yet signed"
		}
		b.r.Citations = append(b.r.Citations, c)
	}
	return nil
}

func hashes[H ~[32]byte](hs []H) []string {
	if hs == nil {
		return nil
	}
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = base64.StdEncoding.EncodeToString(h[:])
	}
	return out
}

// FIPSLine is the FIPS 140-3 row of the report's header: the mode, the
// module version and whether it is a certified snapshot (a warning when
// not), and whether the configuration requires the mode.
func (d Daemon) FIPSLine() string {
	var b strings.Builder
	switch {
	case !d.FIPS:
		b.WriteString("no")
	case d.FIPSModule == "":
		b.WriteString("yes; module version not journalled")
	case d.FIPSCertified:
		fmt.Fprintf(&b, "yes, Go Cryptographic Module %s (certified snapshot)", d.FIPSModule)
	default:
		fmt.Fprintf(&b, "yes, Go Cryptographic Module %s; WARNING: not a certified snapshot", d.FIPSModule)
	}
	if d.FIPSRequired {
		b.WriteString("; required by the configuration (fips: true)")
	}
	return b.String()
}

// PostQuantumLine says whether classical key exchange is refused.
func (d Daemon) PostQuantumLine() string {
	if d.RequirePostQuantum {
		return "required: handshakes without a hybrid ML-KEM group are refused (tls.require_post_quantum)"
	}
	return "preferred; a partner without ML-KEM may use a classical group (tls.require_post_quantum is off)"
}
