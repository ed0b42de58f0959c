package daemon

import (
	"bytes"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
)

// ProcessStatus is the daemon process's own figures in /statusz, for
// watching goroutine, descriptor and memory growth (`make soak`). A figure
// the platform cannot give (no /proc) is -1.
type ProcessStatus struct {
	PID            int   `json:"pid"`
	Goroutines     int   `json:"goroutines"`
	OpenFDs        int   `json:"open_fds"`
	RSSBytes       int64 `json:"rss_bytes"`
	HeapInuseBytes int64 `json:"heap_inuse_bytes"`
}

// heapInuse is runtime.MemStats.HeapInuse as runtime/metrics names it; read
// this way it costs no stop-the-world.
var heapInuse = []string{"/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes"}

// processStatus reads the figures; it is cheap enough for every /statusz.
func processStatus() ProcessStatus {
	samples := make([]metrics.Sample, len(heapInuse))
	for i, name := range heapInuse {
		samples[i].Name = name
	}
	metrics.Read(samples)
	var heap int64
	for _, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 {
			heap += int64(s.Value.Uint64())
		}
	}
	return ProcessStatus{PID: os.Getpid(), Goroutines: runtime.NumGoroutine(), OpenFDs: openFDs(), RSSBytes: rssBytes(), HeapInuseBytes: heap}
}

// openFDs counts /proc/self/fd, less the descriptor reading it.
func openFDs() int {
	f, err := os.Open("/proc/self/fd")
	if err != nil {
		return -1
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return -1
	}
	return len(names) - 1
}

// rssBytes reads the resident set from /proc/self/statm (its second field,
// in pages).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return -1
	}
	fields := bytes.Fields(b)
	if len(fields) < 2 {
		return -1
	}
	pages, err := strconv.ParseInt(string(fields[1]), 10, 64)
	if err != nil {
		return -1
	}
	return pages * int64(os.Getpagesize())
}
