package apiguard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
)

// FuzzJSONBody: the guard's JSON decoder takes exactly what encoding/json
// takes, with the same value, except bodies with a duplicate name or
// nested past maxJSONDepth (which only it refuses); never a panic.
func FuzzJSONBody(f *testing.F) {
	for _, s := range []string{`{"data":"x"}`, `{"a":{"b":[1,2.5e3,null,true]}}`, `{"a":1,"a":2}`, `[{"a":1},{"a":1}]`, `"\u0061"`, `{"data":"x"} {}`, `[[[`} {
		f.Add([]byte(s))
	}
	for _, s := range jsonCorners {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if msg := differsFromEncodingJSON(body); msg != "" {
			t.Fatal(msg)
		}
	})
}

// differsFromEncodingJSON says how the guard's decoder parts from
// encoding/json on body, or "" when they agree: the same value, or both
// refuse, or only the guard refuses, for a duplicate name or the depth.
func differsFromEncodingJSON(body []byte) string {
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
		return fmt.Sprintf("%q: taken, encoding/json refuses it: %v", body, werr)
	case err == nil && !reflect.DeepEqual(got, want):
		return fmt.Sprintf("%q: decoded %#v, encoding/json %#v", body, got, want)
	case err != nil && werr == nil && !errors.Is(err, errJSONDuplicate) && !errors.Is(err, errJSONDepth):
		return fmt.Sprintf("%q: refused (%v), encoding/json takes it", body, err)
	}
	return ""
}

// jsonCorners are bodies where a decoder of its own could part from
// encoding/json: escapes, surrogates (paired, lone, reversed), invalid
// UTF-8, control bytes, number forms, literals cut short, nesting.
var jsonCorners = []string{
	`"\ud83d\ude00"`, `"\ud83d"`, `"\ude00\ud83d"`, `"\ud83d\u0041"`, `"\ud83dx"`, `"\ud83d\ud83d\ude00"`,
	"\"\xff\xfe\"", "\"a\xc3\"", "\"\xed\xa0\x80\"", "\"\xef\xbf\xbd\"", "\"\x01\"", "\"\x7f\"",
	`"\/\b\f\n\r\t\"\\"`, `"\x"`, `"\u12"`, `"\u12G4"`, `"abc`, `"\`,
	`-0`, `-`, `01`, `1.`, `.5`, `1e`, `1e+`, `1E-7`, `-0.0e00`, `1.5e308`, `12345678901234567890123`,
	`tru`, `true`, `nul`, `null `, `falsey`, ` [ ] `, `{ }`, `{"a" : 1 , "b" : [ ] }`, `{"a":1,}`, `[1,]`, `[,1]`,
	`{"a"}`, `{1:2}`, `{"a":1 "b":2}`, "\ufeff{}", `{"":1,"":2}`, `{"\u00e9":1,"é":2}`, ``, ` `, `[1]x`,
}

// TestJSONBodyCorners: on each corner case the guard's decoder and
// encoding/json agree (the fuzz target's rule, on fixed inputs).
func TestJSONBodyCorners(t *testing.T) {
	for _, s := range jsonCorners {
		if msg := differsFromEncodingJSON([]byte(s)); msg != "" {
			t.Error(msg)
		}
	}
}

// TestJSONBodyAllocs: decoding rr-api's 1 KiB body allocates the body's
// copy (and its builder), the object (2) and the value's box: nothing per
// byte or per token.
// On the Token-walking decoder it replaced: 42 allocations.
func TestJSONBodyAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	body := []byte(`{"data":"` + strings.Repeat("x", 1024-11) + `"}`)
	var r bytes.Reader
	n := testing.AllocsPerRun(100, func() {
		r.Reset(body)
		if _, err := decodeJSONBody(&r, nil, nil, nil); err != nil {
			t.Fatal(err)
		}
	})
	if n > 5 {
		t.Errorf("decoding a 1 KiB body allocated %v times, want at most 5", n)
	}
}

// BenchmarkJSONBody is the body decoder alone on rr-api's 1 KiB body.
func BenchmarkJSONBody(b *testing.B) {
	body := []byte(`{"data":"` + strings.Repeat("x", 1024-11) + `"}`)
	var r bytes.Reader
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		r.Reset(body)
		if _, err := decodeJSONBody(&r, nil, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPlainASCII: the word-at-a-time test agrees with plainByte for every
// byte value at every place of a word and of the tail; '"' aside, which it
// never sees (str gives it the bytes before a string's closing quote).
func TestPlainASCII(t *testing.T) {
	for c := range 256 {
		if c == '"' {
			continue
		}
		for at := range 19 {
			b := []byte(strings.Repeat("a", 19))
			b[at] = byte(c)
			if got := plainASCII(string(b)); got != plainByte[c] {
				t.Fatalf("byte %#x at %d: plainASCII %v, want %v", c, at, got, plainByte[c])
			}
		}
	}
}

// testJSONMediaTypes are the JSON media types the guard's rules must
// cover: application/json, the +json types kin-openapi registers a decoder
// of its own for, and one it does not (which falls back to
// application/json's).
var testJSONMediaTypes = []string{
	"application/json", "application/merge-patch+json", "application/json-patch+json", "application/ld+json",
	"application/hal+json", "application/vnd.api+json", "application/problem+json", "application/x-other+json",
}

// TestJSONBodyDecoderRegistered: whatever kin-openapi picks for a JSON
// media type (its registry, or the application/json fallback for +json)
// refuses a duplicate name and a second value.
func TestJSONBodyDecoderRegistered(t *testing.T) {
	for _, ct := range testJSONMediaTypes {
		dec := openapi3filter.RegisteredBodyDecoder(ct)
		if dec == nil {
			dec = openapi3filter.RegisteredBodyDecoder("application/json")
		}
		for _, body := range []string{`{"a":1,"a":2}`, `{"a":1}{"a":2}`} {
			if _, err := dec(strings.NewReader(body), nil, nil, nil); err == nil {
				t.Errorf("%s: the decoder kin-openapi uses took %s", ct, body)
			}
		}
	}
}

// TestJSONBodyStack: decoding the deepest body the decoder takes leaves the
// goroutine (a guarded stream's pump, which keeps it until a GC shrinks it)
// with at most 256 KiB of stack, B_guard's order. The decoder recurses, two
// frames (about 200 bytes) a level: at encoding/json's bound of 10,000
// levels a 20 KB body of brackets grew the stack to 2 MiB, and a peer's
// 1024 streams (max_streams' default) to 2 GiB that no budget counted.
func TestJSONBodyStack(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no stack shrinking while measured
	deepest := map[string]string{
		"arrays":  strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth),
		"objects": strings.Repeat(`{"":`, maxJSONDepth) + "0" + strings.Repeat("}", maxJSONDepth),
	}
	const g = 16
	for name, body := range deepest {
		if _, err := decodeJSONBody(strings.NewReader(body), nil, nil, nil); err != nil {
			t.Fatalf("%s: the deepest body allowed was refused: %v", name, err)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.StackInuse
		var decoded, done sync.WaitGroup
		hold := make(chan struct{})
		for range g {
			decoded.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				decodeJSONBody(strings.NewReader(body), nil, nil, nil)
				decoded.Done()
				<-hold // keep the grown stack
			}()
		}
		decoded.Wait()
		runtime.ReadMemStats(&ms)
		close(hold)
		done.Wait()
		if per := (int64(ms.StackInuse) - int64(before)) / g; per > 256<<10 {
			t.Errorf("%s nested %d deep (%d bytes): %d KiB of stack per goroutine, want at most 256", name, maxJSONDepth, len(body), per>>10)
		}
	}
}
