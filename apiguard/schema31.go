package apiguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-openapi/jsonpointer"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// An OpenAPI 3.1 document's schemas are JSON Schema 2020-12. kin-openapi
// (v0.153.0) checks a value against one with the santhosh-tekuri/jsonschema
// validator, which Schema.VisitJSON builds again on every call: it encodes
// the schema, decodes it and compiles it (getkin/kin-openapi#1186, open,
// caches it). For rr-api's 1 KiB body that is about 50 µs and 480
// allocations a request, ten times all the rest of the guard's work
// (BenchmarkGuardRequest31). A body's check (checkJSONBody, checkJSONResponse)
// therefore takes its schema's validator from the spec, built once, the way
// kin-openapi builds it, and turns the validator's errors into kin-openapi's
// (the same SchemaError tree and text), so what the guard decides and says
// is what VisitJSON would: TestVisit31AsKin and the AsKin tests and fuzz
// targets of both sides compare the two.

// mode31 is how a 3.1 schema is checked.
type mode31 uint8

const (
	// perCall31: by kin-openapi's VisitJSON as it is (its validator built
	// per call), where the guard's copy of kin-openapi's choice would
	// not be the same: a schema whose validator does not compile here
	// (kin-openapi's does not either, and it falls back to its built-in
	// validator or returns the error), or one that refers to a component,
	// uses no 2020-12 keyword and says nullable somewhere (kin-openapi's
	// built-in validator, as the 3.1 option has it, ignores nullable).
	// Neither builds errors for each of a body's values.
	perCall31 mode31 = iota
	// builtin31: kin-openapi's built-in (3.0) validator. VisitJSON falls
	// back to it for a schema that refers to a component and uses no
	// 2020-12 keyword; it is called directly, without the validator
	// VisitJSON would build first and then not use. The one setting that
	// reads the 3.1 option (nullable, which 3.1 does not know) is ruled
	// out: such a schema with nullable anywhere is perCall31.
	builtin31
	// compiled31: the schema's JSON Schema 2020-12 validator, built once.
	compiled31
)

// schema31 is one 3.1 schema's check.
type schema31 struct {
	mode   mode31
	root   *openapi3.Schema
	schema *jsonschema.Schema // compiled31 only
	// valid is {"if": schema, "else": false} (compiled31 only): the same
	// verdict, but the validator checks an "if" for a yes or no and
	// builds no error for it: its errors for a broken body of 512 KiB took
	// 104 MB and 0.1 s, and kin-openapi's conversion of them 2.2 GB and
	// 2 s (TestCheck31BrokenBodyBounded).
	valid *jsonschema.Schema
	// defs are the components copied into the compiled schema's $defs,
	// by name (componentDefs).
	defs map[string]*openapi3.Schema
}

// validURL is where the compiler keeps a schema31's valid.
const validURL = "https://example.com/valid.json"

// maxListed bounds the errors errorsOf converts: a problem detail shows
// 400 bytes, fewer than 16 errors' texts.
const maxListed = 64

// schemaURL is the URL kin-openapi gives the schema it compiles; it shows
// in the validator's error text.
const schemaURL = "https://example.com/schema.json"

// check31 is s's check, built on first use. Only the document's body
// schemas are asked for, so the map holds at most one entry for each.
func (sp *Spec) check31(s *openapi3.Schema) *schema31 {
	if v, ok := sp.checks31.Load(s); ok {
		return v.(*schema31)
	}
	v, _ := sp.checks31.LoadOrStore(s, newSchema31(s, sp.doc.Components))
	return v.(*schema31)
}

// newSchema31 decides s's mode and builds its validator as kin-openapi's
// newJSONSchemaValidator does (v0.153.0): s encoded as JSON and decoded
// again, the components it refers to copied into its $defs
// (componentDefs), its formats given kin-openapi's validators, compiled
// as Draft 2020-12 at schemaURL. components are s's document's.
func newSchema31(s *openapi3.Schema, components *openapi3.Components) *schema31 {
	v := &schema31{root: s}
	raw, err := json.Marshal(s)
	if err != nil {
		return v
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return v
	}
	uses2020 := uses2020Keywords(s)
	m, _ := doc.(map[string]any)
	if refersToComponent(doc) {
		// kin-openapi checks such a schema with its built-in validator
		// unless it uses a 2020-12 keyword.
		if !uses2020 {
			if !anyNullable(s) {
				v.mode = builtin31
			}
			return v
		}
		if v.defs, err = componentDefs(m, components); err != nil {
			return v
		}
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if m != nil {
		registerFormats(c, m)
	}
	if err := c.AddResource(schemaURL, doc); err != nil {
		return v
	}
	compiled, err := c.Compile(schemaURL)
	if err != nil {
		return v
	}
	ifElse := map[string]any{"if": map[string]any{"$ref": schemaURL}, "else": false}
	if err := c.AddResource(validURL, ifElse); err != nil {
		return v
	}
	valid, err := c.Compile(validURL)
	if err != nil {
		return v
	}
	v.mode, v.schema, v.valid = compiled31, compiled, valid
	return v
}

// componentPrefix starts the references kin-openapi copies into a
// compiled schema's $defs.
const componentPrefix = "#/components/schemas/"

// componentDefs is kin-openapi's addInternalSchemaRefs on the encoded
// schema m: every component it refers to, directly or through another,
// encoded into m's $defs (replacing any of its own, as kin-openapi does) as
// ref0, ref1 … (in the references' order; kin-openapi's follows Go's map
// order, and the names show in no error text), each reference rewritten
// to its copy. It returns the copies' schemas by name, for schemaAt.
func componentDefs(m map[string]any, components *openapi3.Components) (map[string]*openapi3.Schema, error) {
	if m == nil || components == nil {
		return nil, nil
	}
	refs := map[string]any{}
	values := map[string]*openapi3.Schema{}
	pending := []any{m}
	for len(pending) > 0 {
		node := pending[len(pending)-1]
		pending = pending[:len(pending)-1]
		found, plain := componentRefs(node)
		if !plain {
			return nil, errors.New("a component reference with keywords beside it")
		}
		for _, ref := range found {
			if _, ok := refs[ref]; ok {
				continue
			}
			target, err := componentAt(components, ref)
			if err != nil {
				return nil, err
			}
			raw, err := json.Marshal(target)
			if err != nil {
				return nil, err
			}
			var copied any
			if err := json.Unmarshal(raw, &copied); err != nil {
				return nil, err
			}
			refs[ref], values[ref] = copied, target
			pending = append(pending, copied)
		}
	}
	if len(refs) == 0 {
		return nil, nil
	}
	names := slices.Sorted(maps.Keys(refs))
	ids := make(map[string]string, len(names))
	byID := make(map[string]*openapi3.Schema, len(names))
	for i, ref := range names {
		ids[ref] = "ref" + strconv.Itoa(i)
		byID[ids[ref]] = values[ref]
	}
	defs := make(map[string]any, len(refs))
	rewriteRefs(m, refs, ids, defs)
	if len(defs) > 0 {
		m["$defs"] = defs
		rewriteRefs(defs, refs, ids, defs)
	}
	return byID, nil
}

// componentRefs lists the component references in node (an encoded
// schema), in no particular order; plain is false when one has keywords
// beside it (OpenAPI 3.1 allows them). kin-openapi copies the schema such
// a reference's loader kept aside (unexported), which the guard cannot
// name for certain: a schema with one stays perCall31.
func componentRefs(node any) (out []string, plain bool) {
	plain = true
	var walk func(any)
	walk = func(node any) {
		switch node := node.(type) {
		case map[string]any:
			if ref, ok := node["$ref"].(string); ok && strings.HasPrefix(ref, componentPrefix) {
				out = append(out, ref)
				for k := range node {
					if k != "$ref" && !strings.HasPrefix(k, "x-") {
						plain = false
					}
				}
			}
			for _, value := range node {
				walk(value)
			}
		case []any:
			for _, value := range node {
				walk(value)
			}
		}
	}
	walk(node)
	return out, plain
}

// componentAt is the schema a reference to #/components/schemas/NAME
// names: the component's schema, which kin-openapi's loader gave the
// reference. A reference into a component, or to a component that is
// itself a reference, is refused (the guard cannot be sure which schema
// the loader gave it: the schema stays perCall31).
func componentAt(components *openapi3.Components, ref string) (*openapi3.Schema, error) {
	name := strings.TrimPrefix(ref, componentPrefix)
	if strings.Contains(name, "/") {
		return nil, fmt.Errorf("%s refers into a component", ref)
	}
	name = strings.ReplaceAll(strings.ReplaceAll(name, "~1", "/"), "~0", "~")
	c := components.Schemas[name]
	if c == nil || c.Value == nil || c.Ref != "" {
		return nil, fmt.Errorf("%s is not a component schema of its own", ref)
	}
	return c.Value, nil
}

// rewriteRefs is kin-openapi's rewriteInternalSchemaRefs: the references
// in node to the copies' names, each copy added to defs (and rewritten in
// its turn) when first referred to. A worklist, not a range over defs,
// which grows while it is walked.
func rewriteRefs(node any, refs map[string]any, ids map[string]string, defs map[string]any) {
	pending := []any{node}
	for len(pending) > 0 {
		current := pending[len(pending)-1]
		pending = pending[:len(pending)-1]
		switch current := current.(type) {
		case map[string]any:
			if ref, ok := current["$ref"].(string); ok {
				if id, exists := ids[ref]; exists {
					current["$ref"] = "#/$defs/" + id
					if _, added := defs[id]; !added {
						defs[id] = refs[ref]
						pending = append(pending, refs[ref])
					}
				}
			}
			for _, value := range current {
				pending = append(pending, value)
			}
		case []any:
			pending = append(pending, current...)
		}
	}
}

// keeps says whether value keeps v's schema (compiled31), building no
// error.
func (v *schema31) keeps(value any) bool { return v.valid.Validate(value) == nil }

// errorsOf is what kin-openapi's VisitJSON returns for value, which breaks
// v's schema (compiled31): the validator's errors as kin-openapi's
// SchemaError tree, at most maxListed of them converted (in the
// validator's order, which kin-openapi's text shows too: the first 400
// bytes are alike), with what responseReason reads from all of them.
func (v *schema31) errorsOf(value any) error {
	err := v.schema.Validate(value)
	var verr *jsonschema.ValidationError
	if !errors.As(err, &verr) {
		return err
	}
	e := &schemaErrors31{}
	left := maxListed
	e.error = v.schemaError(verr, "", value, &left)
	e.first, e.undeclared = leafKeywords(verr)
	return e
}

// schemaErrors31 is errorsOf's error: kin-openapi's SchemaError tree
// (error, maybe cut at maxListed) and what responseReason reads from all
// the validator's errors, cut or not: first, the keyword of the first
// error that fails by itself (a leaf), and undeclared, the keyword that
// forbids the property of the first leaf about an undeclared property
// ("" when there is none).
type schemaErrors31 struct {
	error
	first, undeclared string
}

func (e *schemaErrors31) Unwrap() error { return e.error }

// leafKeywords walks verr's leaves in order: the first's keyword and the
// first undeclared property's keyword (undeclaredProperty's rules).
func leafKeywords(verr *jsonschema.ValidationError) (first, undeclared string) {
	seen := false
	var walk func(*jsonschema.ValidationError) bool
	walk = func(n *jsonschema.ValidationError) bool {
		if len(n.Causes) > 0 {
			for _, c := range n.Causes {
				if walk(c) {
					return true
				}
			}
			return false
		}
		kw := lastKeyword(n)
		if !seen {
			first, seen = kw, true
		}
		if kw == "additionalProperties" {
			undeclared = kw
		} else {
			undeclared = forbiddingKeyword(n)
		}
		return undeclared != ""
	}
	walk(verr)
	return first, undeclared
}

// forbiddingKeyword is the keyword whose false schema n (a property that
// failed it) is about, unevaluatedProperties or additionalProperties, or ""
// when n is another failure: the validator's error for an undeclared
// property names no keyword of its own.
func forbiddingKeyword(n *jsonschema.ValidationError) string {
	if _, ok := n.ErrorKind.(*kind.FalseSchema); !ok {
		return ""
	}
	_, fragment, _ := strings.Cut(n.SchemaURL, "#")
	for _, k := range []string{"unevaluatedProperties", "additionalProperties"} {
		if strings.HasSuffix(fragment, "/"+k) {
			return k
		}
	}
	return ""
}

func lastKeyword(n *jsonschema.ValidationError) string {
	if keywords := n.ErrorKind.KeywordPath(); len(keywords) > 0 {
		return keywords[len(keywords)-1]
	}
	return ""
}

// uses2020Keywords is kin-openapi's schemaUsesJSONSchema2020Features: a
// keyword of JSON Schema 2020-12 that its built-in validator lacks, in s
// or a schema it refers to.
func uses2020Keywords(s *openapi3.Schema) bool {
	found := false
	openapi3.NewSchemaRef("", s).WalkSubtree(func(_ string, ref *openapi3.SchemaRef) error {
		x := ref.Value
		if x != nil && (x.Const != nil ||
			len(x.PrefixItems) != 0 || x.Contains != nil ||
			len(x.PatternProperties) != 0 ||
			len(x.DependentSchemas) != 0 || x.PropertyNames != nil ||
			x.UnevaluatedItems.Has != nil || x.UnevaluatedItems.Schema != nil ||
			x.UnevaluatedProperties.Has != nil || x.UnevaluatedProperties.Schema != nil ||
			x.If != nil || x.Then != nil || x.Else != nil ||
			len(x.DependentRequired) != 0 || len(x.Defs) != 0 ||
			x.ContentSchema != nil) {
			found = true
			return openapi3.SkipSubtree
		}
		return nil
	})
	return found
}

// anyNullable says whether s or a schema it refers to says nullable: true.
func anyNullable(s *openapi3.Schema) bool {
	found := false
	openapi3.NewSchemaRef("", s).WalkSubtree(func(_ string, ref *openapi3.SchemaRef) error {
		if ref.Value != nil && ref.Value.Nullable {
			found = true
		}
		return nil
	})
	return found
}

// refersToComponent is kin-openapi's containsInternalSchemaRef: a $ref to
// #/components/schemas/ anywhere in the encoded schema.
func refersToComponent(node any) bool {
	switch node := node.(type) {
	case map[string]any:
		if ref, ok := node["$ref"].(string); ok && strings.HasPrefix(ref, "#/components/schemas/") {
			return true
		}
		for _, value := range node {
			if refersToComponent(value) {
				return true
			}
		}
	case []any:
		return slices.ContainsFunc(node, refersToComponent)
	}
	return false
}

// registerFormats is kin-openapi's registerFormatValidators: every format
// the schema names is checked by kin-openapi's validator of that name
// (none: the value passes), and formats are asserted.
func registerFormats(c *jsonschema.Compiler, doc map[string]any) {
	formats := map[string]struct{}{}
	collectFormats(doc, formats)
	if len(formats) == 0 {
		return
	}
	for format := range formats {
		c.RegisterFormat(&jsonschema.Format{Name: format, Validate: formatValidator(format)})
	}
	c.AssertFormat()
}

func collectFormats(node any, formats map[string]struct{}) {
	switch node := node.(type) {
	case map[string]any:
		if format, ok := node["format"].(string); ok && format != "" {
			formats[format] = struct{}{}
		}
		for _, value := range node {
			collectFormats(value, formats)
		}
	case []any:
		for _, value := range node {
			collectFormats(value, formats)
		}
	}
}

// formatValidator is kin-openapi's formatValidator with no formats of the
// call's own (the guard gives none): its package-wide validators, looked
// up when a value is checked.
func formatValidator(format string) func(any) error {
	return func(value any) error {
		switch value := value.(type) {
		case string:
			if f, ok := openapi3.SchemaStringFormats[format]; ok {
				return f.Validate(value)
			}
		case json.Number:
			if n, err := value.Float64(); err == nil {
				return numberFormat(format, n)
			}
		case float64:
			return numberFormat(format, value)
		case float32:
			return numberFormat(format, float64(value))
		case int:
			return numberFormat(format, float64(value))
		case int32:
			return numberFormat(format, float64(value))
		case int64:
			return numberFormat(format, float64(value))
		}
		return nil
	}
}

func numberFormat(format string, value float64) error {
	if value == math.Trunc(value) && !math.IsInf(value, 0) {
		if f, ok := openapi3.SchemaIntegerFormats[format]; ok {
			return f.Validate(int64(value))
		}
	}
	if f, ok := openapi3.SchemaNumberFormats[format]; ok {
		return f.Validate(value)
	}
	return nil
}

// schemaError is kin-openapi's formatValidationError: verr as a
// SchemaError about the value it failed (inside root) and the schema it
// failed, its causes as the Origin's list. The text is kin-openapi's:
// Error() of a converted error does not print a path of its own (the
// reason names it), so leaving the path out (unexported) changes nothing.
// The validator's error stays reachable with errors.As, as in kin-openapi's.
func (v *schema31) schemaError(verr *jsonschema.ValidationError, parentPath string, root any, left *int) error {
	*left--
	path := "/" + strings.Join(verr.InstanceLocation, "/")
	if parentPath != "" && path != "/" {
		path = parentPath + path
	} else if path == "/" {
		path = parentPath
	}
	var msg strings.Builder
	if path != "" {
		fmt.Fprintf(&msg, `error at "%s": `, path)
	}
	if len(verr.Causes) == 0 {
		// kin-openapi writes the validator's text of the whole subtree
		// into every error; an error with a list prints the list, not
		// that (SchemaError.Error), so only a leaf's is built.
		msg.WriteString(verr.Error())
	}
	// A wrapper with one chain of causes (the schema itself, a $ref) is
	// about the value its innermost cause is about.
	failing := verr
	for len(failing.Causes) == 1 && wrapperKind(failing.ErrorKind) {
		failing = failing.Causes[0]
	}
	value, _ := valueAt(root, failing.InstanceLocation)
	se := &openapi3.SchemaError{Value: value, Schema: v.schemaAt(failing.SchemaURL), Reason: msg.String()}
	se.SchemaField = lastKeyword(failing)
	if len(verr.Causes) == 0 {
		return &convertedError{SchemaError: se, cause: verr}
	}
	subs := make(openapi3.MultiError, 0, min(len(verr.Causes), maxListed))
	for _, cause := range verr.Causes {
		if *left <= 0 {
			break
		}
		subs = append(subs, v.schemaError(cause, path, root, left))
	}
	if len(subs) == 0 { // cut at maxListed before this list
		se.Reason += "errors not listed"
		return se
	}
	se.Origin = fmt.Errorf("validation failed due to: %w", subs)
	return se
}

// convertedError is a SchemaError converted from a validator's error with
// no causes: errors.As finds both, as in kin-openapi's (whose SchemaError
// keeps the validator's error in a field of its own).
type convertedError struct {
	*openapi3.SchemaError
	cause *jsonschema.ValidationError
}

func (e *convertedError) Unwrap() []error { return []error{e.SchemaError, e.cause} }

// schemaAt is the schema at schemaURL inside v.root or a component copied
// into its $defs, or nil (kin-openapi's schemaAt).
func (v *schema31) schemaAt(url string) *openapi3.Schema {
	_, fragment, _ := strings.Cut(url, "#")
	root := v.root
	if rest, ok := strings.CutPrefix(fragment, "/$defs/"); ok {
		id, rest, _ := strings.Cut(rest, "/")
		if root = v.defs[id]; root == nil {
			return nil
		}
		fragment = strings.TrimSuffix("/"+rest, "/")
	}
	ptr, err := jsonpointer.New(fragment)
	if err != nil {
		return nil
	}
	found, _, err := ptr.Get(root)
	if err != nil {
		return nil
	}
	s, _ := found.(*openapi3.Schema)
	return s
}

// wrapperKind says whether k only groups the errors of its causes.
func wrapperKind(k jsonschema.ErrorKind) bool {
	switch k.(type) {
	case *kind.Schema, *kind.Group, *kind.Reference:
		return true
	}
	return false
}

// valueAt is the value at location (JSON pointer tokens) inside root.
func valueAt(root any, location []string) (any, bool) {
	value := root
	for _, token := range location {
		switch v := value.(type) {
		case map[string]any:
			next, ok := v[token]
			if !ok {
				return nil, false
			}
			value = next
		case []any:
			i, err := strconv.Atoi(token)
			if err != nil || i < 0 || i >= len(v) {
				return nil, false
			}
			value = v[i]
		default:
			return nil, false
		}
	}
	return value, true
}
