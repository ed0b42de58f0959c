package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// results is bench/out/results.json; bench/RESULTS.md documents it.
type results struct {
	Mode    string  `json:"mode"`
	Date    string  `json:"date"`
	Seconds float64 `json:"seconds"`
	Machine machine `json:"machine"`
	// Link is the emulated link: its models, counts and congestion
	// controls, or why its scenarios were skipped (nil when not asked for).
	Link *linkRecord `json:"link,omitempty"`
	// DyadLimits are the limits the bench configured on both dyad daemons.
	DyadLimits limitsRecord `json:"dyad_limits"`
	Notes      []string     `json:"notes"`
	Cells      []*cell      `json:"cells"`
	// Targets are issue 18's targets, judged on this run's medians.
	Targets []target `json:"targets"`
}

// limitsRecord is the dyad configuration a run measured with: the
// tunnel.limits of both sites and the forward's max_connections.
type limitsRecord struct {
	StreamsPerSecond float64 `json:"streams_per_second"`
	StreamBurst      int     `json:"stream_burst"`
	MaxStreams       int     `json:"max_streams"`
	MaxConnections   int     `json:"max_connections"`
}

// cell is one scenario on one system: every repetition and the summary.
type cell struct {
	Scenario string    `json:"scenario"`
	System   string    `json:"system"`
	Runs     []metrics `json:"runs"`
	Median   metrics   `json:"median"`
	Min      metrics   `json:"min"`
	Max      metrics   `json:"max"`
	VsRelay  metrics   `json:"dyad_vs_quic_relay,omitempty"`
	VsDirect metrics   `json:"dyad_vs_direct,omitempty"`
	// VsNoGRO and VsConn1 compare dyad with the same build without GRO
	// and with one connection per peer.
	VsNoGRO metrics `json:"dyad_vs_dyad_nogro,omitempty"`
	VsConn1 metrics `json:"dyad_vs_dyad_conn1,omitempty"`
	// VsBase compares dyad with the -dyad-base build, when one ran.
	VsBase metrics `json:"dyad_vs_dyad_base,omitempty"`
	// Link is, for an emulated-link cell, each repetition's drops outside
	// the model and the sender's congestion windows (linkcell.go).
	Link []linkCell `json:"link,omitempty"`
}

func (r *results) add(scenario, system string, m metrics) {
	for _, c := range r.Cells {
		if c.Scenario == scenario && c.System == system {
			c.Runs = append(c.Runs, m)
			return
		}
	}
	r.Cells = append(r.Cells, &cell{Scenario: scenario, System: system, Runs: []metrics{m}})
}

func (r *results) cell(scenario, system string) *cell {
	for _, c := range r.Cells {
		if c.Scenario == scenario && c.System == system {
			return c
		}
	}
	return nil
}

// finish computes medians, ranges and dyad's ratios to the baselines.
func (r *results) finish() {
	for _, c := range r.Cells {
		c.Median, c.Min, c.Max = metrics{}, metrics{}, metrics{}
		for k := range c.Runs[0] {
			var v []float64
			for _, run := range c.Runs {
				v = append(v, run[k])
			}
			slices.Sort(v)
			c.Min[k], c.Max[k] = v[0], v[len(v)-1]
			if len(v)%2 == 1 {
				c.Median[k] = v[len(v)/2]
			} else {
				c.Median[k] = (v[len(v)/2-1] + v[len(v)/2]) / 2
			}
		}
	}
	for _, c := range r.Cells {
		if c.System != sysDyad {
			continue
		}
		ratio := func(base *cell) metrics {
			if base == nil {
				return nil
			}
			m := metrics{}
			for k, v := range c.Median {
				if b := base.Median[k]; b != 0 {
					m[k] = v / b
				}
			}
			return m
		}
		c.VsRelay = ratio(r.cell(c.Scenario, sysRelay))
		c.VsDirect = ratio(r.cell(c.Scenario, sysDirect))
		c.VsNoGRO = ratio(r.cell(c.Scenario, sysNoGRO))
		c.VsConn1 = ratio(r.cell(c.Scenario, sysConn1))
		c.VsBase = ratio(r.cell(c.Scenario, sysBase))
	}
	r.Targets = r.judge()
}

// headline is the figure a scenario is judged by, and its unit.
func headline(scenario string) (key, unit string) {
	switch {
	case strings.Contains(scenario, "bulk"):
		return "gbps", "Gbit/s"
	case strings.Contains(scenario, "rr"):
		return "p99_us", "p99 µs"
	case scenario == "churn":
		return "conns_per_s", "conn/s"
	case scenario == "idle":
		return "rss_kib_per_conn_importer", "KiB/conn (importer)"
	case strings.HasPrefix(scenario, "setup"): // setup, setup-fallback
		return "setup_ms", "ms"
	}
	return "", ""
}

// extra lists the secondary figures shown in the table.
var extra = map[string][]string{
	"bulk":  {"cpu_s_per_gb", "peak_rss_mib", "emu_cpu_pct", "drops_outside_model"},
	"rr":    {"rps", "p50_us", "p90_us", "p999_us", "emu_cpu_pct", "drops_outside_model"},
	"idle":  {"conns", "rss_kib_per_conn_exporter"},
	"churn": {"conns"},
}

func extrasFor(scenario string) []string {
	for k, v := range extra {
		if strings.Contains(scenario, k) {
			return v
		}
	}
	return nil
}

func (r *results) scenarios() []string {
	var out []string
	for _, c := range r.Cells {
		if !slices.Contains(out, c.Scenario) {
			out = append(out, c.Scenario)
		}
	}
	return out
}

// table writes the human-readable summary.
func (r *results) table(w io.Writer, markdown bool) {
	row := func(cols ...string) {
		if markdown {
			fmt.Fprintf(w, "| %s |\n", strings.Join(cols, " | "))
		} else {
			fmt.Fprintf(w, "%-30s %-11s %-26s %-9s %-9s %-9s %-9s %s\n", cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7])
		}
	}
	if markdown {
		row("scenario", "system", "median [min–max]", "dyad/quic-relay", "dyad/dyad-nogro", "dyad/dyad-conn1", "dyad/direct", "also (medians)")
		row("---", "---", "---", "---", "---", "---", "---", "---")
	} else {
		row("scenario", "system", "median [min–max]", "/relay", "/nogro", "/conn1", "/direct", "also (medians)")
	}
	for _, sc := range r.scenarios() {
		key, unit := headline(sc)
		for _, c := range r.Cells {
			if c.Scenario != sc {
				continue
			}
			ratio := func(m metrics) string {
				if v, ok := m[key]; ok {
					return fmt.Sprintf("%.2fx", v)
				}
				return ""
			}
			var also []string
			if v := ratio(c.VsBase); v != "" {
				also = append(also, "dyad/dyad-base "+v)
			}
			for _, k := range extrasFor(sc) {
				if v, ok := c.Median[k]; ok {
					also = append(also, fmt.Sprintf("%s %s", k, num(v)))
				}
			}
			row(sc, c.System, fmt.Sprintf("%s %s [%s–%s]", num(c.Median[key]), unit, num(c.Min[key]), num(c.Max[key])),
				ratio(c.VsRelay), ratio(c.VsNoGRO), ratio(c.VsConn1), ratio(c.VsDirect), strings.Join(also, ", "))
		}
	}
}

func num(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

// write saves results.json, report.md and the charts, and prints the table.
func (r *results) write(dir string, stdout io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\ndyad bench (%s mode, %s, %d cores, %s, Go %s, quic-go %s) in %.0f s\n\n", r.Mode, r.Machine.CPU,
		r.Machine.Cores, r.Machine.Kernel, r.Machine.Go, r.Machine.QuicGo, r.Seconds)
	r.table(stdout, false)
	r.targetTable(stdout, false)
	r.linkTable(stdout)
	for _, n := range r.Notes {
		fmt.Fprintln(stdout, "\nnote:", n)
	}
	charts, err := r.charts(dir)
	if err != nil {
		return err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "# dyad benchmark report\n\n%s mode, %s. Machine: %s, %d cores, kernel %s, Go %s, quic-go %s, stunnel: %s.\n\n",
		r.Mode, r.Date, r.Machine.CPU, r.Machine.Cores, r.Machine.Kernel, r.Machine.Go, r.Machine.QuicGo, r.Machine.Stunnel)
	if len(r.Cells) > 0 {
		fmt.Fprintf(&md, "Each cell is the median of %d repetitions with min–max; systems ran interleaved. Ratios compare dyad's median with the baseline's median of the same run.\n\n", len(r.Cells[0].Runs))
	}
	r.table(&md, true)
	r.targetTable(&md, true)
	r.linkTable(&md)
	for _, n := range r.Notes {
		fmt.Fprintf(&md, "\n> %s\n", n)
	}
	md.WriteString("\n")
	for _, c := range charts {
		fmt.Fprintf(&md, "![%s](%s)\n\n", c, c)
	}
	fmt.Fprintf(stdout, "\nwrote %s/results.json, %s/report.md and %s\n", dir, dir, strings.Join(charts, ", "))
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(md.String()), 0o644)
}
