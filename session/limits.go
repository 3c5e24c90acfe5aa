package session

import (
	"container/list"
	"fmt"
	"time"
)

// Limits on what one connection, or the agent, can make the hub hold.
// Everything here runs under the hub mutex unless said otherwise.

// limits is the hub's bookkeeping for the bounds below. Guarded by h.mu.
type limits struct {
	// unclaimed lists, oldest first, the sessions only the agent named:
	// no client created, loaded, attached or owned them. Past
	// Config.MaxSessions the oldest idle one is forgotten.
	unclaimed *list.List // of *Session
	// expired remembers the bridge ids of the last calls answered -32005,
	// so the agent's late answers are dropped quietly, not one warning each.
	expired  map[int64]struct{}
	expiredQ []int64
}

// expiredKeep bounds the remembered ids of timed-out calls.
const expiredKeep = 4096

// sessionLimits is per-session bookkeeping of the bounds. Guarded by h.mu.
type sessionLimits struct {
	unclaimed *list.Element // in limits.unclaimed while only the agent named the session
}

// callLimits is per-call bookkeeping. Guarded by h.mu.
type callLimits struct {
	timer *time.Timer // CallTimeout; nil when off
}

// admitCall refuses a client request past MaxInflight requests of its
// connection awaiting the agent, with -32004 naming the bound.
func (h *Hub) admitCall(cl *Client, id []byte, method string) bool {
	n := cl.inflight.Load()
	if n < int64(h.cfg.MaxInflight) {
		return true
	}
	h.replyError(cl, id, codeOverloaded, fmt.Sprintf("%s refused: this connection already has %d requests awaiting the agent (--max-inflight %d); wait for answers before sending more", method, n, h.cfg.MaxInflight))
	return false
}

// trackCall counts a call forwarded under bridge id bid against its
// connection and arms its timeout.
func (h *Hub) trackCall(bid int64, c *call) {
	if c.cl == nil {
		return // the bridge's own request: neither counted nor timed
	}
	c.cl.inflight.Add(1)
	if d := h.cfg.CallTimeout; d > 0 {
		c.lim.timer = time.AfterFunc(d, func() { h.expireCall(bid, c, d) })
	}
}

// callDone undoes what forwarding c holds once it is answered, failed,
// cancelled or expired: its progress tokens and, for a client's call, its
// --max-inflight slot and timeout.
func (h *Hub) callDone(c *call) {
	h.releaseTokens(c)
	h.callLimitsDone(c)
}

// callLimitsDone frees c's --max-inflight slot and stops its timeout.
func (h *Hub) callLimitsDone(c *call) {
	if c.cl == nil {
		return
	}
	c.cl.inflight.Add(-1)
	if c.lim.timer != nil {
		c.lim.timer.Stop()
		c.lim.timer = nil
	}
}

// expireCall answers a call the agent has not answered within d with
// -32005 and frees its slot; a late answer from the agent is dropped.
// Called by the call's timer, on its own goroutine.
func (h *Hub) expireCall(bid int64, c *call, d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.calls.take(bid, c) == nil {
		return // answered or failed meanwhile
	}
	h.callDone(c)
	h.dropLoader(c)
	h.st.timedOut.Add(1)
	if h.lim.expired == nil {
		h.lim.expired = make(map[int64]struct{})
	}
	h.lim.expired[bid] = struct{}{}
	if h.lim.expiredQ = append(h.lim.expiredQ, bid); len(h.lim.expiredQ) > expiredKeep {
		delete(h.lim.expired, h.lim.expiredQ[0])
		h.lim.expiredQ = h.lim.expiredQ[1:]
	}
	if c.method == "session/prompt" {
		if s := h.sessions[c.sessionID]; s != nil && s.prompts > 0 {
			s.prompts--
			defer h.refreshStatus(s)
		}
	}
	h.replyError(c.cl, c.id, codeTimeout, fmt.Sprintf("the agent did not answer %s within %s (--call-timeout); the request may still be running in the agent", c.method, d))
}

// dropLoader ends loader-only replay for a load (or v2 resume) that will
// get no answer: failed or expired.
func (h *Hub) dropLoader(c *call) {
	if !c.loading {
		return
	}
	if s := h.sessions[c.sessionID]; s != nil {
		s.loaders = removeClient(s.loaders, c.cl)
	}
}

// moveCalls hands the in-flight count of a dropped connection to the one
// that resumed its calls.
func moveCalls(from, to *Client) {
	to.inflight.Add(from.inflight.Swap(0))
}

// unclaimed records that s exists only because the agent named it, and
// forgets the oldest idle such session past MaxSessions.
func (h *Hub) unclaimed(s *Session) {
	if h.lim.unclaimed == nil {
		h.lim.unclaimed = list.New()
	}
	s.lim.unclaimed = h.lim.unclaimed.PushBack(s)
	for h.lim.unclaimed.Len() > h.cfg.MaxSessions {
		if !h.evictOldest(s.lim.unclaimed) {
			return
		}
	}
}

// evictOldest forgets the oldest unclaimed session before newest (which
// its caller is about to use) with nothing pending and nobody attached. It
// reports false when every one is busy.
func (h *Hub) evictOldest(newest *list.Element) bool {
	for e := h.lim.unclaimed.Front(); e != nil && e != newest; e = e.Next() {
		s := e.Value.(*Session)
		if h.sessions[s.ID] != s {
			// Removed from the hub by another path (session/delete):
			// only the list entry is left.
			h.lim.unclaimed.Remove(e)
			s.lim.unclaimed = nil
			return true
		}
		if len(s.pending) > 0 || len(s.attached) > 0 || s.owner != nil || s.prompts > 0 {
			continue
		}
		h.lim.unclaimed.Remove(e)
		s.lim.unclaimed = nil
		h.removeSession(s)
		if n := h.st.evicted.Add(1); n == 1 || n%1000 == 0 {
			h.log.Warn("the agent named more sessions than --max-sessions that no client created or attached; forgetting the oldest", "session", s.ID, "max_sessions", h.cfg.MaxSessions, "evicted_total", n)
		}
		return true
	}
	return false
}

// claim marks s as used by a client (created, loaded, attached or owned):
// it leaves the unclaimed bound and, with a journal, is persisted from now
// on, with the events the agent sent before.
func (h *Hub) claim(s *Session) {
	if s == nil || s.lim.unclaimed == nil {
		return
	}
	h.lim.unclaimed.Remove(s.lim.unclaimed)
	s.lim.unclaimed = nil
	if h.cfg.Journal == nil {
		return
	}
	h.cfg.Journal.Create(s.ID)
	for _, m := range s.log.since(0) {
		h.cfg.Journal.Append(s.ID, m.Seq, m.Body())
	}
}

// journaled reports whether s's events go to the journal: only once a
// client has claimed it (an agent naming thousands of sessions nobody uses
// must not fill the disk).
func (s *Session) journaled() bool { return s.lim.unclaimed == nil }

// lateAnswer reports (and forgets) whether bid is a call answered -32005
// by --call-timeout: the agent's answer came too late and is dropped.
func (h *Hub) lateAnswer(bid int64) bool {
	if _, ok := h.lim.expired[bid]; !ok {
		return false
	}
	delete(h.lim.expired, bid)
	h.log.Debug("the agent answered a request after --call-timeout; dropped", "id", bid)
	return true
}
