package tunnel

import (
	"net"
	"sync"
	"sync/atomic"
)

// sockConn is the TCP socket under crypto/tls. It counts the socket's
// bytes (wire: status shows them, and the heartbeat hears any byte from
// the peer) and batches writes: crypto/tls writes each record of at most
// 16 KiB with its own write(2), so one yamux frame carrying a 64 KiB codec
// record took five system calls, the last a few dozen bytes. Between
// startBatch and flush (frameWriter, one frame) the records collect in a
// pooled buffer and leave in one write(2) (TestTCPFrameSyscalls).
//
// Reads are not buffered: crypto/tls already reads what the socket holds
// into its own buffer, about two read(2)s per frame; a read-ahead below
// it saved one of them for a copy of every byte.
//
// Its methods are safe for concurrent use. Writes go out in the order
// crypto/tls made them: it serializes its writers, and a write while a
// batch is open (a TLS alert or key update from another goroutine) joins
// the batch.
type sockConn struct {
	net.Conn
	wire *wireCount

	mu    sync.Mutex // guards batch, out and the writes to Conn
	batch bool       // between startBatch and flush
	out   *[]byte    // the batch's records, pooled (nil between batches)

	// A frame stuck in write(2) (a peer that reads nothing) must not hold
	// up the connection's close: crypto/tls closes the socket at once when
	// a Write is in progress, and a batch is written after its Write
	// returned. Each of flush and cut sets its flag and then reads the
	// other's, so at least one of them sees both: then cut closes the
	// socket, or flush does not write.
	flushing atomic.Bool // a batch is in write(2)
	cutting  atomic.Bool // the connection is closing
}

// sockBatchSize is a batch's buffer: a yamux frame carrying
// tcpBatchRecords whole codec records, in TLS records (at most 256 bytes
// of overhead each), fits.
const sockBatchSize = 144 << 10

var sockBatches = sync.Pool{New: func() any { b := make([]byte, 0, sockBatchSize); return &b }}

func newSockConn(c net.Conn, wire *wireCount) *sockConn {
	return &sockConn{Conn: c, wire: wire}
}

func (c *sockConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.wire.received.Add(uint64(n))
	return n, err
}

func (c *sockConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batch {
		*c.out = append(*c.out, b...)
		return len(b), nil
	}
	return c.writeLocked(b)
}

func (c *sockConn) writeLocked(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.wire.sent.Add(uint64(n))
	return n, err
}

// startBatch collects the writes until flush. An idle connection holds
// no batch buffer.
func (c *sockConn) startBatch() {
	c.mu.Lock()
	c.batch = true
	c.out = sockBatches.Get().(*[]byte)
	c.mu.Unlock()
}

// flush ends the batch and writes it in one write(2).
func (c *sockConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.batch {
		return nil
	}
	c.batch = false
	bp := c.out
	c.out = nil
	var err error
	if len(*bp) > 0 {
		c.flushing.Store(true)
		if c.cutting.Load() {
			err = net.ErrClosed
		} else {
			_, err = c.writeLocked(*bp)
		}
		c.flushing.Store(false)
	}
	if cap(*bp) <= 2*sockBatchSize { // one grown past a frame is not kept
		*bp = (*bp)[:0]
		sockBatches.Put(bp)
	}
	return err
}

// cut prepares the close of the connection: a batch in write(2) ends now
// (its socket is closed), a later one is not written.
func (c *sockConn) cut() {
	c.cutting.Store(true)
	if c.flushing.Load() {
		c.Conn.Close()
	}
}
