package report

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
)

// builder writes the framework rows from the controls and the evidence.
// Requirements are paraphrased, never quoted; articles are cited.
type builder struct {
	r *Report
	s *scan
}

// cites are the first journalled examples of the named events.
func (b *builder) cites(names ...string) []uint64 {
	out := []uint64{}
	for _, n := range names {
		out = append(out, b.s.examples[n]...)
	}
	return out
}

func (b *builder) count(name string) int { return b.r.Evidence.EventCounts[name] }

func fact(label string, format string, args ...any) Fact {
	return Fact{Label: label, Value: fmt.Sprintf(format, args...)}
}

// counts formats a map of counts as "a 3, b 1", largest first.
func counts[V int | int64](m map[string]V) string {
	if len(m) == 0 {
		return "none"
	}
	c := map[string]int64{}
	for k, v := range m {
		c[k] = int64(v)
	}
	var parts []string
	for _, x := range top(c) {
		parts = append(parts, fmt.Sprintf("%s %d", x.Key, x.Count))
	}
	return strings.Join(parts, ", ")
}

func list(cs []Count) string {
	if len(cs) == 0 {
		return "none"
	}
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s (%d)", c.Key, c.Count))
	}
	return strings.Join(parts, "; ")
}

// Bytes formats a byte count for people.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func (b *builder) peerNames() []string {
	var names []string
	for _, p := range b.r.Controls.Peers {
		names = append(names, p.Name)
	}
	return names
}

func (b *builder) tunnelTotals() (established int, sent, received, streams int64) {
	for _, t := range b.r.Evidence.Tunnels {
		established += t.Established
		sent += t.BytesSent
		received += t.BytesReceived
		streams += t.Streams
	}
	return
}

func (b *builder) limits(kind string) []string {
	var out []string
	for _, l := range b.r.Controls.Limits {
		if kind == "" || l.Kind == kind {
			out = append(out, fmt.Sprintf("%s %s (%s)", l.Name, l.Value, l.Scope))
		}
	}
	return out
}

func (b *builder) refusedHandshakes() string {
	r := b.r.Evidence.Refusals
	s := fmt.Sprintf("%d journalled", r.Handshakes)
	if r.HandshakesSuppressed > 0 {
		s += fmt.Sprintf(" + %d counted by the rate limiter", r.HandshakesSuppressed)
	}
	return s
}

func (b *builder) owasp() Section {
	ev := &b.r.Evidence
	c := &b.r.Controls
	established, sent, received, _ := b.tunnelTotals()
	rej := ev.Refusals
	sec := Section{Framework: OWASP, Title: "OWASP API Security Top 10 (2023)", Source: "https://owasp.org/API-Security/editions/2023/en/0x11-t10/"}
	notTunnel := func(id, title, why, outside string) Row {
		return Row{ID: id, Title: title, Status: NotCovered, Control: "none: application-side", Why: why, Evidence: []Fact{}, Outside: outside, Citations: []uint64{}}
	}

	api2 := Row{ID: "API2:2023", Title: "Broken Authentication", Status: Mitigated,
		Control: fmt.Sprintf("mutual TLS 1.3 between the two daemons with each partner's key pinned in the configuration (%d pinned: %s); an unknown key is refused during the handshake, before any stream; record keys also depend on a pairing secret only the two daemons hold",
			len(c.Peers), strings.Join(b.peerNames(), ", ")),
		Why: "pinned mutual pairing replaces shared API keys and passwords for the machine-to-machine channel: an attacker needs a paired daemon's private key, and every unpaired attempt is refused and counted",
		Evidence: []Fact{
			fact("tunnels established by paired peers", "%d", established),
			fact("unpaired handshakes refused", "%s", b.refusedHandshakes()),
			fact("refusal reasons", "%s", counts(rej.ByReason)),
			fact("distinct source addresses / presented keys", "%d / %d", rej.DistinctSources, rej.DistinctFingerprints),
			fact("top sources", "%s", list(rej.Sources)),
		},
		Outside:   "authentication of end users and applications to the API (OAuth, sessions, tokens) remains the API's job: dyad authenticates the partner site, not the caller behind it",
		Citations: b.cites(audit.PeerAuthRefused, audit.TunnelEstablished),
	}
	if len(c.Peers) == 0 {
		api2.Status, api2.Why = Partly, "no peers are configured: nothing can connect, but no partner channel is evidenced either"
	}

	rate := b.limits("rate")
	api4 := Row{ID: "API4:2023", Title: "Unrestricted Resource Consumption", Status: Partly,
		Control: "limits in effect: " + strings.Join(b.limits(""), "; "),
		Why:     "dyad bounds what one partner can hold open (streams, flow-control windows, timeouts) at the network layer; no per-partner rate or bandwidth limit is configured, so a paired partner's request rate is bounded only by these",
		Evidence: []Fact{
			fact("rate limit refusals", "%d (%s)", b.count(audit.RateLimitExceeded), list(rej.RateLimits)),
			fact("unpaired handshakes refused", "%s", b.refusedHandshakes()),
			fact("QUIC packets dropped", "%s", counts(rej.QUICDrops)),
			fact("bytes carried (sent / received)", "%s / %s", Bytes(sent), Bytes(received)),
		},
		Outside:   "per-user and per-operation limits, pagination and batch sizes, the cost of each API operation: application-side",
		Citations: b.cites(audit.RateLimitExceeded, audit.PacketsDropped),
	}
	if len(rate) > 0 {
		api4.Status = Mitigated
		api4.Why = "per-partner limits on new streams and bandwidth refuse excess work before it reaches the API; concurrent streams, windows and timeouts bound the rest"
	}

	var allow []string
	for _, s := range c.Services {
		allow = append(allow, fmt.Sprintf("%s → %s", s.Name, orNone(s.Allow)))
	}
	api5 := Row{ID: "API5:2023", Title: "Broken Function Level Authorization", Status: Partly,
		Control: "per-service allow lists, enforced by the exporting daemon: " + orNone(allow),
		Why:     "only at port level: a partner reaches only the services listed for it, but which functions, methods or paths of a service it may call is invisible to a tunnel",
		Evidence: []Fact{
			fact("streams denied by policy", "%d", b.count(audit.PolicyDenied)),
			fact("denials", "%s", list(rej.Policy)),
		},
		Outside:   "function-level authorization (admin vs user endpoints, HTTP methods) inside each API",
		Citations: b.cites(audit.PolicyDenied),
	}

	unknown := 0
	for _, p := range rej.Policy {
		if strings.HasSuffix(p.Key, ": unknown_service") {
			unknown += int(p.Count)
		}
	}
	api7 := notTunnel("API7:2023", "Server Side Request Forgery",
		"SSRF happens when the API itself fetches a URL a caller supplies; a tunnel cannot see or stop that. What dyad guarantees is that it cannot itself be used as an SSRF relay: a stream names a service, never an address, and the exporting daemon dials only that service's configured upstream",
		"the API's own outbound fetches (URL validation, egress allow lists)")
	api7.Control = "exporters dial configured upstreams only: " + upstreams(c.Services)
	api7.Evidence = []Fact{fact("requests for services that do not exist here (refused)", "%d", unknown)}

	api8 := Row{ID: "API8:2023", Title: "Security Misconfiguration", Status: Partly,
		Control: fmt.Sprintf("the configuration is validated strictly at start and on every reload (unknown keys and bad values refused with file, line and field; a rejected reload leaves the running configuration in force); encryption cannot be turned off: TLS 1.3 only, no 0-RTT, records sealed with %s; key files refused unless mode 0600; FIPS 140-3 mode %s", b.r.Daemon.Suite, onOff(b.r.Daemon.FIPS)),
		Why:     "dyad checks its own configuration and enforces encryption on the link; it cannot check the API's configuration",
		Evidence: []Fact{
			fact("configurations loaded / reloaded / rejected", "%d / %d / %d", b.count(audit.ConfigLoaded), b.count(audit.ConfigReloaded), b.count(audit.ConfigRejected)),
			fact("configuration in force", "%s (SHA-256 %s)", c.ConfigPath, short(c.ConfigSHA256)),
		},
		Outside:   "the API's own settings: CORS, security headers, error verbosity, TLS of the API itself, patch levels",
		Citations: b.cites(audit.ConfigRejected, audit.ConfigReloaded, audit.ConfigLoaded),
	}

	var usage []string
	for _, u := range ev.Services {
		if u.Direction == "inbound" && u.Streams > 0 {
			usage = append(usage, fmt.Sprintf("%s by %s: %d streams, %s in, %s out", u.Service, u.Peer, u.Streams, Bytes(u.FromPeer), Bytes(u.ToPeer)))
		}
	}
	api9 := Row{ID: "API9:2023", Title: "Improper Inventory Management", Status: Partly,
		Control: fmt.Sprintf("the configuration is the inventory of what partners can reach: %d exported services (%s), %d imported forwards", len(c.Services), upstreams(c.Services), len(c.Forwards)),
		Why:     "every API exposed to partners through dyad is listed with its upstream and allowed partners, and the journal shows which partner used which; APIs reachable by other paths, and the versions and endpoints inside each service, are not visible to dyad",
		Evidence: []Fact{
			fact("use per service and partner", "%s", orNone(usage)),
			fact("services unused in the period", "%s", orNone(ev.Unused)),
		},
		Outside:   "API versions, endpoints and documentation inside each service; APIs exposed other than through dyad",
		Citations: b.cites(audit.StreamOpened),
	}

	var imports []string
	for _, u := range ev.Services {
		if u.Direction == "outbound" {
			imports = append(imports, fmt.Sprintf("%s at %s: %d streams, %s received", u.Service, u.Peer, u.Streams, Bytes(u.FromPeer)))
		}
	}
	api10 := Row{ID: "API10:2023", Title: "Unsafe Consumption of APIs", Status: Partly,
		Control: fmt.Sprintf("partner APIs consumed through %d forwards reach only the pinned partner daemon; every record is authenticated end to end", len(c.Forwards)),
		Why:     "consuming a partner's API through the tunnel gives an authenticated origin and integrity in transit; whether the partner's responses are safe to use is still the consuming application's judgement",
		Evidence: []Fact{
			fact("partner services consumed", "%s", orNone(imports)),
			fact("records rejected (authentication, truncation, …)", "%s", counts(rej.Records)),
		},
		Outside:   "validating partner responses (input validation, redirects, size and time limits on responses) in the consuming application",
		Citations: b.cites(audit.RecordRejected, audit.StreamClosed),
	}

	api3 := notTunnel("API3:2023", "Broken Object Property Level Authorization",
		"which properties of an object a caller may read or change is decided inside the API; a tunnel does not parse payloads",
		"property-level authorization and response filtering, in the API")
	api6 := notTunnel("API6:2023", "Unrestricted Access to Sensitive Business Flows",
		"abuse of a business flow (buying out stock, mass sign-ups) uses valid requests; only the application knows the flow",
		"flow-level abuse detection, in the application")
	b.apiGuardRows(&api3, &api5, &api6, &api9, &api10) // owaspapi.go: where the API guard is in force
	sec.Rows = []Row{
		notTunnel("API1:2023", "Broken Object Level Authorization",
			"object identifiers travel inside the application's requests; dyad carries the bytes sealed and cannot see or authorize the objects they name",
			"checking every object access against the caller, in the API"),
		api2, api3, api4, api5, api6, api7, api8, api9, api10,
	}
	return sec
}

func (b *builder) dora() Section {
	ev := &b.r.Evidence
	c := &b.r.Controls
	d := &b.r.Daemon
	established, sent, received, streams := b.tunnelTotals()
	rej := ev.Refusals
	sec := Section{Framework: DORA, Title: "DORA — Regulation (EU) 2022/2554, with Delegated Regulations (EU) 2024/1774 and 2024/1772",
		Source: "https://eur-lex.europa.eu/eli/reg/2022/2554/oj, https://eur-lex.europa.eu/eli/reg_del/2024/1774/oj, https://eur-lex.europa.eu/eli/reg_del/2024/1772/oj"}
	truncated := 0
	for _, u := range ev.Services {
		truncated += u.Closed["truncated"] + u.Closed["rejected_record"]
	}
	crypto := fmt.Sprintf("two layers: QUIC with TLS 1.3 (%s; key exchange %s) between pinned daemons, and inside it dyad records sealed with %s under keys bound to the pairing, per stream and direction", d.TLS, d.KeyExchange, d.Suite)

	transit := Row{ID: "DORA Art. 9(2); RTS 2024/1774 Art. 14", Title: "Protect the availability, authenticity, integrity and confidentiality of data in transit; secure information during network transmission",
		Status:  Evidenced,
		Control: crypto,
		Why:     "every byte between the partner sites travels sealed; a modified, replayed, reordered or truncated record is detected and the stream reset before any byte of it reaches the API or the client",
		Evidence: []Fact{
			fact("tunnels established", "%d", established),
			fact("TLS groups and ciphers in use", "%s", list(ev.TLS)),
			fact("streams / bytes carried (sent, received)", "%d / %s, %s", streams, Bytes(sent), Bytes(received)),
			fact("records rejected", "%s", counts(rej.Records)),
			fact("streams ended by a truncated or rejected record", "%d", truncated),
		},
		Outside:   "data leakage prevention and confidentiality agreements (RTS Art. 14(2)-(3)); data at rest and in use at either end",
		Citations: b.cites(audit.TunnelEstablished, audit.RecordRejected),
	}

	if established == 0 {
		transit.Status = Partly
		transit.Why = "the control is configured, but no tunnel carried traffic in the period, so nothing evidences it at work"
	}

	access := Row{ID: "DORA Art. 9(3)(b)-(c), 9(4)(c)-(d)", Title: "Prevent unauthorised access to data in transfer; limit logical access to what legitimate functions need; strong authentication and protection of cryptographic keys",
		Status:  Evidenced,
		Control: fmt.Sprintf("only the %d pinned partner keys complete a handshake; each service is reachable only by the partners on its allow list; identity keys are kept in 0600 files, refused otherwise, and never logged", len(c.Peers)),
		Why:     "the network path admits only paired daemons, and each partner only to its services: refusals are journalled with the presented key and source",
		Evidence: []Fact{
			fact("unpaired handshakes refused", "%s", b.refusedHandshakes()),
			fact("streams denied by policy", "%d (%s)", b.count(audit.PolicyDenied), list(rej.Policy)),
		},
		Outside:   "access control inside the APIs and on the hosts; the entity's access-rights administration",
		Citations: b.cites(audit.PeerAuthRefused, audit.PolicyDenied),
	}

	policy := Row{ID: "RTS 2024/1774 Art. 6", Title: "A policy on encryption and cryptographic controls, covering data in transit and traffic with external parties, and criteria for choosing and updating cryptography",
		Status:  Partly,
		Control: fmt.Sprintf("%s; record suites offered: %s; TLS key exchange is the post-quantum hybrid %s; FIPS 140-3 mode %s", crypto, strings.Join(d.Suites, ", "), d.KeyExchange, onOff(d.FIPS)),
		Why:     "dyad implements and evidences encryption of the traffic with this external party; the policy itself, and the data classification it rests on, are the entity's documents",
		Evidence: []Fact{
			fact("TLS groups and ciphers in use", "%s", list(ev.TLS)),
			fact("daemon starts with their suite", "%s", lifecycleDetails(ev.Lifecycle, audit.DaemonStarted)),
		},
		Outside:   "the written policy, data classification and ICT risk assessment",
		Citations: b.cites(audit.DaemonStarted, audit.TunnelEstablished),
	}

	var own []string
	for _, k := range ev.Keys.Own {
		own = append(own, fmt.Sprintf("%s in use %s – %s", k.Fingerprint, day(k.First), day(k.Last)))
	}
	var changes []string
	for _, k := range ev.Keys.Changes {
		changes = append(changes, fmt.Sprintf("%s %s %s %s", k.Time.Format(time.RFC3339), k.Peer, k.Change, strings.TrimSpace(k.Old+" → "+k.New)))
	}
	age := "unknown"
	if !c.IdentityKeyModified.IsZero() {
		age = fmt.Sprintf("key file last written %s (%d days before this report; from the file system, not the journal)", day(c.IdentityKeyModified), int(b.r.Generated.Sub(c.IdentityKeyModified).Hours()/24))
	}
	var rotations []string
	for _, k := range ev.Keys.Rotations {
		rotations = append(rotations, fmt.Sprintf("%s %s → %s", k.Time.Format(time.RFC3339), k.Old, k.New))
	}
	keys := Row{ID: "RTS 2024/1774 Art. 7", Title: "Manage cryptographic keys through their whole lifecycle: generation, renewal, storage, revocation, replacement",
		Status: Partly,
		Control: "identity keys made by dyad keygen (Ed25519 signing, X25519 pairing), stored 0600; renewed by dyad rotate, which hands the new key to every partner over its tunnel, signed by the old key, accepts both for an overlap and then destroys the old one on both sides (the audit journal is handed over to the new key in a signed entry); " +
			"partners enrolled with dyad invite / dyad join, revoked with dyad revoke (connections cut at once), or pinned by fingerprint in the configuration; session and record keys are ephemeral per tunnel and per stream, and record keys are updated automatically before the AEAD's usage limit",
		Why: "dyad's own key lifecycle events are evidenced below; backup, archiving and destruction of the identity key file happen outside dyad",
		Evidence: []Fact{
			fact("this daemon's identity", "%s; %s", orNone(own), age),
			fact("identity age", "%s", b.identityAge(ev.Keys, c.IdentityMaxAge)),
			fact("identity rotations in the period", "%d: %s", len(ev.Keys.Rotations), orNone(rotations)),
			fact("partner enrolments / revocations in the period", "%d / %d", ev.Keys.Enrolments, ev.Keys.Revocations),
			fact("partner key pins, rotations, enrolments, revocations, removals in the period", "%s", orNone(changes)),
			fact("session keys (tunnels established)", "%d", ev.Keys.SessionKeys),
			fact("record key updates", "%d", ev.Keys.RecordKeyUpdates),
		},
		Outside:   "backing up and archiving identity key files; a certificate register (dyad uses no CA-issued certificates: certificates are self-signed from the pinned identity key)",
		Citations: append(append(b.cites(audit.KeyUpdated), changeCites(ev.Keys.Changes)...), changeCites(ev.Keys.Rotations)...),
	}

	var flows []string
	for _, s := range c.Services {
		flows = append(flows, fmt.Sprintf("partners %s → %s → %s", orNone(s.Allow), s.Name, s.Upstream))
	}
	for _, f := range c.Forwards {
		flows = append(flows, fmt.Sprintf("%s → partner %s / %s", f.Listen, f.Peer, f.Service))
	}
	network := Row{ID: "RTS 2024/1774 Art. 13", Title: "Network security management: documented network connections and data flows, network access control, encryption of connections over public and third-party networks, session termination",
		Status:  Partly,
		Control: fmt.Sprintf("documented flows (from the configuration): %s; access control: pinned mutual authentication; encryption always on; idle tunnels end after the idle timeout", orNone(flows)),
		Why:     "the partner flows dyad carries are documented, access-controlled and encrypted; segmentation, the administration network and firewalls are the entity's",
		Evidence: []Fact{
			fact("partner links", "%d (see the register of partner links)", len(ev.Register)),
			fact("tunnel closes by reason", "%s", closeReasons(ev.Tunnels)),
		},
		Outside:   "network segmentation, a separate administration network, firewall rules, review of the network design",
		Citations: b.cites(audit.StreamOpened),
	}

	ap := ev.AuditPath
	exportState := "OTLP export disabled: the journal is the only copy"
	if c.Export.Enabled {
		exportState = fmt.Sprintf("OTLP %s export to %s (%s)", c.Export.Protocol, c.Export.Endpoint, c.Export.TLS)
	}
	logging := Row{ID: "RTS 2024/1774 Art. 12", Title: "Logging: which events are logged, protection of logs against tampering and deletion, detection of logging failures",
		Status: Partly,
		Control: fmt.Sprintf("every security event (catalogue: audit/EVENTS.md) is written first to a hash-chained journal (%s, fsync %s) with checkpoints signed by the daemon's identity key every %d entries or %s, then exported: %s; export failures and drops are themselves audited",
			c.Journal.Dir, c.Journal.Fsync, c.Journal.CheckpointEvery, c.Journal.CheckpointInterval, exportState),
		Why: "tampering with or cutting the journal is detected by verification (the verdict is in this report's header); a failing export path is detected, counted and journalled",
		Evidence: []Fact{
			fact("journal verification", "%s", b.r.Journal.Verdict),
			fact("events journalled in the period", "%d", b.r.Period.Entries),
			fact("signed checkpoints in the period", "%d", ap.Checkpoints),
			fact("export failures / recoveries / seconds down", "%d / %d / %.0f", ap.ExportFailures, ap.ExportRecoveries, ap.ExportDownSeconds),
			fact("events not exported (queue full / export failed); all are in the journal", "%d / %d", ap.DroppedQueueFull, ap.DroppedExportFailed),
			fact("journal repairs after a crash", "%d", ap.JournalRecoveries),
		},
		Outside:   "retention periods (dyad never deletes journal files; retention is the operator's), clock synchronisation of the host (timestamps come from the host clock), logging on other systems",
		Citations: b.cites(audit.ExportFailed, audit.ExportDropped, audit.JournalRecovered),
	}

	change := Row{ID: "DORA Art. 9(4)(e)", Title: "ICT change management: changes are recorded and controlled",
		Status:  Partly,
		Control: "every configuration load, reload and rejected reload is journalled with the file's SHA-256; an invalid configuration is refused and the running one stays in force",
		Why:     "dyad records what changed in its own configuration and when; approval of changes is the entity's process",
		Evidence: []Fact{
			fact("configuration events", "%s", configList(ev.Configs)),
		},
		Outside:   "change approval and testing, changes to other systems",
		Citations: b.cites(audit.ConfigLoaded, audit.ConfigReloaded, audit.ConfigRejected),
	}

	var burstN, outageN int
	for _, in := range ev.Incidents {
		if in.Kind == "attack_burst" {
			burstN++
		} else {
			outageN++
		}
	}
	detect := Row{ID: "DORA Art. 10; RTS 2024/1774 Art. 23", Title: "Detect anomalous activities promptly, with the time they occurred and were detected",
		Status:  Partly,
		Control: "each refusal, rejected record and rate-limit hit is journalled and exported when it happens, so its time of occurrence is its time of detection by dyad",
		Why:     "dyad detects and reports anomalies on its own link in real time; correlating them with other sources and responding happens in the SIEM",
		Evidence: []Fact{
			fact("unpaired handshakes refused", "%s", b.refusedHandshakes()),
			fact("policy denials / rate-limit refusals", "%d / %d", b.count(audit.PolicyDenied), b.count(audit.RateLimitExceeded)),
			fact("records rejected", "%s", counts(rej.Records)),
			fact("QUIC packets dropped", "%s", counts(rej.QUICDrops)),
			fact("attack bursts (see incident candidates)", "%d", burstN),
		},
		Outside:   "detection on other systems, the SIEM's alerting and the response to it",
		Citations: b.cites(audit.PeerAuthRefused, audit.RecordRejected, audit.RateLimitExceeded),
	}

	incidents := Row{ID: "DORA Art. 17-19; Delegated Regulation 2024/1772 Art. 1-9", Title: "Record, classify and report ICT-related incidents",
		Status:  Partly,
		Control: fmt.Sprintf("tunnel outages of at least %s and bursts of at least %d refusals in %s are listed as incident candidates, with the classification criteria the journal can speak to", b.s.o.OutageMin, b.s.o.BurstEvents, b.s.o.BurstWindow),
		Why:     "dyad supplies candidates and per-criterion evidence; deciding whether an incident is major, and reporting it, is the entity's",
		Evidence: []Fact{
			fact("tunnel outages / attack bursts", "%d / %d", outageN, burstN),
		},
		Outside:   "reputational and economic impact (2024/1772 Art. 2, 7), clients and transactions behind the link, the materiality thresholds applied (Art. 8-9), notification to the authority",
		Citations: []uint64{},
	}
	for _, in := range ev.Incidents {
		if len(incidents.Citations) < 6 && len(in.Citations) > 0 {
			incidents.Citations = append(incidents.Citations, in.Citations[0])
		}
	}

	register := Row{ID: "DORA Art. 28(3)", Title: "Register of information on contractual arrangements with ICT third-party service providers",
		Status:    Partly,
		Control:   "one row per partner link, from the configuration and the journal (see the register of partner links)",
		Why:       "dyad knows each partner's identity key, endpoint, services and when the link was used; the contractual information is not dyad's",
		Evidence:  []Fact{fact("partner links", "%d", len(ev.Register))},
		Outside:   "contract references, provider legal entity identifiers, the functions supported, substitutability",
		Citations: b.cites(audit.TunnelEstablished),
	}
	sec.Rows = []Row{transit, access, policy, keys, network, logging, change, detect, incidents, register}
	return sec
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "; ")
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

func day(t time.Time) string { return t.UTC().Format("2006-01-02") }

func upstreams(svcs []Service) string {
	var s []string
	for _, svc := range svcs {
		s = append(s, svc.Name+" → "+svc.Upstream)
	}
	return orNone(s)
}

func lifecycleDetails(steps []LifecycleStep, event string) string {
	var s []string
	for _, st := range steps {
		if st.Event == event {
			s = append(s, st.Time.Format(time.RFC3339)+" "+st.Detail)
		}
	}
	if len(s) > 5 {
		s = append(s[:5], fmt.Sprintf("and %d more", len(s)-5))
	}
	return orNone(s)
}

func configList(cs []ConfigChange) string {
	var s []string
	for _, c := range cs {
		x := c.Time.Format(time.RFC3339) + " " + strings.TrimPrefix(c.Event, "dyad.config.")
		if c.SHA256 != "" {
			x += " " + short(c.SHA256)
		}
		if c.Error != "" {
			x += ": " + c.Error
		}
		s = append(s, x)
	}
	if len(s) > 10 {
		s = append(s[:10], fmt.Sprintf("and %d more", len(s)-10))
	}
	return orNone(s)
}

func closeReasons(ts []PeerActivity) string {
	m := map[string]int{}
	for _, t := range ts {
		for k, v := range t.Closed {
			m[k] += v
		}
	}
	return counts(m)
}

// identityAge says how old the identity in use is, from the journal (the
// last rotation, or the creation time a start recorded), and whether it is
// older than maxAge (identity_max_age): then it should be rotated.
func (b *builder) identityAge(k Keys, maxAge time.Duration) string {
	if k.IdentitySince.IsZero() {
		return "unknown: the journal records neither a rotation nor the identity's creation time"
	}
	age := b.r.Generated.Sub(k.IdentitySince)
	how := "made by dyad rotate"
	if k.IdentitySource != audit.IdentityRotated {
		how = "created (recorded at the daemon's start)"
	}
	out := fmt.Sprintf("%s %s %s, %d days before this report", k.Identity, how, day(k.IdentitySince), int(age.Hours()/24))
	switch {
	case maxAge <= 0:
	case age > maxAge:
		out += fmt.Sprintf("; OLDER than identity_max_age (%d days): rotate it with dyad rotate", int(maxAge.Hours()/24))
	default:
		out += fmt.Sprintf("; within identity_max_age (%d days)", int(maxAge.Hours()/24))
	}
	return out
}

func changeCites(cs []KeyChange) []uint64 {
	var out []uint64
	for _, c := range cs {
		if !slices.Contains(out, c.Seq) && len(out) < 3 {
			out = append(out, c.Seq)
		}
	}
	return out
}
