package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// Daemon is a running dyad. Its states: starting (Run until ready) →
// running (serving; SIGHUP reloads in place) → draining (SIGTERM or ctx:
// forwards closed, active streams finishing) → stopped.
type Daemon struct {
	log  zerolog.Logger
	node *tunnel.Node
	cfg  atomic.Pointer[Config]

	mu       sync.Mutex // guards forwards
	forwards map[ForwardConfig]*forwardListener

	ready atomic.Bool
	conns sync.WaitGroup // forwarded connections being handed to the node
}

// Run loads the configuration at path and runs the daemon until ctx ends or
// SIGTERM/SIGINT arrives, then drains and returns nil. SIGHUP reloads the
// configuration. Logs go to logOut.
func Run(ctx context.Context, path string, logOut io.Writer) error {
	cfg, err := LoadConfig(path)
	if err != nil {
		return err
	}
	log := newLogger(cfg, logOut)
	id, err := identity.Load(cfg.IdentityPath)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", cfg.File.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.File.Listen, err)
	}
	node, err := tunnel.New(pc, id, cfg.Tunnel, log)
	if err != nil {
		pc.Close()
		return err
	}
	d := &Daemon{log: log, node: node, forwards: map[ForwardConfig]*forwardListener{}}
	d.cfg.Store(cfg)
	if err := d.applyForwards(cfg, func() error { return nil }); err != nil {
		node.Close()
		return err
	}
	var admin *http.Server
	if cfg.File.Admin != "" {
		if admin, err = d.startAdmin(cfg.File.Admin); err != nil {
			d.closeForwards()
			node.Close()
			return err
		}
	}
	d.ready.Store(true)
	log.Info().Str("event", "daemon.started").Str("fingerprint", id.Public().Fingerprint()).
		Str("listen", node.Addr().String()).Int("peers", len(cfg.Tunnel.Peers)).
		Int("services", len(cfg.Tunnel.Services)).Int("forwards", len(cfg.File.Forwards)).
		Msg("dyad running")

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	for stop := false; !stop; {
		select {
		case <-ctx.Done():
			stop = true
		case s := <-sigs:
			if s == syscall.SIGHUP {
				d.reload(path)
				continue
			}
			log.Info().Str("signal", s.String()).Msg("stopping")
			stop = true
		}
	}
	return d.shutdown(admin)
}

// shutdown closes the forward listeners, lets active streams finish within
// the shutdown timeout, then closes the tunnels.
func (d *Daemon) shutdown(admin *http.Server) error {
	d.ready.Store(false)
	cfg := d.cfg.Load()
	d.closeForwards()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	start := time.Now()
	err := d.node.Shutdown(ctx)
	d.conns.Wait() // quick now: the node is closed
	if admin != nil {
		admin.Close()
	}
	ev := d.log.Info()
	if err != nil {
		ev = d.log.Warn().Err(err)
	}
	ev.Str("event", "daemon.stopped").Dur("drain", time.Since(start)).Msg("dyad stopped")
	return nil
}

// reload applies the configuration file again. A configuration that fails
// to load, or that changes what needs a restart, is rejected and the
// running one stays.
func (d *Daemon) reload(path string) {
	old := d.cfg.Load()
	cfg, err := LoadConfig(path)
	if err == nil {
		err = restartOnly(old, cfg)
	}
	if err == nil {
		err = d.applyForwards(cfg, func() error { return d.node.Update(cfg.Tunnel) })
	}
	if err != nil {
		d.log.Error().Str("event", "config.rejected").Err(err).Msg("reload rejected; the running configuration stays")
		return
	}
	d.cfg.Store(cfg)
	d.log.Info().Str("event", "config.reloaded").Int("peers", len(cfg.Tunnel.Peers)).
		Int("services", len(cfg.Tunnel.Services)).Int("forwards", len(cfg.File.Forwards)).Msg("configuration reloaded")
}

// restartOnly rejects changes that a reload cannot apply.
func restartOnly(old, cur *Config) error {
	switch {
	case old.IdentityPath != cur.IdentityPath:
		return errors.New("identity changed: restart dyad to use another key")
	case old.File.Listen != cur.File.Listen:
		return errors.New("listen changed: restart dyad to move the QUIC port")
	case old.File.Admin != cur.File.Admin:
		return errors.New("admin changed: restart dyad to move the admin endpoint")
	}
	return nil
}

func newLogger(cfg *Config, out io.Writer) zerolog.Logger {
	if cfg.File.Log.Format == "console" {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.RFC3339}
	}
	return zerolog.New(out).Level(cfg.LogLevel).With().Timestamp().Str("site", cfg.Site).Logger()
}

// startAdmin serves /healthz (alive), /readyz (serving traffic) and
// /statusz (peers and counters) on addr.
func (d *Daemon) startAdmin(addr string) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /statusz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"site":     d.cfg.Load().Site,
			"ready":    d.ready.Load(),
			"peers":    d.node.Status(),
			"counters": d.node.Stats.Snapshot(),
		})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}
