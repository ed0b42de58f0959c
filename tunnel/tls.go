package tunnel

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// ALPN is the application protocol dyad negotiates; a QUIC client without it
// (or ALPNv1) fails the handshake. dyad/2 says the side keeps several
// connections per peer and never replaces one on a new arrival
// (codec/FORMAT.md, "Versions"); a peer that offers only ALPNv1 is of the
// previous release, and the link keeps one connection with it.
const (
	ALPN   = "dyad/2"
	ALPNv1 = "dyad/1"
)

// alpn returns the protocols this node offers, most preferred first.
func (n *Node) alpn() []string {
	if p := n.cfg.Load().cfg.protos; p != nil {
		return p
	}
	return []string{ALPN, ALPNv1}
}

// exporterLabel is the TLS exporter label of the codec's per-connection
// secret (codec/FORMAT.md, section 4).
const exporterLabel = "EXPORTER-dyad-codec"

var errUnpaired = errors.New("peer key is not paired with this daemon")

// errNotPostQuantum refuses a handshake without a hybrid ML-KEM group under
// Config.RequirePostQuantum.
var errNotPostQuantum = errors.New("key exchange is not post-quantum (tls.require_post_quantum)")

// ErrFIPSInactive is New's answer to Config.FIPS in a process where Go's
// FIPS 140-3 module is not active.
var ErrFIPSInactive = errors.New("fips: true, but Go's FIPS 140-3 module is not active in this process " +
	"(start dyad with GODEBUG=fips140=on; README, \"FIPS 140-3 mode\")")

// fipsCurves are the TLS groups of FIPS 140-3 mode: those whose every part
// is approved (ML-KEM, FIPS 203; ECDH over P-256/P-384, SP 800-56A). Go's
// own FIPS filter (crypto/tls defaults_fips140.go) also allows
// X25519MLKEM768, whose X25519 half is not approved; dyad leaves it out, so
// that a FIPS-mode pair negotiates SecP256r1MLKEM768
// (TestFIPSPairEndToEnd checks the group).
var fipsCurves = []tls.CurveID{tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024, tls.CurveP256, tls.CurveP384}

// PostQuantum reports whether group is a hybrid ML-KEM key exchange, the
// groups tls.require_post_quantum accepts.
func PostQuantum(group tls.CurveID) bool {
	switch group {
	case tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024:
		return true
	}
	return false
}

// curvePreferences returns the TLS groups this node offers and accepts; nil
// means crypto/tls's defaults (hybrid ML-KEM first). Under
// RequirePostQuantum the classical groups stay offered, so that a partner
// without post-quantum key exchange completes the key exchange and is
// refused in VerifyConnection, audited and counted, rather than failing the
// handshake with no trace of who it was.
func (c Config) curvePreferences() []tls.CurveID {
	switch {
	case c.curves != nil:
		return c.curves
	case c.FIPS:
		return fipsCurves
	}
	return nil
}

// checkGroup refuses a handshake whose group is classical under
// RequirePostQuantum (tested by TestRequirePostQuantumRefuses, both
// directions).
func (n *Node) checkGroup(cs tls.ConnectionState, remote net.Addr, key []byte, direction string) error {
	if !n.cfg.Load().cfg.RequirePostQuantum || PostQuantum(cs.CurveID) {
		return nil
	}
	n.Stats.HandshakesNotPostQuantum.Add(1)
	n.refuseHandshake(remote, identity.Fingerprint(key), "not_post_quantum", direction)
	return errNotPostQuantum
}

// serverTLS accepts only clients whose certificate key is a configured
// peer's (THREATS P1, tested by TestUnpairedClientRefused). The pin is
// checked in VerifyConnection, which crypto/tls runs on every handshake,
// resumed ones included (VerifyPeerCertificate is skipped on resumption);
// session tickets are off besides, so no handshake can skip the
// certificate at all (THREATS P1, tested by TestResumedSessionRefused).
//
// The certificate is the current identity's, chosen per handshake: after a
// rotation new connections present the new key (TestRotationUnderTraffic).
//
// protos are the ALPNs accepted: n.alpn() on QUIC, ALPN alone on TCP; both
// transports share this function, so the pin check is one code path
// (TestUnpairedClientRefused/tcp, TestTCPForeignClientRefused). enroll
// offers enrollment's ALPN while an invitation is pending (QUIC only).
func (n *Node) serverTLS(protos []string, enroll bool) *tls.Config {
	base := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Request rather than require, so that a client without a
		// certificate reaches our check and is counted like the rest.
		ClientAuth:             tls.RequestClientCert,
		NextProtos:             protos,
		SessionTicketsDisabled: true,
		CurvePreferences:       n.cfg.Load().cfg.curvePreferences(),
	}
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             protos,
		SessionTicketsDisabled: true,
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			remote := chi.Conn.RemoteAddr()
			c := base.Clone()
			self := n.self.Load()
			c.Certificates = []tls.Certificate{self.cert}
			if t, ok := chi.Context().Value(admissionTicket{}).(*admissionTicket); ok {
				t.presented.Store(self.cur)
			}
			// Enrollment is offered only while an invitation is pending;
			// its connections serve no stream (tunnel/enroll.go; THREATS
			// P1, tested by TestEnrollOfferedOnlyWithInvitation).
			if enroll && n.offerEnroll() {
				c.NextProtos = append(c.NextProtos[:len(c.NextProtos):len(c.NextProtos)], EnrollALPN)
			}
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				if enroll && cs.NegotiatedProtocol == EnrollALPN {
					return n.enrollCert(cs, remote)
				}
				p, err := n.verifyPeer(rawCerts(cs), remote, nil)
				if err == nil {
					err = n.checkGroup(cs, remote, p.Key.Sign[:], inbound)
				}
				if err == nil {
					n.admission.authenticated(p.Name, remote)
				}
				return err
			}
			return c, nil
		},
	}
}

// clientTLS accepts only a server whose key is the pinned key of peer
// (THREATS P1, tested by TestUnpairedServerRefused). It keeps no session
// cache (no resumption), and checks the pin in VerifyConnection, which
// crypto/tls runs on every handshake.
func (n *Node) clientTLS(cert tls.Certificate, peer Peer, remote net.Addr) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   n.alpn(),
		ServerName:   "dyad",
		// The chain is not checked against a CA: the server is
		// authenticated by the pinned key below, which the TLS
		// handshake proves it holds.
		InsecureSkipVerify:     true,
		SessionTicketsDisabled: true,
		CurvePreferences:       n.cfg.Load().cfg.curvePreferences(),
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := n.verifyPeer(rawCerts(cs), remote, &peer); err != nil {
				return err
			}
			return n.checkGroup(cs, remote, peer.Key.Sign[:], outbound)
		},
	}
}

// rawCerts returns the DER certificates the peer presented (on a resumed
// handshake, those of the session it resumed).
func rawCerts(cs tls.ConnectionState) [][]byte {
	raw := make([][]byte, len(cs.PeerCertificates))
	for i, c := range cs.PeerCertificates {
		raw[i] = c.Raw
	}
	return raw
}

// verifyPeer checks a presented certificate against the configured peers,
// or against want alone when dialing. Refusals are counted and logged with
// the presented key's fingerprint and the source address.
func (n *Node) verifyPeer(raw [][]byte, remote net.Addr, want *Peer) (Peer, error) {
	direction := inbound
	if want != nil {
		direction = outbound
	}
	if len(raw) == 0 {
		n.refuseHandshake(remote, "", "no_certificate", direction)
		return Peer{}, errUnpaired
	}
	key, err := identity.CertificateKey(raw[0])
	if err != nil {
		n.refuseHandshake(remote, "", "bad_certificate", direction)
		return Peer{}, errUnpaired
	}
	if want != nil {
		if subtle.ConstantTimeCompare(key, want.Key.Sign[:]) != 1 {
			// The log names the key we expected, so a peer that rotated
			// while we were away is told apart from a stranger
			// (TestRotationPeerOfflineAtAnnouncement).
			n.log.Warn().Str("peer", want.Name).Str("presented_fingerprint", identity.Fingerprint(key)).
				Str("expected_fingerprint", want.Key.Fingerprint()).
				Msg("peer presented another key than the one pinned: if it rotated its identity while we were away, pin its new key (or pair again)")
			n.refuseHandshake(remote, identity.Fingerprint(key), "pinned_key_mismatch", direction)
			return Peer{}, errUnpaired
		}
		return *want, nil
	}
	if p, ok := n.peerByKey(key); ok {
		return p, nil
	}
	n.refuseHandshake(remote, identity.Fingerprint(key), "unknown_key", direction)
	return Peer{}, errUnpaired
}

// peerByKey finds the configured peer with Ed25519 key key (its key, or a
// previous one within its overlap), comparing every candidate in constant
// time.
func (n *Node) peerByKey(key []byte) (Peer, bool) {
	if len(key) != 32 {
		return Peer{}, false
	}
	var found Peer
	ok := false
	now := time.Now()
	for _, p := range n.cfg.Load().cfg.Peers {
		if _, match := p.accepts([32]byte(key), now); match {
			found, ok = p, true
		}
	}
	return found, ok
}

// refuseHandshake counts and audits a refused key (the audit event is
// rate-limited; the counter is exact).
func (n *Node) refuseHandshake(remote net.Addr, fingerprint, reason, direction string) {
	n.Stats.HandshakesRefused.Add(1)
	n.auditRefused(remote, fingerprint, reason, direction)
}
