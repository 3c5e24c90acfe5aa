// Package loop is the only importer of gnet: it owns the listeners (Unix
// socket and TCP, accepted by its own goroutines and registered with one
// gnet engine; see accept.go), per-connection state, the
// protocol on each connection (NDJSON on the Unix socket; HTTP/1.1,
// WebSocket and SSE on TCP, every HTTP decision asked of package
// httpfront), and the draining of each connection's outbox into its
// socket. The TLS listener (package tlsserve) is its sibling, started by
// cmd; this package knows nothing of TLS.
//
// Concurrency: gnet callbacks (OnOpen, OnTraffic, OnClose) run on the
// connection's event-loop goroutine and must never block. The router pushes
// into a connection's outbox from any goroutine and wakes the connection
// (gnet Conn.Wake) only on an empty->non-empty transition; the loop then
// drains the outbox in OnTraffic, batching messages into one writev, and
// stops while gnet's outbound buffer is over its high watermark (gnet's
// buffer is unbounded, so the bound is ours). gnet has no "drained" hook:
// blocked connections are woken again from OnTick.
package loop
