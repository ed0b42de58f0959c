package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
)

// AuditFile configures audit events: the local journal (always on) and the
// OTLP export (when `otlp` is set or the standard OTEL_EXPORTER_OTLP_ENDPOINT
// environment variable is).
type AuditFile struct {
	Journal JournalFile `yaml:"journal,omitempty"`
	OTLP    *OTLPFile   `yaml:"otlp,omitempty"`
	// Console mirrors every event on the operational log. Nil means true.
	Console *bool `yaml:"console,omitempty"`
	// SummaryInterval is how often suppressed events and export drops are
	// reported; default 1m.
	SummaryInterval Duration `yaml:"summary_interval,omitempty"`
}

// JournalFile configures the journal; every zero value means the default.
type JournalFile struct {
	Dir                string   `yaml:"dir,omitempty"`                 // default "audit" beside the configuration file
	Fsync              string   `yaml:"fsync,omitempty"`               // interval (default), always or never
	MaxFileMB          int      `yaml:"max_file_mb,omitempty"`         // rotate at this size; default 64
	CheckpointEvery    int      `yaml:"checkpoint_every,omitempty"`    // entries; default 1000
	CheckpointInterval Duration `yaml:"checkpoint_interval,omitempty"` // default 1m
	// OnBroken is what a start does with a journal that does not verify:
	// stop (default: refuse to start, naming the first bad entry) or
	// continue (start, recording a signed dyad.journal.break entry).
	OnBroken string `yaml:"on_broken,omitempty"`
	// OnFailure is what the daemon does while the journal cannot be
	// written (disk full, I/O error): continue (default: carry on, count the
	// events lost to the journal) or refuse (refuse new streams).
	OnFailure string `yaml:"on_failure,omitempty"`
}

// OTLPFile configures the OTLP export of events and metrics.
type OTLPFile struct {
	Endpoint string `yaml:"endpoint,omitempty"` // https://collector:4317; empty means OTEL_EXPORTER_OTLP_ENDPOINT
	Protocol string `yaml:"protocol,omitempty"` // grpc or http/protobuf; empty means OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf
	Insecure bool   `yaml:"insecure,omitempty"` // required for an http:// endpoint
	CAFile   string `yaml:"ca_file,omitempty"`
	CertFile string `yaml:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty"`
	// Headers are sent with every export; ${NAME} is replaced by the
	// environment variable NAME, so tokens stay out of the file.
	Headers         map[string]string `yaml:"headers,omitempty"`
	QueueSize       int               `yaml:"queue_size,omitempty"`       // default 4096 events
	BatchSize       int               `yaml:"batch_size,omitempty"`       // default 512 events
	BatchInterval   Duration          `yaml:"batch_interval,omitempty"`   // default 1s
	Timeout         Duration          `yaml:"timeout,omitempty"`          // one export call; default 10s
	RetryFor        Duration          `yaml:"retry_for,omitempty"`        // a failing batch, before it is dropped; default 5m
	MetricsInterval Duration          `yaml:"metrics_interval,omitempty"` // default 30s
}

// AuditConfig is the validated audit section.
type AuditConfig struct {
	Journal         journal.Options // without Signer, Origin and hooks
	RefuseStreams   bool            // on_failure: refuse
	OTLP            *audit.OTLP     // nil: no export
	Export          audit.ExportOptions
	MetricsInterval time.Duration
	SummaryInterval time.Duration
	Console         bool
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces ${NAME} with the environment variable; an unset one is
// an error naming it (never the value).
func expandEnv(s string) (string, error) {
	var missing []string
	out := envRef.ReplaceAllStringFunc(s, func(m string) string {
		name := envRef.FindStringSubmatch(m)[1]
		v, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("environment variable %s is not set", missing[0])
	}
	return out, nil
}

func (v *validator) checkAudit(f AuditFile, c *Config) {
	a := &c.Audit
	a.Console = f.Console == nil || *f.Console
	a.SummaryInterval = time.Duration(f.SummaryInterval)
	j := f.Journal
	a.Journal.Dir = j.Dir
	if a.Journal.Dir == "" {
		a.Journal.Dir = "audit"
	}
	if !filepath.IsAbs(a.Journal.Dir) {
		a.Journal.Dir = filepath.Join(filepath.Dir(v.path), a.Journal.Dir)
	}
	sync, err := journal.ParseSyncPolicy(j.Fsync)
	if err != nil {
		v.fail(err, "audit", "journal", "fsync")
	}
	a.Journal.Sync = sync
	if j.MaxFileMB < 0 || j.CheckpointEvery < 0 {
		v.fail(errors.New("must not be negative"), "audit", "journal")
	}
	a.Journal.MaxFileBytes = int64(j.MaxFileMB) << 20
	a.Journal.CheckpointEvery = j.CheckpointEvery
	a.Journal.CheckpointInterval = time.Duration(j.CheckpointInterval)
	if a.Journal.OnBroken, err = journal.ParseBrokenPolicy(j.OnBroken); err != nil {
		v.fail(err, "audit", "journal", "on_broken")
	}
	switch j.OnFailure {
	case "", "continue":
	case "refuse":
		a.RefuseStreams = true
	default:
		v.fail(fmt.Errorf("unknown on_failure policy %q (want continue or refuse)", j.OnFailure), "audit", "journal", "on_failure")
	}

	o := f.OTLP
	if o == nil {
		if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") == "" {
			return
		}
		o = &OTLPFile{} // the exporters read the environment
	}
	a.OTLP = &audit.OTLP{Endpoint: o.Endpoint, Protocol: o.Protocol, Insecure: o.Insecure,
		CAFile: v.rel(o.CAFile), CertFile: v.rel(o.CertFile), KeyFile: v.rel(o.KeyFile)}
	for name, val := range o.Headers {
		x, err := expandEnv(val)
		if err != nil {
			v.fail(err, "audit", "otlp", "headers", name)
		}
		if a.OTLP.Headers == nil {
			a.OTLP.Headers = map[string]string{}
		}
		a.OTLP.Headers[name] = x
	}
	if err := a.OTLP.Validate(); err != nil {
		v.fail(err, "audit", "otlp")
	}
	if o.QueueSize < 0 || o.BatchSize < 0 {
		v.fail(errors.New("queue_size and batch_size must not be negative"), "audit", "otlp")
	}
	a.Export = audit.ExportOptions{Protocol: a.OTLP.ProtocolOrEnv(), Endpoint: a.OTLP.EndpointOrEnv(),
		QueueSize: o.QueueSize, BatchSize: o.BatchSize, BatchInterval: time.Duration(o.BatchInterval),
		Timeout: time.Duration(o.Timeout), RetryFor: time.Duration(o.RetryFor)}
	a.MetricsInterval = time.Duration(o.MetricsInterval)
}

// rel resolves a path relative to the configuration file's folder.
func (v *validator) rel(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(filepath.Dir(v.path), p)
}
