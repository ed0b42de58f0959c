package fuzz

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/tunnel"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// FuzzStreamRequest: the first record of a peer's stream names a service;
// any bytes parse to a valid name or an error, and a parsed request
// re-encodes to the same bytes (THREATS P8).
func FuzzStreamRequest(f *testing.F) {
	f.Add(tunnel.AppendRequest(nil, "payments"))
	f.Add([]byte{1, 1, 0})
	f.Add([]byte{1, 1, 64})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, err := tunnel.ParseRequest(b)
		if err != nil {
			return
		}
		if !tunnel.ValidServiceName(name) || string(tunnel.AppendRequest(nil, name)) != string(b) {
			t.Fatalf("request %x parsed to %q, which does not re-encode", b, name)
		}
	})
}

// FuzzStreamResponse: the exporter's answer parses to a known status or an
// error.
func FuzzStreamResponse(f *testing.F) {
	f.Add(tunnel.AppendResponse(nil, tunnel.StatusAccepted))
	f.Add([]byte{1, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := tunnel.ParseResponse(b)
		if err == nil && string(tunnel.AppendResponse(nil, st)) != string(b) {
			t.Fatalf("response %x does not re-encode", b)
		}
	})
}

// FuzzAnnouncement: a peer's identity announcement (codec/FORMAT.md
// section 12); any bytes parse to an announcement or an error, a parsed one
// re-encodes to the same bytes, and verifying it never panics (THREATS P8).
func FuzzAnnouncement(f *testing.F) {
	old, _ := identity.Generate()
	next, _ := identity.Generate()
	a := tunnel.NewAnnouncement(old, next, 1, time.Unix(1800000000, 0))
	f.Add(a.Append(nil))
	f.Add([]byte{1})
	f.Add(make([]byte, 273))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := tunnel.ParseAnnouncement(b)
		if err != nil {
			return
		}
		if !bytes.Equal(a.Append(nil), b) {
			t.Fatalf("announcement %x does not re-encode", b)
		}
		_ = a.Verify()
	})
}

// FuzzPublicKey: pinned keys from configuration files, both forms; a key
// that parses round-trips through the printed dyad2: form and the older
// dyad1: form.
func FuzzPublicKey(f *testing.F) {
	id, _ := identity.Generate()
	f.Add(id.Public().String())
	f.Add(id.Public().LegacyString())
	f.Add("dyad1:")
	f.Add("dyad1:AAAA")
	f.Add("dyad2:AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := identity.ParsePublicKey(s)
		if err != nil {
			return
		}
		for _, form := range []string{k.String(), k.LegacyString()} {
			back, err := identity.ParsePublicKey(form)
			if err != nil || !back.Equal(k) {
				t.Fatalf("%q parsed but does not round-trip through %q: %v", s, form, err)
			}
		}
	})
}

// FuzzIdentityFile: key files from disk; errors never quote the input
// (inputs shorter than the fixed error texts may match them by chance).
func FuzzIdentityFile(f *testing.F) {
	f.Add([]byte("-----BEGIN DYAD IDENTITY KEY-----\nAQ==\n-----END DYAD IDENTITY KEY-----\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := identity.Parse(b); err != nil && len(b) > 64 && strings.Contains(err.Error(), string(b)) {
			t.Fatalf("error quotes the key file: %v", err)
		}
	})
}

// FuzzConfig: any YAML gives a validated configuration or an error that
// names the file, never a panic; a valid configuration re-encodes to YAML
// that loads to the same configuration (what `dyad check` accepts, an
// operator's tooling can rewrite without changing its meaning).
func FuzzConfig(f *testing.F) {
	id, _ := identity.Generate()
	f.Add("site: a\nidentity: k\nlisten: 127.0.0.1:1\npeers:\n  - name: b\n    public_key: " + id.Public().String() +
		"\nservices:\n  - name: s\n    upstream: 127.0.0.1:2\n    allow: [b]\nforwards:\n  - {listen: 127.0.0.1:3, peer: b, service: s}\n")
	f.Add("site: a\nidentity: k\nlisten: 127.0.0.1:1\nstate_dir: st\ncontrol: {socket: c.sock, group: dyad}\n")
	f.Add("listen: [")
	f.Add("tunnel: {keepalive: -5s}")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := daemon.ParseConfig("fuzz.yaml", []byte(s))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := c.Tunnel.Validate(); err != nil {
			t.Fatalf("accepted configuration fails tunnel validation: %v", err)
		}
		out, err := yaml.Marshal(c.File)
		if err != nil {
			t.Fatalf("valid configuration does not re-encode: %v", err)
		}
		again, err := daemon.ParseConfig("fuzz.yaml", out)
		if err != nil {
			t.Fatalf("re-encoded configuration does not load: %v\n%s", err, out)
		}
		again.SHA256 = c.SHA256
		nilEmpty(reflect.ValueOf(c))
		nilEmpty(reflect.ValueOf(again))
		if !reflect.DeepEqual(c, again) {
			t.Fatalf("re-encoded configuration loads differently:\n%s", out)
		}
	})
}

// nilEmpty sets every empty slice and map reachable from v through
// exported fields to nil: YAML writes both as nothing, and they mean the
// same.
func nilEmpty(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			nilEmpty(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				nilEmpty(v.Field(i))
			}
		}
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 && v.CanSet() {
			v.SetZero()
		}
		if v.Kind() == reflect.Slice {
			for i := range v.Len() {
				nilEmpty(v.Index(i))
			}
		}
	}
}

// darkKey is a fixed listener key for FuzzDarkInbound, so the corpus
// replays the same decisions.
var darkKey = func() identity.PublicKey {
	var k identity.PublicKey
	for i := range k.Sign {
		k.Sign[i], k.DH[i] = byte(i), byte(255-i)
	}
	return k
}()

// darkCID is K_cid of darkKey, as codec/FORMAT.md section 9 derives it.
var darkCID = func() cipher.Block {
	k, err := hkdf.Key(sha256.New, append(darkKey.Sign[:], darkKey.DH[:]...), nil, "dyad/1 dark listener connection id", 16)
	if err != nil {
		panic(err)
	}
	b, err := aes.NewCipher(k)
	if err != nil {
		panic(err)
	}
	return b
}()

// darkID returns a connection ID issued under darkKey, as FORMAT.md section
// 9 lays it out: 16 bytes (nonce of 10: incarnation, issue time, random),
// or the previous release's 12 (nonce of 6).
func darkID(nonce []byte) []byte {
	var block [aes.BlockSize]byte
	copy(block[:], nonce)
	darkCID.Encrypt(block[:], block[:])
	return append(bytes.Clone(nonce), block[:6]...)
}

// validDarkID reports whether id is a 16-byte connection ID valid under
// darkKey (FORMAT.md section 9: any incarnation, any issue time).
func validDarkID(id []byte) bool {
	return len(id) == 16 && bytes.Equal(darkID(id[:10]), id)
}

// FuzzDarkInbound: the dark listener decides any datagram without a panic
// and never passes more bytes than it got. At a listener with no tunnel
// and no handshake (CheckDatagram's), a short header of fewer than 64
// bytes never passes (its answer could exceed it), nor does a long header
// to one of the listener's own IDs (FORMAT.md section 9, rules 2 and 3). A
// first flight sealed for the listener passes whole unless it is addressed
// to the listener's own ID; the same flight with any one bit flipped (but
// the header-form bit) is dropped (THREATS P1, P8, P9).
func FuzzDarkInbound(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 4433}
	f.Add([]byte{0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8}, uint16(3), int16(0))
	f.Add([]byte{0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, uint16(0), int16(-200))
	f.Add(tunnel.SealFirstFlight(darkKey, []byte{0xc0, 0, 0, 0, 1, 0}, now), uint16(9), int16(5))
	// Connection IDs valid under the listener's key: an earlier
	// incarnation's, issued 30 s before now, in short headers of 63 and 64
	// bytes and in a Handshake packet; the previous release's 12-byte ID in
	// a Handshake packet (a first flight to this listener).
	nonce := []byte{0xab, 0xcd, 0x6b, 0x49, 0xd1, 0xe2, 1, 2, 3, 4}
	id := darkID(nonce)
	for _, size := range []int{63, 64} {
		short := append([]byte{0x40}, id...)
		f.Add(append(short, make([]byte, size-len(short))...), uint16(0), int16(0))
	}
	f.Add(append(append([]byte{0xe0, 0, 0, 0, 1, 16}, id...), make([]byte, 60)...), uint16(50), int16(0))
	f.Add(append(append([]byte{0xe0, 0, 0, 0, 1, 12}, darkID(nonce[:6])...), make([]byte, 60)...), uint16(50), int16(0))
	f.Fuzz(func(t *testing.T, b []byte, flip uint16, skew int16) {
		at := now.Add(time.Duration(skew) * time.Second)
		n, ok := tunnel.CheckDatagram(darkKey, b, from, at)
		if n > len(b) || !ok && n != 0 {
			t.Fatalf("%d-byte datagram: passes %d bytes, ok %v", len(b), n, ok)
		}
		if len(b) == 0 {
			return
		}
		if b[0]&0x80 == 0 {
			if ok && len(b) < 64 {
				t.Fatalf("%d-byte short header passed at a listener with no tunnel", len(b))
			}
			return
		}
		ownID := len(b) >= 22 && b[5] == 16 && validDarkID(b[6:22])
		if ok && ownID {
			t.Fatalf("a long header to the listener's own ID passed with no handshake in progress")
		}
		sealed := tunnel.SealFirstFlight(darkKey, b, now)
		n, ok = tunnel.CheckDatagram(darkKey, sealed, from, at)
		fresh := skew >= -120 && skew <= 120
		if fresh && !ownID && (!ok || n != len(b)) {
			t.Fatalf("sealed %d-byte first flight: passes %d, ok %v", len(b), n, ok)
		}
		if ownID && ok {
			t.Fatalf("sealed %d-byte datagram to the listener's own ID passed with no handshake in progress", len(b))
		}
		bit := int(flip) % (8 * len(sealed))
		if bit == 7 { // the header-form bit: it would be a short header, judged by its connection ID
			return
		}
		sealed[bit/8] ^= 0x80 >> (bit % 8)
		if n, ok := tunnel.CheckDatagram(darkKey, sealed, from, at); ok && n == len(b) {
			t.Fatalf("first flight with bit %d flipped passed", bit)
		}
	})
}

// FuzzPeerCertificate: the certificate a peer presents in the handshake,
// before anything is known of it. Any bytes give an Ed25519 key or an
// error; a real certificate with one byte changed gives an error or a
// 32-byte key (which the pin check then compares), never a panic
// (THREATS P1, P8).
func FuzzPeerCertificate(f *testing.F) {
	id, err := identity.Generate()
	if err != nil {
		f.Fatal(err)
	}
	cert, err := id.Certificate()
	if err != nil {
		f.Fatal(err)
	}
	der, pub := cert.Certificate[0], id.Public()
	if key, err := identity.CertificateKey(der); err != nil || !bytes.Equal(key, pub.Sign[:]) {
		f.Fatalf("own certificate: key %x, %v", key, err)
	}
	f.Add(der, uint16(0), byte(0))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00}, uint16(100), byte(0x80))
	f.Fuzz(func(t *testing.T, b []byte, pos uint16, xor byte) {
		if key, err := identity.CertificateKey(b); err == nil && len(key) != ed25519.PublicKeySize {
			t.Fatalf("%d-byte key from arbitrary bytes", len(key))
		}
		edited := bytes.Clone(der)
		edited[int(pos)%len(edited)] ^= xor
		if key, err := identity.CertificateKey(edited); err == nil && len(key) != ed25519.PublicKeySize {
			t.Fatalf("%d-byte key from an edited certificate", len(key))
		}
	})
}

// FuzzPairingSecret: the pairing secret is X25519 of our key and the
// peer's configured key. Any 32 bytes as the peer's X25519 key give an
// error (low-order points) or a non-zero secret, and two real identities
// agree on theirs (THREATS P3).
func FuzzPairingSecret(f *testing.F) {
	a, _ := identity.Generate()
	b, _ := identity.Generate()
	ab, err := a.PairingSecret(b.Public())
	if err != nil {
		f.Fatal(err)
	}
	if ba, err := b.PairingSecret(a.Public()); err != nil || !bytes.Equal(ab, ba) {
		f.Fatal("two identities derive different pairing secrets")
	}
	f.Add(make([]byte, 32))
	f.Add(append([]byte{1}, make([]byte, 31)...))
	pub := b.Public()
	f.Add(pub.DH[:])
	f.Fuzz(func(t *testing.T, dh []byte) {
		var peer identity.PublicKey
		copy(peer.DH[:], dh)
		s, err := a.PairingSecret(peer)
		if err == nil && (len(s) != 32 || bytes.Equal(s, make([]byte, 32))) {
			t.Fatalf("pairing secret %x for peer key %x", s, dh)
		}
	})
}
