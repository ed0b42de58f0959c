package apiguard

import (
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxShadowShapes bounds the shadow shapes kept per peer: a peer probing
// random paths fills them, and the rest count under "_OTHER" (THREATS P5).
const maxShadowShapes = 256

// Inventory is what each peer called on a guarded service (OWASP API9):
// per operation the answers by status class, first and last seen; per
// shadow request (one that matches no operation) its method and path
// shape; and the requests and streams refused before routing, by reason.
// Counts are exact; it is safe for concurrent use.
type Inventory struct {
	mu    sync.Mutex // guards peers
	peers map[string]*peerInventory
}

type peerInventory struct {
	ops       map[*Operation]*OperationCount
	shadow    map[string]*ShadowCount
	refused   map[string]uint64
	decisions map[decisionKey]uint64 // but forwarded ones
	// forwarded counts the forwarded requests by upstream's status class
	// (status/100, 0-9): the decision of nearly every request, counted
	// without hashing its key.
	forwarded [10]uint64
}

// Outcomes of the guard's decisions (Decision.Outcome).
const (
	OutcomeForwarded     = "forwarded"      // passed on; the status is upstream's answer's class
	OutcomeDenied        = "denied"         // answered by the guard (dyad.api.denied)
	OutcomeFailed        = "failed"         // allowed, but upstream could not be written or read: 502
	OutcomeStreamRefused = "stream_refused" // not HTTP/1.1 (dyad.api.stream_refused)
)

// decisionKey is a Decision as counted: status is upstream's status class
// (1-5) when forwarded, the guard's own status otherwise, so the keys stay
// few (bounded by fixed reasons and the guard's statuses) whatever peers
// or upstreams send.
type decisionKey struct {
	outcome string
	status  int
	reason  string
}

// Decision is one class of the guard's decisions on a peer's requests.
type Decision struct {
	Outcome string // Outcome*
	Status  string // forwarded: upstream's status class ("2xx"); denied, failed: the guard's status ("403"); stream_refused: ""
	Reason  string // the denial's reason; empty when forwarded
}

// DecisionCount is how many of one peer's requests got one Decision.
type DecisionCount struct {
	Peer string
	Decision
	Count uint64
}

// Size is how much of the inventory one peer fills.
type Size struct {
	Peer       string
	Operations int // operations called
	Deprecated int // deprecated operations among them
	Shadow     int // shadow shapes kept (at most maxShadowShapes+1)
}

// OperationCount is one peer's calls of one operation.
type OperationCount struct {
	Operation  string    `json:"operation"`
	Method     string    `json:"method"`
	Path       string    `json:"path"`
	Deprecated bool      `json:"deprecated,omitempty"`
	Status     [6]uint64 `json:"-"` // by status class: [1] 1xx … [5] 5xx; [0] unused
	First      time.Time `json:"first_seen"`
	Last       time.Time `json:"last_seen"`
}

// ShadowCount is one peer's requests of one method and path shape that
// match no operation of the spec.
type ShadowCount struct {
	Method string    `json:"method"`
	Shape  string    `json:"shape"`
	Count  uint64    `json:"count"`
	First  time.Time `json:"first_seen"`
	Last   time.Time `json:"last_seen"`
}

// PeerInventory is one peer's part of an inventory snapshot.
type PeerInventory struct {
	Peer       string             `json:"peer"`
	Operations []OperationSummary `json:"operations,omitempty"`
	// DeprecatedCalled lists the deprecated operations the peer still calls.
	DeprecatedCalled []string          `json:"deprecated_called,omitempty"`
	Shadow           []ShadowCount     `json:"shadow,omitempty"`
	Refused          map[string]uint64 `json:"refused,omitempty"` // before routing, by reason
}

// OperationSummary is OperationCount with its status classes named.
type OperationSummary struct {
	OperationCount
	Statuses map[string]uint64 `json:"statuses"` // "2xx": n
}

func newInventory() *Inventory { return &Inventory{peers: map[string]*peerInventory{}} }

func (inv *Inventory) peer(name string) *peerInventory {
	p := inv.peers[name]
	if p == nil {
		p = &peerInventory{ops: map[*Operation]*OperationCount{}, shadow: map[string]*ShadowCount{}, refused: map[string]uint64{},
			decisions: map[decisionKey]uint64{}}
		inv.peers[name] = p
	}
	return p
}

// record counts an answer with status to peer's call of op (nil: the
// request matched none), and the decision that gave it.
func (inv *Inventory) record(peer string, op *Operation, status int, outcome, reason string) {
	inv.mu.Lock()
	p := inv.peer(peer)
	inv.mu.Unlock()
	inv.recordFor(p, op, status, outcome, reason)
}

// peerFor returns peer's part of the inventory, for recordFor: a stream
// looks it up once (peers stay for the inventory's life).
func (inv *Inventory) peerFor(peer string) *peerInventory {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.peer(peer)
}

// recordFor is record on peer's part p (peerFor).
func (inv *Inventory) recordFor(p *peerInventory, op *Operation, status int, outcome, reason string) {
	now := time.Now()
	inv.mu.Lock()
	inv.countFor(p, op, status, outcome, reason, now)
	inv.mu.Unlock()
}

// countFor is recordFor's counting, with inv.mu held (no defer: it runs
// for every request).
func (inv *Inventory) countFor(p *peerInventory, op *Operation, status int, outcome, reason string, now time.Time) {
	if class := status / 100; outcome == OutcomeForwarded && reason == "" && class >= 0 && class < len(p.forwarded) {
		p.forwarded[class]++
	} else {
		k := decisionKey{outcome, status, reason}
		if outcome == OutcomeForwarded {
			k.status = class
		}
		p.decisions[k]++
	}
	if op == nil {
		return
	}
	c := p.ops[op]
	if c == nil {
		c = &OperationCount{Operation: op.Key, Method: op.Method, Path: op.Path, Deprecated: op.Deprecated, First: now}
		p.ops[op] = c
	}
	if class := status / 100; class >= 1 && class <= 5 {
		c.Status[class]++
	}
	c.Last = now
}

// shadow counts a request that matched no operation, denied with status
// for reason.
func (inv *Inventory) shadow(peer, method, shape string, status int, reason string) {
	now := time.Now()
	inv.mu.Lock()
	defer inv.mu.Unlock()
	p := inv.peer(peer)
	p.decisions[decisionKey{OutcomeDenied, status, reason}]++
	k := method + " " + shape
	c := p.shadow[k]
	if c == nil {
		if len(p.shadow) >= maxShadowShapes {
			method, shape, k = "_OTHER", "_OTHER", "_OTHER _OTHER"
			c = p.shadow[k]
		}
		if c == nil {
			c = &ShadowCount{Method: method, Shape: shape, First: now}
			p.shadow[k] = c
		}
	}
	c.Count++
	c.Last = now
}

// refused counts a request (status: the guard's answer) or a stream
// (status 0) refused before routing.
func (inv *Inventory) refused(peer string, status int, reason string) {
	outcome := OutcomeDenied
	if status == 0 {
		outcome = OutcomeStreamRefused
	}
	inv.mu.Lock()
	p := inv.peer(peer)
	p.refused[reason]++
	p.decisions[decisionKey{outcome, status, reason}]++
	inv.mu.Unlock()
}

// Decisions returns every peer's counts by decision, sorted. Counts are
// exact: each request the guard answered or forwarded is in one of them.
func (inv *Inventory) Decisions() []DecisionCount {
	inv.mu.Lock()
	var out []DecisionCount
	for name, p := range inv.peers {
		for class, n := range p.forwarded {
			if n > 0 {
				out = append(out, DecisionCount{Peer: name, Decision: Decision{Outcome: OutcomeForwarded, Status: strconv.Itoa(class) + "xx"}, Count: n})
			}
		}
		for k, n := range p.decisions {
			d := Decision{Outcome: k.outcome, Reason: k.reason}
			switch {
			case k.outcome == OutcomeForwarded:
				d.Status = strconv.Itoa(k.status) + "xx"
			case k.status != 0:
				d.Status = strconv.Itoa(k.status)
			}
			out = append(out, DecisionCount{Peer: name, Decision: d, Count: n})
		}
	}
	inv.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Peer != b.Peer {
			return a.Peer < b.Peer
		}
		if a.Outcome != b.Outcome {
			return a.Outcome < b.Outcome
		}
		if a.Status != b.Status {
			return a.Status < b.Status
		}
		return a.Reason < b.Reason
	})
	return out
}

// Sizes returns how much of the inventory each peer fills, sorted by peer.
func (inv *Inventory) Sizes() []Size {
	inv.mu.Lock()
	out := make([]Size, 0, len(inv.peers))
	for name, p := range inv.peers {
		s := Size{Peer: name, Operations: len(p.ops), Shadow: len(p.shadow)}
		for _, c := range p.ops {
			if c.Deprecated {
				s.Deprecated++
			}
		}
		out = append(out, s)
	}
	inv.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

// Snapshot returns a copy of the inventory, peers and entries sorted.
func (inv *Inventory) Snapshot() []PeerInventory {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	out := make([]PeerInventory, 0, len(inv.peers))
	for name, p := range inv.peers {
		pi := PeerInventory{Peer: name}
		for _, c := range p.ops {
			s := OperationSummary{OperationCount: *c, Statuses: map[string]uint64{}}
			for class := 1; class <= 5; class++ {
				if c.Status[class] > 0 {
					s.Statuses[string(rune('0'+class))+"xx"] = c.Status[class]
				}
			}
			pi.Operations = append(pi.Operations, s)
			if c.Deprecated {
				pi.DeprecatedCalled = append(pi.DeprecatedCalled, c.Operation)
			}
		}
		for _, c := range p.shadow {
			pi.Shadow = append(pi.Shadow, *c)
		}
		if len(p.refused) > 0 {
			pi.Refused = map[string]uint64{}
			for k, v := range p.refused {
				pi.Refused[k] = v
			}
		}
		sort.Slice(pi.Operations, func(i, j int) bool { return pi.Operations[i].Operation < pi.Operations[j].Operation })
		sort.Strings(pi.DeprecatedCalled)
		sort.Slice(pi.Shadow, func(i, j int) bool {
			return pi.Shadow[i].Shape+pi.Shadow[i].Method < pi.Shadow[j].Shape+pi.Shadow[j].Method
		})
		out = append(out, pi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

// Shape is a path with its identifiers replaced, so the inventory and
// events name the shape of a request, never its values: a segment of
// digits becomes {num}; one of 1-24 letters, '-' and '_' stays (lower
// case); any other becomes {id}. At most 8 segments are kept ("/…" marks
// more). Example: /v1/payments/123/x → /v1/payments/{num}/x (v1 has a digit
// after a letter: kept as a version, see versionSegment).
func Shape(path string) string {
	var b strings.Builder
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	for i, s := range segs {
		if i == 8 {
			b.WriteString("/…")
			break
		}
		b.WriteByte('/')
		switch {
		case s == "":
		case allDigits(s):
			b.WriteString("{num}")
		case wordSegment(s) || versionSegment(s):
			b.WriteString(strings.ToLower(s))
		default:
			b.WriteString("{id}")
		}
	}
	return b.String()
}

func allDigits(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

func wordSegment(s string) bool {
	if len(s) > 24 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// versionSegment is v1, v2, V10: an API version, not an identifier.
func versionSegment(s string) bool {
	return len(s) >= 2 && len(s) <= 4 && (s[0] == 'v' || s[0] == 'V') && allDigits(s[1:])
}
