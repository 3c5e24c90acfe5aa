package session

import (
	"bytes"
	"fmt"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// The ACP session lifecycle as a plain client drives it (docs/protocol.md,
// "Session lifecycle"): session/resume and session/load attach the caller
// when forwarded (and detach it again if the agent refuses), a session
// whose owner is not connected passes to the caller, session/fork hands the
// new session to the caller from its first event, and session/close,
// session/delete and session/archive close the session for the bridge.
// Everything here runs under h.mu.

// lifecycle classifies a client method by how the session gate treats it.
type lifecycle uint8

const (
	gated      lifecycle = iota // needs the named session attached or owned
	attaching                   // session/load, session/resume: attach the caller
	forking                     // session/fork: any session; the new one is the caller's
	closing                     // session/close, session/delete, session/archive
	ungatedUse                  // session/list, session/status, session/set_title, session/unarchive
)

func lifecycleOf(method string) lifecycle {
	switch method {
	case "session/load", "session/resume":
		return attaching
	case "session/fork":
		return forking
	case "session/close", "session/delete", "session/archive":
		return closing
	case "session/list", "session/status", "session/set_title", "session/unarchive":
		return ungatedUse
	}
	return gated
}

// closeByOther handles session/close|delete|archive from a client that does
// not own the session while its owner is connected: the session stays the
// owner's, the caller is only detached, and the bridge answers success.
// It reports whether it answered. Precondition: h.mu held.
func (h *Hub) closeByOther(cl *Client, s *Session, id []byte, method string) bool {
	if s == nil || s.owner == nil || s.owner == cl {
		return false
	}
	h.detachClient(cl, s)
	h.audit(cl, AuditRecord{Session: s.ID, Method: method, Outcome: "detached", Detail: "the session's owner is connected; only this connection was detached"})
	h.replyResult(cl, id, struct{}{})
	return true
}

// detachClient takes s off cl's data plane. Precondition: h.mu held.
func (h *Hub) detachClient(cl *Client, s *Session) {
	h.endCatchup(cl, s)
	s.detach(cl)
	delete(cl.attached, s.ID)
}

// startAttaching runs when a session/load or session/resume was forwarded:
// the caller is attached now, so it sees what the agent sends before its
// answer (a load's replayed history), and takes the session over if its
// owner is gone. A load (or a v2 resume with replayFrom) into a session
// whose log already holds events makes the agent's replay loader-only.
// Precondition: h.mu held.
func (h *Hub) startAttaching(c *call, msg []byte) {
	cl := c.cl
	s := h.session(c.sessionID)
	if !s.isAttached(cl) {
		s.attach(cl)
		c.attachedNow = true
	}
	if s.owner == nil && cl.info.Role == auth.RoleClient {
		h.setOwner(s, cl)
		c.ownedNow = true
	}
	if s.seq > 0 && (c.method == "session/load" || hasMember(msg, "params", "replayFrom")) {
		s.loaders = append(s.loaders, cl)
		c.loading = true
	}
	for _, ar := range s.pending {
		if s.eligible(cl, ar.method) {
			h.deliverRequest(ar, cl)
		}
	}
}

func hasMember(msg []byte, path ...string) bool {
	start, _, dup := jsonrpc.Member(msg, path...)
	return start >= 0 || dup
}

// finishAttaching runs when the agent answered a load or resume.
// Precondition: h.mu held.
func (h *Hub) finishAttaching(c *call, s *Session, isError bool) {
	if s == nil {
		return
	}
	if c.loading {
		s.loaders = removeClient(s.loaders, c.cl)
	}
	if isError {
		if c.attachedNow {
			h.detachClient(c.cl, s)
		}
		if c.ownedNow && s.owner == c.cl {
			h.setOwner(s, nil)
		}
		return
	}
	s.gen, s.closed = h.gen, false
}

func removeClient(list []*Client, cl *Client) []*Client {
	for i, x := range list {
		if x == cl {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
}

// claimNew makes the session a session/new or session/fork answer names
// the caller's: owned and attached. Events the agent sent for it before its
// answer (a fork's history, available commands) are in its log; a session
// nobody else had is replayed to the caller from its first event.
// Precondition: h.mu held.
func (h *Hub) claimNew(c *call, sid string) *Session {
	s := h.session(sid)
	fresh := s.owner == nil && len(s.attached) == 0
	s.gen, s.closed = h.gen, false
	if !c.cl.closed {
		h.setOwner(s, c.cl)
		s.attach(c.cl)
		if fresh {
			h.startCatchup(c.cl, s, 0)
		}
	} else if p := c.cl.parking(); p != nil && h.parked[p.key] == p {
		// Its successor owns it and gets its events from the start.
		p.created = append(p.created, s.ID)
	}
	return s
}

// sessionClosed runs when the agent accepted session/close, session/delete
// or session/archive: the session is closed for the bridge (attached
// clients get bridge/status closed); delete and archive also drop it from
// bridge/sessions, delete from the persisted store.
// Precondition: h.mu held.
func (h *Hub) sessionClosed(cl *Client, s *Session, method string) {
	s.closed = true
	s.prompts, s.agentState = 0, ""
	h.refreshStatus(s)
	h.audit(cl, AuditRecord{Session: s.ID, Method: method, Outcome: "closed"})
	if method == "session/close" {
		return
	}
	for _, c := range append([]*Client(nil), s.attached...) {
		h.detachClient(c, s)
	}
	if s.owner != nil {
		h.setOwner(s, nil)
	}
	h.removeSession(s)
	if s.lim.unclaimed != nil { // leave the --max-sessions bound too (limits.go)
		h.lim.unclaimed.Remove(s.lim.unclaimed)
		s.lim.unclaimed = nil
	}
	if method == "session/delete" {
		if d, ok := h.cfg.Journal.(JournalDeleter); ok {
			d.Delete(s.ID)
		}
	}
}

// JournalDeleter is implemented by journals that can forget a session
// (session/delete). Delete is called under the hub lock and must only
// enqueue.
type JournalDeleter interface {
	Delete(sessionID string)
}

// loaderOnly delivers an agent event of a session being loaded to its
// loaders only, unlogged: the agent is replaying history the log already
// holds, and other attached clients must not see the conversation twice.
// The event has no seq (it is not in the log), so it reaches an enveloped
// connection as the bare message. Precondition: h.mu held.
func (h *Hub) loaderOnly(s *Session, msg []byte) {
	m := wire.New(msg) // msg may be borrowed (agentShared)
	for _, cl := range s.loaders {
		if !cl.closed {
			h.send(cl, m, wire.Data)
		}
	}
}

// v2 turn state (ACP protocol version 2): session/prompt is answered at
// once, and the turn is reported by session/update state_update.
var stateUpdateKey = []byte(`"state_update"`)

// trackState follows a v2 agent's state_update. Precondition: h.mu held.
func (h *Hub) trackState(s *Session, msg []byte) bool {
	if h.acpVersion < 2 || !bytes.Contains(msg, stateUpdateKey) {
		return false
	}
	var v struct {
		Params struct {
			Update struct {
				Kind  string `json:"sessionUpdate"`
				State string `json:"state"`
			} `json:"update"`
		} `json:"params"`
	}
	if jsonrpc.Unmarshal(msg, &v) != nil || v.Params.Update.Kind != "state_update" {
		return false
	}
	switch st := v.Params.Update.State; st {
	case "running", "idle", "requires_action":
		s.agentState = st
	default:
		// An unknown or custom state is busy until a known one arrives
		// (the schema forbids reading it as idle).
		s.agentState = "running"
	}
	return true
}

// learnDialect records, from the agent's initialize answer, which protocol
// it speaks: ACP (an integer protocolVersion), MCP (a string one) or LSP
// (capabilities without protocolVersion). It decides which cancel
// notification clients get for a retired agent request.
// Precondition: h.mu held.
func (h *Hub) learnDialect(body []byte) {
	start, end, _ := jsonrpc.Member(body, "result", "protocolVersion")
	switch {
	case start >= 0 && body[start] == '"':
		h.dialect = dialectMCP
	case start >= 0:
		h.dialect = dialectACP
		var v uint16
		if _, err := fmt.Sscan(string(body[start:end]), &v); err == nil {
			h.acpVersion = int(v)
		}
	default:
		if s, _, _ := jsonrpc.Member(body, "result", "capabilities"); s >= 0 {
			h.dialect = dialectLSP
		}
	}
}
