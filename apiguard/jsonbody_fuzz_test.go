package apiguard

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
)

// FuzzJSONBody: the guard's JSON decoder takes exactly what encoding/json
// takes, with the same value, except bodies with a duplicate name (which
// only it refuses); never a panic.
func FuzzJSONBody(f *testing.F) {
	for _, s := range []string{`{"data":"x"}`, `{"a":{"b":[1,2.5e3,null,true]}}`, `{"a":1,"a":2}`, `[{"a":1},{"a":1}]`, `"\u0061"`, `{"data":"x"} {}`, `[[[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := decodeJSONBody(bytes.NewReader(body), nil, nil, nil)
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var want any
		werr := dec.Decode(&want)
		if werr == nil {
			if _, terr := dec.Token(); terr != io.EOF {
				werr = errJSONTrailing
			}
		}
		switch {
		case err == nil && werr != nil:
			t.Fatalf("%q: taken, encoding/json refuses it: %v", body, werr)
		case err == nil && !reflect.DeepEqual(got, want):
			t.Fatalf("%q: decoded %#v, encoding/json %#v", body, got, want)
		case err != nil && werr == nil && !errors.Is(err, errJSONDuplicate) && !errors.Is(errors.Unwrap(err), errJSONDuplicate):
			t.Fatalf("%q: refused (%v), encoding/json takes it", body, err)
		}
	})
}
