package main

import (
	"math"
	"testing"
)

// TestJudgeTargets: every dyad cell is read against quic-relay, dyad-nogro
// and dyad-conn1 of the same run, and each target is judged on those
// ratios (or on the absolute figure), "not measured" when a cell is
// missing.
func TestJudgeTargets(t *testing.T) {
	r := &results{}
	r.add("bulk-down-1", sysRelay, metrics{"gbps": 2, "cpu_s_per_gb": 4})
	r.add("bulk-down-1", sysDyad, metrics{"gbps": 3, "cpu_s_per_gb": 2})
	r.add("bulk-down-1", sysNoGRO, metrics{"gbps": 1.5, "cpu_s_per_gb": 4})
	r.add("bulk-down-1", sysConn1, metrics{"gbps": 2.5, "cpu_s_per_gb": 2.5})
	r.add("idle", sysDyad, metrics{"rss_kib_per_conn_importer": 30, "rss_kib_per_conn_exporter": 33})
	r.add("impaired-bulk-down-8-loss0.1%", sysDyad, metrics{"gbps": 0.04})
	r.add("impaired-bulk-down-8-loss0.1%", sysConn1, metrics{"gbps": 0.01})
	r.finish()
	d := r.cell("bulk-down-1", sysDyad)
	if d.VsRelay["gbps"] != 1.5 || d.VsNoGRO["gbps"] != 2 || d.VsConn1["gbps"] != 1.2 {
		t.Fatalf("ratios: relay %v nogro %v conn1 %v", d.VsRelay, d.VsNoGRO, d.VsConn1)
	}
	if r.cell("bulk-down-1", sysConn1).VsRelay != nil {
		t.Fatal("a baseline's cell got ratios")
	}
	want := map[string]string{
		"bulk 1 conn down ≥ 1.3× relay":                  "met",
		"bulk 1 conn up ≥ 1.3× relay":                    "not measured",
		"CPU-seconds per GB (bulk 1 down) ≤ 0.75× relay": "met",
		"idle ≤ 32 KiB per connection, importer":         "met",
		"idle ≤ 32 KiB per connection, exporter":         "missed",
		"0.1% loss, bulk 8 conns ≥ 2× connections: 1":    "met",
		"churn ≥ 0.95× relay, audit journal on":          "not measured",
	}
	got := map[string]target{}
	for _, tg := range r.Targets {
		got[tg.Name] = tg
	}
	for name, status := range want {
		if got[name].Status != status {
			t.Errorf("%s: %q (value %v), want %q", name, got[name].Status, got[name].Value, status)
		}
	}
	if v := got["0.1% loss, bulk 8 conns ≥ 2× connections: 1"].Value; v != 4 {
		t.Errorf("loss target value %v, want 4", v)
	}
}

// TestJudgeTCPTargets: issue 21's targets read dyad-tcp against stunnel
// and dyad-auto-noudp (transport auto, every UDP datagram to the partner
// dropped) on its own: first byte through the TCP fallback within 3 s of
// start.
func TestJudgeTCPTargets(t *testing.T) {
	r := &results{}
	r.add("bulk-down-1", sysStunnel, metrics{"gbps": 2, "cpu_s_per_gb": 2})
	r.add("bulk-down-1", sysTCP, metrics{"gbps": 1.8, "cpu_s_per_gb": 3})
	r.add("rr-1", sysStunnel, metrics{"p50_us": 100})
	r.add("rr-1", sysTCP, metrics{"p50_us": 110})
	r.add("impaired-bulk-down-1-loss1%", sysStunnel, metrics{"gbps": 0.1})
	r.add("impaired-bulk-down-1-loss1%", sysTCP, metrics{"gbps": 0.014})
	r.add(scenarioFallback, sysAutoNoUDP, metrics{"setup_ms": 2400})
	r.finish()
	want := map[string]struct {
		status string
		value  float64
	}{
		"dyad-tcp bulk 1 conn down ≥ 0.8× stunnel":                 {"met", 0.9},
		"dyad-tcp CPU-seconds per GB (bulk 1 down) ≤ 1.3× stunnel": {"missed", 1.5},
		"dyad-tcp rr-1 p50 ≤ 1.2× stunnel":                         {"met", 1.1},
		"dyad-tcp 1% loss, bulk 1 conn ≥ 0.8× stunnel":             {"missed", 0.14},
		"auto, UDP blocked: first byte ≤ 3 s after start":          {"met", 2400},
		"dyad-tcp bulk 1 conn up ≥ 0.8× stunnel":                   {"not measured", 0},
	}
	got := map[string]target{}
	for _, tg := range r.Targets {
		got[tg.Name] = tg
	}
	for name, w := range want {
		g := got[name]
		if g.Status != w.status || math.Abs(g.Value-w.value) > 1e-9 {
			t.Errorf("%s: %q %v, want %q %v", name, g.Status, g.Value, w.status, w.value)
		}
	}
}
