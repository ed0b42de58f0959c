package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/control"
	"github.com/dyad-tunnel/dyad/tunnel"
)

// StatusReport is a running daemon's state: what /statusz serves, the
// control socket's "status" operation answers and `dyad status` prints.
type StatusReport struct {
	Site        string              `json:"site"`
	Fingerprint string              `json:"fingerprint"` // this site's identity
	Version     string              `json:"version"`
	Started     string              `json:"started"` // RFC 3339
	Ready       bool                `json:"ready"`
	Peers       []tunnel.PeerStatus `json:"peers"`
	Counters    map[string]uint64   `json:"counters"`
	Process     ProcessStatus       `json:"process"`
	// API is each guarded service's inventory (README, "API guard"); absent without one.
	API any `json:"api,omitempty"`
	// APIForwards is each checked forward's response counts; absent without one.
	APIForwards any `json:"api_forwards,omitempty"`
}

func init() {
	registerControl("status", func(d *Daemon, _ context.Context, _ control.Caller, _ json.RawMessage) (any, error) {
		return d.statusReport(), nil
	})
}

func (d *Daemon) statusReport() StatusReport {
	return StatusReport{
		Site:        d.cfg.Load().Site,
		Fingerprint: d.node.Identity().Fingerprint(),
		Version:     Version,
		Started:     d.node.Started().UTC().Format(time.RFC3339),
		Ready:       d.ready.Load(),
		Peers:       d.node.Status(),
		Counters:    d.node.Stats.Snapshot(),
		Process:     processStatus(),
		API:         d.apiStatus(),
		APIForwards: d.forwardAPIStatus(),
	}
}

// connSamples is every peer QUIC connection's congestion state for the
// dyad.quic.connection.* metrics: labelled by peer name and connection
// index only, so the series are bounded by the peers' connections
// (TestConnCongestionStatus).
func (d *Daemon) connSamples() []audit.ConnSample {
	var out []audit.ConnSample
	for _, p := range d.node.Status() {
		for _, c := range p.Conns {
			if c.CongestionWindow == nil {
				continue // TCP: no congestion state of ours to report
			}
			out = append(out, audit.ConnSample{Peer: p.Name, Index: c.Index, CongestionWindow: *c.CongestionWindow,
				SmoothedRTT: time.Duration(c.RTTMillis * float64(time.Millisecond)), MinRTT: time.Duration(*c.MinRTTMillis * float64(time.Millisecond)),
				PacketsSent: *c.PacketsSent, PacketsLost: *c.PacketsLost, BytesLost: *c.WireBytesLost})
		}
	}
	return out
}

// handlePeerHealth serves the tunnel health endpoints (README, "Tunnel
// health"; TestStatusCommand):
//
//	GET /healthz/peers        200 when every configured peer is up, else 503
//	GET /healthz/peers/{name} 200 when that peer is up, 503 when down, 404 if not configured
//
// A peer is up while at least one of its connections takes new streams
// (THREATS P10: a peer that went silent is down within three keepalives,
// TestDeadPeerNoticed).
// The body lists each peer as "name up|down since RFC3339". They are for
// alerting; /readyz stays local (the daemon serves its forwards), so a
// partner's outage never takes every pod out of its Service.
func (d *Daemon) handlePeerHealth(mux *http.ServeMux) {
	write := func(w http.ResponseWriter, peers []tunnel.PeerStatus) {
		code := http.StatusOK
		var b strings.Builder
		for _, p := range peers {
			if p.State != "up" {
				code = http.StatusServiceUnavailable
			}
			fmt.Fprintf(&b, "%s %s since %s\n", p.Name, p.State, p.StateSince)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		io.WriteString(w, b.String())
	}
	mux.HandleFunc("GET /healthz/peers", func(w http.ResponseWriter, _ *http.Request) { write(w, d.node.Status()) })
	mux.HandleFunc("GET /healthz/peers/{name}", func(w http.ResponseWriter, r *http.Request) {
		for _, p := range d.node.Status() {
			if p.Name == r.PathValue("name") {
				write(w, []tunnel.PeerStatus{p})
				return
			}
		}
		http.Error(w, "no such peer", http.StatusNotFound)
	})
}

// StatusSource fetches a running daemon's StatusReport: the control socket
// (ControlStatus) or, where the caller may not open it, the admin
// endpoint's /statusz (AdminStatus).
type StatusSource interface {
	Status(ctx context.Context) (StatusReport, error)
}

// ControlStatus asks the daemon of a configuration over its control socket.
type ControlStatus struct{ Socket string }

// Status implements StatusSource.
func (c ControlStatus) Status(ctx context.Context) (StatusReport, error) {
	var r StatusReport
	err := control.Call(ctx, c.Socket, "status", nil, &r)
	return r, err
}

// AdminStatus reads /statusz from the admin endpoint at Addr (host:port).
type AdminStatus struct{ Addr string }

// Status implements StatusSource.
func (a AdminStatus) Status(ctx context.Context) (StatusReport, error) {
	var r StatusReport
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.Addr+"/statusz", nil)
	if err != nil {
		return r, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return r, fmt.Errorf("admin endpoint %s: %w", a.Addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("admin endpoint %s: /statusz answered %s", a.Addr, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&r); err != nil {
		return r, fmt.Errorf("admin endpoint %s: /statusz: %w", a.Addr, err)
	}
	return r, nil
}

// StatusOptions say what `dyad status` shows.
type StatusOptions struct {
	Config string // configuration file of the daemon to ask
	JSON   bool   // print the report as JSON instead of the table
	// Via is "control" (the control socket), "admin" (the admin
	// endpoint's /statusz) or "" (the control socket, else the admin
	// endpoint when the socket does not exist or is not ours to open).
	Via string
}

// Status prints the state of the running daemon of o.Config: a table per
// peer and connection, like `wg show`, or JSON.
func Status(o StatusOptions, out io.Writer) error {
	cfg, err := LoadConfig(o.Config)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var src StatusSource = ControlStatus{cfg.ControlSocket}
	if o.Via == "admin" {
		src = AdminStatus{cfg.File.Admin}
	}
	r, err := src.Status(ctx)
	if err != nil && o.Via == "" && cfg.File.Admin != "" && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) || errors.Is(err, control.ErrDenied)) {
		var aerr error
		if r, aerr = (AdminStatus{cfg.File.Admin}).Status(ctx); aerr != nil {
			err = fmt.Errorf("control socket %s: %w; %w", cfg.ControlSocket, err, aerr)
		} else {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("status of the daemon of %s: %w", o.Config, err)
	}
	if o.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	PrintStatus(out, r, time.Now())
	return nil
}

// PrintStatus writes r as the `dyad status` table; ages are counted to now.
func PrintStatus(out io.Writer, r StatusReport, now time.Time) {
	ready := "ready"
	if !r.Ready {
		ready = "NOT READY"
	}
	fmt.Fprintf(out, "site: %s\n  identity: %s\n  version:  %s, started %s, %s\n", r.Site, r.Fingerprint, r.Version, ago(r.Started, now), ready)
	for _, p := range r.Peers {
		fmt.Fprintf(out, "\npeer: %s\n", p.Name)
		fmt.Fprintf(out, "  state:              %s since %s\n", p.State, ago(p.StateSince, now))
		fmt.Fprintf(out, "  pinned fingerprint: %s\n", p.Fingerprint)
		if p.Endpoint != "" {
			fmt.Fprintf(out, "  endpoint:           %s (we dial)\n", p.Endpoint)
		} else {
			fmt.Fprintf(out, "  endpoint:           none (the peer dials us)\n")
		}
		last := "never since start"
		if p.LastHandshake != "" {
			last = ago(p.LastHandshake, now)
		}
		fmt.Fprintf(out, "  last handshake:     %s\n", last)
		if len(p.Conns) == 0 {
			continue
		}
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  CONN\tROLE\tTRANSPORT\tREMOTE\tSINCE\tRTT\tMIN RTT\tCWND\tSENT\tRECEIVED\tPACKETS\tLOST\tSTREAMS\tACTIVE\tPROTOCOL")
		for _, c := range p.Conns {
			role := c.Role
			if c.Role == "dialer" && c.Slot >= 0 {
				role = fmt.Sprintf("dialer/%d", c.Slot)
			}
			if c.Retired {
				role += " (retired)"
			}
			minRTT, cwnd, packets, lost := "unknown", "unknown", "unknown", "unknown" // TCP: the kernel's, not reported
			if c.CongestionWindow != nil {
				minRTT, cwnd = fmt.Sprintf("%.1f ms", *c.MinRTTMillis), byteCount(*c.CongestionWindow)
				packets, lost = fmt.Sprint(*c.PacketsSent), lossShare(*c.PacketsLost, *c.PacketsSent)
			}
			fmt.Fprintf(tw, "  #%d\t%s\t%s\t%s\t%s\t%.1f ms\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", c.ID, role, c.Transport, c.Remote, ago(c.Since, now),
				c.RTTMillis, minRTT, cwnd, byteCount(c.WireBytesSent), byteCount(c.WireBytesReceived),
				packets, lost, c.Streams, c.ActiveStreams, c.Protocol)
		}
		tw.Flush()
	}
	if len(r.Peers) == 0 {
		fmt.Fprintln(out, "\nno peers configured")
	}
}

// ago renders an RFC 3339 time and how long before now it was.
func ago(ts string, now time.Time) string {
	t, err := time.Parse(time.RFC3339, ts)
	if err != nil {
		return "unknown"
	}
	return fmt.Sprintf("%s (%s ago)", t.Local().Format(time.DateTime), now.Sub(t).Round(time.Second))
}

// lossShare renders the packets declared lost and their share of those sent.
func lossShare(lost, sent uint64) string {
	if sent == 0 {
		return fmt.Sprint(lost)
	}
	return fmt.Sprintf("%d (%.2f%%)", lost, 100*float64(lost)/float64(sent))
}

// byteCount renders n in binary units.
func byteCount(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
