// Package delivery owns what happens to a message between the router and a
// socket: the per-connection bounded queue (ring), the classes that decide
// what may be dropped, gap reporting for every data event a connection did
// not get, the degrade policy for slow consumers (breaker, bridge/summary),
// and the admission limits on a connection's input. It is
// transport-agnostic: the gnet loop (Unix socket, WebSocket, SSE) and the TLS
// listener both drain an Outbox and only choose how a message is framed.
//
// # Planes
//
// Control messages (responses, agent requests, bridge/* answers, errors,
// bridge/gap, bridge/summary) are never dropped: one that does not fit
// under the queue's control ceiling closes the connection (WebSocket 1013)
// and its client resumes by cursor. Data messages (agent notifications) are
// bounded: past the data ceiling the oldest are evicted, and a consumer
// that stays behind is either degraded or disconnected, as its policy says.
//
// # Gaps are exact
//
// Every sequenced data event (one with a session and a seq) that was queued
// for a connection either reaches its socket or is named by exactly one
// bridge/gap {sessionId, fromSeq, toSeq, reason}, in stream order: a gap is
// written after the events of its session that precede it and before the
// ones that follow it. Four things skip events: eviction past the data
// ceiling (tombstones in the ring), a push that found no free slot, the
// purge of the backlog when a connection is degraded, and the events a
// degraded connection is not sent. Notifications without a session have no
// seq; they are counted when dropped but cannot be named.
//
// # Degrade
//
// Each Outbox has a breaker.Breaker fed by the drainer (Observe, once per
// drain attempt): unhealthy when the queue is over its high watermark (in
// bytes or slots) or the transport stayed blocked, its peer taking
// nothing, past DrainDeadline,
// healthy when it is under its low watermark and not blocked. Pushes feed
// it too (Send, any goroutine): each data push that finds the queue at its
// ceiling (one had to evict since it was last under its high watermark)
// is unhealthy, so a flood the drainer takes in few attempts still trips
// it. When the
// breaker opens, a "degrade" connection stops receiving the data plane: its
// queued backlog is purged to gaps and, per session, the outbox accumulates
// what it skips and queues, at most once per SummaryInterval, a bridge/gap
// naming the skipped seqs followed by bridge/summary {sessionId, seq,
// dropped, bytes, text} (text: the tail of the agent's streamed message
// text). When the breaker half-opens, full delivery resumes at once; the
// last skipped stretch of each session goes out as a final gap and summary
// before that session's next event (or as soon as the queue is empty),
// unless the transport still holds bytes its peer has not taken: then the
// connection stays degraded until the peer takes them (or healthy
// observations close the breaker), and a peer that took nothing since
// the previous drain attempt re-opens it. The timer queues gaps and
// summaries only within the room kept for them (half the control slots,
// since a purged backlog's tombstones keep the others until the peer
// reads, and a quarter of the control bytes); past it they wait, the
// accumulators counting, so a stalled reader neither fills its control
// queue nor loses exactness. Skipped seqs that follow each other share one
// gap whatever made each be skipped (degraded, no free slot), so a stalled
// reader holds one run per session however often the breaker probes it. A "catchup" connection is never
// degraded: it refuses live events once its queue is over its watermark
// or its peer took nothing since the last drain attempt (Outbox.Taking
// clears that when the transport holds nothing), and is fed from the
// session log instead. A "disconnect" connection is closed instead (CloseTryAgain), both when its
// breaker opens and when a data event would need an eviction.
//
// # Footprint
//
// A queued message costs its connection one 32-byte slot (the message is
// shared by every recipient); an evicted one keeps its slot until drained
// but not its payload. Per session with something to report, a few hundred
// bytes of accounting and the text tail. A "catchup" connection whose peer
// took nothing since the last drain attempt keeps no queued events, and of
// the messages its transport refused (PartialWriter) only the one the next
// attempt writes: the rest are handed back to the hub (Hooks.Recede,
// Endpoint.takeEvents, Hub.Recede), which feeds them from the session log
// again once the peer reads. No connection keeps drain or write scratch
// between flushes (they are pooled).
//
// # Concurrency
//
// Send, SetPolicy and Close are safe from any goroutine; Drain and Observe
// belong to the one goroutine that writes the connection's socket. The
// summary timer runs on its own goroutine. One short mutex serialises the
// slow path (degraded or gaps pending) against the drainer and the timer;
// a healthy connection's Send takes only the ring's lock.
package delivery
