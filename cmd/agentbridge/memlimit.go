package main

import (
	"log/slog"
	"os"
	"runtime/debug"
)

// minMemoryHeadroom is the least the soft memory limit leaves beside the
// session logs' budget: connections, their queues, messages in flight, the
// runtime itself.
const minMemoryHeadroom = 64 << 20

// memoryLimit is the soft memory limit serve gives the Go runtime:
// --replay-memory plus as much again (at least minMemoryHeadroom), or 0
// (none) when the user set GOMEMLIMIT (gomemlimit is its value; "off"
// included). Without a limit the collector lets the heap grow to twice what
// survived the last cycle (GOGC 100), so logs holding their full budget
// make the daemon's heap about twice that plus everything else; with it the
// collector runs earlier as the heap nears the limit. A live heap above the
// limit makes it collect more often, never with more than half the CPU (the
// runtime's own cap): a deployment whose connections hold more than the
// headroom should set GOMEMLIMIT (docs/operations.md).
func memoryLimit(replayMemory int, gomemlimit string) int64 {
	if gomemlimit != "" {
		return 0
	}
	return int64(replayMemory) + max(int64(replayMemory), minMemoryHeadroom)
}

// setMemoryLimit applies memoryLimit to the runtime.
func setMemoryLimit(replayMemory int, log *slog.Logger) {
	if limit := memoryLimit(replayMemory, os.Getenv("GOMEMLIMIT")); limit > 0 {
		debug.SetMemoryLimit(limit)
		log.Debug("soft memory limit set from --replay-memory (GOMEMLIMIT unset)", "bytes", limit)
	}
}
