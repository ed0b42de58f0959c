package audit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
)

// OTLP protocols.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// OTLP says where and how to export. An empty Endpoint or Protocol falls
// back to the standard OTEL_EXPORTER_OTLP_* environment variables, which
// the exporters read themselves (endpoint, headers, certificate, timeout).
type OTLP struct {
	Endpoint string            // URL: https://collector:4317 (grpc) or https://collector:4318 (http/protobuf)
	Protocol string            // ProtocolGRPC or ProtocolHTTP; empty means OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf
	Insecure bool              // required for an http:// endpoint
	CAFile   string            // PEM roots for the collector's certificate; empty means the system roots
	CertFile string            // client certificate for mutual TLS (optional)
	KeyFile  string            // its key
	Headers  map[string]string // e.g. Authorization for a SaaS collector; never logged
}

// ProtocolOrEnv returns the protocol in force.
func (o *OTLP) ProtocolOrEnv() string {
	if o.Protocol != "" {
		return o.Protocol
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return ProtocolHTTP
}

// EndpointOrEnv returns the endpoint in force, for events and logs, with
// any password in it redacted.
func (o *OTLP) EndpointOrEnv() string {
	e := o.Endpoint
	for _, k := range []string{"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if e == "" {
			e = os.Getenv(k)
		}
	}
	if e == "" {
		return "(exporter default)"
	}
	if u, err := url.Parse(e); err == nil {
		return u.Redacted()
	}
	return "(unparsable endpoint)"
}

// Validate checks the settings without touching the network.
func (o *OTLP) Validate() error {
	switch o.ProtocolOrEnv() {
	case ProtocolGRPC, ProtocolHTTP:
	default:
		return fmt.Errorf("protocol %q: want %q or %q", o.ProtocolOrEnv(), ProtocolGRPC, ProtocolHTTP)
	}
	if o.Endpoint != "" {
		u, err := url.Parse(o.Endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return fmt.Errorf("endpoint %q: want a URL such as https://collector:4317", o.Endpoint)
		}
		if u.Scheme == "http" && !o.Insecure {
			return fmt.Errorf("endpoint %q is plaintext http: set insecure: true to allow it", o.Endpoint)
		}
		if u.Scheme == "https" && o.Insecure {
			return fmt.Errorf("endpoint %q is https but insecure is true: choose one", o.Endpoint)
		}
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("cert_file and key_file go together")
	}
	_, err := o.tlsConfig()
	return err
}

// tlsConfig returns nil when the defaults (system roots, env) apply.
func (o *OTLP) tlsConfig() (*tls.Config, error) {
	if o.CAFile == "" && o.CertFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file/key_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// reconnect caps gRPC's reconnection back-off at 5 s (its default grows to
// 2 min), so that export resumes within seconds of a collector's return.
var reconnect = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
	MinConnectTimeout: 5 * time.Second,
})

// NewLogExporter builds the OTLP log exporter, with its own retries off
// (Exporter retries).
func NewLogExporter(ctx context.Context, o OTLP) (sdklog.Exporter, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tc, _ := o.tlsConfig()
	if o.ProtocolOrEnv() == ProtocolGRPC {
		opts := []otlploggrpc.Option{otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: false}),
			otlploggrpc.WithDialOption(reconnect)}
		if o.Endpoint != "" {
			opts = append(opts, otlploggrpc.WithEndpointURL(o.Endpoint))
		}
		if o.Insecure {
			opts = append(opts, otlploggrpc.WithInsecure())
		}
		if tc != nil {
			opts = append(opts, otlploggrpc.WithTLSCredentials(credentials.NewTLS(tc)))
		}
		if len(o.Headers) > 0 {
			opts = append(opts, otlploggrpc.WithHeaders(o.Headers))
		}
		return otlploggrpc.New(ctx, opts...)
	}
	opts := []otlploghttp.Option{otlploghttp.WithRetry(otlploghttp.RetryConfig{Enabled: false})}
	if o.Endpoint != "" {
		opts = append(opts, otlploghttp.WithEndpointURL(joinPath(o.Endpoint, "/v1/logs")))
	}
	if o.Insecure {
		opts = append(opts, otlploghttp.WithInsecure())
	}
	if tc != nil {
		opts = append(opts, otlploghttp.WithTLSClientConfig(tc))
	}
	if len(o.Headers) > 0 {
		opts = append(opts, otlploghttp.WithHeaders(o.Headers))
	}
	return otlploghttp.New(ctx, opts...)
}

// NewMetricExporter builds the OTLP metric exporter for the same collector.
func NewMetricExporter(ctx context.Context, o OTLP) (sdkmetric.Exporter, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tc, _ := o.tlsConfig()
	if o.ProtocolOrEnv() == ProtocolGRPC {
		opts := []otlpmetricgrpc.Option{otlpmetricgrpc.WithDialOption(reconnect)}
		if o.Endpoint != "" {
			opts = append(opts, otlpmetricgrpc.WithEndpointURL(o.Endpoint))
		}
		if o.Insecure {
			opts = append(opts, otlpmetricgrpc.WithInsecure())
		}
		if tc != nil {
			opts = append(opts, otlpmetricgrpc.WithTLSCredentials(credentials.NewTLS(tc)))
		}
		if len(o.Headers) > 0 {
			opts = append(opts, otlpmetricgrpc.WithHeaders(o.Headers))
		}
		return otlpmetricgrpc.New(ctx, opts...)
	}
	var opts []otlpmetrichttp.Option
	if o.Endpoint != "" {
		opts = append(opts, otlpmetrichttp.WithEndpointURL(joinPath(o.Endpoint, "/v1/metrics")))
	}
	if o.Insecure {
		opts = append(opts, otlpmetrichttp.WithInsecure())
	}
	if tc != nil {
		opts = append(opts, otlpmetrichttp.WithTLSClientConfig(tc))
	}
	if len(o.Headers) > 0 {
		opts = append(opts, otlpmetrichttp.WithHeaders(o.Headers))
	}
	return otlpmetrichttp.New(ctx, opts...)
}

// joinPath appends the signal path to a base endpoint that has none, as the
// OTEL_EXPORTER_OTLP_ENDPOINT convention does.
func joinPath(endpoint, path string) string {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Path != "" && u.Path != "/") {
		return endpoint
	}
	u.Path = path
	return u.String()
}
