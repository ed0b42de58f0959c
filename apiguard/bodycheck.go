package apiguard

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"unsafe"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
)

// jsonCase is a held body checkJSONBody takes: its operation's request
// body, the media type entry that describes it, and the media type as
// openapi3filter's decodeBody reads it from Content-Type.
type jsonCase struct {
	rb        *openapi3.RequestBody
	mt        *openapi3.MediaType
	mediaType string
}

// jsonBodyCase says whether checkJSONBody takes req's held body data:
// kin-openapi's openapi3filter.ValidateRequestBody (v0.153.0) would reach
// the guard's own JSON decoder for it (a non-empty body whose media type
// is one of jsonMediaTypes, a schema, no Encoding entry, not binary).
// Otherwise mt is nil and kin-openapi checks the body whole.
func jsonBodyCase(route *routers.Route, req *http.Request, data []byte) jsonCase {
	if route.Operation == nil || route.Operation.RequestBody == nil {
		return jsonCase{}
	}
	rb := route.Operation.RequestBody.Value
	if rb == nil || len(data) == 0 || len(rb.Content) == 0 {
		return jsonCase{}
	}
	inputMIME := req.Header.Get("Content-Type")
	mt := rb.Content.Get(inputMIME)
	if mt == nil || mt.Schema == nil || mt.Schema.Value == nil || mt.Encoding[""] != nil ||
		mt.Schema.Value.Type.Is("string") && mt.Schema.Value.Format == "binary" {
		return jsonCase{}
	}
	// The media type as decodeBody derives it from the field, to pick
	// the decoder.
	mediaType, _, _ := strings.Cut(inputMIME, ";")
	mediaType = strings.ToLower(strings.TrimSpace(mediaType))
	if !guardDecodes(mediaType) {
		return jsonCase{}
	}
	return jsonCase{rb: rb, mt: mt, mediaType: mediaType}
}

// checkJSONBody checks a held JSON body (c.bodyData) of jsonBodyCase
// against its schema as kin-openapi's ValidateRequestBody does: the schema
// check is kin-openapi's own (Schema.VisitJSON, with the options and the
// defaults ValidateRequestBody gives it). What it leaves out is what
// ValidateRequestBody does around that for a body the guard holds
// already: reading it whole again (io.ReadAll: 4 allocations and a copy
// per request), wrapping it in a reader for the decoder and setting
// GetBody to yet another reader (README, "API guard", Cost). Its errors
// are kin-openapi's, built as it builds them (the same Reason and Err),
// so the client's problem body and the event's reason are the same.
// THREATS P2 (the upstream sees only what the contract allows), tested by
// TestCheckJSONBodyAsKin and FuzzCheckJSONBodyAsKin, which compare the two
// on valid, invalid, defaulted and odd bodies.
func (c *conn) checkJSONBody(route *routers.Route, req *http.Request, jc jsonCase) error {
	// The held bytes are decoded where they are, not copied into a string
	// first (1 KiB and an allocation per rr-api request, a third of what
	// the request allocated): the value's names and strings share
	// c.bodyData, which nothing writes and release does not give back
	// before the request is forwarded, and nothing keeps the value once
	// this returns (defaults are encoded into a new body; decide copies
	// the error's text before release). THREATS P6 (no byte of one
	// request in another's), tested by TestCheckJSONBodyNoAlias.
	value, err := decodeJSON(unsafe.String(unsafe.SliceData(c.bodyData), len(c.bodyData)))
	if err != nil {
		return &openapi3filter.RequestError{Input: &c.in, RequestBody: jc.rb, Reason: "failed to decode request body", Err: err}
	}
	// ValidateRequestBody's options for the guard's Options (validateAll):
	// as a request, defaults set (every JSON type has an encoder), JSON
	// Schema 2020-12 for a 3.1 document.
	opts := c.visitOpts(route.Spec != nil && route.Spec.IsOpenAPI31OrLater())
	c.defaulted = false
	if err := jc.mt.Schema.Value.VisitJSON(value, opts...); err != nil {
		return &openapi3filter.RequestError{Input: &c.in, RequestBody: jc.rb, Reason: "doesn't match schema" + schemaID(jc.mt.Schema), Err: err}
	}
	if !c.defaulted {
		return nil
	}
	// The schema's defaults were written into value: the body forwarded
	// is value encoded again, as kin-openapi does.
	enc := openapi3filter.RegisteredBodyEncoder(jc.mediaType)
	if enc == nil {
		enc = openapi3filter.RegisteredBodyEncoder("application/json") // the others are +json
	}
	out, err := enc(value)
	if err != nil {
		return &openapi3filter.RequestError{Input: &c.in, RequestBody: jc.rb, Reason: "rewriting failed", Err: err}
	}
	req.ContentLength = int64(len(out))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(out)), nil }
	req.Body, _ = req.GetBody()
	return nil
}

// guardDecodes says whether mediaType is one of jsonMediaTypes (the
// guard's decoder is registered for it).
func guardDecodes(mediaType string) bool {
	for _, m := range jsonMediaTypes {
		if m == mediaType {
			return true
		}
	}
	return false
}

// schemaID is how kin-openapi names a schema in "doesn't match schema"
// (its getSchemaIdentifier, with the space before it).
func schemaID(s *openapi3.SchemaRef) string {
	id := strings.TrimSpace(s.Ref)
	if id == "" && s.Value != nil {
		id = strings.TrimSpace(s.Value.Title)
	}
	if id != "" {
		id = " " + id
	}
	return id
}

// visitOpts returns the conn's schema validation options (built once per
// stream: the defaults callback is a closure over the conn).
func (c *conn) visitOpts(v31 bool) []openapi3.SchemaValidationOption {
	if c.opts30 == nil {
		set := openapi3.DefaultsSet(func() { c.defaulted = true })
		c.opts30 = []openapi3.SchemaValidationOption{openapi3.VisitAsRequest(), set}
		c.opts31 = []openapi3.SchemaValidationOption{openapi3.VisitAsRequest(), set, openapi3.EnableJSONSchema2020()}
	}
	if v31 {
		return c.opts31
	}
	return c.opts30
}
