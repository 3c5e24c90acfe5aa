package main

import (
	"fmt"
	"os"
)

func runBench(args []string) int {
	fmt.Fprintln(os.Stderr, "agentbridge bench: the benchmark suite is not in this build yet")
	return 1
}
