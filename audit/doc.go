package audit

import (
	"fmt"
	"io"
	"strings"
)

// eventsIntro heads EVENTS.md; the rest is generated from Catalog by
// WriteCatalog (go test ./audit -run TestEventsDoc -update).
const eventsIntro = `# dyad audit events

Every security-relevant thing a dyad daemon does becomes one of the events below. Each event is

1. appended to the local journal (` + "`audit.journal.dir`" + `, JSON Lines, hash-chained, Merkle checkpoints signed
   with the daemon's identity key; ` + "`dyad audit verify`" + ` checks it), and then
2. exported over OTLP (gRPC or HTTP/protobuf) as an OpenTelemetry log record whose **EventName** is the
   event name, with severity number and text, the attributes below, the attribute ` + "`dyad.journal.seq`" + ` (the
   entry's position in the journal, so a gap in the SIEM can be filled from the journal), and the resource
   attributes ` + "`service.name=dyad`" + `, ` + "`service.version`" + `, ` + "`service.instance.id`" + ` (the identity fingerprint),
   ` + "`host.name`" + ` and ` + "`dyad.site`" + `; and
3. mirrored on the daemon's operational log (zerolog) as one line with ` + "`\"event\"`" + ` and the same attributes.

Attributes use OpenTelemetry semantic-convention names where one exists and ` + "`dyad.*`" + ` otherwise. No event
ever carries a key, a pairing secret, a header value or a payload byte. Durations are seconds (double).

**Rate-limited events** (marked below) are limited per event name and per source: the peer (` + "`dyad.peer`" + `) or,
before authentication, the source address (` + "`network.peer.address`" + `), as each event says. Each source's events are
written individually up to a burst of 100, then at 20 per second; the rest are counted at once in the metric
` + "`dyad.audit.suppressed`" + ` and reported once a minute by the event ` + "`dyad.audit.suppressed`" + `, one per event name and
source, so the counts stay exact. At most 1024 sources of each kind (peers, addresses) are tracked per event;
further sources share one limit per event (their summary carries ` + "`dyad.audit.overflow`" + `) until a tracked source
goes idle, so a flood of new addresses never takes a tracked source's limit away. Each tracked source therefore
adds at most 100 + 20 per second entries of each rate-limited event to the journal, plus one summary a minute,
and all untracked sources together at most as much again; no source can use up another's limit. Export never
blocks traffic: the OTLP queue is bounded, a full queue drops the new record (an event about the audit path
itself, ` + "`dyad.audit.*`" + `, takes the place of the oldest instead), and every drop is counted and reported by
` + "`dyad.audit.export_dropped`" + ` (the journal still has the event).

**Mappings.** OCSF class and activity (OCSF 1.x: Tunnel Activity 4014, Network Activity 4001,
Authentication 3002, Application Lifecycle 6002, Entity Management 3004, Detection Finding 2004), with
` + "`status_id`" + ` 1 success, 2 failure; ECS ` + "`event.kind`, `event.category`, `event.type`, `event.outcome`" + `, and
` + "`event.action`" + ` is always the event name. Where no OCSF activity fits, activity 99 (Other) is used.

## Summary

| event | severity | OCSF class / activity | ECS kind / category / type / outcome |
| --- | --- | --- | --- |
`

// WriteCatalog writes EVENTS.md.
func WriteCatalog(w io.Writer) error {
	var b strings.Builder
	b.WriteString(eventsIntro)
	for _, s := range Catalog {
		fmt.Fprintf(&b, "| [`%s`](#%s) | %s | %d %s / %d %s | %s / %s / %s / %s |\n", s.Name, anchor(s.Name), s.Severity,
			s.OCSF.ClassUID, s.OCSF.Class, s.OCSF.ActivityID, s.OCSF.Activity,
			s.ECS.Kind, strings.Join(s.ECS.Category, ", "), strings.Join(s.ECS.Type, ", "), s.ECS.Outcome)
	}
	for _, s := range Catalog {
		fmt.Fprintf(&b, "\n## %s\n\n", s.Name)
		fmt.Fprintf(&b, "**When:** %s.  \n**Severity:** %s (OpenTelemetry severity number %d).", s.When, s.Severity, s.Severity.otel())
		if s.RateLimit {
			b.WriteString(" **Rate-limited**")
			for i, k := range s.Source {
				sep := " per"
				if i > 0 {
					sep = ", else"
				}
				fmt.Fprintf(&b, "%s `%s`", sep, k)
			}
			b.WriteString(".")
		}
		fmt.Fprintf(&b, "  \n**OCSF:** class %d %s (category %d), activity %d %s, status_id %d.  \n",
			s.OCSF.ClassUID, s.OCSF.Class, s.OCSF.CategoryUID, s.OCSF.ActivityID, s.OCSF.Activity, s.OCSF.StatusID)
		fmt.Fprintf(&b, "**ECS:** event.kind `%s`, event.category `%s`, event.type `%s`, event.outcome `%s`, event.action `%s`.\n\n",
			s.ECS.Kind, strings.Join(s.ECS.Category, "`, `"), strings.Join(s.ECS.Type, "`, `"), s.ECS.Outcome, s.Name)
		b.WriteString("| attribute | type | | meaning |\n| --- | --- | --- | --- |\n")
		for _, a := range s.Attrs {
			req := "always"
			if a.Optional {
				req = "when it applies"
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", a.Key, a.Type, req, a.Doc)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func anchor(name string) string { return strings.ReplaceAll(name, ".", "") }
