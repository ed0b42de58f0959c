package audit

import (
	"fmt"

	"go.opentelemetry.io/otel/attribute"
)

// Event names. Each is documented, with its attributes and its OCSF and ECS
// mapping, in Catalog and in EVENTS.md (generated from Catalog).
const (
	DaemonStarted      = "dyad.daemon.started"
	DaemonStopped      = "dyad.daemon.stopped"
	ConfigLoaded       = "dyad.config.loaded"
	ConfigReloaded     = "dyad.config.reloaded"
	ConfigRejected     = "dyad.config.rejected"
	TunnelEstablished  = "dyad.tunnel.established"
	TunnelClosed       = "dyad.tunnel.closed"
	PeerAuthRefused    = "dyad.peer.auth_refused"
	StreamOpened       = "dyad.stream.opened"
	StreamClosed       = "dyad.stream.closed"
	StreamFailed       = "dyad.stream.failed"
	PolicyDenied       = "dyad.policy.denied"
	RateLimitExceeded  = "dyad.rate_limit.exceeded"
	RecordRejected     = "dyad.record.rejected"
	KeyUpdated         = "dyad.key.updated"
	PacketsDropped     = "dyad.quic.packets_dropped"
	JournalCheckpoint  = "dyad.journal.checkpoint"
	JournalRecovered   = "dyad.journal.recovered"
	JournalBreak       = "dyad.journal.break"
	JournalWriteFailed = "dyad.journal.write_failed"
	ExportDropped      = "dyad.audit.export_dropped"
	ExportFailed       = "dyad.audit.export_failed"
	ExportRecovered    = "dyad.audit.export_recovered"
	EventsSuppressed   = "dyad.audit.suppressed"
	TransportChanged   = "dyad.tunnel.transport_changed"
)

// Attribute keys. OpenTelemetry semantic-convention keys where one exists,
// dyad.* otherwise.
const (
	KeyPeerAddress    = "network.peer.address"
	KeyPeerPort       = "network.peer.port"
	KeyTransport      = "network.transport"
	KeyTransportFrom  = "dyad.tunnel.transport_from"
	KeyServerAddress  = "server.address"
	KeyServerPort     = "server.port"
	KeyClientAddress  = "client.address"
	KeyClientPort     = "client.port"
	KeyTLSVersion     = "tls.protocol.version"
	KeyTLSCipher      = "tls.cipher"
	KeyTLSCurve       = "tls.curve"
	KeyTLSNextProto   = "tls.next_protocol"
	KeyErrorType      = "error.type"
	KeyServiceVersion = "service.version"

	KeyPeer            = "dyad.peer"
	KeyPeerFingerprint = "dyad.peer.fingerprint"
	KeyFingerprint     = "dyad.identity.fingerprint"
	KeyRole            = "dyad.tunnel.role"
	KeyConnection      = "dyad.tunnel.connection"
	KeySlot            = "dyad.tunnel.slot"
	KeyDuration        = "dyad.duration"
	KeyBytesSent       = "dyad.bytes.sent"
	KeyBytesReceived   = "dyad.bytes.received"
	KeyStreams         = "dyad.streams"
	KeyCloseReason     = "dyad.close_reason"
	KeyReason          = "dyad.reason"
	KeyService         = "dyad.service"
	KeyDirection       = "dyad.direction"
	KeyStreamID        = "dyad.stream.id"
	KeyLimit           = "dyad.limit"
	KeyScope           = "dyad.limit.scope"
	KeyCount           = "dyad.count"
	KeyWindow          = "dyad.window"
	KeyEventName       = "dyad.event.name"
	KeyCodecSuite      = "dyad.codec.suite"
	KeyCodecDirection  = "dyad.codec.direction"
	KeyKeyGeneration   = "dyad.key.generation"
	KeyFIPS            = "dyad.fips"
	KeyConfigPath      = "dyad.config.path"
	KeyConfigSHA256    = "dyad.config.sha256"
	KeyPeers           = "dyad.config.peers"
	KeyServices        = "dyad.config.services"
	KeyForwards        = "dyad.config.forwards"
	KeyPeerKeys        = "dyad.config.peer_keys"
	KeyError           = "dyad.error"
	KeyProtocol        = "dyad.export.protocol"
	KeyQueueFull       = "dyad.export.dropped.queue_full"
	KeyExportFailed    = "dyad.export.dropped.export_failed"
	KeySeverity        = "dyad.severity"
	KeyOverflow        = "dyad.audit.overflow"
)

// Type is an attribute's value type as the catalogue states it.
type Type string

// Attribute value types.
const (
	String      Type = "string"
	Int         Type = "int"
	Float       Type = "double"
	Bool        Type = "boolean"
	StringSlice Type = "string[]"
)

func (t Type) matches(v attribute.Value) bool {
	switch t {
	case String:
		return v.Type() == attribute.STRING
	case Int:
		return v.Type() == attribute.INT64
	case Float:
		return v.Type() == attribute.FLOAT64
	case Bool:
		return v.Type() == attribute.BOOL
	case StringSlice:
		return v.Type() == attribute.STRINGSLICE
	}
	return false
}

// AttrSpec documents one attribute of an event.
type AttrSpec struct {
	Key      string
	Type     Type
	Optional bool // present only when it applies
	Doc      string
}

// OCSF maps an event to an OCSF class and activity.
type OCSF struct {
	ClassUID    int
	Class       string
	ActivityID  int
	Activity    string
	StatusID    int // 1 success, 2 failure, 0 unknown
	CategoryUID int
}

// ECS maps an event to the Elastic Common Schema event.* fields.
type ECS struct {
	Kind     string
	Category []string
	Type     []string
	Outcome  string
}

// Spec documents one event.
type Spec struct {
	Name      string
	Severity  Severity
	When      string // when it fires
	RateLimit bool   // bursts are limited; the rest are counted in dyad.audit.suppressed
	// Source lists the attributes that identify who caused a rate-limited
	// event, first present wins: each source has its own limit, so a noisy
	// one cannot use up another's. None (or none present) means one limit
	// for the event.
	Source []string
	Attrs  []AttrSpec
	OCSF   OCSF
	ECS    ECS
}

// Attribute specs shared by several events.
var (
	aPeer       = AttrSpec{KeyPeer, String, false, "configured name of the peer"}
	aPeerAddr   = AttrSpec{KeyPeerAddress, String, false, "peer's IP address"}
	aPeerPort   = AttrSpec{KeyPeerPort, Int, false, "peer's UDP port"}
	aTransport  = AttrSpec{KeyTransport, String, false, `"quic", or "tcp" on the TCP fallback (TLS 1.3 over TCP)`}
	aConnection = AttrSpec{KeyConnection, Int, true, "number of the connection within the daemon's run: /statusz lists it, and one peer holds several (tunnel.connections); absent from events written before this release"}
	aService    = AttrSpec{KeyService, String, false, "service name"}
	aDirection  = AttrSpec{KeyDirection, String, false, `"inbound" (this site serves the peer) or "outbound" (this site forwards to the peer)`}
	aStreamID   = AttrSpec{KeyStreamID, Int, false, "QUIC stream id within the tunnel"}
	aErrorType  = AttrSpec{KeyErrorType, String, true, "machine-readable error class"}
	aCountSince = AttrSpec{KeyWindow, Float, false, "seconds the counts cover"}
)

var (
	lifecycle = func(activity int, name string, status int) OCSF {
		return OCSF{6002, "Application Lifecycle", activity, name, status, 6}
	}
	entity = func(activity int, name string, status int) OCSF {
		return OCSF{3004, "Entity Management", activity, name, status, 3}
	}
	tunnelActivity = func(activity int, name string, status int) OCSF {
		return OCSF{4014, "Tunnel Activity", activity, name, status, 4}
	}
	network = func(activity int, name string, status int) OCSF {
		return OCSF{4001, "Network Activity", activity, name, status, 4}
	}
	finding = OCSF{2004, "Detection Finding", 1, "Create", 0, 2}
)

// Catalog is every event dyad emits.
var Catalog = []Spec{
	{
		Name: DaemonStarted, Severity: Info, When: "the daemon has loaded its configuration and identity and is listening",
		Attrs: []AttrSpec{
			{KeyServiceVersion, String, false, "dyad version"},
			{KeyFingerprint, String, false, "this daemon's identity fingerprint (SHA256:…)"},
			{KeyFIPS, Bool, false, "Go FIPS 140-3 mode is on"},
			{KeyCodecSuite, String, false, "record suite this daemon seals with"},
			{KeyTLSCurve, String, false, "preferred TLS key-exchange group"},
			{KeyServerAddress, String, false, "QUIC listen address"},
			{KeyServerPort, Int, false, "QUIC listen port (UDP)"},
		},
		OCSF: lifecycle(3, "Start", 1),
		ECS:  ECS{"event", []string{"process"}, []string{"start"}, "success"},
	},
	{
		Name: DaemonStopped, Severity: Info, When: "the daemon stops, after draining (SIGTERM) or on a fatal error",
		Attrs: []AttrSpec{
			{KeyReason, String, false, `"signal" or "error"`},
			{KeyDuration, Float, false, "seconds the daemon ran"},
			aErrorType,
		},
		OCSF: lifecycle(4, "Stop", 1),
		ECS:  ECS{"event", []string{"process"}, []string{"end"}, "success"},
	},
	{
		Name: ConfigLoaded, Severity: Info, When: "the configuration file is loaded at start",
		Attrs: []AttrSpec{
			{KeyConfigPath, String, false, "configuration file"},
			{KeyConfigSHA256, String, false, "SHA-256 of the file, hex"},
			{KeyPeers, StringSlice, false, "peer names"},
			{KeyServices, StringSlice, false, "exported services"},
			{KeyForwards, StringSlice, false, "forwards as listen→peer/service"},
			{KeyPeerKeys, StringSlice, false, "pinned peer keys as name=fingerprint: the key lifecycle evidence (rotation, revocation)"},
		},
		OCSF: entity(2, "Read", 1),
		ECS:  ECS{"event", []string{"configuration"}, []string{"info"}, "success"},
	},
	{
		Name: ConfigReloaded, Severity: Info, When: "SIGHUP applied a changed configuration",
		Attrs: []AttrSpec{
			{KeyConfigPath, String, false, "configuration file"},
			{KeyConfigSHA256, String, false, "SHA-256 of the new file, hex"},
			{KeyPeers, StringSlice, false, "peer names"},
			{KeyServices, StringSlice, false, "exported services"},
			{KeyForwards, StringSlice, false, "forwards as listen→peer/service"},
			{KeyPeerKeys, StringSlice, false, "pinned peer keys as name=fingerprint: the key lifecycle evidence (rotation, revocation)"},
		},
		OCSF: entity(3, "Update", 1),
		ECS:  ECS{"event", []string{"configuration"}, []string{"change"}, "success"},
	},
	{
		Name: ConfigRejected, Severity: Warn, When: "SIGHUP found an invalid configuration; the running one stays in force",
		Attrs: []AttrSpec{
			{KeyConfigPath, String, false, "configuration file"},
			{KeyError, String, false, "what is wrong, with file:line and field (never a secret)"},
			{KeyErrorType, String, false, `"invalid_config" or "restart_required"`},
		},
		OCSF: entity(3, "Update", 2),
		ECS:  ECS{"event", []string{"configuration"}, []string{"change"}, "failure"},
	},
	{
		Name: TunnelEstablished, Severity: Info, When: "a QUIC connection (or TLS-over-TCP connection of the TCP fallback) to a paired peer completed mutual authentication",
		Attrs: []AttrSpec{
			aPeer, {KeyPeerFingerprint, String, false, "peer's identity fingerprint"}, aPeerAddr, aPeerPort, aTransport,
			{KeyRole, String, false, `"dialer" or "listener"`},
			aConnection,
			{KeySlot, Int, true, "the dialer's connection slot, 0 to connections-1 (-1: accepted, or dialed outside the slots); absent from events written before this release"},
			{KeyTLSVersion, String, false, `"1.3"`},
			{KeyTLSCipher, String, false, "TLS cipher suite, e.g. TLS_AES_128_GCM_SHA256"},
			{KeyTLSCurve, String, false, "key-exchange group, e.g. X25519MLKEM768"},
			{KeyTLSNextProto, String, false, `ALPN: "dyad/2", or "dyad/1" with a previous-release peer (one connection per pair)`},
			{KeyDuration, Float, false, "handshake seconds"},
		},
		OCSF: tunnelActivity(1, "Open", 1),
		ECS:  ECS{"event", []string{"network", "session"}, []string{"start", "connection"}, "success"},
	},
	{
		Name: TunnelClosed, Severity: Info, When: "a tunnel connection ended",
		Attrs: []AttrSpec{
			aPeer, aPeerAddr, aPeerPort, aTransport, aConnection,
			{KeyDuration, Float, false, "seconds the tunnel was up"},
			{KeyBytesSent, Int, false, "plaintext bytes this side sent on the tunnel's streams"},
			{KeyBytesReceived, Int, false, "plaintext bytes this side received"},
			{KeyStreams, Int, false, "streams carried"},
			{KeyCloseReason, String, false, "why: shutdown, replaced (this connection was retired: a dyad/1 peer's newer connection took over, or both sides dialed and the preferred side's connection holds the slot; it closed after its last stream or a 30 s grace), peer_removed and key_changed (a reload revoked the key it authenticated with), endpoint_changed, idle_timeout, peer_closed, stateless_reset, error"},
			aErrorType,
		},
		OCSF: tunnelActivity(2, "Close", 1),
		ECS:  ECS{"event", []string{"network", "session"}, []string{"end", "connection"}, "success"},
	},
	{
		Name: TransportChanged, Severity: Warn,
		When: "a peer with transport: auto moved from QUIC to the TCP fallback (a QUIC dial got no answer within fallback_after) or back (a background QUIC probe completed); once per switch",
		Attrs: []AttrSpec{
			aPeer,
			{KeyTransport, String, false, `the transport new connections use now: "quic" or "tcp"`},
			{KeyTransportFrom, String, false, `the transport before the switch`},
			{KeyReason, String, false, "quic_no_answer (to tcp) or quic_answered (back to quic)"},
		},
		OCSF: tunnelActivity(3, "Update", 1),
		ECS:  ECS{"event", []string{"network"}, []string{"change"}, "success"},
	},
	{
		Name: PeerAuthRefused, Severity: Warn, RateLimit: true, Source: []string{KeyPeerAddress},
		When: "a QUIC or TLS-over-TCP handshake presented a key that is not a configured peer (or no key); refused before any stream",
		Attrs: []AttrSpec{
			{KeyPeerFingerprint, String, false, `presented fingerprint, or "none"`},
			aPeerAddr, aPeerPort, aTransport,
			{KeyDirection, String, false, `"inbound" (a client dialed us) or "outbound" (a server we dialed)`},
			{KeyReason, String, false, "unknown_key (inbound, on fresh and resumed handshakes), not_paired (inbound: the key was unpinned while its handshake ran), pinned_key_mismatch (outbound: the server is not the peer we dialed), no_certificate, bad_certificate"},
		},
		OCSF: OCSF{3002, "Authentication", 1, "Logon", 2, 3},
		ECS:  ECS{"event", []string{"authentication", "network"}, []string{"start", "denied"}, "failure"},
	},
	{
		Name: StreamOpened, Severity: Info, When: "a forwarded connection got its stream: outbound when the local client is carried to the peer, inbound when the upstream is connected",
		Attrs: []AttrSpec{
			aPeer, aService, aDirection, aStreamID,
			{KeyClientAddress, String, true, "local client's address (outbound)"},
			{KeyClientPort, Int, true, "local client's port (outbound)"},
			{KeyServerAddress, String, true, "upstream host (inbound)"},
			{KeyServerPort, Int, true, "upstream port (inbound)"},
		},
		OCSF: network(1, "Open", 1),
		ECS:  ECS{"event", []string{"network"}, []string{"start", "connection"}, "success"},
	},
	{
		Name: StreamClosed, Severity: Info, When: "a stream that was opened ended",
		Attrs: []AttrSpec{
			aPeer, aService, aDirection, aStreamID,
			{KeyBytesSent, Int, false, "plaintext bytes from the local socket into the tunnel"},
			{KeyBytesReceived, Int, false, "plaintext bytes from the tunnel to the local socket"},
			{KeyDuration, Float, false, "seconds the stream was open"},
			{KeyCloseReason, String, false, "eof (both halves closed cleanly), reset, truncated, rejected_record, idle_timeout, max_lifetime (a limit ended it), error"},
			aErrorType,
		},
		OCSF: network(2, "Close", 1),
		ECS:  ECS{"event", []string{"network"}, []string{"end", "connection"}, "success"},
	},
	{
		Name: StreamFailed, Severity: Warn, RateLimit: true, Source: []string{KeyPeer}, When: "a forwarded connection could not be carried: no tunnel, upstream unreachable, the peer refused it, or the audit journal cannot be written (on_failure: refuse)",
		Attrs: []AttrSpec{
			aPeer, aService, aDirection,
			{KeyReason, String, false, "no_tunnel, upstream_unreachable, refused_by_peer, open_failed, audit_unavailable (the journal cannot be written and audit.journal.on_failure is refuse); inbound: connection_replaced (the peer opened a stream on a connection a newer one replaced), key_not_pinned (the connection's key is no longer pinned)"},
			aErrorType,
		},
		OCSF: network(4, "Fail", 2),
		ECS:  ECS{"event", []string{"network"}, []string{"connection", "error"}, "failure"},
	},
	{
		Name: PolicyDenied, Severity: Warn, RateLimit: true, Source: []string{KeyPeer}, When: "a paired peer asked for a service it is not allowed, or one that does not exist",
		Attrs: []AttrSpec{aPeer, aService, aStreamID, {KeyReason, String, false, "not_allowed, unknown_service"}},
		OCSF:  network(5, "Refuse", 2),
		ECS:   ECS{"event", []string{"network", "iam"}, []string{"denied", "connection"}, "failure"},
	},
	{
		Name: RateLimitExceeded, Severity: Warn, RateLimit: true, Source: []string{KeyPeer, KeyPeerAddress},
		When: "a limit refused or slowed work: a peer's or service's stream rate or concurrency (the stream is refused), its bandwidth (the stream is slowed; once per stream), a forward listener's connection cap or source ranges, the handshake rate of a source address, the half-open or total tunnel cap",
		Attrs: []AttrSpec{
			{KeyPeer, String, true, "peer, when the limit is a peer's or the work came from one"},
			{KeyService, String, true, "service the stream asked for (absent when a peer limit refused the stream on arrival, before its request was read)"},
			{KeyLimit, String, false, "streams_per_second, max_streams, bytes_per_second, request_timeout (a stream sent no request in time), max_connections, allow_from, handshakes_per_second, max_half_open, half_open_per_source, half_open_per_prefix, max_tunnels, max_connections_per_peer (a peer key's connection over the cap, refused after its handshake)"},
			{KeyScope, String, false, "whose limit: peer, service, forward or listener"},
			{KeyPeerAddress, String, true, "source address (handshake and forward limits)"},
		},
		OCSF: network(5, "Refuse", 2),
		ECS:  ECS{"event", []string{"network"}, []string{"denied"}, "failure"},
	},
	{
		Name: RecordRejected, Severity: Warn, RateLimit: true, Source: []string{KeyPeer},
		When: "the record layer dropped a record: forged, replayed, reordered, truncated, oversized or foreign, a key update that was not due, or data after the close record; the stream is reset",
		Attrs: []AttrSpec{
			aPeer, {KeyService, String, true, "service, when the stream's request was read"}, aStreamID,
			{KeyReason, String, false, "authentication, truncation, oversize, version, record_type, malformed, key_exhausted, key_update_not_due (the peer sent a key update its usage limits did not call for: codec/FORMAT.md section 5), trailing_data (bytes after the close record)"},
		},
		OCSF: finding,
		ECS:  ECS{"alert", []string{"intrusion_detection", "network"}, []string{"denied"}, "failure"},
	},
	{
		Name: KeyUpdated, Severity: Info, RateLimit: true, Source: []string{KeyPeer},
		When:  "a stream direction moved to its next record key (before the AEAD usage limit; a key update that is not due is refused and audited as dyad.record.rejected instead)",
		Attrs: []AttrSpec{aPeer, aStreamID, {KeyCodecDirection, String, false, `"send" or "receive"`}, {KeyKeyGeneration, Int, false, "key updates so far in this direction"}},
		OCSF:  OCSF{3004, "Entity Management", 3, "Update", 1, 3},
		ECS:   ECS{"event", []string{"configuration"}, []string{"change"}, "success"},
	},
	{
		Name: PacketsDropped, Severity: Warn,
		When:  "every minute in which quic-go dropped datagrams below the tunnels (unknown connection id, unparsable, unsupported version; with tunnel.count_connection_drops also undecryptable packets of established tunnels), one event per reason",
		Attrs: []AttrSpec{{KeyReason, String, false, "the dark listener's (dark_unknown_connection_id, dark_ended_connection_id, dark_first_flight_without_mac, dark_first_flight_replayed, dark_first_flight_source_quota, dark_first_flight_cache_full: codec/FORMAT.md section 9) or quic-go's drop trigger, e.g. payload_decrypt_error, unknown_connection_id"}, {KeyCount, Int, false, "packets"}, aCountSince},
		OCSF:  network(6, "Traffic", 2),
		ECS:   ECS{"event", []string{"network"}, []string{"denied"}, "failure"},
	},
	{
		Name: JournalCheckpoint, Severity: Info, When: "the journal signed a checkpoint: when it is created (genesis, size 0), every 1000 entries, every minute even when nothing happens (the evidence that the daemon ran), after a recovery or break at start, at rotation and at stop",
		Attrs: []AttrSpec{
			{"dyad.journal.origin", String, false, "checkpoint origin, dyad/<site>"},
			{"dyad.journal.size", Int, false, "entries covered"},
			{"dyad.journal.root_hash", String, false, "Merkle root, base64"},
			{"dyad.journal.checkpoint", String, false, "the signed checkpoint note (C2SP tlog-checkpoint): keep it as an external anchor for dyad audit verify --anchor"},
		},
		OCSF: lifecycle(99, "Other", 1),
		ECS:  ECS{"event", []string{"file"}, []string{"info"}, "success"},
	},
	{
		Name: JournalRecovered, Severity: Warn,
		When: "at start, the journal did not end with the checkpoint a clean stop writes (a crash: kill -9, power cut, OOM): the entries after its last checkpoint chain correctly and fit in one checkpoint interval, so they are adopted, and a partial last line is cut; a checkpoint signing them follows at once",
		Attrs: []AttrSpec{
			{"dyad.journal.file", String, false, "journal file (the one cut, if any)"},
			{"dyad.journal.discarded_bytes", Int, false, "bytes of a partial last line cut off; 0 if none"},
			{"dyad.journal.recovered_entries", Int, false, "entries after the last checkpoint, adopted unsigned: a local attacker could have changed them (see README)"},
			{"dyad.journal.last_entry_time", String, false, "time of the last entry found (RFC 3339): the last evidence that the daemon ran before the crash"},
		},
		OCSF: lifecycle(99, "Other", 2),
		ECS:  ECS{"event", []string{"file"}, []string{"change"}, "failure"},
	},
	{
		Name: JournalBreak, Severity: Error,
		When: "at start, the journal did not verify and the operator chose to go on (dyad run --accept-broken-journal or audit.journal.on_broken: continue); the daemon continues after the entries as they are, and dyad audit verify names the bad entry for ever after",
		Attrs: []AttrSpec{
			{"dyad.journal.file", String, false, "file of the first bad entry"},
			{"dyad.journal.line", Int, false, "its line in that file, from 1 (0: the file itself)"},
			{"dyad.journal.bad_seq", Int, false, "the first bad entry's position"},
			{"dyad.journal.reason", String, false, "what was wrong with it"},
			{"dyad.journal.unverified_entries", Int, false, "entries from the bad one to the break, none of them evidence"},
			{"dyad.journal.discarded_bytes", Int, false, "bytes of a partial last line cut off; 0 if none"},
		},
		OCSF: lifecycle(99, "Other", 2),
		ECS:  ECS{"event", []string{"file"}, []string{"change"}, "failure"},
	},
	{
		Name: JournalWriteFailed, Severity: Error,
		When: "the journal is written again after a write or fsync failed (disk full, I/O error); while it failed, events went to OTLP and the log only, and with audit.journal.on_failure: refuse no new stream was admitted",
		Attrs: []AttrSpec{
			{"dyad.journal.failed_since", String, false, "when the first write failed (RFC 3339)"},
			{"dyad.journal.lost_events", Int, false, "events the journal could not take meanwhile (also counted by dyad.audit.journal.errors)"},
			{"error.message", String, false, "the write error"},
		},
		OCSF: lifecycle(99, "Other", 2),
		ECS:  ECS{"event", []string{"file"}, []string{"change"}, "failure"},
	},
	{
		Name: ExportDropped, Severity: Warn, When: "every minute in which the OTLP path could not deliver events; the journal still has them",
		Attrs: []AttrSpec{
			{KeyQueueFull, Int, false, "events dropped because the export queue was full"},
			{KeyExportFailed, Int, false, "events dropped after the exporter gave up retrying"},
			aCountSince,
		},
		OCSF: lifecycle(99, "Other", 2),
		ECS:  ECS{"event", []string{"host"}, []string{"error"}, "failure"},
	},
	{
		Name: ExportFailed, Severity: Error, When: "an OTLP export failed after retries: the logging path is down",
		Attrs: []AttrSpec{{KeyProtocol, String, false, `"grpc" or "http/protobuf"`}, {KeyServerAddress, String, false, "collector endpoint"}, {KeyError, String, false, "exporter's error"}},
		OCSF:  lifecycle(99, "Other", 2),
		ECS:   ECS{"event", []string{"host"}, []string{"error"}, "failure"},
	},
	{
		Name: ExportRecovered, Severity: Info, When: "the first OTLP export that succeeded after a failure",
		Attrs: []AttrSpec{{KeyProtocol, String, false, `"grpc" or "http/protobuf"`}, {KeyServerAddress, String, false, "collector endpoint"}, {KeyDuration, Float, false, "seconds the path was down"}},
		OCSF:  lifecycle(99, "Other", 1),
		ECS:   ECS{"event", []string{"host"}, []string{"info"}, "success"},
	},
	{
		Name: EventsSuppressed, Severity: Warn, When: "every minute in which a rate-limited event fired more than its burst from one source; one event per name and source",
		Attrs: []AttrSpec{
			{KeyEventName, String, false, "the suppressed event's name"}, {KeyCount, Int, false, "events counted but not written"}, aCountSince,
			{KeyPeer, String, true, "the peer whose events were suppressed, for an event limited per peer"},
			{KeyPeerAddress, String, true, "the source address whose events were suppressed, for an event limited per address"},
			{KeyOverflow, Bool, true, "true: the counts of sources beyond the 1024 tracked per event and kind of source, which share one limit"},
		},
		OCSF: lifecycle(99, "Other", 0),
		ECS:  ECS{"event", []string{"host"}, []string{"info"}, "unknown"},
	},
}

// SpecOf returns the catalogue entry of an event name.
func SpecOf(name string) (*Spec, bool) {
	s, ok := specs[name]
	return s, ok
}

var specs = func() map[string]*Spec {
	m := make(map[string]*Spec, len(Catalog))
	for i := range Catalog {
		m[Catalog[i].Name] = &Catalog[i]
	}
	return m
}()

// Check reports how attrs differ from the spec: an undeclared key, a value
// of the wrong type, a duplicate, or a required attribute missing.
func (s *Spec) Check(attrs []attribute.KeyValue) error {
	seen := map[string]bool{}
	for _, kv := range attrs {
		k := string(kv.Key)
		if seen[k] {
			return fmt.Errorf("%s: attribute %s twice", s.Name, k)
		}
		seen[k] = true
		a := s.attr(k)
		if a == nil {
			return fmt.Errorf("%s: attribute %s is not in the catalogue", s.Name, k)
		}
		if !a.Type.matches(kv.Value) {
			return fmt.Errorf("%s: attribute %s is %s, the catalogue says %s", s.Name, k, kv.Value.Type(), a.Type)
		}
	}
	for _, a := range s.Attrs {
		if !a.Optional && !seen[a.Key] {
			return fmt.Errorf("%s: required attribute %s missing", s.Name, a.Key)
		}
	}
	return nil
}

func (s *Spec) attr(key string) *AttrSpec {
	for i := range s.Attrs {
		if s.Attrs[i].Key == key {
			return &s.Attrs[i]
		}
	}
	return nil
}
