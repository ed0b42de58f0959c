package tunnel

import (
	"net"
	"os"
	"testing"
)

// The tunnel tests run over both transports: a test body written once,
// run as <Test>/quic and <Test>/tcp (not copied). bothTransports runs the
// representative subset in every `make test`; matrixTransports runs its
// body over TCP too only when DYAD_TEST_TRANSPORTS=all (`make
// test-transports`), so CI stays short.

// bothTransports runs body once per transport.
func bothTransports(t *testing.T, body func(t *testing.T)) {
	t.Helper()
	for _, tr := range []string{TransportQUIC, TransportTCP} {
		t.Run(tr, func(t *testing.T) {
			useTransport(t, tr)
			body(t)
		})
	}
}

// matrixTransports runs body over QUIC, and over TCP too in the full
// matrix (DYAD_TEST_TRANSPORTS=all).
func matrixTransports(t *testing.T, body func(t *testing.T)) {
	t.Helper()
	if os.Getenv("DYAD_TEST_TRANSPORTS") == "all" {
		bothTransports(t, body)
		return
	}
	body(t)
}

// useTransport makes peers without a transport of their own dial tr for
// the rest of the test, and nodes started in it listen on TCP too (on the
// QUIC port's number) when tr is TCP.
func useTransport(t *testing.T, tr string) {
	old := defaultTransport
	defaultTransport = tr
	t.Cleanup(func() { defaultTransport = old })
}

// testSockets opens a node's UDP socket on 127.0.0.1 and, when the test
// runs over TCP (useTransport), a TCP listener on the same port number.
func testSockets(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	if defaultTransport != TransportTCP {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return pc, nil
	}
	for range 20 { // another process may hold the UDP port of a free TCP one
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			return pc, ln
		}
		ln.Close()
	}
	t.Fatal("no port free for both UDP and TCP")
	return nil, nil
}
