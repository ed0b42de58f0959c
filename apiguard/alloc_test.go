package apiguard

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/dyad-tunnel/dyad/tunnel"
)

// fixedUpstream is an upstream that takes whatever is written and answers
// from resp: the guard's request loop without sockets.
type fixedUpstream struct{ resp bytes.Reader }

func (u *fixedUpstream) Read(b []byte) (int, error)  { return u.resp.Read(b) }
func (u *fixedUpstream) Write(b []byte) (int, error) { return len(b), nil }
func (u *fixedUpstream) CloseWrite() error           { return nil }
func (u *fixedUpstream) Close() error                { return nil }
func (u *fixedUpstream) SetLinger(int) error         { return nil }

// echoResponse is rr-api's answer: 1 KiB of JSON.
var echoResponse = []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n\r\n" +
	`{"data":"` + strings.Repeat("x", 1024-11) + `"}`)

// echoRig runs rr-api requests through one guarded stream's loop
// (conn.one), without sockets, pipes or the tunnel: up answers each with
// echoResponse from resp.
type echoRig struct {
	c       *conn
	up      tunnel.Conn
	resp    *bytes.Reader
	in      bytes.Reader
	br, ubr *bufio.Reader
}

func newEchoRig(tb testing.TB, up tunnel.Conn, resp *bytes.Reader, out io.Writer) *echoRig {
	r := &echoRig{c: &conn{g: NewGuard(benchPolicy(tb), nil), peer: "bench", up: up, out: out}, up: up, resp: resp}
	r.br = bufio.NewReaderSize(&r.in, MaxHeaderBytes)
	r.ubr = bufio.NewReaderSize(up, 4096)
	return r
}

// one sends echoRequest through the loop; false if it ended the stream.
func (r *echoRig) one() bool {
	r.in.Reset(echoRequest)
	r.br.Reset(&r.in)
	r.resp.Reset(echoResponse)
	r.ubr.Reset(r.up)
	return r.c.one(r.br, r.ubr, false)
}

// TestGuardRequestAllocs bounds what one rr-api request costs the guard in
// allocations: parsing it (net/http), validating its 1 KiB JSON body
// (kin-openapi's schema check and the guard's decoder), forwarding it and
// passing the answer back. Issue 20's first CPU round took it from 61 to
// 41 (the JSON decoder's Token walk 15, error targets and length buffers
// that escaped on every request 4, the buffered body's own allocation 1);
// the second from 41 to 29 (checkJSONBody: kin-openapi's ValidateRequestBody
// read the held body whole again, wrapped it and built its options per
// request, 11; the status code's string in writeResponse, 1); the fourth
// to 28 (checkJSONBody decodes the held body where it is, without a
// string copy of it: 1 KiB fewer). What is left is net/http's and
// kin-openapi's but for the JSON values (README, "API guard", Cost).
func TestGuardRequestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates, and sync.Pool drops at random")
	}
	up := &fixedUpstream{}
	r := newEchoRig(t, up, &up.resp, io.Discard)
	n := testing.AllocsPerRun(200, func() {
		if !r.one() {
			t.Fatal("the request ended the stream")
		}
	})
	const bound = 28
	t.Logf("%v allocations per request", n)
	if n > bound {
		t.Errorf("one rr-api request allocated %v times in the guard, want at most %d", n, bound)
	}
	// A pinned Host (api.host) is written as configured: no allocation
	// more than the partner's (TestGuardPinnedHost).
	p := benchPolicy(t)
	p.Host = "payments.bank-b.internal:8443"
	r.c.g.SetPolicy(p)
	pinned := testing.AllocsPerRun(200, func() {
		if !r.one() {
			t.Fatal("the request ended the stream")
		}
	})
	if pinned > n {
		t.Errorf("with api.host, one rr-api request allocated %v times, without %v", pinned, n)
	}
}

// BenchmarkGuardRequest is the guard's own CPU for one rr-api request,
// without sockets, pipes or the tunnel: TestGuardRequestAllocs's loop.
func BenchmarkGuardRequest(b *testing.B) {
	up := &fixedUpstream{}
	r := newEchoRig(b, up, &up.resp, io.Discard)
	b.ReportAllocs()
	for b.Loop() {
		if !r.one() {
			b.Fatal("the request ended the stream")
		}
	}
}

// TestTokenChar: the table is RFC 9110's tchar, byte for byte.
func TestTokenChar(t *testing.T) {
	const tchar = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	for c := range 256 {
		if got, want := tokenChar(byte(c)), strings.IndexByte(tchar, byte(c)) >= 0; got != want {
			t.Errorf("tokenChar(%#x) = %v, want %v", c, got, want)
		}
	}
}

// probeUpstream is fixedUpstream calling onRead before each read, on the
// guard's goroutine: what the guard holds while it waits for upstream.
type probeUpstream struct {
	fixedUpstream
	onRead func()
}

func (u *probeUpstream) Read(b []byte) (int, error) {
	u.onRead()
	return u.fixedUpstream.Read(b)
}

// TestGuardNoWriterWhileUpstreamAnswers: while upstream answers, which
// may take long, the stream holds no client writer (32 KiB); it takes one
// for the answer and gives it back after, and the answer is whole.
func TestGuardNoWriterWhileUpstreamAnswers(t *testing.T) {
	up := &probeUpstream{}
	var out bytes.Buffer
	r := newEchoRig(t, up, &up.resp, &out)
	c := r.c
	reads, held := 0, 0
	up.onRead = func() {
		reads++
		if c.bw != nil {
			held++
		}
	}
	for range 3 {
		if !r.one() {
			t.Fatal("the request ended the stream")
		}
		if c.bw != nil {
			t.Fatal("the client writer is held after the answer")
		}
	}
	if reads == 0 || held != 0 {
		t.Errorf("the client writer was held during %d of %d reads from upstream, want none", held, reads)
	}
	if n := strings.Count(out.String(), "HTTP/1.1 200 OK\r\n"); n != 3 || !strings.HasSuffix(out.String(), `"}`) {
		t.Errorf("the client got %d answers, want 3 whole ones: %q", n, out.String()[max(0, out.Len()-40):])
	}
}

// TestInventoryDecisions: the decisions are counted exactly, the
// forwarded ones (by upstream's status class, counted apart from the
// others' keys) with the rest, and the stream's cached peer entry is the
// inventory's own.
func TestInventoryDecisions(t *testing.T) {
	up := &fixedUpstream{}
	r := newEchoRig(t, up, &up.resp, io.Discard)
	for range 5 {
		if !r.one() {
			t.Fatal("the request ended the stream")
		}
	}
	inv := r.c.g.inv
	op := r.c.g.Policy().Spec.Operation("echo")
	inv.record("bench", op, 503, OutcomeForwarded, "")
	inv.record("bench", op, 403, OutcomeDenied, "not_allowed")
	inv.record("other", op, 502, OutcomeFailed, "upstream_read")
	got := fmt.Sprint(inv.Decisions())
	want := "[{bench {denied 403 not_allowed} 1} {bench {forwarded 2xx } 5} {bench {forwarded 5xx } 1} {other {failed 502 upstream_read} 1}]"
	if got != want {
		t.Errorf("decisions %s, want %s", got, want)
	}
	s := inv.Snapshot()
	if len(s) != 2 || len(s[0].Operations) != 1 || s[0].Operations[0].Statuses["2xx"] != 5 || s[0].Operations[0].Statuses["5xx"] != 1 ||
		s[0].Operations[0].Statuses["4xx"] != 1 {
		t.Errorf("inventory %+v", s)
	}
}
