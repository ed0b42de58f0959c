package codec

import "fmt"

// Sizes of the version 1 wire format (FORMAT.md).
const (
	// Version is the format version this package writes.
	Version = 1
	// PreambleSize is the size of the preamble that opens each stream
	// direction: magic "dyad", version, suite, two reserved zero bytes.
	PreambleSize = 8
	// HeaderSize is the size of a record header: type, then the body length
	// as a 24-bit big-endian integer.
	HeaderSize = 4
	// TagSize is the size of the AEAD tag that ends every record body.
	TagSize = 16
	// MaxPayload is the largest plaintext one record carries.
	MaxPayload = 1 << 16
	// MaxRecordSize is the largest record on the wire, header included.
	MaxRecordSize = HeaderSize + MaxPayload + TagSize
)

var magic = [4]byte{'d', 'y', 'a', 'd'}

// recordType is the first header byte.
type recordType uint8

const (
	typeData      recordType = 0x01 // application bytes, 1..MaxPayload of them
	typeClose     recordType = 0x02 // authenticated end of the direction, empty
	typeKeyUpdate recordType = 0x03 // later records use the next key, empty
)

func (t recordType) String() string {
	switch t {
	case typeData:
		return "data"
	case typeClose:
		return "close"
	case typeKeyUpdate:
		return "key_update"
	}
	return fmt.Sprintf("type(0x%02x)", uint8(t))
}

// preamble returns the preamble of a direction sealed with suite.
func preamble(suite Suite) [PreambleSize]byte {
	return [PreambleSize]byte{magic[0], magic[1], magic[2], magic[3], Version, byte(suite), 0, 0}
}

// parsePreamble checks p and returns its suite if this side accepts it.
func (s *Session) parsePreamble(p [PreambleSize]byte) (Suite, error) {
	if [4]byte(p[:4]) != magic {
		return 0, fmt.Errorf("%w: not a dyad stream (magic %x)", ErrVersion, p[:4])
	}
	if p[4] != Version {
		return 0, fmt.Errorf("%w: version %d, this side speaks %d", ErrVersion, p[4], Version)
	}
	if p[6] != 0 || p[7] != 0 {
		return 0, fmt.Errorf("%w: reserved preamble bytes %x are not zero", ErrVersion, p[6:8])
	}
	suite := Suite(p[5])
	if !s.accept[suite] {
		return 0, fmt.Errorf("%w: suite %v not accepted", ErrVersion, suite)
	}
	return suite, nil
}

// seal writes one record into out, which must be exactly
// HeaderSize+len(payload)+TagSize long. payload may be exactly
// out[HeaderSize:HeaderSize+len(payload)], to seal in place, or lie outside
// out entirely. The caller enforces the key usage limits.
func (h *halfKeys) seal(out []byte, typ recordType, payload []byte) {
	n := len(payload) + TagSize
	out[0], out[1], out[2], out[3] = byte(typ), byte(n>>16), byte(n>>8), byte(n)
	h.aead.Seal(out[HeaderSize:HeaderSize], h.nextNonce(), payload, out[:HeaderSize])
	h.seq++
	h.bytes += uint64(len(payload))
}

// bodyLen parses a record header and checks the body length against the
// limits before any of the body is read.
func bodyLen(hdr []byte) (int, error) {
	n := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
	if n > MaxPayload+TagSize {
		return 0, fmt.Errorf("%w: body of %d bytes, limit %d", ErrOversize, n, MaxPayload+TagSize)
	}
	if n < TagSize {
		return 0, fmt.Errorf("%w: body of %d bytes is shorter than the tag", ErrMalformed, n)
	}
	return n, nil
}

// open authenticates and decrypts the record rec (header and body, as
// checked by bodyLen) in place and returns its type and plaintext, a slice of
// rec.
func (h *halfKeys) open(rec []byte) (recordType, []byte, error) {
	if h.seq >= h.limits.recordsPerKey {
		return 0, nil, fmt.Errorf("%w: peer sealed more than %d records under key %d", ErrKeyExhausted, h.limits.recordsPerKey, h.gen)
	}
	hdr, body := rec[:HeaderSize], rec[HeaderSize:]
	pt, err := h.aead.Open(body[:0], h.nextNonce(), body, hdr)
	if err != nil {
		return 0, nil, fmt.Errorf("%w (record %d under key %d)", ErrAuth, h.seq, h.gen)
	}
	typ := recordType(hdr[0])
	// Asked before the counters move, as the writer did before sealing it.
	notDue := typ == typeKeyUpdate && !h.updateDue(MaxPayload)
	h.seq++
	h.bytes += uint64(len(pt))
	switch {
	case typ == typeData && len(pt) == 0:
		return 0, nil, fmt.Errorf("%w: empty data record", ErrMalformed)
	case typ == typeData && h.bytes > h.limits.bytesPerKey:
		return 0, nil, fmt.Errorf("%w: peer sealed more than %d bytes under key %d", ErrKeyExhausted, h.limits.bytesPerKey, h.gen)
	case (typ == typeClose || typ == typeKeyUpdate) && len(pt) != 0:
		return 0, nil, fmt.Errorf("%w: %v record carries %d bytes", ErrMalformed, typ, len(pt))
	case notDue:
		// THREATS P5 (a peer cannot make us update and audit keys at
		// will), tested by TestKeyUpdateNotDue and TestKeyUpdateFlood.
		return 0, nil, fmt.Errorf("%w: record %d under key %d, %d bytes", ErrKeyUpdateNotDue, h.seq-1, h.gen, h.bytes)
	case typ != typeData && typ != typeClose && typ != typeKeyUpdate:
		return 0, nil, fmt.Errorf("%w: %v", ErrRecordType, typ)
	}
	return typ, pt, nil
}
