package tunnel

import (
	"errors"
	"fmt"
)

// The stream protocol. Each forwarded TCP connection is one QUIC stream,
// opened by the importing side. Both directions are codec streams; the first
// data record of each is a control message:
//
//	request  (initiator → responder): version 0x01 | kind 0x01 (TCP) | name length n (1..64) | service name (n bytes)
//	                               or: version 0x01 | kind 0x02 (identity announcement, announce.go)
//	response (responder → initiator): version 0x01 | status (Status)
//
// After an accepted response, every later record carries the connection's
// bytes. A refusal is followed by the close record.
const (
	protoVersion   = 0x01
	kindTCP        = 0x01
	maxServiceName = 64
)

// Status is the exporting side's answer to a stream request.
type Status uint8

// Statuses. A refusal is typed so the importing side can close its client
// at once and say why.
const (
	StatusAccepted       Status = 0
	StatusUnknownService Status = 1
	StatusNotAllowed     Status = 2
	StatusUpstreamDown   Status = 3
	StatusShuttingDown   Status = 4
	StatusBadRequest     Status = 5
	StatusRateLimited    Status = 6 // the peer's or the service's new-stream rate
	StatusTooManyStreams Status = 7 // the peer's or the service's concurrent streams
	maxStatus                   = StatusAnnouncementRefused
)

// StatusAnnouncementRefused refuses an identity announcement (its reason
// is in the refusing side's dyad.peer.key_rotation_refused event).
const StatusAnnouncementRefused Status = 9

// StatusAuditUnavailable refuses a stream while the audit journal cannot be
// written (audit.journal.on_failure: refuse).
const StatusAuditUnavailable Status = 8

func (s Status) String() string {
	switch s {
	case StatusAccepted:
		return "accepted"
	case StatusUnknownService:
		return "unknown_service"
	case StatusNotAllowed:
		return "not_allowed"
	case StatusUpstreamDown:
		return "upstream_unreachable"
	case StatusShuttingDown:
		return "shutting_down"
	case StatusBadRequest:
		return "bad_request"
	case StatusRateLimited:
		return "rate_limited"
	case StatusTooManyStreams:
		return "too_many_streams"
	case StatusAuditUnavailable:
		return "audit_unavailable"
	case StatusAnnouncementRefused:
		return "announcement_refused"
	}
	return fmt.Sprintf("status_%d", uint8(s))
}

// ValidServiceName reports whether name can travel in a request: 1 to 64
// bytes of lower-case letters, digits, '.', '_' and '-'.
func ValidServiceName(name string) bool {
	if len(name) == 0 || len(name) > maxServiceName {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// AppendRequest appends the request for service to b.
func AppendRequest(b []byte, service string) []byte {
	b = append(b, protoVersion, kindTCP, byte(len(service)))
	return append(b, service...)
}

var errBadRequest = errors.New("malformed stream request")

// ParseRequest decodes a request and returns the service it names.
func ParseRequest(b []byte) (string, error) {
	if len(b) < 3 {
		return "", fmt.Errorf("%w: %d bytes", errBadRequest, len(b))
	}
	if b[0] != protoVersion || b[1] != kindTCP {
		return "", fmt.Errorf("%w: version %d kind %d", errBadRequest, b[0], b[1])
	}
	n := int(b[2])
	if len(b) != 3+n {
		return "", fmt.Errorf("%w: name length %d in %d bytes", errBadRequest, n, len(b))
	}
	name := string(b[3:])
	if !ValidServiceName(name) {
		return "", fmt.Errorf("%w: invalid service name", errBadRequest)
	}
	return name, nil
}

// AppendResponse appends a response with status s to b.
func AppendResponse(b []byte, s Status) []byte { return append(b, protoVersion, byte(s)) }

// ParseResponse decodes a response.
func ParseResponse(b []byte) (Status, error) {
	if len(b) != 2 || b[0] != protoVersion {
		return 0, fmt.Errorf("malformed stream response (%d bytes)", len(b))
	}
	if Status(b[1]) > maxStatus {
		return 0, fmt.Errorf("unknown stream response status %d", b[1])
	}
	return Status(b[1]), nil
}
