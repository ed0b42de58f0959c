package freeport

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDistinctAcrossProcesses: processes running at once (go test runs
// packages in parallel) never get the same port: each holds its own
// blocks. Four copies of this test binary take 300 ports each.
func TestDistinctAcrossProcesses(t *testing.T) {
	if os.Getenv("FREEPORT_CHILD") != "" {
		for range 300 {
			a, err := UDPTCP()
			if err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
			fmt.Println(a)
		}
		return
	}
	var cmds []*exec.Cmd
	var outs []*strings.Builder
	for range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDistinctAcrossProcesses$")
		cmd.Env = append(os.Environ(), "FREEPORT_CHILD=1")
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	seen := map[string]int{}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v\n%s", i, err, outs[i])
		}
		n := 0
		sc := bufio.NewScanner(strings.NewReader(outs[i].String()))
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "127.0.0.1:") {
				continue
			}
			n++
			if j, ok := seen[line]; ok && j != i {
				t.Fatalf("children %d and %d both got %s", j, i, line)
			}
			seen[line] = i
		}
		if n != 300 {
			t.Fatalf("child %d printed %d ports, want 300:\n%s", i, n, outs[i])
		}
	}
}
