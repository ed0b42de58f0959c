package report

import (
	"embed"
	"encoding/json"
	"fmt"
	htmltemplate "html/template"
	"io"
	"slices"
	"strings"
	"text/template"
	"time"
)

// Formats a report renders to.
const (
	FormatJSON     = "json"
	FormatMarkdown = "md"
	FormatHTML     = "html"
)

//go:embed report.md.tmpl report.html.tmpl
var templates embed.FS

// Write renders the report in format (json, md or html).
func (r *Report) Write(w io.Writer, format string) error {
	switch format {
	case FormatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	case FormatMarkdown:
		return mdTemplate.Execute(w, view{r})
	case FormatHTML:
		return htmlTemplate.Execute(w, view{r})
	}
	return fmt.Errorf("report: unknown format %q (want json, md or html)", format)
}

// view adds what the templates need to the report.
type view struct{ *Report }

// Tally counts a section's rows by status.
func (v view) Tally(s Section) string {
	n := map[Status]int{}
	for _, r := range s.Rows {
		n[r.Status]++
	}
	if s.Framework == OWASP {
		return fmt.Sprintf("%d mitigated, %d partly, %d not covered by a network tunnel", n[Mitigated], n[Partly], n[NotCovered])
	}
	return fmt.Sprintf("%d evidenced, %d partly, %d outside dyad's evidence", n[Evidenced], n[Partly], n[Outside])
}

// Has says whether the report covers framework.
func (v view) Has(framework string) bool { return slices.Contains(v.Frameworks, framework) }

// FrameworkNames lists the frameworks for the title.
func (v view) FrameworkNames() string {
	var s []string
	for _, sec := range v.Sections {
		s = append(s, strings.SplitN(sec.Title, " —", 2)[0])
	}
	return strings.Join(s, " and ")
}

// Uses are the service uses in one direction.
func (v view) Uses(direction string) []ServiceUse {
	var out []ServiceUse
	for _, u := range v.Evidence.Services {
		if u.Direction == direction {
			out = append(out, u)
		}
	}
	return out
}

// TimelineSVG and TunnelsSVG are the charts of the HTML report.
func (v view) TimelineSVG() htmltemplate.HTML { return htmltemplate.HTML(timelineSVG(v.Report)) }

// TunnelsSVG draws each partner link's up and down time.
func (v view) TunnelsSVG() htmltemplate.HTML { return htmltemplate.HTML(tunnelsSVG(v.Report)) }

var funcs = map[string]any{
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format(time.RFC3339)
	},
	"ptime": func(t *time.Time) string {
		if t == nil {
			return "never"
		}
		return t.UTC().Format(time.RFC3339)
	},
	"secs":   func(s float64) string { return time.Duration(s * float64(time.Second)).Round(time.Second).String() },
	"dur":    func(a, b time.Time) string { return b.Sub(a).Round(time.Second).String() },
	"bytes":  Bytes,
	"join":   strings.Join,
	"counts": counts[int],
	"cell": func(s string) string { // a Markdown table cell
		return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
	},
	"yesno": func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	},
	"seqs": func(ns []uint64) string {
		var s []string
		for _, n := range ns {
			s = append(s, fmt.Sprintf("#%d", n))
		}
		if s == nil {
			return "none"
		}
		return strings.Join(s, ", ")
	},
	"label":  Status.Label,
	"plural": plural,
}

var (
	mdTemplate   = template.Must(template.New("report.md.tmpl").Funcs(funcs).ParseFS(templates, "report.md.tmpl"))
	htmlTemplate = htmltemplate.Must(htmltemplate.New("report.html.tmpl").Funcs(funcs).ParseFS(templates, "report.html.tmpl"))
)
