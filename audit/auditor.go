// Package audit turns what the daemon does into audit events: each one is
// written to the local journal (the evidence of record, package
// audit/journal) and then handed to the OpenTelemetry Logs SDK, whose
// exporter sends it over OTLP to the customer's collector without ever
// blocking traffic. The catalogue of events is Catalog, documented in
// EVENTS.md. The package also owns dyad's OpenTelemetry metrics (Metrics).
//
// A nil *Auditor is valid and discards everything, so that code paths and
// tests without auditing need no special case.
package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	otellog "go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"
	"golang.org/x/time/rate"

	"github.com/dyad-tunnel/dyad/audit/journal"
)

// Severity is an event's severity.
type Severity int

// Severities, mapped to OpenTelemetry's SeverityInfo, SeverityWarn and
// SeverityError.
const (
	Info Severity = iota
	Warn
	Error
)

func (s Severity) String() string {
	switch s {
	case Warn:
		return "WARN"
	case Error:
		return "ERROR"
	}
	return "INFO"
}

func (s Severity) otel() otellog.Severity {
	switch s {
	case Warn:
		return otellog.SeverityWarn
	case Error:
		return otellog.SeverityError
	}
	return otellog.SeverityInfo
}

func (s Severity) zerolog() zerolog.Level {
	switch s {
	case Warn:
		return zerolog.WarnLevel
	case Error:
		return zerolog.ErrorLevel
	}
	return zerolog.InfoLevel
}

// KeyJournalSeq is the attribute, on exported events only, that gives the
// event's position in the journal, so an exported event can be matched with
// its journal entry (and a gap in the SIEM with the journal's entries).
const KeyJournalSeq = "dyad.journal.seq"

// Options configure an Auditor.
type Options struct {
	Journal  *journal.Journal   // the evidence of record; nil means none (tests)
	Resource *resource.Resource // service.name, service.version, …
	Export   *Exporter          // OTLP export; nil means none
	Console  zerolog.Logger     // operational log that mirrors every event; zerolog.Nop() for none
	// Burst and Rate limit each rate-limited event (Spec.RateLimit) per
	// source (Spec.Source: the peer, or the source address); the rest are
	// counted and reported once per SummaryInterval, per event and
	// source. Zero means a burst of 100 and 20 per second.
	Burst int
	Rate  rate.Limit
	// MaxSources bounds the sources tracked per event and kind of source
	// (peers, addresses); sources beyond it share one limit per event
	// until a tracked source goes idle. Zero means 1024.
	MaxSources int
	// SummaryInterval is how often suppressed and dropped counts are
	// reported; zero means one minute.
	SummaryInterval time.Duration
	// RefuseWhenJournalFails makes Admit refuse new work while the journal
	// cannot be written (audit.journal.on_failure: refuse); false carries on,
	// and every event the journal could not take is counted
	// (dyad.audit.journal.errors) and, once the disk is back, recorded by the
	// journal's dyad.journal.write_failed entry.
	RefuseWhenJournalFails bool
	Now                    func() time.Time // nil means time.Now
}

// Auditor emits audit events. It is safe for concurrent use.
type Auditor struct {
	opts     Options
	provider *sdklog.LoggerProvider
	logger   otellog.Logger
	metrics  *Metrics

	mu      sync.Mutex // guards the following fields
	buckets map[limitKey]*bucket
	groups  map[groupKey]*group

	journalDown atomic.Bool // the last Append failed; logged once per outage

	stop chan struct{}
	done chan struct{}
}

// New starts an Auditor. Close it to flush the export and the journal.
func New(opts Options) *Auditor {
	if opts.Burst <= 0 {
		opts.Burst = 100
	}
	if opts.Rate <= 0 {
		opts.Rate = 20
	}
	if opts.MaxSources <= 0 {
		opts.MaxSources = 1024
	}
	if opts.SummaryInterval <= 0 {
		opts.SummaryInterval = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	a := &Auditor{opts: opts, buckets: map[limitKey]*bucket{}, groups: map[groupKey]*group{},
		stop: make(chan struct{}), done: make(chan struct{})}
	lopts := []sdklog.LoggerProviderOption{}
	if opts.Resource != nil {
		lopts = append(lopts, sdklog.WithResource(opts.Resource))
	}
	if opts.Export != nil {
		opts.Export.attach(a)
		lopts = append(lopts, sdklog.WithProcessor(opts.Export))
	}
	a.provider = sdklog.NewLoggerProvider(lopts...)
	a.logger = a.provider.Logger("github.com/dyad-tunnel/dyad/audit")
	if opts.Journal != nil {
		for _, e := range opts.Journal.OpenedEntries() { // written before this Auditor existed
			a.emitEntry(e)
		}
	}
	go a.summaries()
	return a
}

// SetMetrics makes the Auditor count its own work (events, suppressions,
// journal depth) in m.
func (a *Auditor) SetMetrics(m *Metrics) {
	if a != nil {
		a.metrics = m
	}
}

// Metrics returns the instruments set by SetMetrics; nil (which discards)
// when none are.
func (a *Auditor) Metrics() *Metrics {
	if a == nil {
		return nil
	}
	return a.metrics
}

// Emit records one event: journal first, then export and the console. The
// attributes must be those Catalog lists for name. Emit returns once the
// event is written to the kernel (journal.Journal.Append), so the work it
// describes goes on only after the event would survive a crash of the
// process; it waits for fsync only under journal.SyncAlways, and never for
// the network. When the journal cannot be written the event still goes to
// the export and the console, and is counted as lost to the journal.
func (a *Auditor) Emit(name string, attrs ...attribute.KeyValue) {
	if a == nil {
		return
	}
	spec, ok := specs[name]
	if !ok {
		// A programming error: keep the evidence anyway, flagged.
		spec = &Spec{Name: name, Severity: Warn}
		attrs = append(attrs, attribute.Bool("dyad.uncatalogued", true))
	}
	if JournalOwn(name) {
		a.opts.Console.Error().Str("event", name).Msg("audit: only the journal writes its own events; dropped")
		return
	}
	if name == DaemonStopped && hasString(attrs, KeyReason, "error") {
		// A failed start is an error, not an ordinary stop (TestLogFormat).
		failed := *spec
		failed.Severity = Error
		spec = &failed
	}
	if spec.RateLimit && !a.allow(spec, attrs) {
		return
	}
	now := a.opts.Now()
	seq := int64(-1)
	if a.opts.Journal != nil {
		s, err := a.opts.Journal.Append(name, spec.Severity.String(), now, attrs)
		if err != nil {
			a.journalFailed(err)
		} else {
			seq = int64(s)
			a.journalOK()
		}
	}
	a.export(spec, now, seq, attrs)
	a.metrics.countEvent(name)
}

func hasString(attrs []attribute.KeyValue, key, value string) bool {
	for _, kv := range attrs {
		if string(kv.Key) == key && kv.Value.AsString() == value {
			return true
		}
	}
	return false
}

// JournalOwn reports whether name is one of the events only the journal
// writes (checkpoint, recovered, break, write_failed): Emit refuses them.
func JournalOwn(name string) bool {
	switch name {
	case JournalCheckpoint, JournalRecovered, JournalBreak, JournalWriteFailed, JournalKeyHandover:
		return true
	}
	return false
}

// emitEntry exports an entry the journal wrote by itself (a checkpoint, a
// recovery, a break, a write failure).
func (a *Auditor) emitEntry(e journal.Entry) {
	spec, ok := specs[e.Name]
	if !ok {
		return
	}
	a.export(spec, e.Time, int64(e.Seq), e.Attrs)
	a.metrics.countEvent(e.Name)
}

// OnCheckpoint is the journal.Options.OnCheckpoint hook that exports each
// checkpoint the journal signs, so the SIEM holds an external anchor, and
// the journal's other own entries.
func (a *Auditor) OnCheckpoint(e journal.Entry) {
	if a != nil {
		a.emitEntry(e)
	}
}

func (a *Auditor) export(spec *Spec, t time.Time, seq int64, attrs []attribute.KeyValue) {
	if a.opts.Export != nil {
		var r otellog.Record
		r.SetEventName(spec.Name)
		r.SetTimestamp(t)
		r.SetObservedTimestamp(t)
		r.SetSeverity(spec.Severity.otel())
		r.SetSeverityText(spec.Severity.String())
		r.SetBody(attribute.StringValue(spec.Name))
		r.AddAttributes(attrs...)
		if seq >= 0 {
			r.AddAttributes(attribute.Int64(KeyJournalSeq, seq))
		}
		a.logger.Emit(context.Background(), r)
	}
	if a.opts.Console.GetLevel() <= spec.Severity.zerolog() {
		ev := a.opts.Console.WithLevel(spec.Severity.zerolog()).Str("event", spec.Name)
		for _, kv := range attrs {
			ev = ev.Interface(string(kv.Key), kv.Value.AsInterface())
		}
		ev.Msg(spec.Name) // the line says what happened (TestLogFormat)
	}
}

// limitKey names one rate limit: an event and the source it came from.
// srcKey is the attribute that named the source ("" for an event without
// one); overflow marks the limit shared by the sources beyond MaxSources.
type limitKey struct {
	name, srcKey, src string
	overflow          bool
}

// bucket is one rate limit and what it suppressed since the last summary.
type bucket struct {
	lim        *rate.Limiter
	suppressed uint64
}

// groupKey is an event and a kind of source, whose tracked sources are
// bounded by MaxSources.
type groupKey struct{ name, srcKey string }

type group struct {
	n     int       // buckets tracked
	swept time.Time // last sweep of idle buckets
}

// source returns the attribute that identifies who caused an event: the
// first of spec.Source present in attrs.
func source(spec *Spec, attrs []attribute.KeyValue) (key, value string) {
	for _, k := range spec.Source {
		for _, kv := range attrs {
			if string(kv.Key) == k && kv.Value.AsString() != "" {
				return k, kv.Value.AsString()
			}
		}
	}
	return "", ""
}

// allow takes a token from the limit of the event's source. THREATS P5
// (one source neither floods the journal nor hides another's events),
// tested by TestRateLimitPerSource and TestRateLimitSourcesBounded.
func (a *Auditor) allow(spec *Spec, attrs []attribute.KeyValue) bool {
	srcKey, src := source(spec, attrs)
	k := limitKey{name: spec.Name, srcKey: srcKey, src: src}
	now := a.opts.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.buckets[k]
	if b == nil {
		gk := groupKey{spec.Name, srcKey}
		g := a.groups[gk]
		if g == nil {
			g = &group{}
			a.groups[gk] = g
		}
		if g.n >= a.opts.MaxSources && now.Sub(g.swept) >= time.Second {
			a.sweep(gk, g, now)
		}
		if g.n >= a.opts.MaxSources {
			// Full: new sources share one limit rather than evict a
			// tracked one, so a flood of sources cannot take another
			// source's limit away.
			k = limitKey{name: spec.Name, overflow: true}
		}
		if b = a.buckets[k]; b == nil {
			b = &bucket{lim: rate.NewLimiter(a.opts.Rate, a.opts.Burst)}
			a.buckets[k] = b
			if !k.overflow {
				g.n++
			}
		}
	}
	if b.lim.AllowN(now, 1) {
		return true
	}
	b.suppressed++
	a.metrics.countSuppressed(spec.Name)
	return false
}

// sweep forgets the buckets of group gk that are idle: full again and with
// nothing suppressed to report, so a new bucket would behave the same.
// Called with mu held.
func (a *Auditor) sweep(gk groupKey, g *group, now time.Time) {
	g.swept = now
	for k, b := range a.buckets {
		if k.overflow || k.name != gk.name || k.srcKey != gk.srcKey {
			continue
		}
		if b.suppressed == 0 && b.lim.TokensAt(now) >= float64(a.opts.Burst) {
			delete(a.buckets, k)
			g.n--
		}
	}
}

func (a *Auditor) journalFailed(err error) {
	a.metrics.countJournalError()
	if !a.journalDown.Swap(true) {
		a.opts.Console.Error().Err(err).Msg("audit journal cannot be written; events still go to the console and OTLP, and are counted as lost to the journal")
	}
}

// journalOK notes that the journal takes events again, so that its next
// failure is logged again.
func (a *Auditor) journalOK() {
	if a.journalDown.Load() && a.journalDown.CompareAndSwap(true, false) {
		a.opts.Console.Warn().Msg("audit journal is written again; its dyad.journal.write_failed entry counts what it lost")
	}
}

// ErrJournalUnavailable is Admit's refusal: the journal cannot be written
// and the policy is to refuse new work rather than do it without evidence.
var ErrJournalUnavailable = errors.New("audit journal cannot be written")

// Admit says whether new work (a stream) may start: nil unless
// RefuseWhenJournalFails is set and the journal is failed (disk full, I/O
// error). The tunnel asks before it admits a stream. THREATS P7, tested by
// TestJournalFailureRefusesStreams.
func (a *Auditor) Admit() error {
	if a == nil || !a.opts.RefuseWhenJournalFails || a.opts.Journal == nil {
		return nil
	}
	if err := a.opts.Journal.Err(); err != nil {
		return fmt.Errorf("%w: %v", ErrJournalUnavailable, err)
	}
	return nil
}

// summaries reports suppressed events and export drops once per interval.
func (a *Auditor) summaries() {
	defer close(a.done)
	t := time.NewTicker(a.opts.SummaryInterval)
	defer t.Stop()
	last := a.opts.Now()
	for {
		select {
		case <-a.stop:
			a.summarize(last)
			return
		case <-t.C:
			last = a.summarize(last)
		}
	}
}

func (a *Auditor) summarize(since time.Time) time.Time {
	now := a.opts.Now()
	window := now.Sub(since).Seconds()
	type count struct {
		limitKey
		n uint64
	}
	var sup []count
	a.mu.Lock()
	for k, b := range a.buckets {
		if b.suppressed > 0 {
			sup = append(sup, count{k, b.suppressed})
			b.suppressed = 0
		}
	}
	for gk, g := range a.groups {
		a.sweep(gk, g, now)
		if g.n == 0 {
			delete(a.groups, gk)
		}
	}
	a.mu.Unlock()
	for _, c := range sup {
		attrs := []attribute.KeyValue{attribute.String(KeyEventName, c.name), attribute.Int64(KeyCount, int64(c.n)), attribute.Float64(KeyWindow, window)}
		switch {
		case c.overflow:
			attrs = append(attrs, attribute.Bool(KeyOverflow, true))
		case c.srcKey != "":
			attrs = append(attrs, attribute.String(c.srcKey, c.src))
		}
		a.Emit(EventsSuppressed, attrs...)
	}
	if e := a.opts.Export; e != nil {
		if full, failed := e.takeDrops(); full+failed > 0 {
			a.Emit(ExportDropped, attribute.Int64(KeyQueueFull, int64(full)), attribute.Int64(KeyExportFailed, int64(failed)), attribute.Float64(KeyWindow, window))
		}
	}
	return now
}

// Flush reports pending summaries and pushes queued events to the exporter,
// waiting until ctx ends at most.
func (a *Auditor) Flush(ctx context.Context) error {
	if a == nil {
		return nil
	}
	a.summarize(a.opts.Now())
	return a.provider.ForceFlush(ctx)
}

// Close reports the last summaries, flushes the export (waiting until ctx
// ends at most) and stops. It does not close the journal, which the caller
// owns and closes afterwards, so that its final checkpoint is written.
func (a *Auditor) Close(ctx context.Context) error {
	if a == nil {
		return nil
	}
	close(a.stop)
	<-a.done
	if err := a.provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("audit: export shutdown: %w", err)
	}
	return nil
}
