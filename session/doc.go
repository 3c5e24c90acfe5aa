// Package session is the routing core of agentbridge: it owns the sessions,
// the id remapping between clients and the agent, the per-session event log
// (seq numbers and replay), pending agent requests and task state.
//
// It knows nothing about sockets, gnet or WebSocket. Connections are seen
// through the Conn interface (queue a message of a class, close with a
// reason), so the same core serves the gnet loop, the TLS listener and tests;
// the agent is seen through the Agent interface (queue bytes for its stdin).
//
// Concurrency contract: every Hub method is safe from any goroutine. What
// exists and how it relates (sessions, connections, agent requests, owners
// and attachments) changes under the routing lock held exclusively; the hot
// paths (a client's plain request, the agent's answer to it, the agent's
// events, the replay pump) hold it shared and change state under a
// session's own lock, a client's cursor lock, the call table's shards and
// atomics (fastpath.go; Hub's fields say what guards each). Stats takes no
// lock. Nothing done under any of them blocks: Conn.Send and Agent.Send
// only enqueue, and may be called from several goroutines at once, and
// Conn.Close only schedules a close. Implementations of Conn and Agent must
// never call back into the Hub synchronously from those methods.
//
// The agent, the store and the audit log are seen through interfaces and
// types defined here (Agent, SplicingAgent, Journal, LogReader,
// RestoredSession, AuditRecord); cmd wires the concrete ones.
//
// Recovery: every data-plane event gets the next seq of its session and is
// kept in a bounded per-session log for bridge/attach {since|last}; replay
// and the switch to live delivery happen in one step under the session's
// lock (attach: the routing lock, exclusively), so
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
