package daemontest

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestFreePortsDistinct: no two calls hand out the same port, across UDP and
// TCP. On main before ports.go, 3,000 calls repeated ports (the kernel offers a
// just-closed ephemeral port again), which is how one site's admin listener
// took another's forward port in CI.
func TestFreePortsDistinct(t *testing.T) {
	seen := map[string]int{}
	for i := range 3000 {
		free := FreeTCP
		if i%2 == 1 {
			free = FreeUDP
		}
		addr, err := free()
		if err != nil {
			t.Fatal(err)
		}
		if j, ok := seen[addr]; ok {
			t.Fatalf("call %d returned %s, as call %d did", i, addr, j)
		}
		seen[addr] = i
	}
}

// TestFreePortsOutsideEphemeralRange: a handed-out port is never one the
// kernel picks by itself for another process's connect or port-0 bind,
// which took a fallback daemon's TCP port in CI ("tunnel.tcp_listen
// 127.0.0.1:45196: bind: address already in use"). On main every port
// came from port 0, inside the ephemeral range: "127.0.0.1:60607 is in
// the kernel's ephemeral range 32768-60999".
func TestFreePortsOutsideEphemeralRange(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skipf("no ephemeral range to compare with: %v", err)
	}
	f := strings.Fields(string(b))
	lo, _ := strconv.Atoi(f[0])
	hi, _ := strconv.Atoi(f[1])
	for _, free := range []func() (string, error){FreeUDP, FreeTCP, FreeUDPTCP} {
		for range 100 {
			addr, err := free()
			if err != nil {
				t.Fatal(err)
			}
			_, ps, _ := net.SplitHostPort(addr)
			p, _ := strconv.Atoi(ps)
			if p >= lo && p <= hi {
				t.Fatalf("%s is in the kernel's ephemeral range %d-%d", addr, lo, hi)
			}
		}
	}
}
