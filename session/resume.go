package session

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// Resume keys (bridge/hello {resume}) let a client that loses its
// connection get the answers to the requests it had sent: the dropped
// connection is parked with its calls still routed to it, answers that
// arrive meanwhile are buffered, and the next connection saying hello with
// the same key (and role) takes the calls over.

const (
	minResumeKey = 16 // an opaque key should be random; short ones are guessable
	maxResumeKey = 256
)

// park is a dropped connection kept for resuming. Guarded by the hub mutex.
type park struct {
	key     string
	cl      *Client  // the closed connection its calls still point to
	owned   []string // sessions it owned when it dropped
	created []string // sessions its session/new calls created while parked
	answers []parkedAnswer
	bytes   int
	timer   *time.Timer
	at      time.Time
}

type parkedAnswer struct {
	id []byte // the client's id
	m  *wire.Msg
}

type resumeResult struct {
	Key string `json:"key"`
	// Resumed: an earlier connection with this key was found and its
	// calls now belong to this one.
	Resumed bool `json:"resumed"`
	// Received is how many messages the daemon had read from the earlier
	// connection: the client's own messages past that count never arrived
	// and may be sent again.
	Received uint64 `json:"received"`
	// Pending are the ids of the earlier connection's requests the daemon
	// still holds: awaiting the agent, or answered and delivered right
	// after this response. A request it received that is not listed was
	// answered on the old connection.
	Pending []json.RawMessage `json:"pending"`
}

// parkClient keeps a closed connection's calls for ResumeWindow.
// Precondition: h.mu held, cl closed with a resume key.
func (h *Hub) parkClient(cl *Client, owned []string) {
	if len(h.parked) >= h.cfg.ResumeKeys {
		var oldest *park
		for _, p := range h.parked {
			if oldest == nil || p.at.Before(oldest.at) {
				oldest = p
			}
		}
		h.log.Warn("too many dropped connections kept for resuming; forgetting the oldest", "key_conn", oldest.cl.ID, "limit", h.cfg.ResumeKeys)
		h.discardPark(oldest)
	}
	p := &park{key: cl.res.key, cl: cl, owned: owned, at: time.Now()}
	cl.res.park = p
	h.parked[p.key] = p
	h.st.parked.Add(1)
	p.timer = time.AfterFunc(h.cfg.ResumeWindow, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.parked[p.key] == p {
			h.log.Info("resume window expired; the dropped connection's calls are forgotten", "conn", p.cl.ID, "answers", len(p.answers))
			h.discardPark(p)
		}
	})
}

// discardPark forgets a parked connection: answers still to come for its
// calls are dropped. Precondition: h.mu held.
func (h *Hub) discardPark(p *park) {
	if h.parked[p.key] != p {
		return
	}
	delete(h.parked, p.key)
	h.st.parked.Add(-1)
	p.timer.Stop()
	h.parkedBytes -= p.bytes
	p.answers = nil
	p.cl.res.park = nil
}

// buffer keeps an answer for a parked connection; over the caps it keeps a
// -32004 error with the same id instead, so the client still learns the
// request's fate. Precondition: h.mu held.
func (h *Hub) buffer(p *park, id []byte, m *wire.Msg) {
	if p.bytes+m.Size() > h.cfg.ResumeBytes || h.parkedBytes+m.Size() > h.cfg.ResumeTotalBytes {
		h.st.errors.Add(1)
		m = lineOf(jsonrpc.AppendError(nil, id, &jsonrpc.Error{Code: codeOverloaded,
			Message: fmt.Sprintf("the answer (%d bytes) arrived while the connection was away and did not fit the resume buffer; send the request again", m.Size())}))
	}
	p.answers = append(p.answers, parkedAnswer{id: id, m: m})
	p.bytes += m.Size()
	h.parkedBytes += m.Size()
}

// resume binds key to cl, taking over a live holder of the key or the
// calls of a parked one. It changes no state when it fails. The returned
// func sends what the earlier connection was owed; call it after the hello
// response. Precondition: h.mu held.
func (h *Hub) resume(cl *Client, key string) (*resumeResult, func(), *jsonrpc.Error) {
	if len(key) < minResumeKey || len(key) > maxResumeKey {
		return nil, nil, &jsonrpc.Error{Code: codeInvalidParams, Message: fmt.Sprintf("bridge/hello: resume must be an opaque random string of %d to %d bytes, got %d", minResumeKey, maxResumeKey, len(key))}
	}
	if k := cl.resumeKey(); k != "" {
		if k == key {
			return &resumeResult{Key: key, Pending: []json.RawMessage{}}, nil, nil
		}
		return nil, nil, &jsonrpc.Error{Code: codeInvalidParams, Message: "bridge/hello: this connection already has a different resume key"}
	}
	holder := h.resumeKeys[key]
	p := h.parked[key]
	for _, other := range []*Client{holder, parkedClient(p)} {
		if other != nil && other.info.Role != cl.info.Role {
			h.st.denied.Add(1)
			h.audit(cl, AuditRecord{Method: "bridge/hello", Outcome: "denied", Detail: fmt.Sprintf("resume key belongs to a %s connection", other.info.Role)})
			return nil, nil, &jsonrpc.Error{Code: codeNotAllowed, Message: fmt.Sprintf("bridge/hello: the resume key belongs to a connection of role %s, this one is %s", other.info.Role, cl.info.Role)}
		}
	}
	if holder != nil {
		// The key's connection is still open on our side, typically a
		// half-open TCP connection the client already gave up on: the
		// newcomer wins, and the old one is parked then taken over.
		h.audit(cl, AuditRecord{Method: "bridge/hello", Outcome: "takeover", Detail: fmt.Sprintf("resume key taken from connection %d", holder.ID)})
		h.closeLocked(holder)
		holder.conn.Close(ClosePolicy, fmt.Sprintf("resume key taken over by connection %d", cl.ID))
		p = h.parked[key]
	}
	cl.res = &resumption{key: key}
	h.resumeKeys[key] = cl
	rr := &resumeResult{Key: key, Pending: []json.RawMessage{}}
	if p == nil {
		return rr, nil, nil
	}
	old := p.cl
	rr.Resumed, rr.Received = true, old.received.Load()
	bids := h.calls.ids(func(c *call) bool { return c.cl == old }) // in the order they were sent
	moveCalls(old, cl)
	for _, bid := range bids {
		c := h.calls.get(bid)
		c.cl = cl
		for _, t := range c.tokens {
			h.progress[t] = progressRoute{cl: cl, token: h.progress[t].token}
		}
		if s := h.sessions[c.sessionID]; c.loading && s != nil {
			// The load's replay now goes to the successor.
			for i, x := range s.loaders {
				if x == old {
					s.loaders[i] = cl
					break
				}
			}
		}
		rr.Pending = append(rr.Pending, json.RawMessage(c.id))
	}
	for i := range h.init.waiters {
		if w := &h.init.waiters[i]; w.cl == old {
			w.cl = cl
			rr.Pending = append(rr.Pending, json.RawMessage(w.id))
		}
	}
	answers := p.answers
	for _, a := range answers {
		rr.Pending = append(rr.Pending, json.RawMessage(a.id))
	}
	var sessions []*Session
	for _, id := range append(append([]string(nil), p.owned...), p.created...) {
		if s := h.sessions[id]; s != nil && s.owner == nil {
			h.setOwner(s, cl)
			sessions = append(sessions, s)
		}
	}
	created := p.created
	h.discardPark(p)
	h.audit(cl, AuditRecord{Method: "bridge/hello", Outcome: "resumed",
		Detail: fmt.Sprintf("took over connection %d: %d calls, %d sessions", old.ID, len(rr.Pending), len(sessions))})
	deliver := func() {
		for _, a := range answers {
			h.send(cl, a.m, wire.Control)
		}
		// Sessions its calls created while it was away: it never had the
		// chance to attach them, so it is attached with their whole log.
		for _, id := range created {
			if s := h.sessions[id]; s != nil && s.owner == cl {
				s.attach(cl)
				h.startCatchup(cl, s, 0)
			}
		}
		for _, s := range sessions {
			for _, ar := range s.pending {
				if s.eligible(cl, ar.method) {
					h.deliverRequest(ar, cl)
				}
			}
		}
	}
	return rr, deliver, nil
}

func parkedClient(p *park) *Client {
	if p == nil {
		return nil
	}
	return p.cl
}

// Refused counts a message the transport read from cl but refused before
// routing (rate limited), so the received count a resuming successor is
// told stays exact and the message is not resent. Safe from any goroutine.
func (h *Hub) Refused(cl *Client) {
	h.mu.RLock() // closed changes only under the exclusive lock
	if !cl.closed {
		cl.received.Add(1)
	}
	h.mu.RUnlock()
}
