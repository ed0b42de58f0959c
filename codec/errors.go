package codec

import "errors"

// Errors returned by Reader and Writer. Each names one kind of failure so the
// tunnel can count and audit the exact reason; they are wrapped with detail,
// so test them with errors.Is. Every error except io.EOF is permanent: the
// Reader or Writer returns it again on every later call.
var (
	// ErrAuth means a record failed authentication: it was modified,
	// replayed, reordered, spliced from another stream or direction, or
	// sealed with other keys (a wrong pairing or per-connection secret).
	// All of those look alike on purpose: one opaque error, as in TLS.
	ErrAuth = errors.New("codec: record authentication failed")

	// ErrTruncated means the stream ended without a valid close record:
	// mid-preamble, mid-record or between records.
	ErrTruncated = errors.New("codec: stream truncated before its close record")

	// ErrOversize means a record header announced more than the maximum
	// record size. It is detected before any of the body is read.
	ErrOversize = errors.New("codec: record exceeds the maximum size")

	// ErrVersion means the stream preamble names a format version or suite
	// this side does not speak or does not accept, or is not a dyad stream.
	ErrVersion = errors.New("codec: unsupported stream version or suite")

	// ErrRecordType means an authenticated record has a type this version
	// does not define.
	ErrRecordType = errors.New("codec: unknown record type")

	// ErrMalformed means an authenticated or well-framed record breaks a rule
	// of the format: a body shorter than the tag, an empty data record, or a
	// control record with a payload.
	ErrMalformed = errors.New("codec: malformed record")

	// ErrKeyExhausted means a direction used up its key updates, or the peer
	// sealed more records under one key than the format allows.
	ErrKeyExhausted = errors.New("codec: key usage limit exhausted")

	// ErrKeyUpdateNotDue means the peer sent a key_update record before
	// the usage limits made it due (FORMAT.md section 5): a writer
	// following the format never does, and accepting any number of them
	// would let a peer make this side do (and audit) unbounded work.
	ErrKeyUpdateNotDue = errors.New("codec: key update before it was due")

	// ErrTrailingData means bytes followed the close record in what the
	// Reader had already read from the transport.
	ErrTrailingData = errors.New("codec: data after the close record")

	// ErrClosed means Write or Close was called on a Writer that was
	// already closed.
	ErrClosed = errors.New("codec: writer closed")
)

// Reason names the kind of a Reader error for counters and audit events:
// "authentication", "truncation", "oversize", "version", "record_type",
// "malformed", "key_exhausted", "key_update_not_due" or "trailing_data"; ""
// for any other error.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrAuth):
		return "authentication"
	case errors.Is(err, ErrTruncated):
		return "truncation"
	case errors.Is(err, ErrOversize):
		return "oversize"
	case errors.Is(err, ErrVersion):
		return "version"
	case errors.Is(err, ErrRecordType):
		return "record_type"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrKeyExhausted):
		return "key_exhausted"
	case errors.Is(err, ErrKeyUpdateNotDue):
		return "key_update_not_due"
	case errors.Is(err, ErrTrailingData):
		return "trailing_data"
	}
	return ""
}
