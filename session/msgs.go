package session

import (
	"strconv"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

const (
	codeParse            = jsonrpc.CodeParseError
	codeInvalidRequest   = jsonrpc.CodeInvalidRequest
	codeMethodNotFound   = jsonrpc.CodeMethodNotFound
	codeInvalidParams    = jsonrpc.CodeInvalidParams
	codeNotAllowed       = jsonrpc.CodeNotAllowed
	codeUnknownSession   = jsonrpc.CodeUnknownSession
	codeAgentUnavailable = jsonrpc.CodeAgentUnavailable
	codeOverloaded       = jsonrpc.CodeOverloaded
	codeTimeout          = jsonrpc.CodeTimeout
	codeInternal         = jsonrpc.CodeInternal
)

var nullID = []byte("null")

func lineOf(b []byte) *wire.Msg { return wire.Own(append(b, '\n')) }

func (h *Hub) replyError(cl *Client, id []byte, code int, msg string) {
	h.errors.Add(1)
	if id == nil {
		id = nullID
	}
	h.reply(cl, id, lineOf(jsonrpc.AppendError(nil, id, &jsonrpc.Error{Code: code, Message: msg})))
}

func (h *Hub) replyResult(cl *Client, id []byte, result any) {
	h.reply(cl, id, lineOf(jsonrpc.AppendResponse(nil, id, result)))
}

func notification(method string, params any) *wire.Msg {
	return lineOf(jsonrpc.AppendNotification(nil, method, params))
}

type statusParams struct {
	SessionID string `json:"sessionId,omitempty"`
	Status    Status `json:"status"`
}

func (h *Hub) statusMsg(sessionID string, st Status) *wire.Msg {
	return notification("bridge/status", statusParams{SessionID: sessionID, Status: st})
}

type resolvedParams struct {
	SessionID string `json:"sessionId,omitempty"`
	ID        int64  `json:"id"`
}

type gapParams struct {
	SessionID string `json:"sessionId"`
	FromSeq   uint64 `json:"fromSeq"`
	ToSeq     uint64 `json:"toSeq"`
	Reason    string `json:"reason"`
}

// GapMsg builds a bridge/gap notification; transports use it for events a
// connection did not get.
func GapMsg(sessionID string, from, to uint64, reason string) *wire.Msg {
	return notification("bridge/gap", gapParams{SessionID: sessionID, FromSeq: from, ToSeq: to, Reason: reason})
}

// parseID reads a bridge-assigned id (a JSON integer).
func parseID(raw []byte) (int64, bool) {
	if len(raw) == 0 || len(raw) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range raw {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func appendID(dst []byte, id int64) []byte { return strconv.AppendInt(dst, id, 10) }

func clone(b []byte) []byte { return append([]byte(nil), b...) }
