package codec

import "sync"

// bufPool hands out buffers of one size, stored as pointers so that putting
// one back does not allocate a slice header (quic-go buffer_pool.go).
type bufPool struct {
	size int
	pool sync.Pool
}

func newBufPool(size int) *bufPool {
	p := &bufPool{size: size}
	p.pool.New = func() any {
		b := make([]byte, size)
		return &b
	}
	return p
}

func (p *bufPool) get() *[]byte { return p.pool.Get().(*[]byte) }

// put returns b to the pool; a buffer of another size is dropped, so a
// mistake can never hand out a short buffer.
func (p *bufPool) put(b *[]byte) {
	if cap(*b) != p.size {
		return
	}
	*b = (*b)[:p.size]
	p.pool.Put(b)
}

// Buffer tiers. Small ones serve interactive traffic and idle streams, so
// ten thousand quiet streams do not pin ten thousand 64 KiB buffers.
const (
	smallPayload = 4 << 10
	// dataOffset is where a writer puts the payload: room for the preamble
	// (sent with the first record only) and the record header before it.
	dataOffset = PreambleSize + HeaderSize
)

var (
	writeSmall = newBufPool(dataOffset + smallPayload + TagSize)
	writeLarge = newBufPool(dataOffset + MaxPayload + TagSize)
	// A batch of records (RecordBatcher): each with its header and tag.
	writeMulti = newBufPool(PreambleSize + MaxBatchRecords*MaxRecordSize)
	readSmall  = newBufPool(2 * (HeaderSize + smallPayload + TagSize))
	// Two full records, so a greedy read rarely has to move a partial
	// record to the front.
	readLarge = newBufPool(2 * MaxRecordSize)
)

// writePool returns the tier that fits a payload of n bytes.
func writePool(n int) *bufPool {
	switch {
	case n <= smallPayload:
		return writeSmall
	case n <= MaxPayload:
		return writeLarge
	}
	return writeMulti
}
