package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

func testKey(t *testing.T) string {
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return id.Public().String()
}

const goodConfig = `site: site-a
identity: keys/identity.key
listen: 127.0.0.1:7000
admin: 127.0.0.1:7001
log: {level: info, format: json}
tunnel:
  keepalive: 5s
  idle_timeout: 30s
peers:
  - name: site-b
    public_key: KEY
    endpoint: 127.0.0.1:7100
services:
  - name: ledger
    upstream: 127.0.0.1:8080
    allow: [site-b]
forwards:
  - listen: 127.0.0.1:9000
    peer: site-b
    service: payments
`

func TestParseGoodConfig(t *testing.T) {
	c, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(strings.Replace(goodConfig, "KEY", testKey(t), 1)))
	if err != nil {
		t.Fatal(err)
	}
	if c.IdentityPath != "/etc/dyad/keys/identity.key" {
		t.Errorf("identity path %q not relative to the config file", c.IdentityPath)
	}
	if len(c.Tunnel.Peers) != 1 || c.Tunnel.Peers[0].Endpoint != "127.0.0.1:7100" || len(c.File.Forwards) != 1 {
		t.Errorf("decoded %+v", c.Tunnel)
	}
	if c.ShutdownTimeout.Seconds() != 30 {
		t.Errorf("shutdown timeout default %v", c.ShutdownTimeout)
	}
}

// TestConfigErrorsNameLineAndField: every bad value is an error that names
// the file, the line and the field.
func TestConfigErrorsNameLineAndField(t *testing.T) {
	key := testKey(t)
	good := strings.Replace(goodConfig, "KEY", key, 1)
	// Keys sharing one half with key: a second peer may hold neither.
	pk, _ := identity.ParsePublicKey(key)
	other, _ := identity.ParsePublicKey(testKey(t))
	sameSign := identity.PublicKey{Sign: pk.Sign, DH: other.DH}.String()
	sameDH := identity.PublicKey{Sign: other.Sign, DH: pk.DH}.String()
	cases := []struct {
		name, from, to, want string
	}{
		{"unknown key", "    endpoint: 127.0.0.1:7100", "    endpont: 127.0.0.1:7100", `dyad.yaml:12: peers[0].endpont: unknown key "endpont"; did you mean endpoint?`},
		{"bad public key", "public_key: " + key, "public_key: dyad1:AAAA", "dyad.yaml:11: peers[0].public_key: public key is 3 bytes"},
		{"bad endpoint", "endpoint: 127.0.0.1:7100", "endpoint: nowhere", "dyad.yaml:12: peers[0].endpoint:"},
		{"bad duration", "keepalive: 5s", "keepalive: soon", "dyad.yaml:7: tunnel.keepalive: \"soon\" is not a duration"},
		{"allow unknown peer", "allow: [site-b]", "allow: [site-c]", "dyad.yaml:16: services[0].allow[0]: \"site-c\" is not a configured peer"},
		{"bad upstream", "upstream: 127.0.0.1:8080", "upstream: 127.0.0.1", "dyad.yaml:15: services[0].upstream:"},
		{"forward to unknown peer", "    peer: site-b", "    peer: site-x", "dyad.yaml:19: forwards[0].peer:"},
		{"bad service name", "service: payments", "service: Pay Ments", "dyad.yaml:20: forwards[0].service:"},
		{"missing listen", "listen: 127.0.0.1:7000\n", "", "dyad.yaml:1: listen: required"},
		{"bad log level", "level: info", "level: loud", "dyad.yaml:5: log.level:"},
		{"bad suite", "  keepalive: 5s", "  suite: rc4\n  keepalive: 5s", "dyad.yaml:7: tunnel.suite: codec: unknown suite"},
		{"keepalive not below idle", "keepalive: 5s", "keepalive: 40s", "tunnel.keepalive: keepalive 40s must be shorter"},
		{"duplicate peer", "services:", "  - name: site-b\n    public_key: " + key + "\nservices:", "peers[1].name: peer \"site-b\" is listed twice"},
		{"shared Ed25519 key", "services:", "  - name: site-c\n    public_key: " + sameSign + "\nservices:", "dyad.yaml:14: peers[1].public_key: same Ed25519 key as peer \"site-b\""},
		{"shared X25519 key", "services:", "  - name: site-c\n    public_key: " + sameDH + "\nservices:", "dyad.yaml:14: peers[1].public_key: same X25519 key as peer \"site-b\""},
		{"wrong type", "listen: 127.0.0.1:7000", "listen: [1, 2]", "dyad.yaml:3: cannot unmarshal"},
		{"bad country", "    endpoint: 127.0.0.1:7100", "    endpoint: 127.0.0.1:7100\n    country: Germany", "dyad.yaml:13: peers[0].country: \"Germany\" is not an ISO 3166-1 alpha-2 code"},
	}
	for _, c := range cases {
		bad := strings.Replace(good, c.from, c.to, 1)
		if bad == good {
			t.Fatalf("%s: replacement did not apply", c.name)
		}
		_, err := ParseConfig("dyad.yaml", []byte(bad))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v\nwant it to contain %q", c.name, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), key) || strings.Contains(err.Error(), sameSign) || strings.Contains(err.Error(), sameDH)) {
			t.Errorf("%s: error repeats the public key", c.name)
		}
	}
	if _, err := ParseConfig("empty.yaml", nil); err == nil {
		t.Error("empty configuration accepted")
	}
}

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	var out strings.Builder
	if err := Keygen(filepath.Join(dir, "keys"), &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "public_key: dyad2:") || !strings.Contains(out.String(), "fingerprint: SHA256:") {
		t.Fatalf("keygen output:\n%s", out.String())
	}
	path := filepath.Join(dir, "dyad.yaml")
	os.WriteFile(path, []byte(strings.Replace(goodConfig, "KEY", testKey(t), 1)), 0o644)
	out.Reset()
	if err := Check(path, &out); err != nil || !strings.Contains(out.String(), "ok: site site-a") {
		t.Fatalf("check: %v\n%s", err, out.String())
	}
	os.Chmod(filepath.Join(dir, "keys", "identity.key"), 0o640)
	if err := Check(path, &out); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("check accepted a group-readable key: %v", err)
	}
}

func TestAuditConfig(t *testing.T) {
	base := strings.Replace(goodConfig, "KEY", testKey(t), 1)
	parse := func(extra string) (*Config, error) {
		return ParseConfig("/etc/dyad/dyad.yaml", []byte(base+extra))
	}
	// Defaults: the journal beside the file, no export.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	c, err := parse("")
	if err != nil || c.Audit.Journal.Dir != "/etc/dyad/audit" || c.Audit.OTLP != nil || !c.Audit.Console {
		t.Fatalf("defaults: %+v %v", c.Audit, err)
	}
	// ${ENV} in headers, relative CA path.
	t.Setenv("DYAD_TEST_TOKEN", "tok")
	c, err = parse(`audit:
  journal: {dir: j, fsync: always, max_file_mb: 8, on_failure: refuse, on_broken: continue}
  otlp:
    endpoint: https://collector:4317
    protocol: grpc
    headers: {Authorization: "Bearer ${DYAD_TEST_TOKEN}"}
    queue_size: 10
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Audit.OTLP.Headers["Authorization"] != "Bearer tok" || c.Audit.Journal.Dir != "/etc/dyad/j" || c.Audit.Journal.MaxFileBytes != 8<<20 || c.Audit.Export.QueueSize != 10 ||
		!c.Audit.RefuseStreams || c.Audit.Journal.OnBroken != journal.BrokenContinue {
		t.Fatalf("audit config: %+v", c.Audit)
	}
	// The standard environment variable alone turns export on.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://env-collector:4318")
	c, err = parse("")
	if err != nil || c.Audit.OTLP == nil || c.Audit.Export.Endpoint != "https://env-collector:4318" || c.Audit.Export.Protocol != "http/protobuf" {
		t.Fatalf("OTEL_EXPORTER_OTLP_ENDPOINT: %+v %v", c.Audit, err)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	for extra, want := range map[string]string{
		"audit:\n  otlp: {endpoint: 'https://c:4317', headers: {X: '${DYAD_NOT_SET_ANYWHERE}'}}\n": "DYAD_NOT_SET_ANYWHERE is not set",
		"audit:\n  otlp: {endpoint: 'http://c:4317'}\n":                                            "insecure: true",
		"audit:\n  journal: {fsync: sometimes}\n":                                                  "fsync",
		"audit:\n  journal: {dirr: x}\n":                                                           "dirr",
		"audit:\n  journal: {on_failure: drop}\n":                                                  "on_failure",
		"audit:\n  journal: {on_broken: ignore}\n":                                                 "on_broken",
	} {
		_, err := parse(extra)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error about %q", extra, err, want)
		}
	}
	if _, err := parse("audit:\n  otlp: {endpoint: 'https://c:4317', headers: {X: '${DYAD_TEST_TOKEN}x'}}\n"); err != nil {
		t.Error(err)
	}
}

// TestConnectionsConfig: tunnel.connections and peers[].connections reach
// the tunnel; a count outside 1..16 is refused by field; dyad check warns
// when a peer's count exceeds this daemon's own max_connections_per_peer
// (partners usually share the defaults, so the peer would refuse the rest).
func TestConnectionsConfig(t *testing.T) {
	withConns := func(tunnelConns, peerConns string) string {
		s := strings.Replace(goodConfig, "KEY", testKey(t), 1)
		s = strings.Replace(s, "  idle_timeout: 30s\n", "  idle_timeout: 30s\n  connections: "+tunnelConns+"\n", 1)
		return strings.Replace(s, "    endpoint: 127.0.0.1:7100\n", "    endpoint: 127.0.0.1:7100\n    connections: "+peerConns+"\n", 1)
	}
	c, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(withConns("3", "12")))
	if err != nil {
		t.Fatal(err)
	}
	if c.Tunnel.Connections != 3 || c.Tunnel.Peers[0].Connections != 12 {
		t.Fatalf("connections %d, peer's %d", c.Tunnel.Connections, c.Tunnel.Peers[0].Connections)
	}
	w := ConnectionWarnings(c.Tunnel)
	if len(w) != 1 || !strings.Contains(w[0], `peer "site-b": connections 12 exceeds tunnel.max_connections_per_peer 8`) {
		t.Fatalf("warnings %q", w)
	}
	c.Tunnel.Peers[0].Connections = 0
	if w := ConnectionWarnings(c.Tunnel); len(w) != 0 {
		t.Fatalf("warnings at 3 connections: %q", w)
	}
	for _, bad := range [][2]string{{"17", "1"}, {"1", "-1"}, {"1.5", "1"}} {
		_, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(withConns(bad[0], bad[1])))
		if err == nil || !strings.Contains(err.Error(), "connections") {
			t.Fatalf("connections %v accepted or not named: %v", bad, err)
		}
	}
}

// TestTransportConfig: tunnel.tcp_listen takes true or an address;
// peers[].transport, fallback_after and proxy are checked and named at
// their line, and a proxy URL (which might carry credentials) is never
// repeated in an error.
func TestTransportConfig(t *testing.T) {
	with := func(tunnel, peer string) string {
		s := strings.Replace(goodConfig, "KEY", testKey(t), 1)
		s = strings.Replace(s, "  idle_timeout: 30s\n", "  idle_timeout: 30s\n"+tunnel, 1)
		return strings.Replace(s, "    endpoint: 127.0.0.1:7100\n", "    endpoint: 127.0.0.1:7100\n"+peer, 1)
	}
	c, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(with("  tcp_listen: true\n",
		"    transport: auto\n    fallback_after: 1s\n    proxy: http://proxy.bank-a.internal:3128\n")))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.File.Tunnel.TCPListen.address(c.File.Listen); got != "127.0.0.1:7000" {
		t.Fatalf("tcp_listen: true listens on %q", got)
	}
	p := c.Tunnel.Peers[0]
	if p.Transport != "auto" || p.FallbackAfter.String() != "1s" || p.Proxy != "http://proxy.bank-a.internal:3128" {
		t.Fatalf("peer %+v", p)
	}
	c, err = ParseConfig("/etc/dyad/dyad.yaml", []byte(with("  tcp_listen: 0.0.0.0:443\n", "")))
	if err != nil || c.File.Tunnel.TCPListen.address(c.File.Listen) != "0.0.0.0:443" {
		t.Fatalf("tcp_listen address: %v", err)
	}
	c, err = ParseConfig("/etc/dyad/dyad.yaml", []byte(with("", "")))
	if err != nil || c.File.Tunnel.TCPListen.address(c.File.Listen) != "" {
		t.Fatalf("tcp_listen is not off by default: %v", err)
	}
	for _, bad := range []struct{ tunnel, peer, want string }{
		{"  tcp_listen: nowhere\n", "", "tunnel.tcp_listen:"},
		{"  tcp_listen: [1]\n", "", "not true, false or host:port"},
		{"", "    transport: udp\n", "peers[0].transport: \"udp\" is not quic, tcp or auto"},
		{"", "    fallback_after: soon\n", "fallback_after"},
		{"", "    proxy: http://user:secret@proxy:3128\n", "peers[0].proxy: want http://host:port"},
		{"", "    proxy: socks5://proxy:1080\n", "peers[0].proxy:"},
		{"", "    transport: quic\n    proxy: http://proxy:3128\n", "peers[0].proxy: needs transport tcp or auto"},
	} {
		_, err := ParseConfig("/etc/dyad/dyad.yaml", []byte(with(bad.tunnel, bad.peer)))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q %q: err %v, want %q", bad.tunnel, bad.peer, err, bad.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("error repeats the proxy's credentials: %v", err)
		}
	}
}
