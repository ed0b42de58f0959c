package daemon

import (
	"fmt"
	"time"

	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// identityCreated is the identity's creation time as the start event
// carries it: RFC 3339, or "unknown" for a key file written before dyad
// recorded it.
func identityCreated(id *identity.Identity) string {
	if c := id.Created(); !c.IsZero() {
		return c.Format(time.RFC3339)
	}
	return "unknown"
}

// IdentityAgeWarning says what the daemon warns at start about the age of
// id, under identity_max_age: empty when the key is young enough or the
// limit is off; a note when its age is unknown (tested by
// TestIdentityMaxAge).
func IdentityAgeWarning(cfg *Config, id *identity.Identity, now time.Time) string {
	if cfg.IdentityMaxAge < 0 {
		return ""
	}
	c := id.Created()
	if c.IsZero() {
		return fmt.Sprintf("identity %s: age unknown (its key file predates dyad recording the creation time); "+
			"identity_max_age %s cannot be checked until the identity is rotated", cfg.IdentityPath, days(cfg.IdentityMaxAge))
	}
	if age := now.Sub(c); age > cfg.IdentityMaxAge {
		return fmt.Sprintf("identity %s is %s old (made %s), older than identity_max_age %s: rotate it (dyad rotate)",
			cfg.IdentityPath, days(age), c.Format(time.RFC3339), days(cfg.IdentityMaxAge))
	}
	return ""
}

// days writes a duration as whole days when it is at least one.
func days(d time.Duration) string {
	if d >= 24*time.Hour {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.Round(time.Second).String()
}
