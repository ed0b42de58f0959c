package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// The service manager protocol of sd_notify(3), without libsystemd: one
// datagram of newline-separated KEY=VALUE assignments to the AF_UNIX socket
// named by NOTIFY_SOCKET (a path, or an abstract name written with a
// leading '@', which Go's net package maps to the leading NUL byte).
//
// What dyad sends, and when (deploy/systemd/dyad.service is Type=notify):
//
//	READY=1                      listeners up (QUIC, forwards, admin), /readyz says ready
//	RELOADING=1, MONOTONIC_USEC  a SIGHUP reload starts
//	READY=1                      the reload ended, applied or rejected
//	STOPPING=1                   draining starts
//	STATUS=…                     with each of the above, and when the summary changes
//	WATCHDOG=1                   every WATCHDOG_USEC/2, from the run loop
const (
	sdReady     = "READY=1"
	sdReloading = "RELOADING=1"
	sdStopping  = "STOPPING=1"
	sdWatchdog  = "WATCHDOG=1"
)

// sdStatusMax bounds a STATUS= line; systemctl status shows one line.
const sdStatusMax = 256

// sdStatusEvery is how often the run loop refreshes STATUS= when no
// watchdog asks for more often.
const sdStatusEvery = 15 * time.Second

// sdSendTimeout bounds one datagram: a wedged service manager must not
// stall the run loop (a full receive queue blocks a unixgram sender).
const sdSendTimeout = time.Second

// notifier speaks sd_notify to the service manager. With NOTIFY_SOCKET
// unset every method does nothing. A failed send is logged once and never
// fails the daemon. Only the Run goroutine uses it.
type notifier struct {
	addr     *net.UnixAddr // nil: not under a service manager
	watchdog time.Duration // WATCHDOG=1 interval; 0: no watchdog for this process
	log      zerolog.Logger
	status   string // the last STATUS= sent
	warned   bool   // a send error has been logged
}

// newNotifier reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.
func newNotifier(log zerolog.Logger) *notifier {
	n := &notifier{log: log}
	sock := os.Getenv("NOTIFY_SOCKET")
	switch {
	case sock == "":
		return n
	case sock[0] != '/' && sock[0] != '@': // e.g. vsock:CID:PORT (systemd 253+)
		log.Warn().Str("notify_socket", sock).Msg("sd_notify: NOTIFY_SOCKET is not a path or an abstract socket; not notifying")
		return n
	}
	n.addr = &net.UnixAddr{Name: sock, Net: "unixgram"}
	wd, err := watchdogInterval(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
	if err != nil {
		log.Warn().Err(err).Msg("sd_notify: watchdog off")
	}
	n.watchdog = wd
	return n
}

// watchdogInterval is half of WATCHDOG_USEC (as sd_watchdog_enabled(3)
// advises), or 0 when the watchdog is off or WATCHDOG_PID names another
// process (the variables leaked to a child).
func watchdogInterval(usec, pid string, self int) (time.Duration, error) {
	if usec == "" {
		return 0, nil
	}
	if pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil {
			return 0, fmt.Errorf("WATCHDOG_PID %q is not a process ID", pid)
		}
		if p != self {
			return 0, nil
		}
	}
	us, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || us == 0 {
		return 0, fmt.Errorf("WATCHDOG_USEC %q is not a positive number of microseconds", usec)
	}
	return time.Duration(us/2) * time.Microsecond, nil
}

// tick is how often the run loop should call alive; 0 means never.
func (n *notifier) tick() time.Duration {
	switch {
	case n.addr == nil:
		return 0
	case n.watchdog > 0 && n.watchdog < sdStatusEvery:
		return n.watchdog
	}
	return sdStatusEvery
}

// ready reports the daemon serving, at start and at the end of a reload.
func (n *notifier) ready(status string) { n.send(sdReady, statusLine(status)) }

// reloading reports a reload starting, with the CLOCK_MONOTONIC time that
// Type=notify-reload (systemd 253+) requires.
func (n *notifier) reloading(status string) {
	n.send(sdReloading, "MONOTONIC_USEC="+strconv.FormatInt(monotonicUsec(), 10), statusLine(status))
}

// stopping reports the drain starting.
func (n *notifier) stopping(status string) { n.send(sdStopping, statusLine(status)) }

// setStatus sends STATUS= alone, when it changed.
func (n *notifier) setStatus(status string) {
	if line := statusLine(status); line != "STATUS="+n.status {
		n.send(line)
	}
}

// alive pings the watchdog (when it is on for this process) and refreshes
// STATUS= when it changed; the run loop calls it every tick().
func (n *notifier) alive(status string) {
	line := statusLine(status)
	switch {
	case n.watchdog > 0 && line != "STATUS="+n.status:
		n.send(sdWatchdog, line)
	case n.watchdog > 0:
		n.send(sdWatchdog)
	default:
		n.setStatus(status)
	}
}

// statusLine makes STATUS= from s on one line of at most sdStatusMax bytes:
// a newline in s would start a new assignment (a forged READY=1).
func statusLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > sdStatusMax {
		cut := sdStatusMax - len("…")
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return "STATUS=" + s
}

// send writes one datagram. A fresh socket each time, as libsystemd does:
// it survives the manager re-creating its socket (daemon-reexec), and the
// messages are rare (a few a minute).
func (n *notifier) send(lines ...string) {
	if n.addr == nil {
		return
	}
	for _, l := range lines {
		if s, ok := strings.CutPrefix(l, "STATUS="); ok {
			n.status = s
		}
	}
	msg := strings.Join(lines, "\n") + "\n"
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err == nil {
		c.SetWriteDeadline(time.Now().Add(sdSendTimeout))
		_, err = c.Write([]byte(msg))
		c.Close()
	}
	if err != nil && !n.warned {
		n.warned = true
		n.log.Warn().Err(err).Str("notify_socket", n.addr.Name).Msg("sd_notify: send failed; the service manager may not see this daemon's state (further errors not logged)")
	}
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, the clock systemd
// compares MONOTONIC_USEC with (Go's monotonic readings are not exposed).
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1e3
}

// reloadNotified runs a SIGHUP reload between RELOADING=1 and READY=1 and
// returns its outcome for STATUS=.
func (d *Daemon) reloadNotified(sd *notifier, path string) string {
	sd.reloading("reloading " + path)
	note := "reloaded at " + time.Now().Format("15:04:05 MST")
	if err := d.reload(path); err != nil {
		note = "reload at " + time.Now().Format("15:04:05 MST") + " rejected, previous configuration kept: " + statusError(err)
	}
	sd.ready(d.runningStatus(note))
	return note
}

// statusError says why a reload was rejected without quoting the file:
// STATUS= is world-readable (systemctl status), the log is not, and a
// value in the wrong place may be a token. The audit event has it all.
func statusError(err error) string {
	var ce *ConfigError
	if !errors.As(err, &ce) {
		return err.Error() // restart required, a port that cannot be bound: no file content
	}
	where := ce.Path
	if ce.Line > 0 {
		where += ":" + strconv.Itoa(ce.Line)
	}
	if ce.Field != "" {
		where += ": " + ce.Field
	}
	return where + ": invalid, see the dyad.config.rejected event"
}

// runningStatus is STATUS= while serving: what an operator wants from
// `systemctl status` at a glance. Peer names and addresses come from the
// configuration; nothing secret.
func (d *Daemon) runningStatus(note string) string {
	var down []string
	peers := d.node.Status()
	for _, p := range peers {
		if !p.Connected {
			down = append(down, p.Name)
		}
	}
	cfg := d.cfg.Load()
	s := fmt.Sprintf("serving on %s: %d/%d peers connected, %d services, %d forwards", d.node.Addr(),
		len(peers)-len(down), len(peers), len(cfg.Tunnel.Services), len(cfg.File.Forwards))
	if note != "" { // before the peer list, which may be cut
		s += "; " + note
	}
	if len(down) > 0 {
		s += "; down: " + strings.Join(down, ", ")
	}
	return s
}
