package daemon_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/control"
)

// TestControlSocket: a running daemon serves its control socket in its
// state directory, owner-only, records the caller's SO_PEERCRED, and
// removes the socket when it stops.
func TestControlSocket(t *testing.T) {
	s := newSite(t, t.TempDir(), "site-a")
	start(t, s)
	var c control.Caller
	if err := s.Control("whoami", nil, &c); err != nil {
		t.Fatal(err)
	}
	if c.UID != uint32(os.Getuid()) {
		t.Fatalf("whoami: uid %d, want %d", c.UID, os.Getuid())
	}
	fi, err := os.Stat(s.ControlSocket())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("control socket mode %v, want a 0600 socket", fi.Mode())
	}
	err = s.Control("no-such-op", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "unknown operation") {
		t.Fatalf("unknown op: %v", err)
	}
	if err := s.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.ControlSocket()); !os.IsNotExist(err) {
		t.Fatalf("control socket left behind after stop: %v", err)
	}
}

// TestControlSocketDefaultUnwritable: a configuration without state_dir
// whose default state folder cannot be made (read-only under the hardened
// unit, after an upgrade; here a file is in the way, which stops root too)
// still starts, without a control socket, and says why; the same folder
// named explicitly as state_dir stops the start with the reason.
func TestControlSocketDefaultUnwritable(t *testing.T) {
	s := newSite(t, t.TempDir(), "site-a")
	if err := os.WriteFile(filepath.Join(s.Dir, "state"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	start(t, s)
	if !strings.Contains(s.Logs(), "no control socket") {
		t.Fatalf("no error logged:\n%s", s.Logs())
	}
	x := newSite(t, t.TempDir(), "site-x")
	if err := os.WriteFile(filepath.Join(x.Dir, "state"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	x.Config.StateDir = "state"
	if err := x.StartReady(5 * time.Second); err == nil || !strings.Contains(err.Error(), "control socket") {
		x.Stop(15 * time.Second)
		t.Fatalf("explicit unwritable state_dir: %v", err)
	}
}
