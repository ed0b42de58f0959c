package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// auditing is the daemon's audit plumbing: the journal, the OTLP exporter
// (optional), the metrics and the Auditor that feeds them.
type auditing struct {
	journal *journal.Journal
	auditor *audit.Auditor
	metrics *audit.Metrics
}

// journalOrigin names the journal's checkpoints (and their signing key).
func journalOrigin(site string) string { return "dyad/" + site }

func startAudit(cfg *Config, keys siteKeys, log zerolog.Logger) (*auditing, error) {
	id := keys.cur
	ctx := context.Background()
	host, _ := os.Hostname()
	// OTEL_RESOURCE_ATTRIBUTES first (e.g. k8s.pod.name from a chart),
	// so that dyad's own attributes below win over it.
	res, err := resource.New(ctx, resource.WithFromEnv(), resource.WithAttributes(
		attribute.String("service.name", "dyad"),
		attribute.String("service.version", Version),
		attribute.String("service.instance.id", id.Public().Fingerprint()),
		attribute.String("host.name", host),
		attribute.String("dyad.site", cfg.Site),
	))
	if err != nil {
		return nil, fmt.Errorf("audit resource: %w", err)
	}
	origin := journalOrigin(cfg.Site)
	signer, err := journal.NewSigner(origin, id.Signer())
	if err != nil {
		return nil, err
	}
	var aud atomic.Pointer[audit.Auditor] // the journal's hook runs before New returns
	jopts := cfg.Audit.Journal
	jopts.Origin, jopts.Signer = origin, signer
	// The journal outlives identity rotations (journal/handover.go).
	if jopts.Key, jopts.Previous, err = journalKeys(origin, keys); err != nil {
		return nil, err
	}
	jopts.Holder = fmt.Sprintf("dyad %s, site %s, config %s", Version, cfg.Site, cfg.Path)
	jopts.OnCheckpoint = func(e journal.Entry) { aud.Load().OnCheckpoint(e) }
	j, err := journal.Open(jopts)
	if errors.Is(err, journal.ErrBroken) {
		// THREATS P7, tested by TestRewrittenJournalRefused.
		return nil, fmt.Errorf("audit: %w\n  see dyad audit verify --config %s; to start anyway and record this break in the journal for ever, "+
			"run dyad run --accept-broken-journal (or set audit.journal.on_broken: continue)", err, cfg.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("audit journal %s: %w", jopts.Dir, err)
	}
	a := &auditing{journal: j}
	var export *audit.Exporter
	mopts := audit.MetricsOptions{Resource: res, Journal: j, Interval: cfg.Audit.MetricsInterval}
	if o := cfg.Audit.OTLP; o != nil {
		logExp, err := audit.NewLogExporter(ctx, *o)
		if err != nil {
			j.Close()
			return nil, fmt.Errorf("audit otlp: %w", err)
		}
		export = audit.NewExporter(logExp, cfg.Audit.Export)
		if mopts.OTLP, err = audit.NewMetricExporter(ctx, *o); err != nil {
			j.Close()
			return nil, fmt.Errorf("audit otlp metrics: %w", err)
		}
		mopts.Export = export
		log.Info().Str("protocol", o.ProtocolOrEnv()).Str("endpoint", o.EndpointOrEnv()).Msg("audit events exported over OTLP")
	}
	if a.metrics, err = audit.NewMetrics(mopts); err != nil {
		j.Close()
		return nil, err
	}
	console := zerolog.Nop()
	if cfg.Audit.Console {
		console = log
	}
	a.auditor = audit.New(audit.Options{Journal: j, Resource: res, Export: export, Console: console,
		SummaryInterval: cfg.Audit.SummaryInterval, RefuseWhenJournalFails: cfg.Audit.RefuseStreams})
	a.auditor.SetMetrics(a.metrics)
	aud.Store(a.auditor)
	return a, nil
}

// close flushes the export, signs a last checkpoint (exported too, as an
// anchor) and closes the journal.
func (a *auditing) close(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	a.auditor.Flush(ctx)
	err := a.journal.Checkpoint()
	if cerr := a.auditor.Close(ctx); err == nil {
		err = cerr
	}
	a.metrics.Shutdown(ctx)
	if cerr := a.journal.Close(); err == nil {
		err = cerr
	}
	return err
}

// configAttrs describe a configuration for config events.
func configAttrs(cfg *Config) []attribute.KeyValue {
	var peers, keys, services, forwards []string
	for _, p := range cfg.Tunnel.Peers {
		peers = append(peers, p.Name)
		keys = append(keys, p.Name+"="+p.Key.Fingerprint())
	}
	for _, s := range cfg.Tunnel.Services {
		services = append(services, s.Name)
	}
	for _, f := range cfg.File.Forwards {
		forwards = append(forwards, f.Listen+"→"+f.Peer+"/"+f.Service)
	}
	sort.Strings(peers)
	sort.Strings(keys)
	sort.Strings(services)
	sort.Strings(forwards)
	var specs []string
	for _, name := range sortedKeys(cfg.APIs) {
		specs = append(specs, name+"="+cfg.APIs[name].Spec.SHA256)
	}
	for _, f := range cfg.File.Forwards { // the partners' contracts responses are checked against
		if p := cfg.ForwardAPIs[f.key()]; p != nil {
			specs = append(specs, f.Listen+"→"+f.Peer+"/"+f.Service+"="+p.Spec.SHA256)
		}
	}
	attrs := []attribute.KeyValue{
		attribute.String(audit.KeyConfigPath, cfg.Path),
		attribute.String(audit.KeyConfigSHA256, cfg.SHA256),
		attribute.StringSlice(audit.KeyPeers, peers),
		attribute.StringSlice(audit.KeyServices, services),
		attribute.StringSlice(audit.KeyForwards, forwards),
		attribute.StringSlice(audit.KeyPeerKeys, keys),
	}
	if len(specs) > 0 { // the API contracts in force (README, "API guard")
		attrs = append(attrs, attribute.StringSlice(audit.KeyAPISpecSHA256, specs))
	}
	return attrs
}

func startedAttrs(cfg *Config, id *identity.Identity, listen string) []attribute.KeyValue {
	host, portStr, _ := net.SplitHostPort(listen)
	port, _ := strconv.Atoi(portStr)
	suite := cfg.Tunnel.Suite
	if suite == 0 {
		suite = codec.SuiteAES256GCM
	}
	fips := CurrentFIPS()
	return []attribute.KeyValue{
		attribute.String(audit.KeyServiceVersion, Version),
		attribute.String(audit.KeyFingerprint, id.Public().Fingerprint()),
		attribute.Bool(audit.KeyFIPS, fips.Enabled),
		attribute.String(audit.KeyFIPSModule, fips.Module),
		attribute.Bool(audit.KeyFIPSCertified, fips.Certified),
		attribute.Bool(audit.KeyFIPSRequired, cfg.File.FIPS),
		attribute.Bool(audit.KeyRequirePQ, cfg.Tunnel.RequirePostQuantum),
		attribute.String(audit.KeyIdentityCreated, identityCreated(id)),
		attribute.String(audit.KeyCodecSuite, suite.String()),
		attribute.String(audit.KeyTLSCurve, preferredGroup(cfg).String()),
		attribute.String(audit.KeyServerAddress, host),
		attribute.Int64(audit.KeyServerPort, int64(port)),
	}
}
