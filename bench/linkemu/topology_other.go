//go:build !linux

package linkemu

import (
	"errors"
	"net"
	"os"
	"time"
)

// errNotLinux is every answer here: network namespaces and TUN devices as
// the bench uses them are Linux's.
var errNotLinux = errors.New("linkemu: network namespaces and TUN devices need Linux")

// Check says why this machine cannot run the topology: it is not Linux.
func Check() error { return errNotLinux }

// Setup fails: see Check.
func (t Topology) Setup() error { return errNotLinux }

// Teardown has nothing to delete.
func (t Topology) Teardown() error { return nil }

// RemoveStale has nothing to delete.
func RemoveStale(base string) error { return nil }

// Drops fails: see Check.
func (t Topology) Drops() (imp, exp DeviceDrops, err error) { return imp, exp, errNotLinux }

// Attach fails: see Check.
func (t Topology) Attach() (imp, exp *os.File, err error) { return nil, nil, errNotLinux }

// Do runs f as it is for the empty namespace, and fails for any other.
func Do(ns string, f func() error) error {
	if ns == "" {
		return f()
	}
	return errNotLinux
}

// DialTimeout connects to addr; only the empty namespace works here.
func DialTimeout(ns, network, addr string, timeout time.Duration) (net.Conn, error) {
	if ns != "" {
		return nil, errNotLinux
	}
	return net.DialTimeout(network, addr, timeout)
}

// ListenPacket opens a packet socket; only the empty namespace works here.
func ListenPacket(ns, network, addr string) (net.PacketConn, error) {
	if ns != "" {
		return nil, errNotLinux
	}
	return net.ListenPacket(network, addr)
}

// ReadFile reads a file; only the empty namespace works here.
func ReadFile(ns, path string) ([]byte, error) {
	if ns != "" {
		return nil, errNotLinux
	}
	return os.ReadFile(path)
}
