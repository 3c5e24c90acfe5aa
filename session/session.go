package session

import (
	"sync"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/wire"
)

// Status is a session's task state.
type Status string

const (
	StatusIdle         Status = "idle"
	StatusRunning      Status = "running"       // a prompt is in flight
	StatusAwaitingHITL Status = "awaiting_hitl" // an agent request awaits a human
	StatusBlocked      Status = "blocked"       // the agent is unavailable
	StatusClosed       Status = "closed"        // the agent no longer has it
)

// Session is one agent session.
type Session struct {
	ID string // read-only

	// mu guards the session's stream state when the routing lock is held
	// shared (the hot paths): its log and seq, status and turn state. With
	// the routing lock held exclusively they may be used without it.
	mu      sync.Mutex
	log     *eventLog
	seq     uint64
	status  Status
	prompts int // session/prompt requests in flight
	// agentState is a v2 agent's last state_update state ("running",
	// "idle", "requires_action"; "" before any).
	agentState string

	// Guarded by h.mu (written exclusively, read under either mode).
	owner    *Client // nil while the owner is away
	attached []*Client
	// live are the attached clients the fan-out pushes to: those not
	// being fed from the log (no Client.catchup entry for s). A client
	// that lags leaves it and rejoins once caught up, so the fan-out does
	// no work per event for a connection that stopped reading. Changed
	// with h.mu held exclusively, or shared with mu held (what guards a
	// client's cursor of s too).
	live     []*Client
	pending  []*agentRequest // agent requests awaiting an answer, oldest first
	gen      uint64          // agent generation that knows the session
	closed   bool
	restored bool // recovered from the state directory
	// loaders are clients whose session/load (or v2 resume with
	// replayFrom) is in flight while the log already holds events: the
	// agent's replay goes to them only, unlogged (lifecycle.go).
	loaders []*Client
	lim     sessionLimits
	remote  remoteState // fleet mirror of another node's session (remote.go)
}

func (h *Hub) session(id string) *Session {
	s := h.sessions[id]
	if s == nil {
		s = &Session{ID: id, log: newEventLog(id, h.cfg.Replay, h.cfg.ReplayBytes, &h.logs), status: StatusIdle, gen: h.gen}
		h.addSession(s)
		h.unclaimed(s) // journaled once a client claims it

	}
	return s
}

// RestoredSession is a session recovered from the state directory (cmd
// converts the store's).
type RestoredSession struct {
	ID string
	// Seq is the highest seq the session may already have used: its next
	// event gets Seq+1.
	Seq uint64
	// Events are the kept events in ascending seq, possibly with holes.
	Events []RestoredEvent
}

// RestoredEvent is one persisted event; Body is kept without a copy.
type RestoredEvent struct {
	Seq  uint64
	Body []byte
}

// addSession and removeSession keep the sessions map and its count.
// Precondition: h.mu held.
func (h *Hub) addSession(s *Session) {
	h.sessions[s.ID] = s
	h.st.sessions.Add(1)
}

func (h *Hub) removeSession(s *Session) {
	s.log.release() // its memory goes back to --replay-memory
	delete(h.sessions, s.ID)
	h.st.sessions.Add(-1)
}

// Restore adds sessions recovered from the state directory: their history
// can be listed, snapshotted and attached; their status is closed until a
// client loads them into the agent again (session/load). Sessions the hub
// already knows are left alone. Safe from any goroutine; call it before
// serving connections.
func (h *Hub) Restore(sessions []RestoredSession) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, rs := range sessions {
		if h.sessions[rs.ID] != nil {
			continue
		}
		s := &Session{ID: rs.ID, log: newEventLog(rs.ID, h.cfg.Replay, h.cfg.ReplayBytes, &h.logs), status: StatusClosed, closed: true, restored: true, seq: rs.Seq}
		for _, e := range rs.Events {
			if e.Seq > s.seq {
				s.seq = e.Seq
			}
			m := wire.New(e.Body)
			m.SessionID, m.Seq = s.ID, e.Seq
			s.log.append(m)
		}
		h.addSession(s)
		h.trimLogs()
	}
}

func (s *Session) isAttached(cl *Client) bool {
	for _, c := range s.attached {
		if c == cl {
			return true
		}
	}
	return false
}

func (s *Session) attach(cl *Client) {
	if !s.isAttached(cl) && !cl.closed {
		if cl.attached == nil {
			cl.attached = make(map[string]*Session)
		}
		s.attached = append(s.attached, cl)
		cl.attached[s.ID] = s
		if _, paced := cl.cursor(s); !paced {
			s.live = append(s.live, cl)
		}
	}
}

func (s *Session) detach(cl *Client) {
	for i, c := range s.attached {
		if c == cl {
			s.attached = append(s.attached[:i], s.attached[i+1:]...)
			break
		}
	}
	s.leaveLive(cl)
}

// leaveLive takes cl out of the fan-out's recipients by swapping the last
// one into its place: the fan-out walks them backwards, so one that
// leaves while it is being served (it lagged) skips nobody. Precondition:
// as Session.live.
func (s *Session) leaveLive(cl *Client) {
	for i, c := range s.live {
		if c == cl {
			last := len(s.live) - 1
			s.live[i] = s.live[last]
			s.live[last] = nil
			s.live = s.live[:last]
			return
		}
	}
}

// joinLive makes cl a recipient of the fan-out again, if it is still
// attached (its catch-up ended). Precondition: as Session.live.
func (s *Session) joinLive(cl *Client) {
	if cl.attached[s.ID] == s && !cl.closed {
		s.live = append(s.live, cl)
	}
}

// eligible reports whether cl should be asked an agent request of method
// for this session: the owner always, attached operators for permissions.
func (s *Session) eligible(cl *Client, method string) bool {
	if s.owner == cl {
		return true
	}
	return method == "session/request_permission" && cl.info.Role == auth.RoleOperator && s.isAttached(cl)
}

func (s *Session) computeStatus(agentUp bool) Status {
	if s.remote.node != "" {
		return s.remote.status // the owning node decides
	}
	switch {
	case s.closed:
		return StatusClosed
	case !agentUp:
		return StatusBlocked
	case len(s.pending) > 0 || s.agentState == "requires_action":
		return StatusAwaitingHITL
	case s.prompts > 0 || s.agentState == "running":
		return StatusRunning
	default:
		return StatusIdle
	}
}

// refreshStatus recomputes the session's status and announces a change to
// its attached clients with bridge/status. Precondition: h.mu held
// exclusively, or shared with s.mu.
func (h *Hub) refreshStatus(s *Session) {
	st := s.computeStatus(h.st.agentUp.Load())
	if st == s.status {
		return
	}
	s.status = st
	if len(s.attached) == 0 {
		return
	}
	m := h.statusMsg(s.ID, st)
	for _, cl := range s.attached {
		h.send(cl, m, wire.Control)
	}
}

// publish appends an agent notification to the session's log and delivers
// it to every attached client. This is the fan-out hot path: one *wire.Msg
// for all recipients, enveloped once for those that asked for envelopes.
// The caller then calls trimLogs, with s.mu released. Precondition: h.mu
// held exclusively, or shared with s.mu.
func (h *Hub) publish(s *Session, m *wire.Msg) {
	s.seq++
	m.SessionID, m.Seq = s.ID, s.seq
	s.log.append(m)
	if h.cfg.Journal != nil && s.journaled() {
		h.cfg.Journal.Append(s.ID, s.seq, m.Body())
	}
	h.fanout(s, m)
}

// fanout delivers a logged event to every attached client not being fed
// from the log (s.live: the pump reads the event from the log for the
// others, in order). It walks them backwards: a client that refuses the
// event leaves s.live (queueEvent, lag) by a swap with the last one, which
// was served already. Precondition: as publish.
func (h *Hub) fanout(s *Session, m *wire.Msg) {
	delivered := 0
	for i := len(s.live) - 1; i >= 0; i-- {
		if h.queueEvent(s.live[i], s, m) {
			delivered++
		}
	}
	// Counted once per event, not once per recipient: this loop is the
	// fan-out hot path.
	h.st.deliveries.Add(uint64(delivered))
}
