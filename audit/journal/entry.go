package journal

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

// Entry is one line of the journal:
//
//	{"seq":7,"time":"2026-11-23T10:00:00.123456789Z","prev":"<64 hex>","name":"dyad.tunnel.established","severity":"INFO","attrs":{...}}
//
// The fields appear in this order and nowhere else is whitespace allowed, so
// an entry has exactly one encoding and the hashes are over those bytes.
type Entry struct {
	Seq      uint64    // position in the journal, from 0: the entry's Merkle leaf index
	Time     time.Time // when the event happened, UTC
	Prev     [sha256.Size]byte
	Name     string // event name, e.g. dyad.tunnel.established
	Severity string // TRACE, DEBUG, INFO, WARN, ERROR or FATAL
	Attrs    []attribute.KeyValue
}

// Attr returns the value of the attribute key, or an invalid Value.
func (e *Entry) Attr(key string) attribute.Value {
	for _, kv := range e.Attrs {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// Hash is the SHA-256 of an encoded entry (without its newline): the next
// entry's Prev.
func Hash(line []byte) [sha256.Size]byte { return sha256.Sum256(line) }

// AppendEncode appends the canonical encoding of e to dst, without a newline.
func (e *Entry) AppendEncode(dst []byte) []byte {
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, e.Seq, 10)
	dst = append(dst, `,"time":"`...)
	dst = e.Time.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","prev":"`...)
	dst = hex.AppendEncode(dst, e.Prev[:])
	dst = append(dst, `","name":`...)
	dst = appendString(dst, e.Name)
	dst = append(dst, `,"severity":`...)
	dst = appendString(dst, e.Severity)
	dst = append(dst, `,"attrs":{`...)
	for i, kv := range e.Attrs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, string(kv.Key))
		dst = append(dst, ':')
		dst = appendValue(dst, kv.Value)
	}
	return append(dst, "}}"...)
}

// appendString appends s as encoding/json writes it. The plain printable
// ASCII of event names, keys and most values is copied between quotes with
// no allocation (TestEncodeAllocatesNothing); anything json would escape
// goes through json itself, so the bytes are the same either way
// (TestAppendStringMatchesJSON).
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // a string always marshals
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// appendValue writes scalars as JSON scalars and slices as arrays. A float
// always carries a '.' or an exponent so that it decodes as a float again.
func appendValue(dst []byte, v attribute.Value) []byte {
	switch v.Type() {
	case attribute.BOOL:
		return strconv.AppendBool(dst, v.AsBool())
	case attribute.INT64:
		return strconv.AppendInt(dst, v.AsInt64(), 10)
	case attribute.FLOAT64:
		return appendFloat(dst, v.AsFloat64())
	case attribute.STRING:
		return appendString(dst, v.AsString())
	case attribute.STRINGSLICE:
		dst = append(dst, '[')
		for i, s := range v.AsStringSlice() {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, s)
		}
		return append(dst, ']')
	case attribute.INT64SLICE:
		dst = append(dst, '[')
		for i, n := range v.AsInt64Slice() {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = strconv.AppendInt(dst, n, 10)
		}
		return append(dst, ']')
	}
	// Other kinds are not used by dyad's catalogue; keep them readable.
	return appendString(dst, v.Emit())
}

func appendFloat(dst []byte, f float64) []byte {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return appendString(dst, strconv.FormatFloat(f, 'g', -1, 64))
	}
	start := len(dst)
	dst = strconv.AppendFloat(dst, f, 'g', -1, 64)
	if !bytes.ContainsAny(dst[start:], ".eE") {
		dst = append(dst, ".0"...)
	}
	return dst
}

// ErrMalformed reports a line that is not a canonical journal entry.
var ErrMalformed = errors.New("malformed entry")

// Decode parses one line (without its newline). It accepts only the
// canonical encoding: the entry must re-encode to the same bytes.
func Decode(line []byte) (Entry, error) {
	var e Entry
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	if err := expectDelim(d, '{'); err != nil {
		return e, err
	}
	for _, field := range [...]string{"seq", "time", "prev", "name", "severity", "attrs"} {
		key, err := d.Token()
		if err != nil || key != field {
			return e, fmt.Errorf("%w: want field %q", ErrMalformed, field)
		}
		if field == "attrs" {
			if e.Attrs, err = decodeAttrs(d); err != nil {
				return e, err
			}
			continue
		}
		tok, err := d.Token()
		if err != nil {
			return e, fmt.Errorf("%w: field %q: %v", ErrMalformed, field, err)
		}
		if err := e.setField(field, tok); err != nil {
			return e, err
		}
	}
	if err := expectDelim(d, '}'); err != nil {
		return e, err
	}
	if !bytes.Equal(e.AppendEncode(nil), line) {
		return e, fmt.Errorf("%w: not in canonical form", ErrMalformed)
	}
	return e, nil
}

func (e *Entry) setField(field string, tok json.Token) error {
	switch field {
	case "seq":
		n, ok := tok.(json.Number)
		if !ok {
			return fmt.Errorf("%w: seq is not a number", ErrMalformed)
		}
		seq, err := strconv.ParseUint(n.String(), 10, 64)
		if err != nil {
			return fmt.Errorf("%w: seq: %v", ErrMalformed, err)
		}
		e.Seq = seq
		return nil
	}
	s, ok := tok.(string)
	if !ok {
		return fmt.Errorf("%w: %s is not a string", ErrMalformed, field)
	}
	switch field {
	case "time":
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return fmt.Errorf("%w: time: %v", ErrMalformed, err)
		}
		e.Time = t.UTC()
	case "prev":
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != sha256.Size {
			return fmt.Errorf("%w: prev is not 64 hex digits", ErrMalformed)
		}
		copy(e.Prev[:], b)
	case "name":
		e.Name = s
	case "severity":
		e.Severity = s
	}
	return nil
}

func decodeAttrs(d *json.Decoder) ([]attribute.KeyValue, error) {
	if err := expectDelim(d, '{'); err != nil {
		return nil, err
	}
	var attrs []attribute.KeyValue
	for d.More() {
		tok, err := d.Token()
		key, ok := tok.(string)
		if err != nil || !ok {
			return nil, fmt.Errorf("%w: attribute key", ErrMalformed)
		}
		v, err := decodeValue(d)
		if err != nil {
			return nil, fmt.Errorf("%w: attribute %q: %v", ErrMalformed, key, err)
		}
		attrs = append(attrs, attribute.KeyValue{Key: attribute.Key(key), Value: v})
	}
	return attrs, expectDelim(d, '}')
}

func decodeValue(d *json.Decoder) (attribute.Value, error) {
	tok, err := d.Token()
	if err != nil {
		return attribute.Value{}, err
	}
	switch t := tok.(type) {
	case bool:
		return attribute.BoolValue(t), nil
	case string:
		return attribute.StringValue(t), nil
	case json.Number:
		return numberValue(t)
	case json.Delim:
		if t != '[' {
			return attribute.Value{}, errors.New("unexpected delimiter")
		}
		var strs []string
		var ints []int64
		for d.More() {
			tok, err := d.Token()
			if err != nil {
				return attribute.Value{}, err
			}
			switch t := tok.(type) {
			case string:
				strs = append(strs, t)
			case json.Number:
				n, err := strconv.ParseInt(t.String(), 10, 64)
				if err != nil {
					return attribute.Value{}, err
				}
				ints = append(ints, n)
			default:
				return attribute.Value{}, errors.New("array element is not a string or an integer")
			}
		}
		if _, err := d.Token(); err != nil {
			return attribute.Value{}, err
		}
		if len(ints) > 0 && len(strs) > 0 {
			return attribute.Value{}, errors.New("mixed array")
		}
		if len(ints) > 0 {
			return attribute.Int64SliceValue(ints), nil
		}
		return attribute.StringSliceValue(strs), nil
	}
	return attribute.Value{}, errors.New("null is not a value")
}

func numberValue(n json.Number) (attribute.Value, error) {
	s := n.String()
	if strings.ContainsAny(s, ".eE") {
		f, err := strconv.ParseFloat(s, 64)
		return attribute.Float64Value(f), err
	}
	i, err := strconv.ParseInt(s, 10, 64)
	return attribute.Int64Value(i), err
}

func expectDelim(d *json.Decoder, want json.Delim) error {
	tok, err := d.Token()
	if err != nil || tok != want {
		return fmt.Errorf("%w: want %q", ErrMalformed, want)
	}
	return nil
}
