package main

import (
	"strings"
	"testing"
)

// TestAPINotesCPU: the rr-api note states each daemon's CPU per request,
// plain and guarded, so a run shows what the guard costs the exporting
// daemon (issue 20), not only the ratios.
func TestAPINotesCPU(t *testing.T) {
	r := &results{}
	r.add("rr-api-64", "dyad-api-plain", metrics{"rps": 20000, "p50_us": 3000, "cpu_us_per_req_exporter": 19, "cpu_us_per_req_importer": 18, "cpu_us_per_req_bench": 16.5})
	r.add("rr-api-64", "dyad-api-guarded", metrics{"rps": 17000, "p50_us": 3500, "cpu_us_per_req_exporter": 31, "cpu_us_per_req_importer": 18.5, "cpu_us_per_req_bench": 18.1})
	r.finish()
	apiNotes(r)
	if len(r.Notes) != 1 {
		t.Fatalf("notes: %q", r.Notes)
	}
	for _, want := range []string{
		"exporting daemon's CPU per request 31.0 vs 19.0 µs (importing 18.5 vs 18.0)",
		"load generator and upstream (the bench process) 18.1 vs 16.5 µs",
	} {
		if !strings.Contains(r.Notes[0], want) {
			t.Fatalf("note %q lacks %q", r.Notes[0], want)
		}
	}
}
