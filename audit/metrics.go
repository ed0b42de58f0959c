package audit

import (
	"context"
	"errors"
	"fmt"
	"math"
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
	meter    metric.Meter

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
	apiInvalid      metric.Int64Counter
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
	m.meter = meter
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
	m.apiInvalid, e = meter.Int64Counter("dyad.api.responses.invalid",
		metric.WithDescription("partner responses that broke the partner's contract (dyad.api.response_invalid), by peer, service, reason and action (reported, blocked)"))
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

// ConnSample is one QUIC connection's congestion state, as quic-go reports
// it, for the dyad.quic.connection.* instruments.
type ConnSample struct {
	Peer string // the configured peer name
	// Index is the connection's number within its peer, reused once its
	// holder ended (tunnel.ConnStatus.Index): with Peer the only labels,
	// so the series are as few as the peers' connections at once, and no
	// address is ever a label.
	Index            int
	CongestionWindow uint64 // bytes, QUIC packet overhead included
	SmoothedRTT      time.Duration
	MinRTT           time.Duration
	PacketsSent      uint64 // since the connection began
	PacketsLost      uint64 // declared lost; falls when a late packet is taken back
	BytesLost        uint64 // the same, in bytes
}

// ObserveConnections reports, at each collection (a /metrics scrape or an
// OTLP push), the connections conns returns: congestion window, smoothed
// and minimum RTT, packets sent and lost, bytes lost, by peer and
// connection index. A connection that ended is no longer reported; its
// index's next holder starts its packets-sent counter from zero again (a
// counter reset, as Prometheus's rate() expects). Call it once.
func (m *Metrics) ObserveConnections(conns func() []ConnSample) error {
	if m == nil {
		return nil
	}
	var errs []error
	must := func(err error) { errs = append(errs, err) }
	cwnd, err := m.meter.Int64ObservableGauge("dyad.quic.connection.cwnd", metric.WithUnit("By"),
		metric.WithDescription("congestion window of each QUIC connection, by peer and connection index"))
	must(err)
	srtt, err := m.meter.Float64ObservableGauge("dyad.quic.connection.rtt", metric.WithUnit("s"),
		metric.WithDescription("smoothed round-trip time of each QUIC connection, by peer and connection index"))
	must(err)
	mrtt, err := m.meter.Float64ObservableGauge("dyad.quic.connection.min_rtt", metric.WithUnit("s"),
		metric.WithDescription("minimum round-trip time seen on each QUIC connection, by peer and connection index"))
	must(err)
	sent, err := m.meter.Int64ObservableCounter("dyad.quic.connection.packets.sent",
		metric.WithDescription("QUIC packets sent on each connection since it began, retransmissions included, by peer and connection index"))
	must(err)
	lost, err := m.meter.Int64ObservableGauge("dyad.quic.connection.packets.lost",
		metric.WithDescription("QUIC packets of each connection declared lost since it began (falls when one arrives after all), by peer and connection index"))
	must(err)
	lostBytes, err := m.meter.Int64ObservableGauge("dyad.quic.connection.lost", metric.WithUnit("By"),
		metric.WithDescription("bytes of each QUIC connection's packets declared lost since it began, by peer and connection index"))
	must(err)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("audit: connection metrics: %w", err)
	}
	_, err = m.meter.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		for _, c := range conns() {
			o := metric.WithAttributeSet(attribute.NewSet(attribute.String("peer", c.Peer), attribute.Int("conn", c.Index)))
			obs.ObserveInt64(cwnd, clampInt64(c.CongestionWindow), o)
			obs.ObserveFloat64(srtt, c.SmoothedRTT.Seconds(), o)
			obs.ObserveFloat64(mrtt, c.MinRTT.Seconds(), o)
			obs.ObserveInt64(sent, clampInt64(c.PacketsSent), o)
			obs.ObserveInt64(lost, clampInt64(c.PacketsLost), o)
			obs.ObserveInt64(lostBytes, clampInt64(c.BytesLost), o)
		}
		return nil
	}, cwnd, srtt, mrtt, sent, lost, lostBytes)
	if err != nil {
		return fmt.Errorf("audit: connection metrics: %w", err)
	}
	return nil
}

func clampInt64(v uint64) int64 { return int64(min(v, math.MaxInt64)) }

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

// APICount is one count of an API guard's decisions, as ObserveAPI's
// callback reports it. Every label is a configured name or comes from a
// fixed set (never a path or a value a peer chose).
type APICount struct {
	Peer, Service string
	Outcome       string // forwarded, denied, failed, stream_refused
	Status        string // forwarded: upstream's status class ("2xx"); otherwise the guard's own status, "" for a refused stream
	Reason        string // empty when forwarded
	N             int64
}

// APISize is how much of one guarded service's inventory one peer fills.
type APISize struct {
	Peer, Service                  string
	Operations, Deprecated, Shadow int64
}

// ObserveAPI registers f, called once per collection (a /metrics scrape or
// an OTLP push), for the API guards' decisions (dyad.api.requests) and
// inventory sizes (dyad.api.inventory.*). Reading the guards' own exact
// counts at collection time keeps the request path free of metric calls.
func (m *Metrics) ObserveAPI(f func() ([]APICount, []APISize)) error {
	if m == nil {
		return nil
	}
	requests, err1 := m.meter.Int64ObservableCounter("dyad.api.requests",
		metric.WithDescription("requests and streams of guarded services, by peer, service, outcome (forwarded, denied, failed, stream_refused), status and reason"))
	ops, err2 := m.meter.Int64ObservableGauge("dyad.api.inventory.operations", metric.WithDescription("operations a peer called on a guarded service"))
	dep, err3 := m.meter.Int64ObservableGauge("dyad.api.inventory.deprecated", metric.WithDescription("deprecated operations a peer still calls on a guarded service"))
	shadow, err4 := m.meter.Int64ObservableGauge("dyad.api.inventory.shadow", metric.WithDescription("shadow path shapes (matching no operation) kept for a peer on a guarded service"))
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return fmt.Errorf("audit: metrics: %w", err)
	}
	_, err := m.meter.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		counts, sizes := f()
		for _, c := range counts {
			obs.ObserveInt64(requests, c.N, opt(attribute.String("peer", c.Peer), attribute.String("service", c.Service),
				attribute.String("outcome", c.Outcome), attribute.String("status", c.Status), attribute.String("reason", c.Reason)))
		}
		for _, s := range sizes {
			o := opt(attribute.String("peer", s.Peer), attribute.String("service", s.Service))
			obs.ObserveInt64(ops, s.Operations, o)
			obs.ObserveInt64(dep, s.Deprecated, o)
			obs.ObserveInt64(shadow, s.Shadow, o)
		}
		return nil
	}, requests, ops, dep, shadow)
	if err != nil {
		return fmt.Errorf("audit: metrics: %w", err)
	}
	return nil
}

// APIResponseInvalid counts a partner response that broke its contract;
// action is reported or blocked.
func (m *Metrics) APIResponseInvalid(peer, service, reason, action string) {
	if m == nil {
		return
	}
	m.apiInvalid.Add(bg, 1, opt(attribute.String("peer", peer), attribute.String("service", service),
		attribute.String("reason", reason), attribute.String("action", action)))
}
