package tunnel

import (
	"sync"
	"sync/atomic"

	"github.com/dyad-tunnel/dyad/tunnel/udpbatch"
)

// Stats counts what a Node did. Counters only grow; every refusal and every
// rejected record is counted here even when its log line is rate-limited.
type Stats struct {
	TunnelsEstablished atomic.Uint64
	HandshakesRefused  atomic.Uint64 // unpaired keys, both directions
	// HandshakesNotPostQuantum counts the refusals (in HandshakesRefused
	// too) of a handshake without a hybrid ML-KEM group, under
	// Config.RequirePostQuantum.
	HandshakesNotPostQuantum atomic.Uint64
	StreamsAccepted          atomic.Uint64 // streams served for a peer
	StreamsForwarded         atomic.Uint64 // local connections carried to a peer
	ForwardsFailed           atomic.Uint64 // local connections refused: no tunnel, or refused by the peer
	BytesSent                atomic.Uint64 // plaintext bytes from local sockets into tunnels
	BytesReceived            atomic.Uint64 // plaintext bytes from tunnels to local sockets
	PacketsDropped           atomic.Uint64 // UDP datagrams quic-go dropped below the tunnels
	PeerKeysRotated          atomic.Uint64 // peers' identity announcements taken (new key pinned)
	TunnelsSilent            atomic.Uint64 // connections closed because the peer went silent (peer_silent), both transports
	// UpstreamTLSFailed counts upstream TLS handshakes that failed (each
	// also a streams_refused.upstream_unreachable).
	UpstreamTLSFailed   atomic.Uint64
	TCPHandshakesFailed atomic.Uint64 // TCP connections whose TLS handshake failed or timed out (refused keys are in HandshakesRefused too)
	TransportChanges    atomic.Uint64 // transport: auto switches, QUIC to TCP and back

	udp atomic.Pointer[udpbatch.Reader] // the node's socket reader (udp_* counters); nil until New

	mu              sync.Mutex        // guards the maps below
	streamsRefused  map[string]uint64 // by Status name
	recordsRejected map[string]uint64 // by codec.Reason
	limited         map[string]uint64 // by limit name
	announcements   map[string]uint64 // identity announcements refused, by reason
}

func (s *Stats) countRefusedStream(st Status)      { s.add(&s.streamsRefused, st.String()) }
func (s *Stats) countRefused(reason string)        { s.add(&s.streamsRefused, reason) }
func (s *Stats) countRejectedRecord(reason string) { s.add(&s.recordsRejected, reason) }
func (s *Stats) countLimited(limit string)         { s.add(&s.limited, limit) }
func (s *Stats) countAnnouncementRefused(r string) { s.add(&s.announcements, r) }

func (s *Stats) add(m *map[string]uint64, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if *m == nil {
		*m = map[string]uint64{}
	}
	(*m)[key]++
}

// Snapshot returns every counter by name.
func (s *Stats) Snapshot() map[string]uint64 {
	out := map[string]uint64{
		"tunnels_established":         s.TunnelsEstablished.Load(),
		"handshakes_refused":          s.HandshakesRefused.Load(),
		"handshakes_not_post_quantum": s.HandshakesNotPostQuantum.Load(),
		"streams_accepted":            s.StreamsAccepted.Load(),
		"streams_forwarded":           s.StreamsForwarded.Load(),
		"forwards_failed":             s.ForwardsFailed.Load(),
		"bytes_sent":                  s.BytesSent.Load(),
		"bytes_received":              s.BytesReceived.Load(),
		"packets_dropped":             s.PacketsDropped.Load(),
		"peer_keys_rotated":           s.PeerKeysRotated.Load(),
		"tunnels_silent":              s.TunnelsSilent.Load(),
		"upstream_tls_failed":         s.UpstreamTLSFailed.Load(),
		"tcp_handshakes_failed":       s.TCPHandshakesFailed.Load(),
		"transport_changes":           s.TransportChanges.Load(),
	}
	if rd := s.udp.Load(); rd != nil {
		// Receive batching (udpbatch): datagrams per read is
		// udp_datagrams / udp_reads (TestGROTwoNodes).
		c := rd.Counters()
		out["udp_gro"] = 0
		if rd.GRO() {
			out["udp_gro"] = 1
		}
		out["udp_reads"], out["udp_messages"], out["udp_coalesced"] = c.Reads, c.Messages, c.Coalesced
		out["udp_datagrams"], out["udp_truncated"] = c.Datagrams, c.Truncated
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.streamsRefused {
		out["streams_refused."+k] = v
	}
	for k, v := range s.recordsRejected {
		out["records_rejected."+k] = v
	}
	for k, v := range s.limited {
		out["limited."+k] = v
	}
	for k, v := range s.announcements {
		out["announcements_refused."+k] = v
	}
	return out
}
