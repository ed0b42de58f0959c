package tunnel

import (
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// wireTap is an on-path observer between a client node and its server: a
// UDP relay that records every datagram the client sends.
type wireTap struct {
	sock   *net.UDPConn
	server *net.UDPAddr
	mu     sync.Mutex // guards seen and client
	seen   [][]byte
	client *net.UDPAddr
}

func newWireTap(t *testing.T, server net.Addr) *wireTap {
	sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	w := &wireTap{sock: sock, server: server.(*net.UDPAddr)}
	t.Cleanup(func() { sock.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := sock.ReadFromUDP(buf)
			if err != nil {
				return
			}
			w.mu.Lock()
			if from.Port == w.server.Port && from.IP.Equal(w.server.IP) {
				if w.client != nil {
					sock.WriteToUDP(buf[:n], w.client)
				}
			} else {
				w.client = from
				w.seen = append(w.seen, slices.Clone(buf[:n]))
				sock.WriteToUDP(buf[:n], w.server)
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// complete reports whether the tap has recorded all that recorded returns.
func (w *wireTap) complete() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	var s, l, h bool
	for _, d := range w.seen {
		s = s || d[0]&0x80 != 0
		l = l || d[0]&0x80 != 0 && len(d) > 5 && d[5] == cidLen
		h = h || d[0]&0x80 == 0 && len(d) >= 64
	}
	return s && l && h
}

// recorded returns what the observer keeps for later: the client's sealed
// first flight, a long-header datagram and a short-header one (at least
// darkMinUnproven bytes) carrying a connection ID the server issued.
func (w *wireTap) recorded(t *testing.T) (sealed, long, short []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, d := range w.seen {
		switch {
		case d[0]&0x80 != 0 && sealed == nil:
			sealed = d
		case d[0]&0x80 != 0 && len(d) > 5 && d[5] == cidLen:
			long = d
		case d[0]&0x80 == 0 && len(d) >= 64:
			short = d
		}
	}
	if sealed == nil || long == nil || short == nil {
		t.Fatalf("the observer saw no first flight (%v), long header to a server ID (%v) or short header (%v) in %d datagrams",
			sealed != nil, long != nil, short != nil, len(w.seen))
	}
	return sealed, long, short
}

// TestDarkObserverGetsNoAnswer: an observer of the wire who recorded a
// whole tunnel (connection IDs, the sealed first flight) gets no answer
// from the server once the tunnel ended and the documented windows
// passed, from another address: not to a hand-built Initial carrying a
// connection ID the server issued, not to a recorded long-header or
// short-header datagram (which drew a stateless reset), not to the
// replayed first flight (which drew a new handshake). Every one is
// dropped and counted. THREATS P9.
func TestDarkObserverGetsNoAnswer(t *testing.T) {
	saved := darkWindows
	darkWindows.young, darkWindows.live, darkWindows.foreign = time.Second, time.Second, time.Second
	t.Cleanup(func() { darkWindows = saved })
	ida, idb := newIdentity(t), newIdentity(t)
	b := startNode(t, idb, Config{Peers: []Peer{{Name: "a", Key: ida.Public()}}})
	tap := newWireTap(t, b.Addr())
	a := startNode(t, ida, Config{Peers: []Peer{{Name: "b", Key: idb.Public(), Endpoint: tap.sock.LocalAddr().String()}},
		KeepAlive: 200 * time.Millisecond}) // heartbeats: short headers the observer records
	deadline := time.Now().Add(10 * time.Second)
	for b.Stats.TunnelsEstablished.Load() == 0 || a.Stats.TunnelsEstablished.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no tunnel in 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for !tap.complete() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	sealed, long, short := tap.recorded(t)
	a.Close()
	time.Sleep(3 * time.Second) // past the windows, set to 1 s here, and the closed connection's 3 PTO

	initial := []byte{0xc0, 0, 0, 0, 1, cidLen}
	initial = append(initial, long[6:6+cidLen]...)
	initial = append(initial, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0x44, 0xb0) // client ID, no token, length 1200
	initial = append(initial, make([]byte, 1200)...)
	obs, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	dropped := b.Stats.PacketsDropped.Load()
	buf := make([]byte, 4096)
	for _, c := range []struct {
		name string
		d    []byte
	}{{"hand-built Initial to a server ID", initial}, {"recorded long header", long},
		{"recorded short header", short}, {"replayed sealed first flight", sealed}} {
		var got int
		for range 3 {
			if _, err := obs.WriteToUDP(c.d, b.Addr().(*net.UDPAddr)); err != nil {
				t.Fatal(err)
			}
		}
		obs.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
		for {
			n, _, err := obs.ReadFromUDP(buf)
			if err != nil {
				break
			}
			got += n
		}
		if got > 0 {
			t.Errorf("%s (%d bytes, sent 3 times): %d bytes came back", c.name, len(c.d), got)
		}
		if got > 3*len(c.d) {
			t.Errorf("%s: reflected %d bytes for %d", c.name, got, 3*len(c.d))
		}
	}
	if d := b.Stats.PacketsDropped.Load() - dropped; d < 12 {
		t.Errorf("the server counted %d drops for the observer's 12 datagrams", d)
	}
}
