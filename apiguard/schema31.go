package apiguard

import (
	"encoding/json"
	"errors"
	"fmt"
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
	// per call). For the schemas kin-openapi's own choice between its two
	// validators cannot be foretold once for: a reference to another
	// component alongside JSON Schema 2020-12 keywords, or a schema whose
	// validator does not compile.
	perCall31 mode31 = iota
	// builtin31: kin-openapi's built-in (3.0) validator. VisitJSON falls
	// back to it for a schema that refers to a component and uses no
	// 2020-12 keyword; it is called directly, without the validator
	// VisitJSON would build first and then not use. The one setting that
	// reads the 3.1 option (nullable, which 3.1 does not know) is ruled
	// out: a schema with nullable anywhere is perCall31.
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
	v, _ := sp.checks31.LoadOrStore(s, newSchema31(s))
	return v.(*schema31)
}

// newSchema31 decides s's mode and builds its validator as kin-openapi's
// newJSONSchemaValidator does (v0.153.0): s encoded as JSON and decoded
// again, its formats given kin-openapi's validators, compiled as Draft
// 2020-12 at schemaURL.
func newSchema31(s *openapi3.Schema) *schema31 {
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
	if refersToComponent(doc) {
		if !uses2020 && !anyNullable(s) {
			v.mode = builtin31
		}
		return v
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if m, ok := doc.(map[string]any); ok {
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

// schemaErrors31 is errorsOf's error: kin-openapi's tree (error), and
// from all the validator's errors the keyword of the first that kin-openapi's
// collectSchemaErrors lists (a leaf, a list's first) and the keyword that
// forbids a property the first leaf that is an undeclared property is
// about ("" when none is), as undeclaredProperty would find them in
// kin-openapi's tree.
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
			return true
		}
		if _, ok := n.ErrorKind.(*kind.FalseSchema); ok {
			_, fragment, _ := strings.Cut(n.SchemaURL, "#")
			for _, k := range []string{"unevaluatedProperties", "additionalProperties"} {
				if strings.HasSuffix(fragment, "/"+k) {
					undeclared = k
					return true
				}
			}
		}
		return false
	}
	walk(verr)
	return first, undeclared
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

// schemaAt is the schema at schemaURL inside v.root, or nil (kin-openapi's
// schemaAt; a compiled31 schema has no copied components, so a $defs
// location is none of v's).
func (v *schema31) schemaAt(url string) *openapi3.Schema {
	_, fragment, _ := strings.Cut(url, "#")
	if strings.HasPrefix(fragment, "/$defs/") {
		return nil
	}
	ptr, err := jsonpointer.New(fragment)
	if err != nil {
		return nil
	}
	found, _, err := ptr.Get(v.root)
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
