package agent

import "errors"

var (
	// ErrUnavailable is returned by Send when no agent process is running:
	// before Start, between a crash and the restart, and after Stop.
	ErrUnavailable = errors.New("agent: unavailable")
	// ErrOverloaded is returned by Send when the bytes or messages waiting
	// for the agent's stdin would exceed Config.QueueBytes or QueueMessages.
	ErrOverloaded = errors.New("agent: overloaded: stdin queue full")
	// ErrMessageTooLarge names a message over Config.MaxMessage. Such a
	// message is now dropped and counted (see DropHandler), not a reason to
	// kill the agent; kept for callers that match it.
	ErrMessageTooLarge = errors.New("agent: message too large")
	// ErrNoCommand is returned by New when Config.Command is empty.
	ErrNoCommand = errors.New("agent: no command")
	// ErrStarted is returned by a second call to Start.
	ErrStarted = errors.New("agent: already started")
	// ErrStopped is returned by Start after Stop.
	ErrStopped = errors.New("agent: stopped")
	// ErrBadFraming is returned by ParseFraming for an unknown name.
	ErrBadFraming = errors.New("agent: unknown framing")
)
