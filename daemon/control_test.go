package daemon_test

import (
	"os"
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
