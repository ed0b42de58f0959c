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
	APIDenied          = "dyad.api.denied"
	APIStreamRefused   = "dyad.api.stream_refused"
	APIInventory       = "dyad.api.inventory"
	APIResponseInvalid = "dyad.api.response_invalid"
	TunnelEstablished  = "dyad.tunnel.established"
	TunnelClosed       = "dyad.tunnel.closed"
	PeerAuthRefused    = "dyad.peer.auth_refused"
	PeerInvited        = "dyad.peer.invited"
	PeerEnrolled       = "dyad.peer.enrolled"
	PeerEnrollRefused  = "dyad.peer.enroll_refused"
	PeerRevoked        = "dyad.peer.revoked"
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
	JournalKeyHandover = "dyad.journal.key_handover"
	JournalWriteFailed = "dyad.journal.write_failed"
	ExportDropped      = "dyad.audit.export_dropped"
	ExportFailed       = "dyad.audit.export_failed"
	ExportRecovered    = "dyad.audit.export_recovered"
	EventsSuppressed   = "dyad.audit.suppressed"

	// Identity rotation (README, "Key rotation").
	IdentityRotated        = "dyad.identity.rotated"
	IdentityAnnounced      = "dyad.identity.announced"
	IdentityRetired        = "dyad.identity.retired"
	PeerKeyRotated         = "dyad.peer.key_rotated"
	PeerKeyRotationRefused = "dyad.peer.key_rotation_refused"
	PeerKeyRetired         = "dyad.peer.key_retired"

	// Transport selection (README, "TCP fallback").
	TransportChanged = "dyad.tunnel.transport_changed"
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
	// An identity rotation's keys and overlap (dyad.identity.rotated and
	// the events that follow it).
	KeyPreviousFingerprint     = "dyad.identity.previous_fingerprint"
	KeyPeerPreviousFingerprint = "dyad.peer.previous_fingerprint"
	KeyOverlapUntil            = "dyad.identity.overlap_until"
	KeyRole                    = "dyad.tunnel.role"
	KeyConnection              = "dyad.tunnel.connection"
	KeySlot                    = "dyad.tunnel.slot"
	KeyDuration                = "dyad.duration"
	KeyBytesSent               = "dyad.bytes.sent"
	KeyBytesReceived           = "dyad.bytes.received"
	KeyStreams                 = "dyad.streams"
	KeyCloseReason             = "dyad.close_reason"
	KeyReason                  = "dyad.reason"
	KeyService                 = "dyad.service"
	KeyDirection               = "dyad.direction"
	KeyStreamID                = "dyad.stream.id"
	KeyLimit                   = "dyad.limit"
	KeyScope                   = "dyad.limit.scope"
	KeyCount                   = "dyad.count"
	KeyWindow                  = "dyad.window"
	KeyEventName               = "dyad.event.name"
	KeyCodecSuite              = "dyad.codec.suite"
	KeyCodecDirection          = "dyad.codec.direction"
	KeyKeyGeneration           = "dyad.key.generation"
	KeyFIPS                    = "dyad.fips"
	KeyFIPSModule              = "dyad.fips.module_version"
	KeyFIPSCertified           = "dyad.fips.certified"
	KeyFIPSRequired            = "dyad.fips.required"
	KeyRequirePQ               = "dyad.tls.require_post_quantum"
	KeyIdentityCreated         = "dyad.identity.created"
	KeyConfigPath              = "dyad.config.path"
	KeyConfigSHA256            = "dyad.config.sha256"
	KeyPeers                   = "dyad.config.peers"
	KeyServices                = "dyad.config.services"
	KeyForwards                = "dyad.config.forwards"
	KeyPeerKeys                = "dyad.config.peer_keys"
	KeyAPISpecSHA256           = "dyad.api.spec_sha256"
	KeyAPIOperation            = "dyad.api.operation"
	KeyAPIOperations           = "dyad.api.operations"
	KeyAPIDeprecated           = "dyad.api.deprecated_called"
	KeyAPIShadow               = "dyad.api.shadow"
	KeyAPIRefused              = "dyad.api.refused"
	KeyHTTPMethod              = "http.request.method"
	KeyHTTPStatus              = "http.response.status_code"
	KeyAPIKeyword              = "dyad.api.schema_keyword"
	KeyAPIAction               = "dyad.api.action"
	KeyError                   = "dyad.error"
	KeyProtocol                = "dyad.export.protocol"
	KeyQueueFull               = "dyad.export.dropped.queue_full"
	KeyExportFailed            = "dyad.export.dropped.export_failed"
	KeySeverity                = "dyad.severity"
	KeyOverflow                = "dyad.audit.overflow"
	// The local user who ran a control-socket command (SO_PEERCRED), on
	// every event that command causes (package control).
	KeyControlUID  = "dyad.control.uid"
	KeyControlUser = "dyad.control.user"
	// Enrollment (dyad invite, dyad join) and revocation.
	KeyEnrollRole     = "dyad.enroll.role"
	KeyEnrollServices = "dyad.enroll.services"
	KeyEnrollExpires  = "dyad.enroll.expires"
	KeyEnrollPhrase   = "dyad.enroll.phrase"
	KeyPeerSource     = "dyad.peer.source"
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
	// The caller of a control-socket command, for the events it causes.
	aControlUID  = AttrSpec{KeyControlUID, Int, false, "uid of the local user who ran the command, from the control socket's SO_PEERCRED"}
	aControlUser = AttrSpec{KeyControlUser, String, true, "that user's name, when the uid has one"}
	// An identity rotation's old key and overlap.
	aPreviousFingerprint = AttrSpec{KeyPreviousFingerprint, String, false, "the identity rotated away from"}
	aOverlapUntil        = AttrSpec{KeyOverlapUntil, String, false, "end of the overlap (RFC 3339, UTC): until then both keys are accepted"}
	aAPISpecs            = AttrSpec{KeyAPISpecSHA256, StringSlice, true, "API guards' OpenAPI documents in force as service=SHA-256 (hex), and the forwards' response checks as listen→peer/service=SHA-256; absent when no service or forward has api:"}
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
			{KeyFIPSModule, String, false, "the Go Cryptographic Module version built in: v1.0.0 for the certified snapshot `make release` uses, latest for a build from the toolchain's own tree"},
			{KeyFIPSCertified, Bool, false, "the module built in is a certified snapshot (CMVP); false means a FIPS-mode daemon runs a module not (yet) certified"},
			{KeyFIPSRequired, Bool, false, "the configuration says fips: true (the daemon would not have started without FIPS 140-3 mode)"},
			{KeyRequirePQ, Bool, false, "tls.require_post_quantum: handshakes without a hybrid ML-KEM group are refused"},
			{KeyIdentityCreated, String, false, "when the identity key was made (RFC 3339), or unknown for a key file written before dyad recorded it"},
			{KeyCodecSuite, String, false, "record suite this daemon seals with"},
			{KeyTLSCurve, String, false, "preferred TLS key-exchange group (SecP256r1MLKEM768 in FIPS 140-3 mode, else X25519MLKEM768)"},
			{KeyServerAddress, String, false, "QUIC listen address"},
			{KeyServerPort, Int, false, "QUIC listen port (UDP)"},
		},
		OCSF: lifecycle(3, "Start", 1),
		ECS:  ECS{"event", []string{"process"}, []string{"start"}, "success"},
	},
	{
		Name: DaemonStopped, Severity: Info, When: "the daemon stops, after draining (SIGTERM) or on a fatal error (then at severity ERROR: a failed start)",
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
			aAPISpecs,
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
			aAPISpecs,
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
			{KeyCloseReason, String, false, "why: shutdown, replaced (this connection was retired: a dyad/1 peer's newer connection took over, or both sides dialed and the preferred side's connection holds the slot; it closed after its last stream or a 30 s grace), peer_removed and key_changed (a reload revoked the key it authenticated with), endpoint_changed, peer_silent (nothing heard from the peer for 2.375 keepalives plus one round trip: the partner stopped or the path dropped), idle_timeout, peer_closed, stateless_reset, error"},
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
			{KeyReason, String, false, "unknown_key (inbound, on fresh and resumed handshakes), not_paired (inbound: the key was unpinned while its handshake ran), pinned_key_mismatch (outbound: the server is not the peer we dialed), no_certificate, bad_certificate, not_post_quantum (either direction: a paired key, but a classical key exchange under tls.require_post_quantum)"},
		},
		OCSF: OCSF{3002, "Authentication", 1, "Logon", 2, 3},
		ECS:  ECS{"event", []string{"authentication", "network"}, []string{"start", "denied"}, "failure"},
	},
	{
		Name: IdentityRotated, Severity: Info,
		When: "this site rotated its identity (dyad rotate): new connections present the new key, peers are told over their tunnels, and the old key stays in use until the overlap ends",
		Attrs: []AttrSpec{
			{KeyFingerprint, String, false, "the new identity's fingerprint"},
			aPreviousFingerprint, aOverlapUntil,
			{KeyControlUID, Int, true, "uid of the local user who ran dyad rotate (control socket, SO_PEERCRED)"},
			aControlUser,
		},
		OCSF: OCSF{3004, "Entity Management", 3, "Update", 1, 3},
		ECS:  ECS{"event", []string{"configuration", "iam"}, []string{"change"}, "success"},
	},
	{
		Name: IdentityAnnounced, Severity: Info,
		When: "a peer answered (or could not be asked) this site's signed announcement of its new identity; a peer without a tunnel then is asked again on its next connection within the overlap",
		Attrs: []AttrSpec{
			aPeer, {KeyFingerprint, String, false, "the new identity's fingerprint"}, aPreviousFingerprint,
			{KeyReason, String, false, "accepted (the peer pinned the new key), refused (see the peer's dyad.peer.key_rotation_refused), previous_release, no_tunnel, failed"},
		},
		OCSF: OCSF{3004, "Entity Management", 3, "Update", 1, 3},
		ECS:  ECS{"event", []string{"configuration", "iam"}, []string{"change"}, "success"},
	},
	{
		Name: IdentityRetired, Severity: Info,
		When: "a rotation's overlap ended: this site's previous identity is gone, the connections it authenticated are closed",
		Attrs: []AttrSpec{
			{KeyFingerprint, String, false, "the identity in use"}, aPreviousFingerprint,
		},
		OCSF: OCSF{3004, "Entity Management", 4, "Delete", 1, 3},
		ECS:  ECS{"event", []string{"configuration", "iam"}, []string{"deletion"}, "success"},
	},
	{
		Name: PeerKeyRotated, Severity: Info,
		When: "a peer rotated its identity: its announcement, signed by the key pinned for it, was verified; the new key is pinned, the old one accepted until the overlap ends",
		Attrs: []AttrSpec{
			aPeer, {KeyPeerFingerprint, String, false, "the peer's new fingerprint"},
			{KeyPeerPreviousFingerprint, String, false, "the peer's previous fingerprint"}, aOverlapUntil,
		},
		OCSF: OCSF{3004, "Entity Management", 3, "Update", 1, 3},
		ECS:  ECS{"event", []string{"configuration", "iam"}, []string{"change"}, "success"},
	},
	{
		Name: PeerKeyRotationRefused, Severity: Warn,
		When: "a peer's identity announcement was refused; nothing was pinned",
		Attrs: []AttrSpec{
			aPeer, {KeyPeerFingerprint, String, false, "the key the announcing connection authenticated"},
			{KeyReason, String, false, "malformed, bad_old_signature, bad_new_signature, not_connection_key, old_key_not_pinned, stale_sequence, bad_deadline, key_in_use, state_write_failed"},
		},
		OCSF: OCSF{3004, "Entity Management", 3, "Update", 2, 3},
		ECS:  ECS{"event", []string{"configuration", "iam"}, []string{"change", "denied"}, "failure"},
	},
	{
		Name: PeerKeyRetired, Severity: Info,
		When: "a peer's rotation overlap ended: its previous key is no longer pinned, the connections it authenticated are closed",
		Attrs: []AttrSpec{
			aPeer, {KeyPeerFingerprint, String, false, "the peer's key in use"},
			{KeyPeerPreviousFingerprint, String, false, "the retired key's fingerprint"},
		},
		OCSF: OCSF{3004, "Entity Management", 4, "Delete", 1, 3},
		ECS:  ECS{"event", []string{"configuration", "iam"}, []string{"deletion"}, "success"},
	},
	{
		Name: PeerInvited, Severity: Info, When: "dyad invite issued an invitation: a one-time secret whose hash the daemon keeps in its state directory until the invitation expires",
		Attrs: []AttrSpec{
			{KeyPeer, String, false, "the name the joiner will have here"},
			{KeyEnrollServices, StringSlice, false, "this site's services the invitation allows"},
			{KeyEnrollExpires, String, false, "when the invitation expires (RFC 3339)"},
			aControlUID, aControlUser,
		},
		OCSF: entity(1, "Create", 1),
		ECS:  ECS{"event", []string{"iam", "configuration"}, []string{"creation"}, "success"},
	},
	{
		Name: PeerEnrolled, Severity: Info, When: "an invitation was used: the inviter pinned the joiner's key with the invitation's services, and the joiner pinned the inviter's; each side emits one",
		Attrs: []AttrSpec{
			aPeer, {KeyPeerFingerprint, String, false, "the newly pinned key's fingerprint"},
			{KeyEnrollRole, String, false, `"inviter" or "joiner"`},
			{KeyEnrollServices, StringSlice, true, "inviter: the services the peer may use"},
			{KeyPeerAddress, String, false, "the other daemon's IP address"},
			{KeyEnrollPhrase, String, false, "the verification phrase both operators compare (a hash, not the secret)"},
			{KeyControlUID, Int, false, "uid of the local user who ran dyad join (joiner) or dyad invite (inviter)"}, aControlUser,
		},
		OCSF: entity(1, "Create", 1),
		ECS:  ECS{"event", []string{"iam", "configuration"}, []string{"creation"}, "success"},
	},
	{
		Name: PeerEnrollRefused, Severity: Warn, RateLimit: true, Source: []string{KeyPeerAddress},
		When: "an enrollment request was refused; nothing changed",
		Attrs: []AttrSpec{
			{KeyPeerFingerprint, String, false, "the key the joiner proved in TLS"},
			aPeerAddr, aPeerPort,
			{KeyReason, String, false, "invalid_token (no pending invitation has the secret), used_token, expired_token, conflict (the key or the invitation's peer name is pinned already), key_mismatch (the request's key is not the one proved in TLS), malformed, timeout (no request within 10 s), failed (the state could not be written)"},
		},
		OCSF: OCSF{3002, "Authentication", 1, "Logon", 2, 3},
		ECS:  ECS{"event", []string{"authentication", "iam"}, []string{"denied"}, "failure"},
	},
	{
		Name: PeerRevoked, Severity: Warn, When: "dyad revoke removed a peer or an invitation; every connection of the peer's key is closed at once",
		Attrs: []AttrSpec{
			aPeer, {KeyPeerFingerprint, String, true, "the revoked key's fingerprint (absent for an invitation not yet used)"},
			{KeyPeerSource, String, false, `"state" (an enrolled peer, removed), "config" (a peer of the YAML file: its key is recorded as revoked until the file drops it) or "invitation" (pending invitations for the name, cancelled)`},
			aControlUID, aControlUser,
		},
		OCSF: entity(4, "Delete", 1),
		ECS:  ECS{"event", []string{"iam", "configuration"}, []string{"deletion"}, "success"},
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
			{KeyReason, String, false, "no_tunnel, upstream_unreachable (the dial failed, or with upstream_tls the TLS handshake: error.type tls_verify when the upstream's certificate failed verification, tls_handshake otherwise), refused_by_peer, open_failed, audit_unavailable (the journal cannot be written and audit.journal.on_failure is refuse); inbound: connection_replaced (the peer opened a stream on a connection a newer one replaced), key_not_pinned (the connection's key is no longer pinned)"},
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
		Name: APIDenied, Severity: Warn, RateLimit: true, Source: []string{KeyPeer},
		When: "the API guard answered a request itself instead of forwarding it: not allowed for the peer, no such operation, invalid, too large, rate-limited, over the peer's memory budget, or a request shape it refuses (README, API guard)",
		Attrs: []AttrSpec{
			aPeer, aService,
			{KeyAPIOperation, String, true, "operationId (or METHOD /template) of the matched operation, or the path shape of a request that matched none (/v1/payments/{num}); absent when the request could not be parsed"},
			{KeyHTTPMethod, String, true, `request method (non-standard methods as "_OTHER"); absent when the request could not be parsed`},
			{KeyHTTPStatus, Int, false, "status the guard answered: 400, 403, 404, 413, 429, 431, 503 or 505"},
			{KeyReason, String, false, "not_allowed, no_route, method_not_allowed, invalid_parameter, invalid_header, invalid_body, invalid_request, body_too_large, rate_limited, memory_budget, header_too_large, truncated, bare_lf, obs_fold, malformed_header, content_length_and_transfer_encoding, duplicate_content_length, malformed_content_length, unsupported_transfer_encoding, http_version, request_target, path_not_canonical, upgrade, duplicate_content_type, duplicate_parameter, malformed_query, method_override, undeclared_body, unsupported_charset"},
		},
		OCSF: OCSF{4002, "HTTP Activity", 99, "Other", 2, 4},
		ECS:  ECS{"event", []string{"web", "network"}, []string{"denied", "access"}, "failure"},
	},
	{
		Name: APIStreamRefused, Severity: Warn, RateLimit: true, Source: []string{KeyPeer},
		When:  "a stream to a guarded service did not carry HTTP/1.1 (other bytes, or HTTP/2 with prior knowledge): it is ended without reaching the upstream",
		Attrs: []AttrSpec{aPeer, aService, {KeyReason, String, false, "not_http, h2c"}},
		OCSF:  network(5, "Refuse", 2),
		ECS:   ECS{"event", []string{"network"}, []string{"denied", "connection"}, "failure"},
	},
	{
		Name: APIInventory, Severity: Info,
		When: "periodically (every api inventory interval, 5 min) for each peer that called a guarded service since the previous one: what it called, cumulative since the daemon started (OWASP API9)",
		Attrs: []AttrSpec{
			aPeer, aService,
			{KeyAPIOperations, StringSlice, false, "operations called as operationId:2xx=N,4xx=N (status classes of the answers, the guard's own included)"},
			{KeyAPIDeprecated, StringSlice, false, "deprecated operations the peer still calls"},
			{KeyAPIShadow, StringSlice, false, "requests matching no operation as METHOD shape=N (shapes bounded at 256 per peer, the rest as _OTHER)"},
			{KeyAPIRefused, StringSlice, false, "requests and streams refused before routing as reason=N"},
			aAPISpecs,
		},
		OCSF: OCSF{5001, "Inventory Info", 2, "Collect", 1, 5},
		ECS:  ECS{"event", []string{"web"}, []string{"info"}, "success"},
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
		Name: APIResponseInvalid, Severity: Warn, RateLimit: true, Source: []string{KeyPeer},
		When: "a response that came back through a forward with api: validate: [response] broke the partner's OpenAPI contract (OWASP API10); with block: true the client got a 502 problem response instead (README, API guard: responses)",
		Attrs: []AttrSpec{
			aPeer, aService,
			{KeyAPIOperation, String, true, "operationId (or METHOD /template) of the request's operation; absent when the response was not HTTP/1.1 and its request matched none"},
			{KeyHTTPMethod, String, true, "the request's method, as the spec writes it; absent with dyad.api.operation"},
			{KeyHTTPStatus, Int, true, "the partner's status; absent when the response was not HTTP/1.1"},
			{KeyReason, String, false, "undeclared_status, undeclared_property (a property the schema forbids: OWASP API3), schema_violation, undeclared_content_type, duplicate_content_type, invalid_header, undecodable_body, malformed_response"},
			{KeyAPIKeyword, String, true, "the JSON Schema keyword that failed (type, required, enum, additionalProperties, …), never a value"},
			{KeyAPIAction, String, false, "blocked (replaced by a 502) or reported (passed on)"},
		},
		OCSF: finding,
		ECS:  ECS{"alert", []string{"web", "intrusion_detection"}, []string{"info"}, "failure"},
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
		Name: JournalKeyHandover, Severity: Info, When: "the daemon's identity rotated (dyad rotate): the old key signs the name of the new one over every entry so far, and a checkpoint by the new key follows; dyad audit verify follows these handovers, so the journal verifies with any key of the chain that signed a checkpoint",
		Attrs: []AttrSpec{
			{"dyad.journal.origin", String, false, "checkpoint origin, dyad/<site>"},
			{"dyad.journal.size", Int, false, "entries before the handover"},
			{"dyad.journal.root_hash", String, false, "Merkle root of those entries, base64"},
			{"dyad.journal.key", String, false, "the key handing over (note verifier key)"},
			{"dyad.journal.next_key", String, false, "the new key (note verifier key)"},
			{"dyad.journal.handover", String, false, "the handover note, signed by the old key"},
		},
		OCSF: lifecycle(99, "Other", 1),
		ECS:  ECS{"event", []string{"file"}, []string{"change"}, "success"},
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
