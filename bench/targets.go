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
	Name     string  `json:"name"`
	Scenario string  `json:"scenario"`
	Figure   string  `json:"figure"`
	Against  string  `json:"against,omitempty"`
	Want     string  `json:"want"` // ">= 1.3" or "<= 32"
	Value    float64 `json:"value"`
	// Status is "met", "missed" or "not measured" (a cell is missing,
	// e.g. under -only).
	Status string `json:"status"`
}

// targetSpec is a target before a run judges it.
type targetSpec struct {
	name, scenario, figure, against string
	atLeast                         bool
	bound                           float64
}

// targetSpecs are issue 18's targets (the README's Performance section).
var targetSpecs = []targetSpec{
	{"bulk 1 conn down ≥ 1.3× relay", "bulk-down-1", "gbps", sysRelay, true, 1.3},
	{"bulk 1 conn up ≥ 1.3× relay", "bulk-up-1", "gbps", sysRelay, true, 1.3},
	{"bulk 8 conns down ≥ 1.5× relay", "bulk-down-8", "gbps", sysRelay, true, 1.5},
	{"bulk 8 conns up ≥ 1.5× relay", "bulk-up-8", "gbps", sysRelay, true, 1.5},
	{"CPU-seconds per GB (bulk 1 down) ≤ 0.75× relay", "bulk-down-1", "cpu_s_per_gb", sysRelay, false, 0.75},
	{"churn ≥ 0.95× relay, audit journal on", "churn", "conns_per_s", sysRelay, true, 0.95},
	{"idle ≤ 32 KiB per connection, importer", "idle", "rss_kib_per_conn_importer", "", false, 32},
	{"idle ≤ 32 KiB per connection, exporter", "idle", "rss_kib_per_conn_exporter", "", false, 32},
	{"0.1% loss, bulk 8 conns ≥ 2× connections: 1", "impaired-bulk-down-8-loss0.1%", "gbps", sysConn1, true, 2},
}

// judge evaluates targetSpecs on the medians of a finished run.
func (r *results) judge() []target {
	var out []target
	for _, s := range targetSpecs {
		op := "<="
		if s.atLeast {
			op = ">="
		}
		t := target{Name: s.name, Scenario: s.scenario, Figure: s.figure, Against: s.against,
			Want: fmt.Sprintf("%s %g", op, s.bound), Status: "not measured"}
		d := r.cell(s.scenario, sysDyad)
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
		fmt.Fprintf(w, "\nIssue 18's targets on this run's medians (reported, never enforced).%s\n\n| target | dyad | status |\n| --- | --- | --- |\n", caveat)
	} else {
		fmt.Fprintf(w, "\ntargets (issue 18; reported, never enforced):%s\n", caveat)
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
			fmt.Fprintf(w, "  %-52s %-22s %s\n", t.Name, v, t.Status)
		}
	}
}
