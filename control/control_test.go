package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// The test binary doubles as a client run under another uid: with
// DYAD_CONTROL_CALL set it calls whoami on that socket and prints the
// outcome.
func TestMain(m *testing.M) {
	if path := os.Getenv("DYAD_CONTROL_CALL"); path != "" {
		var c Caller
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := Call(ctx, path, "whoami", nil, &c); err != nil {
			fmt.Println("error:", err, "denied:", errors.Is(err, ErrDenied), "eacces:", errors.Is(err, os.ErrPermission))
			os.Exit(0)
		}
		fmt.Println("ok: uid", c.UID)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func serve(t *testing.T, o Options) *Server {
	t.Helper()
	s, err := Listen(o, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux()
	m.Handle("echo", func(_ context.Context, c Caller, args json.RawMessage) (any, error) {
		var a struct{ Say string }
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, err
		}
		if a.Say == "fail" {
			return nil, errors.New("asked to fail")
		}
		return map[string]any{"said": a.Say, "uid": c.UID}, nil
	})
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), m) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s
}

// TestWhoAmI: the daemon sees the caller's uid through SO_PEERCRED, and the
// socket is created owner-only in an owner-only folder.
func TestWhoAmI(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "control.sock")
	serve(t, Options{Path: path})
	var c Caller
	if err := Call(context.Background(), path, "whoami", nil, &c); err != nil {
		t.Fatal(err)
	}
	if c.UID != uint32(os.Getuid()) || c.PID != int32(os.Getpid()) {
		t.Fatalf("whoami = %+v, want uid %d pid %d", c, os.Getuid(), os.Getpid())
	}
	attrs := c.Attrs()
	if string(attrs[0].Key) != AttrUID || attrs[0].Value.AsInt64() != int64(os.Getuid()) {
		t.Fatalf("attrs = %v", attrs)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
}

func TestProtocolErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	serve(t, Options{Path: path})
	ctx := context.Background()
	var out map[string]any
	if err := Call(ctx, path, "echo", map[string]string{"say": "hi"}, &out); err != nil || out["said"] != "hi" {
		t.Fatalf("echo: %v %v", out, err)
	}
	var ce *Error
	if err := Call(ctx, path, "echo", map[string]string{"say": "fail"}, nil); !errors.As(err, &ce) || ce.Code != CodeFailed || !strings.Contains(err.Error(), "asked to fail") {
		t.Fatalf("failing handler: %v", err)
	}
	if err := Call(ctx, path, "nope", nil, nil); !errors.As(err, &ce) || ce.Code != CodeUnknownOp {
		t.Fatalf("unknown op: %v", err)
	}
	for _, raw := range []string{"not json\n", `{"v":9,"op":"whoami"}` + "\n", strings.Repeat("x", MaxRequest+10) + "\n"} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(raw))
		b, _ := io.ReadAll(c)
		c.Close()
		var rep Reply
		if err := json.Unmarshal(b, &rep); err != nil || rep.OK || rep.Code != CodeBadRequest {
			t.Errorf("%.20q: reply %s (%v)", raw, b, err)
		}
	}
}

// TestStaleSocket: a socket file left by a killed daemon is replaced; a
// live daemon's is not taken over.
func TestStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(Options{Path: path}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "another daemon") {
		t.Fatalf("second daemon on a live socket: %v", err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	serve(t, Options{Path: path})
	if err := Call(context.Background(), path, "whoami", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestOtherUIDRefused: another local user cannot call. The socket's mode
// refuses it at connect; and with the mode opened up (a mistaken chmod),
// SO_PEERCRED still refuses it before its request is read.
func TestOtherUIDRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	// Not t.TempDir: its parent is 0700, and uid 65534 must run the binary.
	dir, err := os.MkdirTemp("", "dyad-control-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	sockDir := filepath.Join(dir, "run")
	path := filepath.Join(sockDir, "control.sock")
	serve(t, Options{Path: path})
	asNobody := func() string {
		cmd := exec.Command(bin)
		cmd.Env = []string{"DYAD_CONTROL_CALL=" + path}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid 65534: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if out := asNobody(); !strings.Contains(out, "eacces: true") {
		t.Fatalf("uid 65534 through the 0700 folder: %s", out)
	}
	os.Chmod(sockDir, 0o755)
	if out := asNobody(); !strings.Contains(out, "eacces: true") {
		t.Fatalf("uid 65534 on the 0600 socket: %s", out)
	}
	os.Chmod(path, 0o666)
	if out := asNobody(); !strings.Contains(out, "denied: true") {
		t.Fatalf("uid 65534 on a 0666 socket: SO_PEERCRED let it through: %s", out)
	}

	// control.group: the socket is 0660 and the group's, its folder must
	// let the group in, and a member (uid 65534 in group nogroup) may call.
	gdir := filepath.Join(dir, "grp")
	if s, err := Listen(Options{Path: filepath.Join(dir, "new", "c.sock"), Group: "nogroup"}, zerolog.Nop()); err != nil {
		t.Fatalf("new folder for a group socket: %v", err)
	} else {
		s.Close()
	}
	os.Mkdir(gdir, 0o700)
	if _, err := Listen(Options{Path: filepath.Join(gdir, "c.sock"), Group: "nogroup"}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "does not let the group in") {
		t.Fatalf("group socket in a 0700 folder: %v", err)
	}
	os.Chmod(gdir, 0o750)
	os.Chown(gdir, -1, 65534)
	gpath := filepath.Join(gdir, "c.sock")
	serve(t, Options{Path: gpath, Group: "nogroup"})
	fi, err := os.Stat(gpath)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != 65534 {
		t.Fatalf("group socket: %v %v", fi.Mode(), err)
	}
	path = gpath
	if out := asNobody(); out != "ok: uid 65534" {
		t.Fatalf("a member of control.group: %s", out)
	}
}
