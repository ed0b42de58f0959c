package apiguard

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
)

// TestCheck31DivergeRandom compares the guard's check of a 3.1 body
// (check31AsVisit: its mode, the compiled validator with its yes-or-no
// wrapper, the converted errors) with kin-openapi's VisitJSON with JSON
// Schema 2020-12 on random schemas (2020-12 keywords, references to
// components and $defs, formats, nullable, boolean schemas, dynamic
// references) and random values: the same verdict, error text and
// finding. DYAD_DIVERGE_SECONDS runs it longer (default 1 s), DYAD_DIVERGE_SEED
// repeats a run.
func TestCheck31DivergeRandom(t *testing.T) {
	d := time.Second
	if s := os.Getenv("DYAD_DIVERGE_SECONDS"); s != "" {
		n, err := time.ParseDuration(s + "s")
		if err != nil {
			t.Fatal(err)
		}
		d = n
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DYAD_DIVERGE_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d", seed)
	// Schemas the generator makes seldom or never: an embedded $id at
	// the URL the yes-or-no wrapper is compiled at, dynamic and
	// recursive references, annotations that unevaluatedProperties reads
	// through anyOf, if and $ref, boolean schemas, type null.
	for _, sch := range []string{
		`{"type":"object","properties":{"a":{"$id":"valid.json","type":"string"}},"required":["a"]}`,
		`{"type":"object","properties":{"a":{"$id":"https://example.com/valid.json","type":"string"}},"required":["a"]}`,
		`{"$id":"valid.json","type":"integer"}`,
		`{"type":"integer","$defs":{"x":{"$id":"valid.json"}}}`,
		`{"$id":"https://example.com/schema.json","type":"object","properties":{"a":{"$ref":"#"}},"additionalProperties":false}`,
		`{"$dynamicAnchor":"n","type":"object","properties":{"a":{"$dynamicRef":"#n"},"b":{"type":"string"}},"unevaluatedProperties":false}`,
		`{"anyOf":[{"properties":{"a":true}},{"properties":{"b":true}}],"unevaluatedProperties":false}`,
		`{"if":{"properties":{"a":{"const":1}}},"then":{"properties":{"b":true}},"else":{"properties":{"c":true}},"unevaluatedProperties":false}`,
		`{"$defs":{"d":{"properties":{"a":true}}},"$ref":"#/$defs/d","unevaluatedProperties":false}`,
		`{"prefixItems":[true],"contains":{"type":"string"},"unevaluatedItems":false}`,
		`{"oneOf":[{"properties":{"a":true},"required":["a"]},{"properties":{"b":true},"required":["b"]}],"unevaluatedProperties":false}`,
		`{"not":{"type":"null"}}`, `{"type":"null"}`, `false`, `true`, `{"type":["null","string"],"format":"date-time"}`,
		`{"type":"integer","format":"int32","maximum":3000000000}`, `{"type":"string","format":"byte"}`,
		`{"$schema":"http://json-schema.org/draft-07/schema#","additionalItems":false,"items":[{"type":"string"}]}`,
	} {
		doc := `{"openapi":"3.1.0","info":{"title":"t","version":"1"},"paths":{"/x":{"get":{"operationId":"x","responses":{"200":{"description":"ok"}}}}},"components":{"schemas":{"s":` + sch + `}}}`
		s, err := ParseSpec("fixed.json", []byte(doc))
		if err != nil {
			t.Logf("%s: %v", sch, err)
			continue
		}
		schema := s.doc.Components.Schemas["s"].Value
		for _, text := range []string{`null`, `1`, `2147483648`, `"x"`, `"aGk="`, `"2026-12-07T02:00:00Z"`, `[]`, `["a"]`, `["a",1]`, `[1,"a"]`,
			`{}`, `{"a":"x"}`, `{"a":1}`, `{"a":{"a":{}}}`, `{"a":{"x":1}}`, `{"a":1,"b":1}`, `{"a":2,"b":1}`, `{"a":2,"c":1}`, `{"c":1}`} {
			if msg := compare31(t, s, schema, text); msg != "" {
				t.Errorf("%s\nschema %s\nvalue %s\nmode %d", msg, sch, text, s.check31(schema).mode)
			}
		}
	}
	r := rand.New(rand.NewPCG(seed, 31))
	deadline := time.Now().Add(d)
	specs, checks, verdicts := 0, 0, 0
	for time.Now().Before(deadline) && verdicts < 5 {
		g := &gen31{r: r}
		comps := map[string]any{"s": g.schema(3, true), "c1": g.schema(2, true), "c2": g.schema(2, true)}
		doc := map[string]any{
			"openapi": "3.1.0", "info": map[string]any{"title": "t", "version": "1"},
			"paths":      map[string]any{"/x": map[string]any{"get": map[string]any{"operationId": "x", "responses": map[string]any{"200": map[string]any{"description": "ok"}}}}},
			"components": map[string]any{"schemas": comps},
		}
		raw, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ParseSpec("r.json", raw)
		if err != nil {
			continue
		}
		specs++
		for _, name := range []string{"s", "c1", "c2"} {
			ref := s.doc.Components.Schemas[name]
			if ref == nil || ref.Value == nil {
				continue
			}
			schema := ref.Value
			for range 12 {
				text, _ := json.Marshal(g.value(3))
				checks++
				if msg := compare31(t, s, schema, string(text)); msg != "" {
					enc, _ := json.Marshal(comps[name])
					t.Errorf("%s\nschema %s: %s\ncomponents %s\nvalue %s\nmode %d", msg, name, enc, mustJSON(comps), text, s.check31(schema).mode)
					if msg[0] == 'V' {
						verdicts++
					}
				}
			}
		}
	}
	t.Logf("%d specs, %d checks", specs, checks)
}

// defsNames drops the numbers of the names components are copied under
// ($defs/ref0 …): kin-openapi numbers them in Go's map order, and they show
// in the text of an error about a reference cycle.
func defsNames(text string) string { return defsName.ReplaceAllString(text, "$$defs/ref") }

var defsName = regexp.MustCompile(`\$defs/ref[0-9]+`)

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// compare31 is "" when the guard and kin-openapi agree on text's value.
func compare31(t *testing.T, s *Spec, schema *openapi3.Schema, text string) (msg string) {
	defer func() {
		if p := recover(); p != nil {
			msg = fmt.Sprintf("Panic: %v", p)
		}
	}()
	for _, opts := range [][]openapi3.SchemaValidationOption{
		{openapi3.VisitAsRequest()},
		{openapi3.MultiErrors(), openapi3.VisitAsResponse()},
	} {
		var defaulted, kinDefaulted bool
		set := openapi3.DefaultsSet(func() { defaulted = true })
		kinSet := openapi3.DefaultsSet(func() { kinDefaulted = true })
		v2020 := openapi3.EnableJSONSchema2020()
		var got, want any
		json.Unmarshal([]byte(text), &got)
		json.Unmarshal([]byte(text), &want)
		gotErr := check31AsVisit(s, schema, got, slices.Concat(opts, []openapi3.SchemaValidationOption{set, v2020}), slices.Concat(opts, []openapi3.SchemaValidationOption{set}))
		wantErr := schema.VisitJSON(want, slices.Concat(opts, []openapi3.SchemaValidationOption{kinSet, v2020})...)
		switch {
		case gotErr == nil && wantErr != nil:
			return fmt.Sprintf("Verdict: guard ACCEPTS, kin-openapi rejects (%d options): %v", len(opts), wantErr)
		case gotErr != nil && wantErr == nil:
			return fmt.Sprintf("Verdict: guard rejects, kin-openapi accepts (%d options): %v", len(opts), gotErr)
		}
		if defaulted != kinDefaulted {
			return "defaults differ"
		}
		if gotErr == nil {
			continue
		}
		// The validator takes the order of its errors from Go's maps
		// (an object's properties, unevaluated items): kin-openapi's own
		// text and finding differ from call to call. A difference counts
		// when no one of 40 calls of kin-openapi's gives the guard's.
		gr, gk := responseReason(&openapi3filter.ResponseError{Err: gotErr})
		// Under perCall31 both are kin-openapi's VisitJSON: any
		// difference is its own from call to call.
		mode := s.check31(schema).mode
		textOK, findingOK := mode != compiled31, mode == perCall31
		var lastText string
		var lastR, lastK string
		for range 40 {
			var again any
			json.Unmarshal([]byte(text), &again)
			e := schema.VisitJSON(again, slices.Concat(opts, []openapi3.SchemaValidationOption{v2020})...)
			if e == nil {
				// kin-openapi's own verdict changes from call to call
				// (seen for a recursive schema with $dynamicAnchor):
				// the guard's is one of them.
				t.Logf("kin-openapi's verdict changes from call to call for %s", text)
				return ""
			}
			lastText = e.Error()
			if !textOK && sameErrors(defsNames(gotErr.Error()), defsNames(lastText)) {
				textOK = true
			}
			lastR, lastK = responseReason(&openapi3filter.ResponseError{Err: e})
			if lastR == gr && lastK == gk {
				findingOK = true
			}
			if textOK && findingOK {
				break
			}
		}
		switch {
		case !textOK:
			return fmt.Sprintf("text (%d options):\nguard %q\nkin   %q", len(opts), gotErr, lastText)
		case !findingOK:
			return fmt.Sprintf("finding (%d options): guard %s/%s, kin-openapi's error %s/%s", len(opts), gr, gk, lastR, lastK)
		}
	}
	return ""
}

// gen31 makes random JSON Schema 2020-12 schemas and JSON values.
type gen31 struct{ r *rand.Rand }

func (g *gen31) pick(xs ...any) any { return xs[g.r.IntN(len(xs))] }

var props31 = []string{"a", "b", "c"}

func (g *gen31) schema(depth int, root bool) any {
	r := g.r
	if r.IntN(12) == 0 {
		return r.IntN(2) == 0
	}
	s := map[string]any{}
	n := 1 + r.IntN(4)
	if depth <= 0 {
		n = 1 + r.IntN(2)
	}
	for range n {
		switch k := r.IntN(34); {
		case k < 4:
			types := []any{"string", "integer", "number", "object", "array", "boolean", "null"}
			if r.IntN(3) == 0 {
				s["type"] = []any{g.pick(types...), "null"}
			} else {
				s["type"] = g.pick(types...)
			}
		case k == 4:
			s["const"] = g.value(1)
		case k == 5:
			s["enum"] = []any{g.value(0), g.value(1)}
		case k == 6:
			s["format"] = g.pick("date-time", "date", "email", "uuid", "ipv4", "int32", "int64", "double", "float", "byte", "unknown", "regex", "uri")
		case k == 7:
			s[g.pick("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum").(string)] = g.pick(0, 1, 2.5, -1)
		case k == 8:
			s[g.pick("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties").(string)] = r.IntN(3)
		case k == 9:
			s["pattern"] = g.pick("^a", "b$", "^[0-9]+$")
		case k == 10:
			s["nullable"] = true
		case k == 11:
			s["required"] = []any{g.pick("a", "b"), "c"}[:1+r.IntN(2)]
		case k == 12:
			s["uniqueItems"] = true
		case k == 13:
			s["multipleOf"] = g.pick(2, 0.5)
		case k == 14:
			s["default"] = g.value(0)
		case k == 15:
			s["readOnly"] = true
		case k == 16:
			s["dependentRequired"] = map[string]any{"a": []any{"b"}}
		}
		if depth <= 0 {
			continue
		}
		switch k := r.IntN(24); k {
		case 0, 1:
			p := map[string]any{}
			for _, name := range props31[:1+r.IntN(3)] {
				p[name] = g.schema(depth-1, false)
			}
			s["properties"] = p
		case 2:
			s["additionalProperties"] = g.schemaOrBool(depth - 1)
		case 3:
			s["unevaluatedProperties"] = g.schemaOrBool(depth - 1)
		case 4:
			s["items"] = g.schemaOrBool(depth - 1)
		case 5:
			s["prefixItems"] = []any{g.schema(depth-1, false)}
		case 6:
			s["unevaluatedItems"] = g.schemaOrBool(depth - 1)
		case 7:
			s["contains"] = g.schema(depth-1, false)
			if r.IntN(2) == 0 {
				s["minContains"] = r.IntN(3)
			}
		case 8, 9, 10:
			subs := []any{}
			for range 1 + r.IntN(3) {
				subs = append(subs, g.schema(depth-1, false))
			}
			s[[]string{"allOf", "anyOf", "oneOf"}[k-8]] = subs
		case 11:
			s["not"] = g.schema(depth-1, false)
		case 12:
			s["if"] = g.schema(depth-1, false)
			s["then"] = g.schema(depth-1, false)
			if r.IntN(2) == 0 {
				s["else"] = g.schema(depth-1, false)
			}
		case 13:
			s["patternProperties"] = map[string]any{"^a": g.schema(depth-1, false)}
		case 14:
			s["propertyNames"] = map[string]any{"maxLength": 1}
		case 15:
			s["dependentSchemas"] = map[string]any{"a": g.schema(depth-1, false)}
		case 16, 17:
			s["$ref"] = g.pick("#/components/schemas/c1", "#/components/schemas/c2")
		case 18:
			if root {
				s["$defs"] = map[string]any{"d": g.schema(depth-1, false)}
				s["properties"] = map[string]any{"a": map[string]any{"$ref": "#/$defs/d"}}
			}
		case 19:
			if root {
				// A recursive tree through $dynamicRef.
				s["$dynamicAnchor"] = "node"
				s["properties"] = map[string]any{"a": map[string]any{"$dynamicRef": "#node"}}
			}
		case 20:
			if root {
				s["properties"] = map[string]any{"b": map[string]any{"$ref": "#"}}
			}
		case 21:
			s["contentMediaType"] = "application/json"
			s["contentSchema"] = g.schema(depth-1, false)
		}
	}
	return s
}

func (g *gen31) schemaOrBool(depth int) any {
	if g.r.IntN(2) == 0 {
		return g.r.IntN(2) == 0
	}
	return g.schema(depth, false)
}

func (g *gen31) value(depth int) any {
	r := g.r
	k := r.IntN(10)
	if depth <= 0 && k >= 8 {
		k = r.IntN(8)
	}
	switch k {
	case 0:
		return nil
	case 1:
		return r.IntN(2) == 0
	case 2, 3:
		return g.pick(0, 1, -1, 2, 2.5, 2147483648, 1e300, 0.5)
	case 4, 5, 6, 7:
		return g.pick("", "a", "ab", "b", "12", "2026-12-07T02:00:00Z", "2026-12-07", "a@b.example", "no@", "1.2.3.4",
			"123e4567-e89b-12d3-a456-426614174000", "aGk=", "{\"a\":1}", "[", "http://x/", "(")
	case 8:
		var a []any
		for range r.IntN(4) {
			a = append(a, g.value(depth-1))
		}
		if a == nil {
			a = []any{}
		}
		return a
	default:
		o := map[string]any{}
		for range r.IntN(4) {
			o[g.pick("a", "b", "c", "d", "ab").(string)] = g.value(depth - 1)
		}
		return o
	}
}
