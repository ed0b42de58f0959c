package linkemu

import (
	"container/heap"
	"errors"
	"io"
	"os"
	"sync"
	"time"
)

// bufSize is the largest packet the emulator carries; Topology sets the
// devices' MTU to 1500, below it. A read that fills a buffer is counted as
// Overflow and dropped, never forwarded cut short.
const bufSize = 2048

// maxInFlight bounds the packets one direction holds (in the delay line),
// so that a model without a rate cap cannot grow without bound: at 200
// Mbit/s and 20 ms one way a direction holds ~350 full-size packets.
const maxInFlight = 1 << 16

var bufPool = sync.Pool{New: func() any { return new([bufSize]byte) }}

// Emulator carries packets between two devices, one Path per direction.
//
// A device is an io.ReadWriter with packet semantics (a TUN device opened
// without packet information): each Read returns one whole packet, each
// Write sends one. Run reads each device in its own goroutine and writes
// to the other from a delay line that releases packets at their departure
// times.
type Emulator struct {
	AB, BA *Path // device a to device b, and back
}

// New returns an emulator of m in both directions; seed fixes its random
// choices (each direction gets its own stream).
func New(m Model, seed uint64) (*Emulator, error) {
	ab, err := NewPath(m, seed)
	if err != nil {
		return nil, err
	}
	ba, _ := NewPath(m, seed+1)
	return &Emulator{AB: ab, BA: ba}, nil
}

// Run carries packets until both devices' reads have failed: the caller
// stops it by closing both. It returns the first read error that is not
// os.ErrClosed (nil after a plain close). A write error is counted in
// WriteErrors and the packet dropped.
func (e *Emulator) Run(a, b io.ReadWriter) error {
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, d := range []struct {
		src, dst io.ReadWriter
		p        *Path
	}{{a, b, e.AB}, {b, a, e.BA}} {
		line := newDelayLine(d.dst, d.p)
		wg.Add(2)
		go func() { defer wg.Done(); line.run() }()
		go func() {
			defer wg.Done()
			err := pump(d.src, d.p, line)
			line.close()
			if errors.Is(err, os.ErrClosed) {
				err = nil
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// pump reads packets from src until a read fails and hands each passed one
// to line.
func pump(src io.Reader, p *Path, line *delayLine) error {
	for {
		buf := bufPool.Get().(*[bufSize]byte)
		n, err := src.Read(buf[:])
		if err != nil {
			bufPool.Put(buf)
			return err
		}
		if n == 0 {
			bufPool.Put(buf)
			continue
		}
		if n == bufSize {
			p.c.in.Add(1)
			p.c.overflow.Add(1)
			bufPool.Put(buf)
			continue
		}
		at, v := p.Admit(time.Now(), n)
		if v != Pass || !line.put(at, buf, n) {
			bufPool.Put(buf)
		}
	}
}

// packet is one packet waiting in a delay line.
type packet struct {
	at  time.Time
	seq uint64 // arrival order, which breaks ties of at
	buf *[bufSize]byte
	n   int
}

type packetHeap []packet

func (h packetHeap) Len() int { return len(h) }
func (h packetHeap) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].seq < h[j].seq
	}
	return h[i].at.Before(h[j].at)
}
func (h packetHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *packetHeap) Push(x any)   { *h = append(*h, x.(packet)) }
func (h *packetHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// delayLine releases packets to dst at their departure times, earliest
// first, equal times in arrival order.
type delayLine struct {
	dst  io.Writer
	p    *Path // for the counters
	wake chan struct{}
	done chan struct{}

	mu     sync.Mutex // guards the following fields
	h      packetHeap
	seq    uint64
	closed bool
}

func newDelayLine(dst io.Writer, p *Path) *delayLine {
	return &delayLine{dst: dst, p: p, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// put queues a packet; false (counted as Overflow) when the line holds
// maxInFlight packets or is closed: the caller keeps the buffer.
func (d *delayLine) put(at time.Time, buf *[bufSize]byte, n int) bool {
	d.mu.Lock()
	if d.closed || len(d.h) >= maxInFlight {
		d.mu.Unlock()
		d.p.c.overflow.Add(1)
		return false
	}
	d.seq++
	heap.Push(&d.h, packet{at, d.seq, buf, n})
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	return true
}

// close stops run; packets still in the line are dropped uncounted (the
// link is going away).
func (d *delayLine) close() {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		close(d.done)
	}
	d.mu.Unlock()
}

func (d *delayLine) run() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		d.mu.Lock()
		next := time.Hour
		for len(d.h) > 0 {
			if wait := time.Until(d.h[0].at); wait > 0 {
				next = wait
				break
			}
			pk := heap.Pop(&d.h).(packet)
			d.mu.Unlock()
			if _, err := d.dst.Write(pk.buf[:pk.n]); errors.Is(err, os.ErrClosed) {
				// The link is shutting down: in flight, not an error.
			} else if err != nil {
				d.p.c.writeErrors.Add(1)
			} else {
				d.p.c.out.Add(1)
				d.p.c.outBytes.Add(uint64(pk.n))
			}
			bufPool.Put(pk.buf)
			d.mu.Lock()
		}
		d.mu.Unlock()
		t.Reset(next)
		select {
		case <-t.C:
		case <-d.wake:
		case <-d.done:
			return
		}
	}
}
