package apiguard

import (
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
)

// kin-openapi decodes a JSON body with the decoder registered for its
// media type, and a +json type without one with application/json's. Its
// own (registered for application/json and, by name, for the +json types
// in jsonMediaTypes) reads the first
// JSON value and ignores the rest, so a body such as {"data":"x"}{"data":5}
// passed a schema that only the first value meets, and was forwarded whole
// to an upstream that may read it otherwise; and it takes the last of
// duplicate names in an object, where another parser may take the first
// ({"data":5,"data":"x"} passed a schema for a string). The guard's decoder
// builds the same value kin-openapi's does (numbers kept as json.Number)
// but refuses a body that holds more than one JSON value (trailing white
// space aside) or an object with a name twice (RFC 8259 section 4 leaves
// it to the parser, I-JSON, RFC 7493, forbids it), case aside: decoders
// that match fields ignoring case (Go's) would take the unchecked one. The registration is
// process-wide: response checks (CheckedConn) get the same rules. THREATS
// P2 (only what the contract allows reaches the upstream), tested by
// TestGuardJSONOneValue, TestGuardJSONDuplicateNames and, for every JSON
// media type, TestGuardJSONMediaTypes.
func init() {
	for _, mt := range jsonMediaTypes {
		openapi3filter.RegisterBodyDecoder(mt, decodeJSONBody)
	}
}

// jsonMediaTypes are application/json and the +json types kin-openapi
// (v0.153.0, openapi3filter's init) registers its own JSON decoder for:
// each one left to it would take a second value and duplicate names
// (TestJSONBodyDecoderRegistered). Check the list when kin-openapi is
// upgraded.
var jsonMediaTypes = []string{
	"application/json",
	"application/json-patch+json",
	"application/merge-patch+json",
	"application/ld+json",
	"application/hal+json",
	"application/vnd.api+json",
	"application/problem+json",
}

var (
	errJSONTrailing  = errors.New("data after the JSON value")
	errJSONDuplicate = errors.New("an object holds the same name twice")
	errJSONDepth     = errors.New("JSON nested deeper than 512 levels")
	errJSONEnd       = errors.New("unexpected end of JSON input")
	// errJSONBudget: the peer's memory budget could not take the
	// decoded form within budgetWait. Returned bare (no ParseError):
	// the request is refused 503 memory_budget, not 400 (a response
	// checked at the importing side is unchecked_busy, not invalid).
	errJSONBudget = errors.New("the peer's memory budget cannot take the decoded body")
)

// What the decoded form takes, as jsonDecoder.charge counts it: at least
// what Go's runtime allocates for it (Go 1.26; TestJSONDecodeCharge holds
// the sum to the runtime's own count, growth of slices and maps included,
// and a Go upgrade that changes the maps fails it).
const (
	boxBytes   = 16 // a string or json.Number boxed in an any
	sliceBox   = 24 // an array's []any boxed in an any
	mapHeader  = 48 // an empty map
	mapGroup   = 288
	mapTable16 = 640
	// mapEntry is an entry past the 9th, with the tables' growth spread
	// over the entries (at most ~180 bytes an entry at any size).
	mapEntry = 200
	// decodeChunk is how much more of the budget the decoder takes at a
	// time (as much as is free, at least what it needs): the shared
	// counter is touched once for a small body, not once a value.
	decodeChunk = 16 << 10
	// foldScan is how many folded names of one object are compared one
	// by one before they go into a map.
	foldScan = 8
)

// allocBound is at least what the runtime allocates for an object of n
// bytes: small ones are rounded up to a size class (at most ~16% more, a
// header of 8 bytes for larger pointerful ones), large ones to 8 KiB pages.
func allocBound(n int) int64 {
	if n > 32<<10 {
		return int64(n+8<<10-1) &^ (8<<10 - 1)
	}
	return int64(n + n/4 + 16)
}

// mapCost is what the n-th entry of a map[string]any costs (its Go 1.26
// swiss table): the first group at the first entry, the first table at the
// ninth, mapEntry for each after (also an upper bound for the smaller
// map[string]struct{} of an object's folded names past foldScan).
func mapCost(n int) int64 {
	switch {
	case n > 9:
		return mapEntry
	case n == 9:
		return mapTable16
	case n == 1:
		return mapGroup
	}
	return 0
}

// maxJSONDepth bounds the nesting decodeJSONBody follows. It recurses,
// about 200 bytes of stack a level, on the guarded stream's own goroutine,
// which keeps a grown stack until GCs shrink it: at encoding/json's 10,000
// a 20 KB body of brackets left 2 MiB per stream, 2 GiB over a peer's
// default 1024 streams, outside every budget. 512 levels is at most 128
// KiB (TestJSONBodyStack), B_guard's order; deeper bodies are 400
// invalid_body (Ruby's JSON stops at 100, Jackson at 1000, .NET at 64).
const maxJSONDepth = 512

// jsonSyntaxError is a byte the grammar does not allow where it stands.
// It names the offset only, never the body's bytes: it reaches the
// client's problem body, and no value of a body goes anywhere else.
type jsonSyntaxError struct{ offset int }

func (e *jsonSyntaxError) Error() string {
	return "invalid JSON at byte offset " + strconv.Itoa(e.offset)
}

// decodeJSONBody is the body decoder for JSON media types: one JSON value,
// no duplicate names, nothing after it. It decodes in one pass over the
// body, and takes exactly what encoding/json's Decoder (UseNumber) takes
// into an any, giving the same value, except duplicate names and nesting
// past maxJSONDepth (FuzzJSONBody). The body is copied once into a string; names, numbers
// and strings without escapes are slices of it, so the only other
// allocations are the maps, the slices and the values' interface boxes.
// (It replaced a walk with json.Decoder.Token, which allocated an error
// for each value inside an object or array: about 6 µs of the 1 KiB
// body's check, BenchmarkJSONBody.)
func decodeJSONBody(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
	var sb strings.Builder
	// kin-openapi hands over a *bytes.Reader of the body it read: its
	// length is known, so the copy is one allocation.
	if l, ok := body.(interface{ Len() int }); ok {
		sb.Grow(l.Len())
	}
	if _, err := io.Copy(&sb, body); err != nil {
		return nil, &openapi3filter.ParseError{Kind: openapi3filter.KindInvalidFormat, Cause: err}
	}
	return decodeJSON(sb.String())
}

// decodeJSON is decodeJSONBody on the body's bytes as a string (which the
// value's names and strings may share).
func decodeJSON(s string) (any, error) {
	d := jsonDecoder{s: s, room: math.MaxInt64}
	return d.decode()
}

// decode reads d.s as one JSON value; errors but errJSONBudget are
// ParseErrors.
func (d *jsonDecoder) decode() (any, error) {
	v, err := d.value(0)
	if err == nil {
		d.space()
		if d.i < len(d.s) {
			err = errJSONTrailing
			if !jsonValueStart(d.s[d.i]) {
				// encoding/json reports a byte that cannot start a
				// value as a syntax error; either way it is refused.
				err = &jsonSyntaxError{d.i}
			}
		}
	}
	if err == errJSONBudget {
		return nil, err
	}
	if err != nil {
		return nil, &openapi3filter.ParseError{Kind: openapi3filter.KindInvalidFormat, Cause: err}
	}
	return v, nil
}

// jsonValueStart says whether c can start a JSON value.
func jsonValueStart(c byte) bool {
	switch c {
	case '{', '[', '"', '-', 't', 'f', 'n':
		return true
	}
	return '0' <= c && c <= '9'
}

// jsonDecoder reads JSON values from s, at byte i, into the form
// json.Decoder.Decode gives an any with UseNumber: map[string]any, []any,
// string, json.Number, bool, nil. With a budget, it charges what it
// builds to it as it goes, and stops with errJSONBudget when the budget
// cannot take more within wait.
type jsonDecoder struct {
	s string
	i int
	// used is what the decoded form has taken so far (charge); room is
	// what the decoder holds of budget (limit bytes in all) for it, taken
	// in chunks. Without a budget room is unbounded.
	used, room int64
	budget     *peerBudget
	limit      int64
	wait       time.Duration // how long grow may wait for the budget
	yielded    bool          // gave up for another decode waiting (grow)
	// folds is the stack of folded names of the objects being read
	// (object), innermost last; reused from object to object.
	folds []string
}

// charge counts n more bytes of the decoded form, before they are
// allocated; false when the budget cannot take them. Not inlined: in
// value and object, which recurse, it made each level's frames larger
// (TestJSONBodyStack).
//
//go:noinline
func (d *jsonDecoder) charge(n int64) bool {
	d.used += n
	return d.used <= d.room || d.grow()
}

// grow takes more of the budget: what used needs, and up to decodeChunk
// more where it is free. When none is free, a decode that holds none of
// it yet waits up to d.wait, and of those that hold some, one of the
// peer's at a time; any other gives up at once (yielded: its caller gives
// back what it holds and decodes again, decodeInBudget). Decodes that
// each held part of the budget and waited for more would wait for each
// other until all failed (TestGuardDecodedFormCharged).
func (d *jsonDecoder) grow() bool {
	if d.budget == nil {
		return false
	}
	need := d.used - d.room
	got := reserveUpTo(&d.budget.Int64, need, need+decodeChunk, d.limit, 0)
	switch {
	case got > 0:
	case d.room == 0:
		got = reserveUpTo(&d.budget.Int64, need, need+decodeChunk, d.limit, d.wait)
	case d.budget.decodeWaits.CompareAndSwap(false, true):
		got = reserveUpTo(&d.budget.Int64, need, need+decodeChunk, d.limit, d.wait)
		d.budget.decodeWaits.Store(false)
	default:
		d.yielded = true
	}
	d.room += got
	return got > 0
}

// space skips JSON white space.
func (d *jsonDecoder) space() {
	for d.i < len(d.s) {
		switch d.s[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// fail is the error for the byte at i: the end of input or a syntax error.
func (d *jsonDecoder) fail() error {
	if d.i >= len(d.s) {
		return errJSONEnd
	}
	return &jsonSyntaxError{d.i}
}

// value reads one value (after white space) nested depth levels deep.
func (d *jsonDecoder) value(depth int) (any, error) {
	d.space()
	if d.i >= len(d.s) {
		return nil, errJSONEnd
	}
	switch c := d.s[d.i]; c {
	case '{':
		if depth >= maxJSONDepth {
			return nil, errJSONDepth
		}
		return d.object(depth)
	case '[':
		if depth >= maxJSONDepth {
			return nil, errJSONDepth
		}
		return d.array(depth)
	case '"':
		s, err := d.str()
		if err != nil {
			return nil, err
		}
		if s != "" && !d.charge(boxBytes) {
			return nil, errJSONBudget
		}
		return s, nil
	case 't':
		return true, d.literal("true")
	case 'f':
		return false, d.literal("false")
	case 'n':
		return nil, d.literal("null")
	default:
		if c == '-' || '0' <= c && c <= '9' {
			return d.number()
		}
		return nil, d.fail()
	}
}

// object reads an object from its '{': no name twice.
func (d *jsonDecoder) object(depth int) (any, error) {
	d.i++ // '{'
	if !d.charge(mapHeader) {
		return nil, errJSONBudget
	}
	obj := map[string]any{}
	// The folded forms of this object's names that are not already
	// folded: d.folds[base:], or big once there are more than foldScan.
	base := len(d.folds)
	var big map[string]struct{}
	d.space()
	if d.i < len(d.s) && d.s[d.i] == '}' {
		d.i++
		return obj, nil
	}
	for {
		d.space()
		if d.i >= len(d.s) || d.s[d.i] != '"' {
			return nil, d.fail()
		}
		name, err := d.str()
		if err != nil {
			return nil, err
		}
		d.space()
		if d.i >= len(d.s) || d.s[d.i] != ':' {
			return nil, d.fail()
		}
		d.i++
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		if _, dup := obj[name]; dup {
			return nil, errJSONDuplicate
		}
		if err := d.foldCheck(obj, base, &big, name); err != nil {
			return nil, err
		}
		if !d.charge(mapCost(len(obj) + 1)) {
			return nil, errJSONBudget
		}
		obj[name] = v
		d.space()
		if d.i >= len(d.s) {
			return nil, errJSONEnd
		}
		switch d.s[d.i] {
		case ',':
			d.i++
		case '}':
			d.i++
			d.folds = d.folds[:base]
			return obj, nil
		default:
			return nil, d.fail()
		}
	}
}

// foldCheck refuses name when obj (whose folded names start at
// d.folds[base], or are in *big) holds one that differs from it only in
// case, and keeps name's folded form. (Apart from object, so that its
// frame, one per level of nesting, stays small: TestJSONBodyStack.)
func (d *jsonDecoder) foldCheck(obj map[string]any, base int, big *map[string]struct{}, name string) error {
	if !lowerASCII(name) && !d.charge(allocBound(len(name))) {
		return errJSONBudget // foldedName's copy
	}
	// Names that differ only in case are duplicates too: Go's
	// encoding/json, among others, matches a field ignoring case
	// (bytes.EqualFold), so {"kind":"ok","KIND":"admin"} would set
	// Kind to the value kin-openapi did not check. A name already in
	// folded form (lower-case ASCII, the usual) costs no allocation:
	// only the folded forms of the other names are kept, the first
	// foldScan of an object on the decoder's stack (no map per
	// object: {"A":{"B":…}} took 300 bytes more a level with one).
	if key, ok := foldedName(name); !ok {
		if d.folded(base, *big, name) {
			return errJSONDuplicate
		}
	} else {
		if _, dup := obj[key]; dup || d.folded(base, *big, key) {
			return errJSONDuplicate
		}
		switch {
		case *big != nil:
			if !d.charge(mapCost(len(*big) + 1)) {
				return errJSONBudget
			}
			(*big)[key] = struct{}{}
		case len(d.folds)-base < foldScan:
			if len(d.folds) == cap(d.folds) {
				guess := growGuess(cap(d.folds))
				if !d.charge(guess) {
					return errJSONBudget
				}
				d.folds = append(d.folds, key)
				d.used += int64(16*cap(d.folds)+24) - guess
			} else {
				d.folds = append(d.folds, key)
			}
		default:
			if !d.charge(mapHeader + mapGroup + mapTable16) { // sized for foldScan+1
				return errJSONBudget
			}
			*big = make(map[string]struct{}, foldScan+1)
			for _, k := range d.folds[base:] {
				(*big)[k] = struct{}{}
			}
			(*big)[key] = struct{}{}
			d.folds = d.folds[:base]
		}
	}
	return nil
}

// folded says whether key is one of the folded names of the object
// whose names start at d.folds[base] (or are in big).
func (d *jsonDecoder) folded(base int, big map[string]struct{}, key string) bool {
	if big != nil {
		_, ok := big[key]
		return ok
	}
	for _, k := range d.folds[base:] {
		if k == key {
			return true
		}
	}
	return false
}

// growGuess is at least what append allocates when a slice of 16-byte
// elements (any, string) grows from capacity c (Go doubles it below 256,
// then adds a quarter and 192, rounding up to a size class), and at least
// the 16*cap+24 the caller counts once append has picked cap.
func growGuess(c int) int64 {
	if c < 256 {
		return allocBound(16*(2*c+1)) + 24
	}
	return allocBound(16*(c+c/4+192+1)) + 24
}

// array reads an array from its '['.
func (d *jsonDecoder) array(depth int) (any, error) {
	d.i++ // '['
	if !d.charge(sliceBox) {
		return nil, errJSONBudget
	}
	arr := []any{}
	d.space()
	if d.i < len(d.s) && d.s[d.i] == ']' {
		d.i++
		return arr, nil
	}
	for {
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		if len(arr) == cap(arr) {
			// Charged before the append for the capacity append may
			// pick, then corrected to the one it picked (with a heap
			// object's header and rounding): exact, and never late.
			guess := growGuess(cap(arr))
			if !d.charge(guess) {
				return nil, errJSONBudget
			}
			arr = append(arr, v)
			d.used += int64(16*cap(arr)+24) - guess
		} else {
			arr = append(arr, v)
		}
		d.space()
		if d.i >= len(d.s) {
			return nil, errJSONEnd
		}
		switch d.s[d.i] {
		case ',':
			d.i++
		case ']':
			d.i++
			return arr, nil
		default:
			return nil, d.fail()
		}
	}
}

// literal reads true, false or null.
func (d *jsonDecoder) literal(word string) error {
	for k := 0; k < len(word); k++ {
		if d.i >= len(d.s) || d.s[d.i] != word[k] {
			return d.fail()
		}
		d.i++
	}
	return nil
}

// number reads a number as RFC 8259 writes it, kept as its text.
func (d *jsonDecoder) number() (any, error) {
	start := d.i
	if d.s[d.i] == '-' {
		d.i++
	}
	switch {
	case d.i < len(d.s) && d.s[d.i] == '0':
		d.i++
	case d.i < len(d.s) && '1' <= d.s[d.i] && d.s[d.i] <= '9':
		d.digits()
	default:
		return nil, d.fail()
	}
	if d.i < len(d.s) && d.s[d.i] == '.' {
		d.i++
		if d.digits() == 0 {
			return nil, d.fail()
		}
	}
	if d.i < len(d.s) && (d.s[d.i] == 'e' || d.s[d.i] == 'E') {
		d.i++
		if d.i < len(d.s) && (d.s[d.i] == '+' || d.s[d.i] == '-') {
			d.i++
		}
		if d.digits() == 0 {
			return nil, d.fail()
		}
	}
	if !d.charge(boxBytes) {
		return nil, errJSONBudget
	}
	return json.Number(d.s[start:d.i]), nil
}

// digits skips decimal digits and says how many.
func (d *jsonDecoder) digits() int {
	start := d.i
	for d.i < len(d.s) && '0' <= d.s[d.i] && d.s[d.i] <= '9' {
		d.i++
	}
	return d.i - start
}

// str reads a string from its '"'. One without escapes whose bytes are
// valid UTF-8 is a slice of the body; any other is built as encoding/json
// builds it (an invalid byte or a lone surrogate becomes U+FFFD).
func (d *jsonDecoder) str() (string, error) {
	d.i++ // '"'
	start := d.i
	// Most strings are printable ASCII without escapes up to the next
	// '"' (found with the vectorised IndexByte): checked 8 bytes at a
	// time, they are a slice of the body as they are.
	if j := strings.IndexByte(d.s[start:], '"'); j >= 0 && plainASCII(d.s[start:start+j]) {
		d.i = start + j + 1
		return d.s[start : start+j], nil
	}
	plain := true
	bad := 0 // invalid UTF-8 bytes: each becomes U+FFFD, 3 bytes
	for {
		// The common bytes first, one table look-up each (in locals:
		// through d, each step would load d.s and d.i again).
		s, i := d.s, d.i
		for i < len(s) && plainByte[s[i]] {
			i++
		}
		d.i = i
		if d.i >= len(d.s) {
			return "", errJSONEnd
		}
		c := d.s[d.i]
		switch {
		case c == '"':
			s := d.s[start:d.i]
			d.i++
			if plain {
				return s, nil
			}
			// unquote's buffer and its string, at most len(s)+2*bad each.
			if !d.charge(2 * allocBound(len(s)+2*bad)) {
				return "", errJSONBudget
			}
			return unquote(s, bad), nil
		case c == '\\':
			plain = false
			d.i++
			if d.i >= len(d.s) {
				return "", errJSONEnd
			}
			switch d.s[d.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				d.i++
			case 'u':
				d.i++
				for range 4 {
					if d.i >= len(d.s) {
						return "", errJSONEnd
					}
					if !isHex(d.s[d.i]) {
						return "", d.fail()
					}
					d.i++
				}
			default:
				return "", d.fail()
			}
		case c < 0x20:
			return "", d.fail()
		case c < utf8.RuneSelf:
			d.i++
		default:
			r, n := utf8.DecodeRuneInString(d.s[d.i:])
			if r == utf8.RuneError && n == 1 {
				plain = false
				bad++
			}
			d.i += n
		}
	}
}

// plainASCII says whether s, the bytes before a string's closing '"',
// holds only bytes of plainByte: none below 0x20, none from 0x80, no
// '\\'. Eight bytes at a time, each test the exact "some byte is below
// n" of a word (no false positive: a borrow only starts at a byte that is
// below n).
func plainASCII(s string) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := s[i : i+8] // one bounds check; the loads merge into one
		x := uint64(w[0]) | uint64(w[1])<<8 | uint64(w[2])<<16 | uint64(w[3])<<24 |
			uint64(w[4])<<32 | uint64(w[5])<<40 | uint64(w[6])<<48 | uint64(w[7])<<56
		bs := x ^ ('\\' * ones) // a zero byte where x has a '\\'
		if (x|(x-0x20*ones)&^x|(bs-ones)&^bs)&highs != 0 {
			return false
		}
	}
	for ; i < len(s); i++ {
		if !plainByte[s[i]] {
			return false
		}
	}
	return true
}

// plainByte marks the bytes a string holds as they are: ASCII but
// control bytes, '"' and '\\'.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// unquote decodes a string's body whose escapes str checked, as
// encoding/json's unquote does; bad is its count of invalid UTF-8 bytes.
// The result is at most len(s)+2*bad bytes (an escape is never longer
// than its text, an invalid byte becomes 3), so the buffer never grows.
func unquote(s string, bad int) string {
	b := make([]byte, 0, len(s)+2*bad)
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\':
			i++
			switch s[i] {
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r := hex4(s[i+1:])
				i += 5
				if utf16.IsSurrogate(r) {
					// A pair only when a second \u escape follows and
					// completes it; otherwise U+FFFD, the second
					// escape left for the next round.
					if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
						if dec := utf16.DecodeRune(r, hex4(s[i+2:])); dec != utf8.RuneError {
							b = utf8.AppendRune(b, dec)
							i += 6
							continue
						}
					}
					r = utf8.RuneError
				}
				b = utf8.AppendRune(b, r)
				continue
			default: // '"', '\\', '/'
				b = append(b, s[i])
			}
			i++
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, n := utf8.DecodeRuneInString(s[i:])
			b = utf8.AppendRune(b, r) // an invalid byte: U+FFFD
			i += n
		}
	}
	return string(b)
}

// hex4 is the value of the 4 hex digits at s's start (str checked them).
func hex4(s string) rune {
	var r rune
	for _, c := range []byte(s[:4]) {
		switch {
		case c <= '9':
			c -= '0'
		case c <= 'F':
			c -= 'A' - 10
		default:
			c -= 'a' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// lowerASCII says whether name is lower-case ASCII (foldedName returns
// it as it is, without allocating).
func lowerASCII(name string) bool {
	for i := 0; i < len(name); i++ {
		if name[i] >= utf8.RuneSelf || 'A' <= name[i] && name[i] <= 'Z' {
			return false
		}
	}
	return true
}

// foldedName returns name folded for a case-insensitive comparison, each
// rune replaced by foldRune's member of its simple case-folding orbit (so
// two names fold alike exactly when bytes.EqualFold says they are equal),
// and whether that differs from name. Lower-case ASCII names, which fold
// to themselves, return at once.
func foldedName(name string) (string, bool) {
	i := 0
	for i < len(name) && name[i] < utf8.RuneSelf && !('A' <= name[i] && name[i] <= 'Z') {
		i++
	}
	if i == len(name) {
		return name, false
	}
	var b strings.Builder
	b.Grow(len(name))
	for _, r := range name {
		b.WriteRune(foldRune(r))
	}
	if f := b.String(); f != name {
		return f, true
	}
	return name, false
}

// foldRune picks one member of r's simple case-folding orbit: its
// lower-case ASCII letter when the orbit has one (k for K, k and the
// Kelvin sign; s for S, s and the long s), else the smallest rune.
func foldRune(r rune) rune {
	pick := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		switch {
		case 'a' <= f && f <= 'z':
			return f
		case f < pick:
			pick = f
		}
	}
	if 'a' <= r && r <= 'z' {
		return r
	}
	return pick
}
