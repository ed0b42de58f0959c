package tunnel

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/audit/audittest"
	"github.com/dyad-tunnel/dyad/audit/journal"
	"github.com/dyad-tunnel/dyad/codec"
	"github.com/dyad-tunnel/dyad/codec/codectest"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// rawStream opens a stream on a's tunnel to its peer b and returns it with a
// Forger for its initiator direction: the test plays a paired peer that
// seals whatever records it likes with the tunnel's real keys.
func rawStream(t *testing.T, a *Node) (muxStream, *codectest.Forger) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l := a.link("b")
	tc, err := l.conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tc.streamDone) // conn placed the stream on tc
	state := tc.qc.TLSState()
	secret, err := state.ExportKeyingMaterial(exporterLabel, nil, codec.SecretSize)
	if err != nil {
		t.Fatal(err)
	}
	s, err := tc.qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.CancelRead(0); s.CancelWrite(0) })
	pairing, err := tc.local.PairingSecret(l.current().Key)
	if err != nil {
		t.Fatal(err)
	}
	f, err := codectest.NewForger(secret, pairing, tc.sess.Suite(), uint64(s.StreamID()), codec.FromInitiator)
	if err != nil {
		t.Fatal(err)
	}
	return s, f
}

// awaitReset reads s until the peer resets it (at most 5 s) and returns the
// reset's code (over TCP too: tcp.go carries the codes).
func awaitReset(t *testing.T, s muxStream) quic.StreamErrorCode {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, s)
	if ts, ok := s.(*tcpStream); ok && err == nil {
		// The peer's FIN follows its reset_stream on the wire, but our
		// read may see the FIN before the control stream's reader has
		// taken the reset (tcpStream): wait for that.
		for i := 0; i < 100 && ts.readErr.Load() == nil; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if e := ts.readErr.Load(); e != nil {
			err = e
		}
	}
	var se *quic.StreamError
	if !errors.As(err, &se) || !se.Remote {
		t.Fatalf("stream not reset by the peer: %v", err)
	}
	return se.ErrorCode
}

// TestKeyUpdateFlood: a paired peer that sends thousands of empty key
// updates on a stream gets the stream reset at the first one (it is not
// due), audited once; the journal does not grow with the flood. THREATS P5.
func TestKeyUpdateFlood(t *testing.T) { matrixTransports(t, testKeyUpdateFlood) }

func testKeyUpdateFlood(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b := pair(t, echo)
	s, f := rawStream(t, a)
	wire := f.Preamble(nil)
	wire = f.Seal(wire, codectest.Data, AppendRequest(nil, "echo"))
	const flood = 5000
	for range flood {
		wire = f.Seal(wire, codectest.KeyUpdate, nil)
	}
	go s.Write(wire) // fails once b stops the stream
	if code := awaitReset(t, s); code != codeRecord {
		t.Fatalf("stream reset with code %#x, want %#x (record rejected)", code, codeRecord)
	}
	event(t, b, audit.RecordRejected, attribute.String(audit.KeyPeer, "a"), attribute.String(audit.KeyReason, "key_update_not_due"))
	v, _ := journals.Load(b)
	tj := v.(*audittest.Journal)
	if n := len(tj.Named(audit.KeyUpdated)); n != 0 {
		t.Errorf("%d key updates journaled, want none", n)
	}
	if n := len(tj.Named(audit.RecordRejected)); n != 1 {
		t.Errorf("%d records rejected journaled, want 1", n)
	}
	if got := b.Stats.Snapshot()["records_rejected.key_update_not_due"]; got != 1 {
		t.Errorf("records_rejected.key_update_not_due = %d, want 1", got)
	}
}

// TestTrailingDataResets: bytes after the close record reset the stream,
// whether they come in the same read as the close record (the codec's
// ErrTrailingData) or later (the tunnel waits for the FIN).
func TestTrailingDataResets(t *testing.T) { matrixTransports(t, testTrailingDataResets) }

func testTrailingDataResets(t *testing.T) {
	echo, _ := tunneltest.EchoServer(t)
	a, b := pair(t, echo)

	s, f := rawStream(t, a)
	wire := f.Preamble(nil)
	wire = f.Seal(wire, codectest.Data, AppendRequest(nil, "echo"))
	wire = f.Seal(wire, codectest.Close, nil)
	wire = append(wire, "trailing"...)
	s.Write(wire)
	s.Close()
	if code := awaitReset(t, s); code != codeRecord {
		t.Fatalf("same read: stream reset with code %#x, want %#x (record rejected)", code, codeRecord)
	}
	event(t, b, audit.RecordRejected, attribute.String(audit.KeyPeer, "a"), attribute.String(audit.KeyReason, "trailing_data"))

	s, f = rawStream(t, a)
	wire = f.Preamble(nil)
	wire = f.Seal(wire, codectest.Data, AppendRequest(nil, "echo"))
	wire = f.Seal(wire, codectest.Close, nil)
	s.Write(wire)
	time.Sleep(200 * time.Millisecond) // b has read the close record
	s.Write([]byte("late"))
	s.Close()
	if code := awaitReset(t, s); code != codeProtocol && code != codeRecord {
		t.Fatalf("later read: stream reset with code %#x, want %#x or %#x", code, codeProtocol, codeRecord)
	}
	// Counted and audited alike, whichever read saw them.
	v, _ := journals.Load(b)
	tj := v.(*audittest.Journal)
	trailing := func([]journal.Entry) bool {
		n := 0
		for _, e := range tj.Named(audit.RecordRejected) {
			if e.Attr(audit.KeyReason) == attribute.StringValue("trailing_data") {
				n++
			}
		}
		return n == 2
	}
	if !tj.WaitFor(5*time.Second, trailing) {
		t.Fatal("trailing bytes read after the close record were not audited as trailing_data")
	}
	if got := b.Stats.Snapshot()["records_rejected.trailing_data"]; got != 2 {
		t.Fatalf("records_rejected.trailing_data = %d, want 2", got)
	}
}
