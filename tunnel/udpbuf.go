package tunnel

import (
	"net"

	"golang.org/x/sys/unix"
)

// wantUDPBuffer is the socket buffer quic-go asks for (7 MiB); below it,
// single-stream throughput drops (../shared/FACTS.md: about 17%).
const wantUDPBuffer = 7 << 20

// checkUDPBuffers warns once, with the fix, when the kernel kept the UDP
// socket's buffers below what quic-go asked for. quic-go's own warning is
// turned off by the daemon so the operator sees one clear line.
func (n *Node) checkUDPBuffers(pc net.PacketConn) {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return
	}
	var rcv, snd int
	raw.Control(func(fd uintptr) {
		rcv, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		snd, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	})
	if rcv >= wantUDPBuffer && snd >= wantUDPBuffer {
		return
	}
	n.log.Warn().Int("rcvbuf", rcv).Int("sndbuf", snd).Int("want", wantUDPBuffer).
		Str("fix", "sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000").
		Msg("UDP socket buffers are smaller than QUIC needs; throughput will suffer")
}
