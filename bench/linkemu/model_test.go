package linkemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)

// TestPathDelayAndLoss: without a rate cap every passed packet leaves
// Delay±Jitter after it arrived, and the share lost is Loss within 5
// standard deviations; the counters add up.
func TestPathDelayAndLoss(t *testing.T) {
	m := Model{Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond, Reorder: true, Loss: 0.01}
	p, err := NewPath(m, 1)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200_000
	var lost int
	for i := range n {
		now := t0.Add(time.Duration(i) * 10 * time.Microsecond)
		at, v := p.Admit(now, 1200)
		switch v {
		case Lost:
			lost++
		case Pass:
			if d := at.Sub(now); d < m.Delay-m.Jitter || d > m.Delay+m.Jitter {
				t.Fatalf("packet %d: delay %v outside %v±%v", i, d, m.Delay, m.Jitter)
			}
		default:
			t.Fatalf("packet %d: verdict %d without a rate cap", i, v)
		}
	}
	sd := math.Sqrt(n * m.Loss * (1 - m.Loss))
	if math.Abs(float64(lost)-n*m.Loss) > 5*sd {
		t.Errorf("lost %d of %d, want %.0f±%.0f", lost, n, n*m.Loss, 5*sd)
	}
	c := p.Counters()
	if c.In != n || c.Lost != uint64(lost) || c.QueueDrops != 0 {
		t.Errorf("counters %+v, want in %d lost %d", c, n, lost)
	}
}

// TestPathKeepsOrder: with jitter far larger than the gap between packets
// and Reorder off, departures never go backwards, and the delay is at
// least Delay-Jitter; with Reorder on, the same arrivals do reorder.
func TestPathKeepsOrder(t *testing.T) {
	for _, reorder := range []bool{false, true} {
		m := Model{Delay: 20 * time.Millisecond, Jitter: time.Millisecond, Reorder: reorder}
		p, _ := NewPath(m, 7)
		var last time.Time
		var inversions int
		for i := range 10_000 {
			now := t0.Add(time.Duration(i) * 50 * time.Microsecond)
			at, v := p.Admit(now, 1200)
			if v != Pass {
				t.Fatalf("verdict %d on a lossless link", v)
			}
			if d := at.Sub(now); d < m.Delay-m.Jitter || d > m.Delay+m.Jitter {
				t.Fatalf("reorder %v: packet %d delayed %v, outside %v±%v", reorder, i, d, m.Delay, m.Jitter)
			}
			if at.Before(last) {
				inversions++
			}
			if at.After(last) {
				last = at
			}
		}
		if !reorder && inversions != 0 {
			t.Errorf("order-keeping link reordered %d packets", inversions)
		}
		if reorder && (inversions < 1000 || p.Counters().Reordered != uint64(inversions)) {
			t.Errorf("reordering link: %d inversions, counter %d; want many, equal", inversions, p.Counters().Reordered)
		}
	}
}

// TestPathRateAndQueue: a burst into a 100 Mbit/s cap leaves one packet
// every 96 µs (1200 bytes), and once the queue holds QueueBytes the rest
// of the burst is tail-dropped.
func TestPathRateAndQueue(t *testing.T) {
	m := Model{Delay: 10 * time.Millisecond, RateMbps: 100, QueueBytes: 12_000}
	p, _ := NewPath(m, 1)
	gap := 96 * time.Microsecond
	var passed, dropped int
	for i := range 50 {
		at, v := p.Admit(t0, 1200) // all at once
		switch v {
		case Pass:
			if want := t0.Add(time.Duration(passed+1)*gap + m.Delay); at.Sub(want).Abs() > time.Microsecond {
				t.Fatalf("packet %d leaves at +%v, want +%v", i, at.Sub(t0), want.Sub(t0))
			}
			passed++
		case QueueFull:
			dropped++
		default:
			t.Fatalf("verdict %d", v)
		}
	}
	// The queue's 12,000 bytes hold ten packets, the one on the wire included.
	if passed != 10 || dropped != 40 || p.Counters().QueueDrops != 40 {
		t.Errorf("passed %d, dropped %d (counter %d); want 10, 40", passed, dropped, p.Counters().QueueDrops)
	}
	// Once the queue has drained, packets pass again.
	if _, v := p.Admit(t0.Add(2*time.Millisecond), 1200); v != Pass {
		t.Errorf("after the queue drained: verdict %d", v)
	}
}

// TestPathSeedRepeats: the same seed and arrivals give the same fates.
func TestPathSeedRepeats(t *testing.T) {
	m := Model{Delay: time.Millisecond, Jitter: time.Millisecond, Loss: 0.3}
	a, _ := NewPath(m, 42)
	b, _ := NewPath(m, 42)
	for i := range 1000 {
		now := t0.Add(time.Duration(i) * time.Microsecond)
		at1, v1 := a.Admit(now, 100)
		at2, v2 := b.Admit(now, 100)
		if v1 != v2 || !at1.Equal(at2) {
			t.Fatalf("packet %d: %v %d vs %v %d", i, at1, v1, at2, v2)
		}
	}
}

func TestModelValidate(t *testing.T) {
	for _, m := range []Model{
		{Delay: -1},
		{Delay: time.Millisecond, Jitter: 2 * time.Millisecond},
		{Loss: 1.5},
		{Loss: math.NaN()},
		{RateMbps: -1},
		{QueueBytes: -1},
	} {
		if err := m.Validate(); err == nil {
			t.Errorf("%+v: accepted", m)
		}
	}
	if err := (Model{Delay: 20 * time.Millisecond, Jitter: time.Millisecond, Loss: 0.01, RateMbps: 200}).Validate(); err != nil {
		t.Error(err)
	}
}

// chanDev is an in-memory packet device: Read takes from in, Write sends
// a copy to out.
type chanDev struct {
	in   chan []byte
	out  chan []byte
	once sync.Once
	done chan struct{}
}

func newChanDev() *chanDev {
	return &chanDev{in: make(chan []byte, 1024), out: make(chan []byte, 1024), done: make(chan struct{})}
}

func (d *chanDev) Read(b []byte) (int, error) {
	select {
	case p := <-d.in:
		return copy(b, p), nil
	case <-d.done:
		return 0, os.ErrClosed
	}
}

func (d *chanDev) Write(b []byte) (int, error) {
	d.out <- bytes.Clone(b)
	return len(b), nil
}

func (d *chanDev) Close() { d.once.Do(func() { close(d.done) }) }

// TestEmulatorCarriesInOrder: packets sent into device a come out of b
// after the delay, all of them, in order, with jitter on; the other
// direction is independent; an oversized packet is counted, not cut.
func TestEmulatorCarriesInOrder(t *testing.T) {
	m := Model{Delay: 15 * time.Millisecond, Jitter: 5 * time.Millisecond}
	e, err := New(m, 3)
	if err != nil {
		t.Fatal(err)
	}
	a, b := newChanDev(), newChanDev()
	done := make(chan error, 1)
	go func() { done <- e.Run(a, b) }()
	const n = 500
	start := time.Now()
	for i := range n {
		p := make([]byte, 64)
		binary.BigEndian.PutUint32(p, uint32(i))
		a.in <- p
	}
	a.in <- make([]byte, bufSize+10)
	b.in <- []byte("back")
	timeout := time.After(5 * time.Second)
	for i := range n {
		select {
		case p := <-b.out:
			if got := binary.BigEndian.Uint32(p); got != uint32(i) {
				t.Fatalf("packet %d arrived as number %d", i, got)
			}
			if i == 0 {
				if d := time.Since(start); d < m.Delay-m.Jitter {
					t.Errorf("first packet after %v, before %v", d, m.Delay-m.Jitter)
				}
			}
		case <-timeout:
			t.Fatalf("%d of %d packets arrived", i, n)
		}
	}
	select {
	case p := <-a.out:
		if string(p) != "back" {
			t.Errorf("b to a carried %q", p)
		}
	case <-timeout:
		t.Fatal("b to a carried nothing")
	}
	a.Close()
	b.Close()
	if err := <-done; err != nil && !errors.Is(err, os.ErrClosed) {
		t.Fatal(err)
	}
	if c := e.AB.Counters(); c.In != n+1 || c.Out != n || c.Overflow != 1 {
		t.Errorf("a to b counters %+v", c)
	}
}
