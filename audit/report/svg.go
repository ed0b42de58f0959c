package report

import (
	"fmt"
	"html"
	"strings"
	"time"
)

// The charts are inline SVG written here, so the HTML report is one file
// that fetches nothing and prints as it shows.

const (
	svgWidth = 960
	svgLeft  = 100 // room for the row labels
	svgRight = 60  // room for the scale
	plotW    = svgWidth - svgLeft - svgRight
)

var kindColor = map[string]string{
	KindStreams: "#0969da", KindTunnels: "#1a7f37", KindRefusals: "#cf222e", KindIntegrity: "#8250df", KindFailures: "#9a6700",
}

func bucketName(b time.Duration) string {
	switch {
	case b == time.Second:
		return "second"
	case b < time.Minute:
		return fmt.Sprintf("%d seconds", int(b.Seconds()))
	case b == time.Minute:
		return "minute"
	case b < time.Hour:
		return fmt.Sprintf("%d minutes", int(b.Minutes()))
	case b == time.Hour:
		return "hour"
	case b < 24*time.Hour:
		return fmt.Sprintf("%d hours", int(b.Hours()))
	case b == 24*time.Hour:
		return "day"
	case b == 7*24*time.Hour:
		return "week"
	}
	return "30 days"
}

// unknownFill is how the charts draw time the daemon was not provably
// running: grey with a dashed outline, never green. (No pattern: the
// report references nothing, not even url(#id).)
const (
	unknownStyle = `fill="#afb8c1" fill-opacity="0.55" stroke="#57606a" stroke-dasharray="3 2"`
)

// axis draws time ticks under a plot of the span from..to at y.
func axis(b *strings.Builder, from, to time.Time, y int) {
	span := to.Sub(from)
	layout := "01-02 15:04"
	switch {
	case span > 3*24*time.Hour:
		layout = "2006-01-02"
	case span < time.Hour:
		layout = "15:04:05"
	}
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#8c959f"/>`, svgLeft, y, svgLeft+plotW, y)
	for i := 0; i <= 6; i++ {
		x := svgLeft + plotW*i/6
		t := from.Add(span * time.Duration(i) / 6)
		anchor := "middle"
		if i == 0 {
			anchor = "start"
		} else if i == 6 {
			anchor = "end"
		}
		fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#8c959f"/><text x="%d" y="%d" text-anchor="%s">%s</text>`,
			x, y, x, y+4, x, y+16, anchor, t.UTC().Format(layout))
	}
}

func timelineSVG(r *Report) string {
	from, to := r.Period.From, r.Period.To
	if !to.After(from) {
		return `<p class="muted">The period is empty.</p>`
	}
	tl := r.Evidence.Timeline
	bucket := time.Duration(tl.BucketSeconds * float64(time.Second))
	if bucket <= 0 {
		return `<p class="muted">No timeline.</p>`
	}
	start := tl.Start
	n := int((to.Sub(start) + bucket - 1) / bucket)
	n = max(n, 1)
	series := map[string][]int{}
	for _, k := range Kinds {
		series[k] = make([]int, n)
	}
	for _, h := range tl.Buckets {
		i := int(h.Start.Sub(start) / bucket)
		if i < 0 || i >= n {
			continue
		}
		for k, c := range h.Counts {
			if s, ok := series[k]; ok {
				s[i] += c
			}
		}
	}
	const rowH, barH, top = 46, 34, 24
	height := top + rowH*len(Kinds) + 24
	end := start.Add(bucket * time.Duration(n))
	span := end.Sub(start).Seconds()
	x := func(t time.Time) float64 { return float64(svgLeft) + float64(plotW)*t.Sub(start).Seconds()/span }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="events per %s by kind">`,
		svgWidth, height, svgWidth, height, bucketName(bucket))
	fmt.Fprintf(&b, `<text x="%d" y="14">Events per %s, UTC (each row on its own scale)</text>`, svgLeft, bucketName(bucket))
	fmt.Fprintf(&b, `<rect x="%d" y="4" width="12" height="12" %s/><text x="%d" y="14">unknown: the daemon was not provably running</text>`, svgLeft+420, unknownStyle, svgLeft+436)
	// Unknown stretches first, under the bars, across every row.
	for _, iv := range r.Evidence.Uptime.Intervals {
		if iv.State != StateUnknown {
			continue
		}
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" %s><title>unknown %s to %s</title></rect>`,
			x(iv.From), top, max(x(iv.To)-x(iv.From), 0.8), rowH*len(Kinds), unknownStyle, iv.From.UTC().Format(time.RFC3339), iv.To.UTC().Format(time.RFC3339))
	}
	bw := float64(plotW) / float64(n)
	for row, k := range Kinds {
		base := top + rowH*row + barH
		peak := 0
		for _, c := range series[k] {
			peak = max(peak, c)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`, svgLeft-8, base-barH/2+4, k)
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#d0d7de"/>`, svgLeft, base, svgLeft+plotW, base)
		fmt.Fprintf(&b, `<text x="%d" y="%d">max %d</text>`, svgLeft+plotW+6, base-barH+10, peak)
		if peak == 0 {
			continue
		}
		for i, c := range series[k] {
			if c == 0 {
				continue
			}
			h := max(1, float64(barH)*float64(c)/float64(peak))
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %d %s</title></rect>`,
				float64(svgLeft)+float64(i)*bw, float64(base)-h, max(bw*0.8, 0.8), h, kindColor[k],
				start.Add(bucket*time.Duration(i)).UTC().Format(time.RFC3339), c, k)
		}
	}
	axis(&b, start, end, top+rowH*len(Kinds))
	b.WriteString(`</svg>`)
	return b.String()
}

func tunnelsSVG(r *Report) string {
	from, to := r.Period.From, r.Period.To
	if !to.After(from) || len(r.Evidence.Tunnels) == 0 {
		return `<p class="muted">No partner links.</p>`
	}
	const laneH, barH, top = 28, 16, 26
	height := top + laneH*len(r.Evidence.Tunnels) + 24
	span := to.Sub(from).Seconds()
	x := func(t time.Time) float64 { return float64(svgLeft) + float64(plotW)*t.Sub(from).Seconds()/span }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="tunnel up and down time per partner">`,
		svgWidth, height, svgWidth, height)
	fmt.Fprintf(&b, `<rect x="%d" y="4" width="12" height="12" fill="#1a7f37"/><text x="%d" y="14">up</text>`, svgLeft, svgLeft+16)
	fmt.Fprintf(&b, `<rect x="%d" y="4" width="12" height="12" fill="#cf222e"/><text x="%d" y="14">down after being up (outage)</text>`, svgLeft+50, svgLeft+66)
	fmt.Fprintf(&b, `<rect x="%d" y="4" width="12" height="12" fill="#eaeef2"/><text x="%d" y="14">no tunnel yet, or daemon stopped</text>`, svgLeft+250, svgLeft+266)
	fmt.Fprintf(&b, `<rect x="%d" y="4" width="12" height="12" %s/><text x="%d" y="14">unknown: daemon not provably running</text>`, svgLeft+450, unknownStyle, svgLeft+466)
	for i, t := range r.Evidence.Tunnels {
		y := top + laneH*i
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`, svgLeft-8, y+barH-4, html.EscapeString(t.Peer))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="#eaeef2"/>`, svgLeft, y, plotW, barH)
		for _, iv := range t.Intervals {
			color := "#1a7f37"
			switch iv.State {
			case StateDown:
				color = "#cf222e"
			}
			paint := `fill="` + color + `"`
			if iv.State == StateUnknown {
				paint = unknownStyle
			}
			fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" %s><title>%s %s to %s %s</title></rect>`,
				x(iv.From), y, max(x(iv.To)-x(iv.From), 0.8), barH, paint, iv.State,
				iv.From.UTC().Format(time.RFC3339), iv.To.UTC().Format(time.RFC3339), html.EscapeString(iv.Cause))
		}
	}
	axis(&b, from, to, top+laneH*len(r.Evidence.Tunnels))
	b.WriteString(`</svg>`)
	return b.String()
}
