package session

import (
	"errors"
	"fmt"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

var errNoAgent = errors.New("session: no agent configured")

// resolvedKeep is how many answered agent request ids are remembered so a
// late answer gets bridge/resolved rather than an error.
const resolvedKeep = 4096

func (h *Hub) toAgent(b []byte) error {
	if h.agent == nil {
		return errNoAgent
	}
	return h.agent.Send(b)
}

// toAgentReplacingID sends msg (whose header is hd) with its id replaced
// by id: with a splicing agent in one copy, into the agent's queue.
func (h *Hub) toAgentReplacingID(msg []byte, hd jsonrpc.Header, id []byte) error {
	if h.splicer != nil && hd.IDStart >= 0 {
		return h.splicer.SendSplice(msg, hd.IDStart, hd.IDEnd, id)
	}
	return h.toAgent(jsonrpc.ReplaceID(make([]byte, 0, len(msg)+len(id)), msg, hd, id))
}

// AgentStarted is called when a new agent process generation is up. A
// restarted agent is initialised again by the bridge with the first
// client's initialize, so clients never see the restart beyond
// bridge/status. Safe from any goroutine.
func (h *Hub) AgentStarted(gen uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	restarted := h.gen > 0
	h.gen = gen
	h.st.agentUp.Store(true)
	h.init.sentNotif = false
	if restarted {
		h.st.restarts.Add(1)
		for _, s := range h.sessions {
			if s.gen < gen {
				// The new process does not know the old one's sessions
				// until a client loads them again.
				s.closed = true
			}
		}
	}
	for _, s := range h.sessions {
		h.refreshStatus(s)
	}
	if restarted {
		m := h.statusMsg("", StatusIdle)
		for _, cl := range h.conns {
			h.send(cl, m, wire.Control)
		}
	}
	if restarted && h.init.request != nil && !h.init.inflight {
		h.sendInitialize()
	}
}

// AgentExited is called when an agent process generation ended. Every
// client request it had not answered gets -32003; its pending requests are
// retired; sessions turn blocked. Safe from any goroutine.
func (h *Hub) AgentExited(gen uint64, err error, restartIn time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if gen != h.gen {
		return
	}
	h.st.agentUp.Store(false)
	why := "the agent exited"
	if err != nil {
		why = fmt.Sprintf("the agent exited (%v)", err)
	}
	if restartIn >= 0 {
		why += fmt.Sprintf("; restarting in %s", restartIn.Round(time.Millisecond))
	}
	h.failCalls(func(c *call) bool { return c.gen == gen }, why+"; the request was not completed")
	h.init.inflight = false
	h.failInitWaiters(why)
	h.failHeld(why)
	for _, ar := range h.requests {
		if ar.gen == gen {
			if ar.method == "session/request_permission" {
				h.audit(nil, AuditRecord{Session: ar.sessionID, Method: ar.method, Outcome: "abandoned", RequestID: ar.id, ToolCall: ar.toolCall, Detail: why})
			}
			h.retireRequest(ar, nil)
		}
	}
	for _, s := range h.sessions {
		s.prompts, s.agentState, s.loaders = 0, "", nil
		h.refreshStatus(s)
	}
	m := h.statusMsg("", StatusBlocked)
	for _, cl := range h.conns {
		h.send(cl, m, wire.Control)
	}
}

// failCalls answers the matching calls with -32003, in the order they were
// sent (bridge ids ascend), so a client sees its errors in request order.
func (h *Hub) failCalls(match func(*call) bool, why string) {
	for _, id := range h.calls.ids(match) {
		c := h.calls.take(id, nil)
		h.callDone(c)
		h.dropLoader(c)
		if c.cl != nil {
			h.replyError(c.cl, c.id, codeAgentUnavailable, why)
		}
	}
}

// AgentMessage routes one message from the agent. msg is borrowed, valid
// only during the call (agent.Handler): the shared paths copy what they
// send (an answer into its id-spliced copy, an event into its wire.Msg),
// and the exclusive path works on a copy of its own, since it may keep the
// message or parts of its header (an agent request waiting for a client).
// Safe from any goroutine; messages must arrive in the agent's order.
// Answers to plain calls and events go out with the routing lock held
// shared (fastpath.go); everything else is routed exclusively.
func (h *Hub) AgentMessage(gen uint64, msg []byte) {
	h.st.agentMessages.Add(1)
	hd, err := jsonrpc.Peek(msg)
	if err != nil {
		// An agent spewing garbage makes one line a second, not one per line.
		n := h.st.agentInvalid.Add(1)
		if ok, held := h.invalidLog.Allow(time.Now()); ok {
			h.log.Warn("agent sent an invalid JSON-RPC message; dropped", "err", err, "bytes", len(msg), "head", head(msg),
				"also_dropped_since_last_line", held, "dropped_total", n)
		}
		return
	}
	h.mu.RLock()
	done := gen != h.gen || h.agentShared(msg, hd) // a late line from a dead process is dropped
	h.mu.RUnlock()
	if done {
		return
	}
	// One spare byte: the exclusive paths append the NDJSON newline in
	// place. The header is read again from the copy, so that nothing kept
	// aliases the caller's buffer.
	msg = append(make([]byte, 0, len(msg)+1), msg...)
	if hd, err = jsonrpc.Peek(msg); err != nil {
		return // it parsed a moment ago, from the same bytes
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if gen != h.gen {
		return
	}
	switch hd.Kind {
	case jsonrpc.KindResponse:
		h.agentResponse(msg, hd)
	case jsonrpc.KindNotification:
		h.agentNotification(msg, hd)
	default:
		h.agentRequest(msg, hd)
	}
}

// AgentDropped answers the call that a message the agent package dropped
// for its size was the answer to (rawID, nil when its head showed none):
// the client gets an error naming the size instead of waiting for ever.
// Safe from any goroutine; called in order with AgentMessage.
func (h *Hub) AgentDropped(gen uint64, rawID []byte, size int) {
	if rawID == nil {
		return
	}
	why := fmt.Sprintf("the agent's answer was %d bytes, over the limit (--max-message); it was dropped", size)
	msg := jsonrpc.AppendError(nil, rawID, &jsonrpc.Error{Code: jsonrpc.CodeInternal, Message: why})
	hd, err := jsonrpc.Peek(msg)
	if err != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if gen != h.gen {
		return
	}
	if id, ok := parseID(hd.ID); ok && h.calls.get(id) != nil {
		h.agentResponse(msg, hd) // as if the agent had answered with this error
	}
}

func head(b []byte) string {
	if len(b) > 120 {
		b = b[:120]
	}
	return string(b)
}

func (h *Hub) agentResponse(msg []byte, hd jsonrpc.Header) {
	id, ok := parseID(hd.ID)
	var c *call
	if ok {
		c = h.calls.take(id, nil)
	}
	if c == nil {
		if ok && h.lateAnswer(id) { // limits.go
			return
		}
		h.log.Warn("agent answered an unknown request id; dropped", "id", string(hd.ID))
		return
	}
	h.callDone(c)
	if c.internal != nil {
		c.internal(h, msg)
		return
	}
	s := h.sessions[c.sessionID]
	refresh := false // announced after the response: the answer comes first
	var claim string // a session/new or session/fork answer: the caller's new session
	closed := false
	switch c.method {
	case "session/new", "session/fork":
		if sid := jsonrpc.ResultSessionID(msg); !hd.IsError && len(sid) > 0 {
			claim = string(sid)
		}
	case "session/prompt":
		if s != nil && s.prompts > 0 {
			s.prompts--
			refresh = true
		}
	case "session/load", "session/resume":
		h.finishAttaching(c, s, hd.IsError)
		refresh = s != nil
		if !hd.IsError {
			h.recordLoad(c, c.sessionID) // remote.go
		}
	case "session/close", "session/delete", "session/archive":
		closed = s != nil && !hd.IsError
	}
	h.reply(c.cl, c.id, wire.Spliced(msg, hd.IDStart, hd.IDEnd, c.id))
	if claim != "" {
		// After the answer, so the client knows the session before its
		// first event arrives.
		s, refresh = h.claimNew(c, claim), true
		if c.method == "session/new" {
			h.recordLoad(c, claim) // remote.go
		}
	}
	if closed {
		h.sessionClosed(c.cl, s, c.method)
		return
	}
	if refresh {
		h.refreshStatus(s)
	}
}

func (h *Hub) agentNotification(msg []byte, hd jsonrpc.Header) {
	if len(hd.SessionID) == 0 {
		if len(hd.Method) > 0 && (hd.Method[0] == '$' || hd.Method[0] == 'n') {
			method := string(hd.Method)
			if h.agentCancel(msg, method) || h.agentProgress(msg, method) {
				return
			}
		}
		m := wire.Own(append(msg, '\n'))
		for _, cl := range h.conns {
			h.send(cl, m, wire.Data)
		}
		return
	}
	s := h.sessions[string(hd.SessionID)]
	if s == nil {
		// Updates may precede the session/new answer that names the
		// session; keep them so the owner can replay them.
		s = h.session(string(hd.SessionID))
	}
	if len(s.loaders) > 0 {
		h.loaderOnly(s, msg)
		return
	}
	stateChanged := h.trackState(s, msg)
	h.publish(s, wire.Own(append(msg, '\n')))
	h.trimLogs()
	if stateChanged {
		h.refreshStatus(s)
	}
}

func (h *Hub) agentRequest(msg []byte, hd jsonrpc.Header) {
	h.nextReqID++
	ar := &agentRequest{
		id:        h.nextReqID,
		agentID:   clone(hd.ID),
		gen:       h.gen,
		method:    string(hd.Method),
		sessionID: string(hd.SessionID),
		sentTo:    make(map[*Client]struct{}),
		created:   time.Now(),
	}
	var idb [20]byte
	ar.msg = lineOf(jsonrpc.ReplaceID(make([]byte, 0, len(msg)+8), msg, hd, appendID(idb[:0], ar.id)))
	ar.msg.SessionID = ar.sessionID
	if ar.method == "session/request_permission" {
		ar.toolCall = toolCallOf(msg)
	}
	h.requests[ar.id] = ar
	h.st.requests.Add(1)
	timeout := h.cfg.RequestTimeout
	ar.timer = time.AfterFunc(timeout, func() { h.expireRequest(ar, timeout) })
	if ar.sessionID == "" {
		h.orphans = append(h.orphans, ar)
		for _, cl := range h.conns {
			if cl.info.Role == auth.RoleClient {
				h.deliverRequest(ar, cl)
			}
		}
		return
	}
	s := h.session(ar.sessionID)
	s.pending = append(s.pending, ar)
	for _, cl := range s.attached {
		if s.eligible(cl, ar.method) {
			h.deliverRequest(ar, cl)
		}
	}
	if s.owner != nil && !s.isAttached(s.owner) {
		h.deliverRequest(ar, s.owner)
	}
	h.refreshStatus(s)
}

func (h *Hub) deliverRequest(ar *agentRequest, cl *Client) {
	if _, done := ar.sentTo[cl]; done || cl.closed {
		return
	}
	ar.sentTo[cl] = struct{}{}
	h.send(cl, ar.msg, wire.Control)
}

func (h *Hub) expireRequest(ar *agentRequest, after time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.requests[ar.id] != ar {
		return
	}
	h.answerAgentError(ar, codeTimeout, fmt.Sprintf("no client answered %s within %s", ar.method, after))
	h.audit(nil, AuditRecord{Role: "bridge", Session: ar.sessionID, Method: ar.method, Outcome: "timed-out", RequestID: ar.id, ToolCall: ar.toolCall,
		Detail: fmt.Sprintf("no answer within %s; the agent got error %d", after, codeTimeout)})
	h.retireRequest(ar, nil)
}

// toolCallOf names what a permission request is about: its toolCall's id
// and title.
func toolCallOf(msg []byte) string {
	var v struct {
		Params struct {
			ToolCall struct {
				ID    string `json:"toolCallId"`
				Title string `json:"title"`
			} `json:"toolCall"`
		} `json:"params"`
	}
	if jsonrpc.Unmarshal(msg, &v) != nil {
		return ""
	}
	tc := v.Params.ToolCall
	if tc.Title != "" {
		return tc.ID + " (" + tc.Title + ")"
	}
	return tc.ID
}

func (h *Hub) answerAgentError(ar *agentRequest, code int, why string) {
	if ar.gen != h.gen || !h.st.agentUp.Load() {
		return
	}
	_ = h.toAgent(jsonrpc.AppendError(nil, ar.agentID, &jsonrpc.Error{Code: code, Message: why}))
}

// retireRequest removes an agent request once answered (by winner, or nil
// when it expired or its agent died) and tells every other recipient that
// it is resolved.
func (h *Hub) retireRequest(ar *agentRequest, winner *Client) {
	if h.requests[ar.id] != ar {
		return
	}
	delete(h.requests, ar.id)
	h.st.requests.Add(-1)
	ar.timer.Stop()
	h.resolved[ar.id] = ar.sessionID
	h.resolvedQ = append(h.resolvedQ, ar.id)
	if len(h.resolvedQ) > resolvedKeep {
		delete(h.resolved, h.resolvedQ[0])
		h.resolvedQ = h.resolvedQ[1:]
	}
	m := wire.ResolvedMsg(ar.sessionID, ar.id)
	cancel := h.cancelMsg(ar.id) // the request's own protocol tells the losers too
	for cl := range ar.sentTo {
		if cl != winner {
			h.send(cl, m, wire.Control)
			if cancel != nil {
				h.send(cl, cancel, wire.Control)
			}
		}
	}
	if ar.sessionID == "" {
		h.orphans = removeReq(h.orphans, ar)
		return
	}
	if s := h.sessions[ar.sessionID]; s != nil {
		s.pending = removeReq(s.pending, ar)
		h.refreshStatus(s)
	}
}

func removeReq(list []*agentRequest, ar *agentRequest) []*agentRequest {
	for i, x := range list {
		if x == ar {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
}
