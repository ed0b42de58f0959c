package apiguard

import (
	"io"
	"net"

	"github.com/dyad-tunnel/dyad/tunnel"
)

// pipeConn drives g.Serve for the tests and package benchmarks as a
// tunnel.Conn: Write gives the client's bytes, Read what the client gets
// back, CloseWrite the client's end. The tunnel's pump calls Serve on its
// own goroutine instead; the pipes here stand for the stream.
type pipeConn struct {
	inR, outR *io.PipeReader
	inW, outW *io.PipeWriter
	up        tunnel.Conn
}

func wrap(g *Guard, peer string, up tunnel.Conn) *pipeConn {
	p := &pipeConn{up: up}
	p.inR, p.inW = io.Pipe()
	p.outR, p.outW = io.Pipe()
	go func() {
		g.Serve(peer, up, p.inR, p.outW)
		p.outW.Close()
		io.Copy(io.Discard, p.inR) // the client may still be sending, as the pump drains
	}()
	return p
}

func (p *pipeConn) Read(b []byte) (int, error)  { return p.outR.Read(b) }
func (p *pipeConn) Write(b []byte) (int, error) { return p.inW.Write(b) }
func (p *pipeConn) CloseWrite() error           { return p.inW.Close() }
func (p *pipeConn) SetLinger(sec int) error     { return p.up.SetLinger(sec) }

func (p *pipeConn) Close() error {
	p.inW.CloseWithError(net.ErrClosed)
	p.inR.CloseWithError(net.ErrClosed)
	p.outR.CloseWithError(net.ErrClosed)
	return p.up.Close()
}
