// Package auth owns who may connect and what they may do: bearer tokens and
// the role each carries, the per-role method policy, the WebSocket Origin
// policy, and where a token is found in an HTTP request.
//
// Everything here is pure and safe for concurrent use once built: Tokens
// and OriginPolicy are immutable after construction, so any goroutine (an
// event loop doing a handshake, the router checking a method) may call
// them without locking.
//
// # Tokens
//
// A tokens file holds one `ROLE TOKEN` pair per line; '#' starts a comment
// anywhere on a line, blank lines are ignored. A token is at least
// MinTokenLen characters, all RFC 7230 token characters (so it can travel
// in the agentbridge.token.<T> WebSocket subprotocol) other than '#'.
// Errors name the file, the line and what is wrong, but never the token
// text, so they are safe to log. The daemon's generated token is a
// `client` token written in this same format, so the generated file can be
// passed to --tokens unchanged.
package auth
