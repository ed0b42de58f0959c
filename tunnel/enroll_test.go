package tunnel

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeEnroller struct {
	pending atomic.Bool
	mu      sync.Mutex
	keys    [][]byte // keys that sent a request
	refused []string // reasons
}

func (f *fakeEnroller) Pending() bool { return f.pending.Load() }

func (f *fakeEnroller) Enroll(_ context.Context, key []byte, _ net.Addr, req []byte) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys = append(f.keys, key)
	return append([]byte("reply:"), req...)
}

func (f *fakeEnroller) Refused(_ []byte, _ net.Addr, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refused = append(f.refused, reason)
}

// TestEnrollOfferedOnlyWithInvitation: an unpinned key completes a
// handshake with the inviter only under EnrollALPN and only while an
// invitation is pending; it then gets exactly one reply to its request,
// and no tunnel (THREATS P1).
func TestEnrollOfferedOnlyWithInvitation(t *testing.T) {
	idb := newIdentity(t)
	b := startNode(t, idb, Config{})
	f := &fakeEnroller{}
	b.SetEnroller(f)
	stranger := startNode(t, newIdentity(t), Config{})
	ctx := context.Background()
	if _, err := stranger.Enroll(ctx, b.Addr().String(), idb.Public(), []byte("hi")); !errors.Is(err, ErrNoEnrollment) {
		t.Fatalf("enrollment without a pending invitation: %v, want ErrNoEnrollment", err)
	}
	f.pending.Store(true)
	reply, err := stranger.Enroll(ctx, b.Addr().String(), idb.Public(), []byte("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if string(reply) != "reply:hi" {
		t.Fatalf("reply %q", reply)
	}
	want := stranger.id.Public()
	f.mu.Lock()
	if len(f.keys) != 1 || !bytes.Equal(f.keys[0], want.Sign[:]) {
		t.Fatalf("enroller saw keys %x, want the stranger's", f.keys)
	}
	f.mu.Unlock()
	if st := b.Status(); len(st) != 0 {
		t.Fatalf("enrollment made a link: %+v", st)
	}
	// The joiner authenticates the inviter by the token's key.
	if _, err := stranger.Enroll(ctx, b.Addr().String(), newIdentity(t).Public(), []byte("hi")); err == nil {
		t.Fatal("joiner accepted an inviter with another key")
	}
}

// TestEnrollConnectionServesNoStream: a client on an enrollment
// connection that opens a stream gets none served, and a connection that
// sends no request is closed after enrollWait and reported (THREATS P1).
func TestEnrollConnectionServesNoStream(t *testing.T) {
	old := enrollWait
	enrollWait = time.Second
	t.Cleanup(func() { enrollWait = old })
	idb := newIdentity(t)
	b := startNode(t, idb, Config{})
	f := &fakeEnroller{}
	f.pending.Store(true)
	b.SetEnroller(f)
	s := startNode(t, newIdentity(t), Config{})
	addr := b.Addr().(*net.UDPAddr)
	s.dark.expect(addr, idb.Public())
	tc := s.clientTLS(s.cert, Peer{Name: "b", Key: idb.Public()}, addr)
	tc.NextProtos = []string{EnrollALPN}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	qc, err := s.tr.Dial(ctx, addr, tc, s.quicConfig(Config{}))
	if err != nil {
		t.Fatal(err)
	}
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Write(AppendRequest(nil, "echo"))
	st.SetReadDeadline(time.Now().Add(4 * time.Second))
	var buf [64]byte
	if n, err := st.Read(buf[:]); err == nil || n > 0 {
		t.Fatalf("enrollment connection answered a stream: %q %v", buf[:n], err)
	}
	select {
	case <-qc.Context().Done():
	case <-time.After(4 * time.Second):
		t.Fatal("enrollment connection without a request still open")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.refused) != 1 || f.refused[0] != "timeout" || len(f.keys) != 0 {
		t.Fatalf("refused %v, requests %d", f.refused, len(f.keys))
	}
}
