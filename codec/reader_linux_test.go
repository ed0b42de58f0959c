package codec

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// threadWrites is this thread's count of write system calls (write,
// writev, ...) from /proc/thread-self/io.
func threadWrites(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/io")
	if err != nil {
		t.Skipf("no per-thread I/O accounting: %v", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Skip("no syscw in /proc/thread-self/io")
	return 0
}

// batchSource is a source that carries records in batches of two, as the
// TCP transport's streams do.
type batchSource struct{ io.Reader }

func (batchSource) MaxBatchRecords() int { return MaxBatchRecords }

// TestWriteToBatchesBufferedRecords: when a batching transport has
// delivered two full records (the TCP transport's frames carry two),
// WriteTo writes both to a socket in one system call, without allocating
// per record; the plaintext arrives whole and in order. Any other source
// (QUIC) keeps one write per record.
func TestWriteToBatchesBufferedRecords(t *testing.T) {
	const records = 64
	s := newTestSession(t, SuiteAES256GCM, testConn, testPairing)
	plain := make([]byte, records*MaxPayload)
	for i := range plain {
		plain[i] = byte(i / 7)
	}
	wire := seal(t, s, plain)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	buf := make([]byte, 64<<10)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		h := sha256.New()
		io.CopyBuffer(h, c, buf) // no allocation while WriteTo is counted
		got <- h.Sum(nil)
	}()
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	r := s.NewReader(batchSource{bytes.NewReader(wire)}, 4, FromInitiator)
	if _, err := r.Next(); err != nil { // takes the preamble and the pool's first buffer
		t.Fatal(err)
	}
	r.Release()
	r = s.NewReader(batchSource{bytes.NewReader(wire)}, 4, FromInitiator)
	// The stream's keys are set up (and allocated) before counting.
	first := make([]byte, 1)
	if _, err := io.ReadFull(r, first); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(first); err != nil {
		t.Fatal(err)
	}

	// Locked, so that every write(2) counted is WriteTo's own.
	runtime.LockOSThread()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	w0 := threadWrites(t)
	n, err := r.WriteTo(c)
	writes := threadWrites(t) - w0
	runtime.ReadMemStats(&m1)
	runtime.UnlockOSThread()
	if err != nil || n != int64(len(plain)-1) {
		t.Fatalf("WriteTo: %d bytes, %v", n, err)
	}
	c.Close()
	if want := sha256.Sum256(plain); !bytes.Equal(<-got, want[:]) {
		t.Fatal("the plaintext received is not the one sent")
	}
	mallocs := m1.Mallocs - m0.Mallocs
	t.Logf("%d records: %d write system calls, %d allocations", records, writes, mallocs)
	if writes > records/2+2 {
		t.Errorf("%d records took %d write system calls, want about one per two", records, writes)
	}
	// The count is the process's: the runtime and the receiving goroutine
	// make ~20 here with or without batching; one per record or per pair
	// would add 64 or 32.
	if mallocs > records/2 && !raceEnabled { // the race detector allocates
		t.Errorf("%d allocations for %d records", mallocs, records)
	}
}
