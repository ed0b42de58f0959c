package audit_test

import (
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
)

// TestConnectionMetricsFollowConnections: the per-connection series are
// the connections of the latest collection: one that ended leaves the
// output instead of staying at its last value.
func TestConnectionMetricsFollowConnections(t *testing.T) {
	m, err := audit.NewMetrics(audit.MetricsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	n.Store(2)
	if err := m.ObserveConnections(func() []audit.ConnSample {
		out := []audit.ConnSample{}
		for i := range int(n.Load()) {
			out = append(out, audit.ConnSample{Peer: "site-b", Index: i, CongestionWindow: 40_000, SmoothedRTT: 40 * time.Millisecond,
				MinRTT: 39 * time.Millisecond, PacketsSent: 1000, PacketsLost: 3, BytesLost: 3600})
		}
		return out
	}); err != nil {
		t.Fatal(err)
	}
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		return string(b)
	}
	out := scrape()
	for _, want := range []string{`dyad_quic_connection_cwnd_bytes{conn="1",peer="site-b"} 40000`, `dyad_quic_connection_rtt_seconds{conn="0",peer="site-b"} 0.04`,
		`dyad_quic_connection_min_rtt_seconds{conn="0",peer="site-b"} 0.039`, `dyad_quic_connection_packets_sent_total{conn="0",peer="site-b"} 1000`,
		`dyad_quic_connection_packets_lost{conn="1",peer="site-b"} 3`, `dyad_quic_connection_lost_bytes{conn="1",peer="site-b"} 3600`} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, out)
		}
	}
	n.Store(1)
	if out := scrape(); strings.Contains(out, `conn="1"`) || !strings.Contains(out, `dyad_quic_connection_cwnd_bytes{conn="0",peer="site-b"} 40000`) {
		t.Errorf("after connection 1 ended, /metrics shows:\n%s", out)
	}
}
