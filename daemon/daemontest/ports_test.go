package daemontest

import "testing"

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
