package fuzz

import (
	"strings"
	"testing"

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
