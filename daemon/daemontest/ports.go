package daemontest

import "github.com/dyad-tunnel/dyad/internal/freeport"

// FreeUDP returns a loopback UDP address for a server started later. Its
// port is free on TCP too and handed out once on this machine (see
// internal/freeport): a just-closed kernel-picked port is taken again by the
// next connect of any process, which is how one site's admin listener took
// another's forward port in CI.
func FreeUDP() (string, error) { return freeport.UDPTCP() }

// FreeTCP returns a loopback TCP address for a server started later, as
// FreeUDP does.
func FreeTCP() (string, error) { return freeport.UDPTCP() }

// FreeUDPTCP returns a loopback port free for both UDP and TCP, for a
// daemon with tunnel.tcp_listen: true, which takes both.
func FreeUDPTCP() (string, error) { return freeport.UDPTCP() }
