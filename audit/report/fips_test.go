package report

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestReportFIPSHeader: the header states FIPS 140-3 mode with the module
// version the daemon journalled at its start and whether it is certified
// (a warning when not), whether the configuration requires the mode, and
// whether post-quantum key exchange is required; a journal that does not
// say the module version is reported as such, not guessed.
func TestReportFIPSHeader(t *testing.T) {
	dir := t.TempDir()
	scenario(t, dir, 0)
	r, err := build(t, dir, t0, t0.Add(9*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{FormatHTML, FormatMarkdown} {
		var buf bytes.Buffer
		if err := r.Write(&buf, f); err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{
			"yes, Go Cryptographic Module v1.0.0 (certified snapshot); required by the configuration (fips: true)",
			"required: handshakes without a hybrid ML-KEM group are refused (tls.require_post_quantum)",
		} {
			if !strings.Contains(buf.String(), w) {
				t.Errorf("%s report lacks %q", f, w)
			}
		}
	}
	for _, c := range []struct {
		d    Daemon
		want string
	}{
		{Daemon{}, "no"},
		{Daemon{FIPS: true, FIPSModule: "latest"}, "yes, Go Cryptographic Module latest; WARNING: not a certified snapshot"},
		{Daemon{FIPS: true}, "yes; module version not journalled"},
	} {
		if got := c.d.FIPSLine(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.d, got, c.want)
		}
	}
	if got := (Daemon{}).PostQuantumLine(); !strings.HasPrefix(got, "preferred") {
		t.Errorf("post-quantum off: %q", got)
	}
}
