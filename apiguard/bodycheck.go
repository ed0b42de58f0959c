package apiguard

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
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
// guardDecodes, a schema, no Encoding entry, not binary).
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
	mediaType, ok := jsonMedia(mt, inputMIME)
	if !ok {
		return jsonCase{}
	}
	return jsonCase{rb: rb, mt: mt, mediaType: mediaType}
}

// jsonMedia says whether openapi3filter's decodeBody (v0.153.0) decodes a
// body that mt describes, sent with Content-Type inputMIME, with the
// guard's JSON decoder: mt has a schema, no Encoding entry and is not
// binary, and the media type, as decodeBody derives it from the field to
// pick the decoder (returned), is one guardDecodes. Shared by requests
// (jsonBodyCase) and responses (jsonResponseCase).
func jsonMedia(mt *openapi3.MediaType, inputMIME string) (string, bool) {
	if mt == nil || mt.Schema == nil || mt.Schema.Value == nil || mt.Encoding[""] != nil ||
		mt.Schema.Value.Type.Is("string") && mt.Schema.Value.Format == "binary" {
		return "", false
	}
	mediaType, _, _ := strings.Cut(inputMIME, ";")
	mediaType = strings.ToLower(strings.TrimSpace(mediaType))
	return mediaType, guardDecodes(mediaType)
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
//
// The decoded form counts in the peer's budget (limit bytes in all) while
// the body is validated: charged as the decoder builds it (the body
// itself is decoded where it is held, counted as a buffered body), all of
// it given back when checkJSONBody returns, on every path. When the budget cannot take it within budgetWait the error is
// errJSONBudget (503 memory_budget). THREATS P5, tested by
// TestGuardDecodedFormCharged, TestJSONDecodeCharge and
// TestGuardBudgetMixedReturnsToZero.
func (c *conn) checkJSONBody(spec *Spec, route *routers.Route, req *http.Request, jc jsonCase, limit int64) error {
	// The held bytes are decoded where they are, not copied into a
	// string first (1 KiB and an allocation per rr-api request): the
	// value's names and strings share c.bodyData, which nothing writes
	// and release does not give back before the request is forwarded,
	// and nothing keeps the value once checkJSONBody returns (defaults
	// are encoded into a new body; decide copies the error's text
	// before release). THREATS P6 (no byte of one request in
	// another's), tested by TestCheckJSONBodyNoAlias.
	value, held, err := decodeInBudget(c.budget, c.bodyData, limit, budgetWait)
	defer func() { c.budget.Add(-held) }()
	if err == errJSONBudget {
		return err
	}
	if err != nil {
		return &openapi3filter.RequestError{Input: &c.in, RequestBody: jc.rb, Reason: "failed to decode request body", Err: err}
	}
	// ValidateRequestBody's options for the guard's Options (validateAll):
	// as a request, defaults set (every JSON type has an encoder), JSON
	// Schema 2020-12 for a 3.1 document, whose validator the spec keeps
	// (visitJSON31).
	c.defaulted = false
	schema := jc.mt.Schema.Value
	if route.Spec != nil && route.Spec.IsOpenAPI31OrLater() {
		err = c.visit31(spec, schema, value)
	} else {
		err = schema.VisitJSON(value, c.visitOpts(false)...)
	}
	if err == errJSONBudget { // visit31 could not take the listing turn
		return err
	}
	if err != nil {
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
	// The rewritten body is held until it is forwarded, as the buffered
	// one: it counts in the budget until release, the decoded form given
	// back first (waiting for it while holding that could deadlock).
	// THREATS P5, tested by TestGuardBudgetRewrittenBody.
	c.budget.Add(-held)
	held = 0
	n := allocBound(len(out))
	if !reserve(&c.budget.Int64, n, limit) {
		return errJSONBudget
	}
	c.held += n
	req.ContentLength = int64(len(out))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(out)), nil }
	req.Body, _ = req.GetBody()
	return nil
}

// listBody is the largest body whose errors against a 3.1 schema the
// guard lists in its answer (visit31).
const listBody = 64 << 10

// errUnlisted stands for a broken body's errors the guard did not build.
var errUnlisted = fmt.Errorf("the body breaks the schema; its errors are not listed (over %d KiB, or another of the peer's bodies' errors were being listed)", listBody>>10)

// visit31 checks value against schema, of spec's 3.1 document, as
// kin-openapi's VisitJSON with JSON Schema 2020-12 does (schema31), with
// checkJSONBody's options. For a value that breaks a compiled31 schema the
// validator builds all its errors whatever it is asked (hundreds of bytes
// each; a 512 KiB body of wrong-typed values made 104 MB): they are built
// only for a body of at most listBody bytes, by one request of the peer
// at a time (the peer's listing turn, given back by release), and
// otherwise the answer says they are not listed (errUnlisted). THREATS P5,
// tested by TestCheck31BrokenBodyBounded.
func (c *conn) visit31(spec *Spec, schema *openapi3.Schema, value any) error {
	v := spec.check31(schema)
	switch v.mode {
	case builtin31:
		return schema.VisitJSON(value, c.visitOpts(false)...)
	case perCall31:
		// kin-openapi's own check may build an error for each of the
		// body's values: a body over listBody is checked only with the
		// peer's listing turn, waited for up to budgetWait.
		if len(c.bodyData) > listBody {
			if !c.budget.takeListing(budgetWait) {
				return errJSONBudget
			}
			c.listing = true
		}
		return schema.VisitJSON(value, c.visitOpts(true)...)
	}
	if v.keeps(value) {
		return nil
	}
	if len(c.bodyData) > listBody || !c.budget.listing.CompareAndSwap(false, true) {
		return errUnlisted
	}
	c.listing = true
	return v.errorsOf(value)
}

// takeListing takes b's listing turn, waiting up to wait for it.
func (b *peerBudget) takeListing(wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for !b.listing.CompareAndSwap(false, true) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// decodeInBudget decodes data where it is held (the value's names and
// strings share its bytes: the caller must not write them while it keeps
// the value), charged to b, limit bytes in all; held is what it holds of
// b for the value, which the caller gives back when it is done with it
// (also on an error). It waits for the budget up to wait (for the first
// try, and again in all for the next): a decode that gave up for another
// one waiting (jsonDecoder.grow) gives back what it took, waits for that
// much, holding nothing of it, and decodes again.
// Shared by requests (checkJSONBody) and responses (checkJSONResponse).
func decodeInBudget(b *peerBudget, data []byte, limit int64, wait time.Duration) (value any, held int64, err error) {
	var pre int64 // what the last try took, taken again before the next
	var deadline time.Time
	for {
		d := jsonDecoder{budget: b, limit: limit, wait: wait}
		if pre > 0 {
			if d.room = reserveUpTo(&b.Int64, pre, pre+decodeChunk, limit, time.Until(deadline)); d.room == 0 {
				return nil, 0, errJSONBudget
			}
		}
		d.s = unsafe.String(unsafe.SliceData(data), len(data))
		value, err = d.decode()
		if err != errJSONBudget || !d.yielded {
			return value, d.room, err
		}
		if deadline.IsZero() { // the clock read only when a decode yields
			deadline = time.Now().Add(wait)
		}
		b.Add(-d.room)
		pre = d.used
	}
}

// guardDecodes says whether kin-openapi would decode mediaType with the
// guard's decoder: one of jsonMediaTypes (registered for it) or another
// +json type (kin-openapi's decodeBody falls back to application/json's
// decoder). Every one is checked here, its decoded form charged: one left
// to kin-openapi would be decoded uncharged (THREATS P5, tested by
// TestGuardDecodedFormChargedAnyJSON).
func guardDecodes(mediaType string) bool {
	if strings.HasSuffix(mediaType, "+json") {
		return true
	}
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
