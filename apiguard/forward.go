package apiguard

import (
	"bufio"
	"errors"
	"io"
	"net/http"
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
// has room for a chunk's size line before them and its CRLF after.
const bodyChunk = 64 << 10

// chunkHead is the room before a chunk's data: its size in hex and CRLF.
const chunkHead = 16

// bodyBufs holds the buffers bodies stream through, taken per body (an
// idle stream holds none); pointers, so Put does not allocate.
var bodyBufs = sync.Pool{New: func() any { return new([chunkHead + bodyChunk + 2]byte) }}

// errHost is a Host field net/http would refuse to write either.
var errHost = errors.New("invalid Host header")

// framingFields are the fields the guard writes itself (Host) or replaces
// with its own framing (Content-Length, Transfer-Encoding, Trailer).
func framingField(k string) bool {
	switch k {
	case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
		return true
	}
	return false
}

// writeRequest forwards req to uw and flushes it: the head, then the body
// streamed through a pooled buffer, one write upstream per read of the
// client's body (chunked bodies are re-chunked, one chunk per read). The
// head follows net/http's Request.Write: "Content-Length: 0" for a bodiless
// POST, PUT or PATCH, declared trailers after a chunked body.
func writeRequest(uw *bufio.Writer, req *http.Request) error {
	host := req.Host
	if host == "" && req.URL != nil {
		host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return errHost
	}
	uw.WriteString(req.Method)
	uw.WriteByte(' ')
	uw.WriteString(req.URL.RequestURI())
	uw.WriteString(" HTTP/1.1\r\nHost: ")
	uw.WriteString(host)
	uw.WriteString("\r\n")
	writeFields(uw, req.Header)
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	chunked := len(req.TransferEncoding) == 1 && req.TransferEncoding[0] == "chunked"
	trailer := req.Trailer // declared keys now, values once the body ended
	switch {
	case chunked && body != nil:
		uw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(trailer) > 0 {
			keys := make([]string, 0, len(trailer))
			for k := range trailer {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			uw.WriteString("Trailer: " + strings.Join(keys, ",") + "\r\n")
		}
	case body != nil && req.ContentLength > 0:
		uw.WriteString("Content-Length: ")
		uw.WriteString(strconv.FormatInt(req.ContentLength, 10))
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
	buf := bodyBufs.Get().(*[chunkHead + bodyChunk + 2]byte)
	defer bodyBufs.Put(buf)
	var sent int64
	for {
		n, rerr := body.Read(buf[chunkHead : chunkHead+bodyChunk])
		if n > 0 {
			out := buf[chunkHead : chunkHead+n]
			if chunked {
				// The size line goes in the headroom before the data and
				// CRLF after it: one write for the whole chunk.
				var hex [chunkHead]byte
				h := strconv.AppendInt(hex[:0], int64(n), 16)
				h = append(h, '\r', '\n')
				start := chunkHead - len(h)
				copy(buf[start:], h)
				buf[chunkHead+n], buf[chunkHead+n+1] = '\r', '\n'
				out = buf[start : chunkHead+n+2]
			}
			sent += int64(n)
			if _, err := uw.Write(out); err != nil {
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
			return rerr
		}
	}
	if !chunked {
		if sent != req.ContentLength {
			return io.ErrUnexpectedEOF
		}
		return nil
	}
	uw.WriteString("0\r\n")
	for k, vs := range trailer {
		for _, v := range vs {
			writeField(uw, k, v)
		}
	}
	uw.WriteString("\r\n")
	return uw.Flush()
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
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	w.WriteString(strings.TrimSpace(v))
	w.WriteString("\r\n")
}
