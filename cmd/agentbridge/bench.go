package main

import (
	"os"

	"github.com/agentbridge/agentbridge/bench"
)

// runBench is `agentbridge bench`: the flags, scenarios and helpers live in
// package bench.
func runBench(args []string) int {
	return bench.Run(args, os.Stdout, os.Stderr, bench.Build{Version: version, Commit: revision()})
}
