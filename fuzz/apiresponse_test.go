package fuzz

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/apiguard"
)

// FuzzResponseCheck: the importing side's response checker
// (apiguard.CheckedConn, forwards[].api) on arbitrary bytes from the
// partner, paired with three pipelined requests: it ends, with every
// response counted once at most, never a panic or a hang (THREATS P8),
// whether it blocks or reports.
func FuzzResponseCheck(f *testing.F) {
	spec, err := apiguard.LoadSpec("../apiguard/testdata/partner-responses.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 37\r\n\r\n{\"id\":1,\"amount\":5,\"status\":\"settled\"}",
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"id\"\r\n0\r\n\r\nHTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/problem+json\r\nContent-Length: 2\r\n\r\n{}",
		"HTTP/1.0 200 OK\r\n\r\nuntil the end",
		"SSH-2.0-x\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", // cut short: the client still gets its end
		"HTTP/1.1 101 Switching Protocols\r\n\r\n\x00\x01",
		"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n",
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, block bool) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Skip(err)
		}
		defer ln.Close()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Skip(err)
		}
		defer client.Close()
		local, err := ln.Accept()
		if err != nil {
			t.Skip(err)
		}
		stats := &apiguard.ResponseStats{}
		cc := apiguard.NewCheckedConn(local.(*net.TCPConn), &apiguard.ResponsePolicy{Peer: "p", Service: "s", Spec: spec, Block: block, MaxBody: 1 << 10}, stats, nil)
		defer cc.Close()
		deadline := time.Now().Add(5 * time.Second)
		client.SetDeadline(deadline)
		go io.Copy(io.Discard, struct{ io.Reader }{cc}) // the pump's client → tunnel side
		io.WriteString(client, "GET /v1/payments/1 HTTP/1.1\r\nHost: p\r\n\r\nHEAD /v1/payments/2 HTTP/1.1\r\nHost: p\r\n\r\nGET /v1/health HTTP/1.1\r\nHost: p\r\n\r\n")
		done := make(chan struct{})
		go func() { // the pump's tunnel → client side
			defer close(done)
			cc.Write(data)
			cc.CloseWrite()
		}()
		if _, err := io.Copy(io.Discard, client); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("the client got no end (FIN or reset) for %q", data)
			}
		}
		select {
		case <-done:
		case <-time.After(time.Until(deadline)):
			t.Fatalf("the checker hung on %q", data)
		}
		var total uint64
		for k, v := range stats.Snapshot() {
			if k != "interim_dropped" { // interim responses, not responses: any number may precede one
				total += v
			}
		}
		if total > 4 {
			t.Fatalf("%d responses counted for three requests: %v", total, stats.Snapshot())
		}
	})
}
