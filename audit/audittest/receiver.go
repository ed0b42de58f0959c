// Package audittest has real OTLP log receivers for tests: a gRPC server
// and an HTTP/protobuf server speaking the official OTLP collector services
// on loopback, and a checker of journal entries against the catalogue.
package audittest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Record is one received log record with its resource attributes.
type Record struct {
	Resource map[string]*commonpb.AnyValue
	Scope    string
	Log      *logspb.LogRecord
}

// Attr returns a record attribute, or nil.
func (r Record) Attr(key string) *commonpb.AnyValue {
	for _, kv := range r.Log.Attributes {
		if kv.Key == key {
			return kv.Value
		}
	}
	return nil
}

// Receiver collects what an OTLP exporter sends. Stop and Start simulate a
// collector outage on the same address.
type Receiver struct {
	Protocol string // "grpc" or "http/protobuf"
	addr     string

	mu      sync.Mutex // guards the following
	records []Record
	headers []map[string][]string
	stop    func()
}

// Endpoint is the URL to configure in the exporter.
func (r *Receiver) Endpoint() string { return "http://" + r.addr }

// StartGRPC starts an OTLP/gRPC logs receiver on loopback.
func StartGRPC(t testing.TB) *Receiver {
	r := &Receiver{Protocol: "grpc", addr: "127.0.0.1:0"}
	r.Start(t)
	t.Cleanup(r.Stop)
	return r
}

// StartHTTP starts an OTLP/HTTP (protobuf) logs receiver on loopback.
func StartHTTP(t testing.TB) *Receiver {
	r := &Receiver{Protocol: "http/protobuf", addr: "127.0.0.1:0"}
	r.Start(t)
	t.Cleanup(r.Stop)
	return r
}

// Start (re)starts the receiver on its address.
func (r *Receiver) Start(t testing.TB) {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port may take a moment to be free again after Stop
		if ln, err = net.Listen("tcp", r.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("receiver listen %s: %v", r.addr, err)
	}
	r.addr = ln.Addr().String()
	var stop func()
	if r.Protocol == "grpc" {
		s := grpc.NewServer()
		collogs.RegisterLogsServiceServer(s, grpcLogs{r: r})
		go s.Serve(ln)
		stop = s.Stop
	} else {
		s := &http.Server{Handler: http.HandlerFunc(r.serveHTTP), ReadHeaderTimeout: 5 * time.Second}
		go s.Serve(ln)
		stop = func() { s.Close() }
	}
	r.mu.Lock()
	r.stop = stop
	r.mu.Unlock()
}

// Stop shuts the receiver down; Start brings it back on the same address.
func (r *Receiver) Stop() {
	r.mu.Lock()
	stop := r.stop
	r.stop = nil
	r.mu.Unlock()
	if stop != nil {
		stop()
	}
}

type grpcLogs struct {
	collogs.UnimplementedLogsServiceServer
	r *Receiver
}

func (g grpcLogs) Export(ctx context.Context, req *collogs.ExportLogsServiceRequest) (*collogs.ExportLogsServiceResponse, error) {
	g.r.add(req, nil)
	return &collogs.ExportLogsServiceResponse{}, nil
}

func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/v1/logs" || req.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want POST /v1/logs application/x-protobuf", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 64<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var msg collogs.ExportLogsServiceRequest
	if err := proto.Unmarshal(body, &msg); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.add(&msg, req.Header)
	out, _ := proto.Marshal(&collogs.ExportLogsServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

func (r *Receiver) add(req *collogs.ExportLogsServiceRequest, h http.Header) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h != nil {
		r.headers = append(r.headers, h.Clone())
	}
	for _, rl := range req.ResourceLogs {
		res := map[string]*commonpb.AnyValue{}
		for _, kv := range rl.GetResource().GetAttributes() {
			res[kv.Key] = kv.Value
		}
		for _, sl := range rl.ScopeLogs {
			for _, lr := range sl.LogRecords {
				r.records = append(r.records, Record{Resource: res, Scope: sl.GetScope().GetName(), Log: lr})
			}
		}
	}
}

// Records returns what was received so far.
func (r *Receiver) Records() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.records...)
}

// Headers returns the HTTP headers of each request (HTTP receiver only).
func (r *Receiver) Headers() []map[string][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string][]string(nil), r.headers...)
}

// WaitFor waits until cond holds for the records received, polling up to
// timeout.
func (r *Receiver) WaitFor(timeout time.Duration, cond func([]Record) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if cond(r.Records()) {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out waiting for records: " + fmt.Sprint(len(r.Records()), " received"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
