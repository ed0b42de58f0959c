package apiguard

import (
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
)

// This file holds the request checks kin-openapi's validator does not
// make but a contract firewall needs, because an upstream may read a
// request otherwise than the validator did: repeated single-value query
// parameters, queries Go's parser reads only in part, method overrides,
// bodies the contract does not declare, and bodies in another charset.

// Refusal reasons of these checks (400, the connection stays usable).
const (
	// reasonDupParam: a query parameter that takes one value was given
	// several. kin-openapi validates one (the first non-empty); PHP and
	// Rails hand the last to the application.
	reasonDupParam = "duplicate_parameter"
	// reasonBadQuery: a query string Go's parser reads only in part (a
	// ';' separator, a bad %-escape): kin-openapi never sees the pairs it
	// drops, an upstream with another parser may.
	reasonBadQuery = "malformed_query"
	// reasonMethodOverride: a field or query key that asks upstream to
	// run another method than the one the guard matched and allowed.
	reasonMethodOverride = "method_override"
	// reasonUndeclaredBody: a body for an operation whose contract has
	// no requestBody; kin-openapi checks none there.
	reasonUndeclaredBody = "undeclared_body"
	// reasonCharset (415): a body to validate in another charset than
	// UTF-8; kin-openapi reads it as UTF-8 whatever the parameter says.
	reasonCharset = "unsupported_charset"
)

// overrideFields are the request fields frameworks read a method override
// from (canonical form): Rails, Symfony, Laravel and Google's APIs use the
// first; OData and ASP.NET the others.
var overrideFields = [...]string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}

// overrideKey is the query (and form) key Rails, Laravel and Symfony read
// a method override from.
const overrideKey = "_method"

// queryRules returns what op (under item) declares that these checks
// need: its query parameters that take one value, whether it has query
// parameters at all, and whether it declares a method override itself (a
// contract that allows one).
func queryRules(item *openapi3.PathItem, op *openapi3.Operation) (single []string, query, override bool) {
	seen := map[string]bool{}
	// The operation's own first: they replace the path's of the same name.
	for _, list := range []openapi3.Parameters{op.Parameters, item.Parameters} {
		for _, ref := range list {
			p := ref.Value
			if p == nil || seen[p.In+"\x00"+p.Name] {
				continue
			}
			seen[p.In+"\x00"+p.Name] = true
			switch p.In {
			case openapi3.ParameterInQuery:
				query = true
				override = override || p.Name == overrideKey
				if singleValued(p) {
					single = append(single, p.Name)
				}
			case openapi3.ParameterInHeader:
				for _, f := range overrideFields {
					override = override || strings.EqualFold(p.Name, f)
				}
			}
		}
	}
	return single, query, override
}

// singleValued says whether p takes one value: not an array (nor an
// object, whose form style spreads it over several keys).
func singleValued(p *openapi3.Parameter) bool {
	if p.Schema == nil || p.Schema.Value == nil {
		return true // content-encoded: one value, its serialisation
	}
	s := p.Schema.Value
	if s.Type == nil {
		return s.Items == nil && len(s.Properties) == 0
	}
	return !s.Type.Includes(openapi3.TypeArray) && !s.Type.Includes(openapi3.TypeObject)
}

// methodOverride says whether req asks for another method through a field
// or the query key frameworks honour. A query is parsed only when it may
// hold the key (written plain or %-escaped): most requests pay two
// searches.
func methodOverride(req *http.Request) bool {
	for _, f := range overrideFields {
		if len(req.Header[f]) > 0 {
			return true
		}
	}
	raw := req.URL.RawQuery
	if raw == "" || !strings.Contains(raw, "method") && !strings.Contains(raw, "METHOD") && strings.IndexByte(raw, '%') < 0 {
		return false
	}
	q, _ := url.ParseQuery(raw) // the pairs it keeps; an upstream decodes those alike
	if _, ok := q[overrideKey]; ok {
		return true
	}
	// PHP's spellings of _method (.method, " _method", [method): THREATS
	// P2, tested by TestGuardMethodOverrideSpellings.
	for k := range q {
		if queryAlias(k, queryParam{name: overrideKey}) {
			return true
		}
	}
	return false
}

// checkQuery refuses a query that kin-openapi would validate otherwise
// than an upstream may read it: "" when it passes, else the reason and
// the client's detail (parameter names from the spec, never a value).
func checkQuery(op *Operation, raw string) (reason, detail string) {
	if !op.query || raw == "" {
		return "", ""
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return reasonBadQuery, "the query string is not &-separated, %-escaped pairs"
	}
	for _, name := range op.singleQuery {
		if len(q[name]) > 1 {
			return reasonDupParam, "query parameter " + name + " takes one value"
		}
	}
	// A key upstream reads as a declared parameter that kin-openapi does
	// not: THREATS P2, tested by TestGuardQueryKeyAliases.
	for k := range q {
		for _, p := range op.queryParams {
			if k != p.name && queryAlias(k, p) {
				return reasonDupParam, "a query key is another spelling of parameter " + p.name
			}
		}
	}
	return "", ""
}

// queryAlias says whether key, which is not p's name, is read as p by
// some upstream framework: ASP.NET Core compares keys without case; PHP
// drops a key's leading spaces and turns '.', ' ' and an unclosed '[' into
// '_'; PHP, Rails and Express's qs read p[] and p[n] as p (unless p's
// style is deepObject, whose keys are p[property]).
func queryAlias(key string, p queryParam) bool {
	key = strings.TrimLeft(key, " ")
	if i := strings.IndexByte(key, '['); i >= 0 && strings.IndexByte(key[i:], ']') > 0 {
		if p.deep {
			return false
		}
		key = key[:i]
	}
	if len(key) != len(p.name) {
		return false
	}
	for i := 0; i < len(key); i++ {
		a, b := key[i], p.name[i]
		switch a {
		case '.', ' ', '[':
			a = '_'
		}
		if a != b && lower(a) != lower(b) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// queryParam is a declared query parameter as checkQuery's alias rule
// needs it: its name, and whether its style (deepObject) spreads it over
// name[...] keys.
type queryParam struct {
	name string
	deep bool
}

// repeatRules returns op's (under item) header parameters, by canonical
// field name, and cookie parameters: checkRepeats refuses either given
// more than once; and its query parameters, for checkQuery's aliases.
func repeatRules(item *openapi3.PathItem, op *openapi3.Operation) (fields, cookies []string, query []queryParam) {
	for _, list := range []openapi3.Parameters{op.Parameters, item.Parameters} {
		for _, ref := range list {
			p := ref.Value
			switch {
			case p == nil:
			case p.In == openapi3.ParameterInQuery:
				query = append(query, queryParam{p.Name, p.Style == openapi3.SerializationDeepObject})
			case p.In == openapi3.ParameterInHeader && !slices.Contains(fields, http.CanonicalHeaderKey(p.Name)):
				fields = append(fields, http.CanonicalHeaderKey(p.Name))
			case p.In == openapi3.ParameterInCookie && !slices.Contains(cookies, p.Name):
				cookies = append(cookies, p.Name)
			}
		}
	}
	return fields, cookies, query
}

// checkRepeats refuses a header parameter given in more than one field or
// a cookie parameter given more than once (in one Cookie field or
// several): kin-openapi validates the first, an upstream may read the
// last or all of them joined (Node and the CGI gateways join fields,
// Django takes the last cookie). Cookies are split here, not by net/http,
// which drops pairs it cannot read that another parser keeps. THREATS P2,
// tested by TestGuardRepeatedHeaderParameter.
func checkRepeats(op *Operation, req *http.Request) (reason, detail string) {
	for _, f := range op.headerParams {
		if len(req.Header[f]) > 1 {
			return reasonDupParam, "header parameter " + f + " takes one field"
		}
	}
	for _, name := range op.cookieParams {
		n := 0
		for _, line := range req.Header["Cookie"] {
			for part := range strings.SplitSeq(line, ";") {
				k, _, _ := strings.Cut(part, "=")
				if strings.TrimSpace(k) == name {
					n++
				}
			}
		}
		if n > 1 {
			return reasonDupParam, "cookie parameter " + name + " takes one value"
		}
	}
	return "", ""
}

// formType says whether ct (a Content-Type, or a media type range of a
// spec) is a form: application/x-www-form-urlencoded or
// multipart/form-data (or a range that covers one, such as */*). Two
// case-insensitive prefix tests, no allocation.
func formType(ct string) bool {
	const urlencoded, multipart = "application/x-www-form-urlencoded", "multipart/form-data"
	ct = strings.TrimLeft(ct, " \t")
	return len(ct) >= len(urlencoded) && strings.EqualFold(ct[:len(urlencoded)], urlencoded) ||
		len(ct) >= len(multipart) && strings.EqualFold(ct[:len(multipart)], multipart) ||
		strings.HasPrefix(ct, "*/*") || len(ct) >= len("multipart/*") && strings.EqualFold(ct[:len("multipart/*")], "multipart/*") ||
		len(ct) >= len("application/*") && strings.EqualFold(ct[:len("application/*")], "application/*")
}

// formOverride says whether req carries a form body that the operation's
// contract does not declare: Rails (Rack's MethodOverride) and Laravel
// (Symfony's _method) read a POST form body's _method and run that
// method instead of the one the guard allowed. THREATS P2, tested by
// TestGuardFormBodyOverride. Requests with a body pay two prefix tests.
func formOverride(op *Operation, req *http.Request) bool {
	if op.formOK || !hasBody(req) {
		return false
	}
	ct := req.Header["Content-Type"]
	return len(ct) > 0 && formType(ct[0])
}

// undeclaredMedia says whether req's body has another media type than
// those its operation's requestBody declares; kin-openapi checks that only
// for a body it validates against a schema (invalid_body), so this is the
// same check for the bodies that stream. THREATS P2, tested by
// TestGuardFormBodyOverride.
func undeclaredMedia(op *Operation, req *http.Request) bool {
	if op.noBody || op.BodySchema || !hasBody(req) || op.op.RequestBody.Value == nil {
		return false
	}
	return op.op.RequestBody.Value.Content.Get(req.Header.Get("Content-Type")) == nil
}

// underscoreAlias is the refusal for a field of h whose name has '_' where
// a field the guard checks has '-' (X_HTTP_Method_Override,
// X_Original_URL, and with validation op's header parameters): CGI,
// FastCGI and WSGI gateways map '-' and '_' alike (HTTP_X_..., RFC 9110,
// 17.10), so the application reads a field the guard never looked at.
// Other names with '_' (api_key) pass. "" when there is none.
func underscoreAlias(op *Operation, h http.Header, validate bool) string {
	for k := range h {
		if strings.IndexByte(k, '_') < 0 {
			continue
		}
		n := http.CanonicalHeaderKey(strings.ReplaceAll(k, "_", "-"))
		switch {
		case !op.overrideOK && slices.Contains(overrideFields[:], n):
			return reasonMethodOverride
		case n == "X-Original-Url" || n == "X-Rewrite-Url":
			return reasonTarget
		case validate && slices.Contains(op.headerParams, n):
			return reasonDupParam
		}
	}
	return ""
}

// hasBody says whether req carries a body: a length above zero or a
// chunked one (even if its chunks turn out empty: the guard decides before
// reading it).
func hasBody(req *http.Request) bool {
	return req.ContentLength > 0 || len(req.TransferEncoding) > 0
}

// bodyCharset checks the charset of a body the guard validates (the first
// Content-Type; decide refused several): "" when it is UTF-8 or absent,
// else the refusal's reason. An upstream that honours another charset
// (ibm037 on IIS, utf-7 in Python) would read other fields than the ones
// kin-openapi checked as UTF-8. Parameters are parsed only when there are
// some: the common "application/json" costs one byte search.
func bodyCharset(ct []string) string {
	if len(ct) == 0 || strings.IndexByte(ct[0], ';') < 0 {
		return ""
	}
	_, params, err := mime.ParseMediaType(ct[0])
	if err != nil {
		return reasonHeaderParams
	}
	switch cs := params["charset"]; {
	case cs == "", strings.EqualFold(cs, "utf-8"), strings.EqualFold(cs, "utf8"), strings.EqualFold(cs, "us-ascii"):
		return ""
	}
	return reasonCharset
}

// reasonHeaderParams is kin-openapi's reason for a header it cannot read.
const reasonHeaderParams = "invalid_header"
