package httpfront

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// MCP Streamable HTTP (spec revision 2025-11-25, what the MCP TypeScript
// SDK 1.32 speaks) on /mcp. One Mcp-Session-Id is one bridge client, an
// acpConn with mcp set: the same endpoint, hub, roles and streams as ACP's.
// POST initialize without a session creates it (200 JSON with
// Mcp-Session-Id; the stdio server is initialized once, later initializes
// are answered from the hub's cache with the client's own id). A POSTed
// request is answered with an SSE stream that carries the progress
// notifications of that request (matched by its progressToken, which the
// hub keeps per client) and then its response, after which the stream
// ends; notifications and responses get 202. GET opens the session's
// stream of server-initiated messages (server→client requests, logging,
// list changes); DELETE ends the session.

// mcpVersions are the MCP-Protocol-Version values accepted. The header is
// optional (a client that negotiated 2025-03-26 does not send it).
var mcpVersions = map[string]bool{"2025-11-25": true, "2025-06-18": true, "2025-03-26": true}

// routeMCP names the stream m belongs to: a response ends its POST's
// stream ("\x02" + key), a progress notification goes to the stream of the
// request that gave its token, the rest to the GET stream. Writer only.
func (a *acpConn) routeMCP(m *wire.Msg) string {
	hd, err := jsonrpc.Peek(m.Body())
	if err != nil {
		return ""
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case hd.Kind == jsonrpc.KindResponse:
		key := string(hd.ID)
		if a.initWait != nil && a.initWait.id == key {
			return "\x00init"
		}
		if s, ok := a.pending[key]; ok {
			delete(a.pending, key)
			if strings.HasPrefix(s, "\x01") {
				return "\x02" + s
			}
			return s
		}
	case hd.Kind == jsonrpc.KindNotification && string(hd.Method) == "notifications/progress":
		var p struct {
			Params struct {
				Token json.RawMessage `json:"progressToken"`
			} `json:"params"`
		}
		if json.Unmarshal(m.Body(), &p) == nil {
			if s, ok := a.progTok[string(bytes.TrimSpace(p.Params.Token))]; ok {
				return s
			}
		}
	}
	return ""
}

// progressTokenOf is a request's params._meta.progressToken (raw JSON),
// or "".
func progressTokenOf(msg []byte) string {
	if !bytes.Contains(msg, []byte(`"progressToken"`)) {
		return ""
	}
	var p struct {
		Params struct {
			Meta struct {
				Token json.RawMessage `json:"progressToken"`
			} `json:"_meta"`
		} `json:"params"`
	}
	if json.Unmarshal(msg, &p) != nil {
		return ""
	}
	return string(bytes.TrimSpace(p.Params.Meta.Token))
}

// mcpErr is a JSON-RPC error body, as the MCP SDK's server answers
// transport-level refusals.
func mcpErr(status, code int, msg string) *Reply {
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": nil, "error": map[string]any{"code": code, "message": msg}})
	return &Reply{Status: status, CType: jsonType, Body: append(b, '\n')}
}

// ServeMCP answers a request on /mcp; done when the
// exchange now carries an SSE stream (a GET, or a POSTed request's
// answer), and a nil reply without done when it is parked (initialize).
func (f *Front) ServeMCP(hx Exchange, req *http.Request, body []byte) (*Reply, bool) {
	if _, _, rp := f.Admit(req, "mcp-http", true, hx.TLS()); rp != nil {
		return rp, false
	}
	if v := req.Header.Get("MCP-Protocol-Version"); v != "" && !mcpVersions[v] {
		return mcpErr(http.StatusBadRequest, -32000, fmt.Sprintf("Bad Request: unsupported MCP-Protocol-Version %q (supported: 2025-11-25, 2025-06-18, 2025-03-26)", v)), false
	}
	switch req.Method {
	case http.MethodPost:
		return f.mcpPost(hx, req, body)
	case http.MethodGet:
		if !strings.Contains(req.Header.Get("Accept"), "text/event-stream") {
			return mcpErr(http.StatusNotAcceptable, -32000, "Not Acceptable: GET /mcp needs Accept: text/event-stream"), false
		}
		a, rp := f.lookupConn(req, "Mcp-Session-Id", true)
		if rp != nil {
			return rp, false
		}
		return f.openStream(hx, a, "", req.Header.Get("Last-Event-ID") != "")
	case http.MethodDelete:
		a, rp := f.lookupConn(req, "Mcp-Session-Id", true)
		if rp != nil {
			return rp, false
		}
		a.ep.Close(wire.CloseGoingAway, "DELETE")
		return &Reply{Status: http.StatusOK, CType: textType}, false
	}
	return notAllowed(req.Method, "GET, POST, DELETE"), false
}

func (f *Front) mcpPost(hx Exchange, req *http.Request, body []byte) (*Reply, bool) {
	acc := req.Header.Get("Accept")
	if !strings.Contains(acc, "application/json") || !strings.Contains(acc, "text/event-stream") {
		return mcpErr(http.StatusNotAcceptable, -32000, "Not Acceptable: Client must accept both application/json and text/event-stream"), false
	}
	if mt := req.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(strings.TrimSpace(mt)), jsonType) {
		return mcpErr(http.StatusUnsupportedMediaType, -32000, fmt.Sprintf("Unsupported Media Type: Content-Type must be application/json, not %q", mt)), false
	}
	trim := bytes.TrimSpace(body)
	if len(trim) > 0 && trim[0] == '[' {
		return mcpErr(http.StatusBadRequest, -32600, "Invalid Request: JSON-RPC batches are not supported (removed in MCP 2025-06-18)"), false
	}
	hd, err := jsonrpc.Peek(trim)
	if len(trim) == 0 || trim[0] != '{' || err != nil {
		return mcpErr(http.StatusBadRequest, -32700, "Parse error: the body must be one JSON-RPC message object"), false
	}
	if req.Header.Get("Mcp-Session-Id") == "" {
		if string(hd.Method) != "initialize" || hd.Kind != jsonrpc.KindRequest || hd.ID == nil || string(hd.ID) == "null" {
			return mcpErr(http.StatusBadRequest, -32000, "Bad Request: Mcp-Session-Id header is required (only initialize opens a session)"), false
		}
		return f.openConn(hx, req, trim, hd, true), false
	}
	a, rp := f.lookupConn(req, "Mcp-Session-Id", true)
	if rp != nil {
		return rp, false
	}
	a.active.Store(time.Now().UnixNano())
	if hd.Kind != jsonrpc.KindRequest {
		a.inMu.Lock()
		a.ep.Input(trim, time.Now())
		a.inMu.Unlock()
		return &Reply{Status: http.StatusAccepted, CType: textType}, false
	}
	a.mu.Lock()
	a.posts++
	key := "\x01" + strconv.Itoa(a.posts)
	a.pending[string(hd.ID)] = key
	if tok := progressTokenOf(trim); tok != "" {
		a.progTok[tok] = key
	}
	a.mu.Unlock()
	if rp, done := f.openStream(hx, a, key, false); !done {
		return rp, false
	}
	a.inMu.Lock()
	a.ep.Input(trim, time.Now())
	a.inMu.Unlock()
	return nil, true
}
