package session

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

var bridgePrefix = []byte("bridge/")

// Handle routes one complete JSON message from a client. msg is borrowed
// for the duration of the call. Safe from any goroutine; messages of one
// connection must be handed over in order (one goroutine per connection).
// A plain request or notification goes out with the routing lock held
// shared (fastpath.go); everything else is routed exclusively.
func (h *Hub) Handle(cl *Client, msg []byte) {
	h.st.clientMessages.Add(1)
	hd, err := jsonrpc.Peek(msg)
	if err == nil {
		h.mu.RLock()
		done := h.forwardShared(cl, msg, hd)
		h.mu.RUnlock()
		if done {
			return
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if cl.closed {
		return
	}
	cl.received.Add(1)
	h.routePeeked(cl, msg, hd, err)
}

// route is Handle under the hub mutex, for messages routed again later.
func (h *Hub) route(cl *Client, msg []byte) {
	hd, err := jsonrpc.Peek(msg)
	h.routePeeked(cl, msg, hd, err)
}

func (h *Hub) routePeeked(cl *Client, msg []byte, hd jsonrpc.Header, err error) {
	if err != nil {
		var je *jsonrpc.Error
		if errors.As(err, &je) {
			var id []byte
			if je.Code == codeInvalidRequest {
				id = hd.ID // known when the id itself was well-formed
			}
			h.replyError(cl, id, je.Code, je.Message)
		} else {
			h.replyError(cl, nil, codeParse, err.Error())
		}
		return
	}
	if hd.Kind == jsonrpc.KindResponse {
		if h.remoteRoute(cl, msg, hd, "") { // remote.go: an answer to another node's agent
			return
		}
		h.clientAnswer(cl, msg, hd)
		return
	}
	if bytes.HasPrefix(hd.Method, bridgePrefix) {
		h.bridgeCall(cl, msg, hd)
		return
	}
	method := string(hd.Method)
	if method == "initialize" && hd.Kind == jsonrpc.KindRequest && cl.info.Role != auth.RoleClient {
		// Every role may open a connection (a viewer's ACP HTTP or
		// WebSocket client starts with initialize), but only a client's
		// initialize reaches the agent: the others get the cached answer.
		if h.init.response != nil {
			h.replyCached(cl, hd.ID)
			return
		}
		h.replyError(cl, hd.ID, codeNotAllowed, fmt.Sprintf("initialize from a %s is answered from the agent's first initialize, and no client has initialized it yet", cl.info.Role))
		return
	}
	if !auth.AllowRequest(cl.info.Role, method) {
		h.st.denied.Add(1)
		h.audit(cl, AuditRecord{Session: string(hd.SessionID), Method: method, Outcome: "denied", Detail: "not allowed for role " + cl.info.Role.String()})
		h.replyError(cl, hd.ID, codeNotAllowed, fmt.Sprintf("method %q is not allowed for role %s", method, cl.info.Role))
		return
	}
	if h.remoteRoute(cl, msg, hd, method) { // remote.go
		return
	}
	if method != "initialize" && h.reinitialising() {
		h.hold(cl, msg, hd)
		return
	}
	if hd.Kind == jsonrpc.KindNotification {
		h.forwardNotification(cl, msg, hd, method)
		return
	}
	h.forwardRequest(cl, msg, hd, method)
}

// sessionGate checks that a request naming a session may be sent by cl: the
// session must be attached on this connection, or owned by it (an owner
// that detached from the data plane still drives its session; sessions are
// isolated between clients). For a client, unknown sessions are the agent's business; an
// operator (who may only cancel) must name a session it has attached. The
// lifecycle methods (load, resume, fork, list, status, set_title, close,
// delete, archive, unarchive) pass: a client may name any session with them
// and lifecycle.go decides what they do (docs/protocol.md, the gate table).
func (h *Hub) sessionGate(cl *Client, sid []byte, method string) (*Session, string) {
	full := cl.info.Role == auth.RoleClient
	if len(sid) == 0 {
		if !full {
			return nil, fmt.Sprintf("%s from a %s must name a session (params.sessionId) attached on this connection", method, cl.info.Role)
		}
		return nil, ""
	}
	s := h.sessions[string(sid)]
	if s == nil && !full {
		return nil, fmt.Sprintf("unknown session %q; bridge/sessions lists the known ones", sid)
	}
	if s == nil || (full && lifecycleOf(method) != gated) {
		return s, ""
	}
	if _, ok := cl.attached[s.ID]; !ok && s.owner != cl {
		return s, fmt.Sprintf("session %q is not attached on this connection; call bridge/attach first", s.ID)
	}
	return s, ""
}

func (h *Hub) forwardNotification(cl *Client, msg []byte, hd jsonrpc.Header, method string) {
	if param := cancelParam(method); param != "" {
		// A cancel names the sender's own request by the sender's id.
		if out, bid := h.clientCancel(cl, msg, method, param); out != nil {
			if err := h.toAgent(out); err != nil {
				h.log.Info("client cancel not delivered to the agent", "conn", cl.ID, "method", method, "err", err)
			}
			if method == "notifications/cancelled" {
				h.forgetCancelled(bid)
			}
		}
		return
	}
	s, why := h.sessionGate(cl, hd.SessionID, method)
	if why != "" {
		if method == "session/cancel" {
			h.audit(cl, AuditRecord{Session: string(hd.SessionID), Method: method, Outcome: "denied", Detail: why})
		}
		h.replyError(cl, nil, codeUnknownSession, why)
		return
	}
	switch method {
	case "initialized", "notifications/initialized":
		// LSP, MCP: the shared server hears it once per generation.
		if h.init.notified == nil {
			h.init.notified = clone(msg)
		}
		if h.init.sentNotif {
			return
		}
		h.init.sentNotif = true
	case "exit":
		// LSP: one client leaving must not stop the shared server.
		return
	}
	if err := h.toAgent(clone(msg)); err != nil {
		if method == "session/cancel" {
			h.audit(cl, AuditRecord{Session: string(hd.SessionID), Method: method, Outcome: "failed", Detail: err.Error()})
		}
		h.replyError(cl, nil, codeAgentUnavailable, "notification "+method+" not delivered: "+err.Error())
		return
	}
	if method == "session/cancel" {
		h.audit(cl, AuditRecord{Session: string(hd.SessionID), Method: method, Outcome: "forwarded"})
		h.cancelPermissions(cl, s)
	}
}

// cancelledOutcome is ACP's answer to a permission request whose prompt
// turn was cancelled.
var cancelledOutcome = []byte(`{"outcome":{"outcome":"cancelled"}}`)

// cancelPermissions answers the session's pending permission requests with
// the cancelled outcome after a session/cancel, as ACP asks of the client:
// the bridge does it on the clients' behalf so that a cancel sent while
// the owner is away does not leave the agent waiting for an answer nobody
// will give. Precondition: h.mu held.
func (h *Hub) cancelPermissions(cl *Client, s *Session) {
	if s == nil {
		return
	}
	for _, ar := range append([]*agentRequest(nil), s.pending...) {
		if ar.method != "session/request_permission" || ar.gen != h.gen || !h.st.agentUp.Load() {
			continue
		}
		if err := h.toAgent(jsonrpc.AppendRawResponse(nil, ar.agentID, cancelledOutcome)); err != nil {
			continue
		}
		h.audit(cl, AuditRecord{Session: s.ID, Method: ar.method, Outcome: "cancelled", RequestID: ar.id, ToolCall: ar.toolCall,
			Option: "cancelled", Detail: "answered by the bridge after session/cancel"})
		h.retireRequest(ar, nil)
	}
}

func (h *Hub) forwardRequest(cl *Client, msg []byte, hd jsonrpc.Header, method string) {
	s, why := h.sessionGate(cl, hd.SessionID, method)
	if why != "" {
		h.replyError(cl, hd.ID, codeUnknownSession, why)
		return
	}
	switch method {
	case "initialize":
		h.initialize(cl, msg, hd)
		return
	case "shutdown":
		// LSP: the server is shared; the bridge owns its lifetime.
		h.replyResult(cl, hd.ID, nil)
		return
	}
	if !h.st.agentUp.Load() {
		h.replyError(cl, hd.ID, codeAgentUnavailable, "the agent is not running (restarting); retry shortly")
		return
	}
	kind := lifecycleOf(method)
	if kind == closing && h.closeByOther(cl, s, hd.ID, method) {
		return
	}
	if !h.admitCall(cl, hd.ID, method) {
		return
	}
	c := &call{cl: cl, id: clone(hd.ID), method: method, sessionID: string(hd.SessionID), gen: h.gen}
	if out, ok := h.remapTokens(c, msg); !ok {
		h.replyError(cl, hd.ID, codeInvalidRequest, "a progress token member appears more than once; send each member once")
		return
	} else if len(c.tokens) > 0 {
		msg = out
		var err error
		if hd, err = jsonrpc.Peek(msg); err != nil {
			h.releaseTokens(c)
			h.replyError(cl, c.id, codeInternal, "the bridge could not remap the request's progress token: "+err.Error())
			return
		}
	}
	h.keepLoad(c, msg) // remote.go
	if !h.sendCall(c, msg, hd) {
		h.releaseTokens(c)
		return
	}
	switch method {
	case "session/cancel": // sent as a request by some clients
		h.audit(cl, AuditRecord{Session: c.sessionID, Method: method, Outcome: "forwarded"})
		h.cancelPermissions(cl, s)
	case "session/prompt":
		// v2 answers a prompt at once; its turn is followed by state_update
		// (lifecycle.go), so only v1 counts round trips.
		if s != nil && h.acpVersion < 2 {
			s.prompts++
			h.refreshStatus(s)
		}
	}
	if kind == attaching && c.sessionID != "" {
		// The agent replays history (load) or sends its state snapshot
		// (v2 resume) before it answers, so the caller is attached now,
		// not when the answer arrives.
		h.startAttaching(c, msg)
	}
}

// sendCall forwards a request to the agent under a fresh bridge id. On
// failure the caller's client (if any) has been answered with an error.
// The call is in the table before the agent can see it, so its answer
// always finds it.
func (h *Hub) sendCall(c *call, msg []byte, hd jsonrpc.Header) bool {
	bid := h.calls.newID()
	h.trackCall(bid, c)
	h.calls.put(bid, c)
	if err := h.toAgentReplacingID(msg, hd, appendID(c.bidBuf[:0], bid)); err != nil {
		if h.calls.take(bid, c) != nil {
			h.callLimitsDone(c)
		}
		if c.cl != nil {
			code := codeAgentUnavailable
			if errors.Is(err, ErrAgentOverloaded) {
				code = codeOverloaded
			}
			h.replyError(c.cl, c.id, code, "request "+c.method+" not delivered to the agent: "+err.Error())
		}
		return false
	}
	c.sent.Store(true)
	return true
}

func (h *Hub) initialize(cl *Client, msg []byte, hd jsonrpc.Header) {
	in := &h.init
	if in.response != nil {
		h.replyCached(cl, hd.ID)
		return
	}
	in.waiters = append(in.waiters, waiter{cl: cl, id: clone(hd.ID)})
	if in.inflight {
		return
	}
	if !h.st.agentUp.Load() {
		h.failInitWaiters("the agent is not running (restarting); retry shortly")
		return
	}
	in.request = clone(msg)
	h.sendInitialize()
}

// sendInitialize sends the cached initialize request to the agent on the
// bridge's own behalf; its answer is cached and handed to every waiter.
func (h *Hub) sendInitialize() {
	in := &h.init
	hd, err := jsonrpc.Peek(in.request)
	if err != nil {
		return
	}
	in.inflight = true
	c := &call{method: "initialize", gen: h.gen, internal: func(h *Hub, body []byte) {
		in.inflight = false
		rh, err := jsonrpc.Peek(body)
		if err != nil {
			return
		}
		if rh.IsError {
			// Not cached: each waiter sees the agent's error; the next
			// initialize tries again.
			for _, w := range in.waiters {
				h.reply(w.cl, w.id, lineOf(jsonrpc.ReplaceID(nil, body, rh, w.id)))
			}
			in.waiters = nil
			in.request = nil
			h.releaseHeld()
			return
		}
		in.response = clone(body)
		h.learnDialect(body)
		if r := h.loadRecorder(); r != nil { // remote.go
			r.RecordInitialize(in.request)
		}
		for _, w := range in.waiters {
			h.replyCached(w.cl, w.id)
		}
		in.waiters = nil
		if in.notified != nil && !in.sentNotif {
			in.sentNotif = true
			_ = h.toAgent(clone(in.notified))
		}
		h.releaseHeld()
	}}
	if !h.sendCall(c, in.request, hd) {
		in.inflight = false
		h.failInitWaiters("initialize not delivered to the agent")
	}
}

func (h *Hub) failInitWaiters(why string) {
	for _, w := range h.init.waiters {
		h.replyError(w.cl, w.id, codeAgentUnavailable, why)
	}
	h.init.waiters = nil
}

func (h *Hub) replyCached(cl *Client, id []byte) {
	body := h.init.response
	rh, err := jsonrpc.Peek(body)
	if err != nil {
		h.replyError(cl, id, codeAgentUnavailable, "cached initialize result is unreadable")
		return
	}
	h.reply(cl, id, lineOf(jsonrpc.ReplaceID(make([]byte, 0, len(body)+8), body, rh, id)))
}

// clientAnswer handles a client's response to an agent request: the first
// answer from a connection the request was delivered to wins.
func (h *Hub) clientAnswer(cl *Client, msg []byte, hd jsonrpc.Header) {
	id, ok := parseID(hd.ID)
	ar := h.requests[id]
	if !ok || ar == nil {
		if sid, done := h.resolved[id]; ok && done {
			if hd.IsError {
				// Typically the client acknowledging the cancel the
				// bridge sent it for this request: nothing to tell.
				return
			}
			h.send(cl, wire.ResolvedMsg(sid, id), wire.Control)
			return
		}
		h.replyError(cl, hd.ID, codeInvalidRequest, fmt.Sprintf("no agent request with id %s is awaiting an answer", hd.ID))
		return
	}
	if !auth.AllowAnswer(cl.info.Role, ar.method) {
		h.st.denied.Add(1)
		h.audit(cl, AuditRecord{Session: ar.sessionID, Method: ar.method, Outcome: "denied", RequestID: ar.id, ToolCall: ar.toolCall,
			Detail: "role " + cl.info.Role.String() + " may not answer"})
		h.replyError(cl, hd.ID, codeNotAllowed, fmt.Sprintf("role %s may not answer %s", cl.info.Role, ar.method))
		return
	}
	if _, asked := ar.sentTo[cl]; !asked {
		h.st.denied.Add(1)
		h.audit(cl, AuditRecord{Session: ar.sessionID, Method: ar.method, Outcome: "denied", RequestID: ar.id, ToolCall: ar.toolCall,
			Detail: "the request was not sent to this connection"})
		h.replyError(cl, hd.ID, codeNotAllowed, fmt.Sprintf("agent request %d was not sent to this connection", id))
		return
	}
	if ar.gen != h.gen || !h.st.agentUp.Load() {
		h.replyError(cl, hd.ID, codeAgentUnavailable, "the agent that asked has exited; the answer was not delivered")
		h.retireRequest(ar, nil)
		return
	}
	out := jsonrpc.ReplaceID(make([]byte, 0, len(msg)+len(ar.agentID)), msg, hd, ar.agentID)
	if err := h.toAgent(out); err != nil {
		h.replyError(cl, hd.ID, codeAgentUnavailable, "answer not delivered to the agent: "+err.Error())
		return
	}
	outcome := "answered"
	if hd.IsError {
		outcome = "answered-error"
	}
	h.audit(cl, AuditRecord{Session: ar.sessionID, Method: ar.method, Outcome: outcome, RequestID: ar.id, ToolCall: ar.toolCall, Option: answerDetail(msg)})
	h.retireRequest(ar, cl)
}

// answerDetail extracts what a permission answer chose, for the audit log.
func answerDetail(msg []byte) string {
	var v struct {
		Result struct {
			Outcome struct {
				Outcome  string `json:"outcome"`
				OptionID string `json:"optionId"`
			} `json:"outcome"`
		} `json:"result"`
	}
	if jsonrpc.Unmarshal(msg, &v) != nil || v.Result.Outcome.Outcome == "" {
		return ""
	}
	if v.Result.Outcome.OptionID != "" {
		return v.Result.Outcome.Outcome + ":" + v.Result.Outcome.OptionID
	}
	return v.Result.Outcome.Outcome
}
