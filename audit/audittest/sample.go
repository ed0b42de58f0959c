package audittest

import (
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
)

// Sample returns valid attributes for every attribute of a catalogue event:
// strings are "v-<key>", numbers differ per attribute. strs, when not nil,
// gives the value of a string attribute instead ("" keeps the default).
func Sample(s audit.Spec, strs func(key string) string) []attribute.KeyValue {
	var kvs []attribute.KeyValue
	for i, a := range s.Attrs {
		k := attribute.Key(a.Key)
		switch a.Type {
		case audit.String:
			v := "v-" + a.Key
			if strs != nil && strs(a.Key) != "" {
				v = strs(a.Key)
			}
			kvs = append(kvs, k.String(v))
		case audit.Int:
			kvs = append(kvs, k.Int64(int64(1000+i)))
		case audit.Float:
			kvs = append(kvs, k.Float64(0.25+float64(i)))
		case audit.Bool:
			kvs = append(kvs, k.Bool(true))
		case audit.StringSlice:
			kvs = append(kvs, k.StringSlice([]string{"a", a.Key}))
		}
	}
	return kvs
}
