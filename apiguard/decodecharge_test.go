package apiguard

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// decodedSink keeps a decoded value alive, so the compiler cannot drop
// what TestJSONDecodeCharge measures.
var decodedSink any

// decodeCharged decodes body as checkJSONBody does, unbounded: the bytes
// charged for it, its copy included.
func decodeCharged(body []byte) (any, int64, error) {
	d := jsonDecoder{room: 1 << 62}
	d.charge(allocBound(len(body)))
	d.s = string(body)
	v, err := d.decode()
	return v, d.used, err
}

// TestJSONDecodeCharge: what the decoder charges for a body is at least
// what the runtime allocates decoding it (measured as
// TestJSONBodyDecodedSize measures: TotalAlloc, growth of maps and slices
// included), for the densest bodies, maps and arrays of every growth step,
// escapes, invalid UTF-8, names folded for the duplicate check and deep
// nesting; and for the densest at most 64 bytes per body byte, so one
// max_body body always fits the budget (BudgetFactor).
func TestJSONDecodeCharge(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	bodies := map[string]string{}
	const big = 1 << 20
	for name, elem := range map[string]string{"numbers": "0", "empty objects": "{}", "empty arrays": "[]",
		"empty strings": `""`, "literals": "null", "strings": `"a"`, "escaped": `"\n"`} {
		bodies[name] = "[" + strings.Repeat(elem+",", big/(len(elem)+1)) + elem + "]"
	}
	var names strings.Builder
	names.WriteString("[")
	for i := 0; names.Len() < big; i++ {
		fmt.Fprintf(&names, `{"%x":0},`, i)
	}
	bodies["object names"] = names.String() + "{}]"
	for name, elem := range map[string]string{"upper names": `{"A":0}`, "nested names": `{"a":{"b":{"c":{"d":0}}}}`,
		"nested upper names": `{"A":{"B":{"C":{"D":0}}}}`, "nested objects in arrays": `{"a":[{"a":[{"a":[]}]}]}`} {
		bodies[name] = "[" + strings.Repeat(elem+",", big/(len(elem)+1)) + elem + "]"
	}
	for _, n := range []int{1, 2, 7, 8, 9, 10, 14, 15, 16, 28, 29, 30, 56, 57, 112, 113, 224, 225, 448, 449, 896, 897, 1000, 1792, 1793, 5000, 20000} {
		for _, form := range []string{"k%d", "K%d", "é%d"} {
			var b strings.Builder
			b.WriteString("{")
			for i := range n {
				if i > 0 {
					b.WriteString(",")
				}
				fmt.Fprintf(&b, `"`+form+`":0`, i)
			}
			b.WriteString("}")
			bodies[fmt.Sprintf("object of %d %s", n, form)] = b.String()
		}
		bodies[fmt.Sprintf("array of %d", n)] = "[" + strings.Repeat("1,", n-1) + "1]"
	}
	bodies["invalid UTF-8"] = `["` + strings.Repeat("\xff", 5000) + `"]`
	bodies["surrogates"] = `["` + strings.Repeat(`\ud800`, 1000) + `", "\ud83d\ude00"]`
	bodies["long escaped"] = `{"a":"` + strings.Repeat(`x\"`, 100000) + `"}`
	bodies["deep"] = strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth)
	bodies["payment"] = newPayment

	for name, body := range bodies {
		raw := []byte(body)
		reps := max(1, (4<<20)/len(raw)) // bytes enough that span refills average out
		reps = min(reps, 2000)
		var charged int64
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range reps {
			v, c, err := decodeCharged(raw)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			charged = c
			decodedSink = v
		}
		runtime.ReadMemStats(&after)
		real := float64(after.TotalAlloc-before.TotalAlloc) / float64(reps)
		if float64(charged) < real {
			t.Errorf("%s (%d bytes): charged %d, the runtime allocated %.0f", name, len(raw), charged, real)
		}
		if len(raw) >= big && charged > 64*int64(len(raw)) {
			t.Errorf("%s: charged %.1f bytes per body byte, over 64", name, float64(charged)/float64(len(raw)))
		}
		if testing.Verbose() {
			t.Logf("%s: charged %.1f, allocated %.1f bytes per body byte (%d, %.1f)", name, float64(charged)/float64(len(raw)), real/float64(len(raw)), charged, real)
		}
	}
	decodedSink = nil
}

// TestJSONFoldedNamesMany: the duplicate check by case, whose folded names
// sit on the decoder's stack up to foldScan an object and in a map past
// it, refuses exactly the objects bytes.EqualFold finds two equal names
// in, with up to 20 names, nested objects between them, at every
// position.
func TestJSONFoldedNamesMany(t *testing.T) {
	words := []string{"a", "A", "b", "B", "k", "K", "\u212a", "s", "S", "\u017f", "ab", "Ab", "aB", "x1", "X1", "é", "É", "q", "Q", "zz"}
	// Past foldScan: a name's duplicate early, late, in both forms.
	var many []string
	for i := range 12 {
		many = append(many, fmt.Sprintf(`"N%d":0`, i))
	}
	all := strings.Join(many, ",")
	for body, ok := range map[string]bool{
		"{" + all + "}":                   true,
		"{" + all + `,"n0":1}`:            false,
		"{" + all + `,"n11":1}`:           false,
		"{" + all + `,"N5":1}`:            false,
		`{"n3":1,` + all + "}":            false,
		"{" + all + `,"n12":1}`:           true,
		"{" + all + `,"x":{` + all + `}}`: true,
	} {
		if _, err := decodeJSON(body); (err == nil) != ok {
			t.Errorf("%s: err %v, want ok %v", body, err, ok)
		}
	}
	rnd := uint64(1)
	next := func(n int) int {
		rnd = rnd*6364136223846793005 + 1442695040888963407
		return int(rnd>>33) % n
	}
	for range 5000 {
		n := 1 + next(20)
		names := make([]string, n)
		var b strings.Builder
		b.WriteString("{")
		for i := range names {
			names[i] = words[next(len(words))] + strings.Repeat("z", next(2))
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, "%q:", names[i])
			if next(3) == 0 {
				// A nested object's folded names sit above this
				// one's on the stack, and go when it ends.
				b.WriteString(`{"A":1,"B":{"C":0,"c2":1}}`)
				continue
			}
			b.WriteString("0")
		}
		b.WriteString("}")
		want := true
		for i := range names {
			for j := range i {
				if bytes.EqualFold([]byte(names[i]), []byte(names[j])) {
					want = false
				}
			}
		}
		_, err := decodeJSON(b.String())
		if (err == nil) != want {
			t.Fatalf("%s: err %v, want ok %v", b.String(), err, want)
		}
	}
}
