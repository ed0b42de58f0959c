package main

import (
	"strings"
	"testing"
)

// TestParseSS: the exporting daemon's TCP connections (dyad-tcp) are read
// from ss: window, segments, retransmissions and BBR's state, in the
// order of the peer's address (two lines of a collapsed repetition of
// issue 21's 1% loss cell; the first connection is past startup at 7.9
// Mbit/s).
func TestParseSS(t *testing.T) {
	out := "0      4155760      10.99.0.2:27932    10.99.0.1:58168\n" +
		"\t skmem:(r0,rb190182,t0,tb4194304,f0,w0,o0,bl0,d0) bbr wscale:10,10 rto:244 rtt:42.5/0.8 ato:40 mss:1448 pmtu:1500 rcvmss:1448 advmss:1448 cwnd:18 bytes_sent:2247 segs_out:20 segs_in:20 bbr:(bw:566864bps,mrtt:40.756,pacing_gain:2.88672,cwnd_gain:2.88672) send 2955102bps retrans:0/3\n" +
		"0      0      10.99.0.2:27932    10.99.0.1:58158\n" +
		"\t skmem:(r0,rb568614,t0,tb4194304,f0,w0,o0,bl0,d0) bbr wscale:10,10 rto:244 rtt:42.083/0.447 ato:40 mss:1448 pmtu:1500 rcvmss:1448 advmss:1448 cwnd:76 ssthresh:790 segs_out:41150 segs_in:5677 bbr:(bw:7948576bps,mrtt:38.911,pacing_gain:1.25,cwnd_gain:2) send 407087150bps retrans:0/2573 rcv_space:72600\n"
	got := parseSS(out)
	want := []connWindow{
		{Index: 0, CwndBytes: 76 * 1448, PacketsSent: 41150, PacketsLost: 2573, BBRMbps: 7.948576, BBRPhase: "probe_bw"},
		{Index: 1, CwndBytes: 18 * 1448, PacketsSent: 20, PacketsLost: 3, BBRMbps: 0.566864, BBRPhase: "startup"},
	}
	if len(got) != len(want) {
		t.Fatalf("parsed %d connections, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("connection %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if s := windowChange(got, got); !strings.Contains(s, "0: 107→107 (BBR at start: probe_bw, 7.9 Mbit/s)") {
		t.Errorf("windowChange: %q", s)
	}
	if got := parseSS("0 0 10.99.0.2:1 10.99.0.1:2\n\t cubic cwnd:10 mss:1000\n"); len(got) != 1 || got[0].BBRPhase != "" || got[0].CwndBytes != 10000 {
		t.Errorf("a cubic connection: %+v", got)
	}
}
