package daemon

import (
	"runtime"
	"testing"
)

func TestProcessStatus(t *testing.T) {
	p := processStatus()
	if p.Goroutines < 1 || p.HeapInuseBytes <= 0 {
		t.Fatalf("goroutines %d, heap in use %d", p.Goroutines, p.HeapInuseBytes)
	}
	if runtime.GOOS == "linux" && (p.OpenFDs < 3 || p.RSSBytes <= 0) {
		t.Fatalf("open fds %d, rss %d: /proc/self not read", p.OpenFDs, p.RSSBytes)
	}
}
