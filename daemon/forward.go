package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/dyad-tunnel/dyad/apiguard"
	"github.com/dyad-tunnel/dyad/tunnel"
)

// defaultMaxConnections caps a forward's connections when the file does
// not say.
const defaultMaxConnections = 1024

// forwardListener accepts local connections for one forward.
type forwardListener struct {
	cfg    ForwardConfig
	ln     *net.TCPListener
	done   chan struct{}
	rules  atomic.Pointer[forwardRules] // swapped on reload
	active atomic.Int64
	// responses counts the response checks (forwards[].api); it outlives
	// reloads like the listener.
	responses apiguard.ResponseStats
}

// forwardRules are a forward's admission rules.
type forwardRules struct {
	allow []netip.Prefix // empty: any source
	max   int64          // connections at once; negative: unlimited
	// check, when set, checks the partner's responses (forwards[].api);
	// a connection keeps the policy it was accepted under.
	check *apiguard.ResponsePolicy
}

func newForwardRules(f ForwardConfig, check *apiguard.ResponsePolicy) (*forwardRules, error) {
	r := &forwardRules{max: int64(f.MaxConnections), check: check}
	if r.max == 0 {
		r.max = defaultMaxConnections
	}
	for _, a := range f.AllowFrom {
		p, err := parsePrefix(a)
		if err != nil {
			return nil, fmt.Errorf("forward %s: allow_from: %w", f.Listen, err)
		}
		r.allow = append(r.allow, p)
	}
	return r, nil
}

// key identifies a forward's listener; its rules change in place.
func (f ForwardConfig) key() string { return f.Listen + "|" + f.Peer + "|" + f.Service }

// applyForwards makes the forward listeners match cfg: new ones are bound
// first, so a port that cannot be bound rejects the whole change; then
// update runs; then removed ones close. Connections already accepted keep
// flowing.
func (d *Daemon) applyForwards(cfg *Config, update func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := map[string]bool{}
	var added []*forwardListener
	var kept []func() // new rules of kept listeners, applied once the whole change holds
	closeAdded := func() {
		for _, a := range added {
			a.ln.Close()
		}
	}
	for _, f := range cfg.File.Forwards {
		want[f.key()] = true
		if fl := d.forwards[f.key()]; fl != nil {
			rules, err := newForwardRules(f, cfg.ForwardAPIs[f.key()])
			if err != nil {
				closeAdded()
				return err
			}
			kept = append(kept, func() { fl.rules.Store(rules) })
			continue
		}
		fl, err := listenForward(f, cfg.ForwardAPIs[f.key()])
		if err != nil {
			closeAdded()
			return err
		}
		added = append(added, fl)
	}
	if err := update(); err != nil {
		closeAdded()
		return err
	}
	for k, fl := range d.forwards {
		if !want[k] {
			fl.ln.Close()
			<-fl.done
			delete(d.forwards, k)
		}
	}
	for _, apply := range kept {
		apply()
	}
	for _, fl := range added {
		d.forwards[fl.cfg.key()] = fl
		go d.serveForward(fl)
	}
	return nil
}

func listenForward(f ForwardConfig, check *apiguard.ResponsePolicy) (*forwardListener, error) {
	addr, err := net.ResolveTCPAddr("tcp", f.Listen)
	if err != nil {
		return nil, fmt.Errorf("forward %s: %w", f.Listen, err)
	}
	rules, err := newForwardRules(f, check)
	if err != nil {
		return nil, err
	}
	fl := &forwardListener{cfg: f, done: make(chan struct{})}
	fl.rules.Store(rules)
	if fl.ln, err = net.ListenTCP("tcp", addr); err != nil {
		return nil, fmt.Errorf("forward %s → %s/%s: %w", f.Listen, f.Peer, f.Service, err)
	}
	return fl, nil
}

// admit checks a new connection against the forward's source ranges and
// connection cap (THREATS P5, tested by TestLimitSlowloris), and names the
// limit that refused it. A caller that got "" must call release.
func (fl *forwardListener) admit(c *net.TCPConn) string {
	r := fl.rules.Load()
	if len(r.allow) > 0 {
		ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
		ok := false
		for _, p := range r.allow {
			if err == nil && p.Contains(ap.Addr().Unmap()) {
				ok = true
				break
			}
		}
		if !ok {
			return "allow_from"
		}
	}
	if n := fl.active.Add(1); r.max > 0 && n > r.max {
		fl.active.Add(-1)
		return "max_connections"
	}
	return ""
}

func (fl *forwardListener) release() { fl.active.Add(-1) }

// serveForward hands each accepted connection to the tunnel node.
func (d *Daemon) serveForward(fl *forwardListener) {
	defer close(fl.done)
	log := d.log.With().Str("forward", fl.cfg.Listen).Str("peer", fl.cfg.Peer).Str("service", fl.cfg.Service).Logger()
	log.Info().Msg("forward listening")
	for {
		c, err := fl.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Warn().Err(err).Msg("accept failed")
			time.Sleep(50 * time.Millisecond) // e.g. out of file descriptors: do not spin
			continue
		}
		if limit := fl.admit(c); limit != "" {
			d.node.RefuseLocal(c, fl.cfg.Peer, fl.cfg.Service, limit)
			continue
		}
		var client tunnel.LocalConn = c
		if check := fl.rules.Load().check; check != nil {
			// OWASP API10 (unsafe consumption), tested by
			// TestForwardResponseValidation.
			client = apiguard.NewCheckedConn(c, check, &fl.responses, func(f apiguard.ResponseFinding) { d.auditResponseInvalid(check, f) })
		}
		d.conns.Add(1)
		go func() {
			defer d.conns.Done()
			defer fl.release()
			if err := d.node.Forward(context.Background(), client, fl.cfg.Peer, fl.cfg.Service); err != nil {
				log.Warn().Err(err).Str("client", c.RemoteAddr().String()).Msg("forward failed")
			}
		}()
	}
}

func (d *Daemon) closeForwards() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, fl := range d.forwards {
		fl.ln.Close()
		<-fl.done
		delete(d.forwards, k)
	}
}
