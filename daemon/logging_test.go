package daemon_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dyad-tunnel/dyad/daemon"
)

// openPTY returns a pseudo-terminal's controller and its terminal end.
func openPTY(t *testing.T) (ctl, term *os.File) {
	t.Helper()
	ctl, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(ctl.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ctl.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	term, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ctl, term
}

// runUntil runs `dyad run` for site with stderr on out until it has
// printed want (read back through read) or limit passes, then stops it.
func runUntil(t *testing.T, path string, out *os.File, read func() string, want string, limit time.Duration) string {
	t.Helper()
	cmd := exec.Command(dyadBin, "run", "--config", path)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(limit)
	for !strings.Contains(read(), want) && time.Now().Before(deadline) {
		select {
		case <-done:
			return read()
		case <-time.After(20 * time.Millisecond):
		}
	}
	cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	return read()
}

// TestLogFormat: the log is JSON when stderr is not a terminal and console
// text when it is, unless log.format says; console text written to a file
// has no colour codes; an audit line's message is the event name;
// durations are seconds with the unit in the field name; a failed start is
// logged at error level, its dyad.daemon.stopped line too.
func TestLogFormat(t *testing.T) {
	root := t.TempDir()
	s := newSite(t, root, "site-a")
	dead := freeTCP(t) // nothing answers QUIC there: the dial fails and says when it retries
	s.Config.Log.Level = "info"
	s.Config.Peers = []daemon.PeerFile{{Name: "site-b", PublicKey: newSite(t, root, "site-b").PublicKey, Endpoint: dead}}
	s.Config.Tunnel.Connections = 1
	if err := s.Write(); err != nil {
		t.Fatal(err)
	}
	fileOut := func(name string) (*os.File, func() string) {
		f, err := os.Create(root + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f, func() string { b, _ := os.ReadFile(f.Name()); return string(b) }
	}

	// Not a terminal, no log.format: JSON.
	f, read := fileOut("json.log")
	logs := runUntil(t, s.ConfigPath(), f, read, "retry_in_s", 20*time.Second)
	var sawEvent, sawRetry bool
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("a log line to a file is not JSON: %q", line)
		}
		if ev, ok := m["event"].(string); ok {
			sawEvent = true
			if m["message"] != ev {
				t.Errorf("audit line's message %q, want the event name %q", m["message"], ev)
			}
		}
		if m["message"] == "dial failed" {
			if _, ok := m["retry_in_s"].(float64); !ok {
				t.Errorf("dial failed line without retry_in_s in seconds: %q", line)
			}
			sawRetry = true
		}
		if _, ok := m["retry_in"]; ok {
			t.Errorf("a duration without its unit in the field name: %q", line)
		}
	}
	if !sawEvent || !sawRetry {
		t.Fatalf("JSON log lacks an audit line (%v) or a dial failure (%v):\n%s", sawEvent, sawRetry, logs)
	}
	if strings.Contains(logs, `"drain"`) || !strings.Contains(logs, `"drain_s"`) {
		t.Errorf("the stop line's drain time is not drain_s:\n%s", logs)
	}

	// log.format: console into a file: text without colour codes.
	s.Config.Log.Format = "console"
	s.Write()
	f, read = fileOut("console.log")
	logs = runUntil(t, s.ConfigPath(), f, read, "dyad running", 20*time.Second)
	if strings.Contains(logs, "\x1b[") || strings.HasPrefix(strings.TrimSpace(logs), "{") || !strings.Contains(logs, "dyad.daemon.started") {
		t.Errorf("console format into a file: %q", logs)
	}

	// A terminal, no log.format: console text (coloured: a person reads it).
	s.Config.Log.Format = ""
	s.Write()
	ctl, term := openPTY(t)
	defer ctl.Close()
	var got bytes.Buffer
	readDone := make(chan struct{})
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	go func() {
		defer close(readDone)
		buf := make([]byte, 4096)
		for {
			n, err := ctl.Read(buf)
			<-mu
			got.Write(buf[:n])
			mu <- struct{}{}
			if err != nil {
				return
			}
		}
	}()
	snapshot := func() string { <-mu; defer func() { mu <- struct{}{} }(); return got.String() }
	logs = runUntil(t, s.ConfigPath(), term, snapshot, "dyad running", 20*time.Second)
	term.Close()
	if strings.Contains(logs, `{"level"`) || !strings.Contains(logs, "dyad running") || !strings.Contains(logs, "\x1b[") {
		t.Errorf("log to a terminal is not console text: %q", logs)
	}

	// A failed start (the QUIC port is taken): error level, both lines.
	busy, err := net.ListenPacket("udp", s.Config.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	f, read = fileOut("failed.log")
	logs = runUntil(t, s.ConfigPath(), f, read, "no such line", 20*time.Second)
	var failed, stopped bool
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue // main's own "dyad: …" line
		}
		switch m["message"] {
		case "dyad failed to start":
			failed = m["level"] == "error"
		case "dyad.daemon.stopped":
			stopped = m["level"] == "error"
		}
	}
	if !failed || !stopped {
		t.Errorf("failed start: error line %v, dyad.daemon.stopped at error %v:\n%s", failed, stopped, logs)
	}
}
