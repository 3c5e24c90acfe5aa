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
	h.st.errors.Add(1)
	if id == nil {
		id = nullID
	}
	h.reply(cl, id, lineOf(jsonrpc.AppendError(nil, id, &jsonrpc.Error{Code: code, Message: msg})))
}

func (h *Hub) replyResult(cl *Client, id []byte, result any) {
	// Encoded into room for a typical answer and its newline (bridge/hello
	// on every connection): from nil, the envelope, sonic's buffer, the
	// copy and the newline each took an allocation of their own.
	h.reply(cl, id, lineOf(jsonrpc.AppendResponse(make([]byte, 0, replyRoom), id, result)))
}

// replyRoom is the buffer a bridge answer starts with: bridge/hello's
// (~130 bytes with its envelope) fits in one allocation of this size class.
const replyRoom = 192

func (h *Hub) statusMsg(sessionID string, st Status) *wire.Msg {
	return wire.StatusMsg(sessionID, string(st))
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
