package session

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

type helloParams struct {
	Envelope *bool   `json:"envelope"`
	OnSlow   string  `json:"onSlow"`
	Resume   *string `json:"resume"`
}

type helloResult struct {
	Version      string        `json:"version"`
	ConnectionID uint64        `json:"connectionId"`
	Role         string        `json:"role"`
	Envelope     bool          `json:"envelope"`
	OnSlow       string        `json:"onSlow"`
	Resume       *resumeResult `json:"resume,omitempty"`
}

type sessionParams struct {
	SessionID *string `json:"sessionId"`
	Since     *uint64 `json:"since"`
	Last      *int    `json:"last"`
}

type attachResult struct {
	SessionID string `json:"sessionId"`
	Seq       uint64 `json:"seq"`
	Status    Status `json:"status"`
	Replayed  int    `json:"replayed"`
}

type snapshotResult struct {
	SessionID string            `json:"sessionId"`
	Status    Status            `json:"status"`
	Seq       uint64            `json:"seq"`
	Owner     bool              `json:"ownerConnected"`
	Pending   []json.RawMessage `json:"pending"`
	Recent    []json.RawMessage `json:"recent"`
}

// bridgeCall answers a bridge/* method itself; it is never forwarded.
func (h *Hub) bridgeCall(cl *Client, msg []byte, hd jsonrpc.Header) {
	method := methodName(hd.Method) // interned: no string per bridge/hello
	if hd.Kind == jsonrpc.KindNotification {
		h.replyError(cl, nil, codeInvalidRequest, method+" must be sent as a request (with an id)")
		return
	}
	if !auth.AllowRequest(cl.info.Role, method) {
		h.st.denied.Add(1)
		h.audit(cl, AuditRecord{Method: method, Outcome: "denied", Detail: "not allowed for role " + cl.info.Role.String()})
		h.replyError(cl, hd.ID, codeNotAllowed, fmt.Sprintf("method %q is not allowed for role %s", method, cl.info.Role))
		return
	}
	// params, borrowed: Peek accepted msg (valid JSON, no duplicated
	// params), so finding the member needs no decoding and no copy.
	var params []byte
	if start, end, _ := jsonrpc.Member(msg, "params"); start >= 0 {
		params = msg[start:end]
	}
	decode := func(v any) bool {
		p := params
		if len(p) == 0 || string(p) == "null" {
			return true
		}
		if p[0] != '{' {
			h.replyError(cl, hd.ID, codeInvalidParams, method+": params must be an object")
			return false
		}
		if err := jsonrpc.Unmarshal(p, v); err != nil {
			h.replyError(cl, hd.ID, codeInvalidParams, method+": "+paramsError(p, v))
			return false
		}
		return true
	}
	switch method {
	case "bridge/hello":
		p, ok := readHello(params)
		if !ok {
			// Declared here, so that only this path pays for the decoder's
			// copy (the decoder takes it as an interface: the heap).
			var dp helloParams
			if !decode(&dp) {
				return
			}
			p = dp
		}
		switch p.OnSlow {
		case "", "catchup", "degrade", "disconnect":
		default:
			h.replyError(cl, hd.ID, codeInvalidParams, fmt.Sprintf("bridge/hello: onSlow must be \"catchup\", \"degrade\" or \"disconnect\", not %q", p.OnSlow))
			return
		}
		var rr *resumeResult
		var deliver func()
		if p.Resume != nil {
			var jerr *jsonrpc.Error
			if rr, deliver, jerr = h.resume(cl, *p.Resume); jerr != nil {
				h.replyError(cl, hd.ID, jerr.Code, jerr.Message)
				return
			}
		}
		if p.Envelope != nil {
			cl.opts.Envelope = *p.Envelope
		}
		if p.OnSlow != "" {
			cl.opts.OnSlow = p.OnSlow
		}
		if ol, ok := cl.conn.(OptionsListener); ok {
			ol.SetOptions(cl.opts)
		}
		h.replyHello(cl, hd.ID, rr)
		if deliver != nil {
			deliver()
		}
	case "bridge/sessions":
		var p listParams
		if !decode(&p) {
			return
		}
		h.listSessions(cl, hd.ID, p) // list.go
	case "bridge/attach", "bridge/detach", "bridge/snapshot":
		var p sessionParams
		if !decode(&p) {
			return
		}
		if p.SessionID == nil || *p.SessionID == "" {
			h.replyError(cl, hd.ID, codeInvalidParams, method+": sessionId (a non-empty string) is required")
			return
		}
		if method == "bridge/attach" {
			if err := h.attach(cl, hd.ID, *p.SessionID, p.Since, p.Last); err != nil {
				h.replyError(cl, hd.ID, err.Code, err.Message)
			}
			return
		}
		s := h.sessions[*p.SessionID]
		if s == nil {
			h.replyError(cl, hd.ID, codeUnknownSession, unknownSession(*p.SessionID))
			return
		}
		switch method {
		case "bridge/detach":
			h.endCatchup(cl, s)
			s.detach(cl)
			delete(cl.attached, s.ID)
			h.remoteAttached(cl, s, false) // remote.go
			h.replyResult(cl, hd.ID, struct{}{})
		case "bridge/snapshot":
			h.replyResult(cl, hd.ID, h.snapshot(cl, s))
		}
	default:
		h.replyError(cl, hd.ID, codeMethodNotFound, fmt.Sprintf("unknown bridge method %q", method))
	}
}

func unknownSession(id string) string {
	return fmt.Sprintf("unknown session %q; bridge/sessions lists the known ones", id)
}

// ErrClientClosed is Attach's error for a client that has left the hub.
var ErrClientClosed = errors.New("session: the client has left (the daemon is stopping or the connection closed)")

// Attach attaches cl to session sid as bridge/attach {since | last} does,
// for a transport that reads no JSON-RPC answers (an SSE stream): on
// success only the replay and the live events follow; a refusal is
// returned, as a *jsonrpc.Error with the code and message bridge/attach
// would answer, or ErrClientClosed. Safe from any goroutine.
func (h *Hub) Attach(cl *Client, sid string, since *uint64, last *int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cl.closed {
		return ErrClientClosed
	}
	if !auth.AllowRequest(cl.info.Role, "bridge/attach") {
		return &jsonrpc.Error{Code: codeNotAllowed, Message: fmt.Sprintf("method %q is not allowed for role %s", "bridge/attach", cl.info.Role)}
	}
	if err := h.attach(cl, nil, sid, since, last); err != nil {
		return err
	}
	return nil
}

// attach replays what the client asked for and attaches it, atomically with
// respect to the agent's stream (both happen under the hub mutex), so the
// replay and live events meet with no hole and no duplicate. The result is
// answered to id unless id is nil (Attach); a refusal is returned, not
// sent. Precondition: h.mu held.
func (h *Hub) attach(cl *Client, id []byte, sid string, since *uint64, last *int) *jsonrpc.Error {
	s := h.sessions[sid]
	if s == nil {
		return &jsonrpc.Error{Code: codeUnknownSession, Message: unknownSession(sid)}
	}
	if since != nil && last != nil {
		return &jsonrpc.Error{Code: codeInvalidParams, Message: "bridge/attach: give since or last, not both"}
	}
	if last != nil && *last < 0 {
		return &jsonrpc.Error{Code: codeInvalidParams, Message: "bridge/attach: last must be >= 0"}
	}
	// The replay starts after cursor; it is paced out by the pump.
	cursor, replay := s.seq, 0
	switch {
	case since != nil:
		if *since > s.seq {
			return &jsonrpc.Error{Code: codeInvalidParams, Message: fmt.Sprintf("bridge/attach: since %d is beyond the session's last seq %d", *since, s.seq)}
		}
		cursor = *since
		replay = s.log.countSince(cursor) + h.diskSpan(s, cursor)
	case last != nil:
		if first, n := s.log.lastSpan(*last); n > 0 {
			cursor, replay = first-1, n
		}
	}
	if s.owner == nil && cl.info.Role == auth.RoleClient {
		h.setOwner(s, cl)
	}
	h.claim(s)
	s.attach(cl)
	if id != nil {
		h.replyResult(cl, id, attachResult{SessionID: s.ID, Seq: s.seq, Status: s.status, Replayed: replay})
	}
	h.startCatchup(cl, s, cursor)
	for _, ar := range s.pending {
		if s.eligible(cl, ar.method) {
			h.deliverRequest(ar, cl)
		}
	}
	h.remoteAttached(cl, s, true) // remote.go: the owning node learns of an attach to its session
	return nil
}

// sendReplay queues the events of replay (the log's events after `after`,
// in order) and, where the events they stand for would be, a bridge/gap for
// every seq range the log does not hold: evicted from it, or never persisted
// before a daemon restart. toEnd also covers the range after the last event
// up to the session's seq. It returns the last seq it covered (queued or
// named by a gap), and whether it covered everything it was given; it
// stops at the first event the connection refuses (it lags).
// Precondition: h.mu held.
func (h *Hub) sendReplay(cl *Client, s *Session, after uint64, replay []*wire.Msg, toEnd bool) (last uint64, all bool) {
	oldest := s.log.oldest()
	gap := func(from, to uint64) {
		reason := "evicted from the replay log"
		if s.restored && (oldest == 0 || to >= oldest) {
			reason = "not persisted before the daemon stopped"
		}
		h.send(cl, wire.GapMsg(s.ID, from, to, reason), wire.Control)
	}
	next := after + 1
	for _, m := range replay {
		if m.Seq > next {
			gap(next, m.Seq-1)
		}
		if !h.queueEvent(cl, s, m) {
			return m.Seq - 1, false
		}
		h.st.deliveries.Add(1)
		next = m.Seq + 1
	}
	if toEnd && next <= s.seq {
		gap(next, s.seq)
		next = s.seq + 1
	}
	return next - 1, true
}

func (h *Hub) snapshot(cl *Client, s *Session) snapshotResult {
	r := snapshotResult{SessionID: s.ID, Status: s.status, Seq: s.seq, Owner: s.owner != nil,
		Pending: make([]json.RawMessage, 0, len(s.pending)), Recent: make([]json.RawMessage, 0, h.cfg.Recent)}
	for _, ar := range s.pending {
		r.Pending = append(r.Pending, json.RawMessage(ar.msg.Body()))
	}
	for _, m := range s.log.last(h.cfg.Recent) {
		if cl.opts.Envelope {
			m = m.Enveloped()
		}
		r.Recent = append(r.Recent, json.RawMessage(m.Body()))
	}
	return r
}
