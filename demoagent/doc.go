// Package demoagent is the built-in ACP (Agent Client Protocol, version 1 or 2)
// agent: `agentbridge demo-agent`, and what `serve` runs when no agent command
// is given. It speaks newline-delimited JSON-RPC 2.0 over an io.Reader and an
// io.Writer (stdin and stdout when run as a process) and needs no model: its
// answers are deterministic so tests and benchmarks can check them.
//
// # Protocol
//
//   - initialize → {protocolVersion: 1, agentCapabilities: {loadSession: true, ...},
//     agentInfo, authMethods: []}. Requests before initialize are served too.
//   - session/new {cwd, mcpServers} → {sessionId}.
//   - session/load {sessionId, ...}: replays the session's history as
//     user_message_chunk and agent_message_chunk updates, then → null. History
//     lives in memory only (the newest turns up to 64 KiB per session), so a
//     session of an earlier process is unknown.
//   - session/prompt {sessionId, prompt: [ContentBlock]} streams Options.Chunks
//     agent_message_chunk updates whose text is ChunkText(i, Chunks, ChunkSize),
//     Options.Pace apart; then Options.ToolCalls tool calls, each a tool_call
//     (status pending), a session/request_permission request to the client
//     when Options.Permission is set, and a tool_call_update: "completed" when
//     an allow option was selected, "failed" otherwise. Then → {stopReason:
//     "end_turn"}. A second prompt on a session that is still running fails.
//   - session/resume {sessionId, cwd} reopens a session (v1: no replay; v2:
//     replayFrom {type: "start"} replays its history, then a state_update
//     snapshot precedes the answer {}); session/fork {sessionId, cwd} → a new
//     session {sessionId} holding a copy of the history; session/close
//     cancels the running prompt and closes the session until it is resumed
//     (a prompt meanwhile gets -32002); session/delete forgets it;
//     session/list {cwd?} → {sessions: [{sessionId, cwd, title?, updatedAt}]}.
//     An unknown session is -32002. initialize advertises them
//     (sessionCapabilities list, resume, close, fork, delete).
//   - $/cancel_request {requestId} cancels the prompt with that request id.
//   - With Options.Protocol 2 (--protocol 2) it speaks ACP v2: initialize →
//     {protocolVersion: 2, info, capabilities: {session: {fork, delete}}}
//     (an older requested version is -32022); session/prompt is answered at
//     once with {messageId}, and the turn is a user_message_chunk, state_update
//     running, chunks carrying messageId, tool calls as tool_call_update
//     upserts, state_update requires_action while a permission request
//     ({sessionId, title, options}) waits, and state_update idle with the
//     stopReason; session/load is -32601.
//   - session/cancel {sessionId} (a notification) stops the session's prompt:
//     streaming ends, a pending permission request is abandoned, and the prompt
//     answers {stopReason: "cancelled"}. So does a permission answer with the
//     cancelled outcome.
//
// Prompt text (the text blocks, joined) that starts with "echo:" is answered
// with exactly one chunk holding the rest of the text, and no tool calls. Text
// that otherwise contains "crash" makes the process exit with status 3 after
// half of its chunks have been written: tests use it to crash the agent
// mid-stream.
//
// With Options.Stamp each agent_message_chunk update carries
// `_meta: {sentAt: <unix nanoseconds>}` (params.update._meta.sentAt) taken just
// before the message is queued for writing, for latency benchmarks.
//
// Errors: unparsable input gets -32700 and the agent keeps reading; a batch or
// a message that is not a request, notification or response gets -32600; an
// unknown method -32601; missing or mistyped params -32602, as do a session id
// the agent does not know ("unknown session <id>") and a prompt on a busy
// session. Unknown notifications are ignored, as JSON-RPC requires.
//
// # Concurrency
//
// One goroutine reads and dispatches, each running prompt has its own, and
// every outgoing message goes through a single writer goroutine, so messages
// never interleave and bursts are flushed together.
package demoagent
