package apiguard

// DefaultMaxBody is max_body when the configuration leaves it out: the
// largest request body the guard buffers to validate (1 MiB).
const DefaultMaxBody = 1 << 20

// MaxHeaderBytes bounds a request's header block (request line, header
// fields and the blank line): a longer one is answered 431 and the stream
// ends (README, "API guard").
const MaxHeaderBytes = 16 << 10

// Policy is one service's guard configuration, built from the file and
// immutable once built. The guard of a service swaps whole policies on
// reload; its counters and inventory stay.
type Policy struct {
	Service string
	Spec    *Spec
	// Allowed maps a peer to the operations it may call. A peer absent from
	// the map may call every operation (operations: leaves it out).
	Allowed map[string]map[*Operation]bool
	// ValidateRequest checks parameters, headers and body schemas
	// (validate: [request]).
	ValidateRequest bool
	// Limits rate-limit each peer's calls of an operation; an operation
	// absent from the map is not rate-limited by the guard.
	Limits map[*Operation]Rate
	// MaxBody is the largest request body the guard accepts for an
	// operation whose body it validates; zero means DefaultMaxBody.
	MaxBody int64
	// Host is the Host every forwarded request carries (api.host), in
	// place of the partner's, whatever it sent (none included): behind an
	// upstream that routes on Host, the partner's "Host: admin.internal"
	// would reach another application's handlers (THREATS P2, tested by
	// TestGuardPinnedHost). Empty means the partner's Host is forwarded.
	// The configuration validated it (a host, optionally ":port").
	Host string
}

// Rate is a token bucket: PerSecond refill, Burst size (zero means
// max(1, PerSecond)).
type Rate struct {
	PerSecond float64
	Burst     int
}

// maxBody is MaxBody with its default.
func (p *Policy) maxBody() int64 {
	if p.MaxBody <= 0 {
		return DefaultMaxBody
	}
	return p.MaxBody
}

// allowed says whether peer may call op.
func (p *Policy) allowed(peer string, op *Operation) bool {
	ops, listed := p.Allowed[peer]
	return !listed || ops[op]
}
