package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// settleQuiet is the machine's busy share under which it counts as quiet,
// and settleMax the longest settle waits for that.
const (
	settleQuiet = 0.10
	settleMax   = 30 * time.Second
)

// settle waits until the machine is quiet (two half-second windows in a
// row under settleQuiet busy, over all cores) or settleMax has passed,
// and returns how long it waited and the last window's busy share (-1
// when /proc/stat cannot be read). The API guard's cells are ratios of
// close numbers measured one after the other: what the scenarios before
// them leave behind (ten thousand idle connections closing, the stopped
// systems' processes exiting, this process's heap from them) would
// otherwise land in their first cells only.
func settle() (time.Duration, float64) {
	runtime.GC()
	debug.FreeOSMemory()
	start := time.Now()
	busy, quiet := -1.0, 0
	for time.Since(start) < settleMax && quiet < 2 {
		b, err := busyShare(500 * time.Millisecond)
		if err != nil {
			return time.Since(start), -1
		}
		busy = b
		if b < settleQuiet {
			quiet++
		} else {
			quiet = 0
		}
	}
	return time.Since(start), busy
}

// busyShare is the share of all cores' time that was not idle (nor
// waiting on I/O) over d, from /proc/stat.
func busyShare(d time.Duration) (float64, error) {
	idle0, total0, err := cpuTimes()
	if err != nil {
		return 0, err
	}
	time.Sleep(d)
	idle1, total1, err := cpuTimes()
	if err != nil {
		return 0, err
	}
	if total1 <= total0 {
		return 0, fmt.Errorf("/proc/stat: no time passed")
	}
	return 1 - float64(idle1-idle0)/float64(total1-total0), nil
}

// cpuTimes returns the idle (idle + iowait) and total jiffies of the
// machine's "cpu" line in /proc/stat.
func cpuTimes() (idle, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	// user nice system idle iowait irq softirq steal; guest time is in
	// user already. Steal (other machines on the host) counts as busy.
	for i, v := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: field %d: %w", i+1, err)
		}
		total += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	return idle, total, nil
}
