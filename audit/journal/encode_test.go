package journal

import (
	"encoding/json"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

// TestAppendStringMatchesJSON: the canonical encoding of a string is
// exactly encoding/json's (the hash chain is over these bytes), for plain
// ASCII, every character json escapes (quotes, backslash, controls, <>&),
// non-ASCII, U+2028/2029 and invalid UTF-8.
func TestAppendStringMatchesJSON(t *testing.T) {
	cases := []string{"", "dyad.stream.opened", "INFO", "127.0.0.1", "a b~", `"`, `\`, "<", ">", "&", "\x00", "\n", "\x1f", "\x7f",
		"é", "日本", "\u2028", "\u2029", "\xff", "a\xc3", "ok then \"quoted\" <tag> & more"}
	for c := 0; c < 256; c++ {
		cases = append(cases, "x"+string(rune(c))+"y", "x"+string([]byte{byte(c)})+"y")
	}
	for _, s := range cases {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); string(got) != string(want) {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
}

// TestEncodeAllocatesNothing: encoding a typical stream event into a
// buffer with room allocates nothing (each stream writes 2 events per side;
// encoding/json per string cost 5% of a churn profile).
func TestEncodeAllocatesNothing(t *testing.T) {
	e := Entry{Seq: 7, Time: time.Unix(1, 2), Name: "dyad.stream.closed", Severity: "INFO", Attrs: []attribute.KeyValue{
		attribute.String("dyad.peer", "site-b"), attribute.String("dyad.service", "payments"), attribute.Int64("dyad.stream.id", 4),
		attribute.Float64("dyad.duration", 0.25), attribute.String("dyad.close_reason", "eof")}}
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { buf = e.AppendEncode(buf[:0]) }); n != 0 {
		t.Fatalf("%v allocations per encoded entry", n)
	}
}
