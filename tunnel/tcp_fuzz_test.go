package tunnel

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dyad-tunnel/dyad/codec"
)

// yamuxFrame is one yamux frame header (version 0) and its body.
func yamuxFrame(typ byte, flags uint16, id, length uint32, body []byte) []byte {
	b := []byte{0, typ, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint32(b[4:], id)
	binary.BigEndian.PutUint32(b[8:], length)
	return append(b, body...)
}

func ctlMessage(typ byte, id uint32, code uint64) []byte {
	b := make([]byte, ctlSize)
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:], id)
	binary.BigEndian.PutUint64(b[5:], code)
	return b
}

// FuzzTCPFrames: whatever an authenticated peer sends inside TLS on the
// TCP transport (yamux frames, control messages on the control stream,
// stream bytes read by the codec as the record and request targets read
// them over QUIC) ends in an error or a clean end, never a panic or a
// hang, and the listener's connection always ends when the peer's bytes
// do. THREATS P8 on the TCP transport (before TLS there is nothing of
// ours to fuzz: crypto/tls reads the first bytes).
func FuzzTCPFrames(f *testing.F) {
	syn := yamuxFrame(1, 1, 1, 0, nil) // window update with SYN: stream 1
	pairing := make([]byte, 32)
	pairing[0] = 1
	sess, err := codec.NewSession(make([]byte, codec.SecretSize), pairing, codec.Config{Suite: codec.SuiteAES256GCM})
	if err != nil {
		f.Fatal(err)
	}
	var rec []byte
	w := sess.NewWriter(writerFunc(func(p []byte) (int, error) { rec = append(rec, p...); return len(p), nil }), 1, codec.FromInitiator)
	w.Write(AppendRequest(nil, "echo"))
	w.Close()
	data := yamuxFrame(0, 0, 1, uint32(len(rec)), rec)
	f.Add(append(append([]byte{}, syn...), data...))
	f.Add(append(append(append([]byte{}, syn...), data...), yamuxFrame(1, 4, 1, 0, nil)...))
	ack := yamuxFrame(1, 2, 2, 0, nil) // the control stream's ACK
	for _, m := range [][]byte{ctlMessage(ctlResetStream, 1, 0x22), ctlMessage(ctlStopSending, 1, 0x20),
		ctlMessage(ctlClose, 0, 0x10), ctlMessage(9, 0, 0), ctlMessage(ctlResetStream, 77, 1)} {
		f.Add(append(append(append([]byte{}, syn...), ack...), yamuxFrame(0, 0, 2, uint32(len(m)), m)...))
	}
	f.Add(yamuxFrame(3, 0, 0, 1, nil))             // go away, protocol error
	f.Add(yamuxFrame(2, 1, 0, 7, nil))             // ping
	f.Add(yamuxFrame(0, 0, 1, 1<<30, []byte{1}))   // data past any window
	f.Add(yamuxFrame(1, 1, 1, 1<<31, nil))         // a huge window update
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // bad version, short
	n := &Node{log: zerolog.Nop()}
	n.cfg.Store(newSnapshot(Config{KeepAlive: time.Second, IdleTimeout: 2 * time.Second}))
	f.Fuzz(func(t *testing.T, in []byte) {
		ours, theirs := net.Pipe()
		go io.Copy(io.Discard, theirs) // whatever we answer
		c, err := n.newMuxConn(context.Background(), ours, tls.ConnectionState{}, nil, true, 0)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			theirs.SetWriteDeadline(time.Now().Add(time.Second))
			theirs.Write(in)
			theirs.Close()
		}()
		var wg sync.WaitGroup
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		for {
			s, err := c.AcceptStream(ctx)
			if err != nil {
				break
			}
			wg.Add(1)
			go func() { // what serveStream does first: read the request record
				defer wg.Done()
				s.SetReadDeadline(time.Now().Add(time.Second))
				r := sess.NewReader(s, s.StreamID(), codec.FromInitiator)
				r.SetMaxRecord(maxRequestPayload)
				if req, err := r.Next(); err == nil {
					ParseRequest(req)
				}
				r.Release()
				s.CancelRead(codeRecord)
				s.CancelWrite(codeRecord)
			}()
		}
		select {
		case <-c.Context().Done():
		case <-time.After(3 * time.Second):
			t.Fatal("the connection outlived its peer's bytes")
		}
		wg.Wait()
		c.CloseWithError(codeShutdown, "")
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
