package session

import (
	"bytes"
	"strconv"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// Cancellations and progress tokens name requests and streams by values
// each peer chose, so they are remapped like ids (docs/protocol.md,
// "Cancellation and progress"): a client's cancel names its own in-flight
// request and reaches the agent with that request's bridge id; the agent's
// cancel of one of its requests reaches the clients that got it with the
// id they saw; a progress token a client put in a request is replaced by a
// bridge token, and the agent's progress for it goes back to that client
// alone with its own token. Everything here runs under h.mu.

// dialect is the protocol the agent speaks, learnt from its initialize
// answer; it picks the cancel notification clients get.
type dialect uint8

const (
	dialectUnknown dialect = iota
	dialectACP
	dialectMCP
	dialectLSP
)

// cancelParam is the params member naming the request in each protocol's
// cancel notification; "" means the method is not a cancel.
func cancelParam(method string) string {
	switch method {
	case "$/cancel_request", "notifications/cancelled": // ACP, MCP
		return "requestId"
	case "$/cancelRequest": // LSP
		return "id"
	}
	return ""
}

// cancelMsg is the cancel notification of the agent's protocol for the
// request clients know as id; nil when the protocol is unknown.
func (h *Hub) cancelMsg(id int64) *wire.Msg {
	var b []byte
	switch h.dialect {
	case dialectACP:
		b = append(b, `{"jsonrpc":"2.0","method":"$/cancel_request","params":{"requestId":`...)
	case dialectLSP:
		b = append(b, `{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":`...)
	case dialectMCP:
		b = append(b, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":`...)
	default:
		return nil
	}
	b = strconv.AppendInt(b, id, 10)
	return lineOf(append(b, "}}"...))
}

// sameID compares two raw JSON ids: byte for byte, or as numbers (7 and 7.0
// are one id; "7" and 7 are not).
func sameID(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	if len(a) == 0 || len(b) == 0 || a[0] == '"' || b[0] == '"' || a[0] == 'n' || b[0] == 'n' {
		return false
	}
	x, err1 := strconv.ParseFloat(string(a), 64)
	y, err2 := strconv.ParseFloat(string(b), 64)
	return err1 == nil && err2 == nil && x == y
}

// clientCancel rewrites a client's cancel notification to name the bridge
// id of the client's own in-flight request. It returns the message to
// forward and that bridge id, or nil when it must be dropped (it names no
// request of this client in flight: forwarding it would cancel another
// client's request, or nothing).
func (h *Hub) clientCancel(cl *Client, msg []byte, method, param string) ([]byte, int64) {
	start, end, dup := jsonrpc.Member(msg, "params", param)
	if start < 0 {
		h.log.Info("client cancel names no request; dropped", "conn", cl.ID, "method", method, "ambiguous", dup)
		return nil, 0
	}
	want := msg[start:end]
	var bid int64 = -1
	if ids := h.calls.ids(func(c *call) bool { return c.cl == cl && sameID(c.id, want) }); len(ids) > 0 {
		bid = ids[0]
	}
	if bid < 0 {
		h.log.Info("client cancel names a request it has not got in flight; dropped", "conn", cl.ID, "method", method, "id", string(want))
		return nil, 0
	}
	var idb [20]byte
	return jsonrpc.Splice(make([]byte, 0, len(msg)+8), msg, start, end, appendID(idb[:0], bid)), bid
}

// forgetCancelled retires a call its client cancelled with MCP's
// notifications/cancelled: an MCP server sends no response to a cancelled
// request (and the client expects none), so the call would otherwise stay
// in flight, holding its slot and progress tokens.
func (h *Hub) forgetCancelled(bid int64) {
	if c := h.calls.take(bid, nil); c != nil {
		h.callDone(c)
	}
}

// agentCancel routes the agent's cancel of one of its own requests to the
// clients it was sent to, naming it by the id they saw. A request nobody
// got yet is answered for them (-32800, request cancelled) and retired.
// It reports whether msg was a cancel it handled.
func (h *Hub) agentCancel(msg []byte, method string) bool {
	param := cancelParam(method)
	if param == "" {
		return false
	}
	start, end, _ := jsonrpc.Member(msg, "params", param)
	if start < 0 {
		h.log.Info("agent cancel names no request; dropped", "method", method)
		return true
	}
	var ar *agentRequest
	for _, r := range h.requests {
		if r.gen == h.gen && sameID(r.agentID, msg[start:end]) {
			ar = r
			break
		}
	}
	if ar == nil {
		h.log.Debug("agent cancelled a request no client is asked; dropped", "method", method, "id", string(msg[start:end]))
		return true
	}
	if len(ar.sentTo) == 0 {
		h.answerAgentError(ar, codeRequestCancelled, "cancelled before any client was asked")
		h.retireRequest(ar, nil)
		return true
	}
	var idb [20]byte
	m := lineOf(jsonrpc.Splice(make([]byte, 0, len(msg)+8), msg, start, end, appendID(idb[:0], ar.id)))
	for cl := range ar.sentTo {
		h.send(cl, m, wire.Control)
	}
	return true
}

// codeRequestCancelled is LSP's RequestCancelled, which ACP reuses.
const codeRequestCancelled = -32800

// progressRoute is a progress token a client put in a request.
type progressRoute struct {
	cl    *Client
	token []byte // the client's token, raw JSON
}

// tokenPaths are where requests carry progress tokens: MCP's
// params._meta.progressToken, LSP's workDoneToken and partialResultToken.
var tokenPaths = [...][]string{
	{"params", "_meta", "progressToken"},
	{"params", "workDoneToken"},
	{"params", "partialResultToken"},
}

// tokenPrefix starts every progress token the bridge mints (raw JSON).
var tokenPrefix = []byte(`"agentbridge-progress-`)

var tokenHints = [...][]byte{[]byte(`progressToken"`), []byte(`workDoneToken"`), []byte(`partialResultToken"`)}

// tokenTail is what every one of tokenHints ends with (hasToken).
var tokenTail = []byte(`Token"`)

// remapTokens replaces the progress tokens of a client request with bridge
// tokens, recorded on c so they are forgotten when the call ends. It
// returns msg unchanged when it has none, and ok false when a token key is
// duplicated (the request is then refused: the agent could read the other
// one).
func (h *Hub) remapTokens(c *call, msg []byte) (out []byte, ok bool) {
	out = msg
	for i, p := range tokenPaths {
		if !bytes.Contains(out, tokenHints[i]) {
			continue
		}
		start, end, dup := jsonrpc.Member(out, p...)
		if dup {
			return msg, false
		}
		if start < 0 {
			continue
		}
		h.nextToken++
		tok := strconv.AppendInt(append([]byte(nil), tokenPrefix...), h.nextToken, 10)
		tok = append(tok, '"')
		if h.progress == nil {
			h.progress = make(map[string]progressRoute)
		}
		h.progress[string(tok)] = progressRoute{cl: c.cl, token: clone(out[start:end])}
		c.tokens = append(c.tokens, string(tok))
		out = jsonrpc.Splice(make([]byte, 0, len(out)+len(tok)), out, start, end, tok)
	}
	return out, true
}

// releaseTokens forgets a finished call's progress tokens.
func (h *Hub) releaseTokens(c *call) {
	for _, t := range c.tokens {
		delete(h.progress, t)
	}
	c.tokens = nil
}

// agentProgress routes notifications/progress (MCP) and $/progress (LSP)
// whose token the bridge minted to the client that owns it, with the
// client's own token. It reports whether it handled msg.
func (h *Hub) agentProgress(msg []byte, method string) bool {
	var key string
	switch method {
	case "notifications/progress":
		key = "progressToken"
	case "$/progress":
		key = "token"
	default:
		return false
	}
	start, end, _ := jsonrpc.Member(msg, "params", key)
	if start < 0 {
		return false
	}
	tok := msg[start:end]
	r, ok := h.progress[string(tok)]
	if !ok {
		if bytes.HasPrefix(tok, tokenPrefix) {
			// Minted here for a request that has ended (answered, or
			// cancelled while the agent still reports): nobody's anymore.
			h.log.Debug("agent progress for a finished request; dropped", "token", string(tok))
			return true
		}
		return false // the agent's own token (e.g. LSP window/workDoneProgress/create)
	}
	if !r.cl.closed {
		h.send(r.cl, lineOf(jsonrpc.Splice(make([]byte, 0, len(msg)+len(r.token)), msg, start, end, r.token)), wire.Data)
	}
	return true
}
