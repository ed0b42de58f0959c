package report

import (
	"strings"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
)

// keyRow returns the DORA key-lifecycle row's facts, by label.
func keyRow(t *testing.T, r *Report) (Row, map[string]string) {
	t.Helper()
	for _, s := range r.Sections {
		for _, row := range s.Rows {
			if row.ID == "RTS 2024/1774 Art. 7" {
				facts := map[string]string{}
				for _, f := range row.Evidence {
					facts[f.Label] = f.Value
				}
				return row, facts
			}
		}
	}
	t.Fatal("no key-lifecycle row")
	return Row{}, nil
}

// TestKeyLifecycleRow: the DORA key-lifecycle row counts this daemon's
// identity rotations, partners' enrolments, revocations and announced
// rotations from the journal, cites them, and gives the identity's age
// from the last rotation, saying when it is older than identity_max_age.
func TestKeyLifecycleRow(t *testing.T) {
	dir := t.TempDir()
	w := newWriter(t, dir, 0)
	w.at(time.Minute, audit.DaemonStarted, started()...)
	w.at(2*time.Minute, audit.PeerEnrolled, kvs(audit.KeyPeer, "bank-c"), kvs(audit.KeyPeerFingerprint, "SHA256:c1"),
		kvs(audit.KeyEnrollRole, "inviter"), kvs(audit.KeyPeerAddress, "192.0.2.9"), kvs(audit.KeyEnrollPhrase, "a b c"),
		i64(audit.KeyControlUID, 0))
	w.at(3*time.Minute, audit.IdentityRotated, kvs(audit.KeyFingerprint, "SHA256:own2"), kvs(audit.KeyPreviousFingerprint, "SHA256:own"),
		kvs(audit.KeyOverlapUntil, "2026-10-02T00:03:00Z"), i64(audit.KeyControlUID, 0))
	w.at(4*time.Minute, audit.PeerKeyRotated, kvs(audit.KeyPeer, "bank-b"), kvs(audit.KeyPeerFingerprint, "SHA256:b3"),
		kvs(audit.KeyPeerPreviousFingerprint, "SHA256:b2"), kvs(audit.KeyOverlapUntil, "2026-10-02T00:04:00Z"))
	w.at(5*time.Minute, audit.PeerRevoked, kvs(audit.KeyPeer, "bank-c"), kvs(audit.KeyPeerFingerprint, "SHA256:c1"),
		kvs(audit.KeyPeerSource, "state"), i64(audit.KeyControlUID, 0))
	w.close()

	_, v := keys(t)
	opts := Options{Journal: dir, Verifier: v, From: t0, To: t0.Add(time.Hour), Now: t0.Add(24 * time.Hour),
		Daemon: Daemon{Site: "bank-a", Fingerprint: "SHA256:own2", Suites: []string{"aes-256-gcm"}}, Controls: controls(), Generator: "test"}
	opts.Controls.IdentityMaxAge = 365 * 24 * time.Hour
	r, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	row, facts := keyRow(t, r)
	k := r.Evidence.Keys
	expect(t, "rotations", len(k.Rotations), 1)
	expect(t, "enrolments", k.Enrolments, 1)
	expect(t, "revocations", k.Revocations, 1)
	expect(t, "identity", k.Identity, "SHA256:own2")
	expect(t, "identity since", k.IdentitySince, t0.Add(3*time.Minute))
	if got := facts["identity rotations in the period"]; !strings.HasPrefix(got, "1: ") || !strings.Contains(got, "SHA256:own → SHA256:own2") {
		t.Fatalf("rotations fact %q", got)
	}
	expect(t, "enrolments / revocations", facts["partner enrolments / revocations in the period"], "1 / 1")
	if got := facts["identity age"]; !strings.Contains(got, "SHA256:own2 made by dyad rotate") || !strings.Contains(got, "within identity_max_age (365 days)") {
		t.Fatalf("identity age %q", got)
	}
	if got := facts["partner key pins, rotations, enrolments, revocations, removals in the period"]; !strings.Contains(got, "bank-b rotated_by_announcement SHA256:b2 → SHA256:b3") ||
		!strings.Contains(got, "bank-c enrolled") || !strings.Contains(got, "bank-c revoked") {
		t.Fatalf("changes %q", got)
	}
	cited := map[uint64]bool{}
	for _, s := range row.Citations {
		cited[s] = true
	}
	for _, c := range append(k.Changes, k.Rotations...) {
		if !cited[c.Seq] {
			t.Fatalf("entry %d (%s) not cited", c.Seq, c.Change)
		}
	}

	// A year later, with the same journal: the identity is too old.
	opts.Now = t0.Add(400 * 24 * time.Hour)
	if r, err = Build(opts); err != nil {
		t.Fatal(err)
	}
	if _, facts = keyRow(t, r); !strings.Contains(facts["identity age"], "OLDER than identity_max_age (365 days): rotate it with dyad rotate") {
		t.Fatalf("identity age a year on: %q", facts["identity age"])
	}
}
