// Package session is the routing core of agentbridge: it owns the sessions,
// the id remapping between clients and the agent, the per-session event log
// (seq numbers and replay), pending agent requests and task state.
//
// It knows nothing about sockets, gnet or WebSocket. Connections are seen
// through the Conn interface (queue a message of a class, close with a
// reason), so the same core serves the gnet loop, the TLS listener and tests;
// the agent is seen through the Agent interface (queue bytes for its stdin).
//
// Concurrency contract: every Hub method is safe from any goroutine. The hub
// serialises routing decisions under one mutex; nothing done under it blocks:
// Conn.Send and Agent.Send only enqueue, and Conn.Close only schedules a
// close. Implementations of Conn and Agent must never call back into the Hub
// synchronously from those methods.
//
// Recovery: every data-plane event gets the next seq of its session and is
// kept in a bounded per-session log for bridge/attach {since|last}; replay
// and the switch to live delivery happen in one step under the lock, so
// they meet with no hole and no duplicate, and what is missing is reported
// as bridge/gap first. With a Journal (the store package, --state-dir) each
// event is also handed to a writer goroutine, and Restore brings the
// history back after a restart. Agent requests wait for an eligible client
// (bounded by RequestTimeout); a connection that said bridge/hello {resume}
// leaves its calls parked when it drops, and the next connection with the
// same key takes them over (resume.go). Control-plane decisions go to the
// Audit hook.
//
// Message bytes handed to Handle are borrowed for the duration of the call
// (they usually live in the event loop's inbound buffer); the hub copies what
// it forwards or keeps. Messages it delivers are shared *wire.Msg values:
// one allocation per message, none per recipient.
package session
