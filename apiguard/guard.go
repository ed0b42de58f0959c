package apiguard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/time/rate"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/tunnel"
)

// Emitter records audit events (an *audit.Auditor).
type Emitter interface {
	Emit(name string, attrs ...attribute.KeyValue)
}

// BudgetFactor sets a peer's memory budget on one guarded service:
// BudgetFactor × max_body for the bodies buffered for validation and,
// while a JSON body is validated, its decoded form (up to 58 bytes per
// body byte for the densest, at most 64 by TestJSONDecodeCharge). 72 holds
// 72 bodies of max_body, or one with its decoded form at the densest. A request that would exceed it
// waits up to budgetWait for others to give theirs back, then is answered
// 503 with Retry-After (README, memory formula).
const BudgetFactor = 72

const budgetWait = time.Second

// Guard is one guarded service's long-lived state: the policy in force
// (replaced whole on reload), the per-peer per-operation rate buckets, the
// peers' memory budgets and the inventory. It is safe for concurrent use.
type Guard struct {
	service string
	audit   Emitter
	policy  atomic.Pointer[Policy]
	inv     *Inventory

	mu      sync.Mutex // guards the following fields
	buckets map[bucketKey]*bucket
	budgets map[string]*peerBudget
}

// peerBudget is a peer's count of the bytes its bodies and their decoded
// forms hold, and whether one of its decodes waits for more of it.
type peerBudget struct {
	atomic.Int64
	// decodeWaits is set while a decode waits for more budget holding
	// part of it: the only one that may (jsonDecoder.grow).
	decodeWaits atomic.Bool
	// listing is set while one of the peer's requests holds the turn to
	// build a broken body's errors (visit31).
	listing atomic.Bool
}

type bucketKey struct{ peer, op string }

type bucket struct {
	r   Rate
	lim *rate.Limiter
}

var _ tunnel.StreamGuard = (*Guard)(nil)

// NewGuard returns the guard of service under p; events go to a (nil:
// none).
func NewGuard(p *Policy, a Emitter) *Guard {
	g := &Guard{service: p.Service, audit: a, inv: newInventory(), buckets: map[bucketKey]*bucket{}, budgets: map[string]*peerBudget{}}
	g.policy.Store(p)
	return g
}

// SetPolicy puts p in force for requests parsed from now on; counters,
// buckets of unchanged rates and the inventory stay.
func (g *Guard) SetPolicy(p *Policy) { g.policy.Store(p) }

// Policy returns the policy in force.
func (g *Guard) Policy() *Policy { return g.policy.Load() }

// Inventory returns the service's inventory (OWASP API9).
func (g *Guard) Inventory() *Inventory { return g.inv }

// allow takes a token of peer's bucket for op; when there is none it
// returns the whole seconds until one will be there (Retry-After).
func (g *Guard) allow(peer string, op *Operation, r Rate) (bool, int) {
	burst := r.Burst
	if burst <= 0 {
		burst = max(1, int(math.Ceil(r.PerSecond)))
	}
	k := bucketKey{peer, op.Key}
	g.mu.Lock()
	b := g.buckets[k]
	if b == nil || b.r != r {
		b = &bucket{r: r, lim: rate.NewLimiter(rate.Limit(r.PerSecond), burst)}
		g.buckets[k] = b
	}
	g.mu.Unlock()
	now := time.Now()
	if b.lim.AllowN(now, 1) {
		return true, 0
	}
	wait := (1 - b.lim.TokensAt(now)) / r.PerSecond
	return false, max(1, int(math.Ceil(wait)))
}

// budget returns peer's budget.
func (g *Guard) budget(peer string) *peerBudget {
	g.mu.Lock()
	defer g.mu.Unlock()
	b := g.budgets[peer]
	if b == nil {
		b = new(peerBudget)
		g.budgets[peer] = b
	}
	return b
}

// reserve takes n bytes of peer's budget (limit bytes in all), waiting up
// to budgetWait; false when it could not.
func reserve(b *atomic.Int64, n, limit int64) bool {
	return reserveUpTo(b, n, n, limit, budgetWait) == n
}

// reserveUpTo takes at least n and at most up bytes of peer's budget
// (limit bytes in all), as many as are free, waiting up to wait for n;
// it returns what it took, 0 when it could not (n > 0).
func reserveUpTo(b *atomic.Int64, n, up, limit int64, wait time.Duration) int64 {
	var deadline time.Time // read the clock only when the budget is full
	for {
		if cur := b.Load(); cur+n <= limit {
			take := min(up, limit-cur)
			if b.CompareAndSwap(cur, cur+take) {
				return take
			}
			continue
		}
		if wait <= 0 {
			return 0
		}
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(wait)
		} else if now.After(deadline) {
			return 0
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Serve implements tunnel.StreamGuard: the request loop, on the caller's
// goroutine, reading the client's bytes from in and writing the answers
// (upstream's responses and the guard's own, in request order) to out.
func (g *Guard) Serve(peer string, upstream tunnel.Conn, in io.Reader, out io.Writer) {
	c := &conn{g: g, peer: peer, up: upstream}
	c.loop(in, out)
	upstream.CloseWrite()
}

// conn is the state of one guarded stream's request loop.
type conn struct {
	g    *Guard
	peer string
	up   tunnel.Conn
	out  io.Writer // where the client's answers go
	// budget is the peer's budget (Guard.budget), looked up once; held
	// the bytes of it the request in hand holds.
	budget *peerBudget
	held   int64
	// The request in hand's buffered body and its validation input, kept
	// here so that validating allocates none of them per request.
	body     heldBody
	bodyData []byte
	// bodyBuf is bodyData's pooled buffer (a body of at most bodyChunk
	// bytes); nil when bodyData was allocated for a larger one.
	bodyBuf *[chunkHead + bodyChunk + 2]byte
	getBody func() (io.ReadCloser, error)
	in      openapi3filter.RequestValidationInput
	// checkJSONBody's schema options, built once per stream, and
	// whether the last check wrote a schema's defaults in.
	opts30, opts31 []openapi3.SchemaValidationOption
	defaulted      bool
	listing        bool // holds the peer's listing turn (visit31) until release
	// bw is the client's writer while the request in hand has one
	// (writer, putWriter): not while upstream is answering.
	bw  *bufio.Writer
	inv *peerInventory // the peer's inventory, looked up once
	// underscore says a field name of the request in hand has '_'
	// (readRequest): decide then checks underscoreAlias.
	underscore bool
}

var (
	clientReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, MaxHeaderBytes) }}
	upReaders     = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	// Writers are taken per request, so an idle stream holds none. The
	// client's is large enough that a response body reaches the tunnel in
	// large records (the pump seals what one Read returns).
	clientWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}
	upWriters     = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}
)

// loop is the request loop: parse, decide, forward or answer, in order,
// one request at a time (pipelined requests wait in the client reader).
func (c *conn) loop(in io.Reader, out io.Writer) {
	br := clientReaders.Get().(*bufio.Reader)
	br.Reset(in)
	ubr := upReaders.Get().(*bufio.Reader)
	ubr.Reset(c.up)
	c.out = out
	defer func() {
		br.Reset(nil)
		clientReaders.Put(br)
		ubr.Reset(nil)
		upReaders.Put(ubr)
	}()
	for first := true; ; first = false {
		if !c.one(br, ubr, first) {
			return
		}
	}
}

// decision is what the guard does with one request.
type decision struct {
	op         *Operation
	shape      string // the route template, or the path shape of a shadow request
	status     int    // 0: forward
	reason     string
	detail     string // for the client's problem body only, never for events
	retryAfter int
	close      bool // end the stream after the answer
}

// one serves one request; false ends the stream.
func (c *conn) one(br, ubr *bufio.Reader, first bool) bool {
	req, underscore, err := readRequest(br, first)
	c.underscore = underscore
	p := c.g.policy.Load() // the policy in force when the request arrived
	bw := c.writer()
	defer func() {
		c.release() // on every path out, not only the forwarding one
		c.putWriter()
	}()
	if err != nil {
		c.readFailed(bw, p, err)
		return false
	}
	dropHopByHop(req.Header, req.Close)
	d := c.decide(p, req, bw)
	method := methodLabel(req.Method)
	if d.status != 0 {
		if !d.close && !drain(req, p.maxBody()) {
			d.close = true
		}
		c.deny(bw, p, method, d)
		return !d.close && !req.Close
	}
	// The guard answers Expect: 100-continue itself (buffer did for a
	// buffered body): the body it forwards is read from the client only
	// after this, and upstream never waits for a body nobody sends.
	if expects100(req) {
		req.Header.Del("Expect")
		if !continue100(bw) {
			return false
		}
	}
	// Everything for the client so far is flushed (a denial returned
	// above, 100 Continue flushes): its 32 KiB writer goes back to the
	// pool while upstream answers, which may take long, and is taken again
	// for the answer. A stream waiting on upstream then holds none, and
	// under many streams the few writers in use stay in the cache
	// (TestGuardNoWriterWhileUpstreamAnswers).
	c.putWriter()
	uw := upWriters.Get().(*bufio.Writer)
	uw.Reset(c.up)
	var keep []string // the operation's header parameters: the contract's, validated
	if d.op != nil {
		keep = d.op.headerParams
	}
	err = writeRequest(uw, req, p.Host, keep)
	uw.Reset(nil)
	upWriters.Put(uw)
	// A chunked body's trailer section, up to MaxHeaderBytes of fields,
	// is ~250 KB in net/http's form: not held while upstream answers
	// (THREATS P5, tested by TestGuardParsedTrailerDropped).
	req.Trailer = nil
	c.release()
	// What the partner sent and the guard cannot forward (nothing was
	// written upstream for errHost and errTarget; a broken body ends the
	// upstream request): the partner's refusal, audited, not upstream's
	// failure (THREATS P10, tested by TestGuardBrokenStreamedBody and
	// TestGuardBadHost).
	if err == errBody || err == errHost || err == errTarget {
		d.status, d.close = http.StatusBadRequest, true
		switch err {
		case errBody:
			d.reason = reasonTruncated
		case errHost:
			d.reason = reasonMalformed
		default:
			d.reason = reasonTarget
		}
		c.deny(c.writer(), p, method, d)
		return false
	}
	if err != nil {
		c.answer(c.writer(), d.op, http.StatusBadGateway, "upstream_write", true)
		return false
	}
	resp, err := readResponse(ubr, req, c)
	if err != nil {
		c.answer(c.writer(), d.op, http.StatusBadGateway, "upstream_read", true)
		return false
	}
	err = writeResponse(c.writer(), resp)
	if c.inv == nil {
		c.inv = c.g.inv.peerFor(c.peer)
	}
	c.g.inv.recordFor(c.inv, d.op, resp.StatusCode, OutcomeForwarded, "")
	return err == nil && !resp.Close && !req.Close
}

// readFailed ends the stream after a request the parser could not give:
// a refused request is answered, a stream that is not HTTP/1.1 refused, a
// clean end or a read error ends it as it is. (Apart from one, so the
// error's target is allocated only when there is an error.)
func (c *conn) readFailed(bw *bufio.Writer, p *Policy, err error) {
	var ref *RequestError
	switch {
	case err == io.EOF:
	case errors.As(err, &ref) && ref.Stream():
		c.refuseStream(bw, ref.Reason)
	case errors.As(err, &ref):
		c.deny(bw, p, "", decision{status: ref.Status(), reason: ref.Reason, close: true})
	}
}

// writer returns the client's writer for the request in hand, taking one
// from the pool if it has none.
func (c *conn) writer() *bufio.Writer {
	if c.bw == nil {
		c.bw = clientWriters.Get().(*bufio.Writer)
		c.bw.Reset(c.out)
	}
	return c.bw
}

// putWriter gives the client's writer back to the pool. What it still
// holds is dropped, as before this writer was given back mid-request: an
// answer cut short by a failure (every complete one is flushed), never
// passed to another stream.
func (c *conn) putWriter() {
	if c.bw == nil {
		return
	}
	c.bw.Reset(nil)
	clientWriters.Put(c.bw)
	c.bw = nil
}

// readResponse reads upstream's answer to req, passing 1xx answers on
// through c's writer (taken only for one).
func readResponse(ubr *bufio.Reader, req *http.Request, c *conn) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(ubr, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return nil, errors.New("upstream switched protocols")
		}
		if resp.StatusCode >= 200 {
			return resp, nil
		}
		bw := c.writer()
		fmt.Fprintf(bw, "HTTP/1.1 %s\r\n", resp.Status)
		resp.Header.Write(bw)
		bw.WriteString("\r\n")
		if err := bw.Flush(); err != nil {
			return nil, err
		}
	}
}

// continue100 tells the client to send its body.
func continue100(bw *bufio.Writer) bool {
	bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	return bw.Flush() == nil
}

func expects100(req *http.Request) bool {
	for _, v := range req.Header["Expect"] {
		if len(v) == 12 && (v == "100-continue" || bytes.EqualFold([]byte(v), []byte("100-continue"))) {
			return true
		}
	}
	return false
}

// drain reads a denied request's body so the connection stays usable; false
// when it is longer than limit (the stream then ends after the answer) or
// the client waits for 100 Continue.
func drain(req *http.Request, limit int64) bool {
	if req.Body == nil || req.Body == http.NoBody {
		return true
	}
	if expects100(req) {
		return false
	}
	n, err := io.CopyN(io.Discard, req.Body, limit+1)
	return err == io.EOF || err == nil && n <= limit
}

// decide matches req to an operation and applies the policy: route,
// peer's allow list, rate limit, validation. It may buffer the body (for a
// schema), replacing req.Body.
func (c *conn) decide(p *Policy, req *http.Request, bw *bufio.Writer) decision {
	if req.URL == nil || req.URL.IsAbs() || req.URL.Opaque != "" || req.RequestURI == "*" || req.Method == http.MethodConnect {
		return decision{status: http.StatusBadRequest, reason: reasonTarget, close: true}
	}
	if !canonicalPath(req.URL) {
		return decision{status: http.StatusBadRequest, reason: reasonPath, shape: Shape(req.URL.Path), close: true}
	}
	// Any Upgrade field, not only a first one with a value (Header.Get
	// read only the first: an empty one hid "Upgrade: websocket" after
	// it). THREATS P2, tested by TestGuardSmuggling ("upgrade 2nd").
	if len(req.Header["Upgrade"]) > 0 {
		return decision{status: http.StatusBadRequest, reason: reasonUpgrade, close: true}
	}
	// The body is checked as the first Content-Type, and forwarded with
	// every field: an upstream that reads the last would take it as
	// another type than the one checked. THREATS P2, tested by
	// TestGuardSmuggling ("dup CT").
	if len(req.Header["Content-Type"]) > 1 {
		return decision{status: http.StatusBadRequest, reason: reasonDupCT, close: true}
	}
	route, params, err := p.Spec.findRoute(req)
	if err != nil {
		reason := "no_route"
		var re *routers.RouteError
		if errors.As(err, &re) && re.Reason == routers.ErrMethodNotAllowed.Error() || otherMethod(p, req) {
			reason = "method_not_allowed"
		}
		shape := Shape(req.URL.Path)
		return decision{status: http.StatusNotFound, reason: reason, shape: shape}
	}
	op := p.Spec.byOp[route.Operation]
	// A parameter's value that a loose upstream router reads as another
	// operation's static segment (pathfold.go). THREATS P2, tested by
	// TestGuardUpstreamPathNormalisation.
	if op.looseRisk && len(params) > 0 && p.Spec.loose.other(req.Method, req.URL.Path, op, params) {
		return decision{status: http.StatusBadRequest, reason: reasonPath, shape: Shape(req.URL.Path), close: true}
	}
	d := decision{op: op, shape: op.Path}
	// THREATS P2 (least reach, per operation): a peer reaches only the
	// operations its list names, tested by TestGuardPipelinedMixed and,
	// with real daemons, TestAPIGuardEndToEnd.
	if !p.allowed(c.peer, op) {
		d.status, d.reason = http.StatusForbidden, "not_allowed"
		return d
	}
	// The operation allowed is the one of the method the guard saw; an
	// upstream that honours an override would run another (OWASP API5).
	// THREATS P2, tested by TestGuardMethodOverride.
	if !op.overrideOK && methodOverride(req) {
		d.status, d.reason = http.StatusBadRequest, reasonMethodOverride
		d.detail = "a method override (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override or _method) is not part of the contract"
		return d
	}
	// A form body the contract does not declare carries the same
	// override (_method) to Rails and Laravel: THREATS P2, tested by
	// TestGuardFormBodyOverride.
	if !op.overrideOK && formOverride(op, req) {
		d.status, d.reason = http.StatusBadRequest, reasonMethodOverride
		d.detail = "a form body, which can carry _method, is not part of this operation's contract"
		return d
	}
	// A field named with '_' for a '-' of a field checked here or below:
	// CGI, FastCGI and WSGI gateways read both as one (RFC 9110, 17.10).
	// THREATS P2, tested by TestGuardUnderscoreFields. Only requests
	// with such a name pay (checkHeader marks them).
	if c.underscore {
		if reason := underscoreAlias(op, req.Header, p.ValidateRequest); reason != "" {
			d.status, d.reason, d.close = http.StatusBadRequest, reason, reason == reasonTarget
			d.detail = "a field named with '_' that gateways read as a field the guard checks"
			return d
		}
	}
	// The same for the path: frameworks that route on X-Original-URL or
	// X-Rewrite-URL (Symfony and Zend before their 2018 fixes, apps behind
	// IIS's URL Rewrite) would run another operation. THREATS P2, tested
	// by TestGuardURLOverride. Two map lookups per request.
	if len(req.Header["X-Original-Url"]) > 0 || len(req.Header["X-Rewrite-Url"]) > 0 {
		d.status, d.reason, d.close = http.StatusBadRequest, reasonTarget, true
		d.detail = "a target override (X-Original-URL, X-Rewrite-URL) is not part of the contract"
		return d
	}
	if r, ok := p.Limits[op]; ok {
		if ok, retry := c.g.allow(c.peer, op, r); !ok {
			d.status, d.reason, d.retryAfter = http.StatusTooManyRequests, "rate_limited", retry
			return d
		}
	}
	// A body the contract does not declare is not checked by anyone; an
	// upstream may act on it (THREATS P2, tested by TestGuardUndeclaredBody).
	if p.ValidateRequest && op.noBody && hasBody(req) {
		d.status, d.reason = http.StatusBadRequest, reasonUndeclaredBody
		d.detail = "this operation takes no request body"
		return d
	}
	if p.ValidateRequest && undeclaredMedia(op, req) {
		d.status, d.reason = http.StatusBadRequest, "invalid_body"
		d.detail = "header Content-Type has a value the operation does not declare"
		return d
	}
	// Nothing to validate (no parameters, no body schema): kin-openapi's
	// validator would only run the no-op authentication check.
	if !p.ValidateRequest || !op.params && !op.BodySchema {
		return d
	}
	// What kin-openapi validates of the query must be what upstream reads
	// (THREATS P2, tested by TestGuardParameterPollution).
	if reason, detail := checkQuery(op, req.URL.RawQuery); reason != "" {
		d.status, d.reason, d.detail = http.StatusBadRequest, reason, detail
		return d
	}
	if reason, detail := checkRepeats(op, req); reason != "" {
		d.status, d.reason, d.detail = http.StatusBadRequest, reason, detail
		return d
	}
	opts := validateParams
	body := false // the body is held, for checkJSONBody
	switch {
	case op.BodySchema && req.Body != nil && req.Body != http.NoBody:
		// THREATS P2, tested by TestGuardBodyCharset.
		switch reason := bodyCharset(req.Header["Content-Type"]); reason {
		case reasonCharset:
			d.status, d.reason, d.detail = http.StatusUnsupportedMediaType, reason, "a body is read as UTF-8"
			return d
		case reasonHeaderParams:
			d.status, d.reason, d.detail = http.StatusBadRequest, reason, "the Content-Type's parameters cannot be read"
			return d
		}
		if req.ContentLength > p.maxBody() {
			d.status, d.reason, d.close = http.StatusRequestEntityTooLarge, "body_too_large", true
			return d
		}
		if d2, ok := c.buffer(p, req, d, bw); !ok {
			return d2
		}
		body = true
	case op.BodySchema:
		// No body: kin-openapi refuses it where the spec requires one
		// (THREATS P2, tested by TestGuardRequiredBodyMissing).
		opts = validateAll
	}
	// The input is the conn's: kin-openapi keeps no reference to it after
	// returning, and its error is read here.
	c.in = openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	// kin-openapi checks security and parameters first, then the body;
	// a JSON body that checkJSONBody does not take is left to it. Without
	// parameters ValidateRequest would only run the security check, which
	// passes here (NoopAuthenticationFunc; the router's doc.Validate
	// refused undeclared schemes at load), as for an operation with nothing
	// to validate above.
	var jc jsonCase
	if body {
		if jc = jsonBodyCase(route, req, c.bodyData); jc.mt == nil {
			c.in.Options = validateAll
			// kin-openapi decodes this body itself (a form, YAML …),
			// its decoded form uncharged: the body holds BudgetFactor/8
			// times its size until release, so at most 8 of max_body
			// are decoded at once, as when the budget was 8 x max_body.
			// THREATS P5, tested by TestGuardKinDecodedBodiesBounded.
			extra := int64(len(c.bodyData)) * (BudgetFactor/8 - 1)
			if !reserve(&c.budget.Int64, extra, BudgetFactor*p.maxBody()) {
				d.status, d.reason, d.retryAfter, d.close = http.StatusServiceUnavailable, "memory_budget", 1, true
				c.release()
				return d
			}
			c.held += extra
		}
	}
	if op.params || c.in.Options == validateAll { // err is findRoute's nil

		err = openapi3filter.ValidateRequest(validateDoc, &c.in)
	}
	if err == nil && jc.mt != nil {
		err = c.checkJSONBody(p.Spec, route, req, jc, BudgetFactor*p.maxBody())
	}
	// The input let go of: it held the request (its fields, and a drained
	// body's trailer section, ~250 KB at most in net/http's form) while
	// the stream idled until its next request (THREATS P5, tested by
	// TestGuardParsedTrailerDropped). An error's Input points here;
	// nothing reads it.
	c.in = openapi3filter.RequestValidationInput{}
	if err == errJSONBudget { // its decoded form did not fit: as a body
		d.status, d.reason, d.retryAfter, d.close = http.StatusServiceUnavailable, "memory_budget", 1, true
		c.release()
		return d
	}
	if err != nil {
		// A copy: the error may quote the held body, whose buffer
		// release gives back (checkJSONBody).
		d.status, d.reason, d.detail = http.StatusBadRequest, validationReason(err), strings.Clone(truncate(err.Error(), 400))
		c.release() // a buffered body's budget goes back now
	}
	c.endListing() // the check is done: not held while upstream takes the request
	return d
}

// buffer reads req's body (at most max_body, within the peer's budget)
// for validation; false with the decision to answer when it could not.
func (c *conn) buffer(p *Policy, req *http.Request, d decision, bw *bufio.Writer) (decision, bool) {
	limit := p.maxBody()
	want := limit
	if req.ContentLength > 0 {
		want = req.ContentLength
	}
	if c.budget == nil {
		c.budget = c.g.budget(c.peer)
	}
	b := c.budget
	// THREATS P5: buffered bodies count in the peer's budget
	// (BudgetFactor × max_body; their decoded forms too, checkJSONBody),
	// tested by TestGuardMemoryBudget.
	if !reserve(&b.Int64, want, BudgetFactor*limit) {
		d.status, d.reason, d.retryAfter, d.close = http.StatusServiceUnavailable, "memory_budget", 1, true
		return d, false
	}
	if expects100(req) {
		req.Header.Del("Expect")
		continue100(bw)
	}
	var data []byte
	var err error
	switch {
	case req.ContentLength > 0 && req.ContentLength <= bodyChunk:
		// The buffer a streamed body would take (B_guard counts it
		// per request in flight); writeRequest then writes the held
		// body from here, without one of its own.
		c.bodyBuf = bodyBufs.Get().(*[chunkHead + bodyChunk + 2]byte)
		data = c.bodyBuf[:req.ContentLength]
		_, err = io.ReadFull(req.Body, data)
	case req.ContentLength > 0:
		// The length is known (and within limit): one allocation of it.
		data = make([]byte, req.ContentLength)
		_, err = io.ReadFull(req.Body, data)
	default:
		data, err = io.ReadAll(io.LimitReader(req.Body, limit+1))
	}
	if err != nil || int64(len(data)) > limit {
		b.Add(-want)
		c.putBodyBuf()
		if err != nil {
			d.status, d.reason, d.close = http.StatusBadRequest, reasonTruncated, true
		} else {
			d.status, d.reason, d.close = http.StatusRequestEntityTooLarge, "body_too_large", true
		}
		return d, false
	}
	b.Add(int64(len(data)) - want)
	// What goes back is what was taken, whatever validation makes of the
	// body (it writes a schema's defaults in). THREATS P5, tested by
	// TestGuardBudgetDefaults.
	c.held = int64(len(data))
	c.bodyData = data
	c.body.Reset(data)
	if c.getBody == nil {
		c.getBody = c.rereadBody
	}
	// kin-openapi reads the body whole, then takes it again from GetBody
	// for the forwarding.
	req.Body = &c.body
	req.GetBody = c.getBody
	req.ContentLength = int64(len(data))
	req.TransferEncoding = nil
	return d, true
}

// release gives the buffered body's bytes back to the peer's budget and
// lets go of them.
func (c *conn) release() {
	c.endListing()
	if c.held != 0 {
		c.budget.Add(-c.held)
		c.held = 0
	}
	if c.bodyData != nil {
		c.bodyData = nil
		c.body.Reset(nil)
	}
	c.putBodyBuf()
}

// endListing gives back the peer's listing turn (visit31), if c holds it.
func (c *conn) endListing() {
	if c.listing {
		c.listing = false
		c.budget.listing.Store(false)
	}
}

// putBodyBuf gives the held body's pooled buffer back: nothing refers to
// it any more (kin-openapi decoded a copy; the request's Body is c.body,
// reset, or kin-openapi's own when it wrote defaults in).
func (c *conn) putBodyBuf() {
	if c.bodyBuf != nil {
		bodyBufs.Put(c.bodyBuf)
		c.bodyBuf = nil
	}
}

// rereadBody is a buffered request's GetBody: its body from the start.
func (c *conn) rereadBody() (io.ReadCloser, error) {
	c.body.Reset(c.bodyData)
	return &c.body, nil
}

// heldBody is a buffered body as a request's Body.
type heldBody struct{ bytes.Reader }

// Close does nothing: the bytes are the conn's until release.
func (*heldBody) Close() error { return nil }

// kin-openapi's validation options (it only reads them): parameters and
// headers, or those and the body. Authentication is not the guard's job.
var (
	validateParams = &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, ExcludeRequestBody: true}
	validateAll    = &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}
)

// otherMethod says whether req's path is an operation's under another
// method (the router tells that only for paths without parameters). Only
// requests that match no operation pay for it.
func otherMethod(p *Policy, req *http.Request) bool {
	r := *req
	for _, m := range []string{"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"} {
		if m == req.Method {
			continue
		}
		r.Method = m
		if _, _, err := p.Spec.router.FindRoute(&r); err == nil {
			return true
		}
	}
	return false
}

// validationReason classes a kin-openapi validation error for events.
func validationReason(err error) string {
	var re *openapi3filter.RequestError
	if errors.As(err, &re) {
		switch {
		case re.Parameter != nil && re.Parameter.In == openapi3.ParameterInHeader:
			return "invalid_header"
		case re.Parameter != nil:
			return "invalid_parameter"
		case re.RequestBody != nil:
			return "invalid_body"
		}
	}
	return "invalid_request"
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// methodLabel keeps the standard methods and maps any other to "_OTHER"
// (OpenTelemetry's convention), so a peer cannot put text of its own into
// events or the inventory's keys.
func methodLabel(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY":
		return m
	}
	return "_OTHER"
}

// deny answers a refused request with a problem body, counts it in the
// inventory and audits it.
func (c *conn) deny(bw *bufio.Writer, p *Policy, method string, d decision) {
	opName := d.shape
	switch {
	case d.op != nil:
		opName = d.op.Key
		c.g.inv.record(c.peer, d.op, d.status, OutcomeDenied, d.reason)
	case d.reason == "no_route" || d.reason == "method_not_allowed":
		c.g.inv.shadow(c.peer, method, d.shape, d.status, d.reason)
	default:
		c.g.inv.refused(c.peer, d.status, d.reason)
	}
	if c.g.audit != nil {
		attrs := []attribute.KeyValue{attribute.String(audit.KeyPeer, c.peer), attribute.String(audit.KeyService, c.g.service),
			attribute.Int(audit.KeyHTTPStatus, d.status), attribute.String(audit.KeyReason, d.reason)}
		if opName != "" {
			attrs = append(attrs, attribute.String(audit.KeyAPIOperation, opName))
		}
		if method != "" {
			attrs = append(attrs, attribute.String(audit.KeyHTTPMethod, method))
		}
		c.g.audit.Emit(audit.APIDenied, attrs...)
	}
	writeProblem(bw, d.status, d.reason, d.detail, d.retryAfter, d.close)
	bw.Flush()
}

// answer is the guard's own answer when upstream failed (no audit: not a
// policy decision; counted in the inventory).
func (c *conn) answer(bw *bufio.Writer, op *Operation, status int, reason string, close bool) {
	c.g.inv.record(c.peer, op, status, OutcomeFailed, reason)
	writeProblem(bw, status, reason, "", 0, close)
	bw.Flush()
}

// refuseStream ends a stream that does not carry HTTP/1.1. HTTP/2 with
// prior knowledge gets an HTTP/2 refusal it understands: an empty SETTINGS
// frame and GOAWAY with HTTP_1_1_REQUIRED.
func (c *conn) refuseStream(bw *bufio.Writer, reason string) {
	c.g.inv.refused(c.peer, 0, reason)
	if c.g.audit != nil {
		c.g.audit.Emit(audit.APIStreamRefused, attribute.String(audit.KeyPeer, c.peer),
			attribute.String(audit.KeyService, c.g.service), attribute.String(audit.KeyReason, reason))
	}
	if reason == reasonH2C {
		bw.Write([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0}) // SETTINGS
		bw.Write([]byte{0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0d})
		bw.Flush()
	}
}

// problem is an RFC 9457 problem body.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Reason string `json:"reason"`
	Detail string `json:"detail,omitempty"`
}

func writeProblem(bw *bufio.Writer, status int, reason, detail string, retryAfter int, close bool) {
	body, _ := json.Marshal(problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Reason: reason, Detail: detail})
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\nContent-Length: %d\r\nCache-Control: no-store\r\n",
		status, http.StatusText(status), len(body))
	if retryAfter > 0 {
		bw.WriteString("Retry-After: " + strconv.Itoa(retryAfter) + "\r\n")
	}
	if close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	bw.Write(body)
}
