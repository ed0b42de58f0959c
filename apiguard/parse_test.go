package apiguard

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// headerBlocks are header blocks checkHeader must decide: accepted shapes
// and each refused one, alone and mixed, so that a block wrong in two
// places shows which reason wins.
var headerBlocks = []string{
	"POST /v1/echo HTTP/1.1\r\nHost: target\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n\r\n",
	"GET / HTTP/1.1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n",
	"POST / HTTP/1.1\r\ncontent-length:  7 \r\nX-A: \t\r\n\r\n",
	"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
	"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
	"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
	"POST / HTTP/1.1\r\nContent-Length: 1234567890123456789\r\n\r\n",
	"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
	"GET / HTTP/1.1\r\nX-A: 1\r\n  Transfer-Encoding: chunked\r\n\r\n",
	"GET / HTTP/1.1\r\n\tX-A: 1\r\n\r\n",
	"GET / HTTP/1.1\r\n: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nX-A 1\r\n\r\n",
	"GET / HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n",
	"GET / HTTP/1.1\r\nX-A: 1\nX-B: 2\r\n\r\n",
	"GET / HTTP/1.1\r\nX-A: 1\n\rX-B: 2\r\n\r\n",
	"GET /\r HTTP/1.1\r\nX-A: 1\r\n\r\n",
	"GET / HTTP/1.0\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: p\r\n\r\n",
	"GET / HTTP/1.1\r\nX-A\r\n  : 1\r\nContent-Length: x\r\n\r\n",
	"GET / HTTP/1.1\r\nContent-Length: 1\r\nX-A: 1\rContent-Length: 2\r\n\r\n",
	"GET / HTTP/1.1\r\nX(A): 1\r\nTransfer-Encoding: x\r\n\r\n",
}

// TestCheckHeaderFast: checkHeader gives checkHeaderStrict's answer (the
// line-by-line check it replaced on the request path) for every block of
// headerBlocks and for 20,000 mutations of them (bytes replaced by CR,
// LF, space, tab, colon, a letter or a digit; bytes inserted or cut), so
// its faster pass accepts exactly what the strict one does and refuses
// with the same reason.
func TestCheckHeaderFast(t *testing.T) {
	check := func(b []byte) {
		t.Helper()
		if !bytes.HasSuffix(b, []byte("\r\n\r\n")) {
			return // headerBlock hands over nothing else
		}
		if got, want := checkHeader(b), checkHeaderStrict(b); got != want {
			t.Fatalf("checkHeader(%q) = %q, checkHeaderStrict %q", b, got, want)
		}
	}
	for _, s := range headerBlocks {
		check([]byte(s))
	}
	rng := rand.New(rand.NewPCG(20, 4))
	const alphabet = "\r\n \t:aZ0-,"
	for range 20000 {
		b := []byte(headerBlocks[rng.IntN(len(headerBlocks))])
		body := len(b) - 4
		for range 1 + rng.IntN(3) {
			i := rng.IntN(body)
			c := alphabet[rng.IntN(len(alphabet))]
			switch rng.IntN(3) {
			case 0:
				b[i] = c
			case 1:
				b = append(b[:i], append([]byte{c}, b[i:]...)...)
				body++
			default:
				b = append(b[:i], b[i+1:]...)
				body--
			}
		}
		check(b)
	}
}

// BenchmarkCheckHeader is the smuggling check of rr-api's header block.
func BenchmarkCheckHeader(b *testing.B) {
	blk := echoRequest[:bytes.Index(echoRequest, []byte("\r\n\r\n"))+4]
	for b.Loop() {
		if checkHeader(blk) != "" {
			b.Fatal("refused")
		}
	}
}

// FuzzCheckHeader: for any header block (what headerBlock hands over ends
// in CRLF CRLF), checkHeader gives checkHeaderStrict's answer.
func FuzzCheckHeader(f *testing.F) {
	for _, s := range headerBlocks {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !bytes.HasSuffix(b, []byte("\r\n\r\n")) {
			b = append(b, "\r\n\r\n"...)
		}
		if got, want := checkHeader(b), checkHeaderStrict(b); got != want {
			t.Fatalf("checkHeader(%q) = %q, checkHeaderStrict %q", b, got, want)
		}
	})
}
