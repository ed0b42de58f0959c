package apiguard

import (
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
)

// TestCheck31Concurrent: a spec's checks are built and used by many
// requests at once (the validator, its yes-or-no wrapper, the error
// conversion share the compiled schema): each gets the answer it would
// get alone. Run with -race.
func TestCheck31Concurrent(t *testing.T) {
	s, err := ParseSpec("schemas.yaml", []byte(spec31Schemas))
	if err != nil {
		t.Fatal(err)
	}
	values := []string{`{"id":1,"at":"2026-12-07T02:00:00Z","mail":"a@b.example"}`, `{"id":0,"at":"noon","mail":"nope","x":1}`,
		`{"kind":"card","code":"abc","x":1}`, `{"kind":"card","code":"ABC"}`}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				name := []string{"plain", "keywords"}[(g+i)%2]
				schema := s.doc.Components.Schemas[name].Value
				v := s.check31(schema)
				for _, text := range values {
					value := decodeValue(t, text)
					if v.keeps(value) {
						continue
					}
					err := v.errorsOf(value)
					if err == nil {
						t.Errorf("%s %s: kept by neither and broken by none", name, text)
						continue
					}
					_ = err.Error()
					responseReason(&openapi3filter.ResponseError{Err: err})
				}
			}
		}()
	}
	wg.Wait()
}
