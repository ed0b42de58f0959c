package main

import (
	"fmt"
	"net"
	"slices"
	"syscall"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
)

const (
	readyTimeout = 15 * time.Second
	// recoverTimeout bounds the time from a fault's end to verified
	// traffic on every flow: well under the tunnels' 30 s idle timeout, so
	// a stale tunnel that is only waited out fails the soak.
	recoverTimeout = 10 * time.Second
	pauseFor       = 4 * time.Second // well inside the idle timeout too
	upstreamDown   = time.Second
)

// rotation is the order of the faults. Restarts alternate between the two
// daemons from one round to the next; a reload hits the daemon the kill
// spared.
var rotation = []string{"kill", "hup", "term", "upstream", "pause", "rebind"}

// injector makes the faults.
type injector struct {
	led   *ledger
	sites [2]*daemontest.Site
	ups   []*upstream
	relay *daemontest.UDPRelay            // the UDP path from A to B
	spare map[string]string               // site → address of the forward a reload adds or removes
	fwds  map[string]daemon.ForwardConfig // site → the forward that spare copies
	n     int                             // faults made
}

// next makes the next fault of the rotation and waits until traffic is
// back (bounded), returning the fault.
func (in *injector) next() *fault {
	kind := rotation[in.n%len(rotation)]
	round := in.n / len(rotation)
	in.n++
	hit, spared := in.sites[round%2], in.sites[(round+1)%2]
	var f *fault
	switch kind {
	case "kill":
		f = in.kill(hit)
	case "hup":
		f = in.reload(spared)
	case "term":
		f = in.term(spared)
	case "upstream":
		f = in.restartUpstreams()
	case "pause":
		f = in.pausePath()
	case "rebind":
		f = in.rebind()
	}
	in.led.awaitBack(f, recoverTimeout)
	return f
}

func (in *injector) kill(s *daemontest.Site) *fault {
	f := in.led.begin("kill", "kill -9, restart "+s.Name, s.Name, true)
	s.Kill()
	in.led.restore(f, errText("restart", s.StartReady(readyTimeout)))
	return f
}

func (in *injector) term(s *daemontest.Site) *fault {
	f := in.led.begin("term", "SIGTERM (drain), restart "+s.Name, s.Name, true)
	problem := errText("graceful stop", s.Stop(time.Duration(s.Config.Tunnel.ShutdownTimeout)+readyTimeout))
	if err := s.StartReady(readyTimeout); err != nil && problem == "" {
		problem = errText("restart", err)
	}
	in.led.restore(f, problem)
	return f
}

// reload adds a forward on a spare port to s's configuration, or removes
// it, sends SIGHUP and checks that the port opened or closed: a reload
// that did nothing fails. No transfer may be interrupted by it.
func (in *injector) reload(s *daemontest.Site) *fault {
	addr := in.spare[s.Name]
	i := slices.IndexFunc(s.Config.Forwards, func(f daemon.ForwardConfig) bool { return f.Listen == addr })
	adding := i < 0
	what := "SIGHUP reload (+1 forward) "
	if adding {
		fw := in.fwds[s.Name]
		fw.Listen = addr
		s.Config.Forwards = append(s.Config.Forwards, fw)
	} else {
		what = "SIGHUP reload (-1 forward) "
		s.Config.Forwards = slices.Delete(s.Config.Forwards, i, i+1)
	}
	f := in.led.begin("hup", what+s.Name, s.Name, false)
	problem := errText("write configuration", s.Write())
	if problem == "" {
		problem = errText("SIGHUP", s.Signal(syscall.SIGHUP))
	}
	if problem == "" && !listening(addr, adding, 5*time.Second) {
		problem = fmt.Sprintf("reload not applied: %s listening is not %v after 5s", addr, adding)
	}
	in.led.restore(f, problem)
	return f
}

// listening polls until a dial to addr succeeds (want) or is refused.
func listening(addr string, want bool, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		if (err == nil) == want {
			return true
		}
	}
	return false
}

// restartUpstreams resets every upstream connection, as a crashed server
// would, and serves again after upstreamDown.
func (in *injector) restartUpstreams() *fault {
	f := in.led.begin("upstream", "upstream servers reset, back after "+upstreamDown.String(), "", true)
	for _, u := range in.ups {
		u.stop()
	}
	time.Sleep(upstreamDown)
	var problem string
	for _, u := range in.ups {
		if err := u.start(); err != nil && problem == "" {
			problem = errText("upstream restart", err)
		}
	}
	in.led.restore(f, problem)
	return f
}

// pausePath drops every UDP datagram between the sites for pauseFor.
func (in *injector) pausePath() *fault {
	f := in.led.begin("pause", "UDP path paused "+pauseFor.String(), "", false)
	in.relay.Pause(true)
	time.Sleep(pauseFor)
	in.relay.Pause(false)
	in.led.restore(f, "")
	return f
}

// rebind moves A's side of the path to a new address, as a NAT rebinding
// does: the tunnel must migrate without interrupting a transfer.
func (in *injector) rebind() *fault {
	f := in.led.begin("rebind", "UDP path rebinds A to a new port", "", false)
	in.led.restore(f, errText("rebind", in.relay.Rebind()))
	return f
}

func errText(what string, err error) string {
	if err == nil {
		return ""
	}
	return what + ": " + err.Error()
}
