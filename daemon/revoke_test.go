package daemon_test

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/daemon"
)

// TestRevocationCutsDownload: with real daemons, a reload at the exporter
// that revokes the importer's key cuts a running download at once: the
// client sees a reset within one second of the reload, new connections
// are refused, and B's journal holds one dyad.tunnel.closed per connection
// of the revoked key, each with the revocation reason. THREATS P1.
func TestRevocationCutsDownload(t *testing.T) {
	for _, tc := range []struct {
		name, reason string
		revoke       func(*daemon.File)
	}{
		{"removed", "peer_removed", func(f *daemon.File) {
			f.Peers = nil
			f.Services[0].Allow = nil
		}},
		{"key changed", "key_changed", func(f *daemon.File) {
			other := newSite(t, t.TempDir(), "site-a")
			f.Peers = []daemon.PeerFile{other.Peer(false)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newFaultRig(t, nil)
			const seed = 161
			tr := startDownload(r.local, faultBig, seed, transferLimit)
			defer func() { awaitDone(t, "the revoked download", tr, 15*time.Second) }()
			awaitMoved(t, tr, faultMid)

			tc.revoke(&r.b.Config)
			if err := r.b.Write(); err != nil {
				t.Fatal(err)
			}
			revoked := time.Now()
			if err := r.b.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			awaitDone(t, "the download of the revoked key", tr, 5*time.Second)
			if took := tr.ended.Sub(revoked); took > time.Second {
				t.Fatalf("the download was cut %v after the reload, want within 1 s", took)
			}
			if verdict, err := cutVerdict(tr.n, tr.sum, tr.err, faultBig, seed); err != nil || verdict != "reset" {
				t.Fatalf("the revoked download: %s %v", verdict, err)
			}

			// New connections through the forward are refused.
			fresh := startDownload(r.local, 64<<10, seed+1, 10*time.Second)
			awaitDone(t, "a new connection after the revocation", fresh, 10*time.Second)
			if fresh.err == nil || errors.Is(fresh.err, os.ErrDeadlineExceeded) {
				t.Fatalf("a new connection after the revocation: %d bytes, %v; want a refusal", fresh.n, fresh.err)
			}

			// One close event per connection the revoked key held, each
			// with the reason.
			peerA := func(e journal.Entry) bool { return e.Attr(audit.KeyPeer).AsString() == "site-a" }
			if !hasEvent(t, r.b, audit.TunnelClosed, func(e journal.Entry) bool {
				return peerA(e) && e.Attr(audit.KeyCloseReason).AsString() == tc.reason
			}) {
				t.Fatalf("B's journal has no %s with reason %s", audit.TunnelClosed, tc.reason)
			}
			time.Sleep(300 * time.Millisecond) // group commit
			es, res, err := r.b.Journal()
			if err != nil || !res.OK() {
				t.Fatalf("B's journal: %v %v", err, res.Bad)
			}
			established, closed := 0, 0
			for _, e := range es {
				switch {
				case e.Name == audit.TunnelEstablished && peerA(e):
					established++
				case e.Name == audit.TunnelClosed && peerA(e):
					if got := e.Attr(audit.KeyCloseReason).AsString(); got != tc.reason {
						t.Errorf("a connection of the revoked key closed with %q, want %q", got, tc.reason)
					}
					closed++
				}
			}
			if closed != established {
				t.Fatalf("%d %s for site-a's %d connections, want one each", closed, audit.TunnelClosed, established)
			}
		})
	}
}
