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
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/apiguard"
	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/control"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// Daemon is a running dyad. Its states: starting (Run until ready) →
// running (serving; SIGHUP reloads in place) → draining (SIGTERM or ctx:
// forwards closed, active streams finishing) → stopped.
type Daemon struct {
	log  zerolog.Logger
	au   *auditing
	node *tunnel.Node
	cfg  atomic.Pointer[Config]
	id   *identity.Identity // the identity in use (dyad rotate changes it, under applyMu)
	keys siteKeys           // as the daemon started: the rotation in its overlap, if any

	pendingInvites atomic.Int64 // invitations not used nor expired (enroll.go)

	mu       sync.Mutex                  // guards forwards
	forwards map[string]*forwardListener // by ForwardConfig.key

	apiMu  sync.Mutex                 // guards guards
	guards map[string]*apiguard.Guard // API guards in force, by service

	ready atomic.Bool
	conns sync.WaitGroup // forwarded connections being handed to the node

	control     *control.Server // the local control socket; nil until start
	controlDone chan error      // its Serve's result

	// applyMu serialises what changes the configuration in force: a
	// SIGHUP reload and the control operations that change peers.
	applyMu sync.Mutex
}

// Run loads the configuration at path and runs the daemon until ctx ends or
// SIGTERM/SIGINT arrives, then drains and returns nil. SIGHUP reloads the
// configuration. Logs go to logOut. Under a service manager each state
// change is reported to it (sdnotify.go).
func Run(ctx context.Context, path string, logOut io.Writer) error {
	return RunWith(ctx, path, logOut, RunOptions{})
}

// RunOptions are choices of one start that are not configuration.
type RunOptions struct {
	// AcceptBrokenJournal starts even if the audit journal does not verify,
	// recording a signed dyad.journal.break entry (as
	// audit.journal.on_broken: continue, for this start).
	AcceptBrokenJournal bool
}

// RunWith is Run with o.
func RunWith(ctx context.Context, path string, logOut io.Writer, o RunOptions) error {
	started := time.Now()
	cfg, err := LoadConfig(path)
	if err != nil {
		return err
	}
	if err := checkFIPS(cfg); err != nil {
		return err
	}
	if o.AcceptBrokenJournal {
		cfg.Audit.Journal.OnBroken = journal.BrokenContinue
	}
	log := newLogger(cfg, logOut)
	sd := newNotifier(log)
	// The state directory's rotated identity, if any, replaces the key
	// file (rotate.go).
	keys, err := loadSiteKeys(cfg)
	if err != nil {
		return err
	}
	id := keys.cur
	au, err := startAudit(cfg, keys, log)
	if err != nil {
		return err
	}
	d := &Daemon{log: log, au: au, id: id, keys: keys, forwards: map[string]*forwardListener{}}
	d.cfg.Store(cfg)
	if err := au.metrics.ObserveAPI(d.apiMetrics); err != nil {
		au.close(10 * time.Second)
		return err
	}
	au.auditor.Emit(audit.ConfigLoaded, configAttrs(cfg)...)
	for _, n := range cfg.Notes {
		log.Warn().Str("state_dir", cfg.StateDir).Msg(n)
	}
	// Caught before the listeners open: a SIGHUP sent as soon as the daemon
	// says it is ready (systemctl reload) must not meet Go's default action,
	// which ends the process.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	admin, err := d.start(cfg, id)
	if err != nil {
		sd.setStatus("failed to start: " + err.Error())
		log.Error().Err(err).Msg("dyad failed to start")
		d.stopped(started, "error", err)
		return err
	}
	d.ready.Store(true)
	sd.ready(d.runningStatus(""))
	au.auditor.Emit(audit.DaemonStarted, startedAttrs(cfg, id, d.node.Addr().String())...)
	log.Info().Str("fingerprint", id.Public().Fingerprint()).
		Str("listen", d.node.Addr().String()).Int("peers", len(cfg.Tunnel.Peers)).
		Int("services", len(cfg.Tunnel.Services)).Int("forwards", len(cfg.File.Forwards)).
		Str("journal", cfg.Audit.Journal.Dir).Msg("dyad running")
	if w := CurrentFIPS().Warning(); w != "" {
		log.Warn().Msg(w)
	}
	if w := IdentityAgeWarning(cfg, id, time.Now()); w != "" {
		log.Warn().Str("identity_created", identityCreated(id)).Msg(w)
	}

	inventory := time.NewTicker(inventoryInterval)
	defer inventory.Stop()
	seen := map[string]time.Time{} // the inventory's last-seen times at its previous event
	var tick <-chan time.Time      // watchdog pings and STATUS= refresh, under a service manager
	if every := sd.tick(); every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	note := "" // the last reload's outcome, kept in STATUS=
	for stop := false; !stop; {
		select {
		case <-ctx.Done():
			stop = true
		case <-tick:
			sd.alive(d.runningStatus(note))
		case <-inventory.C:
			d.emitInventory(seen)
		case s := <-sigs:
			if s == syscall.SIGHUP {
				note = d.reloadNotified(sd, path)
				continue
			}
			log.Info().Str("signal", s.String()).Msg("stopping")
			stop = true
		}
	}
	sd.stopping(fmt.Sprintf("draining: open streams have up to %v to finish", d.cfg.Load().ShutdownTimeout))
	d.shutdown(admin)
	d.emitInventory(seen)
	d.stopped(started, "signal", nil)
	return nil
}

// start opens the QUIC socket, the tunnel node, the forwards and the admin
// endpoint.
func (d *Daemon) start(cfg *Config, id *identity.Identity) (*http.Server, error) {
	pc, err := net.ListenPacket("udp", cfg.File.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.File.Listen, err)
	}
	var tcpLn net.Listener
	if addr := cfg.File.Tunnel.TCPListen.address(cfg.File.Listen); addr != "" {
		if tcpLn, err = net.Listen("tcp", addr); err != nil {
			pc.Close()
			return nil, fmt.Errorf("tunnel.tcp_listen %s: %w", addr, err)
		}
	}
	commit := d.wireGuards(cfg)
	tcfg := d.tunnelConfig(cfg)
	tcfg.Handover, tcfg.Learned = d.keys.handover, d.learnedRotations(cfg)
	node, err := tunnel.New(pc, id, tcfg, d.log, d.au.auditor)
	if err != nil {
		pc.Close()
		if tcpLn != nil {
			tcpLn.Close()
		}
		return nil, err
	}
	commit()
	if tcpLn != nil {
		node.ServeTCP(tcpLn) // the node closes it
	}
	d.node = node
	if err := d.au.metrics.ObserveConnections(d.connSamples); err != nil {
		node.Close()
		return nil, err
	}
	d.scheduleRetire()
	d.setPending(cfg.State, time.Now())
	node.SetEnroller(d)
	if err := d.applyForwards(cfg, func() error { return nil }); err != nil {
		node.Close()
		return nil, err
	}
	if err := d.startControl(cfg); err != nil {
		d.closeForwards()
		node.Close()
		return nil, err
	}
	if cfg.File.Admin == "" {
		return nil, nil
	}
	admin, err := d.startAdmin(cfg.File.Admin)
	if err != nil {
		d.stopControl()
		d.closeForwards()
		node.Close()
		return nil, err
	}
	return admin, nil
}

// stopped records the end of the daemon and closes the audit journal.
func (d *Daemon) stopped(started time.Time, reason string, err error) {
	attrs := []attribute.KeyValue{attribute.String(audit.KeyReason, reason), attribute.Float64(audit.KeyDuration, time.Since(started).Seconds())}
	if err != nil {
		attrs = append(attrs, attribute.String(audit.KeyErrorType, "startup_failed"))
	}
	d.au.auditor.Emit(audit.DaemonStopped, attrs...)
	if cerr := d.au.close(10 * time.Second); cerr != nil {
		d.log.Error().Err(cerr).Msg("audit journal not closed cleanly")
	}
}

// shutdown closes the forward listeners, lets active streams finish within
// the shutdown timeout, then closes the tunnels.
func (d *Daemon) shutdown(admin *http.Server) {
	d.ready.Store(false)
	cfg := d.cfg.Load()
	d.stopControl()
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
	ev.Float64("drain_s", time.Since(start).Seconds()).Msg("dyad stopped")
}

// reload applies the configuration file again. A configuration that fails
// to load, or that changes what needs a restart, is rejected (the error is
// returned) and the running one stays.
func (d *Daemon) reload(path string) error {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	old := d.cfg.Load()
	cfg, err := LoadConfig(path)
	if err == nil {
		err = restartOnly(old, cfg)
	}
	if err == nil {
		commit := d.wireGuards(cfg)
		err = d.applyForwards(cfg, func() error { return d.node.Update(d.tunnelConfig(cfg)) })
		if err == nil {
			commit()
		}
	}
	if err != nil {
		errType := "invalid_config"
		if errors.Is(err, errRestartRequired) {
			errType = "restart_required"
		}
		d.au.auditor.Emit(audit.ConfigRejected, attribute.String(audit.KeyConfigPath, path),
			attribute.String(audit.KeyError, err.Error()), attribute.String(audit.KeyErrorType, errType))
		return err
	}
	d.cfg.Store(cfg)
	d.setPending(cfg.State, time.Now())
	d.au.auditor.Emit(audit.ConfigReloaded, configAttrs(cfg)...)
	return nil
}

// errRestartRequired marks a reload that changes what only a restart can.
var errRestartRequired = errors.New("restart required")

// restartOnly rejects changes that a reload cannot apply.
func restartOnly(old, cur *Config) error {
	switch {
	case old.IdentityPath != cur.IdentityPath:
		return fmt.Errorf("identity changed: %w to use another key", errRestartRequired)
	case old.File.Listen != cur.File.Listen:
		return fmt.Errorf("listen changed: %w to move the QUIC port", errRestartRequired)
	case old.File.Tunnel.TCPListen != cur.File.Tunnel.TCPListen:
		return fmt.Errorf("tunnel.tcp_listen changed: %w to open or move the TCP port", errRestartRequired)
	case old.File.Admin != cur.File.Admin:
		return fmt.Errorf("admin changed: %w to move the admin endpoint", errRestartRequired)
	case old.Site != cur.Site:
		return fmt.Errorf("site changed: %w (it names the audit journal)", errRestartRequired)
	case old.StateDir != cur.StateDir:
		return fmt.Errorf("state_dir changed: %w to move the state directory", errRestartRequired)
	case old.ControlSocket != cur.ControlSocket || old.File.Control.Group != cur.File.Control.Group:
		return fmt.Errorf("control changed: %w to move the control socket", errRestartRequired)
	case !reflect.DeepEqual(old.File.Audit, cur.File.Audit):
		return fmt.Errorf("audit changed: %w to apply audit settings", errRestartRequired)
	case old.File.FIPS != cur.File.FIPS:
		return fmt.Errorf("fips changed: %w to change FIPS 140-3 mode", errRestartRequired)
	case old.File.TLS != cur.File.TLS:
		// The TLS configurations are built when the node starts.
		return fmt.Errorf("tls changed: %w to apply TLS settings", errRestartRequired)
	}
	return nil
}

// startAdmin serves /healthz (alive), /readyz (serving traffic) and
// /statusz (peers, counters and process figures) on addr.
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
	mux.Handle("GET /metrics", d.au.metrics.Handler())
	mux.HandleFunc("GET /statusz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d.statusReport())
	})
	d.handlePeerHealth(mux)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}
