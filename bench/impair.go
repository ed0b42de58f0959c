package main

import (
	"container/heap"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// linkModel is an impaired network path, applied in each direction: a
// one-way delay with uniform jitter (which also reorders datagrams), random
// loss, and a rate cap with a bounded drop-tail queue. This kernel has no
// netem, so the relays below apply it in user space.
type linkModel struct {
	Delay    time.Duration `json:"one_way_delay_ns"`
	Jitter   time.Duration `json:"jitter_ns"`
	Loss     float64       `json:"loss"`
	RateMbps float64       `json:"rate_mbps"`
}

const queueLimit = 4 << 20 // bytes waiting for the rate cap before tail drop

// pacer turns a packet into its departure time under the model.
type pacer struct {
	m        linkModel
	mu       sync.Mutex
	txEnd    time.Time // when the link finishes sending what is queued
	rng      *rand.Rand
	lossless bool
}

func newPacer(m linkModel, seed uint64) *pacer {
	return &pacer{m: m, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// depart returns when a packet of n bytes arriving now leaves the far end,
// or false if it is lost or the queue is full. A pacer for a TCP byte
// stream never drops (lossless), since its reader is back-pressured.
func (p *pacer) depart(n int) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.m.Loss > 0 && p.rng.Float64() < p.m.Loss {
		return time.Time{}, false
	}
	start := now
	if p.m.RateMbps > 0 {
		if p.txEnd.After(now) {
			start = p.txEnd
			if backlog := p.txEnd.Sub(now).Seconds() * p.m.RateMbps * 1e6 / 8; backlog > queueLimit && !p.lossless {
				return time.Time{}, false
			}
		}
		p.txEnd = start.Add(time.Duration(float64(n*8) / (p.m.RateMbps * 1e6) * float64(time.Second)))
		start = p.txEnd
	}
	d := p.m.Delay
	if p.m.Jitter > 0 {
		d += time.Duration(p.rng.Int64N(int64(2*p.m.Jitter))) - p.m.Jitter
	}
	return start.Add(d), true
}

// delayLine releases items at their departure times, in time order.
type delayLine struct {
	mu   sync.Mutex
	h    pktHeap
	wake chan struct{}
	send func([]byte)
	stop chan struct{}
}

type pkt struct {
	at   time.Time
	seq  uint64
	data []byte
}

type pktHeap []pkt

func (h pktHeap) Len() int { return len(h) }
func (h pktHeap) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].seq < h[j].seq
	}
	return h[i].at.Before(h[j].at)
}
func (h pktHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *pktHeap) Push(x any)   { *h = append(*h, x.(pkt)) }
func (h *pktHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func newDelayLine(send func([]byte)) *delayLine {
	d := &delayLine{wake: make(chan struct{}, 1), send: send, stop: make(chan struct{})}
	go d.run()
	return d
}

var seqCounter uint64

func (d *delayLine) put(at time.Time, data []byte) {
	d.mu.Lock()
	seqCounter++
	heap.Push(&d.h, pkt{at, seqCounter, data})
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *delayLine) run() {
	t := time.NewTimer(time.Hour)
	for {
		d.mu.Lock()
		var next time.Duration = time.Hour
		for d.h.Len() > 0 {
			if wait := time.Until(d.h[0].at); wait > 0 {
				next = wait
				break
			}
			p := heap.Pop(&d.h).(pkt)
			d.mu.Unlock()
			d.send(p.data)
			d.mu.Lock()
		}
		d.mu.Unlock()
		t.Reset(next)
		select {
		case <-t.C:
		case <-d.wake:
		case <-d.stop:
			return
		}
	}
}

// udpRelay forwards datagrams between one client and target under m.
type udpRelay struct {
	front, back *net.UDPConn
	mu          sync.Mutex
	client      *net.UDPAddr
	lines       []*delayLine
}

func startUDPRelay(target string, m linkModel) (*udpRelay, error) {
	taddr, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return nil, err
	}
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	back, err := net.DialUDP("udp", nil, taddr)
	if err != nil {
		front.Close()
		return nil, err
	}
	for _, c := range []*net.UDPConn{front, back} {
		c.SetReadBuffer(8 << 20)
		c.SetWriteBuffer(8 << 20)
	}
	r := &udpRelay{front: front, back: back}
	toTarget := newDelayLine(func(b []byte) { back.Write(b) })
	toClient := newDelayLine(func(b []byte) {
		r.mu.Lock()
		c := r.client
		r.mu.Unlock()
		if c != nil {
			front.WriteToUDP(b, c)
		}
	})
	r.lines = []*delayLine{toTarget, toClient}
	up, down := newPacer(m, 1), newPacer(m, 2)
	go func() {
		for {
			buf := make([]byte, 2048)
			n, addr, err := front.ReadFromUDP(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.client = addr
			r.mu.Unlock()
			if at, ok := up.depart(n); ok {
				toTarget.put(at, buf[:n])
			}
		}
	}()
	go func() {
		for {
			buf := make([]byte, 2048)
			n, err := back.Read(buf)
			if err != nil {
				return
			}
			if at, ok := down.depart(n); ok {
				toClient.put(at, buf[:n])
			}
		}
	}()
	return r, nil
}

func (r *udpRelay) addr() string { return r.front.LocalAddr().String() }

func (r *udpRelay) close() {
	r.front.Close()
	r.back.Close()
	for _, l := range r.lines {
		close(l.stop)
	}
}

// tcpRelay carries TCP connections to target with m's delay and rate cap.
// It cannot drop bytes of a TCP stream (TCP below it already recovered
// them), so loss is not applied: impaired runs of TCP systems see delay,
// jitter-free pacing and the rate cap only, and the report says so.
type tcpRelay struct {
	ln net.Listener
	m  linkModel
}

func startTCPRelay(target string, m linkModel) (*tcpRelay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &tcpRelay{ln: ln, m: m}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				up, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					return
				}
				go r.pipe(up.(*net.TCPConn), c.(*net.TCPConn))
				r.pipe(c.(*net.TCPConn), up.(*net.TCPConn))
			}()
		}
	}()
	return r, nil
}

func (r *tcpRelay) addr() string { return r.ln.Addr().String() }
func (r *tcpRelay) close()       { r.ln.Close() }

// pipe copies src to dst, holding each chunk for the one-way delay and
// pacing it to the rate cap.
func (r *tcpRelay) pipe(dst, src *net.TCPConn) {
	m := r.m
	m.Loss, m.Jitter = 0, 0
	p := newPacer(m, 3)
	p.lossless = true
	type chunk struct {
		at   time.Time
		data []byte
	}
	ch := make(chan chunk, 256)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 16<<10)
			n, err := src.Read(buf)
			if n > 0 {
				at, _ := p.depart(n)
				ch <- chunk{at, buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.data); err != nil {
			src.Close()
			for range ch {
			}
			return
		}
	}
	dst.CloseWrite()
}
