package daemontest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/dyad-tunnel/dyad/internal/freeport"
)

// maxRelayClients bounds the source addresses a UDPRelay serves (one back
// socket and goroutine each); datagrams from further sources are dropped
// and counted. A daemon keeps its UDP port across restarts, so a fault test
// needs one or two.
const maxRelayClients = 16

// relayBuf fits any UDP datagram: GSO batches reach the relay split by the
// kernel, but a datagram may still be up to 64 KiB.
const relayBuf = 1 << 16

// UDPRelay is a user-space UDP relay on loopback for fault tests: the
// dialing daemon sends to Addr instead of its peer, and the relay forwards
// each client source address's datagrams to the target from a back socket
// of its own, relaying the target's replies back. Between the two it can
// hold the path (Pause), make the client appear to move to another
// address (Rebind), as a NAT rebinding or a migrating host would, and move
// the flow to another server (Retarget), as a load balancer may.
type UDPRelay struct {
	front  *net.UDPConn
	target atomic.Pointer[netip.AddrPort] // changed by Retarget
	paused atomic.Bool

	forwarded atomic.Uint64 // datagrams passed, both directions
	dropped   atomic.Uint64 // datagrams dropped: paused, too many clients, stray source or send error

	mu      sync.Mutex // guards clients and closed
	clients map[netip.AddrPort]*relayClient
	closed  bool

	wg sync.WaitGroup // the front loop and every back loop
}

// relayClient is one source address and the back socket that speaks for
// it; back changes on Rebind.
type relayClient struct {
	src  netip.AddrPort
	back atomic.Pointer[net.UDPConn]
}

// NewUDPRelay starts a relay on a free 127.0.0.1 UDP port that forwards to
// target (host:port, loopback in tests).
func NewUDPRelay(target string) (*UDPRelay, error) {
	ua, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return nil, fmt.Errorf("relay target %s: %w", target, err)
	}
	ap := ua.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	// The front's port comes from freeport: a test may bind a TCP
	// listener on the same number (a daemon's TCP fallback behind a
	// UDP-blocking relay), so it must not be one the kernel hands out.
	frontAddr, err := freeport.UDPTCP()
	if err != nil {
		return nil, fmt.Errorf("relay front: %w", err)
	}
	front, err := listenLoopbackUDP(frontAddr)
	if err != nil {
		return nil, fmt.Errorf("relay front: %w", err)
	}
	r := &UDPRelay{front: front, clients: map[netip.AddrPort]*relayClient{}}
	r.target.Store(&ap)
	r.wg.Add(1)
	go r.frontLoop()
	return r, nil
}

// listenLoopbackUDP opens a UDP socket on addr (a free 127.0.0.1 port when
// addr is "127.0.0.1:0") with
// buffers deep enough for a QUIC burst (the kernel caps them at rmem_max
// and wmem_max; a smaller buffer only means more drops under load, which
// QUIC recovers from).
func listenLoopbackUDP(addr string) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
	return c, nil
}

// Retarget sends every client's datagrams to target (host:port) from now
// on, and takes replies only from there: what a UDP load balancer does when
// it moves a flow to another instance (a pod restarted, conntrack flushed).
func (r *UDPRelay) Retarget(target string) error {
	ua, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return fmt.Errorf("relay target %s: %w", target, err)
	}
	ap := ua.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	r.target.Store(&ap)
	return nil
}

// Addr is the address clients send to, host:port.
func (r *UDPRelay) Addr() string { return r.front.LocalAddr().String() }

// Pause holds the path (true) or lets it flow again (false). While paused,
// every datagram in either direction is dropped and counted, as if the
// network between the sites went dark; nothing is queued for later.
func (r *UDPRelay) Pause(on bool) { r.paused.Store(on) }

// Forwarded is the number of datagrams relayed so far, both directions.
func (r *UDPRelay) Forwarded() uint64 { return r.forwarded.Load() }

// Dropped is the number of datagrams dropped so far, both directions:
// while paused, from sources beyond the client limit, from strays at a
// back socket, or when a send failed.
func (r *UDPRelay) Dropped() uint64 { return r.dropped.Load() }

// Rebind gives every client a fresh back socket on a new port and closes
// the old one, so the target sees each client's datagrams arrive from a new
// address: for QUIC, a NAT rebinding (connection migration) of the dialing
// side. Replies the target still sends to an old address are lost, as they
// would be behind a NAT that forgot its mapping.
func (r *UDPRelay) Rebind() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return net.ErrClosed
	}
	for _, c := range r.clients {
		back, err := listenLoopbackUDP("127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("relay rebind %v: %w", c.src, err)
		}
		old := c.back.Swap(back)
		r.startBack(c, back)
		old.Close() // its loop ends on net.ErrClosed
	}
	return nil
}

// Close stops the relay: it closes every socket and waits for its
// goroutines.
func (r *UDPRelay) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	r.front.Close()
	for _, c := range r.clients {
		c.back.Load().Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// frontLoop reads from clients and forwards to the target through each
// client's back socket, making the client (and its back socket) on its
// first datagram.
func (r *UDPRelay) frontLoop() {
	defer r.wg.Done()
	buf := make([]byte, relayBuf)
	var last *relayClient // most datagrams in a row come from the same client
	for {
		n, src, err := r.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // transient (an ICMP error surfaced on the socket): the next read may succeed
		}
		if r.paused.Load() {
			r.dropped.Add(1)
			continue
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		c := last
		if c == nil || c.src != src {
			if c = r.client(src); c == nil {
				r.dropped.Add(1)
				continue
			}
			last = c
		}
		r.send(c.back.Load(), buf[:n], *r.target.Load(), c)
	}
}

// client returns src's entry, making it and its back socket if it is new;
// nil when the relay is closed or full.
func (r *UDPRelay) client(src netip.AddrPort) *relayClient {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.clients[src]; ok {
		return c
	}
	if r.closed || len(r.clients) >= maxRelayClients {
		return nil
	}
	back, err := listenLoopbackUDP("127.0.0.1:0")
	if err != nil {
		return nil
	}
	c := &relayClient{src: src}
	c.back.Store(back)
	r.clients[src] = c
	r.startBack(c, back)
	return c
}

// startBack runs the loop that relays the target's replies on back to c.
// r.mu is held (the WaitGroup must count the loop before Close can wait).
func (r *UDPRelay) startBack(c *relayClient, back *net.UDPConn) {
	r.wg.Add(1)
	go r.backLoop(c, back)
}

// backLoop relays what the target sends to back on to the client through
// the front socket; it ends when back is closed (Rebind or Close).
func (r *UDPRelay) backLoop(c *relayClient, back *net.UDPConn) {
	defer r.wg.Done()
	buf := make([]byte, relayBuf)
	for {
		n, from, err := back.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if r.paused.Load() || netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != *r.target.Load() {
			r.dropped.Add(1)
			continue
		}
		r.send(r.front, buf[:n], c.src, nil)
	}
}

// send writes one datagram and counts it. If conn is owner's back socket
// and a Rebind closed it under the send, the successor gets one more try,
// so that a rebind loses no datagram the relay already took.
func (r *UDPRelay) send(conn *net.UDPConn, b []byte, to netip.AddrPort, owner *relayClient) {
	_, err := conn.WriteToUDPAddrPort(b, to)
	if err != nil && owner != nil && errors.Is(err, net.ErrClosed) {
		if next := owner.back.Load(); next != conn {
			_, err = next.WriteToUDPAddrPort(b, to)
		}
	}
	if err != nil {
		r.dropped.Add(1)
		return
	}
	r.forwarded.Add(1)
}
