package tunnel

import (
	"net"
	"testing"
	"time"
)

// TestTCPCongestionRestartAfterQuiet: the socket's congestion control is
// restarted when a data frame follows ccRestartQuiet or more without one,
// once, and not while frames keep coming (light traffic included), nor for
// a connection's first frame (ccRestarter).
func TestTCPCongestionRestartAfterQuiet(t *testing.T) {
	var calls int
	r := &ccRestarter{restart: func() bool { calls++; return true }}
	t0 := time.Unix(1_000_000, 0)
	steps := []struct {
		after time.Duration // since the previous frame
		want  int           // restarts so far
	}{
		{0, 0}, // the first frame: a new connection starts fresh anyway
		{10 * time.Millisecond, 0},
		{ccRestartQuiet - time.Millisecond, 0}, // 999 ms of quiet: no
		{ccRestartQuiet, 1},
		{time.Millisecond, 1},
		{500 * time.Millisecond, 1},
		{500 * time.Millisecond, 1}, // a frame every half second keeps it
		{3 * time.Second, 2},
	}
	now := t0
	for i, s := range steps {
		now = now.Add(s.after)
		r.dataFrame(now)
		if calls != s.want || r.restarts.Load() != int64(s.want) {
			t.Fatalf("step %d (%v after the previous frame): %d restarts (counted %d), want %d", i, s.after, calls, r.restarts.Load(), s.want)
		}
	}
	var none *ccRestarter // a socket that cannot be restarted
	none.dataFrame(now)
}

// TestTCPCongestionRestartEnvOff: DYAD_DISABLE_BBR_RESTART=1 leaves every
// socket's congestion control alone.
func TestTCPCongestionRestartEnvOff(t *testing.T) {
	t.Setenv(envNoCCRestart, "1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r := newCCRestarter(c); r != nil {
		t.Errorf("%s=1: a restarter for %v", envNoCCRestart, c.LocalAddr())
	}
}
