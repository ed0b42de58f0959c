package tunnel

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/dyad-tunnel/dyad/audit"
	"github.com/dyad-tunnel/dyad/codec/codectest"
	"github.com/dyad-tunnel/dyad/tunnel/tunneltest"
)

// lineGuard is a StreamGuard for the tests: it passes the client's lines to
// upstream one at a time and each reply back, and ends the stream early
// after a line "stop", answering "bye".
type lineGuard struct{}

func (lineGuard) Serve(peer string, up Conn, in io.Reader, out io.Writer) {
	defer up.CloseWrite()
	br, ubr := bufio.NewReader(in), bufio.NewReader(up)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if line == "stop\n" {
			io.WriteString(out, "bye\n")
			return
		}
		if _, err := io.WriteString(up, line); err != nil {
			return
		}
		reply, err := ubr.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := io.WriteString(out, reply); err != nil {
			return
		}
	}
}

func guardedPair(t *testing.T) (a, b *Node) {
	echo, _ := tunneltest.EchoServer(t)
	return pairLimited(t, echo, Limits{}, Limits{IdleTimeout: 5 * time.Second}, func(c *Config) {
		c.Services[0].Guard = lineGuard{}
	})
}

// TestGuardedStream: a guarded service's stream runs through its
// StreamGuard on the pump's goroutine (pumpServer): lines pass both ways,
// the client's end closes the stream cleanly with its byte counts, and a
// guard that ends the stream early gets its last answer to the client,
// then a clean end when the client stops, or a reset when it keeps sending.
func TestGuardedStream(t *testing.T) { bothTransports(t, testGuardedStream) }

func testGuardedStream(t *testing.T) {
	a, b := guardedPair(t)

	c, done := forward(t, a, "echo")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for _, line := range []string{"one\n", "two\n"} {
		io.WriteString(c, line)
		if got, err := br.ReadString('\n'); got != line {
			t.Fatalf("got %q, %v; want %q", got, err, line)
		}
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("after the client's end: %q, %v; want a clean EOF", rest, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("forward: %v", err)
	}
	event(t, b, audit.StreamClosed, attribute.String(audit.KeyPeer, "a"), attribute.Int64(audit.KeyBytesSent, 8), attribute.Int64(audit.KeyBytesReceived, 8))

	// Ended early, the client stops: the answer arrives, then the end.
	c, done = forward(t, a, "echo")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "stop\n")
	if got, err := io.ReadAll(c); string(got) != "bye\n" || err != nil {
		t.Fatalf("early end: %q, %v; want \"bye\\n\" and EOF", got, err)
	}
	c.Close()
	<-done

	// Ended early, the client keeps sending past what the guard drains:
	// the answer still arrives first, and the exporter resets the stream.
	c, done = forward(t, a, "echo")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "stop\n")
	flooded := make(chan struct{})
	go func() {
		defer close(flooded)
		c.Write(bytes.Repeat([]byte("x"), 4*drainLimit))
	}()
	if got, _ := io.ReadAll(c); !strings.HasPrefix(string(got), "bye\n") {
		t.Fatalf("flooding client: %q; want \"bye\\n\" first", got)
	}
	// The answer and its end come before the flood is through: closing
	// now could end the stream from A's side before B has seen more than
	// it drains (CI, -race: no reset). The write ends when B's reset has
	// closed the forward, or at the deadline.
	<-flooded
	c.Close()
	<-done
	event(t, b, audit.StreamClosed, attribute.String(audit.KeyPeer, "a"), attribute.String(audit.KeyCloseReason, "reset"))
}

// TestGuardedStreamRecordRejected: a record that fails on a guarded stream
// resets it with the record code and is counted and audited, as on any
// other stream (THREATS P3).
func TestGuardedStreamRecordRejected(t *testing.T) {
	a, b := guardedPair(t)
	s, f := rawStream(t, a)
	wire := f.Preamble(nil)
	wire = f.Seal(wire, codectest.Data, AppendRequest(nil, "echo"))
	wire = f.Seal(wire, codectest.Data, []byte("one\n"))
	wire = f.Seal(wire, codectest.Close, nil)
	wire = append(wire, "trailing"...)
	s.Write(wire)
	s.Close()
	if code := awaitReset(t, s); code != codeRecord {
		t.Fatalf("stream reset with code %#x, want %#x (record rejected)", code, codeRecord)
	}
	event(t, b, audit.RecordRejected, attribute.String(audit.KeyPeer, "a"), attribute.String(audit.KeyReason, "trailing_data"))
	if got := b.Stats.Snapshot()["records_rejected.trailing_data"]; got != 1 {
		t.Fatalf("records_rejected.trailing_data = %d, want 1", got)
	}
}
