package jsonrpc

import "strconv"

// JSON-RPC 2.0 standard error codes.
const (
	CodeParseError     = -32700 // the bytes are not JSON
	CodeInvalidRequest = -32600 // JSON, but not a JSON-RPC 2.0 message
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternal       = -32603
)

// agentbridge error codes, in the range JSON-RPC reserves for implementations.
const (
	CodeNotAllowed       = -32001 // the connection's role may not call this method
	CodeUnknownSession   = -32002
	CodeAgentUnavailable = -32003 // the agent crashed, exited or is restarting
	CodeOverloaded       = -32004 // overloaded or rate limited
	CodeTimeout          = -32005
)

// Error is a JSON-RPC error object. It is the error type of every failure this
// package reports about a message, so the code travels with the error and the
// caller can answer the peer without matching on text.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    any    `json:"data,omitempty"`
}

// Error implements the error interface.
func (e *Error) Error() string {
	return "jsonrpc: " + e.Message + " (code " + strconv.Itoa(e.Code) + ")"
}
