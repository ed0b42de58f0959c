package apiguard

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// The guard writes the requests it forwards itself, from the parsed
// request, rather than through net/http's Request.Write: that path sorts
// the header fields, allocates for each, and flushes after every chunk of
// a chunked body (three writes to upstream per chunk). What goes upstream
// is the same canonical form: the request line from the parsed method and
// URL, Host, the fields net/http's parser accepted (names are tokens,
// values hold no CR, LF or other control byte: textproto refuses them),
// and the framing the guard chose, never the client's framing fields.

// bodyChunk is the most body bytes one read moves upstream; a body buffer
// has room for a chunk's size line before them and its CRLF after. Half a
// record's payload (codec.MaxPayload): two writes upstream per full
// record, and B_guard (README, memory formula) grows by 32 KiB, not 64,
// while a body streams.
const bodyChunk = 32 << 10

// chunkHead is the room before a chunk's data: its size in hex and CRLF.
const chunkHead = 16

// bodyBufs holds the buffers bodies stream through, taken per body (an
// idle stream holds none); pointers, so Put does not allocate.
var bodyBufs = sync.Pool{New: func() any { return new([chunkHead + bodyChunk + 2]byte) }}

// errHost is a Host field net/http would refuse to write either; errTarget
// a request target that is not a path.
var (
	errHost   = errors.New("invalid Host header")
	errTarget = errors.New("request target is not a path")
)

// errBody is the client's body breaking while the guard forwards it (a
// chunk that cannot be read, fewer bytes than its Content-Length): the
// partner's fault, not upstream's, so the guard refuses it as it refuses a
// body it buffers (400 truncated, dyad.api.denied), never counts it as
// upstream's failure (THREATS P10: the inventory and the report must not
// blame upstream for the partner's bytes), tested by
// TestGuardBrokenStreamedBody.
var errBody = errors.New("request body broken")

// bodyError marks err as the body's reader's (copyChunked).
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "read body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// framingFields are the fields the guard writes itself (Host) or replaces
// with its own framing (Content-Length, Transfer-Encoding, Trailer).
func framingField(k string) bool {
	switch k {
	case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
		return true
	}
	return false
}

// forwardingField says whether k (a canonical field name) is one a proxy
// writes to name the original client, host or scheme: Forwarded,
// X-Forwarded-*, X-Real-Ip, True-Client-Ip, X-Client-Ip, X-Cluster-Client-Ip,
// also spelled with '_', which CGI and WSGI gateways read as '-'. The guard
// does not forward a partner's: an upstream that trusts its proxy's
// X-Forwarded-For (an allow list of internal addresses, a limit per
// client) would take the partner for an internal client. THREATS P2,
// tested by TestGuardForwardingFields. A name without '_' costs a switch
// and a prefix test; one with '_' (rare) is canonicalised first.
func forwardingField(k string) bool {
	switch k {
	case "Forwarded", "X-Real-Ip", "True-Client-Ip", "X-Client-Ip", "X-Cluster-Client-Ip":
		return true
	}
	if strings.HasPrefix(k, "X-Forwarded-") {
		return true
	}
	if strings.IndexByte(k, '_') < 0 {
		return false
	}
	return forwardingField(http.CanonicalHeaderKey(strings.ReplaceAll(k, "_", "-")))
}

// dropHopByHop removes the fields h's Connection field names, and that
// field itself ("close" stays, as the request's own end): they are
// hop-by-hop (RFC 9110, 7.6.1), and a proxy upstream of the guard drops
// them before the application sees them. The guard drops them before it
// validates, so what it checks is what the application gets ("Connection:
// X-Request-Id" hid a required, validated field from it). THREATS P2,
// tested by TestGuardHopByHop. Requests without Connection pay one map
// lookup; "keep-alive" and "close", the usual tokens, allocate nothing.
func dropHopByHop(h http.Header, closing bool) {
	conn := h["Connection"]
	if len(conn) == 0 {
		return
	}
	delete(h, "Connection")
	for _, v := range conn {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			switch tok = strings.TrimSpace(tok); {
			case tok == "", strings.EqualFold(tok, "close"), strings.EqualFold(tok, "upgrade"):
				// Upgrade stays for decide to refuse.
			case strings.EqualFold(tok, "keep-alive"):
				delete(h, "Keep-Alive")
			default:
				delete(h, http.CanonicalHeaderKey(tok))
			}
		}
	}
	if closing {
		h["Connection"] = []string{"close"}
	}
}

// writeRequest forwards req to uw and flushes it: the head, then the body
// streamed through a pooled buffer, one write upstream per read of the
// client's body (chunked bodies are re-chunked, one chunk per read). The
// head follows net/http's Request.Write: "Content-Length: 0" for a bodiless
// POST, PUT or PATCH, declared trailers after a chunked body. A non-empty
// pin (Policy.Host) is the Host written, in place of the partner's, which
// is then not looked at (THREATS P2, tested by TestGuardPinnedHost). The
// partner's forwarding fields are left out but those of keep, the
// operation's header parameters (forwardingField).
func writeRequest(uw *bufio.Writer, req *http.Request, pin string, keep []string) error {
	host := pin
	if host == "" {
		host = req.Host
		if host == "" && req.URL != nil {
			host = req.URL.Host
		}
		if !httpguts.ValidHostHeader(host) {
			return errHost
		}
	}
	// Only origin-form targets are forwarded (decide refuses the others
	// first); a URL that would not write as a path is not sent at all.
	target := req.URL.RequestURI()
	if req.URL.IsAbs() || req.URL.Opaque != "" || !strings.HasPrefix(target, "/") {
		return errTarget
	}
	uw.WriteString(req.Method)
	uw.WriteByte(' ')
	uw.WriteString(target)
	uw.WriteString(" HTTP/1.1\r\nHost: ")
	uw.WriteString(host)
	uw.WriteString("\r\n")
	for k, vs := range req.Header {
		if framingField(k) || forwardingField(k) && !slices.Contains(keep, k) {
			continue
		}
		for _, v := range vs {
			writeField(uw, k, v)
		}
	}
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	chunked := len(req.TransferEncoding) == 1 && req.TransferEncoding[0] == "chunked"
	trailer := req.Trailer // declared keys now, values once the body ended
	var declared []string
	switch {
	case chunked && body != nil:
		uw.WriteString("Transfer-Encoding: chunked\r\n")
		declared = writeTrailerField(uw, trailer)
	case body != nil && req.ContentLength > 0:
		uw.WriteString("Content-Length: ")
		// Appended in the writer's own free space: a local array would
		// escape through Write (one allocation per request).
		uw.Write(strconv.AppendInt(uw.AvailableBuffer(), req.ContentLength, 10))
		uw.WriteString("\r\n")
	default:
		body = nil
		switch req.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			uw.WriteString("Content-Length: 0\r\n")
		}
	}
	uw.WriteString("\r\n")
	if body == nil {
		return uw.Flush()
	}
	if chunked {
		if err := copyChunked(uw, body, true); err != nil {
			var be *bodyError
			if errors.As(err, &be) {
				return errBody
			}
			return err
		}
		writeTrailers(uw, trailer, declared)
		return uw.Flush()
	}
	if wt, ok := body.(io.WriterTo); ok {
		// A buffered body (the guard's held one, or kin-openapi's with
		// a schema's defaults written in): in memory already, written
		// from there in one piece, without a buffer of its own.
		sent, err := wt.WriteTo(uw)
		if err != nil {
			return err
		}
		if sent != req.ContentLength {
			return io.ErrUnexpectedEOF
		}
		return uw.Flush()
	}
	buf := bodyBufs.Get().(*[chunkHead + bodyChunk + 2]byte)
	defer bodyBufs.Put(buf)
	var sent int64
	for {
		n, rerr := body.Read(buf[:bodyChunk])
		if n > 0 {
			sent += int64(n)
			if _, err := uw.Write(buf[:n]); err != nil {
				return err
			}
			if err := uw.Flush(); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return errBody
		}
	}
	if sent != req.ContentLength {
		return errBody
	}
	return nil
}

// copyChunked copies body to w as chunks, one per read of body, the size
// line in the buffer's headroom and CRLF after the data, so each chunk is
// one write; flush sends each chunk at once (a request body, streamed).
// The last chunk ("0") is left to the caller, who writes trailers after it.
func copyChunked(w *bufio.Writer, body io.Reader, flush bool) error {
	buf := bodyBufs.Get().(*[chunkHead + bodyChunk + 2]byte)
	defer bodyBufs.Put(buf)
	for {
		n, rerr := body.Read(buf[chunkHead : chunkHead+bodyChunk])
		if n > 0 {
			var hex [chunkHead]byte
			h := strconv.AppendInt(hex[:0], int64(n), 16)
			h = append(h, '\r', '\n')
			start := chunkHead - len(h)
			copy(buf[start:], h)
			buf[chunkHead+n], buf[chunkHead+n+1] = '\r', '\n'
			if _, err := w.Write(buf[start : chunkHead+n+2]); err != nil {
				return err
			}
			if flush {
				if err := w.Flush(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return &bodyError{rerr}
		}
	}
}

// writeTrailerField announces trailer's keys (sorted) in a Trailer field
// and returns them: the fields writeTrailers may write.
func writeTrailerField(w *bufio.Writer, trailer http.Header) []string {
	if len(trailer) == 0 {
		return nil
	}
	keys := make([]string, 0, len(trailer))
	for k := range trailer {
		if httpguts.ValidHeaderFieldName(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	w.WriteString("Trailer: " + strings.Join(keys, ",") + "\r\n")
	return keys
}

// writeTrailers ends a chunked body: the last chunk, the trailer's fields
// that the head declared (writeTrailerField's keys) and that came, the
// empty line. net/http's parser puts every field of the trailer section in
// the declared map: an undeclared one (a method override, a header
// parameter) is not forwarded, since some upstreams can merge trailers into
// the header fields the guard checked before the body. THREATS P2, tested
// by TestGuardUndeclaredTrailer.
func writeTrailers(w *bufio.Writer, trailer http.Header, declared []string) {
	w.WriteString("0\r\n")
	for _, k := range declared {
		for _, v := range trailer[k] {
			writeField(w, k, v)
		}
	}
	w.WriteString("\r\n")
}

// writeFields writes h's fields but the framing ones, in map order (the
// order of one field's values is kept, which is the order that matters).
func writeFields(w *bufio.Writer, h http.Header) {
	for k, vs := range h {
		if framingField(k) {
			continue
		}
		for _, v := range vs {
			writeField(w, k, v)
		}
	}
}

// writeField writes one field. net/http's parser refused names that are
// not tokens and values with control bytes; a value set by the guard's
// own code never has one either, but a CR or LF is blanked as net/http's
// Header.Write does, so no field can ever end early.
func writeField(w *bufio.Writer, k, v string) {
	if !httpguts.ValidHeaderFieldName(k) {
		return
	}
	w.WriteString(k)
	w.WriteString(": ")
	// Two byte searches: ContainsAny's set test costs ~10 times more on
	// every field of every request and answer (callgrind).
	if strings.IndexByte(v, '\r') >= 0 || strings.IndexByte(v, '\n') >= 0 {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	w.WriteString(strings.TrimSpace(v))
	w.WriteString("\r\n")
}

// writeResponse passes upstream's answer to req on to the client through
// bw and flushes it. An HTTP/1.1 answer with a body of known length or a
// chunked one (the common shapes) is written by the guard: status line,
// the parser-checked fields, its own framing, the body copied into bw (one
// flush per response, or per bw's size for a longer body); any other
// shape (HTTP/1.0, a HEAD answer, a status without a body, a body up to
// the connection's close) goes through net/http's Response.Write, whose
// rules for them the guard keeps.
func writeResponse(bw *bufio.Writer, resp *http.Response) error {
	chunked := len(resp.TransferEncoding) == 1 && resp.TransferEncoding[0] == "chunked"
	fast := resp.ProtoMajor == 1 && resp.ProtoMinor == 1 && resp.StatusCode >= 200 &&
		resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified &&
		(resp.Request == nil || resp.Request.Method != http.MethodHead) &&
		(chunked && resp.ContentLength < 0 || len(resp.TransferEncoding) == 0 && resp.ContentLength >= 0)
	if !fast {
		if err := resp.Write(bw); err != nil {
			return err
		}
		return bw.Flush()
	}
	// The reason phrase is upstream's, unless it is empty or holds a
	// control byte (a bare CR would end the line for some clients).
	text, ok := reasonPhrase(resp.Status, resp.StatusCode)
	if !ok || strings.ContainsFunc(text, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
		text = ""
	}
	if text == "" {
		text = http.StatusText(resp.StatusCode)
	}
	if text == "" {
		text = "status code " + strconv.Itoa(resp.StatusCode)
	}
	bw.WriteString("HTTP/1.1 ")
	// Appended in the writer's own space: strconv.Itoa allocates for
	// every code from 100 up.
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(resp.StatusCode), 10))
	bw.WriteByte(' ')
	bw.WriteString(text)
	bw.WriteString("\r\n")
	writeFields(bw, resp.Header)
	if resp.Close && !httpguts.HeaderValuesContainsToken(resp.Header["Connection"], "close") {
		bw.WriteString("Connection: close\r\n")
	}
	trailer := resp.Trailer
	var declared []string
	body := resp.Body
	if chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		declared = writeTrailerField(bw, trailer)
	} else {
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), resp.ContentLength, 10))
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	if !chunked {
		if body != nil && body != http.NoBody {
			n, err := io.Copy(bw, body) // into bw's buffer: no buffer of its own
			if err != nil {
				return err
			}
			if n != resp.ContentLength {
				return io.ErrUnexpectedEOF
			}
		}
		return bw.Flush()
	}
	if err := copyChunked(bw, body, false); err != nil {
		return err
	}
	writeTrailers(bw, trailer, declared)
	return bw.Flush()
}

// reasonPhrase is what follows status's code and space, when status (a
// Response's Status) starts with code in decimal and a space: what
// strings.CutPrefix(status, strconv.Itoa(code)+" ") gives, without the
// string it builds.
func reasonPhrase(status string, code int) (string, bool) {
	if code < 0 {
		return strings.CutPrefix(status, strconv.Itoa(code)+" ") // not from ReadResponse
	}
	n := 0
	for c := code; ; c /= 10 {
		n++
		if c < 10 {
			break
		}
	}
	if len(status) <= n || status[n] != ' ' {
		return "", false
	}
	v := 0
	for _, c := range []byte(status[:n]) {
		if c < '0' || c > '9' {
			return "", false
		}
		v = v*10 + int(c-'0')
	}
	if v != code {
		return "", false
	}
	return status[n+1:], true
}

// WriteRequest writes req to w as the guard forwards it upstream (the
// head from the parsed request, the guard's framing, the body streamed)
// and flushes w. It is the round trip FuzzRequestStream checks: what it
// writes parses again to the same method, path, query and body.
func WriteRequest(w *bufio.Writer, req *http.Request) error { return writeRequest(w, req, "", nil) }
