package daemon_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue makes a leaf for dnsName (and 127.0.0.1) with the given usage and
// returns it with its PEM files' contents.
func (ca *testCA) issue(t *testing.T, dnsName string, usage x509.ExtKeyUsage) (tls.Certificate, []byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: dnsName},
		DNSNames: []string{dnsName}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c, certPEM, keyPEM
}

// tlsEchoServer is an HTTPS-like upstream: it echoes what it reads until
// close_notify, then closes its side. With clients set it demands a client
// certificate signed by that CA. accepted counts finished handshakes.
func tlsEchoServer(t *testing.T, cert tls.Certificate, clients *x509.CertPool) (string, *atomic.Int64) {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clients != nil {
		cfg.ClientCAs, cfg.ClientAuth = clients, tls.RequireAndVerifyClientCert
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				tc.SetDeadline(time.Now().Add(20 * time.Second))
				if tc.Handshake() != nil {
					return
				}
				accepted.Add(1)
				if _, err := io.Copy(tc, tc); err == nil {
					tc.CloseWrite()
				}
			}()
		}
	}()
	return ln.Addr().String(), &accepted
}

func writeFile(t *testing.T, dir, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUpstreamTLS: B exports HTTPS upstreams with upstream_tls; data
// crosses intact to a server-authenticated upstream and to one that
// demands a client certificate (mTLS); an upstream whose certificate the
// configured CA did not sign, or that names another host, is refused,
// counted and audited (error.type tls_verify), and never gets a byte.
func TestUpstreamTLS(t *testing.T) {
	ca, other, clientCA := newTestCA(t, "upstream CA"), newTestCA(t, "someone else"), newTestCA(t, "client CA")
	serverCert, _, _ := ca.issue(t, "upstream.test", x509.ExtKeyUsageServerAuth)
	_, clientPEM, clientKey := clientCA.issue(t, "site-b", x509.ExtKeyUsageClientAuth)
	clients := x509.NewCertPool()
	clients.AddCert(clientCA.cert)
	https, _ := tlsEchoServer(t, serverCert, nil)
	mtls, _ := tlsEchoServer(t, serverCert, clients)
	wrong, wrongAccepted := tlsEchoServer(t, serverCert, nil)

	a, b, _ := twoSites(t, https)
	writeFile(t, b.Dir, "ca.pem", ca.pem, 0o644)
	writeFile(t, b.Dir, "other-ca.pem", other.pem, 0o644)
	writeFile(t, b.Dir, "client.pem", clientPEM, 0o644)
	writeFile(t, b.Dir, "client.key", clientKey, 0o600)
	verified := &daemon.UpstreamTLSFile{ServerName: "upstream.test", CAFile: "ca.pem"}
	services := map[string]daemon.ServiceFile{
		"https":    {Upstream: https, UpstreamTLS: verified},
		"by-ip":    {Upstream: mtls, UpstreamTLS: &daemon.UpstreamTLSFile{CAFile: "ca.pem", CertFile: "client.pem", KeyFile: "client.key"}}, // server_name: 127.0.0.1, from upstream
		"wrong-ca": {Upstream: wrong, UpstreamTLS: &daemon.UpstreamTLSFile{ServerName: "upstream.test", CAFile: "other-ca.pem"}},
		"wrong-sn": {Upstream: wrong, UpstreamTLS: &daemon.UpstreamTLSFile{ServerName: "payments.test", CAFile: "ca.pem"}},
	}
	local := map[string]string{}
	for _, name := range []string{"https", "by-ip", "wrong-ca", "wrong-sn"} {
		s := services[name]
		s.Name, s.Allow = name, []string{"site-a"}
		b.Config.Services = append(b.Config.Services, s)
		local[name] = freeTCP(t)
		a.Config.Forwards = append(a.Config.Forwards, daemon.ForwardConfig{Listen: local[name], Peer: "site-b", Service: name})
	}
	reload(t, b)
	reload(t, a)
	if out, code := runDyad(t, "check", "--config", b.ConfigPath()); code != 0 || !strings.Contains(out, "service https: upstream "+https+" over TLS, verified as upstream.test") {
		t.Errorf("dyad check: exit %d\n%s", code, out)
	}

	for _, name := range []string{"https", "by-ip"} {
		if err := echoRoundTrip(local[name], 4<<20, 7); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	refusedPromptly(t, local["wrong-ca"], 2*time.Second)
	refusedPromptly(t, local["wrong-sn"], 2*time.Second)
	if n := wrongAccepted.Load(); n != 0 {
		t.Errorf("the upstream with an unverified certificate finished %d handshakes", n)
	}
	st, err := b.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Counters["upstream_tls_failed"] != 2 || st.Counters["streams_refused.upstream_unreachable"] != 2 {
		t.Errorf("TLS failures not counted exactly: %v", st.Counters)
	}
	for _, svc := range []string{"wrong-ca", "wrong-sn"} {
		if !hasEvent(t, b, audit.StreamFailed, func(e journal.Entry) bool {
			return e.Attr(audit.KeyService).AsString() == svc && e.Attr(audit.KeyReason).AsString() == "upstream_unreachable" &&
				e.Attr(audit.KeyErrorType).AsString() == "tls_verify"
		}) {
			t.Errorf("B's journal lacks the TLS verification failure of %s: %v", svc, b.Events())
		}
	}
}

// TestUpstreamTLSMissingClientCert: an mTLS upstream refuses a dyad
// without a client certificate; the client sees its connection fail, not
// data.
func TestUpstreamTLSMissingClientCert(t *testing.T) {
	ca, clientCA := newTestCA(t, "upstream CA"), newTestCA(t, "client CA")
	serverCert, _, _ := ca.issue(t, "upstream.test", x509.ExtKeyUsageServerAuth)
	clients := x509.NewCertPool()
	clients.AddCert(clientCA.cert)
	mtls, accepted := tlsEchoServer(t, serverCert, clients)
	a, b, _ := twoSites(t, mtls)
	writeFile(t, b.Dir, "ca.pem", ca.pem, 0o644)
	b.Config.Services[0].UpstreamTLS = &daemon.UpstreamTLSFile{ServerName: "upstream.test", CAFile: "ca.pem"}
	reload(t, b)
	err := echoRoundTrip(a.Config.Forwards[0].Listen, 1<<10, 1)
	if err == nil {
		t.Fatal("data crossed to an mTLS upstream without a client certificate")
	}
	if accepted.Load() != 0 {
		t.Errorf("the upstream accepted %d handshakes", accepted.Load())
	}
	if !hasEvent(t, b, audit.StreamClosed, func(e journal.Entry) bool {
		return e.Attr(audit.KeyService).AsString() == "echo" && e.Attr(audit.KeyCloseReason).AsString() == "reset"
	}) {
		t.Errorf("B's journal lacks the reset stream: %v", b.Events())
	}
}

// TestUpstreamTLSConfigErrors: bad upstream_tls files fail `dyad check`
// and a reload with an error naming the field, the service and the file;
// a client key readable by others is refused (THREATS P6); there is no key
// that disables verification.
func TestUpstreamTLSConfigErrors(t *testing.T) {
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := newTestCA(t, "CA")
	_, certPEM, keyPEM := ca.issue(t, "site-b", x509.ExtKeyUsageClientAuth)
	_, otherPEM, _ := ca.issue(t, "site-c", x509.ExtKeyUsageClientAuth)
	writeFile(t, dir, "ca.pem", ca.pem, 0o644)
	writeFile(t, dir, "garbage.pem", []byte("not a certificate\n"), 0o644)
	writeFile(t, dir, "client.pem", certPEM, 0o644)
	writeFile(t, dir, "other.pem", otherPEM, 0o644)
	writeFile(t, dir, "client.key", keyPEM, 0o600)
	writeFile(t, dir, "open.key", keyPEM, 0o644)
	base := "site: b\nidentity: id.key\nlisten: 127.0.0.1:7000\npeers:\n  - {name: site-a, public_key: " + id.Public().String() +
		"}\nservices:\n  - name: payments\n    upstream: 127.0.0.1:8443\n    allow: [site-a]\n    upstream_tls: "
	good := "{server_name: payments.test, ca_file: ca.pem, cert_file: client.pem, key_file: client.key}"
	cfgPath := filepath.Join(dir, "dyad.yaml")
	c, err := daemon.ParseConfig(cfgPath, []byte(base+good+"\n"))
	if err != nil {
		t.Fatalf("good upstream_tls: %v", err)
	}
	if tc := c.Tunnel.Services[0].TLS; tc == nil || tc.ServerName != "payments.test" || tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.InsecureSkipVerify {
		t.Errorf("TLS config %+v", tc)
	}
	if c, err := daemon.ParseConfig(cfgPath, []byte(base+"{}\n")); err != nil || c.Tunnel.Services[0].TLS.ServerName != "127.0.0.1" || c.Tunnel.Services[0].TLS.RootCAs != nil {
		t.Errorf("upstream_tls: {} should verify 127.0.0.1 against the system roots: %v", err)
	}
	for _, tc := range []struct{ name, tls, want string }{
		{"missing CA", "{ca_file: nope.pem}", "services[0].upstream_tls.ca_file: service payments: open " + filepath.Join(dir, "nope.pem")},
		{"CA not PEM", "{ca_file: garbage.pem}", "services[0].upstream_tls.ca_file: service payments: " + filepath.Join(dir, "garbage.pem") + " holds no PEM certificate"},
		{"cert without key", "{cert_file: client.pem}", "services[0].upstream_tls.key_file: service payments: required with cert_file"},
		{"key without cert", "{key_file: client.key}", "services[0].upstream_tls.cert_file: service payments: required with key_file"},
		{"key of another cert", "{cert_file: other.pem, key_file: client.key}", "services[0].upstream_tls.cert_file: service payments: " + filepath.Join(dir, "other.pem")},
		{"key readable by others", "{cert_file: client.pem, key_file: open.key}", "services[0].upstream_tls.key_file: service payments: key file " + filepath.Join(dir, "open.key") + " has mode 0644"},
		{"no way to skip verification", "{insecure_skip_verify: true}", `unknown key "insecure_skip_verify"`},
	} {
		_, err := daemon.ParseConfig(cfgPath, []byte(base+tc.tls+"\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("%s: the error shows key material: %v", tc.name, err)
		}
		var ce *daemon.ConfigError
		if !errors.As(err, &ce) || ce.Line != 10 && !strings.Contains(err.Error(), "line 10:") {
			t.Errorf("%s: not a ConfigError on line 10: %#v", tc.name, err)
		}
	}
}

// TestUpstreamTLSGuarded: a service behind the API guard whose upstream is
// HTTPS: the guard's HTTP runs over the verified TLS connection.
func TestUpstreamTLSGuarded(t *testing.T) {
	ca := newTestCA(t, "upstream CA")
	serverCert, _, _ := ca.issue(t, "upstream.test", x509.ExtKeyUsageServerAuth)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(brokenPartner))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}}
	srv.StartTLS()
	defer srv.Close()
	_, b, local := twoSites(t, srv.Listener.Addr().String())
	spec, err := os.ReadFile("../apiguard/testdata/partner-responses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, b.Dir, "partner.yaml", spec, 0o644)
	writeFile(t, b.Dir, "ca.pem", ca.pem, 0o644)
	b.Config.Services[0].UpstreamTLS = &daemon.UpstreamTLSFile{ServerName: "upstream.test", CAFile: "ca.pem"}
	b.Config.Services[0].API = &daemon.APIFile{Spec: "partner.yaml", Operations: map[string][]string{"site-a": {"getPayment"}}}
	reload(t, b)
	if got := getEach(t, local, "/v1/payments/1", "/v1/health", "/v1/payments/1"); got[0] != 200 || got[1] != 403 || got[2] != 200 {
		t.Errorf("statuses through the guard over TLS: %v", got)
	}
}

// TestUpstreamTLSReload: the upstream_tls files are read again on SIGHUP.
// A CA file that turned to garbage rejects the reload, naming the file, and
// the running configuration stays (the upstream still verified and
// reached); a CA file replaced by another CA's is in force after the next
// reload (the upstream, which that CA did not sign, is refused).
func TestUpstreamTLSReload(t *testing.T) {
	ca, otherCA := newTestCA(t, "upstream CA"), newTestCA(t, "another CA")
	serverCert, _, _ := ca.issue(t, "upstream.test", x509.ExtKeyUsageServerAuth)
	https, _ := tlsEchoServer(t, serverCert, nil)
	_, b, local := twoSites(t, https)
	caPath := writeFile(t, b.Dir, "ca.pem", ca.pem, 0o644)
	b.Config.Services[0].UpstreamTLS = &daemon.UpstreamTLSFile{ServerName: "upstream.test", CAFile: "ca.pem"}
	reload(t, b)
	if err := echoRoundTrip(local, 64<<10, 1); err != nil {
		t.Fatalf("verified upstream: %v", err)
	}

	writeFile(t, b.Dir, "ca.pem", []byte("not a certificate\n"), 0o644)
	before := strings.Count(b.Logs(), `"event":"dyad.config.rejected"`)
	b.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(b.Logs(), `"event":"dyad.config.rejected"`) == before {
		if time.Now().After(deadline) {
			t.Fatalf("the garbage CA file was not rejected:\n%s", b.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(b.Logs(), caPath+" holds no PEM certificate") {
		t.Errorf("the rejection does not name the file:\n%s", b.Logs())
	}
	if err := echoRoundTrip(local, 64<<10, 2); err != nil {
		t.Errorf("after the rejected reload: %v", err)
	}

	writeFile(t, b.Dir, "ca.pem", otherCA.pem, 0o644)
	reload(t, b)
	refusedPromptly(t, local, 2*time.Second)
}
