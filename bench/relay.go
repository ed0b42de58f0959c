package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
)

// The quic-relay baseline: what a user would write in an afternoon with
// quic-go. One QUIC connection, one stream per TCP connection, plain
// io.Copy both ways, no record layer, no policy. It uses the same
// flow-control windows as dyad so that the comparison measures dyad's own
// work, not tuning.

func relayQUICConfig() *quic.Config {
	return &quic.Config{
		MaxIdleTimeout:                 30 * time.Second,
		KeepAlivePeriod:                5 * time.Second,
		InitialStreamReceiveWindow:     1 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 2 << 20,
		MaxConnectionReceiveWindow:     32 << 20,
		MaxIncomingStreams:             1 << 14,
	}
}

const relayALPN = "bench-relay"

// relayOut listens for QUIC and dials target for each stream.
func relayOut(args []string) error {
	fs := flag.NewFlagSet("relay-out", flag.ExitOnError)
	target := fs.String("target", "", "TCP address to dial for each stream")
	listen := fs.String("listen", "127.0.0.1:0", "UDP address to listen on")
	fs.Parse(args)
	cert, err := selfSigned()
	if err != nil {
		return err
	}
	ln, err := quic.ListenAddr(*listen, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{relayALPN}}, relayQUICConfig())
	if err != nil {
		return err
	}
	fmt.Println("listening", ln.Addr())
	ctx := signalContext()
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			return nil
		}
		go func() {
			for {
				s, err := conn.AcceptStream(ctx)
				if err != nil {
					return
				}
				go func() {
					up, err := net.Dial("tcp", *target)
					if err != nil {
						s.CancelRead(1)
						s.CancelWrite(1)
						return
					}
					splice(up.(*net.TCPConn), s)
				}()
			}
		}()
	}
}

// relayIn listens on TCP and opens a stream to peer for each connection.
func relayIn(args []string) error {
	fs := flag.NewFlagSet("relay-in", flag.ExitOnError)
	peer := fs.String("peer", "", "UDP address of relay-out")
	fs.Parse(args)
	ctx := signalContext()
	conn, err := quic.DialAddr(ctx, *peer, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{relayALPN}}, relayQUICConfig())
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	fmt.Println("listening", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil
		}
		go func() {
			s, err := conn.OpenStreamSync(ctx)
			if err != nil {
				c.Close()
				return
			}
			splice(c.(*net.TCPConn), s)
		}()
	}
}

// splice copies both ways, mapping FIN to FIN and a failure to a reset
// (without the cancel, an abandoned stream would pin its flow-control
// credit and stall the connection).
func splice(c *net.TCPConn, s *quic.Stream) {
	done := make(chan struct{})
	go func() {
		if _, err := io.Copy(s, c); err != nil {
			s.CancelWrite(1)
		} else {
			s.Close()
		}
		close(done)
	}()
	if _, err := io.Copy(c, s); err != nil {
		s.CancelRead(1)
		c.Close()
	} else {
		c.CloseWrite()
	}
	<-done
	c.Close()
}

func selfSigned() (tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

func signalContext() context.Context {
	ctx, _ := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	return ctx
}
