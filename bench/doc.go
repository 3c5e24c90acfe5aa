// Package bench is `agentbridge bench`: the load generator and benchmark
// suite. It owns the scenarios (rtt, throughput, fanout, idle, stall,
// reconnect), the baselines measured beside the bridge in the same run
// (the same agent over a socketpair, a Go net echo, a gws echo and
// broadcast server, websocketd), the result types, and the outputs: the
// table, --json, --plot (gonum/plot), --report and --history.
//
// It is black-box: it starts `agentbridge serve` as a child process (or
// targets a running one) and talks to it over real sockets, NDJSON on the
// Unix socket and a hand-written RFC 6455 client over TCP that batches
// frames into one write, so the load generator is not what is measured. It
// imports the wire format (codec/jsonrpc, codec/ws) and nothing of the
// daemon (loop, session, agent).
//
// Concurrency: Run drives the scenarios one after another from the calling
// goroutine. Inside a scenario each client connection has one reader
// goroutine and at most one writer (msgConn documents which side owns
// what); counters shared with the driver are atomics, and latency goes
// into per-client batches merged into sharded HdrHistograms. Every run is
// bounded by --warmup + --duration + --timeout through its context, which
// closes the connections when it ends.
//
// The helper processes (`agentbridge bench echo-agent`, `agentbridge bench
// helper-server`) are dispatched by Run too, so one binary carries
// everything a run needs.
package bench
