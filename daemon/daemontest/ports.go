package daemontest

import (
	"fmt"
	"net"
	"sync"
)

// handedOut holds every port FreeUDP and FreeTCP returned in this process.
// The kernel hands a just-closed ephemeral port out again, so two calls could
// return the same port and one site's admin listener would take another's
// forward port (TestLimitThrottle failed so in CI: "bind: address already in
// use"). UDP and TCP share the set because a daemon may listen on both with
// one port.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreeUDP returns a loopback UDP address that was free a moment ago and that
// no earlier FreeUDP or FreeTCP call of this process returned.
func FreeUDP() (string, error) {
	return freePort(func() (net.Addr, func() error, error) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		return pc.LocalAddr(), pc.Close, nil
	})
}

// FreeTCP returns a loopback TCP address that was free a moment ago and that
// no earlier FreeUDP or FreeTCP call of this process returned.
func FreeTCP() (string, error) {
	return freePort(func() (net.Addr, func() error, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		return ln.Addr(), ln.Close, nil
	})
}

// FreeUDPTCP returns a loopback port that was free a moment ago for both
// UDP and TCP (a daemon with tunnel.tcp_listen: true takes both) and that no
// earlier FreeUDP, FreeTCP or FreeUDPTCP call of this process returned.
func FreeUDPTCP() (string, error) {
	return freePort(func() (net.Addr, func() error, error) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			// Taken on TCP: keep the UDP socket until freePort returns so
			// the kernel offers another port next.
			return &net.UDPAddr{}, pc.Close, nil
		}
		return pc.LocalAddr(), func() error { ln.Close(); return pc.Close() }, nil
	})
}

// freePort binds with listen until the kernel picks a port not handed out
// before. The sockets of refused picks stay open until the end, so the
// kernel cannot offer the same port twice in one call.
func freePort(listen func() (net.Addr, func() error, error)) (string, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	var closers []func() error
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for range 1000 {
		addr, closeFn, err := listen()
		if err != nil {
			return "", err
		}
		closers = append(closers, closeFn)
		port := portOf(addr)
		if port != 0 && !handedOut.ports[port] {
			handedOut.ports[port] = true
			return addr.String(), nil
		}
	}
	return "", fmt.Errorf("no loopback port free that this process did not hand out already (%d handed out)", len(handedOut.ports))
}

func portOf(a net.Addr) int {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.Port
	case *net.TCPAddr:
		return a.Port
	}
	return 0
}
