package main

import (
	"fmt"
	"io"
	"math"
)

// target is one of issue 18's targets judged on a run: a figure of dyad's
// cell, as a ratio to a baseline system's median of the same run, or
// absolute when Against is empty. The bench reports targets; it never fails
// on them (timings on shared machines are not a test).
type target struct {
	Name     string `json:"name"`
	Scenario string `json:"scenario"`
	// System is the judged system when it is not dyad (dyad-tcp,
	// dyad-auto-noudp).
	System  string  `json:"system,omitempty"`
	Figure  string  `json:"figure"`
	Against string  `json:"against,omitempty"`
	Want    string  `json:"want"` // ">= 1.3" or "<= 32"
	Value   float64 `json:"value"`
	// Status is "met", "missed" or "not measured" (a cell is missing,
	// e.g. under -only).
	Status string `json:"status"`
}

// targetSpec is a target before a run judges it.
type targetSpec struct {
	name, scenario, figure, against string
	atLeast                         bool
	bound                           float64
	system                          string // the judged system; empty means sysDyad
}

// targetSpecs are issue 18's and issue 21's targets (the README's
// Performance section).
var targetSpecs = []targetSpec{
	{"bulk 1 conn down ≥ 1.3× relay", "bulk-down-1", "gbps", sysRelay, true, 1.3, ""},
	{"bulk 1 conn up ≥ 1.3× relay", "bulk-up-1", "gbps", sysRelay, true, 1.3, ""},
	{"bulk 8 conns down ≥ 1.5× relay", "bulk-down-8", "gbps", sysRelay, true, 1.5, ""},
	{"bulk 8 conns up ≥ 1.5× relay", "bulk-up-8", "gbps", sysRelay, true, 1.5, ""},
	{"CPU-seconds per GB (bulk 1 down) ≤ 0.75× relay", "bulk-down-1", "cpu_s_per_gb", sysRelay, false, 0.75, ""},
	{"churn ≥ 0.95× relay, audit journal on", "churn", "conns_per_s", sysRelay, true, 0.95, ""},
	{"idle ≤ 32 KiB per connection, importer", "idle", "rss_kib_per_conn_importer", "", false, 32, ""},
	{"idle ≤ 32 KiB per connection, exporter", "idle", "rss_kib_per_conn_exporter", "", false, 32, ""},
	{"0.1% loss, bulk 8 conns ≥ 2× connections: 1", "impaired-bulk-down-8-loss0.1%", "gbps", sysConn1, true, 2, ""},
	// Issue 21: the TCP fallback against stunnel (TLS over kernel TCP), and
	// transport auto where UDP gets no answer.
	{"dyad-tcp bulk 1 conn down ≥ 0.8× stunnel", "bulk-down-1", "gbps", sysStunnel, true, 0.8, sysTCP},
	{"dyad-tcp bulk 1 conn up ≥ 0.8× stunnel", "bulk-up-1", "gbps", sysStunnel, true, 0.8, sysTCP},
	{"dyad-tcp CPU-seconds per GB (bulk 1 down) ≤ 1.3× stunnel", "bulk-down-1", "cpu_s_per_gb", sysStunnel, false, 1.3, sysTCP},
	{"dyad-tcp rr-1 p50 ≤ 1.2× stunnel", "rr-1", "p50_us", sysStunnel, false, 1.2, sysTCP},
	{"dyad-tcp 1% loss, bulk 1 conn ≥ 0.8× stunnel", "impaired-bulk-down-1-loss1%", "gbps", sysStunnel, true, 0.8, sysTCP},
	{"auto, UDP blocked: first byte ≤ 3 s after start", scenarioFallback, "setup_ms", "", false, 3000, sysAutoNoUDP},
}

// judge evaluates targetSpecs on the medians of a finished run.
func (r *results) judge() []target {
	var out []target
	for _, s := range targetSpecs {
		op := "<="
		if s.atLeast {
			op = ">="
		}
		t := target{Name: s.name, Scenario: s.scenario, System: s.system, Figure: s.figure, Against: s.against,
			Want: fmt.Sprintf("%s %g", op, s.bound), Status: "not measured"}
		sys := s.system
		if sys == "" {
			sys = sysDyad
		}
		d := r.cell(s.scenario, sys)
		v, ok := 0.0, false
		if d != nil {
			v, ok = d.Median[s.figure]
		}
		if ok && s.against != "" {
			b := r.cell(s.scenario, s.against)
			ok = b != nil && b.Median[s.figure] != 0
			if ok {
				v /= b.Median[s.figure]
			}
		}
		if ok && !math.IsNaN(v) {
			t.Value, t.Status = v, "missed"
			if s.atLeast && v >= s.bound || !s.atLeast && v <= s.bound {
				t.Status = "met"
			}
		}
		out = append(out, t)
	}
	return out
}

// targetTable writes the judged targets.
func (r *results) targetTable(w io.Writer, markdown bool) {
	caveat := ""
	if r.Mode == "quick" {
		caveat = " Quick mode: one repetition of short cells (300 ms, a few RTTs on the emulated link), a smoke test, not a judgement."
	}
	if markdown {
		fmt.Fprintf(w, "\nIssues 18 and 21's targets on this run's medians (reported, never enforced).%s\n\n| target | dyad | status |\n| --- | --- | --- |\n", caveat)
	} else {
		fmt.Fprintf(w, "\ntargets (issues 18 and 21; reported, never enforced):%s\n", caveat)
	}
	for _, t := range r.Targets {
		v := "–"
		if t.Status != "not measured" {
			v = num(t.Value)
			if t.Against != "" {
				v = fmt.Sprintf("%.2fx %s", t.Value, t.Against)
			}
		}
		if markdown {
			fmt.Fprintf(w, "| %s | %s | %s |\n", t.Name, v, t.Status)
		} else {
			fmt.Fprintf(w, "  %-58s %-22s %s\n", t.Name, v, t.Status)
		}
	}
}
