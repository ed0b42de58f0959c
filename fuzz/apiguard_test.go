package fuzz

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/dyad-tunnel/dyad/apiguard"
)

// FuzzRequestStream: the API guard's request parser on arbitrary bytes
// yields a sequence of requests ending in io.EOF, a *RequestError or a
// body error; never a panic or a hang, and never more buffered than
// MaxHeaderBytes (THREATS P5, P8). Each request with an origin-form target
// (the guard answers 400 to any other) re-serialised (what the
// guard forwards) parses again to the same method, path, query and body.
func FuzzRequestStream(f *testing.F) {
	for _, s := range []string{
		"GET /v1/payments/1 HTTP/1.1\r\nHost: p\r\n\r\n",
		"POST /v1/payments HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: p\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
		"GET / HTTP/1.1\nHost: p\n\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"\x16\x03\x01\x00",
		"GET / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := apiguard.NewRequestReader(bytes.NewReader(data))
		for i := 0; ; i++ {
			if i > len(data) {
				t.Fatalf("%d requests from %d bytes", i, len(data))
			}
			req, err := rr.Next()
			if rr.Buffered() > apiguard.MaxHeaderBytes {
				t.Fatalf("%d bytes buffered", rr.Buffered())
			}
			var re *apiguard.RequestError
			if err == io.EOF || errors.As(err, &re) {
				return
			}
			if err != nil {
				t.Fatalf("error %v is neither EOF nor a RequestError", err)
			}
			body, err := io.ReadAll(req.Body)
			if err != nil {
				return // a truncated or malformed body ends the stream
			}
			if req.URL.IsAbs() || req.URL.Opaque != "" || !strings.HasPrefix(req.URL.Path, "/") {
				continue // the guard answers 400 to a target that is not an origin-form path and forwards nothing
			}
			req.Body = io.NopCloser(bytes.NewReader(body))
			req.ContentLength = int64(len(body))
			req.TransferEncoding = nil
			var out bytes.Buffer
			if err := apiguard.WriteRequest(bufio.NewWriter(&out), req); err != nil {
				continue // the guard refuses to write it (a target not a path, a Host it cannot send): forwards nothing
			}
			again, err := apiguard.NewRequestReader(&out).Next()
			if err != nil {
				t.Fatalf("re-serialised request does not parse: %v\n%q", err, out.Bytes())
			}
			b2, _ := io.ReadAll(again.Body)
			// The target is written as URL.RequestURI() (/" becomes /%22):
			// the decoded path, the one the guard routed, must stay.
			if again.Method != req.Method || again.URL.Path != req.URL.Path || again.URL.RawQuery != req.URL.RawQuery || !bytes.Equal(b2, body) {
				t.Fatalf("round trip changed the request: %s %s %q → %s %s %q", req.Method, req.RequestURI, body, again.Method, again.RequestURI, b2)
			}
		}
	})
}

// FuzzSpec: any file given as an API spec is loaded or refused with an
// error; never a panic (THREATS P8).
func FuzzSpec(f *testing.F) {
	for _, name := range []string{"../apiguard/testdata/payments.yaml", "../apiguard/testdata/minimal31.yaml"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"openapi":"3.1.0","info":{"title":"x","version":"1"},"paths":{"/a/{b}":{"get":{"parameters":[{"name":"b","in":"path","required":true,"schema":{"$ref":"#/components/schemas/x"}}],"responses":{"200":{"description":"ok"}}}}},"components":{"schemas":{"x":{"$ref":"#/components/schemas/x"}}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := apiguard.ParseSpec("fuzz.yaml", data)
		if err == nil {
			if len(s.Operations) == 0 || len(s.SHA256) != 64 {
				t.Fatalf("loaded a spec with %d operations", len(s.Operations))
			}
			for _, o := range s.Operations {
				if s.Operation(o.Key) != o {
					t.Fatalf("operation %q not found by its key", o.Key)
				}
			}
		}
	})
}
