// Package codec is dyad's sealed record layer: it runs inside every tunnel
// stream and seals each direction with keys that only the two paired daemons
// can derive, so a modified, replayed, reordered, truncated or foreign record
// is detected even if the transport under it were compromised.
//
// FORMAT.md beside this file is the specification; this package implements
// version 1 of it. A Session holds the per-connection key material; it makes a
// Writer and a Reader for each stream direction.
//
// Writers and Readers are not safe for concurrent use; a stream has one of
// each per direction, each owned by one goroutine.
package codec
