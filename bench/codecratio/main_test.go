package main

import (
	"strings"
	"testing"
)

func TestRatioTable(t *testing.T) {
	in := `goos: linux
BenchmarkRecord/aes-256-gcm/roundtrip/16K/aead-2   41686  5732 ns/op  2000.00 MB/s  0 B/op  0 allocs/op
BenchmarkRecord/aes-256-gcm/roundtrip/16K/aead-2   41686  5732 ns/op  3000.00 MB/s  0 B/op  0 allocs/op
BenchmarkRecord/aes-256-gcm/roundtrip/16K/aead-2   41686  5732 ns/op  9000.00 MB/s  0 B/op  0 allocs/op
BenchmarkRecord/aes-256-gcm/roundtrip/16K/codec-2  41965  5698 ns/op  2700.00 MB/s  0 B/op  0 allocs/op
BenchmarkStream/aes-256-gcm/write-next/1K-2 467707 517.9 ns/op 1977.38 MB/s  0 B/op  0 allocs/op
`
	var out strings.Builder
	if err := run(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "3000") || !strings.Contains(out.String(), "0.900x") || !strings.Contains(out.String(), "met") {
		t.Fatalf("median or ratio wrong:\n%s", out.String())
	}
	if err := run(strings.NewReader("BenchmarkRecord/x/roundtrip/16K/aead-2 1 1 ns/op 1.0 MB/s\n"), &out); err == nil {
		t.Fatal("missing codec line not reported")
	}
}
