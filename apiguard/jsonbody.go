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
// to an upstream that may read it otherwise. The guard's decoder is
// kin-openapi's (encoding/json, numbers kept as json.Number) and also
// requires the body to end after that value, trailing white space aside.
// The registration is process-wide: response checks (CheckedConn) get the
// same rule. THREATS P2 (only what the contract allows reaches the
// upstream), tested by TestGuardJSONOneValue.
func init() {
	openapi3filter.RegisterBodyDecoder("application/json", decodeJSONBody)
}

var errJSONTrailing = errors.New("data after the JSON value")

// decodeJSONBody is the body decoder for JSON media types: one JSON value,
// nothing after it.
func decodeJSONBody(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
	dec := json.NewDecoder(body)
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, &openapi3filter.ParseError{Kind: openapi3filter.KindInvalidFormat, Cause: err}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &openapi3filter.ParseError{Kind: openapi3filter.KindInvalidFormat, Cause: errJSONTrailing}
	}
	return v, nil
}
