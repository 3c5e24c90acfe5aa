// Package ring owns the bounded per-connection outbound queue.
//
// A Queue is one FIFO per connection. Any goroutine (the router, a
// session, a timer) may Push; only the connection's event loop pops. Every
// entry carries a Class, but there is one FIFO, not one per class: a
// JSON-RPC response (Control) must never overtake the notifications (Data)
// the agent sent before it. Classes decide only what happens under
// pressure:
//
//   - Control is never evicted. If it does not fit (slots or
//     MaxControlBytes) Push returns ErrControlOverflow and queues nothing;
//     the caller closes the connection and the client resumes by cursor.
//   - Data is bounded by MaxDataBytes. Past it the oldest live data entries
//     are evicted: they become tombstones that keep their slot and their
//     value, so they still come out in order, flagged Evicted, and the
//     drainer can report a bridge/gap for exactly the events it skipped.
//
// HighWater and LowWater (bytes of live data) let the caller degrade a
// connection before anything is evicted, and restore it only once the
// queue has really drained (hysteresis).
//
// A few tools serve the delivery policy built on top: ControlSlots keeps
// slots that data may not take (a burst of small events must not take the
// slot a response needs); PushNoEvict refuses data that would need an
// eviction, for consumers that would rather be disconnected; EvictData
// turns the whole live backlog into tombstones when a consumer is
// degraded; SetOnEvict lets the owner drop an evicted value's payload, so
// that tombstones, which keep their slots until drained, keep nothing else
// alive; Level reads occupancy and counters under one lock.
//
// # Wake-up contract
//
// Push reports wasEmpty on the empty to non-empty transition; the caller
// wakes the event loop only then. In exchange the drainer must keep calling
// PopBatch until it returns nothing (or re-arm itself) before it sleeps: a
// Push that found the queue non-empty wakes nobody.
//
// # Footprint
//
// Slots are allocated lazily and grow in powers of two from 16 up to
// MaxItems. A queue that never received anything holds no slot array; one
// that did holds 16 slots (16*24 = 384 bytes when T is a pointer). An array
// grown past 64 slots by a burst is released when the drainer empties the
// queue, so 10,000 idle connections cost about 10,000 * (176 bytes of
// Queue + 384), about 5.6 MB, not 10,000 * MaxItems slots. The price is one
// regrowth (16, 32, ... slots) per burst deeper than 64 entries.
//
// # Locking
//
// One sync.Mutex guards everything; it is held for O(1) work per Push
// (amortised: the eviction cursor never rescans entries already known to
// hold no live data) and for a bounded copy per PopBatch. Push and PopBatch
// do not allocate in steady state.
package ring
