package tunnel

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"math/big"
	"net"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"
)

// countingConn counts the datagrams a plain quic-go client receives.
type countingConn struct {
	net.PacketConn
	got atomic.Int64
}

func (c *countingConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, a, err := c.PacketConn.ReadFrom(b)
	if err == nil {
		c.got.Add(1)
	}
	return n, a, err
}

func selfSigned(t *testing.T) tls.Certificate {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(1), NotAfter: time.Now().Add(time.Hour)},
		&x509.Certificate{SerialNumber: big.NewInt(1)}, priv.Public(), priv)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

// probe plays a scanner against addr: a standard QUIC client handshake
// (with dyad's ALPN, without the listener's key) and garbage datagrams,
// including a short-header one big enough to draw a stateless reset. It
// returns how many datagrams came back.
func probe(t *testing.T, addr string) int64 {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cc := &countingConn{PacketConn: pc}
	tr := &quic.Transport{Conn: cc}
	defer tr.Close()
	udp, _ := net.ResolveUDPAddr("udp", addr)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	tr.Dial(ctx, udp, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN}, Certificates: []tls.Certificate{selfSigned(t)}},
		&quic.Config{HandshakeIdleTimeout: time.Second})
	for _, size := range []int{1, 30, 100, 1200, 1400} {
		for _, first := range []byte{0x40, 0xc0} { // short and long header
			b := make([]byte, size)
			rand.Read(b)
			b[0] = first | b[0]&0x3f
			tr.WriteTo(b, udp)
		}
	}
	time.Sleep(300 * time.Millisecond)
	return cc.got.Load()
}

// TestDarkListenerSilent: a dark node answers nothing to a scanner — no
// handshake packet, no Retry, no version negotiation, no stateless reset —
// while the same probe draws answers from a node with the dark listener
// off. Paired peers connect through it (every other test). THREATS P1.
func TestDarkListenerSilent(t *testing.T) {
	dark := startNode(t, newIdentity(t), Config{})
	lit := startNode(t, newIdentity(t), Config{DisableDark: true})
	if got := probe(t, lit.Addr().String()); got == 0 {
		t.Fatal("the control (dark listener off) answered nothing: the probe proves nothing")
	}
	if got := probe(t, dark.Addr().String()); got != 0 {
		t.Fatalf("the dark listener answered %d datagrams to a scanner", got)
	}
	if dark.Stats.PacketsDropped.Load() == 0 {
		t.Fatal("the dark listener did not count what it dropped")
	}
}

func TestDarkFirstFlightMAC(t *testing.T) {
	k, other := newDarkKey(newIdentity(t).Public()), newDarkKey(newIdentity(t).Public())
	now := time.Unix(1_800_000_000, 0)
	body := bytes.Repeat([]byte{0xc3}, initialPacket)
	sealed := k.seal(body, now)
	if len(sealed) != len(body)+darkTrailer {
		t.Fatalf("sealed %d bytes, want %d", len(sealed), len(body)+darkTrailer)
	}
	if got, ok := k.open(sealed, now.Add(darkMaxSkew)); !ok || !bytes.Equal(got, body) {
		t.Fatal("a fresh sealed datagram did not open")
	}
	for name, bad := range map[string]func() ([]byte, bool){
		"other key": func() ([]byte, bool) { return other.open(sealed, now) },
		"too old":   func() ([]byte, bool) { return k.open(sealed, now.Add(darkMaxSkew+time.Second)) },
		"too new":   func() ([]byte, bool) { return k.open(sealed, now.Add(-darkMaxSkew-time.Second)) },
		"short":     func() ([]byte, bool) { return k.open(sealed[:darkTrailer], now) },
		"body bit":  func() ([]byte, bool) { s := bytes.Clone(sealed); s[7] ^= 1; return k.open(s, now) },
		"tag bit":   func() ([]byte, bool) { s := bytes.Clone(sealed); s[len(s)-1] ^= 1; return k.open(s, now) },
		"stamp bit": func() ([]byte, bool) { s := bytes.Clone(sealed); s[len(body)+3] ^= 1; return k.open(s, now) },
		"unsealed":  func() ([]byte, bool) { return k.open(body, now) },
	} {
		if _, ok := bad(); ok {
			t.Errorf("%s: opened", name)
		}
	}
}

func TestDarkConnectionIDs(t *testing.T) {
	k, other := newDarkKey(newIdentity(t).Public()), newDarkKey(newIdentity(t).Public())
	g := cidGenerator{k}
	seen := map[string]bool{}
	for range 1000 {
		id, _ := g.GenerateConnectionID()
		b := id.Bytes()
		if len(b) != cidLen || !k.validCID(b) || other.validCID(b) || seen[string(b)] {
			t.Fatalf("connection ID %x: len %d, valid %v, valid under another key %v, repeated %v",
				b, len(b), k.validCID(b), other.validCID(b), seen[string(b)])
		}
		seen[string(b)] = true
		b[len(b)-1] ^= 1
		if k.validCID(b) {
			t.Fatalf("a flipped tag bit still checks: %x", b)
		}
	}
}

// TestDarkGSOFirstFlight: a client's first flight sent as one GSO batch is
// split and each datagram sealed, since the MAC changes each one's size.
func TestDarkGSOFirstFlight(t *testing.T) {
	idPeer := newIdentity(t)
	rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	tx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f := newDarkFilter(newDarkKey(newIdentity(t).Public()), func(string) {})
	f.expect(rx.LocalAddr().(*net.UDPAddr), idPeer.Public())
	c := newDarkConn(tx, f, nil)
	defer c.Close()
	batch := bytes.Repeat([]byte{0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8}, 2*initialPacket/14+1)[:2*initialPacket]
	batch[initialPacket] = 0xc0
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgSpace(0):], initialPacket)
	if n, _, err := c.WriteMsgUDP(batch, oob, rx.LocalAddr().(*net.UDPAddr)); err != nil || n != len(batch) {
		t.Fatalf("write: %d, %v", n, err)
	}
	k := newDarkKey(idPeer.Public())
	buf := make([]byte, 2048)
	for i := range 2 {
		rx.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := rx.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		body, ok := k.open(buf[:n], time.Now())
		if !ok || len(body) != initialPacket {
			t.Fatalf("datagram %d: %d bytes, opens %v", i, n, ok)
		}
	}
}

// open checks a tagged datagram sent to k and returns its body.
func (k *darkKey) open(b []byte, now time.Time) ([]byte, bool) {
	return openFirstFlight(k.newMAC(), new([sha256.Size]byte), b, now)
}

// TestDarkPreviousReleasePeer: the filter's side of
// TestInteropPreviousRelease, without the old binary. A 12-byte connection
// ID made as the previous release makes them counts as the peer's (no
// trailer after its first answer), and a long header that such a peer
// sealed to our young ID during its handshake passes without the trailer.
func TestDarkPreviousReleasePeer(t *testing.T) {
	idPeer := newIdentity(t)
	peer := newDarkKey(idPeer.Public())
	f := newDarkFilter(newDarkKey(newIdentity(t).Public()), func(string) {})
	f.dark.Store(true)
	server := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3), Port: 4433}
	f.expect(server, idPeer.Public())
	now := time.Now()

	var legacy [legacyCIDLen]byte // the previous release: r || AES(K_cid, r || 0^10)[:6]
	rand.Read(legacy[:legacyCIDNonce])
	var block [16]byte
	copy(block[:], legacy[:legacyCIDNonce])
	peer.cid.Encrypt(block[:], block[:])
	copy(legacy[legacyCIDNonce:], block[:6])
	handshake := append([]byte{0xe0, 0, 0, 0, 1, legacyCIDLen}, legacy[:]...)
	handshake = append(handshake, make([]byte, 100)...)
	if out := f.outbound(handshake, server, now); len(out) != len(handshake) {
		t.Errorf("a long header to the peer's 12-byte ID got a %d-byte trailer", len(out)-len(handshake))
	}
	legacy[0] ^= 1 // no longer the peer's: a first flight that happens to have a 12-byte ID
	forged := append([]byte{0xc0, 0, 0, 0, 1, legacyCIDLen}, legacy[:]...)
	forged = append(forged, make([]byte, 100)...)
	if out := f.outbound(forged, server, now); len(out) != len(forged)+darkTrailer {
		t.Errorf("a long header to a 12-byte ID the peer did not issue went unsealed")
	}

	client := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 4), Port: 5555}
	first := f.own.seal(append([]byte{0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8}, make([]byte, 1238)...), now)
	if n, ok := f.inbound(first, client, now); !ok || n != len(first)-darkTrailer {
		t.Fatalf("the old client's first flight: %d bytes, passed %v", n, ok)
	}
	id, _ := cidGenerator{f.own}.GenerateConnectionID()
	body := append([]byte{0xe0, 0, 0, 0, 1, cidLen}, id.Bytes()...)
	body = append(body, make([]byte, 200)...)
	sealed := f.own.seal(body, now) // what the old client sends: it cannot tell the ID is ours
	if n, ok := f.inbound(sealed, client, now); !ok || n != len(body) {
		t.Errorf("the old client's sealed handshake datagram to our ID: %d of %d bytes, passed %v", n, len(body), ok)
	}
	if n, ok := f.inbound(body, client, now); !ok || n != len(body) {
		t.Errorf("an unsealed handshake datagram to our ID: %d of %d bytes, passed %v", n, len(body), ok)
	}
}

// TestDarkPassedCache: the read loop's cache of live tunnels' recent
// packets passes an ID only from the address it checked out from, and for
// at most rebuildEvery after the check: once the tunnel ended, a datagram
// too small to pass on its ID alone is dropped again.
func TestDarkPassedCache(t *testing.T) {
	f := newDarkFilter(newDarkKey(newIdentity(t).Public()), func(string) {})
	f.dark.Store(true)
	peer := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 4433}
	other := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3), Port: 4433}
	tun := fixedRemote{peer}
	f.tunnelAt(tun, 1)
	now := time.Now()
	var pkts [3][]byte // three live IDs, alternating, in sets of their own
	sets := map[*[2]passedEntry]bool{}
	for i := range pkts {
		id, _ := cidGenerator{f.own}.GenerateConnectionID()
		for sets[f.passedSet(id.Bytes())] { // three in one 2-way set would evict one (1 in 64)
			id, _ = cidGenerator{f.own}.GenerateConnectionID()
		}
		sets[f.passedSet(id.Bytes())] = true
		pkts[i] = append([]byte{0x40}, id.Bytes()...)
		pkts[i] = append(pkts[i], make([]byte, 20)...) // under darkMinUnproven
	}
	for round := range 2 {
		for i, p := range pkts {
			if _, ok := f.inbound(p, peer, now); !ok {
				t.Fatalf("round %d: the live tunnel's packet %d was dropped", round, i)
			}
			if _, ok := f.inbound(p, other, now); ok {
				t.Fatalf("round %d: packet %d passed from an address that is no tunnel's", round, i)
			}
		}
	}
	f.tunnelAt(tun, -1)
	if _, ok := f.inbound(pkts[0], &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2).To4(), Port: 4433}, now.Add(rebuildEvery/2)); !ok {
		t.Error("a checked ID did not pass from the same address (4-byte form) within rebuildEvery")
	}
	for i, p := range pkts {
		if _, ok := f.inbound(p, peer, now.Add(rebuildEvery)); ok {
			t.Errorf("packet %d (%d bytes) passed rebuildEvery after its check, the tunnel gone", i, len(p))
		}
	}
}
