package linkemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Check says why this machine cannot run the topology (not root, no TUN
// device, no `ip`), or nil.
func Check() error {
	if os.Geteuid() != 0 {
		return errors.New("not root: network namespaces and TUN devices need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("no `ip` command (iproute2): %w", err)
	}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("no TUN device: %w", err)
	}
	f.Close()
	return nil
}

// Setup makes both namespaces with their loopback up. It is idempotent: a
// namespace of the same name left by a crashed run is deleted first.
func (t Topology) Setup() error {
	for _, ns := range []string{t.ImportNS, t.ExportNS} {
		if err := deleteNS(ns); err != nil {
			return err
		}
		if err := ip("netns", "add", ns); err != nil {
			return err
		}
		if err := ip("-n", ns, "link", "set", "lo", "up"); err != nil {
			t.Teardown()
			return err
		}
	}
	return nil
}

// Teardown deletes both namespaces (and with them any device still in
// them); namespaces that do not exist are not an error.
func (t Topology) Teardown() error {
	return errors.Join(deleteNS(t.ImportNS), deleteNS(t.ExportNS))
}

// RemoveStale deletes the namespaces of topologies named base followed by
// the process ID of a process that no longer exists (NewTopology(base +
// pid)): what a crashed run left behind, and never a running one's.
func RemoveStale(base string) error {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil // no namespace at all
	}
	var errs []error
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), base)
		if !ok {
			continue
		}
		digits, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(digits)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		if unix.Kill(pid, 0) == unix.ESRCH {
			errs = append(errs, deleteNS(e.Name()))
		}
	}
	return errors.Join(errs...)
}

func deleteNS(ns string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
		return nil
	}
	return ip("netns", "del", ns)
}

// Attach creates the two TUN devices in this process's namespace, moves
// each into its namespace, addresses it and brings it up, and returns them
// open (importing, exporting). The devices are not persistent: they vanish
// when the files close, also when the process dies.
func (t Topology) Attach() (imp, exp *os.File, err error) {
	imp, err = t.attach(t.ImportDev, t.ImportNS, t.ImportAddr)
	if err != nil {
		return nil, nil, err
	}
	exp, err = t.attach(t.ExportDev, t.ExportNS, t.ExportAddr)
	if err != nil {
		imp.Close()
		return nil, nil, err
	}
	return imp, exp, nil
}

func (t Topology) attach(dev, ns string, addr netip.Addr) (*os.File, error) {
	f, err := openTUN(dev)
	if err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "set", "dev", dev, "netns", ns},
		{"-n", ns, "addr", "add", netip.PrefixFrom(addr, 30).String(), "dev", dev},
		{"-n", ns, "link", "set", "dev", dev, "mtu", "1500", "txqueuelen", "1000", "up"},
	} {
		if err := ip(args...); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// openTUN creates a TUN device without packet information, non-blocking
// so that Close unblocks a pending Read.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN device %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN device %q: TUNSETIFF: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN device %q: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tun:"+name), nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Do runs f on an OS thread that has entered namespace ns; sockets f
// creates belong to ns and keep working from any thread afterwards. The
// thread returns to this process's namespace after f; if it cannot, it
// stays locked and Go ends it with the goroutine, so no other goroutine
// ever runs in ns by accident. An empty ns runs f as it is.
func Do(ns string, f func() error) error {
	if ns == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: own namespace: %w", err)
			return
		}
		defer unix.Close(self)
		target, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", ns, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: setns: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netns %s: setns back: %w", ns, err) // the thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialTimeout connects to addr from inside namespace ns.
func DialTimeout(ns, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := Do(ns, func() error {
		// A Dialer with a deadline creates the socket in this goroutine:
		// net dials one address serially on the caller's goroutine.
		var err error
		c, err = (&net.Dialer{Timeout: timeout}).DialContext(context.Background(), network, addr)
		return err
	})
	return c, err
}

// ListenPacket opens a packet socket on addr inside namespace ns.
func ListenPacket(ns, network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := Do(ns, func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// ReadFile reads a file as seen from namespace ns: /proc/sys/net shows the
// settings of the namespace that opens it (e.g. the TCP congestion control).
func ReadFile(ns, path string) ([]byte, error) {
	var b []byte
	err := Do(ns, func() error {
		var err error
		b, err = os.ReadFile(path)
		return err
	})
	return b, err
}

// Drops returns the packets each TUN device dropped so far (its
// /sys/class/net/DEV/statistics tx_dropped and rx_dropped, read inside its
// namespace): packets lost at the devices, outside the model. tx is what
// the namespace's stack sent that the device could not queue for the
// emulator (its reader fell behind); rx what the emulator wrote that the
// namespace's stack did not take.
func (t Topology) Drops() (imp, exp DeviceDrops, err error) {
	if imp, err = deviceDrops(t.ImportNS, t.ImportDev); err != nil {
		return
	}
	exp, err = deviceDrops(t.ExportNS, t.ExportDev)
	return
}

// deviceDrops reads dev's drop counters in namespace ns. sysfs shows the
// devices of the namespace it was mounted in, so the read runs under `ip
// netns exec`, which mounts a sysfs of ns.
func deviceDrops(ns, dev string) (DeviceDrops, error) {
	var d DeviceDrops
	dir := "/sys/class/net/" + dev + "/statistics/"
	argv := Command(ns, "cat", dir+"tx_dropped", dir+"rx_dropped")
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		return d, fmt.Errorf("drop counters of %s in %s: %w", dev, ns, err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return d, fmt.Errorf("drop counters of %s in %s: %q", dev, ns, out)
	}
	if d.TX, err = strconv.ParseUint(f[0], 10, 64); err == nil {
		d.RX, err = strconv.ParseUint(f[1], 10, 64)
	}
	if err != nil {
		return d, fmt.Errorf("drop counters of %s in %s: %w", dev, ns, err)
	}
	return d, nil
}
