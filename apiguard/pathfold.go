package apiguard

import (
	"strings"

	"github.com/getkin/kin-openapi/routers/legacy/pathpattern"
)

// The router matches a path as written; many upstream routers read it
// more loosely before they route: without case (Express and ASP.NET Core
// by default), without a segment's ";..." (Tomcat, Spring MVC), or with a
// last segment's ".ext" taken as the format (Rails; Spring MVC before 5.3).
// Where an operation's path parameter sits next to a static segment of
// another operation (/items/{id} and /items/export), such a value
// (EXPORT, export;x=1, export.json) is the parameter to the guard and the
// static segment to the upstream: the peer would run an operation its
// list may not name, validated as another. The guard refuses such a
// request (path_not_canonical). THREATS P2, tested by
// TestGuardUpstreamPathNormalisation.

// loose is a spec's routes as a loose upstream reads them: each operation
// under its method and its folded template (with each server base path),
// and the folded static segments any template has.
type loose struct {
	// tree matches a folded path to its *Operation; nil when two
	// operations' templates fold alike (the spec tells them apart by
	// case, so its upstream must too).
	tree   *pathpattern.Node
	static map[string]bool
}

// newLoose builds the loose routes of ops under bases ("" for none).
func newLoose(ops []*Operation, bases []string) *loose {
	l := &loose{tree: &pathpattern.Node{}, static: map[string]bool{}}
	for _, o := range ops {
		for _, base := range bases {
			full := base + o.Path
			node, err := l.tree.CreateNode(o.Method+" "+foldPath(full), nil)
			if err != nil || node.Value != nil && node.Value != o {
				return &loose{static: l.static}
			}
			node.Value = o
			for _, seg := range strings.Split(full, "/") {
				if seg != "" && !strings.Contains(seg, "{") {
					l.static[foldPath(seg)] = true
				}
			}
		}
	}
	return l
}

// markLooseRisk sets each operation's looseRisk: whether a loose reading
// of one of its paths could be another operation's, that is whether some
// other operation of its method has as many segments, a static segment
// where it has a parameter, and its static segments equal (folded) where
// both have one. An operation without such a neighbour (most) pays
// nothing for the loose check. A wildcard ({x*}) template counts as at
// risk.
func markLooseRisk(ops []*Operation) {
	segs := func(o *Operation) []string { return strings.Split(strings.Trim(o.Path, "/"), "/") }
	variable := func(seg string) bool { return strings.Contains(seg, "{") }
	for _, a := range ops {
		as := segs(a)
		if strings.Contains(a.Path, "*}") {
			a.looseRisk = true
			continue
		}
		for _, b := range ops {
			if b == a || b.Method != a.Method {
				continue
			}
			bs := segs(b)
			if strings.Contains(b.Path, "*}") {
				a.looseRisk = true
				break
			}
			if len(bs) != len(as) {
				continue
			}
			fits, shadows := true, false
			for i := range as {
				switch av, bv := variable(as[i]), variable(bs[i]); {
				case av && !bv:
					shadows = true
				case !av && !bv && foldPath(as[i]) != foldPath(bs[i]):
					fits = false
				}
			}
			if fits && shadows {
				a.looseRisk = true
				break
			}
		}
	}
}

// foldPath is s folded for a comparison without case (foldedName).
func foldPath(s string) string {
	f, _ := foldedName(s)
	return f
}

// other says whether a loose upstream would route method and path (the
// decoded path, which the router matched to op with params) to another
// operation than op. Only a parameter whose loose reading is some static
// segment of the spec (rare) costs more than a map lookup per parameter.
func (l *loose) other(method, path string, op *Operation, params map[string]string) bool {
	if l == nil || l.tree == nil {
		return false
	}
	suspect := false
	for _, v := range params {
		if l.suspect(v) {
			suspect = true
			break
		}
	}
	if !suspect {
		return false
	}
	segs := strings.Split(path, "/")
	last := -1
	for i, seg := range segs {
		seg, _, _ = strings.Cut(seg, ";")
		segs[i] = foldPath(seg)
		if segs[i] != "" {
			last = i
		}
	}
	if l.routesElsewhere(method+" "+strings.Join(segs, "/"), op) {
		return true
	}
	if last >= 0 {
		if name, _, ok := strings.Cut(segs[last], "."); ok {
			segs[last] = name
			return l.routesElsewhere(method+" "+strings.Join(segs, "/"), op)
		}
	}
	return false
}

// suspect says whether a parameter's value, read loosely, is a static
// segment of the spec (or spans segments, for a wildcard).
func (l *loose) suspect(v string) bool {
	if strings.IndexByte(v, '/') >= 0 {
		return true
	}
	v, _, _ = strings.Cut(v, ";")
	v = foldPath(v)
	if l.static[v] {
		return true
	}
	name, _, ok := strings.Cut(v, ".")
	return ok && l.static[name]
}

func (l *loose) routesElsewhere(key string, op *Operation) bool {
	node, _ := l.tree.Match(key)
	return node != nil && node.Value != nil && node.Value != op
}
