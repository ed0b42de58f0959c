package daemon

import (
	"context"
	"encoding/json"
	"fmt"
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
// operations on it.
func (d *Daemon) startControl(cfg *Config) error {
	srv, err := control.Listen(control.Options{Path: cfg.ControlSocket, Group: cfg.File.Control.Group}, d.log)
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
	if err := control.Call(ctx, cfg.ControlSocket, op, args, result); err != nil {
		return fmt.Errorf("dyad %s: %w", op, err)
	}
	return nil
}
