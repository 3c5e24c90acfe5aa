// Package agent owns the stdio agent process: it spawns it, frames JSON
// messages over its stdin and stdout, logs its stderr, and restarts it with
// backoff when it exits.
//
// # Concurrency
//
// Each process generation has three goroutines of its own: a reader that
// drains stdout continuously (so the agent never blocks on a full pipe,
// whatever the clients do), a writer that drains the stdin queue (a different
// goroutine from the reader: relaying both directions in one goroutine
// deadlocks once a pipe buffer's worth is in flight each way), and a stderr
// logger. A fourth goroutine waits for the process and reports its exit.
//
// Handler callbacks run on those goroutines and must not block: a blocked
// AgentMessage stops stdout from being drained, which is exactly the stall
// this package exists to prevent. A handler may call any Supervisor method.
//
// # Ordering
//
// For one generation N the handler sees AgentStarted(N), then every message
// the process wrote, in order, then AgentExited(N); and AgentExited(N) comes
// before AgentStarted(N+1). Messages carry their generation so anything that
// arrives late from a dead process can be told apart.
//
// # Process groups
//
// The agent runs in its own process group (Setpgid). Signals on Stop go to the
// whole group, and once the agent itself has exited the rest of its group is
// killed, so helpers it spawned (MCP servers, language servers) neither linger
// nor hold its pipes open.
package agent
