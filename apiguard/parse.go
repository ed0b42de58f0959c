package apiguard

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Reasons a request stream or a request is refused before routing. They
// are fixed strings: audit events carry them, never the bytes that caused
// them.
const (
	reasonNotHTTP        = "not_http"         // the stream's first bytes are not an HTTP/1.1 request line
	reasonH2C            = "h2c"              // HTTP/2 with prior knowledge (the connection preface)
	reasonHeaderTooLarge = "header_too_large" // header block over MaxHeaderBytes
	reasonTruncated      = "truncated"        // the stream ended inside a header block
	reasonBareLF         = "bare_lf"          // a line ending without CR
	reasonObsFold        = "obs_fold"         // obsolete line folding
	reasonMalformed      = "malformed_header" // a request line or header field net/http or we cannot read
	reasonCLTE           = "content_length_and_transfer_encoding"
	reasonDupCL          = "duplicate_content_length"
	reasonBadCL          = "malformed_content_length"
	reasonBadTE          = "unsupported_transfer_encoding"
	reasonVersion        = "http_version" // not HTTP/1.1
	reasonTarget         = "request_target"
	reasonPath           = "path_not_canonical"
	reasonUpgrade        = "upgrade"
	reasonDupCT          = "duplicate_content_type"
)

// errStreamEnd is the clean end of a request stream: EOF between requests.
var errStreamEnd = errors.New("end of request stream")

// refusal is a request or stream refused by the parser, with its reason.
type refusal struct{ reason string }

func (r *refusal) Error() string { return "request refused: " + r.reason }

// RequestError is a request (or, when Stream says so, a whole stream) the
// guard's parser refuses; Reason is one of the fixed reasons of
// dyad.api.denied and dyad.api.stream_refused.
type RequestError struct{ Reason string }

func (e *RequestError) Error() string { return "request refused: " + e.Reason }

// Stream says the stream does not carry HTTP/1.1 at all (not_http, h2c).
func (e *RequestError) Stream() bool { return e.Reason == reasonNotHTTP || e.Reason == reasonH2C }

// Status is the answer to a refused request: 431 for an oversize header
// block, 505 for another HTTP version, 400 otherwise.
func (e *RequestError) Status() int {
	switch e.Reason {
	case reasonHeaderTooLarge:
		return 431
	case reasonVersion:
		return 505
	}
	return 400
}

// RequestReader reads the HTTP/1.1 requests of one stream with the guard's
// parser: each header block is bounded and checked for smuggling shapes
// before net/http's ReadRequest parses it. A returned request's Body must
// be read to its end (or the stream given up) before the next Next.
type RequestReader struct {
	br    *bufio.Reader
	first bool
}

// NewRequestReader reads requests from r, buffering at most MaxHeaderBytes.
func NewRequestReader(r io.Reader) *RequestReader {
	return &RequestReader{br: bufio.NewReaderSize(r, MaxHeaderBytes), first: true}
}

// Next returns the next request; io.EOF at a clean end between requests;
// a *RequestError for a refused one (the stream cannot go on after it);
// or the reader's error.
func (rr *RequestReader) Next() (*http.Request, error) {
	req, _, err := readRequest(rr.br, rr.first)
	rr.first = false
	return req, err
}

// Buffered is how many bytes the reader holds (at most MaxHeaderBytes).
func (rr *RequestReader) Buffered() int { return rr.br.Buffered() }

// readRequest is Next on br; underscore says a field name of the request
// has '_' (underscoreAlias).
func readRequest(br *bufio.Reader, first bool) (req *http.Request, underscore bool, err error) {
	n, err := headerBlock(br, first)
	if err != nil {
		return nil, false, blockError(err)
	}
	block, _ := br.Peek(n)
	r := checkHeader(block)
	if r != "" && r != nameUnderscore {
		return nil, false, &RequestError{r}
	}
	req, err = http.ReadRequest(br)
	if err != nil {
		return nil, false, &RequestError{reasonMalformed}
	}
	return req, r == nameUnderscore, nil
}

// blockError is readRequest's error for headerBlock's err: io.EOF at a
// clean end, a *RequestError for a refusal, else err. (Apart from
// readRequest, so the refusal's target is allocated only on an error.)
func blockError(err error) error {
	var ref *refusal
	switch {
	case errors.Is(err, errStreamEnd):
		return io.EOF
	case errors.As(err, &ref):
		return &RequestError{ref.reason}
	}
	return err
}

// h2Preface is the start of HTTP/2's connection preface.
const h2Preface = "PRI * HTTP/2.0\r\n"

// headerBlock waits until br holds a whole header block (request line,
// fields and the empty line), at most br.Size() bytes (MaxHeaderBytes),
// and returns its length. It never reads past the block's end into a
// buffer of its own: br is the only buffer, so a stream holds at most
// MaxHeaderBytes here (THREATS P5, FuzzRequestStream). first marks the
// stream's first request: bytes that cannot start a request line end it at
// once as not HTTP, without waiting for more.
func headerBlock(br *bufio.Reader, first bool) (int, error) {
	searched := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		if first {
			if r := lineStart(buf); r != "" {
				return 0, &refusal{r}
			}
		}
		from := max(0, searched-3)
		region, n := buf, -1
		if i := bytes.Index(buf[from:], []byte("\r\n\r\n")); i >= 0 {
			n = from + i + 4
			region = buf[:n]
		}
		// A line ending without CR: a parser that accepts bare LF would
		// see another request than one that does not.
		for i := max(0, searched-1); i < len(region); i++ {
			j := bytes.IndexByte(region[i:], '\n') // jumps from LF to LF
			if j < 0 {
				break
			}
			if i += j; i == 0 || region[i-1] != '\r' {
				return 0, &refusal{reasonBareLF}
			}
		}
		if n > 0 {
			return n, nil
		}
		searched = len(buf)
		if len(buf) >= br.Size() {
			return 0, &refusal{reasonHeaderTooLarge}
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			switch {
			case br.Buffered() > len(buf):
				continue
			case len(buf) == 0 && err == io.EOF:
				return 0, errStreamEnd
			case err == io.EOF || err == io.ErrUnexpectedEOF:
				return 0, &refusal{reasonTruncated}
			}
			return 0, err
		}
	}
}

// lineStart checks what a stream's first bytes can be: "" while they may
// still become an HTTP/1.1 request line.
func lineStart(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	n := min(len(b), len(h2Preface))
	if string(b[:n]) == h2Preface[:n] && n >= 4 {
		if n == len(h2Preface) {
			return reasonH2C
		}
		return ""
	}
	for i, c := range b {
		if c == ' ' {
			if i == 0 {
				return reasonNotHTTP
			}
			return ""
		}
		if !tokenChar(c) || i >= 20 {
			return reasonNotHTTP
		}
	}
	return ""
}

// nameUnderscore is checkHeader's answer for a block it accepts in which
// a field name has '_': not a refusal, a mark that the request needs
// underscoreAlias (rare, so only such requests pay for it).
const nameUnderscore = "_"

// tokenChar says whether c may stand in an RFC 9110 token (a method, a
// field name): visible ASCII but the delimiters.
func tokenChar(c byte) bool { return tokenChars[c] }

// tokenChars is tokenChar as a table: checkHeader asks it for every byte
// of every field name of every request.
var tokenChars = func() (t [256]bool) {
	for c := '!'; c < 0x7f; c++ {
		t[c] = !strings.ContainsRune("\"(),/:;<=>?@[\\]{}", c)
	}
	return t
}()

// fastNameChars is tokenChars without '_': checkHeader's fast pass stops
// at a field name with '_' and leaves the block to checkHeaderStrict, which
// marks it (nameUnderscore).
var fastNameChars = func() [256]bool {
	t := tokenChars
	t['_'] = false
	return t
}()

// maxHeaderFields bounds a header block's fields (Apache's
// LimitRequestFields): net/http's parsed form of a block is about 15
// times its size when its fields are tiny ("1:", "2:", ... fill 16 KiB
// with 2,800), held while the request is in flight; with at most 100 it is
// at most ~24 KiB (README, B_guard). A block with more is refused as too
// large (431). THREATS P5, tested by TestGuardParsedHeadBounded.
const maxHeaderFields = 100

// checkHeader refuses the header block shapes that request smuggling
// needs, before net/http parses it (net/http would repair some of them):
// bare LF, obsolete line folding, a field without a name or with space
// before its colon, more than one Content-Length, a Content-Length that
// is not digits, Transfer-Encoding other than one "chunked", and
// Content-Length with Transfer-Encoding; and more than maxHeaderFields
// fields. A block it accepts in which a field name has '_' gets
// nameUnderscore rather than "". THREATS P2 (the upstream sees
// only what the guard checked), tested by TestGuardSmuggling.
//
// It is checkHeaderStrict's answer, found faster for a block it accepts
// (every request the guard forwards): one pass over the field names, the
// CR and LF counts instead of a search of each line for them, the framing
// fields found by their length first. Whatever looks wrong on that pass
// is decided by checkHeaderStrict, so a refused block gets the same
// reason as before (TestCheckHeaderFast compares the two).
func checkHeader(block []byte) string {
	rest := block[:len(block)-4]
	first, rest, more := bytes.Cut(rest, []byte("\r\n"))
	if !bytes.HasSuffix(first, []byte(" HTTP/1.1")) {
		return checkHeaderStrict(block)
	}
	lines, cl, te := 1, 0, 0
	for more {
		var l []byte
		l, rest, more = bytes.Cut(rest, []byte("\r\n"))
		lines++
		i := 0
		for i < len(l) && fastNameChars[l[i]] {
			i++
		}
		// A field starting with space or tab, or without a name, stops
		// at i == 0; a name with another byte than a token's before its
		// colon, or with '_', stops at that byte.
		if i == 0 || i == len(l) || l[i] != ':' {
			return checkHeaderStrict(block)
		}
		switch i {
		case len("Content-Length"):
			if bytes.EqualFold(l[:i], []byte("Content-Length")) {
				cl++
				value := bytes.Trim(l[i+1:], " \t")
				if len(value) == 0 || len(value) > 18 {
					return checkHeaderStrict(block)
				}
				for _, c := range value {
					if c < '0' || c > '9' {
						return checkHeaderStrict(block)
					}
				}
			}
		case len("Transfer-Encoding"):
			if bytes.EqualFold(l[:i], []byte("Transfer-Encoding")) {
				te++
				if !bytes.EqualFold(bytes.Trim(l[i+1:], " \t"), []byte("chunked")) {
					return checkHeaderStrict(block)
				}
			}
		}
	}
	// Each line (and the block's end) ends in CRLF: as many CRs and LFs
	// as CRLFs means none stands alone anywhere (bare LF, bare CR).
	if pairs := lines + 1; bytes.Count(block, []byte("\r")) != pairs || bytes.Count(block, []byte("\n")) != pairs ||
		cl+te > 1 || lines > maxHeaderFields+1 {
		return checkHeaderStrict(block)
	}
	return ""
}

// checkHeaderStrict is checkHeader line by line, each line checked in
// full before the next: the reason it gives a refused block is the first
// wrong line's.
func checkHeaderStrict(block []byte) string {
	// The lines are walked in place (no slice of them: this runs for
	// every request).
	rest := block[:len(block)-4]
	first, rest, more := bytes.Cut(rest, []byte("\r\n"))
	if !bytes.HasSuffix(first, []byte(" HTTP/1.1")) {
		if bytes.HasSuffix(first, []byte(" HTTP/1.0")) {
			return reasonVersion
		}
		return reasonMalformed
	}
	cl, te, fields, underscore := 0, 0, 0, false
	for more {
		var l []byte
		l, rest, more = bytes.Cut(rest, []byte("\r\n"))
		if bytes.IndexByte(l, '\n') >= 0 || bytes.IndexByte(l, '\r') >= 0 {
			return reasonBareLF
		}
		if fields++; fields > maxHeaderFields {
			return reasonHeaderTooLarge
		}
		if len(l) == 0 {
			return reasonMalformed
		}
		if l[0] == ' ' || l[0] == '\t' {
			return reasonObsFold
		}
		i := bytes.IndexByte(l, ':')
		if i <= 0 {
			return reasonMalformed
		}
		for _, c := range l[:i] {
			if !tokenChar(c) {
				return reasonMalformed
			}
		}
		underscore = underscore || bytes.IndexByte(l[:i], '_') >= 0
		name, value := l[:i], bytes.Trim(l[i+1:], " \t")
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			cl++
			if len(value) == 0 || len(value) > 18 {
				return reasonBadCL
			}
			for _, c := range value {
				if c < '0' || c > '9' {
					return reasonBadCL
				}
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			te++
			if !bytes.EqualFold(value, []byte("chunked")) {
				return reasonBadTE
			}
		}
	}
	switch {
	case bytes.IndexByte(first, '\n') >= 0:
		return reasonBareLF
	case cl > 0 && te > 0:
		return reasonCLTE
	case cl > 1:
		return reasonDupCL
	case te > 1:
		return reasonBadTE
	case underscore:
		return nameUnderscore
	}
	return ""
}

// canonicalPath refuses a path that an upstream could read as another
// one than the router matched: dot segments (also before a ';', which
// Tomcat, Jetty and Spring drop with what follows before resolving them:
// "..;" is ".."), empty segments, encoded slashes or backslashes, encoded
// unreserved characters, backslashes, control bytes. THREATS P2, tested by
// TestGuardSmuggling, TestGuardDotSemicolon and TestGuardEscapedUnreserved.
func canonicalPath(u *url.URL) bool {
	p := u.EscapedPath()
	if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") || strings.ContainsAny(p, "\\") {
		return false
	}
	for i := strings.IndexByte(p, '%'); i >= 0; i = strings.IndexByte(p, '%') {
		p = p[i+1:]
		if len(p) >= 2 {
			switch strings.ToLower(p[:2]) {
			case "2f", "5c", "00":
				return false
			}
			// An unreserved byte escaped: Go, Spring and ASP.NET
			// decode it before routing, Express routes on the raw
			// path, so /items/%65xport is one operation to some and
			// another to others. RFC 3986 says never to escape them.
			// THREATS P2, tested by TestGuardEscapedUnreserved.
			if c, ok := unhex(p[0], p[1]); ok && unreserved(c) {
				return false
			}
		}
	}
	// Segments walked in place: no slice of them per request.
	for rest := u.Path; ; {
		seg, after, more := strings.Cut(rest, "/")
		if name, _, _ := strings.Cut(seg, ";"); name == "." || name == ".." {
			return false
		}
		for _, c := range []byte(seg) {
			if c < 0x20 || c == 0x7f {
				return false
			}
		}
		if !more {
			return true
		}
		rest = after
	}
}

// unhex decodes two hex digits.
func unhex(a, b byte) (byte, bool) {
	x, ok1 := hexVal(a)
	y, ok2 := hexVal(b)
	return x<<4 | y, ok1 && ok2
}

func hexVal(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// unreserved says whether c is an RFC 3986 unreserved character.
func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
