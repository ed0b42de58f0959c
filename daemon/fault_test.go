package daemon_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel"
)

// Fault tests: two real daemons on loopback, site A importing B's service
// "stream" through a forward, every datagram of their tunnel crossing a
// daemontest.UDPRelay (A dials the relay; B has no endpoint for A, so it
// never dials around it). Each test cuts a transfer in a different way and
// checks the rule a cut must keep (THREATS, "a truncated stream taken as
// complete"): a client or upstream either gets every byte, SHA-256 equal,
// or an error; a clean EOF after a short transfer is silent truncation.
// Then traffic must be back within reconnectWithin.

const (
	faultBig        = 256 << 20 // a transfer the fault cuts
	faultMid        = 8 << 20   // bytes through before the fault strikes
	reconnectWithin = 2 * time.Second
	transferLimit   = 60 * time.Second // bounds every client connection
	pausePath       = 10 * time.Second
	// pausedRecoverWithin bounds the wait for traffic after the path
	// returns: QUIC's backed-off probe timer may take about the pause's
	// length to fire again (TestFaultPathPaused).
	pausedRecoverWithin = pausePath + 3*time.Second
	// dialAttempt is how long the dialer waits for one tunnel, handshake
	// and the listener's ready signal, before it gives up and dials again
	// (tunnel/link.go, dialTimeout: 10 s, whatever connect_timeout is).
	dialAttempt = 10 * time.Second
	// setupWithin bounds the wait for the rig's tunnels before any fault:
	// one dial attempt that runs out, the redial, and slack for a loaded
	// machine. A dialer that stalls (descheduled for seconds on a busy CI
	// host) between its handshake and the ready signal loses that attempt:
	// when it runs again its 10 s timer has fired too, and it dials anew,
	// at once. Waiting 10 s, as before, left no room for that redial
	// (TestFaultUpstreamRestart, CI run 1549). Setup is no property under
	// test: each test asserts its own limits after its fault.
	setupWithin = 2*dialAttempt + 5*time.Second
	// setupSlow: a setup slower than this is logged (it passes), so that
	// a machine stall, or a product that got slow to connect, stays
	// visible in the output.
	setupSlow = 5 * time.Second
)

// The upstream's protocol: a header of an op byte, a size and a seed (both
// big-endian uint64), then the op's bytes.
const (
	opDownload = 'D' // the server sends size bytes of payload(seed), then its FIN
	opUpload   = 'U' // the server reads to EOF, then answers the SHA-256 of what it read
	opEcho     = 'E' // the server echoes until EOF
	headerSize = 17
)

// payload is the deterministic byte stream of seed.
func payload(seed uint64) io.Reader {
	var key [32]byte
	binary.BigEndian.PutUint64(key[:], seed)
	return rand.NewChaCha8(key)
}

// prefixSum is the SHA-256 of payload(seed)'s first n bytes.
func prefixSum(seed uint64, n int64) []byte {
	h := sha256.New()
	io.CopyN(h, payload(seed), n)
	return h.Sum(nil)
}

// faultRig is the two sites, the relay between them and B's upstream.
type faultRig struct {
	a, b  *daemontest.Site
	relay *daemontest.UDPRelay
	up    *upstreamServer
	local string // A's forward listener
}

// newFaultRig starts B exporting "stream" (the upstream) to A, and A
// forwarding a local port to it through the relay. tune adjusts both
// sites' tunnel settings before they start.
func newFaultRig(t *testing.T, tune func(*daemon.TunnelFile)) *faultRig {
	t.Helper()
	r := &faultRig{up: newUpstreamServer(t)}
	root := t.TempDir()
	r.a, r.b = newSite(t, root, "site-a"), newSite(t, root, "site-b")
	relay, err := daemontest.NewUDPRelay(r.b.Config.Listen)
	if err != nil {
		t.Fatal(err)
	}
	r.relay = relay
	t.Cleanup(relay.Close) // after the sites stop: cleanups run last-in first-out
	r.local = freeTCP(t)
	r.b.Config.Peers = []daemon.PeerFile{r.a.Peer(false)}
	r.b.Config.Services = []daemon.ServiceFile{{Name: "stream", Upstream: r.up.addr, Allow: []string{"site-a"}}}
	toB := r.b.Peer(false)
	toB.Endpoint = relay.Addr()
	r.a.Config.Peers = []daemon.PeerFile{toB}
	r.a.Config.Forwards = []daemon.ForwardConfig{{Listen: r.local, Peer: "site-b", Service: "stream"}}
	for _, s := range []*daemontest.Site{r.a, r.b} {
		s.Config.Log.Level = "info"
		s.Config.Tunnel.ConnectTimeout = daemon.Duration(2 * time.Second)
		s.Config.Tunnel.DialTimeout = daemon.Duration(time.Second)
		s.Config.Tunnel.ShutdownTimeout = daemon.Duration(2 * time.Second) // a cut stream must not hold up the cleanup
		if tune != nil {
			tune(&s.Config.Tunnel)
		}
	}
	start(t, r.b)
	start(t, r.a)
	took, attempts, err := r.waitWorking(time.Now(), setupWithin)
	if err != nil {
		t.Fatalf("before any fault: %v (relay: %d datagrams forwarded, %d dropped)", err, r.relay.Forwarded(), r.relay.Dropped())
	}
	if took > setupSlow {
		t.Logf("before any fault: first working connection after %v (%d attempts), over %v: a stalled machine, or a dial attempt that ran out",
			took.Round(time.Millisecond), attempts, setupSlow)
	}
	// Every connection A dials to B is up before a fault strikes: a slot
	// still dialing when the path pauses would count as a redial. Each
	// slot dials on its own, so each may lose an attempt as slot 0 may.
	want := uint64(tunnel.DefaultConnections)
	if n := r.a.Config.Tunnel.Connections; n > 0 {
		want = uint64(n)
	}
	slots := time.Now()
	for deadline := slots.Add(setupWithin); counter(t, r.a, "tunnels_established") < want; {
		if time.Now().After(deadline) {
			t.Fatalf("A established %d of its %d connections to B in %v", counter(t, r.a, "tunnels_established"), want, setupWithin)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if took := time.Since(slots); took > setupSlow {
		t.Logf("before any fault: A's %d connections up %v after the first worked", want, took.Round(time.Millisecond))
	}
	return r
}

// waitWorking polls fresh connections through the forward (a 64 KiB
// download each, hash-checked) until one works or limit has passed since
// since. It returns the time from since to that success and the attempts
// it took.
func (r *faultRig) waitWorking(since time.Time, limit time.Duration) (time.Duration, int, error) {
	const size = 64 << 10
	var failed []string
	for attempt := 1; attempt <= 200; attempt++ {
		left := limit - time.Since(since)
		if left <= 0 {
			break
		}
		tr := startDownload(r.local, size, uint64(attempt), left)
		<-tr.done
		if tr.err == nil && tr.n == size && bytes.Equal(tr.sum, prefixSum(uint64(attempt), size)) {
			return time.Since(since), attempt, nil
		}
		failed = append(failed, fmt.Sprintf("#%d at %v: %d bytes, %v", attempt, tr.ended.Sub(since).Round(time.Millisecond), tr.n, tr.err))
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(since), len(failed), fmt.Errorf("no working connection within %v (%d attempts: %s)", limit, len(failed), strings.Join(failed, "; "))
}

// checkReconnect asserts that traffic works again within limit of since
// (when the restarted side was ready or the fault ended). It polls a while
// longer, to report how long it did take.
func (r *faultRig) checkReconnect(t *testing.T, what string, since time.Time, limit time.Duration) {
	t.Helper()
	took, attempts, err := r.waitWorking(since, limit+10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if took > limit {
		t.Errorf("%s: first working connection after %v (%d attempts), want within %v", what, took, attempts, limit)
	}
	t.Logf("%s: working again after %v (%d attempts)", what, took.Round(time.Millisecond), attempts)
}

// awaitRedial waits until A has established a tunnel since it counted
// established, and returns how long after since that took. It fails the
// test when A has not within limit (a stale tunnel was not reset by a
// stateless reset) and stops waiting grace after that.
func (r *faultRig) awaitRedial(t *testing.T, stale string, established uint64, since time.Time, limit, grace time.Duration) time.Duration {
	t.Helper()
	deadline := since.Add(limit + grace)
	for counter(t, r.a, "tunnels_established") == established && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(since)
	if counter(t, r.a, "tunnels_established") == established {
		t.Fatalf("A still holds its tunnel %s, %v later", stale, took.Round(time.Millisecond))
	}
	if took > limit {
		t.Errorf("A dialed again %v later, want within %v: its tunnel %s was not reset", took.Round(time.Millisecond), limit, stale)
	}
	return took
}

// counter reads one of s's /statusz counters.
func counter(t *testing.T, s *daemontest.Site, name string) uint64 {
	t.Helper()
	st, err := s.Status()
	if err != nil {
		t.Fatalf("%s /statusz: %v", s.Name, err)
	}
	return st.Counters[name]
}

// peerRemote is the remote address of s's tunnel to peer, from /statusz
// ("" when not connected).
func peerRemote(t *testing.T, s *daemontest.Site, peer string) string {
	t.Helper()
	resp, err := http.Get("http://" + s.Config.Admin + "/statusz")
	if err != nil {
		t.Fatalf("%s /statusz: %v", s.Name, err)
	}
	defer resp.Body.Close()
	var st struct {
		Peers []struct {
			Name   string `json:"name"`
			Remote string `json:"remote"`
		} `json:"peers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("%s /statusz: %v", s.Name, err)
	}
	for _, p := range st.Peers {
		if p.Name == peer {
			return p.Remote
		}
	}
	return ""
}

// transfer is one client connection through the forward, run in the
// background; its result fields are set before done closes.
type transfer struct {
	done  chan struct{}
	moved atomic.Int64 // bytes received (download) or sent (upload) so far

	n     int64     // bytes received (download)
	sum   []byte    // their SHA-256
	err   error     // nil: clean EOF
	ended time.Time // when the connection ended
}

// startDownload asks the upstream, through addr, for size bytes of
// payload(seed) and reads them until EOF, an error, or limit.
func startDownload(addr string, size int64, seed uint64, limit time.Duration) *transfer {
	tr := &transfer{done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		defer func() { tr.ended = time.Now() }()
		h := sha256.New()
		defer func() { tr.sum = h.Sum(nil) }()
		c, err := net.DialTimeout("tcp", addr, limit)
		if err != nil {
			tr.err = err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(limit))
		if _, err := c.Write(header(opDownload, size, seed)); err != nil {
			tr.err = fmt.Errorf("request: %w", err)
			return
		}
		buf := make([]byte, 64<<10)
		for {
			m, err := c.Read(buf)
			h.Write(buf[:m])
			tr.n += int64(m)
			tr.moved.Add(int64(m))
			if err == io.EOF {
				return
			}
			if err != nil {
				tr.err = err
				return
			}
		}
	}()
	return tr
}

// startUpload sends size bytes of payload(seed) through addr to the
// upstream, which reports what it read on its uploads channel.
func startUpload(addr string, size int64, seed uint64, limit time.Duration) *transfer {
	tr := &transfer{done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		defer func() { tr.ended = time.Now() }()
		c, err := net.DialTimeout("tcp", addr, limit)
		if err != nil {
			tr.err = err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(limit))
		src := io.MultiReader(bytes.NewReader(header(opUpload, size, seed)), io.LimitReader(payload(seed), size))
		_, err = io.Copy(c, &countingReader{r: src, n: &tr.moved})
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		if err == nil {
			tr.sum, err = io.ReadAll(c)
		}
		tr.err = err
	}()
	return tr
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func header(op byte, size int64, seed uint64) []byte {
	b := make([]byte, headerSize)
	b[0] = op
	binary.BigEndian.PutUint64(b[1:], uint64(size))
	binary.BigEndian.PutUint64(b[9:], seed)
	return b
}

// awaitMoved waits (bounded) until tr has moved at least n bytes, so that
// a fault strikes mid-transfer.
func awaitMoved(t *testing.T, tr *transfer, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for tr.moved.Load() < n {
		select {
		case <-tr.done:
			t.Fatalf("transfer ended before the fault, after %d bytes: %v", tr.moved.Load(), tr.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("transfer moved only %d of the %d bytes wanted before the fault in 20 s", tr.moved.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// awaitDone waits up to limit for tr to end.
func awaitDone(t *testing.T, what string, tr *transfer, limit time.Duration) {
	t.Helper()
	select {
	case <-tr.done:
	case <-time.After(limit):
		t.Fatalf("%s: still open %v later, %d bytes moved: a cut connection must be reset, not hang", what, limit, tr.moved.Load())
	}
}

// cutVerdict applies the rule a cut transfer must keep to what one end
// received: n bytes hashing to sum, ended by err (nil: a clean EOF). It
// returns "complete", "reset", or an error saying what broke the rule.
func cutVerdict(n int64, sum []byte, err error, size int64, seed uint64) (string, error) {
	switch {
	case err == nil && n == size && bytes.Equal(sum, prefixSum(seed, size)):
		return "complete", nil
	case err == nil && n == size:
		return "", fmt.Errorf("clean EOF after all %d bytes, but their SHA-256 differs from what was sent", n)
	case err == nil:
		return "", fmt.Errorf("clean EOF after %d of %d bytes: silently truncated", n, size)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "", fmt.Errorf("no reset: the connection hung after %d of %d bytes", n, size)
	case !bytes.Equal(sum, prefixSum(seed, n)):
		return "", fmt.Errorf("the %d bytes before the error (%v) differ from what was sent", n, err)
	case !errors.Is(err, syscall.ECONNRESET):
		return "", fmt.Errorf("after %d of %d bytes the connection ended with %v, want a reset (ECONNRESET)", n, size, err)
	}
	return "reset", nil
}

// TestFaultKillExporterMidDownload: kill -9 of the exporting daemon B
// during a download. The client is reset, never handed a clean short
// stream; B restarted on the same ports serves new connections through
// A within 2 s of being ready (B's stateless reset, keyed from its
// identity, ends A's stale tunnel at A's first packet).
func TestFaultKillExporterMidDownload(t *testing.T) {
	r := newFaultRig(t, nil)
	const seed = 101
	tr := startDownload(r.local, faultBig, seed, transferLimit)
	defer func() { awaitDone(t, "the cut download", tr, 15*time.Second) }()
	awaitMoved(t, tr, faultMid)
	r.b.Kill()
	killedAt := tr.moved.Load()
	if err := r.b.StartReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	ready := time.Now()
	r.checkReconnect(t, "after B's restart", ready, reconnectWithin)
	awaitDone(t, "the download B's kill cut", tr, 15*time.Second)
	verdict, err := cutVerdict(tr.n, tr.sum, tr.err, faultBig, seed)
	if err != nil {
		t.Fatalf("download cut by B's kill after %d bytes: %v", killedAt, err)
	}
	t.Logf("download cut after %d MiB: %s (%v), %v after B was ready", tr.n>>20, verdict, tr.err, tr.ended.Sub(ready).Round(time.Millisecond))
}

// TestFaultStaleTunnelEnds: after B's kill -9 and restart, A's tunnel to
// the old B ends on its own, with no new local connection to provoke it,
// within one keepalive period of B being ready: every keepalive period
// each side sends a datagram large enough for the restarted B to answer
// with a stateless reset (tunnel/link.go, heartbeat). The download cut by
// the kill is reset then, rather than at the 30 s idle timeout, and the
// first new connection already finds the new tunnel.
func TestFaultStaleTunnelEnds(t *testing.T) {
	const keepalive = time.Second
	r := newFaultRig(t, func(tf *daemon.TunnelFile) { tf.KeepAlive = daemon.Duration(keepalive) })
	established := counter(t, r.a, "tunnels_established")
	const seed = 111
	tr := startDownload(r.local, faultBig, seed, transferLimit)
	defer func() { awaitDone(t, "the cut download", tr, 35*time.Second) }()
	awaitMoved(t, tr, faultMid)
	r.b.Kill()
	if err := r.b.StartReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	ready := time.Now()
	limit := keepalive + time.Second // a heartbeat, its stateless reset, the redial
	took := r.awaitRedial(t, "to the dead B after B's restart", established, ready, limit, 30*time.Second)
	awaitDone(t, "the download B's kill cut", tr, 5*time.Second)
	if _, err := cutVerdict(tr.n, tr.sum, tr.err, faultBig, seed); err != nil {
		t.Fatalf("download cut by B's kill: %v", err)
	}
	t.Logf("A redialed %v after B was ready; the cut download was reset %v after", took.Round(time.Millisecond), tr.ended.Sub(ready).Round(time.Millisecond))
	r.checkReconnect(t, "after B's restart", ready, reconnectWithin)
}

// TestFaultKillImporterMidUpload: kill -9 of the importing daemon A
// during an upload. The upstream is reset by B once the tunnel is gone,
// never handed a clean short stream; A restarted works within 2 s of being
// ready. B learns of the old tunnel's end from the restarted A, which
// answers B's next heartbeat with a stateless reset; B's dark listener
// passes it since it comes from a live tunnel's remote address. The idle
// timeout stays at 30 s, so a reset that did not pass would fail the test.
func TestFaultKillImporterMidUpload(t *testing.T) {
	r := newFaultRig(t, func(tf *daemon.TunnelFile) {
		tf.KeepAlive = daemon.Duration(time.Second)
	})
	const seed = 202
	tr := startUpload(r.local, faultBig, seed, transferLimit)
	defer func() { awaitDone(t, "the cut upload's client", tr, 15*time.Second) }()
	deadline := time.Now().Add(20 * time.Second)
	for r.up.received.Load() < faultMid {
		if time.Now().After(deadline) {
			t.Fatalf("the upstream read only %d bytes of the upload in 20 s", r.up.received.Load())
		}
		time.Sleep(time.Millisecond)
	}
	r.a.Kill()
	killed := time.Now()
	if err := r.a.StartReady(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	r.checkReconnect(t, "after A's restart", time.Now(), reconnectWithin)
	select {
	case up := <-r.up.uploads:
		verdict, err := cutVerdict(up.n, up.sum, up.err, faultBig, seed)
		if err != nil {
			t.Fatalf("upload cut by A's kill, at the upstream: %v", err)
		}
		t.Logf("upload cut after %d MiB: the upstream saw %s (%v) %v after the kill", up.n>>20, verdict, up.err, time.Since(killed).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatalf("the upstream's upload connection still open 10 s after A's kill (%d bytes read): B did not reset it", r.up.received.Load())
	}
}

// TestFaultUpstreamRestart: the upstream server crashes (resets its
// connections) mid-download, then comes back on the same port. The client
// is reset, never handed a clean short stream; the next connection after
// the upstream's return works.
func TestFaultUpstreamRestart(t *testing.T) {
	r := newFaultRig(t, nil)
	const seed = 303
	tr := startDownload(r.local, faultBig, seed, transferLimit)
	defer func() { awaitDone(t, "the cut download", tr, 15*time.Second) }()
	awaitMoved(t, tr, faultMid)
	r.up.crash()
	awaitDone(t, "the download the upstream's crash cut", tr, 10*time.Second)
	verdict, err := cutVerdict(tr.n, tr.sum, tr.err, faultBig, seed)
	if err != nil || verdict != "reset" {
		t.Fatalf("download cut by the upstream's crash: %s, %v", verdict, err)
	}
	// While the upstream is down, B refuses: the client is reset at once.
	down := startDownload(r.local, 1<<10, 1, 5*time.Second)
	<-down.done
	if down.n != 0 || down.err == nil || errors.Is(down.err, os.ErrDeadlineExceeded) {
		t.Errorf("with the upstream down: %d bytes, %v; want a reset without data", down.n, down.err)
	}
	if err := r.up.listen(); err != nil {
		t.Fatal(err)
	}
	r.checkReconnect(t, "after the upstream's return", time.Now(), reconnectWithin)
}

// TestFaultPathPaused: the UDP path between the sites goes dark for 10 s,
// inside the 30 s idle timeout. The same tunnel carries on afterwards: a
// download that was running and an idle connection both survive, intact,
// and new connections work.
func TestFaultPathPaused(t *testing.T) {
	r := newFaultRig(t, nil)
	established := counter(t, r.a, "tunnels_established")
	idle, err := net.Dial("tcp", r.local)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idle.Write(header(opEcho, 0, 0))
	ping := func(msg string) error {
		idle.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := idle.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(idle, buf); err != nil || string(buf) != msg {
			return fmt.Errorf("echo %q, %v", buf, err)
		}
		return nil
	}
	if err := ping("before the pause"); err != nil {
		t.Fatal(err)
	}

	const seed, size = 404, 64 << 20
	tr := startDownload(r.local, size, seed, transferLimit)
	defer func() { awaitDone(t, "the download", tr, 30*time.Second) }()
	awaitMoved(t, tr, 4<<20)
	dropped := r.relay.Dropped()
	r.relay.Pause(true)
	paused, atPause := time.Now(), tr.moved.Load()
	time.Sleep(pausePath)
	r.relay.Pause(false)
	resumed := time.Now()
	t.Logf("paused %v at %d MiB; %d datagrams dropped; the client read %d KiB meanwhile (buffers)",
		resumed.Sub(paused).Round(time.Millisecond), atPause>>20, r.relay.Dropped()-dropped, (tr.moved.Load()-atPause)>>10)
	if r.relay.Dropped() == dropped {
		t.Errorf("the relay dropped no datagram during the pause: the path was not held")
	}

	// QUIC's probe timer backs off exponentially through the silence
	// (RFC 9002, 6.2), so B's next retransmission can come as late as
	// about the pause's own length after the resume: allow that, well
	// inside the idle timeout.
	atResume := tr.moved.Load()
	for tr.moved.Load() == atResume && time.Since(resumed) < pausedRecoverWithin {
		select {
		case <-tr.done:
		case <-time.After(10 * time.Millisecond):
			continue
		}
		break
	}
	flowing := time.Since(resumed)
	if tr.moved.Load() == atResume {
		t.Fatalf("the download did not move for %v after the resume (%d of %d bytes)", flowing.Round(time.Millisecond), atResume, size)
	}
	t.Logf("the download moved again %v after the resume", flowing.Round(time.Millisecond))
	awaitDone(t, "the download across the pause", tr, 30*time.Second)
	if tr.err != nil || tr.n != size || !bytes.Equal(tr.sum, prefixSum(seed, size)) {
		t.Fatalf("download across the pause: %d of %d bytes, err %v, SHA-256 equal %v", tr.n, size, tr.err, bytes.Equal(tr.sum, prefixSum(seed, size)))
	}
	t.Logf("download complete %v after the resume", tr.ended.Sub(resumed).Round(time.Millisecond))
	if err := ping("after the pause"); err != nil {
		t.Fatalf("idle connection across the pause: %v", err)
	}
	r.checkReconnect(t, "after the pause", time.Now(), reconnectWithin)
	if now := counter(t, r.a, "tunnels_established"); now != established {
		t.Errorf("A established %d tunnels across the pause, want the same one to survive", now-established)
	}
}

// TestFaultMigration: the dialing side's address changes mid-download (the
// relay moves A's traffic to a new source port, as a NAT rebinding does).
// QUIC migrates the connection: the download completes intact on the same
// tunnel, which B now sees at the new address. B learns the address from
// A's next packet; A only receives here, so when its last ACK left before
// the rebinding the transfer stalls until A's next keepalive or heartbeat
// (up to one keepalive period, 5 s; seen in about 1 run in 8).
func TestFaultMigration(t *testing.T) {
	r := newFaultRig(t, nil)
	establishedA, establishedB := counter(t, r.a, "tunnels_established"), counter(t, r.b, "tunnels_established")
	before := peerRemote(t, r.b, "site-a")
	const seed, size = 505, 64 << 20
	tr := startDownload(r.local, size, seed, transferLimit)
	defer func() { awaitDone(t, "the download", tr, 30*time.Second) }()
	awaitMoved(t, tr, faultMid)
	if err := r.relay.Rebind(); err != nil {
		t.Fatal(err)
	}
	rebound, atRebind := time.Now(), tr.moved.Load()
	awaitDone(t, "the download across the rebinding", tr, 30*time.Second)
	if tr.err != nil || tr.n != size || !bytes.Equal(tr.sum, prefixSum(seed, size)) {
		t.Fatalf("download across the rebinding (at %d MiB): %d of %d bytes, err %v, SHA-256 equal %v",
			atRebind>>20, tr.n, size, tr.err, bytes.Equal(tr.sum, prefixSum(seed, size)))
	}
	after := peerRemote(t, r.b, "site-a")
	t.Logf("rebound at %d MiB; download complete %v later; B sees A at %s, before at %s",
		atRebind>>20, tr.ended.Sub(rebound).Round(time.Millisecond), after, before)
	if a, b := counter(t, r.a, "tunnels_established"), counter(t, r.b, "tunnels_established"); a != establishedA || b != establishedB {
		t.Errorf("tunnels established during the rebinding: A %d, B %d; want 0 (the connection must migrate)", a-establishedA, b-establishedB)
	}
	if after == before || after == "" {
		t.Errorf("B sees A at %q after the rebinding, %q before: the connection did not move to the new address", after, before)
	}
	r.checkReconnect(t, "after the rebinding", time.Now(), reconnectWithin)
}

// TestFaultScaleOutFailover: site B runs two instances with one identity
// behind a UDP load balancer (the relay), as deploy/README.md describes.
// When the balancer moves A's flow from the first instance to the second
// mid-download, the second, which derives the same stateless-reset key,
// answers A's next packet with a stateless reset: the download is reset
// (never silently cut), A dials again within a keepalive period and new
// connections are served by the second instance.
func TestFaultScaleOutFailover(t *testing.T) {
	const keepalive = time.Second
	r := newFaultRig(t, func(tf *daemon.TunnelFile) { tf.KeepAlive = daemon.Duration(keepalive) })
	b2 := newSite(t, t.TempDir(), "site-b")
	for _, f := range []string{"identity.key", "identity.pub"} {
		data, err := os.ReadFile(filepath.Join(r.b.Dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(b2.Dir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	listen, admin := b2.Config.Listen, b2.Config.Admin
	b2.Config = r.b.Config
	b2.Config.Listen, b2.Config.Admin = listen, admin // its own ports and, beside its config, its own journal
	start(t, b2)
	establishedA := counter(t, r.a, "tunnels_established")

	const seed = 606
	tr := startDownload(r.local, faultBig, seed, transferLimit)
	defer func() { awaitDone(t, "the download", tr, 35*time.Second) }()
	awaitMoved(t, tr, faultMid)
	if err := r.relay.Retarget(b2.Config.Listen); err != nil {
		t.Fatal(err)
	}
	moved := time.Now()
	awaitDone(t, "the download on the moved flow", tr, 10*time.Second)
	verdict, err := cutVerdict(tr.n, tr.sum, tr.err, faultBig, seed)
	if err != nil {
		t.Fatalf("download when the flow moved: %v", err)
	}
	limit := keepalive + time.Second
	took := r.awaitRedial(t, "to the first instance after the flow moved", establishedA, moved, limit, 10*time.Second)
	r.checkReconnect(t, "after the flow moved", moved, limit+reconnectWithin)
	if n := counter(t, b2, "tunnels_established"); n == 0 {
		t.Errorf("the second instance established no tunnel: traffic did not move to it")
	}
	t.Logf("download %s %v after the flow moved (%d MiB in); A dialed again after %v",
		verdict, tr.ended.Sub(moved).Round(time.Millisecond), tr.n>>20, took.Round(time.Millisecond))
}

// upstreamServer is B's upstream: the protocol of opDownload, opUpload and
// opEcho on a fixed loopback address, with a crash switch.
type upstreamServer struct {
	addr     string
	received atomic.Int64      // upload bytes read, all connections
	uploads  chan uploadResult // one per upload connection that ended

	mu    sync.Mutex // guards ln and conns
	ln    net.Listener
	conns map[*net.TCPConn]struct{}
	wg    sync.WaitGroup // accept loop and connections
}

// uploadResult is what the upstream read on one upload connection.
type uploadResult struct {
	n   int64
	sum []byte
	err error // nil: clean EOF
}

func newUpstreamServer(t *testing.T) *upstreamServer {
	t.Helper()
	s := &upstreamServer{addr: "127.0.0.1:0", uploads: make(chan uploadResult, 16), conns: map[*net.TCPConn]struct{}{}}
	if err := s.listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.crash)
	return s
}

// listen (re)starts the server on its address.
func (s *upstreamServer) listen() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ln, s.addr = ln, ln.Addr().String()
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*net.TCPConn)
			s.mu.Lock()
			s.conns[tc] = struct{}{}
			s.wg.Add(1)
			s.mu.Unlock()
			go s.serve(tc)
		}
	}()
	return nil
}

// crash stops the server as a crashed process would, but with a reset on
// every connection (a killed process's kernel sends a FIN when nothing
// was left unread, and a FIN is a clean end no proxy can tell from a
// finished answer). It waits for the connections' goroutines.
func (s *upstreamServer) crash() {
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	for c := range s.conns {
		c.SetLinger(0)
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *upstreamServer) serve(c *net.TCPConn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	c.SetDeadline(time.Now().Add(transferLimit))
	h := make([]byte, headerSize)
	if _, err := io.ReadFull(c, h); err != nil {
		return
	}
	size, seed := int64(binary.BigEndian.Uint64(h[1:])), binary.BigEndian.Uint64(h[9:])
	switch h[0] {
	case opDownload:
		io.Copy(c, io.LimitReader(payload(seed), size))
	case opUpload:
		sum := sha256.New()
		n, err := io.Copy(io.MultiWriter(sum, counterWriter{&s.received}), c)
		s.uploads <- uploadResult{n: n, sum: sum.Sum(nil), err: err}
		if err == nil {
			c.Write(sum.Sum(nil))
		}
	case opEcho:
		io.Copy(c, c)
		c.CloseWrite()
	}
}

type counterWriter struct{ n *atomic.Int64 }

func (w counterWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return len(p), nil
}

// TestFaultUDPRelay checks the relay itself: datagrams go both ways, a
// pause drops and counts them, and Rebind moves the client to a new source
// address at the target while replies still reach the client.
func TestFaultUDPRelay(t *testing.T) {
	target, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	relay, err := daemontest.NewUDPRelay(target.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	client, err := net.Dial("udp", relay.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	buf := make([]byte, 100)
	// roundTrip sends msg, has the target echo it with its source address,
	// and returns that source, or "" when nothing came back in 300 ms.
	roundTrip := func(msg string) (string, error) {
		if _, err := client.Write([]byte(msg)); err != nil {
			return "", err
		}
		target.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, from, err := target.ReadFromUDP(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "", nil
		}
		if err != nil || string(buf[:n]) != msg {
			return "", fmt.Errorf("target got %q, %v", buf[:n], err)
		}
		if _, err := target.WriteToUDP([]byte("re:"+msg), from); err != nil {
			return "", err
		}
		client.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err = client.Read(buf)
		if err != nil || string(buf[:n]) != "re:"+msg {
			return "", fmt.Errorf("client got %q, %v", buf[:n], err)
		}
		return from.String(), nil
	}
	first, err := roundTrip("one")
	if err != nil || first == "" {
		t.Fatalf("first round trip: from %q, %v", first, err)
	}
	relay.Pause(true)
	if from, err := roundTrip("held"); err != nil || from != "" {
		t.Fatalf("paused relay passed a datagram (from %q, %v)", from, err)
	}
	// A reply sent while paused is dropped too.
	target.WriteToUDP([]byte("late"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(first)))
	for deadline := time.Now().Add(time.Second); relay.Dropped() < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if d := relay.Dropped(); d != 2 {
		t.Errorf("relay counted %d drops while paused, want 2 (one each way)", d)
	}
	relay.Pause(false)
	if err := relay.Rebind(); err != nil {
		t.Fatal(err)
	}
	second, err := roundTrip("two")
	if err != nil || second == "" || second == first {
		t.Fatalf("after Rebind the target sees the client at %q (before %q), %v", second, first, err)
	}
	// The relay counts a datagram after writing it, so the reply can reach
	// the client first: wait (bounded) for the count.
	for deadline := time.Now().Add(time.Second); relay.Forwarded() < 4 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if f := relay.Forwarded(); f != 4 {
		t.Errorf("relay counted %d datagrams forwarded, want 4", f)
	}
}
