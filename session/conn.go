package session

import (
	"errors"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/wire"
)

// Conn is a client connection as the hub sees it.
type Conn interface {
	// Send queues m for delivery and returns at once. It reports false when
	// a Control message could not be queued; the connection then closes
	// itself (the control plane is never dropped silently). For a Data
	// message, false means the connection lags and chose to catch up
	// (onSlow "catchup"): m was not queued, and the hub must stop pushing
	// the session's events to it and feed it from the session log instead
	// (Hub.Pump) from m's seq on. Otherwise data may be evicted or
	// summarised by the connection's own policy.
	Send(m *wire.Msg, c wire.Class) bool
	// Close schedules the connection's close with a reason for the logs and
	// the peer (WebSocket close code where it applies). It must not call
	// back into the hub synchronously; the transport calls Hub.Closed later.
	Close(code CloseCode, reason string)
}

// Waker is implemented by connections that the hub can ask to flush (and
// so to Pump) soon: a catch-up chunk read from disk off the hub's lock is
// queued by the next Pump. Wake must not block nor call back into the hub;
// any goroutine. A connection without it is pumped at its next flush.
type Waker interface {
	Wake()
}

// CloseCode classifies why a connection is closed: wire.CloseReason, the
// one close vocabulary (transports map it to their codes).
type CloseCode = wire.CloseReason

// The reasons the hub itself closes with; see wire.CloseReason.
const (
	ClosePolicy    = wire.ClosePolicy    // a rule was broken (WebSocket 1008)
	CloseTooBig    = wire.CloseTooBig    // a message over the size limit (1009)
	CloseTryAgain  = wire.CloseTryAgain  // overloaded: resume later by cursor (1013)
	CloseGoingAway = wire.CloseGoingAway // the daemon is stopping (1001)
	CloseInternal  = wire.CloseInternal  // an internal error (1011)
)

// Agent is the agent process as the hub sees it (cmd wires the agent
// package's Supervisor).
type Agent interface {
	// Send queues one JSON message for the agent's stdin and returns at
	// once; it copies msg. It fails when the agent is down, and with an
	// error matching ErrAgentOverloaded (errors.Is) when its queue is full.
	Send(msg []byte) error
}

// SplicingAgent is an Agent that frames a message with one span replaced
// (cmd wires agent.Supervisor's SendSplice). The hub forwards a request
// under its bridge id through it: the id's replacement and the agent
// queue's framing are then one copy, with no spliced message between.
type SplicingAgent interface {
	Agent
	// SendSplice is Send for msg with msg[start:end] replaced by repl.
	SendSplice(msg []byte, start, end int, repl []byte) error
}

// ErrAgentOverloaded is what an Agent's Send fails with (wrapped) when the
// agent's stdin queue is full: the client then gets -32004 rather than
// -32003.
var ErrAgentOverloaded = errors.New("session: the agent's stdin queue is full")

// Options are what a connection asked for with bridge/hello.
type Options struct {
	Envelope bool   // deliver data-plane events as bridge/event with seq
	OnSlow   string // "catchup", "degrade" or "disconnect"; "" for the role's default
}

// DefaultOnSlow is the onSlow policy of a connection whose client did not
// choose one, decided here only (delivery.DefaultPolicy reads it):
// viewers (dashboards) degrade, they want freshness; everyone else may be
// the one a pending agent request waits for and must not miss an event,
// so it catches up from the session log.
func DefaultOnSlow(r auth.Role) string {
	if r == auth.RoleViewer {
		return "degrade"
	}
	return "catchup"
}

// ConnInfo describes a connection when it is registered.
type ConnInfo struct {
	Role      auth.Role
	Transport string // "unix", "ws", "wss", "test"
	Peer      string // remote address or uid, for logs and audit
}

// OptionsListener is implemented by connections that need to know what
// their client asked for with bridge/hello (delivery policy lives in the
// transport's outbound queue).
type OptionsListener interface {
	SetOptions(o Options)
}
