package session

import (
	"fmt"

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
// never forwarded to the local agent: requests naming it are refused until
// cross-node forwarding exists.

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
		s = &Session{ID: sessionID, log: newEventLog(h.cfg.Replay, h.cfg.ReplayBytes, &h.logs), status: st}
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

// remoteRefused answers a request (or drops a notification) that names a
// mirrored session: the session's agent runs on another node, and this
// node does not forward to it yet. Precondition: h.mu held.
func (h *Hub) remoteRefused(cl *Client, hd jsonrpc.Header, method string) bool {
	if len(hd.SessionID) == 0 {
		return false
	}
	s := h.sessions[string(hd.SessionID)]
	if s == nil || s.remote.node == "" {
		return false
	}
	why := fmt.Sprintf("session %q runs on fleet node %q; this node does not forward %s to it yet: connect to that node to drive the session (bridge/attach here follows it)", s.ID, s.remote.node, method)
	if hd.Kind == jsonrpc.KindNotification {
		h.log.Info("notification for a remote session dropped", "conn", cl.ID, "method", method, "session", s.ID, "node", s.remote.node)
		return true
	}
	h.replyError(cl, hd.ID, codeAgentUnavailable, why)
	return true
}
