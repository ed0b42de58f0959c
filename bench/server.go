package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
)

// The target server of every scenario. A client's first byte picks the mode:
const (
	modeUpload   = 'U' // client sends until it half-closes; server reads and discards
	modeDownload = 'D' // server sends until the client closes
	modeRR       = 'R' // 1 KiB request, 1 KiB response, repeated
)

const msgSize = 1024

// server is the TCP target on loopback, shared by all systems. It runs as
// its own process (this binary's "serve"), so that its descriptors do not
// count against the load client's: the idle scenario holds ten thousand
// connections under a 20 000 open-file limit.
type server struct {
	proc *child
	at   string
}

func startServer(pl *placement) (*server, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	argv := pl.argv(true, self, "serve", "-listen", net.JoinHostPort(pl.host(), "0"))
	c, sc, err := startChild(argv[0], argv[1:]...)
	if err != nil {
		return nil, err
	}
	addr, err := waitLine(sc, "listening ")
	if err != nil {
		c.stop()
		return nil, err
	}
	return &server{proc: c, at: addr}, nil
}

func (s *server) addr() string { return s.at }

func (s *server) close() { s.proc.stop() }

// serve is the "serve" subcommand: the target server process.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "TCP address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	raiseFileLimit()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println("listening", ln.Addr())
	go func() { <-signalContext().Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil
		}
		go handle(c.(*net.TCPConn))
	}
}

var bulkBuf = make([]byte, 256<<10)

func handle(c *net.TCPConn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case modeUpload:
		io.Copy(io.Discard, c)
	case modeDownload:
		for {
			if _, err := c.Write(bulkBuf); err != nil {
				return
			}
		}
	case modeRR:
		buf := make([]byte, msgSize)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
}

// rrOnce performs one request/response on an open connection in mode R.
func rrOnce(c net.Conn, buf []byte) error {
	if _, err := c.Write(buf[:msgSize]); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf[:msgSize])
	return err
}

// clientDial is how the load client connects: on loopback, or from the
// importing namespace while the emulated-link scenarios run.
var clientDial = dialLoopback

func dialLoopback(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }

// dialMode connects to addr and sends the mode byte.
func dialMode(addr string, mode byte) (net.Conn, error) {
	c, err := clientDial(addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{mode}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

var errShort = errors.New("short transfer")
