package apiguard

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/net/http/httpguts"
)

// This file is the importing side's half of the guard (OWASP API10, unsafe
// consumption of a partner's API): the responses that come back through a
// forward are paired with their requests and checked against the partner's
// spec (README, "API guard: responses").

// ResponsePolicy is a forward's response check, immutable once built.
type ResponsePolicy struct {
	// Forward names the forward in events ("peer/service").
	Peer, Service string
	Spec          *Spec
	// Block replaces a response that breaks the contract with a 502
	// problem response; false only reports it.
	Block bool
	// MaxBody bounds the body buffered to validate against its schema; a
	// longer one streams unchecked (counted). Zero means DefaultMaxBody.
	MaxBody int64
}

func (p *ResponsePolicy) maxBody() int64 {
	if p.MaxBody <= 0 {
		return DefaultMaxBody
	}
	return p.MaxBody
}

// budget is the forward's memory budget for its checks, over all its
// connections: BudgetFactor x (max_body+1) of response bodies and, while
// a JSON body is checked, its decoded form (as a peer's on a guarded
// service: it holds BudgetFactor bodies of max_body, or one with its
// decoded form at the densest).
func (p *ResponsePolicy) budget() int64 { return BudgetFactor * (p.maxBody() + 1) }

// Response finding reasons (dyad.api.response_invalid's dyad.reason).
const (
	ReasonUndeclaredStatus   = "undeclared_status"   // the operation declares neither this status nor a default
	ReasonUndeclaredProperty = "undeclared_property" // the body has a property its schema forbids (additionalProperties: false)
	ReasonSchemaViolation    = "schema_violation"    // the body breaks its schema otherwise
	ReasonContentType        = "undeclared_content_type"
	ReasonHeader             = "invalid_header"     // a declared response header is missing or malformed
	ReasonUndecodableBody    = "undecodable_body"   // the body is not what its content type says (e.g. not JSON)
	ReasonMalformedResponse  = "malformed_response" // not an HTTP/1.1 response at all
	// ReasonDuplicateContentType: more than one Content-Type field; the
	// body is checked as the first, a client reading the last would take
	// it as another type.
	ReasonDuplicateContentType = "duplicate_content_type"
	// ReasonBusy is in a 502 only, never an event: with block, a body the
	// forward had no budget to check (to hold, or to decode) within 1 s.
	ReasonBusy = "response_check_busy"
	// ReasonTooLong is in a 502 only, never an event: with block, a body
	// with a schema over max_body, which the check cannot hold.
	ReasonTooLong = "response_over_max_body"
	// ReasonSwitchH2C is in a 502 only, never an event: with block, a
	// switch to HTTP/2 (h2c), whose responses the check cannot read.
	ReasonSwitchH2C = "switch_to_h2c"
)

// ResponseFinding is one response that broke the contract. It names the
// operation and the schema keyword that failed, never a value of the body,
// the path or the query (THREATS P6).
type ResponseFinding struct {
	Operation string // operationId (or "METHOD /template"); "" for a malformed response
	Method    string
	Route     string // the path template
	Status    int    // 0 for a malformed response
	Reason    string // one of the Reason constants
	// Keyword is the JSON Schema keyword that failed (type, required, enum,
	// properties, additionalProperties, …); "" when no schema failed.
	Keyword string
	Blocked bool // replaced by a 502
}

// ResponseStats counts a forward's responses; every response is counted in
// exactly one of Valid, Invalid, Refusals or the Unchecked counters.
type ResponseStats struct {
	Valid            atomic.Uint64 // matched an operation and passed
	Invalid          atomic.Uint64 // broke the contract (audited)
	Blocked          atomic.Uint64 // of Invalid, replaced by a 502
	UncheckedNoOp    atomic.Uint64 // the request matched no operation of the spec
	UncheckedTooLong atomic.Uint64 // the body needed validation but was over max_body: streamed unchecked, or 502 with block
	UncheckedStream  atomic.Uint64 // after the request stream stopped parsing (not HTTP/1.1), or a switch to h2c: passed as bytes (h2c with block: 502)
	// Refusals are problem+json 4xx/503 answers with a status the
	// operation does not declare: the partner's side refused the call.
	Refusals atomic.Uint64
	// UncheckedBusy are bodies that needed validation while the forward's
	// budget (ResponsePolicy.budget) could not take them or their decoded
	// form (report-only: at once; block: within 1 s), or whose errors
	// could not have the forward's turn to be collected within 1 s
	// (checkJSONResponse): passed on unchecked (report-only) or answered
	// 502 (block).
	UncheckedBusy atomic.Uint64
	// InterimDropped are interim responses but 100 Continue (103, 102, …)
	// that a blocking forward did not pass on; not responses in the sense
	// above (each precedes its final one).
	InterimDropped atomic.Uint64

	// buffered is what the forward's checks hold now, over its
	// connections: body bytes and decoded forms.
	buffered peerBudget
	// collecting is set while one of the forward's checks collects the
	// errors of a body that broke its schema (checkJSONResponse).
	collecting atomic.Bool
}

// collect takes the forward's one turn to collect a broken body's errors,
// waiting up to budgetWait for it; false when it could not.
func (s *ResponseStats) collect() bool {
	var deadline time.Time // the clock read only when the turn is taken
	for !s.collecting.CompareAndSwap(false, true) {
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(budgetWait)
		} else if now.After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// budgetWait is how long a check waits for the forward's budget: a
// report-only forward passes the response on unchecked at once instead.
func (p *ResponsePolicy) budgetWait() time.Duration {
	if p.Block {
		return budgetWait
	}
	return 0
}

// Snapshot returns the counters by name, for /statusz.
func (s *ResponseStats) Snapshot() map[string]uint64 {
	return map[string]uint64{
		"valid": s.Valid.Load(), "invalid": s.Invalid.Load(), "blocked": s.Blocked.Load(),
		"unchecked_no_operation": s.UncheckedNoOp.Load(), "unchecked_over_max_body": s.UncheckedTooLong.Load(),
		"unchecked_not_http": s.UncheckedStream.Load(), "partner_refusals": s.Refusals.Load(), "unchecked_busy": s.UncheckedBusy.Load(),
		"interim_dropped": s.InterimDropped.Load(),
	}
}

// maxRequestHead bounds a request's header block as the response checker
// parses it: a longer one stops the pairing (the rest of the connection
// passes unchecked and counted), so a local client cannot make it buffer
// without bound.
const maxRequestHead = 64 << 10

// maxResponseHead bounds a response's header block (each 1xx one on its
// own) as the checker parses it: a longer one is malformed_response, so a
// partner cannot make the checker buffer an endless header line. THREATS
// P5, tested by TestResponseHeadBounded.
const maxResponseHead = 64 << 10

// maxPipelined bounds the requests waiting for their responses; a client
// pipelining more waits (its reads pause) until responses come back.
const maxPipelined = 64

// CheckedConn is a forward's local client connection whose responses are
// checked: what the pump reads (requests) is parsed on the side to learn
// each request's operation; what the pump writes (responses) is parsed,
// validated and written on to the client, or replaced. Read and Write may
// be called concurrently (one goroutine each, as the pump does);
// CloseWrite ends the responses after the last one is written.
type CheckedConn struct {
	*net.TCPConn
	p      *ResponsePolicy
	stats  *ResponseStats
	report func(ResponseFinding)

	reqW     *io.PipeWriter // request bytes to the request parser; nil once it stopped (Read's goroutine only)
	reqR     *io.PipeReader
	respW    *io.PipeWriter // response bytes from the tunnel to the response loop
	respR    *io.PipeReader
	pending  chan pairedRequest
	respDone chan struct{}
	respErr  error // set before respDone closes
	// collecting: the response loop holds the forward's turn to collect
	// a broken body's errors (checkJSONResponse) until it has read them
	// into the finding (release).
	collecting bool
	close      sync.Once
	closed     atomic.Bool // Close was called: set before it closes the pipes
}

// pairedRequest is what the response loop needs of a request.
type pairedRequest struct {
	req    *http.Request // method, URL and headers; the body is not kept
	route  *routers.Route
	params map[string]string
	op     *Operation // nil: no operation of the spec
}

// NewCheckedConn checks the responses to client's requests under p,
// counting in stats and calling report for each finding (from the
// response goroutine, synchronously: report must not block for long).
func NewCheckedConn(client *net.TCPConn, p *ResponsePolicy, stats *ResponseStats, report func(ResponseFinding)) *CheckedConn {
	c := &CheckedConn{TCPConn: client, p: p, stats: stats, report: report,
		pending: make(chan pairedRequest, maxPipelined), respDone: make(chan struct{})}
	c.reqR, c.reqW = io.Pipe()
	c.respR, c.respW = io.Pipe()
	go c.requests()
	go c.responses()
	return c
}

// Read reads the client's bytes and shows them to the request parser.
func (c *CheckedConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	if c.reqW != nil {
		if n > 0 {
			if _, werr := c.reqW.Write(b[:n]); werr != nil {
				c.reqW = nil // the parser stopped: the rest passes unparsed
			}
		}
		if err != nil && c.reqW != nil {
			c.reqW.Close()
			c.reqW = nil
		}
	}
	return n, err
}

// Write hands response bytes from the tunnel to the response loop; it
// returns once the loop took them (so the pump's flow control holds) or
// with the loop's error.
func (c *CheckedConn) Write(b []byte) (int, error) { return c.respW.Write(b) }

// ReadFrom and WriteTo hide the TCP connection's own, which would bypass
// the checks.
func (c *CheckedConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(writerOnly{c}, r) }

// WriteTo: see ReadFrom.
func (c *CheckedConn) WriteTo(w io.Writer) (int64, error) { return io.Copy(w, readerOnly{c}) }

type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// CloseWrite ends the responses: the loop writes what it holds, then the
// client's connection is half-closed.
// The client gets its FIN even after a failure (a response cut short by
// the partner), as it would without the check.
func (c *CheckedConn) CloseWrite() error {
	c.respW.Close()
	<-c.respDone
	err := c.TCPConn.CloseWrite()
	if c.respErr != nil {
		return c.respErr
	}
	return err
}

// Close ends both loops and closes the client's connection.
func (c *CheckedConn) Close() error {
	c.closed.Store(true)
	err := c.TCPConn.Close()
	c.close.Do(func() {
		c.respR.CloseWithError(net.ErrClosed)
		c.respW.CloseWithError(net.ErrClosed)
		c.reqR.CloseWithError(net.ErrClosed)
	})
	<-c.respDone
	return err
}

// headLimit counts the bytes of a header block, at most max of them.
type headLimit struct {
	r       io.Reader
	max     int
	n       int
	inHead  bool
	tooLong bool
}

var errHeadTooLong = errors.New("header block over the checker's bound")

func (h *headLimit) Read(b []byte) (int, error) {
	if h.inHead && h.n >= h.max {
		h.tooLong = true
		return 0, errHeadTooLong
	}
	n, err := h.r.Read(b)
	if h.inHead {
		h.n += n
	}
	return n, err
}

// requests parses the client's requests and queues each one's operation
// for its response, in order. It stops at the first byte stream that is
// not HTTP/1.1 and drains the rest, so Read never blocks on it.
func (c *CheckedConn) requests() {
	defer close(c.pending)
	defer io.Copy(io.Discard, c.reqR)
	hl := &headLimit{r: c.reqR, max: maxRequestHead}
	br := bufio.NewReaderSize(hl, 4<<10)
	for {
		hl.inHead, hl.n = true, br.Buffered()
		req, err := http.ReadRequest(br)
		hl.inHead = false
		if err != nil {
			return
		}
		pr := pairedRequest{req: req}
		if route, params, err := c.p.Spec.findRoute(req); err == nil {
			pr.route, pr.params, pr.op = route, params, c.p.Spec.byOp[route.Operation]
		}
		body := req.Body
		req.Body = http.NoBody
		// Queued before the body is read: a client that waits for "100
		// Continue" sends its body only after that response.
		c.pending <- pr
		if _, err := io.Copy(io.Discard, body); err != nil {
			return
		}
	}
}

// responses parses, checks and writes on the responses, pairing each with
// the next request. Once pairing is impossible it copies bytes unchanged.
func (c *CheckedConn) responses() {
	defer close(c.respDone)
	// Once this loop stops pairing, the request parser must never wait
	// for it (a 101 upgrade's bytes may look like requests).
	defer func() {
		go func() {
			for range c.pending {
			}
		}()
	}()
	hl := &headLimit{r: c.respR, max: maxResponseHead}
	br := bufio.NewReaderSize(hl, 32<<10)
	fail := func(err error) {
		var pe textproto.ProtocolError
		if errors.As(err, &pe) {
			// net/http's text of a bad line quotes it (a trailer's):
			// its class only. THREATS P6, tested by
			// TestResponseErrorNoPartnerBytes.
			err = fmt.Errorf("%s/%s: %w", c.p.Peer, c.p.Service, errMalformedResponse)
		}
		c.respErr = err
		c.respR.CloseWithError(err)
	}
	for {
		if _, err := br.Peek(1); err != nil {
			if err != io.EOF {
				fail(err)
			}
			return
		}
		pr, ok := <-c.pending
		if !ok {
			c.stats.UncheckedStream.Add(1)
			if _, err := br.WriteTo(c.TCPConn); err != nil {
				fail(err)
			}
			return
		}
		more, err := c.response(br, hl, pr)
		if err != nil {
			fail(err)
			return
		}
		if !more {
			if _, err := br.WriteTo(c.TCPConn); err != nil {
				fail(err)
			}
			return
		}
	}
}

// response handles the response(s) to one request: informational ones are
// written on, then the final one is checked. It returns false when the
// connection stops being HTTP (101, CONNECT) or must end.
func (c *CheckedConn) response(br *bufio.Reader, hl *headLimit, pr pairedRequest) (bool, error) {
	for {
		// What br holds counts as head: at most its size over the bound.
		hl.inHead, hl.n = true, br.Buffered()
		resp, err := http.ReadResponse(br, pr.req)
		hl.inHead = false
		if err == nil && resp.StatusCode == http.StatusSwitchingProtocols && pr.req.Header.Get("Upgrade") == "" {
			// RFC 9110 7.8: no switch to a protocol the client did not
			// ask for; passed, it would make the rest of the connection
			// unchecked bytes. THREATS P2, tested by TestResponseUnaskedSwitch.
			err = errUnaskedSwitch
		}
		if err != nil && c.closed.Load() {
			// Close ended the loop (the client's reset, the stream's, a
			// shutdown), whatever error net/http made of it (a line cut
			// short reads as a malformed one): nothing the partner sent
			// is at fault. Tested by TestResponseCloseNoFinding.
			return false, err
		}
		if err != nil {
			f := ResponseFinding{Reason: ReasonMalformedResponse, Blocked: c.p.Block}
			if pr.op != nil {
				f.Operation, f.Method, f.Route = pr.op.Key, pr.op.Method, pr.op.Path
			}
			c.finding(f)
			// The byte stream cannot be followed any more: end it, after
			// the 502 when blocking (a FIN so the client reads it), with a
			// reset otherwise.
			if c.p.Block {
				c.writeProblem(f, true)
				c.TCPConn.CloseWrite()
			} else {
				c.TCPConn.SetLinger(0)
				c.TCPConn.Close()
			}
			return false, fmt.Errorf("%s/%s: %w", c.p.Peer, c.p.Service, malformedCause(err))
		}
		if text, ok := reasonPhrase(resp.Status, resp.StatusCode); !ok || strings.ContainsFunc(text, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
			// net/http keeps a bare CR (any control byte) in the reason
			// phrase, which a client may take for the line's end and
			// read a field the check never saw: the standard phrase
			// instead, as the exporting side writes it (writeResponse).
			// Tested by TestResponseStatusLineNoBareCR.
			resp.Status = strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode)
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			if c.p.Block && resp.StatusCode != http.StatusContinue {
				// Unchecked, and a client that takes a 1xx but 100 for
				// the final response (Python's http.client) would read
				// it as the answer and the checked one as its next
				// call's. THREATS P2, tested by TestResponseInterimBlock.
				c.stats.InterimDropped.Add(1)
				continue
			}
			// As it came: a status line and its fields (Response.Write
			// would add a Content-Length an interim response has not).
			if err := writeInterim(c.TCPConn, resp); err != nil {
				return false, err
			}
			continue
		}
		return c.final(resp, pr)
	}
}

// errUnaskedSwitch is a 101 to a request that asked for no upgrade.
var errUnaskedSwitch = errors.New("response 101 to a request without Upgrade")

// errMalformedResponse is a response net/http could not parse.
var errMalformedResponse = errors.New("response not HTTP/1.1")

// malformedCause is the error of a response that could not be followed,
// for the pump (and the daemon's log): its class, never net/http's text,
// which quotes the partner's status or header line (THREATS P6, tested by
// TestResponseErrorNoPartnerBytes).
func malformedCause(err error) error {
	switch {
	case errors.Is(err, errUnaskedSwitch), errors.Is(err, errHeadTooLong), errors.Is(err, io.ErrUnexpectedEOF):
		return err
	}
	return errMalformedResponse
}

// writeInterim writes a 1xx response.
func writeInterim(w io.Writer, resp *http.Response) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %s\r\n", resp.Status)
	resp.Header.Write(&b)
	b.WriteString("\r\n")
	_, err := w.Write(b.Bytes())
	return err
}

// final checks and writes one final response.
func (c *CheckedConn) final(resp *http.Response, pr pairedRequest) (bool, error) {
	defer resp.Body.Close()
	// Pairing goes on after a response with "Connection: close" too: a
	// partner that writes more responses after it has them checked, not
	// passed as bytes. THREATS P2, tested by TestResponseAfterClose.
	more := resp.StatusCode != http.StatusSwitchingProtocols && pr.req.Method != http.MethodConnect
	if resp.StatusCode == http.StatusSwitchingProtocols && httpguts.HeaderValuesContainsToken(resp.Header["Upgrade"], "h2c") {
		// The rest would be HTTP/2 (Java's HttpClient offers h2c on every
		// plain-HTTP request): responses the check cannot read, to any
		// operation. Blocking fails closed. THREATS P2, tested by
		// TestResponseSwitchToH2C.
		c.stats.UncheckedStream.Add(1)
		if c.p.Block {
			var op string
			if pr.op != nil {
				op = pr.op.Key
			}
			return c.refuse(resp, ResponseFinding{Operation: op, Reason: ReasonSwitchH2C}, more)
		}
	}
	if pr.op == nil {
		c.stats.UncheckedNoOp.Add(1)
		return more, resp.Write(c.TCPConn)
	}
	// nil: kin-openapi decodes the body itself (or does not read it).
	jmt := jsonResponseCase(pr.route, pr.req, resp)
	var body []byte
	if needsBody(pr.route, resp) {
		// THREATS P5, tested by TestResponseCheckBudget: the bodies a
		// forward holds at once are bounded whatever the partner sends.
		reserve := c.p.maxBody() + 1
		if resp.ContentLength >= 0 && resp.ContentLength < reserve {
			reserve = resp.ContentLength
		}
		if jmt == nil {
			// kin-openapi decodes this body itself (YAML, a form …), its
			// decoded form uncharged: the body holds BudgetFactor/8 times
			// its size while it is checked, so that at most 8 of max_body
			// are decoded at once, as when the budget was 8 x max_body of
			// bodies. THREATS P5, tested by TestResponseKinDecodedBodiesBounded.
			reserve *= BudgetFactor / 8
		}
		if reserveUpTo(&c.stats.buffered.Int64, reserve, reserve, c.p.budget(), c.p.budgetWait()) != reserve {
			return c.busy(resp, pr, nil, more)
		}
		defer func() { c.stats.buffered.Add(-reserve) }()
		buf, err := io.ReadAll(io.LimitReader(resp.Body, c.p.maxBody()+1))
		if err != nil {
			return false, err
		}
		if int64(len(buf)) > c.p.maxBody() {
			// Too long to hold: counted; blocking fails closed, as for a
			// body the budget cannot take (busy), or a partner would pad a
			// broken body past max_body to pass it (THREATS P2, tested by
			// TestResponseOverMaxBody); report-only streams it on unchecked.
			c.stats.UncheckedTooLong.Add(1)
			if c.p.Block {
				c.stats.buffered.Add(-reserve) // not held while the rest drains
				reserve = 0
				return c.refuse(resp, ResponseFinding{Operation: pr.op.Key, Reason: ReasonTooLong}, more)
			}
			resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(buf), resp.Body))
			return more, resp.Write(c.TCPConn)
		}
		body = buf
	}
	// checked is what the check reads: body, or what its gzip encoding
	// holds (a client that accepts gzip reads that). THREATS P5: at most
	// max_body of it, charged; tested by TestResponseGzipChecked.
	checked, undecodable := body, false
	if body != nil && gzipEncoded(resp) {
		plainReserve := c.p.maxBody() + 1
		if jmt == nil {
			plainReserve *= BudgetFactor / 8 // as for body above
		}
		if reserveUpTo(&c.stats.buffered.Int64, plainReserve, plainReserve, c.p.budget(), c.p.budgetWait()) != plainReserve {
			return c.busy(resp, pr, body, more)
		}
		defer c.stats.buffered.Add(-plainReserve)
		plain, err := gunzip(body, c.p.maxBody()+1)
		switch {
		case err != nil:
			undecodable = true
		case int64(len(plain)) > c.p.maxBody():
			c.stats.UncheckedTooLong.Add(1)
			if c.p.Block {
				return c.refuse(resp, ResponseFinding{Operation: pr.op.Key, Reason: ReasonTooLong}, more)
			}
			return more, c.pass(resp, body)
		default:
			checked = plain
		}
	}
	f := ResponseFinding{Operation: pr.op.Key, Method: pr.op.Method, Route: pr.op.Path, Status: resp.StatusCode, Blocked: c.p.Block}
	if len(resp.Header["Content-Type"]) > 1 {
		// kin-openapi checks the body as the first type; an application
		// reading the last would consume it as another. THREATS P2,
		// tested by TestResponseCheck (/v1/payments/6).
		f.Reason = ReasonDuplicateContentType
	} else if undeclaredRedirect(pr.route, resp.StatusCode) {
		f.Reason = ReasonUndeclaredStatus
	} else if undecodable {
		f.Reason = ReasonUndecodableBody
	} else {
		err := c.check(resp, pr, jmt, checked)
		if err != nil && err != errJSONBudget {
			f.Reason, f.Keyword = responseReason(err)
		}
		c.release() // the errors are read: before any write to the client
		if err == errJSONBudget {
			return c.busy(resp, pr, body, more)
		}
		if err == nil {
			c.stats.Valid.Add(1)
			return more, c.pass(resp, body)
		}
	}
	if f.Reason == ReasonUndeclaredStatus && problemRefusal(resp) {
		// The partner's side refused the call (its dyad's API guard
		// answers 403, 404, 429 … this way): not data to consume.
		c.stats.Refusals.Add(1)
		return more, c.pass(resp, body)
	}
	c.finding(f)
	if !c.p.Block {
		return more, c.pass(resp, body)
	}
	return c.refuse(resp, f, more)
}

// pass writes resp on to the client, its body from held when the check
// read it (nil: what is left of resp.Body).
func (c *CheckedConn) pass(resp *http.Response, held []byte) error {
	if held != nil {
		resp.Body = io.NopCloser(bytes.NewReader(held))
	}
	return resp.Write(c.TCPConn)
}

// refuse replaces resp with a 502 problem response for f. The partner's
// response is read to its end first, so the connection stays in step and
// a keep-alive client can go on. A refused switch (!more) ends the
// connection: what follows is the other protocol's bytes, which the client
// must not get unchecked.
func (c *CheckedConn) refuse(resp *http.Response, f ResponseFinding, more bool) (bool, error) {
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return false, err
	}
	if err := c.writeProblem(f, !more || resp.Close); err != nil {
		return false, err
	}
	if !more {
		c.TCPConn.CloseWrite() // the client reads the 502 to its end now, as for a malformed response
		return false, fmt.Errorf("%s/%s: switch of protocols refused", c.p.Peer, c.p.Service)
	}
	return more, nil
}

// check validates a final response to pr, its body held in body (nil
// when needsBody said it has none to check), jmt its jsonResponseCase: nil
// when it keeps its contract, errJSONBudget when the forward's budget
// could not take its decoded form, kin-openapi's error otherwise.
func (c *CheckedConn) check(resp *http.Response, pr pairedRequest, jmt *openapi3.MediaType, body []byte) error {
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: pr.req, PathParams: pr.params, Route: pr.route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if jmt != nil {
		return c.checkJSONResponse(in, jmt, body)
	}
	in.Body = io.NopCloser(bytes.NewReader(body))
	return openapi3filter.ValidateResponse(context.Background(), in)
}

// busy handles a response whose check the forward's budget could not
// take, its body (what was read of it: nil for none) or its decoded form:
// report-only passes it on unchecked, blocking fails closed (what could
// not be checked is not passed) with a 502 response_check_busy; both
// count unchecked_busy.
func (c *CheckedConn) busy(resp *http.Response, pr pairedRequest, body []byte, more bool) (bool, error) {
	c.stats.UncheckedBusy.Add(1)
	if !c.p.Block {
		return more, c.pass(resp, body)
	}
	return c.refuse(resp, ResponseFinding{Operation: pr.op.Key, Reason: ReasonBusy}, more)
}

// respOpts30 and respOpts31 are the options openapi3filter's
// ValidateResponse (v0.153.0) gives a body's Schema.VisitJSON for the
// checker's Options (MultiError), the second for a 3.1 document.
// respFailFast30 only says whether a body keeps a 3.0 schema: it stops at
// the first error, building none.
var (
	respOpts30     = []openapi3.SchemaValidationOption{openapi3.MultiErrors(), openapi3.VisitAsResponse()}
	respOpts31     = []openapi3.SchemaValidationOption{openapi3.MultiErrors(), openapi3.EnableJSONSchema2020(), openapi3.VisitAsResponse()}
	respFailFast30 = []openapi3.SchemaValidationOption{openapi3.FailFast(), openapi3.VisitAsResponse()}
)

// checkJSONResponse checks a response of jsonResponseCase (its media
// type entry mt, its body held in body) as openapi3filter's
// ValidateResponse does, with the same errors, so the finding's reason and
// keyword are the same (THREATS P2, tested by TestCheckJSONResponseAsKin):
// the status and the declared headers by ValidateResponse itself, without
// the body (ExcludeResponseBody); the body decoded by the guard's decoder
// (the one kin-openapi would call) and checked by kin-openapi's
// Schema.VisitJSON with ValidateResponse's options (for a 3.1 document by
// the validator the spec keeps, as VisitJSON would: visitJSON31). The decoded form is
// charged to the forward's budget as the decoder builds it, and all of it
// given back when the check returns, whatever its outcome; when the budget
// cannot take it (within 1 s when blocking) the error is errJSONBudget
// (unchecked_busy). THREATS P5, tested by TestResponseDecodedFormCharged.
// The value shares body's bytes, which nothing writes; nothing keeps the
// value, or the error that may point into it, past the caller's finding.
//
// The errors kin-openapi builds for a body that breaks its schema are not
// charged: all of them are collected (MultiError), one or more per
// failing value, which for a body of wrong-typed values takes more than
// its decoded form. For a 3.0 document the body is first checked failing
// fast (no error built: a body that keeps its schema is done), and a
// broken one's errors are collected by one check of the forward at a time,
// which waits up to 1 s for its turn, then is unchecked_busy, and holds it
// until the caller has read the errors into its finding (release). THREATS P5,
// tested by TestResponseErrorsCollectedOneAtATime. A 3.1 document's body
// is checked for a yes or no first (schema31.keeps) and its errors built
// under the same turn, at most maxListed of them converted
// (TestResponse31BrokenBodyBounded); the validator's own tree of them is
// not charged.
func (c *CheckedConn) checkJSONResponse(in *openapi3filter.ResponseValidationInput, mt *openapi3.MediaType, body []byte) error {
	in.Options.ExcludeResponseBody = true
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		return err
	}
	value, held, err := decodeInBudget(&c.stats.buffered, body, c.p.budget(), c.p.budgetWait())
	defer c.stats.buffered.Add(-held)
	if err == errJSONBudget {
		return err
	}
	if err != nil {
		return &openapi3filter.ResponseError{Input: in, Reason: "failed to decode response body", Err: err}
	}
	schema := mt.Schema.Value
	mode := builtin31 // a 3.0 document's check is kin-openapi's built-in one
	var v *schema31
	if route := in.RequestValidationInput.Route; route.Spec != nil && route.Spec.IsOpenAPI31OrLater() {
		v = c.p.Spec.check31(schema)
		mode = v.mode
	}
	switch mode {
	case perCall31:
		// kin-openapi's own check builds every error: under the turn.
		if !c.stats.collect() {
			return errJSONBudget
		}
		c.collecting = true
		err = schema.VisitJSON(value, respOpts31...)
	case compiled31:
		if v.keeps(value) {
			return nil
		}
		if !c.stats.collect() {
			return errJSONBudget
		}
		c.collecting = true
		err = v.errorsOf(value)
	default:
		if schema.VisitJSON(value, respFailFast30...) == nil {
			return nil
		}
		if !c.stats.collect() {
			return errJSONBudget
		}
		c.collecting = true
		err = schema.VisitJSON(value, respOpts30...)
	}
	if err != nil {
		return &openapi3filter.ResponseError{Input: in, Reason: "response body doesn't match schema" + schemaID(mt.Schema), Err: err}
	}
	return nil
}

// release gives back the forward's turn to collect errors, if this
// connection holds it.
func (c *CheckedConn) release() {
	if c.collecting {
		c.collecting = false
		c.stats.collecting.Store(false)
	}
}

func (c *CheckedConn) finding(f ResponseFinding) {
	c.stats.Invalid.Add(1)
	if f.Blocked {
		c.stats.Blocked.Add(1)
	}
	if c.report != nil {
		c.report(f)
	}
}

// writeProblem answers the client with a 502 problem+json that says which
// contract rule the partner broke, never what it sent.
func (c *CheckedConn) writeProblem(f ResponseFinding, last bool) error {
	detail := fmt.Sprintf("the response of %s/%s to %s broke its OpenAPI contract: %s", c.p.Peer, c.p.Service, f.Operation, f.Reason)
	if f.Operation == "" {
		detail = fmt.Sprintf("the response of %s/%s was not HTTP/1.1", c.p.Peer, c.p.Service)
	}
	body := fmt.Sprintf(`{"type":"about:blank","title":"Bad Gateway","status":502,"detail":%s,"reason":%q}`, strconv.Quote(detail), f.Reason)
	conn := ""
	if last {
		conn = "Connection: close\r\n"
	}
	_, err := fmt.Fprintf(c.TCPConn, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/problem+json\r\nContent-Length: %d\r\n%s\r\n%s", len(body), conn, body)
	return err
}

// gzipEncoded says whether resp's body has the one content coding gzip.
// Any other coding (deflate, br, several) is checked as it is, which a
// schema'd JSON body fails as undecodable_body.
func gzipEncoded(resp *http.Response) bool {
	ce := resp.Header["Content-Encoding"]
	if len(ce) != 1 {
		return false
	}
	v := strings.TrimSpace(ce[0])
	return strings.EqualFold(v, "gzip") || strings.EqualFold(v, "x-gzip")
}

// gunzip decodes a gzip body, at most limit bytes of it.
func gunzip(b []byte, limit int64) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(io.LimitReader(zr, limit))
}

// undeclaredRedirect says whether status is a redirect kin-openapi's
// ValidateResponse never checks (301, 307, 308) that route's operation
// declares neither by itself, by its range (3XX) nor by a default: the
// checker holds it undeclared_status as any other, or a partner could send
// the app, which may follow it, to an address of its choosing (OWASP API10).
// THREATS P2, tested by TestResponseUndeclaredRedirect.
func undeclaredRedirect(route *routers.Route, status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
	default:
		return false
	}
	if route == nil || route.Operation == nil {
		return false
	}
	responses := route.Operation.Responses
	if responses.Len() == 0 {
		return false // ValidateResponse takes every status then
	}
	return responses.Status(status) == nil && responses.Default() == nil
}

// problemRefusal says whether resp is a refusal in the RFC 9457 problem format
// with a client-error or 503 status, as the exporting dyad's API guard
// answers (400, 403, 404, 405, 413, 429, 431, 503): an undeclared status of
// this kind is counted, not reported.
func problemRefusal(resp *http.Response) bool {
	ct := resp.Header.Get("Content-Type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.TrimSpace(strings.ToLower(ct)) == "application/problem+json" &&
		(resp.StatusCode >= 400 && resp.StatusCode < 500 || resp.StatusCode == http.StatusServiceUnavailable)
}

// needsBody says whether the response's body has a schema to validate,
// as openapi3filter.ValidateResponse decides it; HEAD responses and 304
// have no body.
func needsBody(route *routers.Route, resp *http.Response) bool {
	if resp.Request != nil && resp.Request.Method == http.MethodHead || resp.StatusCode == http.StatusNotModified || resp.ContentLength == 0 {
		return false
	}
	if route == nil || route.Operation == nil || route.Operation.Responses == nil {
		return false
	}
	ref := route.Operation.Responses.Status(resp.StatusCode)
	if ref == nil {
		ref = route.Operation.Responses.Default()
	}
	if ref == nil || ref.Value == nil {
		return false
	}
	mt := ref.Value.Content.Get(resp.Header.Get("Content-Type"))
	return mt != nil && mt.Schema != nil
}

// jsonResponseCase returns the media type entry that describes resp's
// body when checkJSONResponse takes it: openapi3filter's ValidateResponse
// (v0.153.0) would decode the body with the guard's JSON decoder (not a
// HEAD request nor a status it never checks; the status, or the default,
// declared with content whose entry for the Content-Type jsonMedia takes).
// Otherwise nil: kin-openapi checks the response whole.
func jsonResponseCase(route *routers.Route, req *http.Request, resp *http.Response) *openapi3.MediaType {
	if req.Method == http.MethodHead || route == nil || route.Operation == nil {
		return nil
	}
	switch resp.StatusCode {
	case http.StatusNotModified, http.StatusPermanentRedirect, http.StatusTemporaryRedirect, http.StatusMovedPermanently:
		return nil
	}
	responses := route.Operation.Responses
	if responses.Len() == 0 {
		return nil
	}
	ref := responses.Status(resp.StatusCode)
	if ref == nil {
		ref = responses.Default()
	}
	if ref == nil || ref.Value == nil {
		return nil
	}
	ct := resp.Header.Get("Content-Type")
	mt := ref.Value.Content.Get(ct)
	if _, ok := jsonMedia(mt, ct); !ok {
		return nil
	}
	return mt
}

// responseReason classes a validation error and names the schema keyword
// that failed. Undeclared properties win over other schema errors: they
// are what OWASP API3 asks to detect.
func responseReason(err error) (reason, keyword string) {
	var re *openapi3filter.ResponseError
	if !errors.As(err, &re) {
		return ReasonSchemaViolation, ""
	}
	switch {
	case re.Reason == "status is not supported":
		return ReasonUndeclaredStatus, ""
	case strings.HasPrefix(re.Reason, "response header Content-Type has unexpected value"):
		// Before the header case: kin-openapi's text names a header.
		// Tested by TestResponseCheck (/v1/payments/7).
		return ReasonContentType, ""
	case strings.Contains(re.Reason, "header"):
		return ReasonHeader, ""
	case strings.HasPrefix(re.Reason, "failed to decode"):
		return ReasonUndecodableBody, ""
	}
	var e31 *schemaErrors31
	if errors.As(re.Err, &e31) {
		if e31.undeclared != "" {
			return ReasonUndeclaredProperty, e31.undeclared
		}
		return ReasonSchemaViolation, e31.first
	}
	var errs []error
	collectSchemaErrors(re.Err, &errs)
	if len(errs) == 0 {
		return ReasonSchemaViolation, ""
	}
	for _, e := range errs {
		if keyword := undeclaredProperty(e); keyword != "" {
			return ReasonUndeclaredProperty, keyword
		}
	}
	var first *openapi3.SchemaError
	errors.As(errs[0], &first)
	return ReasonSchemaViolation, first.SchemaField
}

// undeclaredProperty returns the keyword that forbids a property the
// schema error e is about, or "" when e is another failure. Under OpenAPI
// 3.1 (JSON Schema 2020-12) kin-openapi's error for a property that
// unevaluatedProperties (or additionalProperties) forbids names no keyword:
// the property failed that keyword's false schema, which the validator's
// own error, wrapped in e, locates. Tested by TestResponseReason31Undeclared.
func undeclaredProperty(e error) string {
	var se *openapi3.SchemaError
	if !errors.As(e, &se) {
		return ""
	}
	if se.SchemaField == "additionalProperties" || se.SchemaField == "properties" && strings.HasSuffix(se.Reason, "is unsupported") {
		return "additionalProperties"
	}
	var ve *jsonschema.ValidationError
	if se.Origin != nil || !errors.As(e, &ve) {
		return ""
	}
	return forbiddingKeyword(ve)
}

// collectSchemaErrors flattens kin-openapi's multi-errors into the schema
// errors they hold, each as found (errors.As gives its *SchemaError), in
// order: an error before its Origin's.
func collectSchemaErrors(err error, out *[]error) {
	var me openapi3.MultiError
	if errors.As(err, &me) {
		for _, e := range me {
			collectSchemaErrors(e, out)
		}
		return
	}
	var se *openapi3.SchemaError
	if errors.As(err, &se) {
		*out = append(*out, err)
		if se.Origin != nil {
			collectSchemaErrors(se.Origin, out)
		}
	}
}
