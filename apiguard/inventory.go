package apiguard

import (
	"sort"
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
	ops     map[*Operation]*OperationCount
	shadow  map[string]*ShadowCount
	refused map[string]uint64
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
		p = &peerInventory{ops: map[*Operation]*OperationCount{}, shadow: map[string]*ShadowCount{}, refused: map[string]uint64{}}
		inv.peers[name] = p
	}
	return p
}

// record counts an answer with status to peer's call of op.
func (inv *Inventory) record(peer string, op *Operation, status int) {
	if op == nil {
		return
	}
	now := time.Now()
	inv.mu.Lock()
	defer inv.mu.Unlock()
	p := inv.peer(peer)
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

// shadow counts a request that matched no operation.
func (inv *Inventory) shadow(peer, method, shape string) {
	now := time.Now()
	inv.mu.Lock()
	defer inv.mu.Unlock()
	p := inv.peer(peer)
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

// refused counts a request or stream refused before routing.
func (inv *Inventory) refused(peer, reason string) {
	inv.mu.Lock()
	inv.peer(peer).refused[reason]++
	inv.mu.Unlock()
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
