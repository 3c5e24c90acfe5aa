package session

import (
	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/wire"
)

// Conn is a client connection as the hub sees it.
type Conn interface {
	// Send queues m for delivery and returns at once. It reports false when
	// a Control message could not be queued; the connection then closes
	// itself (the control plane is never dropped silently). Data messages
	// may be evicted or summarised by the connection's own policy.
	Send(m *wire.Msg, c wire.Class) bool
	// Close schedules the connection's close with a reason for the logs and
	// the peer (WebSocket close code where it applies). It must not call
	// back into the hub synchronously; the transport calls Hub.Closed later.
	Close(code CloseCode, reason string)
}

// CloseCode classifies why the hub closes a connection; transports map it
// to their own codes (WebSocket 1008/1009/1011/1013).
type CloseCode uint8

const (
	ClosePolicy    CloseCode = iota + 1 // a rule was broken (WebSocket 1008)
	CloseTooBig                         // a message over the size limit (1009)
	CloseTryAgain                       // overloaded: resume later by cursor (1013)
	CloseGoingAway                      // the daemon is stopping (1001)
	CloseInternal                       // an internal error (1011)
)

// WebSocket is the RFC 6455 status code a WebSocket transport closes with
// for this reason.
func (c CloseCode) WebSocket() uint16 {
	switch c {
	case ClosePolicy:
		return 1008
	case CloseTooBig:
		return 1009
	case CloseTryAgain:
		return 1013
	case CloseGoingAway:
		return 1001
	}
	return 1011
}

// Agent is the agent process as the hub sees it (agent.Supervisor).
type Agent interface {
	// Send queues one JSON message for the agent's stdin and returns at
	// once; it fails when the agent is down or its queue is full.
	Send(msg []byte) error
}

// Options are what a connection asked for with bridge/hello.
type Options struct {
	Envelope bool   // deliver data-plane events as bridge/event with seq
	OnSlow   string // "degrade" or "disconnect"
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
