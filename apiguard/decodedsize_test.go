package apiguard

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
)

// jsonExpansionBound is how many bytes of memory a JSON body's decoded
// form may take per byte of the body while kin-openapi validates it (the
// README's memory formula counts it: "Bodies").
const jsonExpansionBound = 64

// TestJSONBodyDecodedSize: the decoded form of the worst bodies (the most
// values per byte) stays within jsonExpansionBound bytes per body byte.
func TestJSONBodyDecodedSize(t *testing.T) {
	const n = 1 << 20
	shapes := map[string]func(i int) string{
		"numbers":       func(int) string { return "0" },
		"empty objects": func(int) string { return "{}" },
		"empty arrays":  func(int) string { return "[]" },
		"empty strings": func(int) string { return `""` },
		"literals":      func(int) string { return "null" },
		"object names":  func(i int) string { return fmt.Sprintf(`{"%x":0}`, i) },
	}
	for name, elem := range shapes {
		var b bytes.Buffer
		b.WriteByte('[')
		for i := 0; b.Len() < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(elem(i))
		}
		b.WriteByte(']')
		body := b.Bytes()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		v, err := decodeJSONBody(bytes.NewReader(body), nil, nil, nil)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		runtime.KeepAlive(v)
		per := float64(after.TotalAlloc-before.TotalAlloc) / float64(len(body))
		t.Logf("%s: %.1f bytes allocated per body byte", name, per)
		if per > jsonExpansionBound {
			t.Errorf("%s: %.1f bytes per body byte, over %d", name, per, jsonExpansionBound)
		}
	}
}
