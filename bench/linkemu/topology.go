package linkemu

import "net/netip"

// Topology is two network namespaces joined by the emulated link: the
// importing side (and the load client) in ImportNS, the exporting side
// (and the target server) in ExportNS, each with one TUN device addressed
// in a /30 of the private test range. The addresses exist only inside the
// two namespaces the bench makes, so no packet can leave the machine.
type Topology struct {
	ImportNS, ExportNS   string
	ImportDev, ExportDev string // TUN device names, at most 15 bytes
	ImportAddr           netip.Addr
	ExportAddr           netip.Addr
}

// NewTopology names a topology after prefix (at most 12 bytes): namespaces
// prefix-imp and prefix-exp, devices prefix-i and prefix-e, addresses
// 10.99.0.1 (importing) and 10.99.0.2 (exporting).
func NewTopology(prefix string) Topology {
	return Topology{ImportNS: prefix + "-imp", ExportNS: prefix + "-exp", ImportDev: prefix + "-i", ExportDev: prefix + "-e",
		ImportAddr: netip.AddrFrom4([4]byte{10, 99, 0, 1}), ExportAddr: netip.AddrFrom4([4]byte{10, 99, 0, 2})}
}

// Command returns argv prefixed to run in namespace ns (`ip netns exec`,
// which execs in place: the process ID is the command's). An empty ns
// returns argv as it is.
func Command(ns string, argv ...string) []string {
	if ns == "" {
		return argv
	}
	return append([]string{"ip", "netns", "exec", ns}, argv...)
}

// DeviceDrops are one TUN device's drop counters (the kernel's
// tx_dropped and rx_dropped): packets lost at the device, outside the
// emulator and its model.
type DeviceDrops struct {
	TX uint64 `json:"tx_dropped"`
	RX uint64 `json:"rx_dropped"`
}

// Sub returns d - o, counter by counter: the drops between two reads.
func (d DeviceDrops) Sub(o DeviceDrops) DeviceDrops {
	return DeviceDrops{TX: d.TX - o.TX, RX: d.RX - o.RX}
}

// Total is TX + RX.
func (d DeviceDrops) Total() uint64 { return d.TX + d.RX }
