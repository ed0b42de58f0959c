package fuzz

import (
	"net"
	"strings"
	"testing"
	"time"

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

// FuzzPublicKey: pinned keys from configuration files.
func FuzzPublicKey(f *testing.F) {
	id, _ := identity.Generate()
	f.Add(id.Public().String())
	f.Add("dyad1:")
	f.Add("dyad1:AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := identity.ParsePublicKey(s)
		if err != nil {
			return
		}
		back, err := identity.ParsePublicKey(k.String())
		if err != nil || !back.Equal(k) {
			t.Fatalf("%q parsed but does not round-trip: %v", s, err)
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
// names the file, never a panic.
func FuzzConfig(f *testing.F) {
	id, _ := identity.Generate()
	f.Add("site: a\nidentity: k\nlisten: 127.0.0.1:1\npeers:\n  - name: b\n    public_key: " + id.Public().String() +
		"\nservices:\n  - name: s\n    upstream: 127.0.0.1:2\n    allow: [b]\nforwards:\n  - {listen: 127.0.0.1:3, peer: b, service: s}\n")
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
	})
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

// FuzzDarkInbound: the dark listener decides any datagram without a panic
// and never passes more bytes than it got; a first flight sealed for the
// listener passes whole, and the same flight with any one bit flipped (but
// the header-form bit) is dropped (THREATS P1, P8).
func FuzzDarkInbound(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 4433}
	f.Add([]byte{0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8}, uint16(3), int16(0))
	f.Add([]byte{0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, uint16(0), int16(-200))
	f.Add(tunnel.SealFirstFlight(darkKey, []byte{0xc0, 0, 0, 0, 1, 0}, now), uint16(9), int16(5))
	f.Fuzz(func(t *testing.T, b []byte, flip uint16, skew int16) {
		at := now.Add(time.Duration(skew) * time.Second)
		if n, ok := tunnel.CheckDatagram(darkKey, b, from, at); n > len(b) || !ok && n != 0 {
			t.Fatalf("%d-byte datagram: passes %d bytes, ok %v", len(b), n, ok)
		}
		if len(b) == 0 || b[0]&0x80 == 0 {
			return
		}
		sealed := tunnel.SealFirstFlight(darkKey, b, now)
		n, ok := tunnel.CheckDatagram(darkKey, sealed, from, at)
		fresh := skew >= -120 && skew <= 120
		if fresh && (!ok || n != len(b)) {
			t.Fatalf("sealed %d-byte first flight: passes %d, ok %v", len(b), n, ok)
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
