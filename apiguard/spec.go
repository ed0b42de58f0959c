// Package apiguard enforces a partner's OpenAPI contract on the HTTP/1.1
// requests inside a tunnel stream (README, "API guard"): it loads the spec
// (this file), matches each request to an operation, checks that the peer may
// call it, validates it and rate-limits it, and keeps the inventory of what
// was called (OWASP API9).
//
// Parsing, routing and validation are github.com/getkin/kin-openapi's; the
// request stream is read with net/http's parser. Nothing here is an
// OpenAPI validator written by hand.
package apiguard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// MaxSpecBytes bounds a spec file: a larger one is refused before it is
// parsed (THREATS P5/P8: a spec is operator input, but a wrong path must
// not make the daemon read a disk image).
const MaxSpecBytes = 16 << 20

// Operation is one operation of a spec.
type Operation struct {
	// Key names the operation in configuration, events and the inventory:
	// its operationId, or "METHOD /template" when it has none.
	Key        string
	Method     string // upper case
	Path       string // the path template as written, e.g. /payments/{id}
	Tags       []string
	Deprecated bool
	// BodySchema says the request body has a schema to validate (some
	// content type of its requestBody has one); other bodies stream.
	BodySchema bool
	// params says the operation or its path declares parameters: without
	// them and without BodySchema, request validation has nothing to check
	// and the guard skips kin-openapi's validator for the operation.
	params bool
	// query says it declares query parameters, singleQuery those that
	// take one value, overrideOK a method override field or _method
	// (query.go).
	query       bool
	singleQuery []string
	overrideOK  bool
	// headerParams are its header parameters (canonical field names),
	// cookieParams its cookie parameters: each may be given once.
	headerParams, cookieParams []string
	// queryParams are its query parameters, for checkQuery's aliases.
	queryParams []queryParam
	// formOK says its requestBody declares a form media type
	// (urlencoded or multipart/form-data): a form body elsewhere is a
	// method override's carrier (formOverride).
	formOK bool
	// noBody says the operation declares no requestBody.
	noBody bool
	// looseRisk says a loose upstream could read one of its paths as
	// another operation's (markLooseRisk): only then does decide ask
	// loose.other.
	looseRisk bool

	op *openapi3.Operation
}

// Spec is a loaded, validated OpenAPI 3.0 or 3.1 document. It is immutable
// once loaded and safe for concurrent use.
type Spec struct {
	File   string // as named in the configuration (resolved path)
	SHA256 string // of the file's bytes, hex: names the contract in force
	// Version is the document's openapi field, e.g. 3.0.3 or 3.1.0.
	Version    string
	Operations []*Operation // sorted by Key

	doc    *openapi3.T
	router routers.Router
	byKey  map[string]*Operation
	byOp   map[*openapi3.Operation]*Operation

	// static remembers the router's matches of paths without parameters,
	// by method and path: the router allocates for every match (its
	// parameter map, its key strings), a lookup here does not. Replaced
	// whole on each addition (copy on write): only a spec's own static
	// paths enter, so it stays small (at most maxStatic entries).
	static   atomic.Pointer[map[string]map[string]*routers.Route]
	staticMu sync.Mutex // serialises additions to static

	// loose is the routes as a loose upstream reads them (pathfold.go).
	loose *loose

	// checks31 holds a 3.1 document's body schemas' checks (schema31),
	// by *openapi3.Schema, each built on first use.
	checks31 sync.Map
}

// maxStatic bounds the remembered static routes (a spec has far fewer).
const maxStatic = 1024

// findRoute is the router's FindRoute, through the static-path memo for a
// path with no escapes (so the key is exactly what the router matched).
func (s *Spec) findRoute(req *http.Request) (*routers.Route, map[string]string, error) {
	cacheable := req.URL.RawPath == ""
	if cacheable {
		if m := s.static.Load(); m != nil {
			if r := (*m)[req.Method][req.URL.Path]; r != nil {
				return r, nil, nil
			}
		}
	}
	route, params, err := s.router.FindRoute(routable(s, req))
	// A parameter holds a '%' only when the target does.
	if err == nil && len(s.doc.Servers) > 0 && len(params) > 0 && strings.IndexByte(req.RequestURI, '%') >= 0 {
		decodeParams(params)
	}
	if err == nil && cacheable && len(params) == 0 && !strings.Contains(route.Path, "{") {
		s.remember(req.Method, req.URL.Path, route)
	}
	return route, params, err
}

// routable is req as the router must see it. With servers, kin-openapi's
// router matches the escaped path (URL.String), without them the decoded
// one; an upstream that decodes the path routes on the decoded one. So a
// path escaped where it need not be (/items/export%3Aall, RawPath set) is
// given to the router in its canonical escaping (Path escaped by net/url,
// which leaves ':' as it is), and a server's router matches it as such an
// upstream reads it: /items/export:all, not /items/{id}. (Escaped
// unreserved characters, %65 for e, canonicalPath refuses.) THREATS P2,
// tested by TestGuardEscapedPathRoutes. Only such requests pay for the
// copy.
func routable(s *Spec, req *http.Request) *http.Request {
	if req.URL.RawPath == "" || len(s.doc.Servers) == 0 {
		return req
	}
	r := *req
	u := *req.URL
	u.RawPath = ""
	r.URL = &u
	return &r
}

// decodeParams decodes a server router's path parameters, which it takes
// from the escaped path: kin-openapi validates them as they are, and
// upstream reads them decoded (as the router without servers gives them).
func decodeParams(params map[string]string) {
	for k, v := range params {
		if strings.IndexByte(v, '%') < 0 {
			continue
		}
		if d, err := url.PathUnescape(v); err == nil {
			params[k] = d
		}
	}
}

func (s *Spec) remember(method, path string, r *routers.Route) {
	s.staticMu.Lock()
	defer s.staticMu.Unlock()
	old := s.static.Load()
	n := 0
	if old != nil {
		for _, byPath := range *old {
			n += len(byPath)
		}
	}
	if n >= maxStatic {
		return
	}
	m := make(map[string]map[string]*routers.Route, n+1)
	if old != nil {
		for k, byPath := range *old {
			m[k] = byPath
		}
	}
	byPath := make(map[string]*routers.Route, len(m[method])+1)
	for k, v := range m[method] {
		byPath[k] = v
	}
	byPath[path] = r
	m[method] = byPath
	s.static.Store(&m)
}

// SpecError is a spec that could not be loaded: File names it, Err is the
// reader's or kin-openapi's own error.
type SpecError struct {
	File string
	Err  error
}

func (e *SpecError) Error() string { return "API spec " + e.File + ": " + e.Err.Error() }

func (e *SpecError) Unwrap() error { return e.Err }

// LoadSpec reads and validates the spec at path.
func LoadSpec(path string) (*Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &SpecError{path, err}
	}
	defer f.Close()
	// A FIFO or a device would block or never end the read.
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		if err == nil {
			err = errors.New("not a regular file")
		}
		return nil, &SpecError{path, err}
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxSpecBytes+1))
	if err != nil {
		return nil, &SpecError{path, err}
	}
	if len(data) > MaxSpecBytes {
		return nil, &SpecError{path, fmt.Errorf("larger than %d bytes", MaxSpecBytes)}
	}
	return ParseSpec(path, data)
}

// ParseSpec validates data as the spec named file. External references
// ($ref to other files or URLs) are refused: the contract in force is the
// one file whose SHA-256 the configuration events carry.
func ParseSpec(file string, data []byte) (s *Spec, err error) {
	// kin-openapi is fuzzed upstream; a panic on some input still must
	// not take the daemon down with it (THREATS P8, FuzzSpec).
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, &SpecError{file, fmt.Errorf("spec parser failed: %v", r)}
		}
	}()
	loader := openapi3.NewLoader()
	loader.IsExternalRefsAllowed = false
	doc, err := loader.LoadFromData(data)
	if err != nil {
		return nil, &SpecError{file, err}
	}
	if doc.OpenAPI == "" || !strings.HasPrefix(doc.OpenAPI, "3.") {
		return nil, &SpecError{file, fmt.Errorf("openapi %q: only OpenAPI 3.0 and 3.1 documents are supported", doc.OpenAPI)}
	}
	if doc.Paths == nil || doc.Paths.Len() == 0 {
		return nil, &SpecError{file, errors.New("no paths: a guard with no operation would refuse everything")}
	}
	// The guard sees the request line's path only; the tunnel, not the
	// Host header, chose the upstream. So servers count by their base path.
	rdoc := *doc
	rdoc.Servers = basePaths(doc.Servers)
	router, err := legacy.NewRouter(&rdoc)
	if err != nil {
		return nil, &SpecError{file, err}
	}
	sum := sha256.Sum256(data)
	s = &Spec{File: file, SHA256: hex.EncodeToString(sum[:]), Version: doc.OpenAPI, doc: &rdoc, router: router,
		byKey: map[string]*Operation{}, byOp: map[*openapi3.Operation]*Operation{}}
	for _, path := range doc.Paths.InMatchingOrder() {
		item := doc.Paths.Value(path)
		for method, op := range item.Operations() {
			o := &Operation{Key: op.OperationID, Method: strings.ToUpper(method), Path: path, Tags: op.Tags,
				Deprecated: op.Deprecated, BodySchema: hasBodySchema(op), op: op,
				params: len(op.Parameters) > 0 || len(item.Parameters) > 0}
			o.singleQuery, o.query, o.overrideOK = queryRules(item, op)
			o.headerParams, o.cookieParams, o.queryParams = repeatRules(item, op)
			o.noBody = op.RequestBody == nil
			o.formOK = declaresForm(op)
			if o.Key == "" {
				o.Key = o.Method + " " + path
			}
			if _, dup := s.byKey[o.Key]; dup {
				return nil, &SpecError{file, fmt.Errorf("operation %q is defined twice", o.Key)}
			}
			s.byKey[o.Key] = o
			s.byOp[op] = o
			s.Operations = append(s.Operations, o)
		}
	}
	if len(s.Operations) == 0 {
		// Paths without operations (FuzzSpec/4c415e56ca0d8549).
		return nil, &SpecError{file, errors.New("no operations: a guard with no operation would refuse everything")}
	}
	sort.Slice(s.Operations, func(i, j int) bool { return s.Operations[i].Key < s.Operations[j].Key })
	bases := []string{""}
	if len(rdoc.Servers) > 0 {
		bases = bases[:0]
		for _, sv := range rdoc.Servers {
			bases = append(bases, sv.URL)
		}
	}
	s.loose = newLoose(s.Operations, bases)
	markLooseRisk(s.Operations)
	return s, nil
}

// basePaths turns servers into path-only servers (their base paths); none
// when any server is at the root, so paths match as written.
func basePaths(servers openapi3.Servers) openapi3.Servers {
	var out openapi3.Servers
	seen := map[string]bool{}
	for _, sv := range servers {
		p, err := sv.BasePath()
		p = strings.TrimSuffix(p, "/")
		if err != nil || p == "" {
			return nil
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, &openapi3.Server{URL: p})
		}
	}
	return out
}

func hasBodySchema(op *openapi3.Operation) bool {
	if op.RequestBody == nil || op.RequestBody.Value == nil {
		return false
	}
	for _, mt := range op.RequestBody.Value.Content {
		if mt != nil && mt.Schema != nil {
			return true
		}
	}
	return false
}

// declaresForm says op's requestBody declares a form media type.
func declaresForm(op *openapi3.Operation) bool {
	if op.RequestBody == nil || op.RequestBody.Value == nil {
		return false
	}
	for name := range op.RequestBody.Value.Content {
		if formType(name) {
			return true
		}
	}
	return false
}

// Operation returns the operation with key (operationId or "METHOD
// /template"), or nil.
func (s *Spec) Operation(key string) *Operation { return s.byKey[key] }

// Resolve returns the operations a configuration entry names: an
// operationId (or "METHOD /template"), "tag:NAME" for every operation with
// that tag, or "*" for all. An entry that names nothing is an error, so a
// typo cannot silently allow or limit nothing.
func (s *Spec) Resolve(ref string) ([]*Operation, error) {
	if ref == "*" {
		return s.Operations, nil
	}
	if tag, ok := strings.CutPrefix(ref, "tag:"); ok {
		var out []*Operation
		for _, o := range s.Operations {
			for _, t := range o.Tags {
				if t == tag {
					out = append(out, o)
					break
				}
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("no operation of %s has tag %q", s.File, tag)
		}
		return out, nil
	}
	if o := s.byKey[ref]; o != nil {
		return []*Operation{o}, nil
	}
	return nil, fmt.Errorf("%s has no operation %q (an operationId, \"tag:NAME\" or \"*\")", s.File, ref)
}

// validateDoc is the context the validators run in.
var validateDoc = context.Background()
