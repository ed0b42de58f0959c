package tunnel

import (
	"fmt"
	"testing"

	"github.com/dyad-tunnel/dyad/codec"
)

// TestStreamCloseReasonTruncated: a stream cut before its close record is
// reported as truncated (EVENTS.md), not as a rejected record.
func TestStreamCloseReasonTruncated(t *testing.T) {
	reason, errType := streamCloseReason(fmt.Errorf("read: %w", codec.ErrTruncated))
	if reason != "truncated" || errType != "truncation" {
		t.Fatalf("close reason %q (%q), want truncated (truncation)", reason, errType)
	}
}
