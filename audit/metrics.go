package audit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/dyad-tunnel/dyad/audit/journal"
)

// Metrics are dyad's OpenTelemetry instruments, read by a Prometheus
// /metrics handler and, when export is configured, pushed over OTLP. A nil
// *Metrics discards everything. Labels are configured names (peers,
// services) and fixed reasons, so cardinality is bounded by the config.
type Metrics struct {
	provider *sdkmetric.MeterProvider
	handler  http.Handler

	tunnelsActive   metric.Int64UpDownCounter
	handshake       metric.Float64Histogram
	streams         metric.Int64Counter
	streamsActive   metric.Int64UpDownCounter
	bytes           metric.Int64Counter
	refusals        metric.Int64Counter
	limits          metric.Int64Counter
	recordsRejected metric.Int64Counter
	packetsDropped  metric.Int64Counter
	dropReasons     sync.Map // reason → []metric.AddOption
	events          metric.Int64Counter
	suppressed      metric.Int64Counter
	journalErrors   metric.Int64Counter
}

// MetricsOptions configure NewMetrics.
type MetricsOptions struct {
	Resource *resource.Resource
	OTLP     sdkmetric.Exporter // optional push exporter
	Interval time.Duration      // OTLP push interval; zero means 30 s
	Journal  *journal.Journal   // for the journal gauges; optional
	Export   *Exporter          // for the export gauges; optional
}

// NewMetrics creates the instruments on their own MeterProvider (never the
// global one) with a Prometheus reader on a private registry.
func NewMetrics(o MetricsOptions) (*Metrics, error) {
	reg := prometheus.NewRegistry()
	prom, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, err
	}
	opts := []sdkmetric.Option{sdkmetric.WithReader(prom)}
	if o.Resource != nil {
		opts = append(opts, sdkmetric.WithResource(o.Resource))
	}
	if o.OTLP != nil {
		if o.Interval <= 0 {
			o.Interval = 30 * time.Second
		}
		opts = append(opts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(o.OTLP, sdkmetric.WithInterval(o.Interval))))
	}
	m := &Metrics{provider: sdkmetric.NewMeterProvider(opts...), handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})}
	meter := m.provider.Meter("github.com/dyad-tunnel/dyad")
	var errs []error
	must := func(err error) { errs = append(errs, err) }
	var e error
	m.tunnelsActive, e = meter.Int64UpDownCounter("dyad.tunnels.active", metric.WithDescription("tunnels up, by peer"))
	must(e)
	m.handshake, e = meter.Float64Histogram("dyad.tunnel.handshake.duration", metric.WithUnit("s"),
		metric.WithDescription("QUIC+TLS handshake time of established tunnels"),
		metric.WithExplicitBucketBoundaries(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
	must(e)
	m.streams, e = meter.Int64Counter("dyad.streams", metric.WithDescription("streams opened, by peer, service and direction"))
	must(e)
	m.streamsActive, e = meter.Int64UpDownCounter("dyad.streams.active", metric.WithDescription("streams open, by peer and direction"))
	must(e)
	m.bytes, e = meter.Int64Counter("dyad.stream.bytes", metric.WithUnit("By"),
		metric.WithDescription("plaintext bytes of ended streams, by peer, service, direction and flow (sent, received)"))
	must(e)
	m.refusals, e = meter.Int64Counter("dyad.refusals", metric.WithDescription("work refused, by reason"))
	must(e)
	m.limits, e = meter.Int64Counter("dyad.limits.exceeded", metric.WithDescription("work a limit refused or delayed, by peer, limit and scope (peer, service, forward, handshake)"))
	must(e)
	m.recordsRejected, e = meter.Int64Counter("dyad.records.rejected", metric.WithDescription("records dropped by the record layer, by reason"))
	must(e)
	m.packetsDropped, e = meter.Int64Counter("dyad.quic.packets.dropped", metric.WithDescription("QUIC packets dropped below the tunnel, by quic-go trigger"))
	must(e)
	m.events, e = meter.Int64Counter("dyad.audit.events", metric.WithDescription("audit events emitted, by name"))
	must(e)
	m.suppressed, e = meter.Int64Counter("dyad.audit.suppressed", metric.WithDescription("rate-limited audit events counted but not written, by name"))
	must(e)
	m.journalErrors, e = meter.Int64Counter("dyad.audit.journal.errors", metric.WithDescription("events the journal could not take"))
	must(e)
	if j := o.Journal; j != nil {
		pending, err := meter.Int64ObservableGauge("dyad.audit.journal.pending", metric.WithUnit("By"), metric.WithDescription("encoded journal entries waiting for the disk"))
		must(err)
		entries, err := meter.Int64ObservableCounter("dyad.audit.journal.entries", metric.WithDescription("journal entries written since the journal began"))
		must(err)
		_, err = meter.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
			st := j.Stats()
			obs.ObserveInt64(pending, int64(st.PendingBytes))
			obs.ObserveInt64(entries, int64(st.Entries))
			return nil
		}, pending, entries)
		must(err)
	}
	if x := o.Export; x != nil {
		queue, err := meter.Int64ObservableGauge("dyad.audit.export.queue", metric.WithDescription("events waiting for OTLP export"))
		must(err)
		exported, err := meter.Int64ObservableCounter("dyad.audit.export.exported", metric.WithDescription("events exported over OTLP"))
		must(err)
		dropped, err := meter.Int64ObservableCounter("dyad.audit.export.dropped", metric.WithDescription("events the OTLP path could not deliver, by reason; the journal has them"))
		must(err)
		_, err = meter.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
			ok, full, failed := x.Counts()
			obs.ObserveInt64(queue, int64(x.QueueDepth()))
			obs.ObserveInt64(exported, int64(ok))
			obs.ObserveInt64(dropped, int64(full), metric.WithAttributes(attribute.String("reason", "queue_full")))
			obs.ObserveInt64(dropped, int64(failed), metric.WithAttributes(attribute.String("reason", "export_failed")))
			return nil
		}, queue, exported, dropped)
		must(err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("audit: metrics: %w", err)
	}
	return m, nil
}

// Handler serves the Prometheus text exposition of every instrument.
func (m *Metrics) Handler() http.Handler { return m.handler }

// Shutdown pushes the last OTLP metrics and stops the readers.
func (m *Metrics) Shutdown(ctx context.Context) error {
	if m == nil {
		return nil
	}
	return m.provider.Shutdown(ctx)
}

var bg = context.Background()

func opt(kv ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(kv...))
}

// TunnelUp counts an established tunnel and its handshake time, by peer
// and transport ("quic" or "tcp", the network.transport label).
func (m *Metrics) TunnelUp(peer, role, transport string, handshake time.Duration) {
	if m == nil {
		return
	}
	m.tunnelsActive.Add(bg, 1, opt(attribute.String("peer", peer), attribute.String(KeyTransport, transport)))
	m.handshake.Record(bg, handshake.Seconds(), opt(attribute.String("peer", peer), attribute.String("role", role),
		attribute.String(KeyTransport, transport)))
}

// TunnelDown counts a tunnel that ended; transport as TunnelUp's.
func (m *Metrics) TunnelDown(peer, transport string) {
	if m == nil {
		return
	}
	m.tunnelsActive.Add(bg, -1, opt(attribute.String("peer", peer), attribute.String(KeyTransport, transport)))
}

// StreamOpened counts a stream that opened.
func (m *Metrics) StreamOpened(peer, service, direction string) {
	if m == nil {
		return
	}
	m.streams.Add(bg, 1, opt(attribute.String("peer", peer), attribute.String("service", service), attribute.String("direction", direction)))
	m.streamsActive.Add(bg, 1, opt(attribute.String("peer", peer), attribute.String("direction", direction)))
}

// StreamClosed counts a stream that ended and its bytes.
func (m *Metrics) StreamClosed(peer, service, direction string, sent, received int64) {
	if m == nil {
		return
	}
	m.streamsActive.Add(bg, -1, opt(attribute.String("peer", peer), attribute.String("direction", direction)))
	base := []attribute.KeyValue{attribute.String("peer", peer), attribute.String("service", service), attribute.String("direction", direction)}
	m.bytes.Add(bg, sent, opt(append(base, attribute.String("flow", "sent"))...))
	m.bytes.Add(bg, received, opt(append(base, attribute.String("flow", "received"))...))
}

// Refused counts refused work by reason (peer_auth, not_allowed,
// unknown_service, upstream_unreachable, no_tunnel, refused_by_peer, …).
func (m *Metrics) Refused(reason string) {
	if m == nil {
		return
	}
	m.refusals.Add(bg, 1, opt(attribute.String("reason", reason)))
}

// LimitExceeded counts work a limit refused or delayed: a stream refused by
// a rate or concurrency limit, a stream slowed by a bandwidth bucket, a
// handshake or a local connection over its cap.
func (m *Metrics) LimitExceeded(peer, limit, scope string) {
	if m == nil {
		return
	}
	m.limits.Add(bg, 1, opt(attribute.String("peer", peer), attribute.String("limit", limit), attribute.String("scope", scope)))
}

// RecordRejected counts a record the codec dropped.
func (m *Metrics) RecordRejected(peer, reason string) {
	if m == nil {
		return
	}
	m.recordsRejected.Add(bg, 1, opt(attribute.String("peer", peer), attribute.String("reason", reason)))
}

// PacketsDropped counts QUIC packets dropped below the tunnel.
func (m *Metrics) PacketsDropped(reason string, n int64) {
	if m == nil {
		return
	}
	o, ok := m.dropReasons.Load(reason)
	if !ok {
		// Reasons are a fixed set (quic-go's triggers and the dark
		// listener's), so the cache stays small. It keeps a flood of drops
		// from building an attribute set per packet, and holds the option
		// in its slice because Add's variadic argument would be allocated
		// on each call.
		o, _ = m.dropReasons.LoadOrStore(reason, []metric.AddOption{opt(attribute.String("reason", reason))})
	}
	m.packetsDropped.Add(bg, n, o.([]metric.AddOption)...)
}

func (m *Metrics) countEvent(name string) {
	if m != nil {
		m.events.Add(bg, 1, opt(attribute.String("event", name)))
	}
}

func (m *Metrics) countSuppressed(name string) {
	if m != nil {
		m.suppressed.Add(bg, 1, opt(attribute.String("event", name)))
	}
}

func (m *Metrics) countJournalError() {
	if m != nil {
		m.journalErrors.Add(bg, 1)
	}
}
