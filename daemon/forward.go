package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// forwardListener accepts local connections for one forward.
type forwardListener struct {
	cfg  ForwardConfig
	ln   *net.TCPListener
	done chan struct{}
}

// applyForwards makes the forward listeners match cfg: new ones are bound
// first, so a port that cannot be bound rejects the whole change; then
// update runs; then removed ones close. Connections already accepted keep
// flowing.
func (d *Daemon) applyForwards(cfg *Config, update func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := map[ForwardConfig]bool{}
	var added []*forwardListener
	for _, f := range cfg.File.Forwards {
		want[f] = true
		if d.forwards[f] != nil {
			continue
		}
		fl, err := listenForward(f)
		if err != nil {
			for _, a := range added {
				a.ln.Close()
			}
			return err
		}
		added = append(added, fl)
	}
	if err := update(); err != nil {
		for _, a := range added {
			a.ln.Close()
		}
		return err
	}
	for f, fl := range d.forwards {
		if !want[f] {
			fl.ln.Close()
			<-fl.done
			delete(d.forwards, f)
		}
	}
	for _, fl := range added {
		d.forwards[fl.cfg] = fl
		go d.serveForward(fl)
	}
	return nil
}

func listenForward(f ForwardConfig) (*forwardListener, error) {
	addr, err := net.ResolveTCPAddr("tcp", f.Listen)
	if err != nil {
		return nil, fmt.Errorf("forward %s: %w", f.Listen, err)
	}
	ln, err := net.ListenTCP("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("forward %s → %s/%s: %w", f.Listen, f.Peer, f.Service, err)
	}
	return &forwardListener{cfg: f, ln: ln, done: make(chan struct{})}, nil
}

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
		d.conns.Add(1)
		go func() {
			defer d.conns.Done()
			if err := d.node.Forward(context.Background(), c, fl.cfg.Peer, fl.cfg.Service); err != nil {
				log.Warn().Err(err).Str("client", c.RemoteAddr().String()).Msg("forward failed")
			}
		}()
	}
}

func (d *Daemon) closeForwards() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for f, fl := range d.forwards {
		fl.ln.Close()
		<-fl.done
		delete(d.forwards, f)
	}
}
