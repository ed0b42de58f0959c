package tunnel

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"net"

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

// serverTLS accepts only clients whose certificate key is a configured
// peer's (THREATS P1, tested by TestUnpairedClientRefused). The pin is
// checked in VerifyConnection, which crypto/tls runs on every handshake,
// resumed ones included (VerifyPeerCertificate is skipped on resumption);
// session tickets are off besides, so no handshake can skip the
// certificate at all (THREATS P1, tested by TestResumedSessionRefused).
// protos are the ALPNs accepted: n.alpn() on QUIC, ALPN alone on TCP; both
// transports share this function, so the pin check is one code path
// (TestUnpairedClientRefused/tcp, TestTCPForeignClientRefused).
func (n *Node) serverTLS(cert tls.Certificate, protos []string) *tls.Config {
	base := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// Request rather than require, so that a client without a
		// certificate reaches our check and is counted like the rest.
		ClientAuth:             tls.RequestClientCert,
		NextProtos:             protos,
		SessionTicketsDisabled: true,
	}
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             protos,
		SessionTicketsDisabled: true,
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			remote := chi.Conn.RemoteAddr()
			c := base.Clone()
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				p, err := n.verifyPeer(rawCerts(cs), remote, nil)
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
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := n.verifyPeer(rawCerts(cs), remote, &peer)
			return err
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

// peerByKey finds the configured peer with Ed25519 key key, comparing every
// candidate in constant time.
func (n *Node) peerByKey(key []byte) (Peer, bool) {
	var found Peer
	ok := 0
	for _, p := range n.cfg.Load().cfg.Peers {
		if subtle.ConstantTimeCompare(key, p.Key.Sign[:]) == 1 {
			found, ok = p, 1
		}
	}
	return found, ok == 1
}

// refuseHandshake counts and audits a refused key (the audit event is
// rate-limited; the counter is exact).
func (n *Node) refuseHandshake(remote net.Addr, fingerprint, reason, direction string) {
	n.Stats.HandshakesRefused.Add(1)
	n.auditRefused(remote, fingerprint, reason, direction)
}
