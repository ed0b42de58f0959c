package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dyad-tunnel/dyad/bench/linkemu"
)

// What one emulated-link cell lost outside its model, and the congestion
// windows it started and ended with: "0% loss" is known to be 0% or says
// how many packets were lost and where.

// linkCell is one repetition of an emulated-link cell, in results.json's
// cell.link.
type linkCell struct {
	// Up and Down are the emulator's counts during the cell (importing →
	// exporting, and back): lost is the model's random loss; queue_drops
	// (its drop-tail queue), overflow and write_errors are not.
	Up   linkemu.Counters `json:"import_to_export"`
	Down linkemu.Counters `json:"export_to_import"`
	// ImportDev and ExportDev are the TUN devices' drops during the cell.
	ImportDev linkemu.DeviceDrops `json:"import_device"`
	ExportDev linkemu.DeviceDrops `json:"export_device"`
	// Start and End are the sending (exporting) daemon's QUIC connections
	// at the measured transfer's start and end, for dyad systems' bulk
	// cells (the warm-up before it already ran); absent otherwise.
	Start []connWindow `json:"windows_start,omitempty"`
	End   []connWindow `json:"windows_end,omitempty"`
}

// connWindow is one QUIC connection's congestion state from /statusz, or
// one TCP connection's (dyad-tcp) from the kernel (tcpWindows): there
// packets are segments and lost ones the segments retransmitted.
type connWindow struct {
	Index       int    `json:"index"`
	CwndBytes   uint64 `json:"cwnd_bytes"`
	PacketsSent uint64 `json:"packets_sent"`
	PacketsLost uint64 `json:"packets_lost"`
	// BBRMbps and BBRPhase are a TCP connection's BBR bandwidth estimate
	// and phase (startup, drain, probe_bw, probe_rtt), when it runs BBR: a
	// connection that carried light traffic may start a bulk transfer
	// past startup at a few Mbit/s (issue 21's 1% loss collapse).
	BBRMbps  float64 `json:"bbr_bw_mbps,omitempty"`
	BBRPhase string  `json:"bbr_phase,omitempty"`
}

// linkState is what readLinkState sees at one moment.
type linkState struct {
	up, down linkemu.Counters
	imp, exp linkemu.DeviceDrops
	windows  []connWindow // nil: not a dyad system, or not a bulk cell
}

// windowReader is a system whose QUIC connections' congestion windows
// the bench can read (dyad's, from the exporting daemon's /statusz).
type windowReader interface {
	windows() ([]connWindow, error)
}

// readLinkState reads the emulator's and the TUN devices' counters and,
// for a bulk cell on a dyad system, the sender's congestion windows.
func readLinkState(emu *emulator, topo linkemu.Topology, s system, bulk bool) (linkState, error) {
	var st linkState
	var err error
	if st.up, st.down, err = emu.counters(); err != nil {
		return st, err
	}
	if st.imp, st.exp, err = topo.Drops(); err != nil {
		return st, err
	}
	if w, ok := s.(windowReader); ok && bulk {
		if st.windows, err = w.windows(); errors.Is(err, errNoWindows) {
			err = nil // a build without them (-dyad-base): the report says "–"
		}
	}
	return st, err
}

// since is the cell between before and a.
func (a linkState) since(before linkState) linkCell {
	return linkCell{Up: a.up.Sub(before.up), Down: a.down.Sub(before.down), ImportDev: a.imp.Sub(before.imp), ExportDev: a.exp.Sub(before.exp),
		Start: before.windows, End: a.windows}
}

// outside is the packets the cell lost outside the configured random
// loss: at the TUN devices, in the emulator's queue, and by the emulator
// itself.
func (c linkCell) outside() (tun, queue, emu uint64) {
	tun = c.ImportDev.Total() + c.ExportDev.Total()
	queue = c.Up.QueueDrops + c.Down.QueueDrops
	emu = c.Up.Overflow + c.Down.Overflow + c.Up.WriteErrors + c.Down.WriteErrors
	return
}

// quicLost is how many packets the sender's connections declared lost
// during the cell (-1 without windows).
func (c linkCell) quicLost() int64 {
	if c.Start == nil || c.End == nil {
		return -1
	}
	var n int64
	for _, e := range c.End {
		n += int64(e.PacketsLost)
		for _, s := range c.Start {
			if s.Index == e.Index {
				n -= int64(s.PacketsLost)
			}
		}
	}
	return n
}

// addTo puts the cell's drop counts among its figures (results.json,
// medians).
func (c linkCell) addTo(m metrics) {
	tun, queue, emu := c.outside()
	m["drops_outside_model"] = float64(tun + queue + emu)
	m["tun_drops"], m["emu_queue_drops"], m["emu_overflow"] = float64(tun), float64(queue), float64(emu)
	m["emu_lost"] = float64(c.Up.Lost + c.Down.Lost)
}

// errNoWindows: the daemon's /statusz has no congestion windows (a build
// from before they were added).
var errNoWindows = errors.New("no congestion windows in /statusz")

// statusz is the part of a daemon's /statusz the bench reads.
type statusz struct {
	Peers []struct {
		Conns []struct {
			Index         int     `json:"index"`
			ActiveStreams int64   `json:"active_streams"`
			Cwnd          *uint64 `json:"cwnd_bytes"`
			PacketsSent   uint64  `json:"packets_sent"`
			PacketsLost   uint64  `json:"packets_lost"`
		} `json:"conns"`
	} `json:"peers"`
}

// statusz reads one daemon's /statusz inside its side's namespace (the
// exporting one's when export).
func (d *dyadSystem) statusz(export bool) (statusz, error) {
	var r statusz
	site, ns := d.a, d.pl.ns(false)
	if export {
		site, ns = d.b, d.pl.ns(true)
	}
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
			return linkemu.DialTimeout(ns, network, addr, 2*time.Second)
		}}}
	resp, err := client.Get("http://" + site.Config.Admin + "/statusz")
	if err != nil {
		return r, fmt.Errorf("%s's /statusz: %w", site.Name, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&r); err != nil {
		return r, fmt.Errorf("%s's /statusz: %w", site.Name, err)
	}
	return r, nil
}

// windows reads the exporting daemon's connections to its peer: in a
// download the exporting side sends, so its windows set the pace.
func (d *dyadSystem) windows() ([]connWindow, error) {
	if d.tcp {
		return d.tcpWindows()
	}
	r, err := d.statusz(true)
	if err != nil {
		return nil, err
	}
	out := []connWindow{}
	for _, p := range r.Peers {
		for _, c := range p.Conns {
			if c.Cwnd == nil {
				return nil, errNoWindows
			}
			out = append(out, connWindow{Index: c.Index, CwndBytes: *c.Cwnd, PacketsSent: c.PacketsSent, PacketsLost: c.PacketsLost})
		}
	}
	return out, nil
}

// tcpWindows reads the exporting daemon's TCP connections to its peer
// (dyad-tcp; /statusz has no congestion window for them) from the kernel,
// with ss in its namespace, ordered by the peer's port.
func (d *dyadSystem) tcpWindows() ([]connWindow, error) {
	_, port, err := net.SplitHostPort(d.b.Config.Listen)
	if err != nil {
		return nil, err
	}
	argv := d.pl.argv(true, "ss", "-tinH", "state", "established", "( sport = :"+port+" )")
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		return nil, fmt.Errorf("ss in %s's namespace: %w", d.b.Name, err)
	}
	return parseSS(string(out)), nil
}

// parseSS reads `ss -tinH` output: per connection a line with the
// addresses and an indented line with its TCP_INFO.
func parseSS(out string) []connWindow {
	type conn struct {
		peer string
		w    connWindow
	}
	var conns []conn
	field := func(info, key string) string {
		for _, f := range strings.FieldsFunc(info, func(r rune) bool { return r == ' ' || r == '\t' || r == ',' || r == '(' || r == ')' }) {
			if v, ok := strings.CutPrefix(f, key+":"); ok {
				return v
			}
		}
		return ""
	}
	num := func(s string) uint64 { n, _ := strconv.ParseUint(s, 10, 64); return n }
	var peer string
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			if f := strings.Fields(line); len(f) >= 4 {
				peer = f[3]
			}
			continue
		}
		w := connWindow{CwndBytes: num(field(line, "cwnd")) * num(field(line, "mss")), PacketsSent: num(field(line, "segs_out"))}
		if _, total, ok := strings.Cut(field(line, "retrans"), "/"); ok {
			w.PacketsLost = num(total)
		}
		if bw := field(line, "bw"); strings.HasSuffix(bw, "bps") && strings.Contains(line, "bbr:(") {
			w.BBRMbps = float64(num(strings.TrimSuffix(bw, "bps"))) / 1e6
			w.BBRPhase = bbrPhase(field(line, "pacing_gain"))
		}
		conns = append(conns, conn{peer, w})
	}
	slices.SortFunc(conns, func(a, b conn) int { return strings.Compare(a.peer, b.peer) })
	out2 := make([]connWindow, len(conns))
	for i, c := range conns {
		c.w.Index = i
		out2[i] = c.w
	}
	return out2
}

// bbrPhase names BBR's phase from its pacing gain (net/ipv4/tcp_bbr.c):
// 2.89 startup, 0.35 drain, 1 probe_rtt or probe_bw's cruise (taken for
// probe_bw), 1.25 and 0.75 probe_bw.
func bbrPhase(gain string) string {
	g, err := strconv.ParseFloat(gain, 64)
	switch {
	case err != nil:
		return ""
	case g > 2:
		return "startup"
	case g < 0.5:
		return "drain"
	}
	return "probe_bw"
}

// waitIdle waits (at most timeout) until the importing daemon carries no
// stream: the warm-up's streams have ended, so the measured transfer's
// streams go to the connections the warm-up's took (a new stream goes to
// the least-loaded connection, ties to the oldest).
func (d *dyadSystem) waitIdle(timeout time.Duration) error {
	for deadline := time.Now().Add(timeout); ; time.Sleep(10 * time.Millisecond) {
		r, err := d.statusz(false)
		if err != nil {
			return err
		}
		var active int64
		for _, p := range r.Peers {
			for _, c := range p.Conns {
				active += c.ActiveStreams
			}
		}
		if active == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still carries %d streams %v after the warm-up", d.a.Name, active, timeout)
		}
	}
}

// idler is a system that can tell when its tunnel carries no stream.
type idler interface {
	waitIdle(timeout time.Duration) error
}

// linkTable writes, per emulated-link cell, what was lost outside the
// configured loss and the sender's congestion windows.
func (r *results) linkTable(w io.Writer) {
	var rows []string
	for _, c := range r.Cells {
		if len(c.Link) == 0 {
			continue
		}
		var tun, queue, emu, lost uint64
		var per, windows, quic []string
		for _, lc := range c.Link {
			t, q, e := lc.outside()
			tun, queue, emu, lost = tun+t, queue+q, emu+e, lost+lc.Up.Lost+lc.Down.Lost
			per = append(per, fmt.Sprint(t+q+e))
			if n := lc.quicLost(); n >= 0 {
				quic = append(quic, fmt.Sprint(n))
			}
			if lc.Start != nil && lc.End != nil {
				windows = append(windows, windowChange(lc.Start, lc.End))
			}
		}
		outside := "0"
		if n := tun + queue + emu; n > 0 {
			outside = fmt.Sprintf("**%d** (TUN %d, queue %d, emulator %d; per repetition %s)", n, tun, queue, emu, strings.Join(per, ", "))
		}
		row := []string{c.Scenario, c.System, outside, fmt.Sprint(lost), orDash(strings.Join(quic, ", ")), orDash(strings.Join(windows, " · "))}
		rows = append(rows, "| "+strings.Join(row, " | ")+" |")
	}
	if len(rows) == 0 || r.Link == nil {
		return
	}
	warm := time.Duration(r.Link.WarmupSeconds * float64(time.Second))
	fmt.Fprintf(w, "\n## Emulated link: packets lost outside the configured loss, and congestion windows\n\n"+
		"Per cell, summed over its repetitions, measured from the start to the end of the measured transfer: packets the TUN devices "+
		"dropped (`tx_dropped` + `rx_dropped` of both, read in their namespaces), the emulator's drop-tail queue dropped (the rate cap's "+
		"50 ms queue: congestion, not the configured loss) and the emulator itself dropped (overflow, write errors). The configured "+
		"random loss is its own column. Each bulk cell ran a discarded %v transfer first (warm-up). For dyad systems' bulk cells: the "+
		"packets the sending (exporting) daemon's QUIC connections declared lost during the cell (dyad-tcp: the TCP segments its "+
		"kernel retransmitted), and each connection's congestion window (KiB, connection index: start → end; repetitions separated by "+
		"·; dyad-tcp: with BBR's phase and bandwidth estimate at the start).\n\n", warm)
	fmt.Fprintln(w, "| scenario | system | drops outside the configured loss | configured random loss | losses the sender declared (QUIC; TCP: retransmitted) | sender's congestion windows, KiB |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- |")
	for _, row := range rows {
		fmt.Fprintln(w, row)
	}
}

// windowChange renders each connection's window at the start and end of a
// cell: "0: 51→980, 1: 39→39".
func windowChange(start, end []connWindow) string {
	var parts []string
	for _, e := range end {
		from := "new"
		for _, s := range start {
			if s.Index == e.Index {
				from = fmt.Sprint(s.CwndBytes >> 10)
			}
		}
		bbr := ""
		for _, s := range start {
			if s.Index == e.Index && s.BBRPhase != "" {
				bbr = fmt.Sprintf(" (BBR at start: %s, %.1f Mbit/s)", s.BBRPhase, s.BBRMbps)
			}
		}
		parts = append(parts, fmt.Sprintf("%d: %s→%d%s", e.Index, from, e.CwndBytes>>10, bbr))
	}
	return strings.Join(parts, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
