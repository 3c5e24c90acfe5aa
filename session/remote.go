package session

import (
	"fmt"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// Fleet mirrors (the fleet package, serve --nats). A session whose agent
// runs on another node of the fleet is held here as a mirror: the fleet
// package feeds it the owning node's events, in seq order, from the
// session's JetStream subject (MirrorEvent), and its status from the fleet's
// KV bucket (Mirror). Its log, replay and catch-up are the ordinary ones, so
// bridge/attach {since|last}, bridge/snapshot and bridge/sessions work on a
// mirror exactly as on a local session, with the same no-hole no-duplicate
// guarantee: the mirror's log only ever grows in seq order under the hub
// mutex. A mirror is never journaled (the owning node journals it) and
// never forwarded to the local agent: with a Remote (Config.Remote) what a
// client sends for it goes to the owning node, and without one it is
// refused with -32003 naming the node.

// remoteState is the mirror part of a Session; node "" means local.
type remoteState struct {
	node   string
	status Status
}

// info is the listing row of s: a mirror names its node, a local session
// this daemon's (Config.Node, "" outside a fleet). Precondition: h.mu held.
func (h *Hub) info(s *Session) SessionInfo {
	in := info(s)
	if in.Node == "" {
		in.Node = h.cfg.Node
	}
	return in
}

// Mirror creates or updates the mirror of a session the agent of node runs,
// with the status that node published. It reports false, and does nothing,
// when the id names a session of the local agent: the local one wins (two
// agents minting the same id is the agents' collision, not the fleet's).
// Attached clients get bridge/status on a change. Safe from any goroutine.
func (h *Hub) Mirror(sessionID, node string, st Status) bool {
	if node == "" {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[sessionID]
	if s == nil {
		// Not in the unclaimed list: a mirror is the owning node's to
		// forget, not --max-sessions' (and it is never journaled).
		s = &Session{ID: sessionID, log: newEventLog(sessionID, h.cfg.Replay, h.cfg.ReplayBytes, &h.logs), status: st}
		h.addSession(s)
	} else if s.remote.node == "" {
		return false
	}
	s.remote = remoteState{node: node, status: st}
	h.refreshStatus(s)
	return true
}

// MirrorEvent appends the owning node's event seq to a mirror and delivers
// it to the attached clients. Events at or below the mirror's seq are
// duplicates (a redelivery) and are dropped; a seq past the next one leaves
// a hole that replay reports as bridge/gap (the stream no longer held
// those events). It reports whether sessionID is a mirror. body is copied.
// Safe from any goroutine.
func (h *Hub) MirrorEvent(sessionID string, seq uint64, body []byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[sessionID]
	if s == nil || s.remote.node == "" {
		return false
	}
	if seq <= s.seq {
		return true
	}
	m := wire.New(body)
	s.seq = seq
	m.SessionID, m.Seq = s.ID, seq
	s.log.append(m)
	h.trimLogs()
	h.fanout(s, m)
	return true
}

// MirrorSeq is the last seq a mirror holds (0 for none or not a mirror).
// Safe from any goroutine.
func (h *Hub) MirrorSeq(sessionID string) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.sessions[sessionID]; s != nil && s.remote.node != "" {
		return s.seq
	}
	return 0
}

// Remote carries what a client sends for a session of another fleet node to
// that node (the fleet package, serve --nats), which treats the client as a
// bridge client of its own (RemoteClient): its gates, owner rules and id
// remapping decide. Every method is called under the hub mutex and must
// only enqueue.
type Remote interface {
	// Forward takes m (m.Msg is borrowed: copy it). With m.Node set, m
	// names a mirrored session and Forward must take it; with m.Node ""
	// it is a client answer with a string id, or a cancel, which Forward
	// takes only when it recognises the request as one it carried.
	Forward(m RemoteMsg) bool
	// Attached tells the owning node that a connection attached (with
	// bridge/attach) the mirror of m.SessionID, so that the agent requests
	// it is eligible for reach it. m.Msg is nil.
	Attached(m RemoteMsg)
	// Detached tells the owning node that the connection detached
	// (bridge/detach) the mirror of m.SessionID. m.Msg is nil.
	Detached(m RemoteMsg)
	// Closed tells that a connection is gone.
	Closed(conn uint64)
}

// RemoteMsg is one client message for Remote.
type RemoteMsg struct {
	Conn      uint64
	Role      auth.Role
	Node      string // the node whose agent runs SessionID; "" for none
	SessionID string
	Attached  bool // the connection is attached to the mirror of SessionID
	Msg       []byte
	Header    jsonrpc.Header
}

// CancelParam is the params member naming the cancelled request in a
// cancel notification of method ("" when method is not a cancel).
func CancelParam(method string) string { return cancelParam(method) }

// remoteRoute hands a message for a mirrored session (or an answer or a
// cancel Remote recognises) to Remote; without one (or with no fleet) a
// request naming a mirror is refused with -32003 naming the node. It
// reports whether the message was taken. Precondition: h.mu held.
func (h *Hub) remoteRoute(cl *Client, msg []byte, hd jsonrpc.Header, method string) bool {
	var s *Session
	if len(hd.SessionID) > 0 {
		if s = h.sessions[string(hd.SessionID)]; s != nil && s.remote.node == "" {
			s = nil
		}
	}
	if h.cfg.Remote != nil {
		m := RemoteMsg{Conn: cl.ID, Role: cl.info.Role, Msg: msg, Header: hd}
		if s != nil {
			_, m.Attached = cl.attached[s.ID]
			m.Node, m.SessionID = s.remote.node, s.ID
		} else if hd.Kind == jsonrpc.KindResponse && !isString(hd.ID) || hd.Kind == jsonrpc.KindNotification && cancelParam(method) == "" || hd.Kind == jsonrpc.KindRequest {
			return false
		}
		return h.cfg.Remote.Forward(m)
	}
	if s == nil {
		return false
	}
	why := fmt.Sprintf("session %q runs on fleet node %q, and this node does not forward to it: connect to that node to drive the session (bridge/attach here follows it)", s.ID, s.remote.node)
	if hd.Kind == jsonrpc.KindNotification {
		h.log.Info("notification for a remote session dropped", "conn", cl.ID, "method", method, "session", s.ID, "node", s.remote.node)
		return true
	}
	h.replyError(cl, hd.ID, codeAgentUnavailable, why)
	return true
}

func isString(raw []byte) bool { return len(raw) > 0 && raw[0] == '"' }

// remoteAttached tells Remote that cl attached (or, attached false,
// detached) the mirror s. Precondition: h.mu held.
func (h *Hub) remoteAttached(cl *Client, s *Session, attached bool) {
	if h.cfg.Remote == nil || s.remote.node == "" || s.isAttached(cl) != attached {
		return
	}
	m := RemoteMsg{Conn: cl.ID, Role: cl.info.Role, Node: s.remote.node, SessionID: s.ID, Attached: attached}
	if attached {
		h.cfg.Remote.Attached(m)
	} else {
		h.cfg.Remote.Detached(m)
	}
}

// DetachRemote detaches cl, a stand-in (see AttachRemote), from the local
// session sessionID, as bridge/detach would; an owner stays the owner.
// Safe from any goroutine.
func (h *Hub) DetachRemote(cl *Client, sessionID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.sessions[sessionID]; s != nil && s.remote.node == "" {
		h.endCatchup(cl, s)
		s.detach(cl)
		delete(cl.attached, s.ID)
	}
}

// Deliver queues body (one JSON message, copied) to connection conn as
// control-plane traffic: what the owning node of a mirrored session
// answered or asked a client of this node. It reports false when conn is
// gone. Safe from any goroutine.
func (h *Hub) Deliver(conn uint64, body []byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	cl := h.conns[conn]
	if cl == nil || cl.closed {
		return false
	}
	h.send(cl, lineOf(clone(body)), wire.Control)
	return true
}

// AttachRemote attaches cl, the stand-in of a client of another node
// (RemoteClient), to the local session sessionID without replay (that
// node's mirror delivers the events) and delivers the pending agent
// requests cl is eligible for; the owner rule is bridge/attach's. It
// reports false when sessionID is not a session of the local agent. Safe
// from any goroutine.
func (h *Hub) AttachRemote(cl *Client, sessionID string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[sessionID]
	if s == nil || s.remote.node != "" || cl.closed {
		return false
	}
	if s.isAttached(cl) {
		return true
	}
	if s.owner == nil && cl.info.Role == auth.RoleClient {
		h.setOwner(s, cl)
	}
	h.claim(s)
	s.attach(cl)
	for _, ar := range s.pending {
		if s.eligible(cl, ar.method) {
			h.deliverRequest(ar, cl)
		}
	}
	return true
}

// LoadRecorder is implemented by a Journal that keeps what a restarted
// daemon needs to load its sessions into its new agent (the fleet package):
// the agent's first successful initialize request, and the request that
// created or loaded each session (session/new, load or resume: its cwd and
// mcpServers). Called under the hub mutex: both must only enqueue; request
// is immutable and may be kept.
type LoadRecorder interface {
	RecordInitialize(request []byte)
	RecordLoad(sessionID string, request []byte)
}

// loadRecorder is the journal's LoadRecorder, or nil.
func (h *Hub) loadRecorder() LoadRecorder {
	r, _ := h.cfg.Journal.(LoadRecorder)
	return r
}

// keepLoad keeps msg, a session/new, load or resume request, on c for
// recordLoad when the journal records loads. Precondition: h.mu held.
func (h *Hub) keepLoad(c *call, msg []byte) {
	switch c.method {
	case "session/new", "session/load", "session/resume":
		if h.loadRecorder() != nil {
			c.loadRequest = clone(msg)
		}
	}
}

// recordLoad hands the request that created or loaded sid to the journal,
// once the agent accepted it. Precondition: h.mu held.
func (h *Hub) recordLoad(c *call, sid string) {
	if r := h.loadRecorder(); r != nil && c.loadRequest != nil && sid != "" {
		r.RecordLoad(sid, c.loadRequest)
	}
}
