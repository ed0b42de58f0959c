package main

import (
	"fmt"
	"html"
	"os"
	"path/filepath"
	"strings"
)

var palette = []string{"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948"}

// bar is one value with its range.
type bar struct {
	median, lo, hi float64
	ok             bool
}

// groupedBars draws an SVG bar chart: one group per group name, one bar per
// series, with min–max whiskers.
func groupedBars(title, unit string, groups, series []string, value func(g, s string) bar) string {
	const w, h, left, bottom, top = 760, 360, 70, 60, 40
	maxV := 0.0
	for _, g := range groups {
		for _, s := range series {
			if b := value(g, s); b.ok {
				maxV = max(maxV, b.hi, b.median)
			}
		}
	}
	if maxV == 0 {
		maxV = 1
	}
	maxV *= 1.1
	plotW, plotH := float64(w-left-20), float64(h-top-bottom)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`, left, html.EscapeString(title))
	for i := 0; i <= 4; i++ {
		v := maxV * float64(i) / 4
		y := float64(top) + plotH - plotH*float64(i)/4
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`,
			left, w-20, y, y, left-6, y+4, num(v))
	}
	fmt.Fprintf(&b, `<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">%s</text>`, top+int(plotH/2), top+int(plotH/2), html.EscapeString(unit))
	groupW := plotW / float64(len(groups))
	barW := groupW * 0.8 / float64(len(series))
	for gi, g := range groups {
		x0 := float64(left) + groupW*float64(gi) + groupW*0.1
		for si, s := range series {
			v := value(g, s)
			if !v.ok {
				continue
			}
			x := x0 + barW*float64(si)
			y := float64(top) + plotH - plotH*v.median/maxV
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s %s</title></rect>`,
				x, y, barW-2, float64(top)+plotH-y, palette[si%len(palette)], html.EscapeString(g), html.EscapeString(s), num(v.median), html.EscapeString(unit))
			yl, yh := float64(top)+plotH-plotH*v.lo/maxV, float64(top)+plotH-plotH*v.hi/maxV
			cx := x + (barW-2)/2
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#333"/>`, cx, cx, yl, yh)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`, x0+groupW*0.4, h-bottom+18, html.EscapeString(g))
	}
	for si, s := range series {
		x := left + si*130
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`,
			x, h-22, palette[si%len(palette)], x+16, h-12, html.EscapeString(s))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func (r *results) systems() []string {
	var out []string
	for _, name := range []string{sysDirect, sysRelay, sysDyad, sysNoGRO, sysConn1, sysTCP, sysBase, "stunnel"} {
		for _, c := range r.Cells {
			if c.System == name {
				out = append(out, name)
				break
			}
		}
	}
	return out
}

func (r *results) bar(scenario, system, key string) bar {
	c := r.cell(scenario, system)
	if c == nil {
		return bar{}
	}
	v, ok := c.Median[key]
	return bar{v, c.Min[key], c.Max[key], ok}
}

// charts writes bulk.svg, latency.svg and impaired.svg into dir.
func (r *results) charts(dir string) ([]string, error) {
	systems := r.systems()
	var links []string
	if r.Link != nil {
		for _, l := range r.Link.Runs {
			links = append(links, l.Name)
		}
	}
	charts := map[string]string{
		"bulk.svg": groupedBars("Bulk throughput per system (loopback)", "Gbit/s",
			[]string{"bulk-down-1", "bulk-up-1", "bulk-down-8", "bulk-up-8"}, systems,
			func(g, s string) bar { return r.bar(g, s, "gbps") }),
		"latency.svg": groupedBars("Request/response latency, 1 KiB each way, 64 concurrent", "µs",
			systems, []string{"p50_us", "p90_us", "p99_us", "p999_us"},
			func(g, s string) bar { return r.bar("rr-64", g, s) }),
		"impaired.svg": groupedBars(fmt.Sprintf("Emulated link (40 ms RTT, %d Mbit/s): bulk, 1 connection", linkRateMbps), "Gbit/s",
			links, systems, func(g, s string) bar { return r.bar("impaired-bulk-down-1-"+g, s, "gbps") }),
	}
	var names []string
	for _, name := range []string{"bulk.svg", "latency.svg", "impaired.svg"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(charts[name]), 0o644); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}
