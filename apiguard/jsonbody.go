package apiguard

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
)

// kin-openapi decodes application/json (and any +json type) bodies with
// the decoder registered for application/json. Its own reads the first
// JSON value and ignores the rest, so a body such as {"data":"x"}{"data":5}
// passed a schema that only the first value meets, and was forwarded whole
// to an upstream that may read it otherwise; and it takes the last of
// duplicate names in an object, where another parser may take the first
// ({"data":5,"data":"x"} passed a schema for a string). The guard's decoder
// builds the same value kin-openapi's does (numbers kept as json.Number)
// but refuses a body that holds more than one JSON value (trailing white
// space aside) or an object with a name twice (RFC 8259 section 4 leaves
// it to the parser, I-JSON, RFC 7493, forbids it). The registration is
// process-wide: response checks (CheckedConn) get the same rules. THREATS
// P2 (only what the contract allows reaches the upstream), tested by
// TestGuardJSONOneValue and TestGuardJSONDuplicateNames.
func init() {
	openapi3filter.RegisterBodyDecoder("application/json", decodeJSONBody)
}

var (
	errJSONTrailing  = errors.New("data after the JSON value")
	errJSONDuplicate = errors.New("an object holds the same name twice")
	errJSONDepth     = errors.New("JSON nested deeper than 10000 levels")
)

// maxJSONDepth bounds the nesting decodeJSONBody follows (encoding/json's
// own limit), so a body of brackets cannot grow the stack.
const maxJSONDepth = 10000

// decodeJSONBody is the body decoder for JSON media types: one JSON value,
// no duplicate names, nothing after it.
func decodeJSONBody(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
	dec := json.NewDecoder(body)
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return nil, &openapi3filter.ParseError{Kind: openapi3filter.KindInvalidFormat, Cause: err}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &openapi3filter.ParseError{Kind: openapi3filter.KindInvalidFormat, Cause: errJSONTrailing}
	}
	return v, nil
}

// decodeValue reads one JSON value token by token into the form
// json.Decoder.Decode gives an any (map[string]any, []any, string,
// json.Number, bool, nil), refusing duplicate names.
func decodeValue(dec *json.Decoder, depth int) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil
	}
	if depth >= maxJSONDepth {
		return nil, errJSONDepth
	}
	switch d {
	case '{':
		obj := map[string]any{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return nil, err
			}
			name := tok.(string) // the decoder gives only names here
			if _, dup := obj[name]; dup {
				return nil, errJSONDuplicate
			}
			if obj[name], err = decodeValue(dec, depth+1); err != nil {
				return nil, err
			}
		}
		_, err := dec.Token() // '}'
		return obj, err
	case '[':
		arr := []any{}
		for dec.More() {
			v, err := decodeValue(dec, depth+1)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		_, err := dec.Token() // ']'
		return arr, err
	}
	return nil, errors.New("unexpected JSON delimiter")
}
