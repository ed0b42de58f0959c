package state

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestRotationFileModeRefused: the rotation file holds private keys; it is
// written 0600 and refused once group or others can read it (THREATS P6).
func TestRotationFileModeRefused(t *testing.T) {
	dir := t.TempDir()
	if r, err := LoadRotation(dir); r != nil || err != nil {
		t.Fatalf("no rotation yet: %v %v", r, err)
	}
	want := &Rotation{Current: "PEM", Rotated: time.Unix(1800000000, 0).UTC(), History: []RotationRecord{{From: "a", To: "b"}}}
	if err := SaveRotation(dir, want); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(RotationPath(dir))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("rotation file mode %v (%v), want 0600", fi.Mode(), err)
	}
	got, err := LoadRotation(dir)
	if err != nil || got.Current != "PEM" || !got.Rotated.Equal(want.Rotated) || len(got.History) != 1 {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	os.Chmod(RotationPath(dir), 0o640)
	if _, err := LoadRotation(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), "PEM") {
		t.Fatalf("a group-readable rotation file: %v", err)
	}
}
