package httpfront

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
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
// stream of server-initiated messages; DELETE ends the session.
//
// Server→client requests (sampling, elicitation, roots) reach every
// client-role session (the hub's rule: the first valid answer wins, the
// others get notifications/cancelled). Each goes on the client's latest
// POST stream still waiting for its response, so it arrives before that
// response as the spec has it (a stdio server asks while it handles a
// call), else on the GET stream. Notifications other than a request's
// progress (list changes, logging, cancellations) relate to no request
// the bridge can tell, so they go on the GET stream.
//
// Every event carries an id "N-SEQ": N names the stream (0 the GET
// stream, n the session's n-th POST stream) and SEQ counts its events. A
// POST stream opens with a priming event (an id, empty data), so a client
// whose POST drops before the response can resume it: a GET with
// Last-Event-ID replays that stream's events after the id and then carries
// the rest of it. Each stream keeps its last mcpReplayEvents events (at
// most mcpReplayBytes) for that, and an answered POST stream is kept
// until mcpDoneKeep later ones are answered.

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
	case hd.Kind == jsonrpc.KindRequest:
		return a.latestPost()
	}
	return ""
}

// Bounds of what an MCP stream keeps for Last-Event-ID.
const (
	mcpReplayEvents = 256
	mcpReplayBytes  = 1 << 20
	mcpDoneKeep     = 16
)

// mcpLog is an MCP stream's event ids and the events a Last-Event-ID can
// replay. Guarded by acpConn.mu.
type mcpLog struct {
	n         int        // the stream's number: 0 the GET stream, else its POST's
	seq       uint64     // the last event id given
	queued    []mcpEvent // the events in the stream's buf, oldest first
	sent      []mcpEvent // events a sink took, oldest first, bounded
	sentBytes int
	done      bool // a POST stream whose response was taken
}

type mcpEvent struct {
	seq uint64
	b   []byte
}

// event gives frame f the stream's next id and returns the event.
func (l *mcpLog) event(f []byte) []byte {
	l.seq++
	ev := make([]byte, 0, len(f)+24)
	ev = append(ev, "id: "...)
	ev = strconv.AppendInt(ev, int64(l.n), 10)
	ev = append(ev, '-')
	ev = strconv.AppendUint(ev, l.seq, 10)
	ev = append(ev, '\n')
	ev = append(ev, f...)
	l.queued = append(l.queued, mcpEvent{seq: l.seq, b: ev})
	return ev
}

// taken moves what was queued to what a resume can replay.
func (l *mcpLog) taken() {
	for _, e := range l.queued {
		l.sent = append(l.sent, e)
		l.sentBytes += len(e.b)
	}
	l.queued = nil
	drop := 0
	for len(l.sent)-drop > mcpReplayEvents || (l.sentBytes > mcpReplayBytes && len(l.sent)-drop > 1) {
		l.sentBytes -= len(l.sent[drop].b)
		drop++
	}
	l.sent = l.sent[drop:]
}

// rewind puts the taken events after seq back in front of the queue and
// returns their bytes, for the stream's buf.
func (l *mcpLog) rewind(after uint64) []byte {
	i := sort.Search(len(l.sent), func(i int) bool { return l.sent[i].seq > after })
	again := slices.Clone(l.sent[i:])
	var b []byte
	for _, e := range again {
		b = append(b, e.b...)
		l.sentBytes -= len(e.b)
	}
	l.sent = l.sent[:i:i]
	l.queued = append(again, l.queued...)
	return b
}

// latestPost is the stream of the session's latest POST still waiting for
// its response, or "" (the GET stream). Precondition: a.mu held.
func (a *acpConn) latestPost() string {
	best, key := 0, ""
	for k, st := range a.streams {
		if strings.HasPrefix(k, "\x01") && !st.final && !st.mcp.done && st.mcp.n > best {
			best, key = st.mcp.n, k
		}
	}
	return key
}

// retire ends an MCP POST stream whose response was taken; it is kept for
// a late Last-Event-ID until mcpDoneKeep later ones end. Precondition:
// a.mu held.
func (a *acpConn) retire(key string) {
	st := a.streams[key]
	if st == nil || st.mcp.done {
		return
	}
	if !a.mcp {
		delete(a.streams, key)
		return
	}
	st.mcp.done = true
	a.doneQ = append(a.doneQ, key)
	if len(a.doneQ) > mcpDoneKeep {
		delete(a.streams, a.doneQ[0])
		a.doneQ = a.doneQ[1:]
	}
}

// mcpResume rewinds the stream a Last-Event-ID names to just after it and
// returns the stream's key, or the refusal of an id this session never
// gave or no longer keeps.
func (a *acpConn) mcpResume(last string) (string, *Reply) {
	ns, ss, ok := strings.Cut(last, "-")
	n, err1 := strconv.Atoi(ns)
	seq, err2 := strconv.ParseUint(ss, 10, 64)
	if !ok || err1 != nil || err2 != nil || n < 0 {
		return "", mcpErr(http.StatusBadRequest, -32000, fmt.Sprintf("Bad Request: Last-Event-ID %q is not an event id of this server (N-SEQ)", last))
	}
	key := ""
	if n > 0 {
		key = "\x01" + strconv.Itoa(n)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.streams[key]
	if st == nil || seq > st.mcp.seq {
		return "", mcpErr(http.StatusNotFound, -32000, fmt.Sprintf("Not Found: no stream to resume after Last-Event-ID %q (it ended long ago, or never was)", last))
	}
	b := st.mcp.rewind(seq)
	st.buf = append(b, st.buf...)
	a.queued += len(b)
	return key, nil
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
		key, last := "", req.Header.Get("Last-Event-ID")
		if last != "" {
			if key, rp = a.mcpResume(last); rp != nil {
				return rp, false
			}
		}
		return f.openStream(hx, a, key, last != "")
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
	// The priming event: its id lets the client resume the stream.
	st := &acpStream{mcp: mcpLog{n: a.posts}}
	st.buf = st.mcp.event([]byte("data: \n\n"))
	a.queued += len(st.buf)
	a.streams[key] = st
	a.mu.Unlock()
	if rp, done := f.openStream(hx, a, key, false); !done {
		return rp, false
	}
	a.inMu.Lock()
	a.ep.Input(trim, time.Now())
	a.inMu.Unlock()
	return nil, true
}
