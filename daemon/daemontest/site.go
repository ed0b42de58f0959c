// Package daemontest runs real dyad daemons as separate processes on
// loopback, for the integration tests and `make demo`: each Site has its own
// identity (made by `dyad keygen`), configuration file, UDP and admin ports.
package daemontest

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/control"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// Site is one dyad daemon: its folder, configuration and process.
type Site struct {
	Name      string
	Dir       string
	Bin       string
	PublicKey string      // the line a partner pins
	Config    daemon.File // written by Write; Listen and Admin are preset
	Env       []string    // added to the daemon's environment ("KEY=value")
	logs      tunneltest.SyncBuffer
	cmd       *exec.Cmd
	exited    chan struct{}
	exitErr   error
}

// NewSite makes root/name with a fresh identity and free loopback ports.
func NewSite(bin, root, name string) (*Site, error) {
	s := &Site{Name: name, Dir: filepath.Join(root, name), Bin: bin}
	out, err := exec.Command(bin, "keygen", "--out", s.Dir).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("keygen %s: %v: %s", name, err, out)
	}
	pub, err := os.ReadFile(filepath.Join(s.Dir, "identity.pub"))
	if err != nil {
		return nil, err
	}
	s.PublicKey = strings.TrimSpace(string(pub))
	udp, err := FreeUDP()
	if err != nil {
		return nil, err
	}
	admin, err := FreeTCP()
	if err != nil {
		return nil, err
	}
	s.Config = daemon.File{Site: name, Identity: "identity.key", Listen: udp, Admin: admin,
		Log: daemon.LogFile{Level: "debug"}}
	return s, nil
}

// Peer returns the entry other sites put in their peers list for s; dial
// says whether they get s's endpoint.
func (s *Site) Peer(dial bool) daemon.PeerFile {
	p := daemon.PeerFile{Name: s.Name, PublicKey: s.PublicKey}
	if dial {
		p.Endpoint = s.Config.Listen
	}
	return p
}

// ControlSocket is the daemon's control socket, as the configuration
// resolves it.
func (s *Site) ControlSocket() string {
	if p := s.Config.Control.Socket; p != "" {
		if !filepath.IsAbs(p) {
			p = filepath.Join(s.Dir, p)
		}
		return p
	}
	dir := s.Config.StateDir
	if dir == "" {
		dir = "state"
	}
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(s.Dir, dir)
	}
	return filepath.Join(dir, "control.sock")
}

// Control calls op on the running daemon's control socket.
func (s *Site) Control(op string, args, result any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return control.Call(ctx, s.ControlSocket(), op, args, result)
}

// ConfigPath is where Write puts the configuration.
func (s *Site) ConfigPath() string { return filepath.Join(s.Dir, "dyad.yaml") }

// Write writes s.Config as YAML.
func (s *Site) Write() error {
	data, err := yaml.Marshal(s.Config)
	if err != nil {
		return err
	}
	return os.WriteFile(s.ConfigPath(), data, 0o644)
}

// Start writes the configuration and starts `dyad run`; it does not wait.
func (s *Site) Start() error {
	if err := s.Write(); err != nil {
		return err
	}
	s.cmd = exec.Command(s.Bin, "run", "--config", s.ConfigPath())
	s.cmd.Stdout, s.cmd.Stderr = &s.logs, &s.logs
	if len(s.Env) > 0 {
		s.cmd.Env = append(os.Environ(), s.Env...)
	}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.exited = make(chan struct{})
	go func() { s.exitErr = s.cmd.Wait(); close(s.exited) }()
	return nil
}

// StartReady starts the daemon and waits until /readyz answers.
func (s *Site) StartReady(timeout time.Duration) error {
	if err := s.Start(); err != nil {
		return err
	}
	return s.WaitReady(timeout)
}

// WaitReady polls /readyz until it answers 200, the process exits, or
// timeout passes.
func (s *Site) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("%s exited: %v\n%s", s.Name, s.exitErr, s.Logs())
		default:
		}
		resp, err := http.Get("http://" + s.Config.Admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %v\n%s", s.Name, timeout, s.Logs())
}

// Signal sends sig to the daemon.
func (s *Site) Signal(sig os.Signal) error { return s.cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits up to timeout for the exit; it returns the
// process's error (nil for exit status 0).
func (s *Site) Stop(timeout time.Duration) error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	s.Signal(syscall.SIGTERM)
	return s.Wait(timeout)
}

// Wait waits up to timeout for the process to exit.
func (s *Site) Wait(timeout time.Duration) error {
	select {
	case <-s.exited:
		return s.exitErr
	case <-time.After(timeout):
		s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("%s did not exit within %v", s.Name, timeout)
	}
}

// Kill ends the daemon with SIGKILL, as a crash would.
func (s *Site) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// Status is the daemon's /statusz.
type Status struct {
	Site     string            `json:"site"`
	Ready    bool              `json:"ready"`
	Counters map[string]uint64 `json:"counters"`
	Peers    []struct {
		Name        string `json:"name"`
		Connected   bool   `json:"connected"`
		Connections int    `json:"connections"`
	} `json:"peers"`
	Process daemon.ProcessStatus `json:"process"` // goroutines, descriptors, memory
}

// Status fetches /statusz.
func (s *Site) Status() (Status, error) {
	var st Status
	resp, err := http.Get("http://" + s.Config.Admin + "/statusz")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// Pid returns the daemon's process ID (0 before Start).
func (s *Site) Pid() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Logs returns everything the daemon printed so far.
func (s *Site) Logs() string { return s.logs.String() }

// FreeUDP returns a loopback UDP address that was free a moment ago.
func FreeUDP() (string, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer pc.Close()
	return pc.LocalAddr().String(), nil
}

// FreeUDPTCP returns a loopback port that was free a moment ago for both
// UDP and TCP: a daemon with tunnel.tcp_listen: true takes both.
func FreeUDPTCP() (string, error) {
	for range 50 {
		addr, err := FreeUDP()
		if err != nil {
			return "", err
		}
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr, nil
		}
	}
	return "", fmt.Errorf("no loopback port free for both UDP and TCP")
}

// FreeTCP returns a loopback TCP address that was free a moment ago.
func FreeTCP() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Build compiles cmd/dyad into dir and returns the binary's path. root is
// the module's folder.
func Build(root, dir string) (string, error) {
	bin := filepath.Join(dir, "dyad")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/dyad")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// Journal verifies the site's audit journal (in the default folder, audit/
// beside the configuration) against its identity key and returns its
// entries and the verdict.
func (s *Site) Journal() ([]journal.Entry, *journal.Result, error) {
	pub, err := identity.ParsePublicKey(s.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	v, err := journal.NewVerifier("dyad/"+s.Config.Site, ed25519.PublicKey(pub.Sign[:]))
	if err != nil {
		return nil, nil, err
	}
	dir := s.Config.Audit.Journal.Dir
	if dir == "" {
		dir = filepath.Join(s.Dir, "audit")
	}
	var out []journal.Entry
	res, err := journal.Verify(dir, journal.VerifyOptions{Verifier: v, Each: func(e *journal.Entry, _ []byte) error {
		out = append(out, *e)
		return nil
	}})
	return out, res, err
}

// Events returns the names of the journal's entries, in order.
func (s *Site) Events() []string {
	es, _, _ := s.Journal()
	var names []string
	for _, e := range es {
		names = append(names, e.Name)
	}
	return names
}
