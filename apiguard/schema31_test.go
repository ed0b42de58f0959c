package apiguard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// echoRig31 is newEchoRig on rr-api's spec as an OpenAPI 3.1 document.
func echoRig31(tb testing.TB) *echoRig {
	data, err := os.ReadFile("testdata/bench.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	s, err := ParseSpec("bench31.yaml", bytes.Replace(data, []byte("openapi: 3.0.3"), []byte("openapi: 3.1.0"), 1))
	if err != nil {
		tb.Fatal(err)
	}
	up := &fixedUpstream{}
	r := newEchoRig(tb, up, &up.resp, io.Discard)
	r.c.g = NewGuard(&Policy{Service: "bench", Spec: s, ValidateRequest: true, Limits: map[*Operation]Rate{}}, nil)
	return r
}

// TestGuardRequest31Allocs: an rr-api request to a 3.1 document costs the
// guard what it costs for a 3.0 one, give or take the validator's own
// few: kin-openapi's VisitJSON would build the schema's JSON Schema
// 2020-12 validator again for every body (about 480 allocations and 50 µs
// here; before visitJSON31 this test counted 506).
func TestGuardRequest31Allocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates, and sync.Pool drops at random")
	}
	r := echoRig31(t)
	n := testing.AllocsPerRun(200, func() {
		if !r.one() {
			t.Fatal("the request ended the stream")
		}
	})
	const bound = 40
	t.Logf("%v allocations per request", n)
	if n > bound {
		t.Errorf("one rr-api request to a 3.1 document allocated %v times in the guard, want at most %d", n, bound)
	}
}

// BenchmarkGuardRequest31 is BenchmarkGuardRequest on a 3.1 document.
func BenchmarkGuardRequest31(b *testing.B) {
	r := echoRig31(b)
	b.ReportAllocs()
	for b.Loop() {
		if !r.one() {
			b.Fatal("the request ended the stream")
		}
	}
}

// spec31Schemas are 3.1 schemas for TestVisit31AsKin, by name, and the
// mode visitJSON31 checks each in.
const spec31Schemas = `openapi: 3.1.0
info: {title: schemas, version: "1"}
paths:
  /x:
    get:
      operationId: x
      responses:
        "200": {description: ok}
components:
  schemas:
    plain:
      type: object
      required: [id]
      properties:
        id: {type: integer, minimum: 1}
        name: {type: [string, "null"], maxLength: 5}
        at: {type: string, format: date-time}
        mail: {type: string, format: email}
        n: {type: number, exclusiveMaximum: 10, format: int32}
        kind: {type: string, default: k}
    keywords:
      type: object
      properties:
        kind: {const: card}
        tags: {type: array, prefixItems: [{type: string}], items: false}
        code: {type: string, pattern: "^[A-Z]{3}$"}
      if: {properties: {kind: {const: card}}, required: [kind]}
      then: {required: [code]}
      dependentRequired: {code: [kind]}
      unevaluatedProperties: false
    referencing:
      type: array
      items: {$ref: "#/components/schemas/item"}
    referencingNullable:
      type: object
      properties: {item: {$ref: "#/components/schemas/item"}, note: {type: string, nullable: true}}
    referencing2020:
      type: object
      properties: {item: {$ref: "#/components/schemas/item"}}
      unevaluatedProperties: false
    item:
      type: object
      additionalProperties: false
      required: [id]
      properties:
        id: {type: integer}
        tag: {type: string, default: t}
`

// TestVisit31AsKin: visitJSON31 gives what kin-openapi's VisitJSON with
// JSON Schema 2020-12 gives, for schemas of each mode and values that
// keep and break them: the same error text (the same errors, in any
// order: the validator takes some of its order from Go's maps), the same
// defaults written in, and each schema is checked in the mode expected.
func TestVisit31AsKin(t *testing.T) {
	s, err := ParseSpec("schemas.yaml", []byte(spec31Schemas))
	if err != nil {
		t.Fatal(err)
	}
	modes := map[string]mode31{
		"plain": compiled31, "keywords": compiled31, "item": compiled31,
		"referencing": builtin31, "referencingNullable": perCall31, "referencing2020": perCall31,
	}
	values := map[string][]string{
		"plain": {`{"id":1}`, `{"id":0}`, `{"id":1,"name":null}`, `{"id":1,"name":"toolong"}`, `{"id":1,"at":"2026-12-07T02:00:00Z"}`,
			`{"id":1,"at":"noon"}`, `{"id":1,"mail":"a@b.example"}`, `{"id":1,"mail":"nope"}`, `{"id":1,"n":9.5}`, `{"id":1,"n":10}`,
			`{"id":"1","n":"x"}`, `[]`, `null`, `"s"`},
		"keywords": {`{}`, `{"kind":"card","code":"ABC"}`, `{"kind":"card"}`, `{"kind":"cash"}`, `{"code":"ABC"}`,
			`{"kind":"card","code":"abc"}`, `{"tags":["a"]}`, `{"tags":["a","b"]}`, `{"x":1}`, `{"kind":"card","code":"ABC","x":1,"y":2}`},
		"item":                {`{"id":1}`, `{"id":1,"x":2}`, `{}`},
		"referencing":         {`[]`, `[{"id":1}]`, `[{"id":1,"tag":"given"}]`, `[{"id":"x"}]`, `[{"id":1,"x":2},{"tag":1}]`, `{}`},
		"referencingNullable": {`{"note":null}`, `{"item":{"id":1},"note":"n"}`, `{"item":{}}`},
		"referencing2020":     {`{"item":{"id":1}}`, `{"item":{"id":1},"x":1}`, `{"item":{"id":"x"}}`},
	}
	for name, want := range modes {
		schema := s.doc.Components.Schemas[name].Value
		if got := s.check31(schema).mode; got != want {
			t.Errorf("%s: checked in mode %d, want %d", name, got, want)
		}
		for _, text := range values[name] {
			for _, opts := range [][]openapi3.SchemaValidationOption{
				{openapi3.VisitAsRequest()},
				{openapi3.MultiErrors(), openapi3.VisitAsResponse()},
			} {
				var defaulted, kinDefaulted bool
				set := openapi3.DefaultsSet(func() { defaulted = true })
				kinSet := openapi3.DefaultsSet(func() { kinDefaulted = true })
				v2020 := openapi3.EnableJSONSchema2020()
				got, want := decodeValue(t, text), decodeValue(t, text)
				gotErr := s.visitJSON31(schema, got, slices.Concat(opts, []openapi3.SchemaValidationOption{set, v2020}), slices.Concat(opts, []openapi3.SchemaValidationOption{set}))
				wantErr := schema.VisitJSON(want, slices.Concat(opts, []openapi3.SchemaValidationOption{kinSet, v2020})...)
				label := fmt.Sprintf("%s %s (%d options)", name, text, len(opts))
				switch {
				case (gotErr == nil) != (wantErr == nil):
					t.Errorf("%s:\nvisitJSON31 %v\nkin-openapi %v", label, gotErr, wantErr)
				case gotErr != nil && !sameErrors(gotErr.Error(), wantErr.Error()):
					t.Errorf("%s:\nvisitJSON31 %q\nkin-openapi %q", label, gotErr, wantErr)
				}
				if defaulted != kinDefaulted || !jsonEqual(t, got, want) {
					t.Errorf("%s: value after the check %v (defaults set %v), kin-openapi's %v (%v)", label, got, defaulted, want, kinDefaulted)
				}
				if gotErr != nil {
					if r, k := undeclaredOf(gotErr), undeclaredOf(wantErr); r != k {
						t.Errorf("%s: undeclared property %q, kin-openapi's error says %q", label, r, k)
					}
				}
			}
		}
	}
}

// undeclaredOf is the keyword that forbids a property an error of err's
// tree is about, as responseReason finds it ("" if none).
func undeclaredOf(err error) string {
	var errs []error
	collectSchemaErrors(err, &errs)
	for _, e := range errs {
		if k := undeclaredProperty(e); k != "" {
			return k
		}
	}
	return ""
}

func decodeValue(t *testing.T, text string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(text), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func jsonEqual(t *testing.T, a, b any) bool {
	t.Helper()
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return bytes.Equal(x, y)
}

// TestCheck31Bounded: a 3.1 spec's checks are built once per schema and
// spec, and only for the schemas asked for (a new spec, as a reload
// makes, starts empty).
func TestCheck31Bounded(t *testing.T) {
	s, err := ParseSpec("schemas.yaml", []byte(spec31Schemas))
	if err != nil {
		t.Fatal(err)
	}
	plain := s.doc.Components.Schemas["plain"].Value
	first := s.check31(plain)
	if s.check31(plain) != first {
		t.Error("a second check of the same schema built its validator again")
	}
	n := 0
	s.checks31.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Errorf("the spec holds %d checks after one schema's, want 1", n)
	}
	s2, err := ParseSpec("schemas.yaml", []byte(spec31Schemas))
	if err != nil {
		t.Fatal(err)
	}
	s2.checks31.Range(func(any, any) bool { t.Error("a new spec holds checks"); return false })
}
