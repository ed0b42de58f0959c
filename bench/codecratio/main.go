// Command codecratio reads `go test -bench` output of the codec package on
// standard input and prints, for each suite, operation and size, the median
// throughput of the codec next to the raw AEAD measured in the same run, and
// their ratio. It judges nothing by itself: timings on a shared machine are
// for people to read, never a reason for CI to fail.
//
//	go test ./codec -run '^$' -bench Record -count 5 | go run ./bench/codecratio
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// target is the bar: the codec round trip keeps at least 0.9 of the
// raw AEAD round trip at 16 KiB and above.
const target = 0.9

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "codecratio:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	// samples["codec"]["aes-256-gcm/roundtrip/16K"] = MB/s of each run
	samples := map[string]map[string][]float64{"aead": {}, "codec": {}}
	var order []string
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		kind, cell, mbps, ok := parse(sc.Text())
		if !ok {
			continue
		}
		if _, seen := samples["aead"][cell]; !seen && kind == "aead" {
			order = append(order, cell)
		}
		samples[kind][cell] = append(samples[kind][cell], mbps)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(order) == 0 {
		return fmt.Errorf("no BenchmarkRecord/.../aead lines with MB/s in the input")
	}
	fmt.Fprintf(out, "%-36s %12s %12s %7s %s\n", "suite/op/size", "AEAD MB/s", "codec MB/s", "ratio", "runs")
	for _, cell := range order {
		raw, codec := samples["aead"][cell], samples["codec"][cell]
		if len(codec) == 0 {
			return fmt.Errorf("%s: no codec measurement to compare with", cell)
		}
		ratio := median(codec) / median(raw)
		note := ""
		if strings.Contains(cell, "/roundtrip/") && !strings.HasSuffix(cell, "/1K") {
			note = fmt.Sprintf("  (target >= %.1f: %s)", target, map[bool]string{true: "met", false: "NOT met"}[ratio >= target])
		}
		fmt.Fprintf(out, "%-36s %12.0f %12.0f %6.3fx %d/%d%s\n", cell, median(raw), median(codec), ratio, len(raw), len(codec), note)
	}
	return nil
}

// parse reads one result line such as
// "BenchmarkRecord/aes-256-gcm/seal/1K/codec-2  974348  247.9 ns/op  4129.91 MB/s ...".
func parse(line string) (side, cell string, mbps float64, ok bool) {
	f := strings.Fields(line)
	name, found := strings.CutPrefix(f0(f), "BenchmarkRecord/")
	if !found || len(f) < 4 {
		return "", "", 0, false
	}
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		name = name[:i] // the GOMAXPROCS suffix
	}
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "", "", 0, false
	}
	cell, side = name[:i], name[i+1:]
	if side != "aead" && side != "codec" {
		return "", "", 0, false
	}
	for i := 1; i+1 < len(f); i++ {
		if f[i+1] == "MB/s" {
			v, err := strconv.ParseFloat(f[i], 64)
			return side, cell, v, err == nil
		}
	}
	return "", "", 0, false
}

func f0(f []string) string {
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
