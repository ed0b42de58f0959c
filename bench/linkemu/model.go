// Package linkemu emulates an impaired network link on IP packets, so that
// every system the bench measures (direct TCP, stunnel, a bare quic-go relay,
// dyad) crosses the same link, loss included. This kernel has no netem: the
// bench joins two network namespaces through two TUN devices and an
// Emulator in between reads each IP packet from one device and writes it
// to the other after the Model's delay, jitter, loss and rate cap.
//
// Model and Path are the link's logic, free of I/O and clocks (the caller
// passes the time), so tests check them exactly; Emulator pumps packets
// between two devices; Topology makes the namespaces and devices (Linux,
// root only).
package linkemu

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Model is an impaired link, applied to each direction on its own.
type Model struct {
	// Delay is the one-way delay; the round-trip time is twice it.
	Delay time.Duration `json:"one_way_delay_ns"`
	// Jitter adds a uniform random -Jitter..+Jitter to each packet's
	// delay; at most Delay. Zero means none.
	Jitter time.Duration `json:"jitter_ns"`
	// Reorder lets jitter reorder packets. False (the zero value) keeps
	// packet order: a packet never leaves before one that arrived before
	// it, as on one wire.
	Reorder bool `json:"reorder"`
	// Loss is the probability (0..1) that a packet is dropped, each packet
	// independently. Zero means none.
	Loss float64 `json:"loss"`
	// RateMbps caps the link's rate in Mbit/s; packets wait their turn in
	// a drop-tail queue of QueueBytes. Zero means no cap.
	RateMbps float64 `json:"rate_mbps"`
	// QueueBytes bounds the bytes waiting for the rate cap; a packet that
	// would exceed it (the one being sent counts) is dropped: tail drop, as
	// a router. Zero means 50 ms at RateMbps.
	QueueBytes int `json:"queue_bytes"`
}

// Validate rejects a model that no link can have, naming the field.
func (m Model) Validate() error {
	switch {
	case m.Delay < 0:
		return fmt.Errorf("linkemu: Delay %v is negative", m.Delay)
	case m.Jitter < 0 || m.Jitter > m.Delay:
		return fmt.Errorf("linkemu: Jitter %v is outside 0..Delay (%v)", m.Jitter, m.Delay)
	case !(m.Loss >= 0 && m.Loss <= 1):
		return fmt.Errorf("linkemu: Loss %v is outside 0..1", m.Loss)
	case !(m.RateMbps >= 0):
		return fmt.Errorf("linkemu: RateMbps %v is negative", m.RateMbps)
	case m.QueueBytes < 0:
		return fmt.Errorf("linkemu: QueueBytes %d is negative", m.QueueBytes)
	}
	return nil
}

// queueBytes is QueueBytes with its zero value resolved.
func (m Model) queueBytes() float64 {
	if m.QueueBytes > 0 {
		return float64(m.QueueBytes)
	}
	return m.RateMbps * 1e6 / 8 * 0.050
}

// String names the model the way the report does: "40ms RTT, 0.1% loss,
// 200 Mbit/s".
func (m Model) String() string {
	s := fmt.Sprintf("%v RTT", 2*m.Delay)
	if m.Jitter > 0 {
		s += fmt.Sprintf(", ±%v jitter", m.Jitter)
		if m.Reorder {
			s += " (reordering)"
		}
	}
	s += fmt.Sprintf(", %g%% loss", m.Loss*100)
	if m.RateMbps > 0 {
		s += fmt.Sprintf(", %g Mbit/s", m.RateMbps)
	}
	return s
}

// Verdict is what a Path does with a packet.
type Verdict uint8

// The verdicts; every packet a Path admits gets exactly one.
const (
	Pass      Verdict = iota // leaves at the returned time
	Lost                     // dropped at random (Model.Loss)
	QueueFull                // tail-dropped: the rate cap's queue is full
)

// Counters are one direction's packet counts. Every packet read is counted
// in In and then in exactly one of Lost, QueueDrops, Overflow or, once
// written, Out or WriteErrors (packets still in flight when the emulator
// stops are in none).
type Counters struct {
	In          uint64 `json:"in"`
	Lost        uint64 `json:"lost"`
	QueueDrops  uint64 `json:"queue_drops"`
	Overflow    uint64 `json:"overflow"`     // more packets in flight than maxInFlight, or larger than a buffer
	Out         uint64 `json:"out"`          // written to the far device
	OutBytes    uint64 `json:"out_bytes"`    // bytes of the Out packets
	WriteErrors uint64 `json:"write_errors"` // the far device refused the write
	Reordered   uint64 `json:"reordered"`    // passed packets scheduled before an earlier one
}

// Sub returns c - o, counter by counter: the counts between two snapshots.
func (c Counters) Sub(o Counters) Counters {
	return Counters{In: c.In - o.In, Lost: c.Lost - o.Lost, QueueDrops: c.QueueDrops - o.QueueDrops, Overflow: c.Overflow - o.Overflow,
		Out: c.Out - o.Out, OutBytes: c.OutBytes - o.OutBytes, WriteErrors: c.WriteErrors - o.WriteErrors, Reordered: c.Reordered - o.Reordered}
}

// counters are Counters as atomics: the reader and the writer of a
// direction both count, and Snapshot reads while they run.
type counters struct {
	in, lost, queueDrops, overflow, out, outBytes, writeErrors, reordered atomic.Uint64
}

func (c *counters) snapshot() Counters {
	return Counters{In: c.in.Load(), Lost: c.lost.Load(), QueueDrops: c.queueDrops.Load(), Overflow: c.overflow.Load(),
		Out: c.out.Load(), OutBytes: c.outBytes.Load(), WriteErrors: c.writeErrors.Load(), Reordered: c.reordered.Load()}
}

// Path is one direction of a Model: it decides each packet's fate and
// departure time. A Path is not safe for concurrent Admit calls; its
// counters may be read at any time.
type Path struct {
	m     Model
	rng   *rand.Rand
	txEnd time.Time // when the rate cap has sent everything queued
	last  time.Time // the latest departure handed out, to keep order
	c     counters
}

// NewPath returns a direction of m whose random choices follow seed, so
// that two runs with the same seed and arrivals decide alike.
func NewPath(m Model, seed uint64) (*Path, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &Path{m: m, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}, nil
}

// Admit decides the fate of a packet of size bytes that arrives at now:
// Pass with its departure time, or a drop. Loss comes first (the packet
// never reaches the queue), then the rate cap's queue, then the delay and
// jitter; without Reorder a departure is never before an earlier one.
func (p *Path) Admit(now time.Time, size int) (time.Time, Verdict) {
	p.c.in.Add(1)
	if p.m.Loss > 0 && p.rng.Float64() < p.m.Loss {
		p.c.lost.Add(1)
		return time.Time{}, Lost
	}
	sent := now
	if r := p.m.RateMbps; r > 0 {
		if p.txEnd.After(now) {
			backlog := p.txEnd.Sub(now).Seconds() * r * 1e6 / 8
			if backlog+float64(size) > p.m.queueBytes() {
				p.c.queueDrops.Add(1)
				return time.Time{}, QueueFull
			}
			sent = p.txEnd
		}
		sent = sent.Add(time.Duration(float64(size*8) / (r * 1e6) * float64(time.Second)))
		p.txEnd = sent
	}
	d := p.m.Delay
	if j := p.m.Jitter; j > 0 {
		d += time.Duration(p.rng.Int64N(int64(2*j)+1)) - j
	}
	at := sent.Add(d)
	if at.Before(p.last) {
		if !p.m.Reorder {
			at = p.last
		} else {
			p.c.reordered.Add(1)
		}
	}
	if at.After(p.last) {
		p.last = at
	}
	return at, Pass
}

// Counters returns the direction's counts so far.
func (p *Path) Counters() Counters { return p.c.snapshot() }
