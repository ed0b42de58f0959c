package linkemu

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// TestLinkBetweenNamespaces sends UDP probes from the importing namespace
// to an echo socket in the exporting one across a real emulated link
// (40 ms RTT, ±2 ms order-keeping jitter, 5% loss each way, 200 Mbit/s)
// and checks the round-trip time, the loss and the order. Root only; it
// skips elsewhere. Bounded: 1,000 probes 1 ms apart, then 1 s of drain.
func TestLinkBetweenNamespaces(t *testing.T) {
	if err := Check(); err != nil {
		t.Skip("emulated link:", err)
	}
	topo := NewTopology(fmt.Sprintf("dyt%d", os.Getpid()))
	if err := topo.Setup(); err != nil {
		t.Skip("emulated link: namespaces:", err)
	}
	defer func() {
		if err := topo.Teardown(); err != nil {
			t.Error(err)
		}
		for _, ns := range []string{topo.ImportNS, topo.ExportNS} {
			if _, err := os.Stat("/run/netns/" + ns); err == nil {
				t.Errorf("namespace %s left behind", ns)
			}
		}
	}()
	// Setup again: idempotent, as after a crashed run.
	if err := topo.Setup(); err != nil {
		t.Fatal(err)
	}
	// A crashed run's namespaces (its process is gone) are removed; a
	// running one's (ours) are not.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	stale := NewTopology(fmt.Sprintf("dyt%d", gone.Process.Pid))
	if err := stale.Setup(); err != nil {
		t.Fatal(err)
	}
	if err := RemoveStale("dyt"); err != nil {
		t.Fatal(err)
	}
	for ns, want := range map[string]bool{stale.ImportNS: false, stale.ExportNS: false, topo.ImportNS: true, topo.ExportNS: true} {
		if _, err := os.Stat("/run/netns/" + ns); (err == nil) != want {
			t.Errorf("after RemoveStale: namespace %s exists %v, want %v", ns, err == nil, want)
		}
	}
	m := Model{Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond, Loss: 0.05, RateMbps: 200}
	e, err := New(m, 1)
	if err != nil {
		t.Fatal(err)
	}
	imp, exp, err := topo.Attach()
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- e.Run(imp, exp) }()
	defer func() {
		imp.Close()
		exp.Close()
		if err := <-ran; err != nil {
			t.Error(err)
		}
	}()

	echo, err := ListenPacket(topo.ExportNS, "udp4", netip.AddrPortFrom(topo.ExportAddr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	c, err := DialTimeout(topo.ImportNS, "udp4", echo.LocalAddr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const n = 1000
	sent := make([]time.Time, n)
	rtts := make(chan time.Duration, n)
	order := make(chan bool, 1)
	go func() {
		buf := make([]byte, 1500)
		last, inOrder := -1, true
		for {
			c.SetReadDeadline(time.Now().Add(time.Second))
			k, err := c.Read(buf)
			if err != nil {
				order <- inOrder
				close(rtts)
				return
			}
			if k < 4 {
				continue
			}
			i := int(binary.BigEndian.Uint32(buf))
			if i <= last {
				inOrder = false
			}
			last = i
			rtts <- time.Since(sent[i])
		}
	}()
	probe := make([]byte, 200)
	for i := range n {
		binary.BigEndian.PutUint32(probe, uint32(i))
		sent[i] = time.Now()
		if _, err := c.Write(probe); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	var all []time.Duration
	for d := range rtts {
		all = append(all, d)
	}
	if !<-order {
		t.Error("replies arrived out of order on an order-keeping link")
	}
	if len(all) == 0 {
		t.Fatal("no probe came back")
	}
	slices.Sort(all)
	p50 := all[len(all)/2]
	if p50 < 38*time.Millisecond || p50 > 50*time.Millisecond {
		t.Errorf("median RTT %v, want 40 ms (38-50)", p50)
	}
	if all[0] < 36*time.Millisecond {
		t.Errorf("fastest RTT %v, below 40 ms minus both jitters", all[0])
	}
	// A probe survives both directions with (1-loss)^2.
	want := 1 - math.Pow(1-m.Loss, 2)
	got := 1 - float64(len(all))/n
	sd := math.Sqrt(want * (1 - want) / n)
	if math.Abs(got-want) > 5*sd {
		t.Errorf("round-trip loss %.3f, want %.3f±%.3f", got, want, 5*sd)
	}
	t.Logf("%d/%d probes back, RTT p50 %v min %v max %v; a→b %+v", len(all), n, p50, all[0], all[len(all)-1], e.AB.Counters())
	if ab := e.AB.Counters(); ab.Lost == 0 || ab.Out == 0 || ab.QueueDrops != 0 {
		t.Errorf("a→b counters %+v", ab)
	}
}

// TestDeviceDrops: packets a TUN device cannot queue for its reader (here
// no emulator reads it at all) are counted by Drops, on that device only.
// Root only; bounded: 3,000 datagrams.
func TestDeviceDrops(t *testing.T) {
	if err := Check(); err != nil {
		t.Skip("emulated link:", err)
	}
	topo := NewTopology(fmt.Sprintf("dyd%d", os.Getpid()))
	if err := topo.Setup(); err != nil {
		t.Skip("emulated link: namespaces:", err)
	}
	defer topo.Teardown()
	imp, exp, err := topo.Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer imp.Close()
	defer exp.Close()
	i0, e0, err := topo.Drops()
	if err != nil {
		t.Fatal(err)
	}
	c, err := DialTimeout(topo.ImportNS, "udp4", netip.AddrPortFrom(topo.ExportAddr, 9).String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 3000
	for range n {
		c.Write(make([]byte, 100)) // a full device queue is not the sender's error
	}
	i1, e1, err := topo.Drops()
	if err != nil {
		t.Fatal(err)
	}
	di, de := i1.Sub(i0), e1.Sub(e0)
	t.Logf("importing device dropped %+v, exporting %+v of %d sent", di, de, n)
	// The device queues at most its txqueuelen (1,000) for a reader.
	if di.TX < n-1100 || di.TX > n || di.RX != 0 || de.Total() != 0 {
		t.Errorf("drops: importing device %+v, exporting %+v; want about %d tx drops on the importing one only", di, de, n-1000)
	}
}
