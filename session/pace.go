package session

import (
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// reinitialising reports whether client traffic must wait: a restarted
// agent is being initialised again with the cached initialize (the first
// initialize of all is not held: its own client waits for the answer).
// Precondition: h.mu held.
func (h *Hub) reinitialising() bool {
	return h.init.inflight && h.init.response != nil
}

// hold keeps a client message until the re-initialisation completes.
// Precondition: h.mu held.
func (h *Hub) hold(cl *Client, msg []byte, hd jsonrpc.Header) {
	if len(h.init.held) >= maxHeld {
		if hd.Kind == jsonrpc.KindRequest {
			h.replyError(cl, hd.ID, codeOverloaded, "the agent is being re-initialised after a restart and too many requests are waiting; retry shortly")
		}
		return
	}
	h.init.held = append(h.init.held, heldMsg{cl: cl, msg: clone(msg)})
}

// releaseHeld routes the held messages, in arrival order, once the agent is
// initialised (or failed). Precondition: h.mu held.
func (h *Hub) releaseHeld() {
	held := h.init.held
	h.init.held = nil
	for _, m := range held {
		if !m.cl.closed {
			h.route(m.cl, m.msg)
		}
	}
}

// failHeld answers held requests with -32003 when the agent died again
// before its re-initialisation finished. Precondition: h.mu held.
func (h *Hub) failHeld(why string) {
	held := h.init.held
	h.init.held = nil
	for _, m := range held {
		if hd, err := jsonrpc.Peek(m.msg); err == nil && hd.Kind == jsonrpc.KindRequest {
			h.replyError(m.cl, hd.ID, codeAgentUnavailable, why)
		}
	}
}

// Replay pacing. An attach with a cursor does not queue its whole replay at
// once (10,000 events would overflow a connection's queue and get it closed
// as a slow consumer); it queues a chunk, and the transport calls Pump
// whenever the connection's queue has drained, until the client has caught
// up with the live stream. Live events of the session are not pushed to a
// catching-up client: they are read from the log in order, so replay and
// live meet with no hole and no duplicate.
const (
	pumpEvents = 256
	pumpBytes  = 256 << 10
)

// A client's catch-up cursors (Client.catchup) are read and written
// through these, under cl.cmu; an entry for session s only with s's lock
// (or h.mu exclusively) held too.

func (cl *Client) cursor(s *Session) (uint64, bool) {
	cl.cmu.Lock()
	cur, ok := cl.catchup[s]
	cl.cmu.Unlock()
	return cur, ok
}

// setCursor sets cl's cursor of s; a new one takes cl out of s's
// fan-out (Session.live). A client's first cursor counts it in
// Stats.CatchingUp.
func (h *Hub) setCursor(cl *Client, s *Session, after uint64) {
	cl.cmu.Lock()
	if cl.catchup == nil {
		cl.catchup = make(map[*Session]uint64)
	}
	_, had := cl.catchup[s]
	cl.catchup[s] = after
	if !cl.catching.Load() {
		cl.catching.Store(true)
		h.st.catching.Add(1)
	}
	cl.cmu.Unlock()
	if !had {
		s.leaveLive(cl)
	}
}

// endCursor ends cl's cursor of s; cl rejoins s's fan-out if still
// attached.
func (h *Hub) endCursor(cl *Client, s *Session) {
	cl.cmu.Lock()
	_, had := cl.catchup[s]
	delete(cl.catchup, s)
	delete(cl.disk, s)
	if len(cl.catchup) == 0 && cl.catching.Load() {
		cl.catching.Store(false)
		h.st.catching.Add(-1)
	}
	cl.cmu.Unlock()
	if had {
		s.joinLive(cl)
	}
}

// dropCursors forgets cl's cursors as it closes: it no longer counts in
// Stats.CatchingUp. Precondition: h.mu held exclusively (nothing pumps).
func (h *Hub) dropCursors(cl *Client) {
	cl.cmu.Lock()
	if cl.catching.Load() {
		cl.catching.Store(false)
		h.st.catching.Add(-1)
	}
	cl.catchup, cl.disk = nil, nil
	cl.cmu.Unlock()
}

// cursorSessions lists the sessions being paced out to cl.
func (cl *Client) cursorSessions() []*Session {
	cl.cmu.Lock()
	defer cl.cmu.Unlock()
	out := make([]*Session, 0, len(cl.catchup))
	for s := range cl.catchup {
		out = append(out, s)
	}
	return out
}

// startCatchup makes cl catch up on s from after (exclusive).
// Precondition: h.mu held exclusively.
func (h *Hub) startCatchup(cl *Client, s *Session, after uint64) {
	if after >= s.seq {
		return
	}
	h.setCursor(cl, s, after)
	h.pumpSession(cl, s)
}

// Pump queues the next chunk of every replay still being paced out to cl.
// Transports call it from the goroutine that drains cl's queue, when the
// queue is empty. It reports whether it queued anything. It holds the
// routing lock shared, and each session's lock in turn: pumps of different
// clients, and the live stream of other sessions, go on meanwhile. Safe
// from any goroutine.
func (h *Hub) Pump(cl *Client) bool {
	if !cl.catching.Load() {
		return false
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	if cl.closed {
		return false
	}
	queued := false
	for _, s := range cl.cursorSessions() {
		s.mu.Lock()
		if h.pumpSession(cl, s) {
			queued = true
		}
		s.mu.Unlock()
	}
	return queued
}

// pumpSession queues up to one chunk of s's log after cl's cursor, with a
// bridge/gap for anything the log no longer holds, and switches cl to live
// delivery once it has caught up. Precondition: h.mu held exclusively, or
// shared with s.mu.
func (h *Hub) pumpSession(cl *Client, s *Session) bool {
	cur, ok := cl.cursor(s)
	if !ok {
		return false
	}
	if _, attached := cl.attached[s.ID]; !attached {
		h.endCatchup(cl, s)
		return false
	}
	if floor := memFloor(s); cur+1 < floor {
		if r := h.logReader(s); r != nil {
			return h.pumpDisk(cl, s, cur, floor-1, r) // disklog.go
		}
	}
	events := s.log.sinceN(cur, pumpEvents, pumpBytes)
	last, all := h.sendReplay(cl, s, cur, events, len(events) == 0)
	if all && last >= s.seq {
		h.endCatchup(cl, s) // caught up: live delivery from the next event
		return true
	}
	h.setCursor(cl, s, last)
	return last > cur
}

// lag stops live delivery of s to cl, whose connection fell behind and
// refused the event after `after` (onSlow catchup): from now on the pump
// feeds it from the log, in order, at the pace its queue drains, and it
// rejoins live delivery once it has caught up. Its cost while behind is
// this cursor. Precondition: h.mu held exclusively, or shared with s.mu.
func (h *Hub) lag(cl *Client, s *Session, after uint64) {
	h.setCursor(cl, s, after)
	h.st.lagged.Add(1)
}

// endCatchup ends the pacing of s to cl. Precondition: as lag.
func (h *Hub) endCatchup(cl *Client, s *Session) { h.endCursor(cl, s) }

// queueEvent queues a data-plane event of s in the form cl asked for
// (enveloped or not) and reports whether it did; callers count deliveries
// in bulk. A connection that lags and catches up refuses the event: unless
// s is already being paced out to it, it then starts catching up from that
// event (lag). Precondition: h.mu held exclusively, or shared with s.mu.
func (h *Hub) queueEvent(cl *Client, s *Session, m *wire.Msg) bool {
	if cl.closed {
		return false
	}
	e := m
	if cl.opts.Envelope {
		e = m.Enveloped()
	}
	if cl.conn.Send(e, wire.Data) {
		return true
	}
	if m.Seq != 0 {
		if _, paced := cl.cursor(s); !paced {
			h.lag(cl, s, m.Seq-1)
		}
	}
	return false
}

// Inflight is how many of cl's requests await the agent: answers that are
// coming to its connection, which its transport counts before it admits
// more input. Safe from any goroutine; takes no lock.
func (h *Hub) Inflight(cl *Client) int {
	return int(cl.inflight.Load())
}

// Recede turns what cl's connection has queued but not written back into
// a cursor: take (run under the hub lock, so no event is pushed to cl
// meanwhile) removes every queued sequenced event from the connection's
// queue and returns the lowest seq it removed per session; each of those
// sessions is then fed to cl from its log from there (Pump), as if the
// connection had lagged before them. A connection whose peer stopped
// reading so holds a cursor per session, not a queue of events. Safe
// from any goroutine; take must only touch the connection's queue.
func (h *Hub) Recede(cl *Client, take func() map[string]uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cl.closed {
		return
	}
	for sid, low := range take() {
		s := cl.attached[sid]
		if s == nil || low == 0 {
			continue // detached: what was queued is not owed any more
		}
		if cur, paced := cl.cursor(s); paced {
			h.setCursor(cl, s, min(cur, low-1))
		} else {
			h.lag(cl, s, low-1)
		}
	}
}
