package report

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/dyad-tunnel/dyad/audit"
)

// The OWASP rows the API guard moves (README, "API guard"). A row moves
// only for what is both configured and shown in force by the journal: the
// last configuration event before the period's end must name the spec's
// SHA-256 (a guard added to the file but never loaded is no evidence).
// Each moved row says whether its evidence shows prevention (the daemon
// refuses) or detection (it sees and records). Tested by
// TestOWASPGuardRows and daemon's TestReportAPIGuardRows.

// guardsInForce splits the configured guards into those the journal shows
// in force and the names of the others.
func (b *builder) guardsInForce() (in []APIGuard, missing []string) {
	for _, g := range b.r.Controls.APIGuards {
		if slices.Contains(b.r.Evidence.API.SpecsInForce, g.Service+"="+g.SHA256) {
			in = append(in, g)
		} else {
			missing = append(missing, g.Service)
		}
	}
	return in, missing
}

// checksInForce is guardsInForce for the forwards' response checks.
func (b *builder) checksInForce() (in []ResponseCheck, missing []string) {
	for _, c := range b.r.Controls.ResponseChecks {
		if slices.Contains(b.r.Evidence.API.SpecsInForce, c.Forward+"="+c.SHA256) {
			in = append(in, c)
		} else {
			missing = append(missing, c.Forward)
		}
	}
	return in, missing
}

// notShown is the fact naming configured contracts the journal does not
// show in force.
func notShown(missing []string) Fact {
	return fact("configured but not shown in force by the journal (not evidence)", "%s", strings.Join(missing, ", "))
}

func (b *builder) apiGuardRows(api3, api5, api6, api9, api10 *Row) {
	ev := &b.r.Evidence.API
	c := &b.r.Controls
	guards, missingGuards := b.guardsInForce()
	checks, missingChecks := b.checksInForce()
	denied := func(reasons ...string) int {
		n := 0
		for _, r := range reasons {
			n += ev.Denied[r]
		}
		return n
	}
	guarded := map[string]APIGuard{}
	for _, g := range guards {
		guarded[g.Service] = g
	}
	spec := func(g APIGuard) string { return fmt.Sprintf("%s (%s, SHA-256 %s)", g.Service, g.Spec, short(g.SHA256)) }

	// API5: per-partner operation allow lists.
	var lists, open []string
	for _, s := range c.Services {
		g, ok := guarded[s.Name]
		switch {
		case !ok:
			open = append(open, s.Name+" (no API guard)")
		case len(g.Unrestricted) > 0:
			open = append(open, fmt.Sprintf("%s (no operation list for %s)", s.Name, strings.Join(g.Unrestricted, ", ")))
		default:
			var per []string
			for _, p := range slices.Sorted(maps.Keys(g.AllowLists)) {
				per = append(per, fmt.Sprintf("%s %d of %d operations", p, g.AllowLists[p], g.Operations))
			}
			lists = append(lists, spec(g)+": "+strings.Join(per, ", "))
		}
	}
	if len(c.APIGuards) > 0 {
		api5.Evidence = append(api5.Evidence,
			fact("API requests the guard refused: not allowed (403) / no such operation (404) / method not allowed (404)", "%d / %d / %d",
				denied("not_allowed"), denied("no_route"), denied("method_not_allowed")))
		if len(missingGuards) > 0 {
			api5.Evidence = append(api5.Evidence, notShown(missingGuards))
		}
		api5.Citations = append(api5.Citations, b.cites(audit.APIDenied)...)
	}
	if len(lists) > 0 {
		api5.Mode = Prevention
		api5.Control += "; per-partner operation allow lists of the API guard, enforced by the exporting daemon before a request reaches the API: " + strings.Join(lists, "; ")
		if len(open) == 0 {
			api5.Status = Mitigated
			api5.Why = "every exported service carries its OpenAPI contract and each allowed partner's list of operations: a call of any other operation or method is answered 403 or 404 by the exporting daemon, counted and audited, and never reaches the API"
		} else {
			api5.Why = "the API guard restricts partners to their listed operations on some services; on the others only the port-level allow list applies: " + strings.Join(open, ", ")
		}
	}

	// API6: per-partner, per-operation rate limits.
	var limited []string
	for _, g := range guards {
		if len(g.RateLimited) > 0 {
			limited = append(limited, g.Service+": "+strings.Join(g.RateLimited, ", "))
		}
	}
	if len(limited) > 0 {
		api6.Status, api6.Mode = Partly, Prevention
		api6.Control = "per-partner, per-operation rate limits of the API guard: " + strings.Join(limited, "; ")
		api6.Why = "a partner calling a limited operation faster than allowed gets 429 with Retry-After from the exporting daemon, which bounds automated use of the flows those operations make up; which flows are sensitive, and abuse that stays within the limits, only the application knows"
		api6.Evidence = []Fact{fact("API requests refused with 429 (rate limited)", "%d", denied("rate_limited"))}
		api6.Citations = b.cites(audit.APIDenied)
	}

	// API9: the contract in force and the runtime inventory.
	if len(guards) > 0 {
		var specs []string
		all := len(c.Services) > 0
		for _, s := range c.Services {
			g, ok := guarded[s.Name]
			if !ok {
				all = false
				continue
			}
			specs = append(specs, fmt.Sprintf("%s: %d operations, %d deprecated", spec(g), g.Operations, len(g.Deprecated)))
		}
		api9.Mode = Detection
		api9.Control += "; OpenAPI contracts in force: " + strings.Join(specs, "; ")
		api9.Evidence = append(api9.Evidence,
			fact("inventory records (dyad.api.inventory)", "%d", ev.Inventories),
			fact("operations called (status classes; cumulative since the daemon started)", "%s", orNone(ev.Operations)),
			fact("deprecated operations still called", "%s", orNone(ev.Deprecated)),
			fact("requests to no documented operation (shadow endpoints)", "%s", orNone(ev.Shadow)))
		api9.Citations = append(api9.Citations, b.cites(audit.APIInventory)...)
		switch {
		case ev.Inventories == 0:
			api9.Why = "the API guard's contracts are in force, but no inventory was recorded in the period (no partner called a guarded service, or the period is shorter than the inventory interval): the runtime inventory is not evidenced"
		case all:
			api9.Status = Mitigated
			api9.Why = "every exported service is described by the OpenAPI contract in force (named by its SHA-256), and the daemon's inventory shows which operations each partner called, calls of deprecated operations and requests to undocumented endpoints; APIs exposed other than through dyad remain invisible to it"
		default:
			api9.Why = "the services with an API guard are inventoried by operation, deprecated calls and shadow endpoints; the others only by service"
		}
	}
	if len(missingGuards) > 0 && len(c.APIGuards) > 0 {
		api9.Evidence = append(api9.Evidence, notShown(missingGuards))
	}

	// API10 and API3: the partners' responses checked against their
	// contracts.
	blocking, allBlock := 0, true
	var checked []string
	for _, ch := range checks {
		mode := "reported"
		if ch.Block {
			mode, blocking = "blocked", blocking+1
		} else {
			allBlock = false
		}
		checked = append(checked, fmt.Sprintf("%s (SHA-256 %s, broken responses %s)", ch.Forward, short(ch.SHA256), mode))
	}
	invalid := 0
	for _, n := range ev.ResponseInvalid {
		invalid += n
	}
	if len(c.ResponseChecks) > 0 {
		api10.Evidence = append(api10.Evidence,
			fact("responses that broke the partner's contract", "%d (%s)", invalid, counts(ev.ResponseInvalid)),
			fact("of which replaced by a 502", "%d", ev.ResponseBlocked))
		if len(missingChecks) > 0 {
			api10.Evidence = append(api10.Evidence, notShown(missingChecks))
		}
		api10.Citations = append(api10.Citations, b.cites(audit.APIResponseInvalid)...)
	}
	if len(checks) > 0 {
		api10.Control += "; the partner's responses are checked against its OpenAPI contract (status, headers, body schema) on: " + strings.Join(checked, "; ")
		api10.Mode = Detection
		if blocking > 0 {
			api10.Mode = Both
		}
		switch {
		case len(checks) == len(c.Forwards) && allBlock:
			api10.Status = Mitigated
			api10.Why = "every partner API consumed through dyad is checked against the partner's contract: a response with an undeclared status, a schema violation or undeclared properties is audited and replaced by a 502 before the application sees it"
		case len(checks) == len(c.Forwards):
			api10.Why = "every partner API consumed through dyad is checked against the partner's contract, but some forwards only report a broken response: the application still receives it"
		default:
			api10.Why = "some partner APIs consumed through dyad are checked against the partner's contract; the others only get an authenticated origin and integrity in transit"
		}
		api10.Outside = "what the contract does not say (business validity of values, redirects the application follows, time limits): in the consuming application"
	}

	var validating []string
	for _, g := range guards {
		if g.ValidateRequest {
			validating = append(validating, g.Service)
		}
	}
	if len(checks) > 0 || len(validating) > 0 {
		api3.Status = Partly
		var parts []string
		if len(checks) > 0 {
			parts = append(parts, "responses checked for properties their schema forbids on "+strings.Join(checked, "; "))
		}
		if len(validating) > 0 {
			parts = append(parts, "request bodies validated against their schemas on "+strings.Join(validating, ", "))
		}
		api3.Control = strings.Join(parts, "; ")
		api3.Mode = Detection
		if blocking > 0 || len(validating) > 0 {
			api3.Mode = Both
		}
		api3.Why = "where a schema forbids undeclared properties (additionalProperties: false), dyad detects a partner's response that exposes more than its contract declares (and with block keeps it from the application), and refuses request bodies that try to set undeclared properties; which declared properties a given caller may read or change is still decided by the API"
		api3.Evidence = []Fact{
			fact("responses with undeclared properties detected", "%d", ev.ResponseInvalid["undeclared_property"]),
			fact("request bodies refused as invalid", "%d", denied("invalid_body")),
		}
		api3.Citations = b.cites(audit.APIResponseInvalid, audit.APIDenied)
	}
}
