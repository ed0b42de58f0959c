package audit

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdklog "go.opentelemetry.io/otel/sdk/log"
)

// ExportOptions configure the export queue. Zero values are the defaults.
type ExportOptions struct {
	Protocol string // "grpc" or "http/protobuf", for events about the export path
	Endpoint string // collector endpoint, for events about the export path

	QueueSize     int           // records waiting for export; zero means 4096
	BatchSize     int           // records per export call; zero means 512
	BatchInterval time.Duration // longest wait to fill a batch; zero means 1 s
	Timeout       time.Duration // one export call; zero means 10 s
	// RetryFor is how long a failed batch is retried (with back-off from
	// 1 s to 10 s) before it is dropped and counted; zero means 5 min.
	RetryFor time.Duration
}

// Exporter is the OpenTelemetry log processor between the Auditor and an
// OTLP exporter: a bounded queue that never blocks the caller (a full queue
// drops the new record and counts it), one worker that exports in batches
// and retries a failing batch, and detection of a failing export path,
// which is itself audited (dyad.audit.export_failed / _recovered), as DORA
// RTS 2024/1774 Art. 12 asks.
type Exporter struct {
	opts ExportOptions
	exp  sdklog.Exporter
	a    *Auditor

	queue chan sdklog.Record
	flush chan chan struct{}
	stop  chan struct{}
	done  chan struct{}

	exported    atomic.Uint64
	queueFull   atomic.Uint64 // dropped on enqueue, since the last takeDrops
	failed      atomic.Uint64 // dropped after retries, since the last takeDrops
	totalFull   atomic.Uint64
	totalFailed atomic.Uint64
	down        atomic.Bool
	downSince   time.Time // when down became true; only the worker touches it
	shutdown    sync.Once
}

var _ sdklog.Processor = (*Exporter)(nil)

// NewExporter wraps exp, an OTLP log exporter (otlploggrpc, otlploghttp)
// with its own retries turned off.
func NewExporter(exp sdklog.Exporter, opts ExportOptions) *Exporter {
	if opts.QueueSize <= 0 {
		opts.QueueSize = 4096
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 512
	}
	if opts.BatchInterval <= 0 {
		opts.BatchInterval = time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.RetryFor <= 0 {
		opts.RetryFor = 5 * time.Minute
	}
	e := &Exporter{opts: opts, exp: exp, queue: make(chan sdklog.Record, opts.QueueSize),
		flush: make(chan chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go e.run()
	return e
}

func (e *Exporter) attach(a *Auditor) { e.a = a }

// Enabled implements sdklog.Processor.
func (e *Exporter) Enabled(context.Context, sdklog.EnabledParameters) bool { return true }

// OnEmit queues a copy of r, or drops and counts it when the queue is full.
// Events about the audit path itself (dyad.audit.*) are what a full queue
// is about, so they take the place of the oldest queued record instead.
func (e *Exporter) OnEmit(_ context.Context, r *sdklog.Record) error {
	c := r.Clone()
	select {
	case e.queue <- c:
		return nil
	default:
	}
	if strings.HasPrefix(c.EventName(), "dyad.audit.") {
		select {
		case <-e.queue:
			e.countFull()
		default:
		}
		select {
		case e.queue <- c:
			return nil
		default:
		}
	}
	e.countFull()
	return nil
}

func (e *Exporter) countFull() {
	e.queueFull.Add(1)
	e.totalFull.Add(1)
}

// QueueDepth is the number of records waiting for export.
func (e *Exporter) QueueDepth() int { return len(e.queue) }

// Counts returns records exported, dropped because the queue was full and
// dropped after retries, since the start.
func (e *Exporter) Counts() (exported, queueFull, failed uint64) {
	return e.exported.Load(), e.totalFull.Load(), e.totalFailed.Load()
}

// takeDrops returns and resets the drop counts since the last call.
func (e *Exporter) takeDrops() (queueFull, failed uint64) {
	return e.queueFull.Swap(0), e.failed.Swap(0)
}

func (e *Exporter) run() {
	defer close(e.done)
	batch := make([]sdklog.Record, 0, e.opts.BatchSize)
	t := time.NewTimer(e.opts.BatchInterval)
	defer t.Stop()
	for {
		select {
		case r := <-e.queue:
			batch = append(batch, r)
			if len(batch) < e.opts.BatchSize {
				continue
			}
		case <-t.C:
			t.Reset(e.opts.BatchInterval)
		case ack := <-e.flush:
			batch = e.drain(batch)
			e.send(batch)
			batch = batch[:0]
			close(ack)
			continue
		case <-e.stop:
			e.send(e.drain(batch))
			return
		}
		e.send(batch)
		batch = batch[:0]
	}
}

// drain moves everything queued into batch.
func (e *Exporter) drain(batch []sdklog.Record) []sdklog.Record {
	for {
		select {
		case r := <-e.queue:
			batch = append(batch, r)
		default:
			return batch
		}
	}
}

// send exports batch in BatchSize pieces, retrying each until it succeeds,
// RetryFor passes or the exporter stops.
func (e *Exporter) send(batch []sdklog.Record) {
	for len(batch) > 0 {
		n := min(len(batch), e.opts.BatchSize)
		e.sendOne(batch[:n])
		batch = batch[n:]
	}
}

func (e *Exporter) sendOne(batch []sdklog.Record) {
	start := time.Now()
	backoff := time.Second
	for {
		ctx, cancel := context.WithTimeout(context.Background(), e.opts.Timeout)
		err := e.exp.Export(ctx, batch)
		cancel()
		if err == nil {
			e.exported.Add(uint64(len(batch)))
			if e.down.CompareAndSwap(true, false) {
				d := time.Since(e.downSince)
				e.a.Emit(ExportRecovered, attribute.String(KeyProtocol, e.opts.Protocol),
					attribute.String(KeyServerAddress, e.opts.Endpoint), attribute.Float64(KeyDuration, d.Seconds()))
			}
			return
		}
		if e.down.CompareAndSwap(false, true) {
			e.downSince = time.Now()
			e.a.Emit(ExportFailed, attribute.String(KeyProtocol, e.opts.Protocol),
				attribute.String(KeyServerAddress, e.opts.Endpoint), attribute.String(KeyError, err.Error()))
		}
		if time.Since(start) >= e.opts.RetryFor || errors.Is(err, sdklog.ErrExporterShutdown) {
			e.failed.Add(uint64(len(batch)))
			e.totalFailed.Add(uint64(len(batch)))
			return
		}
		select {
		case <-e.stop:
			e.failed.Add(uint64(len(batch)))
			e.totalFailed.Add(uint64(len(batch)))
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// ForceFlush exports everything queued now.
func (e *Exporter) ForceFlush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case e.flush <- ack:
	case <-e.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown exports what is queued (a failing batch is not retried past
// ctx) and shuts the exporter down.
func (e *Exporter) Shutdown(ctx context.Context) error {
	var err error
	e.shutdown.Do(func() {
		close(e.stop)
		select {
		case <-e.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if xerr := e.exp.Shutdown(ctx); err == nil {
			err = xerr
		}
	})
	return err
}
