package daemon_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.yaml.in/yaml/v3"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/daemon/daemontest"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// These tests hold THREATS P5 (bounded resources) against real daemon
// processes: floods, a greedy partner, slowloris clients and upstreams.
// Throughput is compared as ratios within one run (FACTS.md: absolute
// figures drift on these shared 2-core machines).

// bulkServer is the upstream of the tests' "bulk" service. A client's first
// byte is its tag: the server writes as fast as it can and reads and
// discards what comes, counting bytes read and connections by tag. A tag
// with the probe bit set (tag|probe) is counted as tag, but the server
// writes only one byte to it.
type bulkServer struct {
	addr     string
	read     [256]atomic.Int64 // bytes read, by tag
	accepted [256]atomic.Int64 // connections, by tag
	active   [256]atomic.Int64 // connections open now, by tag
	peak     [256]atomic.Int64 // most connections open at once, by tag
}

// probe marks a tag whose connection gets one byte, not a stream of them.
const probe = 0x80

// bulkLifetime bounds every upstream connection, whatever the test does.
const bulkLifetime = 60 * time.Second

func newBulkServer(t *testing.T) *bulkServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &bulkServer{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	chunk := make([]byte, 64<<10)
	rand.Read(chunk)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				c.SetDeadline(time.Now().Add(bulkLifetime))
				var tag [1]byte
				if _, err := io.ReadFull(c, tag[:]); err != nil {
					return
				}
				k, probing := tag[0]&^probe, tag[0]&probe != 0
				s.accepted[k].Add(1)
				n := s.active[k].Add(1)
				defer s.active[k].Add(-1)
				for p := s.peak[k].Load(); n > p && !s.peak[k].CompareAndSwap(p, n); p = s.peak[k].Load() {
				}
				done := make(chan struct{})
				go func() {
					defer close(done)
					if probing {
						c.Write([]byte{'!'})
						return
					}
					for {
						if _, err := c.Write(chunk); err != nil {
							return
						}
					}
				}()
				buf := make([]byte, 64<<10)
				for {
					m, err := c.Read(buf)
					s.read[k].Add(int64(m))
					if err != nil {
						break
					}
				}
				c.Close()
				<-done
			}()
		}
	}()
	return s
}

// download connects to local, sends tag and counts the bytes received into
// got until d has passed. It fails if the connection ends early.
func download(local string, tag byte, d time.Duration, got *atomic.Int64) error {
	c, err := net.DialTimeout("tcp", local, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte{tag}); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 256<<10)
	for {
		n, err := c.Read(buf)
		got.Add(int64(n))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("download ended after %d bytes: %w", got.Load(), err)
		}
	}
}

// fetch downloads exactly n bytes through a new connection and returns the
// time to its first byte.
func fetch(local string, tag byte, n int64, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", local, limit)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(start.Add(limit))
	if _, err := c.Write([]byte{tag}); err != nil {
		return 0, err
	}
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		return 0, fmt.Errorf("no first byte after %v: %w", time.Since(start), err)
	}
	ttfb := time.Since(start)
	if m, err := io.CopyN(io.Discard, c, n-1); err != nil {
		return ttfb, fmt.Errorf("%d of %d bytes: %w", m+1, n, err)
	}
	return ttfb, nil
}

func mibps(bps float64) string { return fmt.Sprintf("%.1f MiB/s", bps/(1<<20)) }

// procStatus reads one "Name: value kB" figure of /proc/pid/status, in bytes.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return -1
			}
			v, _ := strconv.ParseInt(f[0], 10, 64)
			return v << 10
		}
	}
	return -1
}

// procFDs counts the open descriptors of pid.
func procFDs(pid int) int {
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(es)
}

// procCPU returns pid's user+system CPU time.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the command (in parentheses, which may hold spaces).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// selfCPU is the test process's own user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// counters fetches s's /statusz counters, failing the test if it cannot.
func counters(t *testing.T, s *daemontest.Site) map[string]uint64 {
	t.Helper()
	st, err := s.Status()
	if err != nil {
		t.Fatalf("%s /statusz: %v", s.Name, err)
	}
	return st.Counters
}

// sealConn plays a stranger that knows the listener's public key (it is no
// secret): it seals its first flight so that the dark listener lets it
// reach TLS. Every connection ID a dyad node issues is 16 bytes, and quic-go
// clients pick 8-byte ones for their first Initial: a long-header datagram
// whose destination ID is not 16 bytes long is a first flight.
type sealConn struct {
	net.PacketConn // an interface, so quic-go takes the plain ReadFrom/WriteTo path
	key            identity.PublicKey
}

func (c *sealConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if len(b) > 5 && b[0]&0x80 != 0 && b[5] != 16 {
		if _, err := c.PacketConn.WriteTo(tunnel.SealFirstFlight(c.key, b, time.Now()), addr); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return c.PacketConn.WriteTo(b, addr)
}

// strangerCert is a fresh self-signed Ed25519 certificate, as an unpaired
// daemon or client presents.
func strangerCert() (tls.Certificate, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

// handshakeTally counts the outcomes of a handshake flood.
type handshakeTally struct {
	attempts, refused, tlsFailed, timedOut, completed, other, ready atomic.Int64
	firstOther                                                      atomic.Pointer[string]
}

func (h *handshakeTally) String() string {
	other := ""
	if e := h.firstOther.Load(); e != nil {
		other = " (first: " + *e + ")"
	}
	return fmt.Sprintf("%d attempts: %d CONNECTION_REFUSED, %d TLS alerts, %d timeouts, %d other errors%s, %d completed client-side, %d got the ready signal",
		h.attempts.Load(), h.refused.Load(), h.tlsFailed.Load(), h.timedOut.Load(), h.other.Load(), other, h.completed.Load(), h.ready.Load())
}

// handshakeFlood runs QUIC handshakes from src against target at perSecond
// (at most inFlight at once), each with a fresh key B does not know, until
// ctx ends.
func handshakeFlood(ctx context.Context, src string, target *net.UDPAddr, key identity.PublicKey, perSecond float64, inFlight int, tally *handshakeTally) error {
	pc, err := net.ListenPacket("udp", src+":0")
	if err != nil {
		return err
	}
	defer pc.Close()
	tr := &quic.Transport{Conn: &sealConn{PacketConn: pc, key: key}}
	defer tr.Close()
	lim := rate.NewLimiter(rate.Limit(perSecond), 1)
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for lim.Wait(ctx) == nil {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		cert, err := strangerCert()
		if err != nil {
			return err
		}
		tally.attempts.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			qc, err := tr.Dial(dctx, target, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
				NextProtos: []string{tunnel.ALPN}, Certificates: []tls.Certificate{cert}},
				&quic.Config{HandshakeIdleTimeout: time.Second})
			var te *quic.TransportError
			var idle *quic.IdleTimeoutError
			var hs *quic.HandshakeTimeoutError
			switch {
			case err == nil:
				tally.completed.Add(1)
				// The client's side of TLS 1.3 completes before the server
				// checks its certificate; a paired server would now send
				// its ready signal. A stranger must never get it.
				if s, err := qc.AcceptUniStream(dctx); err == nil && s != nil {
					tally.ready.Add(1)
				}
				qc.CloseWithError(0, "")
			case errors.As(err, &te) && te.ErrorCode == quic.ConnectionRefused:
				tally.refused.Add(1)
			case errors.As(err, &te) && te.ErrorCode.IsCryptoError():
				tally.tlsFailed.Add(1)
			case errors.As(err, &idle), errors.As(err, &hs), errors.Is(err, context.DeadlineExceeded):
				tally.timedOut.Add(1)
			default:
				tally.other.Add(1)
				msg := err.Error()
				tally.firstOther.CompareAndSwap(nil, &msg)
			}
		}()
	}
	return nil
}

// garbage makes n datagrams a scanner or fuzzer might send: random short
// headers, random long headers, and QUIC v1 Initials (with and without a
// 12-byte destination ID, the length dyad issues) followed by a fresh
// timestamp and a forged MAC, so that the listener must compute the MAC.
func garbage(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		var b []byte
		switch i % 4 {
		case 0: // short header
			b = make([]byte, 1+mrand.IntN(1400))
			rand.Read(b)
			b[0] = 0x40 | b[0]&0x3f
		case 1: // long header, random version and lengths
			b = make([]byte, 7+mrand.IntN(1400))
			rand.Read(b)
			b[0] |= 0x80
		default: // an Initial without the listener's MAC
			b = make([]byte, 1252+20)
			rand.Read(b)
			b[0] = 0xc0 | b[0]&0x0f
			binary.BigEndian.PutUint32(b[1:], 1)
			b[5] = byte(8 + 4*(i%4-2)) // 8, or 12
			binary.BigEndian.PutUint32(b[len(b)-20:], uint32(time.Now().Unix()))
		}
		out[i] = b
	}
	return out
}

// garbageFlood sends pool's datagrams round-robin from src to target at
// perSecond, in batches (sendmmsg), until ctx ends.
func garbageFlood(ctx context.Context, src string, target *net.UDPAddr, pool [][]byte, perSecond int, sent *atomic.Int64) error {
	c, err := net.ListenPacket("udp4", src+":0")
	if err != nil {
		return err
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	const tick = 10 * time.Millisecond
	per := perSecond * int(tick) / int(time.Second)
	msgs := make([]ipv4.Message, 64)
	for i := range msgs {
		msgs[i].Addr = target
		msgs[i].Buffers = [][]byte{nil}
	}
	tk := time.NewTicker(tick)
	defer tk.Stop()
	next := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
		}
		for left := per; left > 0; {
			m := min(left, len(msgs))
			for i := range m {
				msgs[i].Buffers[0] = pool[next%len(pool)]
				next++
			}
			k, err := pc.WriteBatch(msgs[:m], 0)
			sent.Add(int64(k))
			if err != nil {
				return err
			}
			left -= m
		}
	}
}

// importBulk makes site dial exporter and forward a fresh local port to
// its "bulk" service, and returns that port.
func importBulk(t *testing.T, site, exporter *daemontest.Site) string {
	local := freeTCP(t)
	site.Config.Peers = []daemon.PeerFile{exporter.Peer(true)}
	site.Config.Forwards = []daemon.ForwardConfig{{Listen: local, Peer: exporter.Name, Service: "bulk"}}
	return local
}

// TestLimitFlood: for 20 s, strangers who know B's public key flood it with
// handshakes from 127.0.0.2-5 and scanners flood it with garbage datagrams
// from 127.0.0.6-9. The paired transfer A←B keeps at least 80% of its
// unloaded throughput, new forwarded connections and a new paired tunnel
// still work, B's memory stays bounded, and B counts what it refused and
// dropped. THREATS P1, P5.
//
// "Unloaded throughput" is measured against a control: a second pair of
// daemons (A2←B2, not flooded) transfers at the same time as A←B, before
// and during the flood. Other jobs on these shared 2-core machines, and the
// flooders themselves, take CPU from both pairs alike; what the flood costs
// B alone shows as A←B falling behind A2←B2. B and B2 share one core (A,
// A2 and C the other) so that the scheduler treats them alike. The test
// asserts on that ratio and logs the raw one too.
func TestLimitFlood(t *testing.T) {
	const (
		unloaded  = 3 * time.Second
		flood     = 20 * time.Second
		rssBound  = 256 << 20
		minRatio  = 0.80
		fetchSize = 1 << 20
		// The flood rates are bounded by the test's own CPU: under -race
		// the flooders (a quic-go client per attempt) cannot keep up with
		// more on these 2 cores. 4 × 25 handshakes/s is 2.5× the
		// per-source limit (default 10/s, burst 20), so B runs about 880
		// full handshakes for strangers in 20 s (about 1 ms of its CPU
		// each), whatever the attempt rate; the rest get a Retry and a
		// CONNECTION_REFUSED. 10,000 garbage datagrams/s cost B about
		// 3 µs each. Measured here: B kept 91-101% of its share (it spends
		// about 10% of a core on the flood, and the scheduler gives its
		// busier threads more of the shared core than B2's); at 4 × 50
		// handshakes/s and 20,000 datagrams/s (without -race) it kept 92%.
		handshakeSources = 4
		handshakesPerSrc = 25
		handshakeFlight  = 16
		garbageSources   = 4
		garbagePerSrc    = 2500
	)
	bulk := newBulkServer(t)
	root := t.TempDir()
	a, b, c := newSite(t, root, "site-a"), newSite(t, root, "site-b"), newSite(t, root, "site-c")
	a2, b2 := newSite(t, root, "site-a2"), newSite(t, root, "site-b2")
	for _, s := range []*daemontest.Site{a, b, c, a2, b2} {
		s.Config.Log.Level = "info" // a debug line per refusal would cost more than the flood
	}
	b.Config.Peers = []daemon.PeerFile{a.Peer(false), c.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "bulk", Upstream: bulk.addr, Allow: []string{"site-a", "site-c"}}}
	b2.Config.Peers = []daemon.PeerFile{a2.Peer(false)}
	b2.Config.Services = []daemon.ServiceFile{{Name: "bulk", Upstream: bulk.addr, Allow: []string{"site-a2"}}}
	aLocal, cLocal, a2Local := importBulk(t, a, b), importBulk(t, c, b), importBulk(t, a2, b2)
	for _, s := range []*daemontest.Site{b, a, b2, a2} {
		start(t, s)
	}
	if err := errors.Join(pin(0, b, b2), pin(1, a, a2)); err != nil {
		t.Fatal(err)
	}
	for _, local := range []string{aLocal, a2Local} {
		if _, err := fetch(local, 'f', fetchSize, 5*time.Second); err != nil {
			t.Fatalf("warm-up fetch through %s: %v", local, err)
		}
	}
	both := func(d time.Duration) (float64, float64, []float64, error) {
		return controlled(aLocal, 'a', a2Local, 'k', d)
	}
	base, baseCtl, baseRatios, err := both(unloaded)
	if err != nil {
		t.Fatalf("unloaded transfers: %v", err)
	}
	t.Logf("unloaded: A←B %s, control A2←B2 %s", mibps(base), mibps(baseCtl))

	bKey, err := identity.ParsePublicKey(b.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	target, err := net.ResolveUDPAddr("udp", b.Config.Listen)
	if err != nil {
		t.Fatal(err)
	}
	before := counters(t, b)
	snmp0 := udpRcvbufErrors()
	bCPU0, b2CPU0, selfCPU0 := procCPU(b.Pid()), procCPU(b2.Pid()), selfCPU()
	ctx, cancel := context.WithTimeout(context.Background(), flood)
	defer cancel()
	var floods sync.WaitGroup
	floodErrs := make(chan error, handshakeSources+garbageSources)
	var tally handshakeTally
	for i := range handshakeSources {
		floods.Add(1)
		go func() {
			defer floods.Done()
			if err := handshakeFlood(ctx, fmt.Sprintf("127.0.0.%d", 2+i), target, bKey, handshakesPerSrc, handshakeFlight, &tally); err != nil {
				floodErrs <- fmt.Errorf("handshake flood: %w", err)
			}
		}()
	}
	var junkSent atomic.Int64
	pool := garbage(512)
	for i := range garbageSources {
		floods.Add(1)
		go func() {
			defer floods.Done()
			if err := garbageFlood(ctx, fmt.Sprintf("127.0.0.%d", 6+i), target, pool, garbagePerSrc, &junkSent); err != nil {
				floodErrs <- fmt.Errorf("garbage flood: %w", err)
			}
		}()
	}

	// B's memory and descriptors, sampled through the flood.
	var peakRSS, peakFDs atomic.Int64
	floods.Add(1)
	go func() {
		defer floods.Done()
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			if rss := procStatus(b.Pid(), "VmRSS"); rss > peakRSS.Load() {
				peakRSS.Store(rss)
			}
			if fds := int64(procFDs(b.Pid())); fds > peakFDs.Load() {
				peakFDs.Store(fds)
			}
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()

	// New forwarded connections every 2 s, and a new paired tunnel (C
	// starts) halfway through.
	var fetches []string
	var fetchErrs []error
	attempts := 0 // a loaded machine fits fewer 2 s rounds into the flood
	var side sync.WaitGroup
	side.Add(1)
	go func() {
		defer side.Done()
		for i := 0; i < 9 && ctx.Err() == nil; i++ {
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
			attempts++
			ttfb, err := fetch(aLocal, 'f', fetchSize, 5*time.Second)
			if err != nil {
				fetchErrs = append(fetchErrs, fmt.Errorf("new connection %d: %w", i, err))
			} else {
				fetches = append(fetches, ttfb.Round(100*time.Microsecond).String())
			}
		}
	}()
	var cErr error
	var cTTFB time.Duration
	side.Add(1)
	go func() {
		defer side.Done()
		select {
		case <-ctx.Done():
			return
		case <-time.After(flood / 2):
		}
		if cErr = c.StartReady(10 * time.Second); cErr != nil {
			return
		}
		if cErr = pin(1, c); cErr != nil {
			return
		}
		cTTFB, cErr = fetch(cLocal, 'f', fetchSize, 10*time.Second)
	}()
	t.Cleanup(func() { c.Stop(15 * time.Second) })

	loaded, loadedCtl, loadedRatios, dlErr := both(flood)
	cancel()
	floods.Wait()
	side.Wait()
	close(floodErrs)
	for err := range floodErrs {
		t.Error(err)
	}
	bCPU, b2CPU, testCPU := procCPU(b.Pid())-bCPU0, procCPU(b2.Pid())-b2CPU0, selfCPU()-selfCPU0
	after := counters(t, b)
	delta := func(k string) uint64 { return after[k] - before[k] }

	// Once more unloaded, so that the share compared against is the mean
	// of before and after.
	base2, baseCtl2, baseRatios2, err := both(unloaded)
	if err != nil {
		t.Errorf("unloaded transfers after the flood: %v", err)
	}
	baseRatios = append(baseRatios, baseRatios2...)
	// The medians of 500 ms windows keep a burst of other work on the machine
	// from deciding the result; the whole-run ratio is logged beside.
	ratio := medianOf(loadedRatios) / medianOf(baseRatios)
	whole := (loaded / loadedCtl) / ((base + base2) / (baseCtl + baseCtl2))
	t.Logf("flood %v: %s", flood, &tally)
	t.Logf("unloaded after: A←B %s, control %s", mibps(base2), mibps(baseCtl2))
	t.Logf("during the flood: A←B %s, control %s: A←B kept %.0f%% of its unloaded share (medians of 500 ms windows; whole runs %.0f%%); raw %.0f%% of unloaded, control %.0f%% of its own",
		mibps(loaded), mibps(loadedCtl), 100*ratio, 100*whole, 200*loaded/(base+base2), 200*loadedCtl/(baseCtl+baseCtl2))
	t.Logf("garbage sent %d (%.0f/s); B counted packets_dropped %d, handshakes_refused %d, limited.handshakes_per_second %d, limited.max_half_open %d, limited.max_tunnels %d, limited.half_open_per_source %d; kernel UDP RcvbufErrors (all sockets) %d",
		junkSent.Load(), float64(junkSent.Load())/flood.Seconds(), delta("packets_dropped"), delta("handshakes_refused"),
		delta("limited.handshakes_per_second"), delta("limited.max_half_open"), delta("limited.max_tunnels"), delta("limited.half_open_per_source"), udpRcvbufErrors()-snmp0)
	perGiB, perGiB2 := bCPU.Seconds()/(loaded*flood.Seconds()/(1<<30)), b2CPU.Seconds()/(loadedCtl*flood.Seconds()/(1<<30))
	t.Logf("B: peak RSS %.1f MiB, peak fds %d, CPU %v (B2 %v); CPU per GiB moved B %.2f s, B2 %.2f s (B's bytes per CPU-second %.0f%% of B2's; the flood cost B about %.0f%% of a core); test process CPU %v",
		float64(peakRSS.Load())/(1<<20), peakFDs.Load(), bCPU, b2CPU, perGiB, perGiB2, 100*perGiB2/perGiB,
		100*(bCPU.Seconds()-perGiB2*loaded*flood.Seconds()/(1<<30))/flood.Seconds(), testCPU)
	t.Logf("new connections' first byte during the flood: %v; C's (new tunnel) %v", fetches, cTTFB.Round(100*time.Microsecond))

	if dlErr != nil {
		t.Errorf("a transfer failed during the flood: %v", dlErr)
	}
	if ratio < minRatio {
		t.Errorf("under the flood A←B moved %s against the control's %s: %.0f%% of its unloaded share (median ratio %.2f, unloaded %.2f), want at least %.0f%%",
			mibps(loaded), mibps(loadedCtl), 100*ratio, medianOf(loadedRatios), medianOf(baseRatios), 100*minRatio)
	}
	for _, err := range fetchErrs {
		t.Error(err)
	}
	if len(fetches) < attempts || attempts < 6 {
		t.Errorf("%d of %d new forwarded connections completed during the flood, want all of at least 6", len(fetches), attempts)
	}
	if cErr != nil {
		t.Errorf("a paired daemon starting during the flood could not connect: %v", cErr)
	}
	if peakRSS.Load() <= 0 || peakRSS.Load() > rssBound {
		t.Errorf("B's peak RSS %d bytes, want (0, %d]", peakRSS.Load(), rssBound)
	}
	// The flooders share the CPU too (most under -race): the flood must
	// reach half its rates, or it proved little.
	if got, want := tally.attempts.Load(), int64(handshakeSources*handshakesPerSrc*flood.Seconds()); got < want/2 {
		t.Errorf("the handshake flood made %d attempts, under half of its %d", got, want)
	}
	if got, want := junkSent.Load(), int64(garbageSources*garbagePerSrc*flood.Seconds()); got < want/2 {
		t.Errorf("the garbage flood sent %d datagrams, under half of its %d", got, want)
	}
	if tally.ready.Load() != 0 {
		t.Errorf("%d strangers got the ready signal of a paired tunnel (THREATS P1)", tally.ready.Load())
	}
	// Per source, either limit may come first: the handshake rate, or
	// (when handshakes stay half-open longer on a loaded machine) the
	// source's or its prefix's share of the half-open slots.
	perSource := delta("limited.handshakes_per_second") + delta("limited.half_open_per_source") + delta("limited.half_open_per_prefix")
	if delta("handshakes_refused") == 0 || perSource == 0 {
		t.Errorf("B refused %d handshakes by key and %d by its per-source limits (rate %d, half-open share %d + %d); the strangers saw %s",
			delta("handshakes_refused"), perSource, delta("limited.handshakes_per_second"),
			delta("limited.half_open_per_source"), delta("limited.half_open_per_prefix"), &tally)
	}
	// Full handshakes (each ends in a key refusal) are bounded by the
	// per-source rate: default 10/s, burst 20, 1 s of slack.
	if maxTLS := uint64(handshakeSources * (20 + 10*int(flood.Seconds()+1))); delta("handshakes_refused") > maxTLS {
		t.Errorf("B ran %d full handshakes for strangers, more than the per-source limit allows (%d)", delta("handshakes_refused"), maxTLS)
	}
	// The kernel may drop some garbage (a full receive buffer), but most
	// of it must reach the dark listener and be counted.
	if d := delta("packets_dropped"); d < uint64(junkSent.Load())/2 {
		t.Errorf("B counted %d dropped datagrams of %d garbage datagrams sent", d, junkSent.Load())
	}
	// Only paired streams reached the upstream: three transfers, the
	// warm-up, the fetches and C's.
	if n, want := bulk.accepted['a'].Load()+bulk.accepted['f'].Load()-1, int64(3+1+len(fetches)+len(fetchErrs)+1); n != want && cErr == nil {
		t.Errorf("B's upstream saw %d connections, want %d (paired ones only)", n, want)
	}
}

// pin moves every thread of the daemons to the CPU cpu (threads they start
// later inherit it). The tests put the daemon under test and its control
// on the same core, so that the scheduler shares that core between them
// alike, whatever else the machine runs. Without a second CPU it does
// nothing.
func pin(cpu int, sites ...*daemontest.Site) error {
	if runtime.NumCPU() < 2 {
		return nil
	}
	var set unix.CPUSet
	set.Set(cpu)
	for _, s := range sites {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", s.Pid()))
		if err != nil {
			return fmt.Errorf("pin %s: %w", s.Name, err)
		}
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("pin %s thread %d to CPU %d: %w", s.Name, tid, cpu, err)
			}
		}
	}
	return nil
}

// ratioWindow is how often controlled compares the two transfers.
const ratioWindow = 500 * time.Millisecond

// controlled runs a transfer (through local, with tag) and a control
// transfer (through ctlLocal) at once for d. It returns both rates and the
// ratio transfer/control of each ratioWindow: what the rest of the machine
// does slows both alike, what one daemon alone suffers shows in the ratio.
func controlled(local string, tag byte, ctlLocal string, ctlTag byte, d time.Duration) (bps, ctlBps float64, ratios []float64, err error) {
	var got, ctl atomic.Int64
	var wg sync.WaitGroup
	var ctlErr error
	done := make(chan struct{})
	wg.Add(2)
	go func() { defer wg.Done(); ctlErr = download(ctlLocal, ctlTag, d, &ctl) }()
	go func() {
		defer wg.Done()
		tk := time.NewTicker(ratioWindow)
		defer tk.Stop()
		var g0, c0 int64
		for {
			select {
			case <-done:
				return
			case <-tk.C:
			}
			g, c := got.Load(), ctl.Load()
			if c > c0 {
				ratios = append(ratios, float64(g-g0)/float64(c-c0))
			}
			g0, c0 = g, c
		}
	}()
	start := time.Now()
	err = download(local, tag, d, &got)
	close(done)
	wg.Wait()
	secs := time.Since(start).Seconds()
	return float64(got.Load()) / secs, float64(ctl.Load()) / secs, ratios, errors.Join(err, ctlErr)
}

// medianOf returns the median of xs (0 for none).
func medianOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// udpRcvbufErrors is the kernel's count of UDP datagrams dropped for a full
// receive buffer (all sockets; /proc/net/snmp).
func udpRcvbufErrors() int64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return -1
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(f) {
				v, _ := strconv.ParseInt(f[i], 10, 64)
				return v
			}
		}
	}
	return -1
}

// TestLimitThrottle: B exports one service to A and C; A's limits on B are
// 20 new streams/s (burst 20), 8 streams at once and 4 MiB/s each way. A
// opens streams as fast as it can and moves data as fast as it can: B
// refuses the excess with typed, counted and audited answers, A gets about
// its bandwidth, and C's concurrent transfer keeps at least 80% of its
// unloaded throughput. THREATS P5 (a misbehaving partner cannot starve
// the others).
//
// B checks the concurrency cap before the rate, so A churns short streams
// alone first (never more than 8 at once: only the rate refuses them),
// then its bulk streams take all 8 slots and the churn meets the cap.
//
// C's throughput is compared as in TestLimitFlood: against a control pair
// (C2←B2) transferring at the same time, B and B2 on one core, A, C and
// C2 on the other, so that what A's clients and A itself cost the shared
// 2 cores does not count against B.
func TestLimitThrottle(t *testing.T) {
	const (
		perSecond   = 4 << 20
		streamRate  = 20
		streamBurst = 20
		maxStreams  = 8
		unloaded    = 3 * time.Second
		window      = 6 * time.Second
		churnAlone  = 1500 * time.Millisecond            // before the bulk streams start
		measureFrom = churnAlone + 1500*time.Millisecond // A's rate is measured from here (its buckets start full)
		churners    = maxStreams
		maxChurn    = 20000 // stream opens the churners may try in all
		minCRatio   = 0.80
	)
	bulk := newBulkServer(t)
	root := t.TempDir()
	a, b, c := newSite(t, root, "site-a"), newSite(t, root, "site-b"), newSite(t, root, "site-c")
	c2, b2 := newSite(t, root, "site-c2"), newSite(t, root, "site-b2")
	for _, s := range []*daemontest.Site{a, b, c, c2, b2} {
		s.Config.Log.Level = "info"
	}
	pa := a.Peer(false)
	pa.Limits = daemon.LimitsFile{StreamsPerSecond: streamRate, StreamBurst: streamBurst, MaxStreams: maxStreams, BytesPerSecond: perSecond}
	b.Config.Peers = []daemon.PeerFile{pa, c.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{{Name: "bulk", Upstream: bulk.addr, Allow: []string{"site-a", "site-c"}}}
	b2.Config.Peers = []daemon.PeerFile{c2.Peer(false)}
	b2.Config.Services = []daemon.ServiceFile{{Name: "bulk", Upstream: bulk.addr, Allow: []string{"site-c2"}}}
	aLocal, cLocal, c2Local := importBulk(t, a, b), importBulk(t, c, b), importBulk(t, c2, b2)
	for _, s := range []*daemontest.Site{b, a, c, b2, c2} {
		start(t, s)
	}
	if err := errors.Join(pin(0, b, b2), pin(1, a, c, c2)); err != nil {
		t.Fatal(err)
	}
	for _, local := range []string{cLocal, c2Local} {
		if _, err := fetch(local, 'w', 1<<20, 5*time.Second); err != nil {
			t.Fatalf("warm-up through %s: %v", local, err)
		}
	}
	cBase, cBaseCtl, baseRatios, err := controlled(cLocal, 'c', c2Local, 'k', unloaded)
	if err != nil {
		t.Fatalf("unloaded transfers: %v", err)
	}
	before := counters(t, b)
	acceptedBefore := bulk.accepted['a'].Load()

	ctx, cancel := context.WithTimeout(context.Background(), window)
	defer cancel()
	deadline, _ := ctx.Deadline()
	begin := time.Now()
	var (
		wg                             sync.WaitGroup
		aDown                          atomic.Int64 // bytes A's bulk clients received
		bulkOK, bulkRefused            atomic.Int64
		churnTried, churnOK, churnFail atomic.Int64
	)
	// opened connects to A's forward with tag and reports whether B
	// accepted the stream: a refused one is reset before any byte.
	opened := func(tag byte) (net.Conn, bool) {
		conn, err := net.DialTimeout("tcp", aLocal, 2*time.Second)
		if err != nil {
			return nil, false
		}
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		var first [1]byte
		if _, err := conn.Write([]byte{tag}); err != nil {
			conn.Close()
			return nil, false
		}
		if _, err := io.ReadFull(conn, first[:]); err != nil {
			conn.Close()
			return nil, false
		}
		return conn, true
	}
	// Bulk: maxStreams clients that retry until B takes their stream,
	// then send and receive as fast as they can until the window ends.
	for range maxStreams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-ctx.Done():
			case <-time.After(churnAlone):
			}
			for ctx.Err() == nil {
				conn, ok := opened('a')
				if !ok {
					bulkRefused.Add(1)
					continue
				}
				bulkOK.Add(1)
				conn.SetDeadline(deadline)
				go func() {
					chunk := make([]byte, 64<<10)
					for {
						if _, err := conn.Write(chunk); err != nil {
							return
						}
					}
				}()
				buf := make([]byte, 64<<10)
				for {
					n, err := conn.Read(buf)
					aDown.Add(int64(n))
					if err != nil {
						break
					}
				}
				conn.Close()
				return
			}
		}()
	}
	// Churn: streams opened and closed as fast as the churners can.
	var churnTime atomic.Int64
	for range churners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && churnTried.Add(1) <= maxChurn {
				t0 := time.Now()
				conn, ok := opened('a' | probe)
				churnTime.Add(int64(time.Since(t0)))
				if ok {
					churnOK.Add(1)
					conn.Close()
				} else {
					churnFail.Add(1)
				}
			}
		}()
	}
	// A's rates from measureFrom on: received by its clients, and sent
	// (read by the upstream).
	type mark struct {
		down, up int64
		at       time.Time
	}
	marked := make(chan mark, 1)
	go func() {
		select {
		case <-ctx.Done():
		case <-time.After(measureFrom):
		}
		marked <- mark{aDown.Load(), bulk.read['a'].Load(), time.Now()}
	}()
	cLoaded, cLoadedCtl, loadedRatios, cErr := controlled(cLocal, 'c', c2Local, 'k', window)
	<-ctx.Done()
	m0 := <-marked
	secs := time.Since(m0.at).Seconds()
	down, up := float64(aDown.Load()-m0.down)/secs, float64(bulk.read['a'].Load()-m0.up)/secs
	elapsed := time.Since(begin)
	wg.Wait()

	cAfter, cAfterCtl, afterRatios, err := controlled(cLocal, 'c', c2Local, 'k', unloaded)
	if err != nil {
		t.Errorf("unloaded transfers after: %v", err)
	}
	baseRatios = append(baseRatios, afterRatios...)
	after := counters(t, b)
	delta := func(k string) uint64 { return after[k] - before[k] }
	accepted := bulk.accepted['a'].Load() - acceptedBefore
	cRatio := medianOf(loadedRatios) / medianOf(baseRatios)
	t.Logf("C/control ratios per 500 ms: unloaded %.2f, beside A %.2f", baseRatios, loadedRatios)
	t.Logf("A: %d streams tried, %d accepted (upstream saw %d, peak %d at once); bulk %d accepted, %d refused; churn %d accepted, %d refused, %v per attempt",
		bulkOK.Load()+bulkRefused.Load()+churnOK.Load()+churnFail.Load(), bulkOK.Load()+churnOK.Load(), accepted, bulk.peak['a'].Load(),
		bulkOK.Load(), bulkRefused.Load(), churnOK.Load(), churnFail.Load(),
		(time.Duration(churnTime.Load()) / time.Duration(max(1, churnOK.Load()+churnFail.Load()))).Round(10*time.Microsecond))
	t.Logf("B: streams_refused.rate_limited %d, streams_refused.too_many_streams %d, limited.streams_per_second %d, limited.max_streams %d, limited.bytes_per_second %d",
		delta("streams_refused.rate_limited"), delta("streams_refused.too_many_streams"), delta("limited.streams_per_second"),
		delta("limited.max_streams"), delta("limited.bytes_per_second"))
	t.Logf("A's rate: down %s, up %s (%.0f%% and %.0f%% of its %s)", mibps(down), mibps(up), 100*down/perSecond, 100*up/perSecond, mibps(perSecond))
	t.Logf("C: unloaded %s before, %s after (control %s, %s); beside A %s (control %s): C kept %.0f%% of its share (medians of 500 ms windows; raw %.0f%% of unloaded, control %.0f%% of its own)",
		mibps(cBase), mibps(cAfter), mibps(cBaseCtl), mibps(cAfterCtl), mibps(cLoaded), mibps(cLoadedCtl), 100*cRatio,
		200*cLoaded/(cBase+cAfter), 200*cLoadedCtl/(cBaseCtl+cAfterCtl))

	if cErr != nil {
		t.Errorf("C's transfer beside A failed: %v", cErr)
	}
	if cRatio < minCRatio {
		t.Errorf("C moved %s beside A against the control's %s: %.0f%% of its unloaded share (median ratio %.2f, unloaded %.2f), want at least %.0f%%",
			mibps(cLoaded), mibps(cLoadedCtl), 100*cRatio, medianOf(loadedRatios), medianOf(baseRatios), 100*minCRatio)
	}
	for name, r := range map[string]float64{"down": down, "up": up} {
		if r < 0.6*perSecond || r > 1.3*perSecond {
			t.Errorf("A's %s rate %s is %.0f%% of its limit %s, want 60-130%%", name, mibps(r), 100*r/perSecond, mibps(perSecond))
		}
	}
	// The stream bucket lets at most its burst plus its rate through;
	// 1 s of slack for the window's edges.
	if most := int64(streamBurst + streamRate*(elapsed.Seconds()+1)); accepted > most {
		t.Errorf("B accepted %d of A's streams in %v, more than burst %d + %d/s allow (%d)", accepted, elapsed.Round(time.Millisecond), streamBurst, streamRate, most)
	}
	// The upstream may see a stream end a moment after B has freed its
	// slot for the next: one of slack.
	if p := bulk.peak['a'].Load(); p > maxStreams+1 {
		t.Errorf("A had %d streams at its upstream at once, limit %d", p, maxStreams)
	}
	if bulkOK.Load() == 0 {
		t.Errorf("none of A's %d bulk streams got through within %v", maxStreams, window)
	}
	refusedByB := delta("streams_refused.rate_limited") + delta("streams_refused.too_many_streams")
	refusedSeen := uint64(bulkRefused.Load() + churnFail.Load())
	if delta("streams_refused.rate_limited") == 0 || delta("streams_refused.too_many_streams") == 0 {
		t.Errorf("B refused %d streams for rate and %d for concurrency; want both", delta("streams_refused.rate_limited"), delta("streams_refused.too_many_streams"))
	}
	if delta("limited.streams_per_second") != delta("streams_refused.rate_limited") || delta("limited.max_streams") != delta("streams_refused.too_many_streams") {
		t.Errorf("limited.* (%d, %d) do not match streams_refused.* (%d, %d)", delta("limited.streams_per_second"), delta("limited.max_streams"),
			delta("streams_refused.rate_limited"), delta("streams_refused.too_many_streams"))
	}
	if refusedByB > refusedSeen || refusedByB < refusedSeen*9/10 {
		t.Errorf("B counted %d refusals; A's clients saw %d", refusedByB, refusedSeen)
	}
	if delta("limited.bytes_per_second") == 0 {
		t.Error("B did not count A's bandwidth limit")
	}
	limited := func(limit string) func(journal.Entry) bool {
		return func(e journal.Entry) bool {
			return e.Name == audit.RateLimitExceeded && e.Attr(audit.KeyPeer).AsString() == "site-a" && e.Attr(audit.KeyLimit).AsString() == limit &&
				e.Attr(audit.KeyScope).AsString() == "peer" // refused on arrival: the service is not read yet
		}
	}
	// Once the first event is on disk (group commit), read the journal once.
	if !hasEvent(t, b, audit.RateLimitExceeded, limited("streams_per_second")) {
		t.Errorf("B's journal lacks %s for site-a's streams_per_second", audit.RateLimitExceeded)
	}
	es, res, err := b.Journal()
	if err != nil || !res.OK() {
		t.Fatalf("B's journal: %v %v", err, res.Bad)
	}
	has := func(match func(journal.Entry) bool) bool { return slices.ContainsFunc(es, match) }
	if !has(limited("max_streams")) {
		t.Errorf("B's journal lacks %s for site-a's max_streams", audit.RateLimitExceeded)
	}
	if has(func(e journal.Entry) bool {
		return e.Name == audit.RateLimitExceeded && e.Attr(audit.KeyPeer).AsString() == "site-c"
	}) {
		t.Error("B limited site-c, which has no limits of its own")
	}
	// The auditor rate-limits by event name and source: thousands of
	// stream refusals use up site-a's budget of rate_limit.exceeded, and
	// its bandwidth event
	// (once per stream, at its first delay) may then only be counted as
	// suppressed, which B writes at the latest when it stops.
	if !has(limited("bytes_per_second")) {
		if err := b.Stop(15 * time.Second); err != nil {
			t.Fatalf("stop B: %v", err)
		}
		if !hasEvent(t, b, audit.EventsSuppressed, func(e journal.Entry) bool {
			return e.Attr(audit.KeyEventName).AsString() == audit.RateLimitExceeded && e.Attr(audit.KeyCount).AsInt64() > 0
		}) {
			t.Errorf("B's journal has neither %s for site-a's bytes_per_second nor a count of suppressed ones", audit.RateLimitExceeded)
		} else {
			t.Logf("B's bandwidth event for site-a was suppressed by the audit rate limit (counted in %s)", audit.EventsSuppressed)
		}
	}
}

// stallServer accepts connections and keeps them open without reading or
// writing; trickle, if set, writes one byte to each every trickle instead.
// Every connection ends after at most bulkLifetime.
func stallServer(t *testing.T, trickle time.Duration) (addr string, accepted *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = new(atomic.Int64)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				end := time.NewTimer(bulkLifetime)
				defer end.Stop()
				if trickle <= 0 {
					// Hold until the peer closes, the test ends or the lifetime passes.
					go func() { io.Copy(io.Discard, c); c.Close() }()
					select {
					case <-stop:
					case <-end.C:
					}
					return
				}
				tk := time.NewTicker(trickle)
				defer tk.Stop()
				for {
					select {
					case <-stop:
						return
					case <-end.C:
						return
					case <-tk.C:
					}
					if _, err := c.Write([]byte{'.'}); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), accepted
}

// settleFDs waits up to 5 s for pid's descriptors to come back to at most
// want, and returns the last count.
func settleFDs(pid, want int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := procFDs(pid)
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLimitSlowloris: clients and upstreams that hold connections without
// using them cannot pin A's or B's resources. (a) A forward with
// max_connections 16 and allow_from 127.0.0.1/32 holds 16 of 40 silent
// clients, resets the other 24 at once, refuses 127.0.0.2, and B's
// idle_timeout of 2 s closes the held ones. (b) An upstream that trickles
// a byte every 500 ms is never idle, but B's max_lifetime of 3 s ends its
// streams. Afterwards A's and B's descriptors are back at their baseline.
// THREATS P5.
func TestLimitSlowloris(t *testing.T) {
	const (
		maxConns = 16
		clients  = 40
		idle     = 2 * time.Second
		lifetime = 3 * time.Second
		trickle  = 500 * time.Millisecond
		fdSlack  = 2 // descriptors the runtime or a lingering accept may hold a moment longer
	)
	idleUp, idleAccepted := stallServer(t, 0)
	trickleUp, _ := stallServer(t, trickle)
	root := t.TempDir()
	a, b := newSite(t, root, "site-a"), newSite(t, root, "site-b")
	for _, s := range []*daemontest.Site{a, b} {
		s.Config.Log.Level = "info"
	}
	b.Config.Peers = []daemon.PeerFile{a.Peer(false)}
	b.Config.Services = []daemon.ServiceFile{
		{Name: "idle", Upstream: idleUp, Allow: []string{"site-a"}, Limits: daemon.LimitsFile{IdleTimeout: daemon.Duration(idle)}},
		{Name: "trickle", Upstream: trickleUp, Allow: []string{"site-a"}, Limits: daemon.LimitsFile{MaxLifetime: daemon.Duration(lifetime)}},
	}
	idleLocal, trickleLocal := freeTCP(t), freeTCP(t)
	a.Config.Peers = []daemon.PeerFile{b.Peer(true)}
	a.Config.Forwards = []daemon.ForwardConfig{
		{Listen: idleLocal, Peer: "site-b", Service: "idle", MaxConnections: maxConns, AllowFrom: []string{"127.0.0.1/32"}},
		{Listen: trickleLocal, Peer: "site-b", Service: "trickle"},
	}
	start(t, b)
	start(t, a)
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := a.Status()
		if err == nil && len(st.Peers) == 1 && st.Peers[0].Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A's tunnel to B not up after 5 s: %+v, %v", st.Peers, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	baseA, baseB := procFDs(a.Pid()), procFDs(b.Pid())
	before := counters(t, a)

	t.Run("idle clients", func(t *testing.T) {
		conns := make([]net.Conn, 0, clients)
		opened := make([]time.Time, 0, clients)
		defer func() {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		}()
		for i := range clients {
			c, err := net.DialTimeout("tcp", idleLocal, 2*time.Second)
			if errors.Is(err, syscall.ECONNRESET) {
				c = nil // refused so fast that the reset beat connect's own check
			} else if err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
			conns, opened = append(conns, c), append(opened, time.Now())
		}
		// A held connection stays silent; a refused one is reset at once.
		time.Sleep(300 * time.Millisecond)
		var held []int
		for i, c := range conns {
			if c == nil {
				continue
			}
			c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			_, err := c.Read(make([]byte, 1))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				held = append(held, i)
			}
		}
		peakA := procFDs(a.Pid())
		// A source outside allow_from is reset too.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 2 * time.Second}
		outsider, err := d.Dial("tcp", idleLocal)
		outsiderRefused := errors.Is(err, syscall.ECONNRESET)
		if err == nil {
			outsider.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, err = outsider.Read(make([]byte, 1))
			outsiderRefused = err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
			outsider.Close()
		}
		st := counters(t, a)
		t.Logf("%d of %d silent clients held, %d reset; the upstream got %d; fds A %d → %d, B %d → %d (limited.max_connections %d, limited.allow_from %d)",
			len(held), clients, clients-len(held), idleAccepted.Load(), baseA, peakA, baseB, procFDs(b.Pid()),
			st["limited.max_connections"]-before["limited.max_connections"], st["limited.allow_from"]-before["limited.allow_from"])
		if len(held) != maxConns {
			t.Errorf("A held %d of %d silent clients, want max_connections %d", len(held), clients, maxConns)
		}
		if n := st["limited.max_connections"] - before["limited.max_connections"]; n != clients-maxConns {
			t.Errorf("A counted %d max_connections refusals, want %d", n, clients-maxConns)
		}
		if !outsiderRefused {
			t.Errorf("a client from 127.0.0.2 was not refused (allow_from 127.0.0.1/32): %v", err)
		}
		if n := st["limited.allow_from"] - before["limited.allow_from"]; n != 1 {
			t.Errorf("A counted %d allow_from refusals, want 1", n)
		}

		// B's idle timeout ends the held ones (a reset, not EOF).
		var early, late []string
		var lasted []time.Duration
		for _, i := range held {
			c := conns[i]
			c.SetReadDeadline(opened[i].Add(3 * idle))
			_, err := c.Read(make([]byte, 1))
			d := time.Since(opened[i])
			lasted = append(lasted, d.Round(time.Millisecond))
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded) || d > 2*idle:
				late = append(late, fmt.Sprintf("client %d after %v (%v)", i, d, err))
			case d < idle-100*time.Millisecond:
				early = append(early, fmt.Sprintf("client %d after %v (%v)", i, d, err))
			}
		}
		t.Logf("held clients closed after %v", lasted)
		if len(late) > 0 || len(early) > 0 {
			t.Errorf("idle_timeout %v: held clients closed late %v, early %v", idle, late, early)
		}
		if !hasEvent(t, b, audit.StreamClosed, func(e journal.Entry) bool {
			return e.Attr(audit.KeyService).AsString() == "idle" && e.Attr(audit.KeyCloseReason).AsString() == "idle_timeout"
		}) {
			t.Error("B's journal lacks a stream closed for idle_timeout")
		}
		// The freed slots take new clients again.
		c, err := net.DialTimeout("tcp", idleLocal, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("a new client after the idle ones ended was not held: %v", err)
		}
		c.Close()
	})

	const trickled = 4
	t.Run("trickling upstream", func(t *testing.T) {
		const n = trickled
		type result struct {
			bytes int
			took  time.Duration
			err   error
		}
		results := make(chan result, n)
		for range n {
			go func() {
				start := time.Now()
				c, err := net.DialTimeout("tcp", trickleLocal, 2*time.Second)
				if err != nil {
					results <- result{err: err}
					return
				}
				defer c.Close()
				c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
				c.SetReadDeadline(start.Add(3 * lifetime))
				got, err := io.Copy(io.Discard, c)
				if err == nil {
					err = io.EOF
				}
				results <- result{int(got), time.Since(start), err}
			}()
		}
		for range n {
			r := <-results
			t.Logf("trickled %d bytes in %v, then %v", r.bytes, r.took.Round(10*time.Millisecond), r.err)
			if errors.Is(r.err, os.ErrDeadlineExceeded) || r.took > lifetime+2*time.Second || r.took < lifetime-100*time.Millisecond {
				t.Errorf("max_lifetime %v: stream ended after %v (%v)", lifetime, r.took, r.err)
			}
			if want := int(lifetime/trickle) - 2; r.bytes < want {
				t.Errorf("only %d bytes trickled through in %v, want at least %d: the stream was not live", r.bytes, r.took, want)
			}
		}
		if !hasEvent(t, b, audit.StreamClosed, func(e journal.Entry) bool {
			return e.Attr(audit.KeyService).AsString() == "trickle" && e.Attr(audit.KeyCloseReason).AsString() == "max_lifetime"
		}) {
			t.Error("B's journal lacks a stream closed for max_lifetime")
		}
	})

	// Streams a limit ended are counted by the limit, like refusals.
	bc := counters(t, b)
	t.Logf("B's counters: limited.idle_timeout %d, limited.max_lifetime %d", bc["limited.idle_timeout"], bc["limited.max_lifetime"])
	if bc["limited.idle_timeout"] < maxConns || bc["limited.max_lifetime"] < trickled {
		t.Errorf("B counted limited.idle_timeout %d (want at least %d) and limited.max_lifetime %d (want at least %d)",
			bc["limited.idle_timeout"], maxConns, bc["limited.max_lifetime"], trickled)
	}
	fdA, fdB := settleFDs(a.Pid(), baseA+fdSlack), settleFDs(b.Pid(), baseB+fdSlack)
	t.Logf("descriptors: A %d → %d, B %d → %d", baseA, fdA, baseB, fdB)
	if fdA > baseA+fdSlack || fdB > baseB+fdSlack {
		t.Errorf("descriptors did not come back: A %d (baseline %d), B %d (baseline %d), slack %d", fdA, baseA, fdB, baseB, fdSlack)
	}
}

// limitsConfig is a configuration with every limit key; the test cases
// below replace one value each.
const limitsConfig = `site: site-a
identity: identity.key
listen: 127.0.0.1:7000
tunnel:
  handshakes_per_second: 10
  max_half_open: 64
  limits:
    streams_per_second: 100
    bytes_per_second: 10MiB
peers:
  - name: site-b
    public_key: KEY
    limits:
      max_streams: 8
      stream_burst: 20
services:
  - name: ledger
    upstream: 127.0.0.1:8080
    allow: [site-b]
    limits:
      idle_timeout: 2m
      max_lifetime: 1h
forwards:
  - listen: 127.0.0.1:9000
    peer: site-b
    service: payments
    allow_from: [127.0.0.1/32, "::1"]
    max_connections: 16
`

// TestLimitConfigErrors: a limit that cannot be met is refused with an
// error naming the file, the line and the field (STYLE 11); "unlimited"
// survives a round trip through the file.
func TestLimitConfigErrors(t *testing.T) {
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	good := strings.Replace(limitsConfig, "KEY", id.Public().String(), 1)
	if _, err := daemon.ParseConfig("/etc/dyad/dyad.yaml", []byte(good)); err != nil {
		t.Fatalf("the base configuration: %v", err)
	}
	for _, tc := range []struct {
		name, from, to, field string
	}{
		{"CIDR prefix too long", "[127.0.0.1/32,", "[10.0.0.0/33,", "forwards[0].allow_from[0]"},
		{"host name in allow_from", `"::1"]`, "example.com]", "forwards[0].allow_from[1]"},
		{"unknown byte unit", "bytes_per_second: 10MiB", "bytes_per_second: 10XB", "tunnel.limits.bytes_per_second"},
		{"bytes below the floor", "bytes_per_second: 10MiB", "bytes_per_second: 100", "tunnel.limits.bytes_per_second"},
		{"negative rate", "streams_per_second: 100", "streams_per_second: -5", "tunnel.limits.streams_per_second"},
		{"negative handshake rate", "handshakes_per_second: 10", "handshakes_per_second: -1", "tunnel.handshakes_per_second"},
		{"negative stream cap", "max_streams: 8", "max_streams: -1", "peers[0].limits.max_streams"},
		{"stream cap above 16 connections x QUIC's", "max_streams: 8", "max_streams: 70000", "peers[0].limits.max_streams"},
		{"fractional burst", "stream_burst: 20", "stream_burst: 2.5", "peers[0].limits.stream_burst"},
		{"negative duration", "idle_timeout: 2m", "idle_timeout: -2m", "services[0].limits.idle_timeout"},
		{"lifetime not a duration", "max_lifetime: 1h", "max_lifetime: forever", "services[0].limits.max_lifetime"},
		{"negative connection cap", "max_connections: 16", "max_connections: -16", "forwards[0].max_connections"},
		{"fractional connection cap", "max_connections: 16", "max_connections: 1.5", "forwards[0].max_connections"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(good, tc.from) {
				t.Fatalf("the base configuration lacks %q", tc.from)
			}
			bad := strings.Replace(good, tc.from, tc.to, 1)
			line := 1 + strings.Count(bad[:strings.Index(bad, tc.to)], "\n")
			_, err := daemon.ParseConfig("/etc/dyad/dyad.yaml", []byte(bad))
			if err == nil {
				t.Fatalf("%q on line %d accepted", tc.to, line)
			}
			msg := err.Error()
			if !strings.Contains(msg, fmt.Sprintf("dyad.yaml:%d:", line)) && !strings.Contains(msg, fmt.Sprintf("line %d:", line)) {
				t.Errorf("%q on line %d: the error does not name the line: %s", tc.to, line, msg)
			}
			if !strings.Contains(msg, tc.field) {
				t.Errorf("%q on line %d: the error does not name the field %s: %s", tc.to, line, tc.field, msg)
			}
		})
	}
	t.Run("unlimited round trip", func(t *testing.T) {
		r := strings.NewReplacer("handshakes_per_second: 10", "handshakes_per_second: unlimited",
			"bytes_per_second: 10MiB", "bytes_per_second: unlimited", "max_streams: 8", "max_streams: unlimited",
			"max_lifetime: 1h", "max_lifetime: unlimited", "max_connections: 16", "max_connections: unlimited")
		c, err := daemon.ParseConfig("/etc/dyad/dyad.yaml", []byte(r.Replace(good)))
		if err != nil {
			t.Fatalf("unlimited everywhere: %v", err)
		}
		if c.Tunnel.HandshakesPerSecond >= 0 || c.Tunnel.Limits.BytesPerSecond >= 0 || c.Tunnel.Peers[0].Limits.MaxStreams >= 0 ||
			c.Tunnel.Services[0].Limits.MaxLifetime >= 0 {
			t.Errorf("unlimited not kept as negative: %+v", c.Tunnel)
		}
		// What `dyad` tooling writes back (daemontest writes every
		// configuration this way) must parse again.
		out, err := yaml.Marshal(c.File)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := daemon.ParseConfig("/etc/dyad/dyad.yaml", out); err != nil {
			t.Errorf("the configuration written back does not parse: %v\n%s", err, out)
		}
	})
}
