package main

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// errNoBytes is bulk's answer when no byte arrived in its window.
var errNoBytes = errors.New("no bytes moved")

// metrics are one measurement's figures by name.
type metrics map[string]float64

// bulk moves data one way over conns connections for dur and reports
// Gbit/s, the tunnel processes' CPU-seconds per GB and their peak RSS.
func bulk(entry string, upload bool, conns int, dur time.Duration, pids []int) (metrics, error) {
	mode := byte(modeDownload)
	if upload {
		mode = modeUpload
	}
	cpu0 := totalCPU(pids)
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	start := time.Now()
	deadline := start.Add(dur)
	for range conns {
		c, err := dialMode(entry, mode)
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			c.SetDeadline(deadline)
			var n int64
			var err error
			if upload {
				for err == nil {
					var k int
					k, err = c.Write(bulkBuf)
					n += int64(k)
				}
			} else {
				buf := make([]byte, 256<<10)
				for err == nil {
					var k int
					k, err = c.Read(buf)
					n += int64(k)
				}
			}
			total.Add(n)
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				errs <- fmt.Errorf("bulk connection ended early after %d bytes: %w", n, err)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	bytes := float64(total.Load())
	if bytes == 0 {
		return nil, errNoBytes
	}
	m := metrics{"gbps": bytes * 8 / elapsed.Seconds() / 1e9}
	if len(pids) > 0 {
		m["cpu_s_per_gb"] = (totalCPU(pids) - cpu0) / (bytes / 1e9)
		var peak int64
		for _, p := range pids {
			v, _ := memKiB(p, "VmHWM")
			peak += v
		}
		m["peak_rss_mib"] = float64(peak) / 1024
	}
	return m, nil
}

// requestResponse runs conc connections, each sending 1 KiB requests and
// reading 1 KiB responses back to back for dur, and reports requests per
// second and latency percentiles in microseconds.
func requestResponse(entry string, conc int, dur time.Duration) (metrics, error) {
	conns := make([]net.Conn, 0, conc)
	for range conc {
		c, err := dialMode(entry, modeRR)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		conns = append(conns, c)
	}
	all, elapsed, err := rrLoop(conns, dur, func(c net.Conn) func() error {
		buf := make([]byte, msgSize)
		return func() error { return rrOnce(c, buf) }
	})
	if err != nil {
		return nil, fmt.Errorf("request/response: %w", err)
	}
	pct := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds())
	}
	return metrics{"rps": float64(len(all)) / elapsed.Seconds(), "p50_us": pct(0.50), "p90_us": pct(0.90),
		"p99_us": pct(0.99), "p999_us": pct(0.999)}, nil
}

// rrLoop runs exchanges on each of conns, one outstanding per connection,
// until dur has passed (each connection's deadline 10 s after that); each
// connection's exchange comes from newExchange, with its own buffers. It
// closes conns and returns every exchange's latency, sorted (never empty
// without an error), and the time the loop took.
func rrLoop(conns []net.Conn, dur time.Duration, newExchange func(c net.Conn) func() error) ([]time.Duration, time.Duration, error) {
	lat := make([][]time.Duration, len(conns))
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	start := time.Now()
	deadline := start.Add(dur)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			c.SetDeadline(deadline.Add(10 * time.Second))
			exchange := newExchange(c)
			samples := make([]time.Duration, 0, 1<<14)
			for time.Now().Before(deadline) {
				t := time.Now()
				if err := exchange(); err != nil {
					errs <- err
					return
				}
				samples = append(samples, time.Since(t))
			}
			lat[i] = samples
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return nil, 0, err
	}
	all := slices.Concat(lat...)
	if len(all) == 0 {
		return nil, 0, errors.New("no request completed")
	}
	slices.Sort(all)
	return all, elapsed, nil
}

// churn opens new connections as fast as workers can, each carrying one
// 1 KiB request and response, until dur has passed and at least minConns
// connections are done (but for no more than dur+churnLimit), and reports
// connections per second and how many. Clients close with a reset so
// TIME_WAIT does not exhaust loopback ports.
func churn(entry string, workers int, dur time.Duration, minConns int) (metrics, error) {
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	deadline, limit := start.Add(dur), start.Add(dur+churnLimit)
	more := func() bool {
		now := time.Now()
		return now.Before(deadline) || done.Load() < int64(minConns) && now.Before(limit)
	}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, msgSize)
			for more() {
				c, err := dialMode(entry, modeRR)
				if err == nil {
					c.SetDeadline(time.Now().Add(5 * time.Second))
					err = rrOnce(c, buf)
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
				}
				if err != nil {
					errs <- err
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return nil, fmt.Errorf("churn after %d connections: %w", done.Load(), err)
	}
	return metrics{"conns_per_s": float64(done.Load()) / elapsed.Seconds(), "conns": float64(done.Load())}, nil
}

// churnLimit bounds how long churn runs past its duration to reach its
// minimum count: a system slower than minConns/churnLimit connections a second
// reports what it did.
const churnLimit = 30 * time.Second

// idle holds n connections open (each has carried one exchange, so its
// stream exists) and reports the RSS each costs the importing and the
// exporting tunnel process.
func idle(entry string, n int, pids []int) (metrics, error) {
	if len(pids) != 2 {
		return nil, fmt.Errorf("idle needs the two tunnel processes")
	}
	settle := func() { time.Sleep(300 * time.Millisecond) }
	settle()
	before := [2]int64{}
	for i, p := range pids {
		before[i], _ = memKiB(p, "VmRSS")
	}
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()
	buf := make([]byte, msgSize)
	for range n {
		c, err := dialMode(entry, modeRR)
		if err != nil {
			return nil, fmt.Errorf("idle connection %d: %w", len(conns), err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := rrOnce(c, buf); err != nil {
			return nil, fmt.Errorf("idle connection %d: %w", len(conns), err)
		}
	}
	settle()
	m := metrics{"conns": float64(n)}
	for i, p := range pids {
		after, _ := memKiB(p, "VmRSS")
		m[[]string{"rss_kib_per_conn_importer", "rss_kib_per_conn_exporter"}[i]] = float64(after-before[i]) / float64(n)
	}
	return m, nil
}

// firstByte polls entry until one request/response succeeds.
func firstByte(entry string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, msgSize)
	var err error
	for time.Now().Before(deadline) {
		var c net.Conn
		if c, err = dialMode(entry, modeRR); err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			err = rrOnce(c, buf)
			c.Close()
			if err == nil {
				return nil
			}
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("no first byte within %v: %w", timeout, err)
}
