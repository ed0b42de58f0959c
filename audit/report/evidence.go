package report

import "time"

// Evidence is what the journal shows for the period.
type Evidence struct {
	EventCounts map[string]int `json:"event_counts"` // journalled events by name
	// Suppressed counts events the rate limiter counted but did not
	// journal one by one (from dyad.audit.suppressed), by name.
	Suppressed map[string]int  `json:"suppressed"`
	Hourly     []Bucket        `json:"hourly"`    // non-empty hours, in order
	Timeline   Timeline        `json:"timeline"`  // the chart's buckets
	Uptime     Uptime          `json:"uptime"`    // the daemon's life: running, cleanly stopped, unknown
	Tunnels    []PeerActivity  `json:"tunnels"`   // one per peer seen or configured
	Services   []ServiceUse    `json:"services"`  // one per service, peer and direction
	Unused     []string        `json:"unused"`    // exported services no partner used in the period
	Refusals   Refusals        `json:"refusals"`  //
	Keys       Keys            `json:"keys"`      //
	Configs    []ConfigChange  `json:"configs"`   // configuration events in the period
	Lifecycle  []LifecycleStep `json:"lifecycle"` // daemon starts and stops in the period
	AuditPath  AuditPath       `json:"audit_path"`
	TLS        []Count         `json:"tls"` // tunnels by TLS group and cipher
	Incidents  []Incident      `json:"incidents"`
	// IncidentsOmitted counts candidates past the first 500.
	IncidentsOmitted int           `json:"incidents_omitted"`
	Register         []RegisterRow `json:"register"`
	API              APIEvidence   `json:"api"`
}

// APIEvidence is what the journal shows of the API guards and response
// checks.
type APIEvidence struct {
	// SpecsInForce are the contracts the last configuration event before
	// the period's end named (dyad.api.spec_sha256: service=SHA-256 and
	// listen→peer/service=SHA-256).
	SpecsInForce []string `json:"specs_in_force"`
	// Denied counts dyad.api.denied by reason (not_allowed, no_route,
	// rate_limited, invalid_body, …).
	Denied map[string]int `json:"denied"`
	// Inventories counts dyad.api.inventory events; Shadow and Deprecated
	// are from the last one of each peer and service in the period (the
	// inventory is cumulative since the daemon started).
	Inventories int      `json:"inventories"`
	Operations  []string `json:"operations"`
	Shadow      []string `json:"shadow"`
	Deprecated  []string `json:"deprecated_called"`
	// ResponseInvalid counts dyad.api.response_invalid by reason;
	// ResponseBlocked those replaced by a 502.
	ResponseInvalid map[string]int `json:"response_invalid"`
	ResponseBlocked int            `json:"response_blocked"`
}

// Event kinds of the timeline.
const (
	KindStreams   = "streams"   // streams opened
	KindRefusals  = "refusals"  // handshakes refused, policy denials, rate limits
	KindIntegrity = "integrity" // records rejected, QUIC packets dropped
	KindTunnels   = "tunnels"   // tunnels established and closed
	KindFailures  = "failures"  // failed streams, export and journal problems, rejected configs
)

// Kinds are the timeline's kinds, in display order.
var Kinds = []string{KindStreams, KindTunnels, KindRefusals, KindIntegrity, KindFailures}

// Timeline is the events chart's data: buckets of one size, chosen for
// the period (a 5-minute period gets 1-second buckets, a month 2-hour
// ones), non-empty ones only.
type Timeline struct {
	BucketSeconds float64   `json:"bucket_seconds"`
	Start         time.Time `json:"start"` // the first bucket's start
	Buckets       []Bucket  `json:"buckets"`
}

// Bucket counts one hour's (or one timeline bucket's) events by kind.
type Bucket struct {
	Start  time.Time      `json:"start"`
	Counts map[string]int `json:"counts"`
}

// Count is a labelled number.
type Count struct {
	Key   string `json:"key"`
	Count int64  `json:"count"`
}

// PeerActivity is one partner link's tunnel record.
type PeerActivity struct {
	Peer        string         `json:"peer"`
	Established int            `json:"established"`
	Closed      map[string]int `json:"closed"`       // by close reason
	UpSeconds   float64        `json:"up_seconds"`   // to the last evidence, never across a gap
	DownSeconds float64        `json:"down_seconds"` // outages: down after having been up, while the daemon ran
	// UnknownSeconds is time the daemon was not provably running
	// (Uptime.Gaps): neither up nor down.
	UnknownSeconds float64 `json:"unknown_seconds"`
	Outages        int     `json:"outages"`
	// BytesSent and BytesReceived sum the streams with this partner that
	// ended in the period (stream.closed), in both directions: the sums of
	// the Services rows of this partner. Streams counts the streams opened
	// in the period (stream.opened), as Services does.
	BytesSent     int64      `json:"bytes_sent"`
	BytesReceived int64      `json:"bytes_received"`
	Streams       int64      `json:"streams"`
	FirstSeen     *time.Time `json:"first_seen,omitempty"` // first tunnel in the journal
	LastSeen      *time.Time `json:"last_seen,omitempty"`  // last tunnel event in the journal
	Fingerprints  []string   `json:"fingerprints"`         // keys the peer presented
	Addresses     []string   `json:"addresses"`            // where it connected from or was dialed at
	Intervals     []Interval `json:"intervals"`            // up, down and unknown, within the period
}

// Interval is a stretch of a tunnel's state.
type Interval struct {
	From  time.Time `json:"from"`
	To    time.Time `json:"to"`
	State string    `json:"state"` // up, down or unknown (a tunnel); running, stopped or unknown (the daemon)
	Cause string    `json:"cause,omitempty"`
}

// ServiceUse is one service's streams with one peer in one direction.
type ServiceUse struct {
	Service   string         `json:"service"`
	Peer      string         `json:"peer"`
	Direction string         `json:"direction"` // inbound: this site serves the peer; outbound: this site uses the peer's service
	Streams   int            `json:"streams"`   // opened
	Closed    map[string]int `json:"closed"`    // by close reason
	Failed    map[string]int `json:"failed"`    // by reason
	Denied    map[string]int `json:"denied"`    // by reason (inbound)
	ToPeer    int64          `json:"bytes_to_peer"`
	FromPeer  int64          `json:"bytes_from_peer"`
}

// Refusals are the work dyad refused.
type Refusals struct {
	Handshakes           int            `json:"handshakes"`            // unpaired handshakes journalled
	HandshakesSuppressed int            `json:"handshakes_suppressed"` // more, counted but not journalled one by one
	ByReason             map[string]int `json:"by_reason"`
	Sources              []Count        `json:"sources"` // top source addresses
	DistinctSources      int            `json:"distinct_sources"`
	Fingerprints         []Count        `json:"fingerprints"` // top presented keys
	DistinctFingerprints int            `json:"distinct_fingerprints"`
	Policy               []Count        `json:"policy"`      // "peer → service: reason"
	RateLimits           []Count        `json:"rate_limits"` // "peer/service: limit"
	Records              map[string]int `json:"records"`     // records rejected, by reason
	QUICDrops            map[string]int `json:"quic_drops"`  // packets dropped, by reason
}

// Keys are the key lifecycle evidence.
type Keys struct {
	Own              []KeySeen   `json:"own"`     // this daemon's identity keys, from daemon.started
	Changes          []KeyChange `json:"changes"` // pinned peer keys added, rotated, removed
	RecordKeyUpdates int         `json:"record_key_updates"`
	// SessionKeys counts tunnels established: each derived fresh TLS and
	// record keys (ephemeral X25519MLKEM768 exchange).
	SessionKeys int `json:"session_keys"`
	// Rotations are this daemon's identity rotations in the period
	// (dyad.identity.rotated), oldest first.
	Rotations []KeyChange `json:"rotations"`
	// Identity is the identity in use at the end of the period, and
	// IdentitySince when it began, as the journal tells: the last rotation
	// (dyad.identity.rotated, before the period too), else the creation time
	// a start recorded (dyad.identity.created); zero when the journal does
	// not say. IdentitySource names which.
	Identity       string    `json:"identity,omitempty"`
	IdentitySince  time.Time `json:"identity_since,omitzero"`
	IdentitySource string    `json:"identity_source,omitempty"`
	// Enrolments and Revocations count dyad.peer.enrolled and
	// dyad.peer.revoked in the period (each is also in Changes).
	Enrolments  int `json:"enrolments"`
	Revocations int `json:"revocations"`
}

// KeySeen is a key and when the journal shows it in use.
type KeySeen struct {
	Fingerprint string    `json:"fingerprint"`
	First       time.Time `json:"first"`
	Last        time.Time `json:"last"`
}

// KeyChange is a change of a pinned peer key in the configuration.
type KeyChange struct {
	Time   time.Time `json:"time"`
	Peer   string    `json:"peer"`
	Change string    `json:"change"` // pinned, rotated, removed; enrolled, revoked, rotated_by_announcement (control socket and tunnel)
	Old    string    `json:"old,omitempty"`
	New    string    `json:"new,omitempty"`
	Seq    uint64    `json:"seq"`
}

// ConfigChange is a configuration event.
type ConfigChange struct {
	Time   time.Time `json:"time"`
	Event  string    `json:"event"`
	SHA256 string    `json:"sha256,omitempty"`
	Error  string    `json:"error,omitempty"`
	Seq    uint64    `json:"seq"`
}

// LifecycleStep is a daemon start or stop.
type LifecycleStep struct {
	Time    time.Time `json:"time"`
	Event   string    `json:"event"`
	Detail  string    `json:"detail"`
	Seq     uint64    `json:"seq"`
	Unclean bool      `json:"unclean,omitempty"` // a start with no stop before it
}

// AuditPath is the export path's record.
type AuditPath struct {
	ExportFailures      int     `json:"export_failures"`
	ExportRecoveries    int     `json:"export_recoveries"`
	ExportDownSeconds   float64 `json:"export_down_seconds"`
	DroppedQueueFull    int64   `json:"dropped_queue_full"`
	DroppedExportFailed int64   `json:"dropped_export_failed"`
	JournalRecoveries   int     `json:"journal_recoveries"` // dyad.journal.recovered: a crash's tail repaired or adopted at start
	JournalBreaks       int     `json:"journal_breaks"`     // dyad.journal.break: started on a journal that did not verify
	Checkpoints         int     `json:"checkpoints"`        // signed in the period
}

// Incident is an ICT-related incident candidate for a person to classify
// under DORA Art. 18 and Delegated Regulation (EU) 2024/1772.
type Incident struct {
	ID        string      `json:"id"`
	Kind      string      `json:"kind"` // tunnel_outage, unclean_stop or attack_burst
	Start     time.Time   `json:"start"`
	End       time.Time   `json:"end"`
	Ongoing   bool        `json:"ongoing"`  // still going at the period's end
	Detected  time.Time   `json:"detected"` // when dyad journalled its first event
	Summary   string      `json:"summary"`
	Peers     []string    `json:"peers"`
	Services  []string    `json:"services"`
	Critical  bool        `json:"critical_or_important_function"`
	Criteria  []Criterion `json:"criteria"`
	Citations []uint64    `json:"citations"`
}

// Criterion is one classification criterion of Delegated Regulation (EU)
// 2024/1772 and what the journal says about it.
type Criterion struct {
	Article  string `json:"article"`
	Name     string `json:"name"`
	Evidence string `json:"evidence"`
	Outside  bool   `json:"outside_evidence"` // the daemon cannot see it
}

// RegisterRow is one partner link, as input to the register of
// information (DORA Art. 28(3)).
type RegisterRow struct {
	Peer        string     `json:"peer"`
	Fingerprint string     `json:"fingerprint"`
	Endpoint    string     `json:"endpoint"`
	Country     string     `json:"country"`
	Critical    bool       `json:"critical_or_important_function"`
	Exports     []string   `json:"services_exported_to"`   // our services it may use
	Imports     []string   `json:"services_imported_from"` // its services we forward to
	FirstSeen   *time.Time `json:"first_seen,omitempty"`
	LastSeen    *time.Time `json:"last_seen,omitempty"`
	Configured  bool       `json:"configured"` // in the configuration now
}
