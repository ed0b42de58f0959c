// Package enroll is dyad's pairing ceremony on the wire: the invitation
// token `dyad invite` prints and `dyad join` reads, the two enrollment
// messages the joiner and the inviter exchange under the ALPN
// tunnel.EnrollALPN, and the verification phrase both operators read to
// each other. codec/FORMAT.md section 11 specifies all three; this package
// is that section's only implementation, and every parser here is fuzzed
// (fuzz/enroll_test.go).
//
// A token holds the inviter's site name, public key, endpoints, the
// services the invitation allows, its expiry and a 32-byte one-time secret.
// Its checksum catches a mistyped or cut token; it is not a MAC: a token is
// authenticated by the verification phrase (Phrase), which depends on both
// keys and the secret, and by the inviter's daemon, which trusts nothing in
// a request but the secret (it keeps only SecretHash of it) and the key the
// joiner proved in the TLS handshake.
package enroll
