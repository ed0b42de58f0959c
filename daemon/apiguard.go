package daemon

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/apiguard"
	"github.com/dyad-tunnel/dyad/audit"
)

// inventoryInterval is how often dyad.api.inventory is emitted (and once
// more when the daemon stops).
const inventoryInterval = 5 * time.Minute

// wireGuards gives each guarded service of cfg its guard: the one already
// running (its inventory and buckets stay), or a new one. The returned
// function puts cfg's policies in force; call it once cfg is applied.
func (d *Daemon) wireGuards(cfg *Config) func() {
	d.apiMu.Lock()
	defer d.apiMu.Unlock()
	var apply []func()
	next := map[string]*apiguard.Guard{}
	for i := range cfg.Tunnel.Services {
		s := &cfg.Tunnel.Services[i]
		p := cfg.APIs[s.Name]
		if p == nil {
			continue
		}
		g := d.guards[s.Name]
		if g == nil {
			g = apiguard.NewGuard(p, d.au.auditor)
		} else {
			apply = append(apply, func() { g.SetPolicy(p) })
		}
		next[s.Name] = g
		s.Guard = g
	}
	return func() {
		d.apiMu.Lock()
		defer d.apiMu.Unlock()
		for _, f := range apply {
			f()
		}
		d.guards = next
	}
}

// apiGuards returns the guards in force by service name.
func (d *Daemon) apiGuards() map[string]*apiguard.Guard {
	d.apiMu.Lock()
	defer d.apiMu.Unlock()
	return d.guards
}

// apiMetrics reads the guards in force for /metrics: their decisions and
// inventory sizes, by peer and service. A guard a reload removed takes its
// counts with it (a counter reset, as after a restart).
func (d *Daemon) apiMetrics() ([]audit.APICount, []audit.APISize) {
	var counts []audit.APICount
	var sizes []audit.APISize
	for name, g := range d.apiGuards() {
		inv := g.Inventory()
		for _, c := range inv.Decisions() {
			counts = append(counts, audit.APICount{Peer: c.Peer, Service: name, Outcome: c.Outcome, Status: c.Status, Reason: c.Reason, N: int64(c.Count)})
		}
		for _, s := range inv.Sizes() {
			sizes = append(sizes, audit.APISize{Peer: s.Peer, Service: name, Operations: int64(s.Operations), Deprecated: int64(s.Deprecated), Shadow: int64(s.Shadow)})
		}
	}
	return counts, sizes
}

// APIStatus is a guarded service in /statusz.
type APIStatus struct {
	Spec       string                   `json:"spec"`
	SHA256     string                   `json:"spec_sha256"`
	Version    string                   `json:"openapi"`
	Operations int                      `json:"operations"`
	Inventory  []apiguard.PeerInventory `json:"inventory"`
}

func (d *Daemon) apiStatus() map[string]APIStatus {
	out := map[string]APIStatus{}
	for name, g := range d.apiGuards() {
		p := g.Policy()
		out[name] = APIStatus{Spec: p.Spec.File, SHA256: p.Spec.SHA256, Version: p.Spec.Version,
			Operations: len(p.Spec.Operations), Inventory: g.Inventory().Snapshot()}
	}
	return out
}

// emitInventory emits dyad.api.inventory for each peer that called a
// guarded service since the previous call (last: the peers' last-seen
// times then).
func (d *Daemon) emitInventory(last map[string]time.Time) {
	guards := d.apiGuards()
	names := make([]string, 0, len(guards))
	for n := range guards {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		g := guards[name]
		for _, pi := range g.Inventory().Snapshot() {
			seen := latest(pi)
			k := name + "\x00" + pi.Peer
			if !seen.After(last[k]) {
				continue
			}
			last[k] = seen
			ops := make([]string, 0, len(pi.Operations))
			for _, o := range pi.Operations {
				var cls []string
				for _, c := range []string{"1xx", "2xx", "3xx", "4xx", "5xx"} {
					if n := o.Statuses[c]; n > 0 {
						cls = append(cls, fmt.Sprintf("%s=%d", c, n))
					}
				}
				ops = append(ops, o.Operation+":"+strings.Join(cls, ","))
			}
			var shadow, refused []string
			for _, s := range pi.Shadow {
				shadow = append(shadow, fmt.Sprintf("%s %s=%d", s.Method, s.Shape, s.Count))
			}
			for r, n := range pi.Refused {
				refused = append(refused, fmt.Sprintf("%s=%d", r, n))
			}
			sort.Strings(refused)
			d.au.auditor.Emit(audit.APIInventory, attribute.String(audit.KeyPeer, pi.Peer), attribute.String(audit.KeyService, name),
				attribute.StringSlice(audit.KeyAPIOperations, ops), attribute.StringSlice(audit.KeyAPIDeprecated, nonNil(pi.DeprecatedCalled)),
				attribute.StringSlice(audit.KeyAPIShadow, nonNil(shadow)), attribute.StringSlice(audit.KeyAPIRefused, nonNil(refused)),
				attribute.StringSlice(audit.KeyAPISpecSHA256, []string{name + "=" + g.Policy().Spec.SHA256}))
		}
	}
}

// latest is the last time the peer was seen by the guard; refusals before
// routing carry no time, so a peer with only those counts as seen once.
func latest(pi apiguard.PeerInventory) time.Time {
	var t time.Time
	for _, o := range pi.Operations {
		if o.Last.After(t) {
			t = o.Last
		}
	}
	for _, s := range pi.Shadow {
		if s.Last.After(t) {
			t = s.Last
		}
	}
	if t.IsZero() && len(pi.Refused) > 0 {
		t = time.Unix(1, 0)
	}
	return t
}
