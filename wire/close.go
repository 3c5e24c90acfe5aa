package wire

import "fmt"

// CloseReason says why the daemon closes a connection. It is the one close
// vocabulary of every layer: the hub and the delivery endpoint choose it,
// transports map it to their wire code (WebSocket status, see WebSocket),
// and logs and metrics label closes with its String. New reasons go here,
// never as free text in a metric label.
type CloseReason uint8

const (
	// ClosePolicy: a rule was broken (auth, framing, a refused request of
	// the HTTP front). WebSocket 1008.
	ClosePolicy CloseReason = iota + 1
	// CloseTooBig: a message over the size limit. WebSocket 1009.
	CloseTooBig
	// CloseTryAgain: overloaded in a way the hub decided (admission,
	// resume). WebSocket 1013: resume later by cursor.
	CloseTryAgain
	// CloseGoingAway: the daemon is stopping, or the peer closed. 1001.
	CloseGoingAway
	// CloseInternal: an internal error. WebSocket 1011.
	CloseInternal
	// CloseControlCeiling: control messages (never dropped) did not fit
	// under the connection's control ceiling. 1013.
	CloseControlCeiling
	// CloseSlowConsumer: the onSlow "disconnect" policy fired. 1013.
	CloseSlowConsumer
	// CloseStalled: the peer took nothing for --stall-timeout while
	// something was due. 1013.
	CloseStalled
	// CloseInputBacklog: the peer kept sending requests while its answers
	// piled up past the control high watermark, past the bounded input it
	// may hold meanwhile. 1013.
	CloseInputBacklog
	// CloseFlood: input over the rate limit for too long. 1008.
	CloseFlood
	// CloseProtocol: the peer broke the transport's protocol (RFC 6455).
	// The transport's own status code goes in the close frame. 1002.
	CloseProtocol
	// CloseIdle: no traffic for the transport's deadline (HTTP request,
	// heartbeats). 1001.
	CloseIdle

	numCloseReasons = iota + 1 // one past the last reason
)

var closeNames = [numCloseReasons]string{
	ClosePolicy:         "policy",
	CloseTooBig:         "too_big",
	CloseTryAgain:       "try_again",
	CloseGoingAway:      "going_away",
	CloseInternal:       "internal",
	CloseControlCeiling: "control_ceiling",
	CloseSlowConsumer:   "slow_consumer",
	CloseStalled:        "stalled",
	CloseInputBacklog:   "input_backlog",
	CloseFlood:          "flood",
	CloseProtocol:       "protocol",
	CloseIdle:           "idle",
}

// String is the reason's label in logs and metrics.
func (r CloseReason) String() string {
	if int(r) < len(closeNames) && closeNames[r] != "" {
		return closeNames[r]
	}
	return fmt.Sprintf("CloseReason(%d)", uint8(r))
}

// WebSocket is the RFC 6455 status code a WebSocket close carries for r.
func (r CloseReason) WebSocket() uint16 {
	switch r {
	case ClosePolicy, CloseFlood:
		return 1008
	case CloseTooBig:
		return 1009
	case CloseTryAgain, CloseControlCeiling, CloseSlowConsumer, CloseStalled, CloseInputBacklog:
		return 1013
	case CloseGoingAway, CloseIdle:
		return 1001
	case CloseProtocol:
		return 1002
	}
	return 1011
}

// Overload reports whether r is one of the overload closes (1013) after
// which the queued backlog is not flushed: the client resumes by cursor.
func (r CloseReason) Overload() bool { return r.WebSocket() == 1013 }
