package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// maxConns bounds the connections served at once; further ones wait in the
// listen backlog.
const maxConns = 16

// Options say where the socket is and who may open it.
type Options struct {
	// Path is the socket file. Its directory is created 0700 (0750 with a
	// Group) if missing.
	Path string
	// Group, when set, is a group name whose members may call too: the
	// socket is then 0660 and owned by that group, and its directory must
	// let the group search it.
	Group string
}

// Server is a listening control socket. Its states: listening (Listen) →
// serving (Serve) → closed (Close: the listener and the socket file are
// gone, connections being served finish).
type Server struct {
	ln   *net.UnixListener
	path string
	uid  uint32 // the daemon's effective uid
	gid  int    // the group's gid, -1 without one
	log  zerolog.Logger

	wg   sync.WaitGroup // connections being served
	once sync.Once
}

// Listen creates the socket at o.Path. An existing socket that answers
// belongs to another daemon and is an error; one that does not is stale
// and replaced.
func Listen(o Options, log zerolog.Logger) (*Server, error) {
	if o.Path == "" {
		return nil, errors.New("control socket: no path")
	}
	s := &Server{path: o.Path, uid: uint32(os.Geteuid()), gid: -1, log: log}
	dirMode := os.FileMode(0o700)
	if o.Group != "" {
		g, err := user.LookupGroup(o.Group)
		if err != nil {
			return nil, fmt.Errorf("control.group %q: %w", o.Group, err)
		}
		if s.gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("control.group %q: gid %q: %w", o.Group, g.Gid, err)
		}
		dirMode = 0o750
	}
	dir := filepath.Dir(o.Path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, dirMode); err != nil {
			return nil, fmt.Errorf("control socket %s: %w", o.Path, err)
		}
		if s.gid >= 0 {
			if err := os.Chown(dir, -1, s.gid); err != nil {
				return nil, fmt.Errorf("control socket %s: give %s to group %s: %w", o.Path, dir, o.Group, err)
			}
		}
	}
	if s.gid >= 0 {
		if err := groupCanSearch(dir, s.gid); err != nil {
			return nil, fmt.Errorf("control.group %q: %w", o.Group, err)
		}
	}
	if err := removeStale(o.Path); err != nil {
		return nil, err
	}
	// The socket is created with the final mode (umask), so there is no
	// moment in which others could connect.
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: o.Path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", o.Path, err)
	}
	ln.SetUnlinkOnClose(true)
	s.ln = ln
	if s.gid >= 0 {
		if err := os.Chown(o.Path, -1, s.gid); err == nil {
			err = os.Chmod(o.Path, 0o660)
		}
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("control socket %s: group %s: %w", o.Path, o.Group, err)
		}
	}
	return s, nil
}

// groupCanSearch checks that members of gid can reach a file in dir.
func groupCanSearch(dir string, gid int) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if fi.Mode().Perm()&0o001 != 0 || fi.Mode().Perm()&0o010 != 0 && int(st.Gid) == gid {
		return nil
	}
	return fmt.Errorf("the socket's folder %s (mode %v, gid %d) does not let the group in: make it group-owned and 0750, or use a folder such as /run/dyad (systemd RuntimeDirectory=dyad, RuntimeDirectoryMode=0750)", dir, fi.Mode().Perm(), st.Gid)
}

// removeStale removes a socket file no daemon answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("control socket %s: exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another daemon is listening on it", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("control socket %s: remove stale socket: %w", path, err)
	}
	return nil
}

// Path returns the socket file.
func (s *Server) Path() string { return s.path }

// Serve answers connections with m until Close. It returns nil after Close.
func (s *Server) Serve(ctx context.Context, m *Mux) error {
	sem := make(chan struct{}, maxConns)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and the like: wait rather than spin.
			s.log.Warn().Err(err).Str("socket", s.path).Msg("control socket: accept failed")
			time.Sleep(100 * time.Millisecond)
			continue
		}
		sem <- struct{}{}
		s.wg.Add(1)
		go func() {
			defer func() { <-sem; s.wg.Done() }()
			s.serveConn(ctx, c, m)
		}()
	}
}

// Close stops listening, removes the socket file and waits for the
// connections being served.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() { err = s.ln.Close() })
	s.wg.Wait()
	return err
}

func (s *Server) serveConn(ctx context.Context, c *net.UnixConn, m *Mux) {
	defer c.Close()
	caller, err := peerCred(c)
	if err != nil {
		s.log.Warn().Err(err).Msg("control socket: no peer credentials; refused")
		writeReply(c, Reply{Code: CodeDenied, Error: "no peer credentials"})
		return
	}
	// File modes are the first gate; this is the second (THREATS: local
	// control, tested by TestOtherUIDRefused).
	if !s.allowed(caller) {
		s.log.Warn().Uint32("uid", caller.UID).Str("user", caller.User).Int32("pid", caller.PID).
			Msg("control socket: caller is neither the daemon's user nor in control.group; refused")
		writeReply(c, Reply{Code: CodeDenied, Error: ErrDenied.Error()})
		return
	}
	c.SetReadDeadline(time.Now().Add(RequestTimeout))
	line, err := bufio.NewReaderSize(io.LimitReader(c, MaxRequest+1), 4096).ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		// ReadSlice's buffer is small; read the rest of the line whole.
		line, err = readLine(line, c)
	}
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		writeReply(c, Reply{Code: CodeBadRequest, Error: fmt.Sprintf("read request: %v", err)})
		return
	}
	if len(line) > MaxRequest {
		writeReply(c, Reply{Code: CodeBadRequest, Error: fmt.Sprintf("request longer than %d bytes", MaxRequest)})
		return
	}
	c.SetReadDeadline(time.Time{})
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		writeReply(c, Reply{Code: CodeBadRequest, Error: "request is not one JSON object"})
		return
	}
	if req.V != Version {
		writeReply(c, Reply{Code: CodeBadRequest, Error: fmt.Sprintf("protocol version %d, this daemon speaks %d", req.V, Version)})
		return
	}
	h, ok := m.ops[req.Op]
	if !ok {
		ops := m.Ops()
		slices.Sort(ops)
		writeReply(c, Reply{Code: CodeUnknownOp, Error: fmt.Sprintf("unknown operation %q (this daemon has %v)", req.Op, ops)})
		return
	}
	res, err := h(ctx, caller, req.Args)
	if err != nil {
		writeReply(c, Reply{Code: CodeFailed, Error: err.Error()})
		return
	}
	raw, err := json.Marshal(res)
	if err != nil {
		writeReply(c, Reply{Code: CodeFailed, Error: fmt.Sprintf("encode result: %v", err)})
		return
	}
	writeReply(c, Reply{OK: true, Result: raw})
}

// readLine finishes a line longer than the first buffer, up to MaxRequest+1
// bytes in all.
func readLine(first []byte, r io.Reader) ([]byte, error) {
	buf := append([]byte(nil), first...)
	one := make([]byte, 4096)
	for len(buf) <= MaxRequest {
		n, err := r.Read(one)
		chunk := one[:n]
		if i := slices.Index(chunk, '\n'); i >= 0 {
			return append(buf, chunk[:i+1]...), nil
		}
		buf = append(buf, chunk...)
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

func (s *Server) allowed(c Caller) bool {
	if c.UID == s.uid || c.UID == 0 {
		return true
	}
	if s.gid < 0 {
		return false
	}
	if int(c.GID) == s.gid {
		return true
	}
	u, err := user.LookupId(strconv.FormatUint(uint64(c.UID), 10))
	if err != nil {
		return false
	}
	gids, err := u.GroupIds()
	return err == nil && slices.Contains(gids, strconv.Itoa(s.gid))
}

func writeReply(c net.Conn, r Reply) {
	r.V = Version
	c.SetWriteDeadline(time.Now().Add(RequestTimeout))
	b, _ := json.Marshal(r)
	c.Write(append(b, '\n'))
}

// peerCred reads the caller's credentials (SO_PEERCRED).
func peerCred(c *net.UnixConn) (Caller, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var cred *syscall.Ucred
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		cred, gerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return Caller{}, err
	}
	if gerr != nil {
		return Caller{}, fmt.Errorf("SO_PEERCRED: %w", gerr)
	}
	return Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid, User: lookupUser(cred.Uid)}, nil
}
