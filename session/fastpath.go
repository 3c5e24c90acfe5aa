package session

import (
	"bytes"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// The hot paths, under the routing lock held shared. Most traffic is a
// client's request for its own session going out, the agent's answer to it
// coming back, and the agent's events for a session going to the clients
// attached to it. None of these changes which sessions, connections or
// agent requests exist, so they run with h.mu read-locked (RLock) and
// change state only under finer locks:
//
//   - the call table's shards (calls.go) for the request and its answer;
//   - the session's own lock (Session.mu) for its log, seq, status and
//     turn state, so events of different sessions go out in parallel, and
//     a session's events stay in seq order;
//   - a client's catch-up cursors (Client.cmu), which the fan-outs of
//     different sessions and its pump share;
//   - atomics (Stats, in-flight counts, bridge ids).
//
// Each shared path first checks, reading only, that the message is one it
// may route; anything else (bridge/* methods, the lifecycle, initialize,
// cancels, progress tokens, agent requests, errors the bridge answers
// itself, a dropped client's answers) returns false having changed
// nothing, and the caller routes it again under the exclusive lock with
// the full rules (client.go, agentside.go). The locks are taken in one
// order: h.mu, then trimMu, then a Session.mu, then a Client.cmu or a call
// shard; a session's lock is never held while taking another's.

// forwardShared routes a client's request or notification to the agent
// when it is a plain one: from a client-role connection, not bridge/*, not
// part of the session lifecycle, naming no session or one the connection
// may drive, with no progress token, within --max-inflight, while the
// agent is up and not being re-initialised. It reports whether it routed
// msg. Precondition: h.mu held shared.
func (h *Hub) forwardShared(cl *Client, msg []byte, hd jsonrpc.Header) bool {
	if cl.closed || cl.info.Role != auth.RoleClient || hd.Kind == jsonrpc.KindResponse ||
		bytes.HasPrefix(hd.Method, bridgePrefix) || !h.st.agentUp.Load() || h.reinitialising() {
		return false
	}
	method := methodName(hd.Method)
	switch method {
	case "initialize", "shutdown", "initialized", "notifications/initialized", "exit", "session/cancel":
		return false
	}
	if kind := lifecycleOf(method); (kind != gated && kind != ungatedUse) || cancelParam(method) != "" ||
		!auth.AllowRequest(cl.info.Role, method) {
		return false
	}
	var s *Session
	if len(hd.SessionID) > 0 {
		if s = h.sessions[string(hd.SessionID)]; s != nil {
			if s.remote.node != "" {
				return false // remoteRefused answers it
			}
			if _, ok := cl.attached[s.ID]; !ok && s.owner != cl && lifecycleOf(method) == gated {
				return false // sessionGate answers it
			}
		}
	}
	if hd.Kind == jsonrpc.KindNotification {
		cl.received.Add(1)
		if err := h.toAgent(msg); err != nil {
			h.replyError(cl, nil, codeAgentUnavailable, "notification "+method+" not delivered: "+err.Error())
		}
		return true
	}
	if hasToken(msg) || cl.inflight.Load() >= int64(h.cfg.MaxInflight) {
		return false // remapTokens, admitCall
	}
	cl.received.Add(1)
	c := newCall(cl, hd.ID, method, h.gen)
	h.keepLoad(c, msg) // remote.go: session/new, for a fleet's LoadRecorder
	if s != nil {
		c.sessionID = s.ID
	} else {
		c.sessionID = string(hd.SessionID)
	}
	// A v1 prompt counts as running before the agent can see it, so its
	// answer (which may come back on another goroutine at once) always
	// finds it counted.
	prompt := method == "session/prompt" && s != nil && h.acpVersion < 2
	if prompt {
		s.mu.Lock()
		s.prompts++
		h.refreshStatus(s)
		s.mu.Unlock()
	}
	if !h.sendCall(c, msg, hd) && prompt {
		s.mu.Lock()
		if s.prompts > 0 {
			s.prompts--
		}
		h.refreshStatus(s)
		s.mu.Unlock()
	}
	return true
}

// hasToken reports whether msg may carry a progress token (remap.go): one
// search for the ending the three token keys share, rather than one pass
// per key (three passes over every forwarded request were ~3% of the
// daemon's CPU under pipelined load).
func hasToken(msg []byte) bool {
	for i := 0; ; {
		j := bytes.Index(msg[i:], tokenTail)
		if j < 0 {
			return false
		}
		j += i
		for _, k := range tokenHints {
			if bytes.HasSuffix(msg[:j+len(tokenTail)], k) {
				return true
			}
		}
		i = j + len(tokenTail)
	}
}

// agentShared routes the agent's message when it is an answer to a plain
// call of a connected client, or an event: of a session the hub knows, or
// of none (not a cancel or progress). It reports whether it routed msg.
// Precondition: h.mu held shared, gen the current generation.
func (h *Hub) agentShared(msg []byte, hd jsonrpc.Header) bool {
	switch hd.Kind {
	case jsonrpc.KindResponse:
		return h.answerShared(msg, hd)
	case jsonrpc.KindNotification:
		if len(hd.SessionID) == 0 {
			if len(hd.Method) > 0 && (hd.Method[0] == '$' || hd.Method[0] == 'n') {
				return false // agentCancel, agentProgress
			}
			m := wire.New(msg) // msg is borrowed (AgentMessage)
			for _, cl := range h.conns {
				h.send(cl, m, wire.Data)
			}
			return true
		}
		s := h.sessions[string(hd.SessionID)]
		if s == nil {
			return false // the session is created exclusively
		}
		s.mu.Lock()
		if len(s.loaders) > 0 {
			h.loaderOnly(s, msg)
		} else {
			stateChanged := h.trackState(s, msg)
			h.publish(s, wire.New(msg))
			if stateChanged {
				h.refreshStatus(s)
			}
		}
		s.mu.Unlock()
		h.trimLogs()
		return true
	}
	return false
}

// plainCall reports whether the shared path may answer c: a connected
// client's call that took no lifecycle step and holds no progress token.
// Precondition: h.mu held (c.cl.closed).
func plainCall(c *call) bool {
	if c.internal != nil || c.cl == nil || c.cl.closed || len(c.tokens) > 0 || c.loading {
		return false
	}
	switch c.method {
	case "session/new", "session/fork", "session/load", "session/resume", "session/close", "session/delete", "session/archive":
		return false
	}
	return true
}

// answerShared routes the agent's answer to a client's call that took no
// lifecycle step (no session created, loaded, resumed or closed), holds no
// progress token, and whose client is still connected.
func (h *Hub) answerShared(msg []byte, hd jsonrpc.Header) bool {
	id, ok := parseID(hd.ID)
	if !ok {
		return false
	}
	// Nothing else takes a call while h.mu is held shared: only this
	// goroutine (the agent's, in order) answers, and expiry, failure and
	// resume need the lock exclusively.
	c := h.calls.takeWhen(id, plainCall)
	if c == nil {
		return false
	}
	h.callDone(c)
	out := wire.Spliced(msg, hd.IDStart, hd.IDEnd, c.id)
	// c.cl is connected (checked above, and h.mu held shared keeps it so),
	// so out goes to its connection alone (reply, send) and nothing here
	// keeps it: the connection's writer may recycle it once written.
	out.SingleUse()
	var s *Session
	if c.method == "session/prompt" {
		s = h.sessions[c.sessionID]
	}
	if s == nil {
		h.reply(c.cl, c.id, out)
	} else {
		s.mu.Lock()
		h.reply(c.cl, c.id, out) // the answer first, then the status it changes
		if s.prompts > 0 {
			s.prompts--
			h.refreshStatus(s)
		}
		s.mu.Unlock()
	}
	// out is a copy: nothing refers to c any more, once sendCall is done
	// with it. A sender that has not said so yet (it wrote the request and
	// the answer overtook the rest of its call) leaves c to the collector.
	if c.sent.Load() {
		recycleCall(c)
	}
	return true
}
