package daemon

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/dyad-tunnel/dyad/control"
)

// ControlOp is one operation of the control socket, served by a running
// daemon. It returns the reply's result (encoded as JSON) or an error whose
// text the operator reads (never a secret). An operation that changes the
// daemon holds d.applyMu while it does, and puts c.Attrs() in its audit
// event.
type ControlOp func(d *Daemon, ctx context.Context, c control.Caller, args json.RawMessage) (any, error)

var (
	controlOpsMu sync.Mutex
	controlOps   = map[string]ControlOp{} // by operation name
)

// registerControl adds an operation to every daemon's control socket. Call
// it from an init function in the file that implements the operation, so
// operations never share a file:
//
//	func init() { registerControl("status", (*Daemon).controlStatus) }
func registerControl(op string, fn ControlOp) {
	controlOpsMu.Lock()
	defer controlOpsMu.Unlock()
	if _, dup := controlOps[op]; dup {
		panic("daemon: control operation " + op + " registered twice")
	}
	controlOps[op] = fn
}

// startControl opens the control socket and serves the registered
// operations on it. A socket the configuration places explicitly (state_dir
// or control.socket) that cannot be opened stops the start; at the default
// place beside the YAML file (read-only under the hardened systemd unit, in
// a configuration written before state_dir existed) the daemon logs the
// error and runs without one, so an upgrade never stops traffic
// (TestControlSocketDefaultUnwritable).
func (d *Daemon) startControl(cfg *Config) error {
	srv, err := control.Listen(control.Options{Path: cfg.ControlSocket, Group: cfg.File.Control.Group}, d.log)
	if err != nil && cfg.File.StateDir == "" && cfg.File.Control.Socket == "" {
		d.log.Error().Err(err).Str("state_dir", cfg.StateDir).
			Msg("no control socket: dyad invite, join and revoke cannot reach this daemon; set state_dir to a writable folder (e.g. /var/lib/dyad)")
		return nil
	}
	if err != nil {
		return err
	}
	m := control.NewMux()
	controlOpsMu.Lock()
	for op, fn := range controlOps {
		m.Handle(op, func(ctx context.Context, c control.Caller, args json.RawMessage) (any, error) {
			return fn(d, ctx, c, args)
		})
	}
	controlOpsMu.Unlock()
	d.control, d.controlDone = srv, make(chan error, 1)
	go func() { d.controlDone <- srv.Serve(context.Background(), m) }()
	return nil
}

// stopControl closes the control socket and waits for the calls being
// served.
func (d *Daemon) stopControl() {
	if d.control == nil {
		return
	}
	d.control.Close()
	if err := <-d.controlDone; err != nil {
		d.log.Warn().Err(err).Msg("control socket")
	}
	d.control = nil
}

// ControlCall runs op on the daemon that the configuration at configPath
// describes, through its control socket, decoding the reply's result into
// result (may be nil). The command-line side of every control operation.
func ControlCall(configPath, op string, args, result any, timeout time.Duration) error {
	cfg, err := LoadConfig(configPath)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// control.Call's errors start with op.
	return control.Call(ctx, cfg.ControlSocket, op, args, result)
}
