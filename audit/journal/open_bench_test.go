package journal

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

// BenchmarkOpen measures a daemon's start on a big journal: Open hashes
// every entry into the tree and verifies from the last checkpoint on. The
// journal is 64 MiB (CI); DYAD_JOURNAL_BENCH_MB=1024 measures 1 GiB by hand.
func BenchmarkOpen(b *testing.B) {
	mb := 64
	if v, err := strconv.Atoi(os.Getenv("DYAD_JOURNAL_BENCH_MB")); err == nil && v > 0 {
		mb = v
	}
	dir := b.TempDir()
	s, _ := testKey(b)
	opts := Options{Dir: dir, Origin: origin, Signer: s, Sync: SyncNever}
	j, err := Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	attrs := []attribute.KeyValue{
		attribute.String("dyad.peer", "bank-b"), attribute.String("dyad.service", "payments"),
		attribute.String("network.peer.address", "192.0.2.10"), attribute.Int64("dyad.bytes.sent", 123456),
		attribute.String("pad", strings.Repeat("x", 120)),
	}
	t0 := time.Unix(1700000000, 0)
	for i := 0; j.Stats().Entries < 1 || totalBytes(b, dir) < int64(mb)<<20; i++ {
		for range 10000 {
			if _, err := j.Append("dyad.stream.closed", "INFO", t0.Add(time.Duration(i)*time.Millisecond), attrs); err != nil {
				b.Fatal(err)
			}
		}
	}
	j.Close()
	size := totalBytes(b, dir)
	b.SetBytes(size)
	b.ReportMetric(float64(size)/(1<<20), "MiB")
	for b.Loop() {
		j, err := Open(opts)
		if err != nil {
			b.Fatal(err)
		}
		j.Close()
	}
}

func totalBytes(b *testing.B, dir string) int64 {
	files, _ := Files(dir)
	var n int64
	for _, f := range files {
		if st, err := os.Stat(dir + "/" + f); err == nil {
			n += st.Size()
		}
	}
	return n
}
