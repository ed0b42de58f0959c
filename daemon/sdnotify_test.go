package daemon_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// These tests play systemd's part: a unixgram socket named by NOTIFY_SOCKET
// in the environment of a real dyad process (daemontest starts it with the
// test's environment).

// sdMsg is one sd_notify datagram.
type sdMsg struct {
	at   time.Time
	vars map[string]string
}

// sdManager is the fake service manager's socket and what arrived on it.
type sdManager struct {
	conn *net.UnixConn
	msgs chan sdMsg
	done chan struct{}
}

// newSdManager listens on a fresh socket (a path, or an abstract name when
// abstract is set), points NOTIFY_SOCKET at it and clears the watchdog
// variables; it closes at the test's end.
func newSdManager(t *testing.T, abstract bool) *sdManager {
	t.Helper()
	var name string
	if abstract {
		name = fmt.Sprintf("@dyad-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	} else {
		dir, err := os.MkdirTemp("", "dyad-sd") // short: sun_path holds 108 bytes
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		name = filepath.Join(dir, "notify")
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	m := &sdManager{conn: conn, msgs: make(chan sdMsg, 1024), done: make(chan struct{})}
	go m.read()
	t.Cleanup(func() { conn.Close(); <-m.done })
	t.Setenv("NOTIFY_SOCKET", name)
	t.Setenv("WATCHDOG_USEC", "")
	t.Setenv("WATCHDOG_PID", "")
	return m
}

func (m *sdManager) read() {
	defer close(m.done)
	buf := make([]byte, 4096)
	for {
		n, _, err := m.conn.ReadFromUnix(buf)
		if err != nil {
			return
		}
		msg := sdMsg{at: time.Now(), vars: map[string]string{}}
		for line := range strings.SplitSeq(strings.TrimSuffix(string(buf[:n]), "\n"), "\n") {
			k, v, _ := strings.Cut(line, "=")
			msg.vars[k] = v
		}
		select {
		case m.msgs <- msg:
		default: // a test reads far fewer
		}
	}
}

// nextState returns the next message carrying READY, RELOADING or
// STOPPING, skipping STATUS and WATCHDOG alone.
func (m *sdManager) nextState(t *testing.T, limit time.Duration) sdMsg {
	t.Helper()
	deadline := time.After(limit)
	for {
		select {
		case msg := <-m.msgs:
			for _, k := range []string{"READY", "RELOADING", "STOPPING"} {
				if _, ok := msg.vars[k]; ok {
					return msg
				}
			}
		case <-deadline:
			t.Fatalf("no READY, RELOADING or STOPPING within %v", limit)
		}
	}
}

// expectState checks that the next state message sets key=1 and returns it.
func (m *sdManager) expectState(t *testing.T, key string, limit time.Duration) sdMsg {
	t.Helper()
	msg := m.nextState(t, limit)
	if msg.vars[key] != "1" {
		t.Fatalf("want %s=1 next, got %v", key, msg.vars)
	}
	return msg
}

// sdSite makes a site that pins one peer (never started) and forwards a
// local port to it: a QUIC socket, a TCP forward and the admin endpoint.
func sdSite(t *testing.T) *daemontest.Site {
	t.Helper()
	s := newSite(t, t.TempDir(), "site-a")
	peer, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	s.Config.Peers = []daemon.PeerFile{{Name: "site-b", PublicKey: peer.Public().String()}}
	s.Config.Forwards = []daemon.ForwardConfig{{Listen: freeTCP(t), Peer: "site-b", Service: "echo"}}
	s.Config.Log.Level = "info"
	// listening() opens forward connections that wait for a tunnel which
	// never comes; a short wait keeps the drain short.
	s.Config.Tunnel.ConnectTimeout = daemon.Duration(time.Second)
	return s
}

// sdStart starts s without waiting for /readyz: the test waits for READY=1.
func sdStart(t *testing.T, s *daemontest.Site) {
	t.Helper()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(20 * time.Second); err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
		if t.Failed() {
			t.Logf("%s logs:\n%s", s.Name, s.Logs())
		}
	})
}

// listening checks, at the moment it is called, that every listener of s
// answers: /readyz, each forward's TCP port, and the QUIC socket (which is
// silent to strangers, so its port must be taken instead).
func listening(s *daemontest.Site) error {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + s.Config.Admin + "/readyz")
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s", resp.Status)
	}
	for _, f := range s.Config.Forwards {
		conn, err := net.DialTimeout("tcp", f.Listen, 5*time.Second)
		if err != nil {
			return fmt.Errorf("forward: %w", err)
		}
		conn.Close()
	}
	if pc, err := net.ListenPacket("udp", s.Config.Listen); err == nil {
		pc.Close()
		return fmt.Errorf("QUIC port %s is not bound", s.Config.Listen)
	}
	return nil
}

// TestSdNotifyLifecycle: READY=1 only once every listener answers;
// RELOADING=1 (with CLOCK_MONOTONIC) then READY=1 for an applied and for a
// rejected SIGHUP reload; STOPPING=1 on SIGTERM; STATUS= says which.
func TestSdNotifyLifecycle(t *testing.T) {
	m := newSdManager(t, false)
	s := sdSite(t)
	sdStart(t, s)

	ready := m.expectState(t, "READY", 30*time.Second)
	if err := listening(s); err != nil {
		t.Fatalf("READY=1 before the listeners answer: %v", err)
	}
	if st := ready.vars["STATUS"]; !strings.Contains(st, "serving on "+s.Config.Listen) || !strings.Contains(st, "0/1 peers connected") {
		t.Errorf("STATUS at start: %q", st)
	}

	// A reload that adds a forward.
	s.Config.Forwards = append(s.Config.Forwards, daemon.ForwardConfig{Listen: freeTCP(t), Peer: "site-b", Service: "echo"})
	if err := s.Write(); err != nil {
		t.Fatal(err)
	}
	before := monotonicUsec(t)
	s.Signal(syscall.SIGHUP)
	reloading := m.expectState(t, "RELOADING", 30*time.Second)
	after := monotonicUsec(t)
	mono, err := strconv.ParseInt(reloading.vars["MONOTONIC_USEC"], 10, 64)
	if err != nil || mono < before || mono > after {
		t.Errorf("MONOTONIC_USEC=%q, want CLOCK_MONOTONIC between %d and %d µs", reloading.vars["MONOTONIC_USEC"], before, after)
	}
	ready = m.expectState(t, "READY", 30*time.Second)
	if err := listening(s); err != nil {
		t.Fatalf("READY=1 after the reload, before its forward answers: %v", err)
	}
	if st := ready.vars["STATUS"]; !strings.Contains(st, "2 forwards; reloaded at") {
		t.Errorf("STATUS after the reload: %q", st)
	}

	// A reload that needs a restart is rejected; READY=1 all the same.
	good := s.Config
	s.Config.Listen = "127.0.0.1:1"
	if err := s.Write(); err != nil {
		t.Fatal(err)
	}
	s.Signal(syscall.SIGHUP)
	m.expectState(t, "RELOADING", 30*time.Second)
	ready = m.expectState(t, "READY", 30*time.Second)
	if st := ready.vars["STATUS"]; !strings.Contains(st, "rejected, previous configuration kept") || !strings.Contains(st, "listen changed") {
		t.Errorf("STATUS after a rejected reload: %q", st)
	}
	s.Config = good

	// An invalid file: STATUS= (world-readable) names the field, never the
	// value, which could be a token in the wrong place.
	const secret = "s3cret-token-in-the-wrong-place"
	s.Config.Peers = []daemon.PeerFile{{Name: "site-b", PublicKey: good.Peers[0].PublicKey, Endpoint: secret}}
	if err := s.Write(); err != nil {
		t.Fatal(err)
	}
	s.Signal(syscall.SIGHUP)
	m.expectState(t, "RELOADING", 30*time.Second)
	ready = m.expectState(t, "READY", 30*time.Second)
	if st := ready.vars["STATUS"]; !strings.Contains(st, "peers[0].endpoint: invalid") || strings.Contains(st, secret) {
		t.Errorf("STATUS after an invalid file: %q", st)
	}
	s.Config = good
	if err := listening(s); err != nil {
		t.Fatalf("after rejected reloads: %v", err)
	}

	s.Signal(syscall.SIGTERM)
	stopping := m.expectState(t, "STOPPING", 30*time.Second)
	if st := stopping.vars["STATUS"]; !strings.Contains(st, "draining") {
		t.Errorf("STATUS when stopping: %q", st)
	}
	if err := s.Wait(30 * time.Second); err != nil {
		t.Fatalf("exit after STOPPING=1: %v", err)
	}
}

func monotonicUsec(t *testing.T) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1e3
}

// TestSdNotifyWatchdog: with WATCHDOG_USEC set, WATCHDOG=1 comes every
// half of it; with WATCHDOG_PID naming another process, never.
func TestSdNotifyWatchdog(t *testing.T) {
	const (
		usec   = 400_000 // pings every 200 ms
		window = 3 * time.Second
		want   = int(window / (usec / 2 * time.Microsecond))
	)
	count := func(m *sdManager) int {
		n := 0
		for end := time.After(window); ; {
			select {
			case msg := <-m.msgs:
				if msg.vars["WATCHDOG"] == "1" {
					n++
				}
			case <-end:
				return n
			}
		}
	}

	t.Run("own", func(t *testing.T) {
		m := newSdManager(t, false)
		t.Setenv("WATCHDOG_USEC", strconv.Itoa(usec))
		s := sdSite(t)
		sdStart(t, s)
		m.expectState(t, "READY", 30*time.Second)
		// A ticker drops ticks rather than bunching them, so more than want+1
		// means pings too often; under half means a loop that stalls.
		if n := count(m); n < want/2 || n > want+1 {
			t.Errorf("%d WATCHDOG=1 in %v, want about %d", n, window, want)
		} else {
			t.Logf("%d WATCHDOG=1 in %v (%d expected)", n, window, want)
		}
	})
	t.Run("other-pid", func(t *testing.T) {
		m := newSdManager(t, true)
		t.Setenv("WATCHDOG_USEC", strconv.Itoa(usec))
		t.Setenv("WATCHDOG_PID", "1") // not the daemon
		s := sdSite(t)
		sdStart(t, s)
		m.expectState(t, "READY", 30*time.Second)
		if n := count(m); n != 0 {
			t.Errorf("%d WATCHDOG=1 for WATCHDOG_PID=1", n)
		}
	})
}

// TestSdNotifyAbstractSocket: an abstract NOTIFY_SOCKET ("@name") works.
func TestSdNotifyAbstractSocket(t *testing.T) {
	m := newSdManager(t, true)
	s := sdSite(t)
	sdStart(t, s)
	m.expectState(t, "READY", 30*time.Second)
	s.Signal(syscall.SIGTERM)
	m.expectState(t, "STOPPING", 30*time.Second)
}

// TestSdNotifySendFailsQuietly: a NOTIFY_SOCKET nobody listens on costs one
// log line, whatever the number of sends, and nothing else.
func TestSdNotifySendFailsQuietly(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent"))
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", "")
	s := sdSite(t)
	if err := s.StartReady(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	s.Signal(syscall.SIGHUP)
	time.Sleep(time.Second) // ten watchdog ticks
	if err := listening(s); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(30 * time.Second); err != nil {
		t.Fatalf("%v\n%s", err, s.Logs())
	}
	if n := strings.Count(s.Logs(), "sd_notify: send failed"); n != 1 {
		t.Errorf("%d send-failure log lines, want 1:\n%s", n, s.Logs())
	}
}
