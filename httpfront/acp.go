package httpfront

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/wire"
)

// ACP Streamable HTTP (shared/ACP.md A1, the SDK's AcpServer as the
// reference) on /acp: POST initialize creates a connection (200 JSON plus
// Acp-Connection-Id), later POSTs are 202 and their answers arrive on SSE
// streams opened by GET, one per connection and one per session
// (Acp-Session-Id); DELETE ends the connection.
//
// One Acp-Connection-Id is one bridge client: one delivery.Endpoint
// registered with the hub in the role of the token that created it. The
// endpoint's transport is the acpConn: its writer is the acpConn's own
// goroutine, which frames each message as one SSE event and routes it to
// the stream it belongs to (a byte queue per stream). A stream's GET is a
// Sink of the listener it came on (a gnet TCP connection fed on its loop, or
// a net/http handler goroutine) that takes that queue; a stream with no
// GET keeps queueing, and a connection whose streams hold more than
// acpBacklogMax stops draining its outbox, so the outbox's slow-consumer
// policy (degrade or disconnect) applies as on every other transport.

// acpBacklogMax is what a connection's stream queues may hold before its
// writer stops draining the outbox.
const acpBacklogMax = 4 << 20

// MaxBody bounds a POSTed message (the SDK's Node adapter: 16 MiB, 413).
const MaxBody = 16 << 20

// acpMaxID is the SDK's maxIdLength for session ids and string request ids.
const acpMaxID = 1024

// acpSessionMethods need Acp-Session-Id on their POST (A1, list (a)).
var acpSessionMethods = map[string]bool{
	"session/cancel": true, "session/close": true, "session/delete": true, "session/fork": true,
	"session/load": true, "session/prompt": true, "session/resume": true,
	"session/set_config_option": true, "session/set_mode": true, "session/set_model": true,
}

// acpRegistry holds the listener's live ACP HTTP connections.
type acpRegistry struct {
	mu    sync.Mutex
	conns map[string]*acpConn
	idle  time.Duration
}

func (r *acpRegistry) get(id string) *acpConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns[id]
}

func (r *acpRegistry) remove(a *acpConn) {
	r.mu.Lock()
	if r.conns[a.id] == a {
		delete(r.conns, a.id)
	}
	r.mu.Unlock()
}

// reap closes connections with no open stream and no request for the idle
// limit. Ticker goroutine.
func (r *acpRegistry) reap(now int64) {
	if r.idle <= 0 {
		return
	}
	var idle []*acpConn
	r.mu.Lock()
	for _, a := range r.conns {
		if a.gets.Load() == 0 && now-a.active.Load() > int64(r.idle) {
			idle = append(idle, a)
		}
	}
	r.mu.Unlock()
	for _, a := range idle {
		a.ep.Close(wire.CloseIdle, "no stream and no request for --http-idle")
	}
}

// acpStream is one SSE stream of a connection: the connection's own ("")
// or a session's. Guarded by acpConn.mu.
type acpStream struct {
	buf   []byte // events framed and not yet taken by a GET
	sink  Sink   // the GET that receives it; nil while none
	final bool   // MCP POST stream: its response is queued; end after it
	mcp   mcpLog // MCP: event ids and what Last-Event-ID can replay
}

// acpConn is one ACP Streamable HTTP connection.
type acpConn struct {
	f     *Front
	mcp   bool // an MCP session (/mcp, Mcp-Session-Id) rather than ACP
	id    string
	token [32]byte // sha256 of the token that created it
	ep    *delivery.Endpoint

	wake chan struct{}
	quit chan struct{}

	active atomic.Int64 // unix nanos of the last request or stream end
	gets   atomic.Int32 // open GETs

	inMu sync.Mutex // serialises Endpoint.Input (the endpoint's reader side)

	mu       sync.Mutex
	streams  map[string]*acpStream
	queued   int               // bytes in every stream's buf
	pending  map[string]string // client request id → stream of its answer
	agentReq map[string]string // agent request id → the session stream it went out on
	initWait *acpInitWait      // the POST initialize waiting for its answer
	closed   bool
	posts    int               // MCP: POST streams opened, for their keys
	progTok  map[string]string // MCP: progress token (raw JSON) → the POST stream of its request
	doneQ    []string          // MCP: answered POST streams kept for a late Last-Event-ID, oldest first

	// Writer goroutine only.
	routes []string
}

// acpInitWait is a POST initialize waiting for its answer, parked by its
// Exchange.
type acpInitWait struct {
	answer func(*Reply)
	id     string
}

// Exchange is the HTTP exchange an ACP or MCP request arrived on, as the
// listener that read it serves it: a gnet connection (package loop) or a
// net/http request (this package, for the TLS listener).
type Exchange interface {
	// Peer names the client for logs.
	Peer() string
	// TLS reports whether the exchange came over TLS (for the Origin
	// policy).
	TLS() bool
	// Park is called when the request's response will come later (a POST
	// initialize waits for the agent): it returns the function that
	// writes that response, called once, from any goroutine.
	Park(path string) func(*Reply)
	// Sink makes the receiver of st on this exchange. Nothing is written
	// until the front calls the sink's Open.
	Sink(st *Stream) Sink
}

// Sink receives one SSE stream of a connection.
type Sink interface {
	// Open writes the response head: the exchange carries st's events from
	// now on. Called once, on the request's goroutine, after Sink.
	Open()
	// Notify asks the sink to take what its stream holds (Stream.Take).
	// Any goroutine; never blocks.
	Notify()
}

// Stream is a sink's handle on the stream it receives. Safe from any
// goroutine.
type Stream struct {
	a    *acpConn
	key  string
	sink Sink
}

// Label is the stream's transport label: "acp-sse" or "mcp-sse".
func (s *Stream) Label() string {
	if s.a.mcp {
		return "mcp-sse"
	}
	return "acp-sse"
}

// Take returns what the stream holds (nothing unless take: a sink whose
// peer is behind leaves it queued, where it counts against the
// connection's backlog); end when the stream is over for this sink (the
// connection closed, or an MCP POST stream's response is out), lost when
// another GET took it over.
func (s *Stream) Take(take bool) (b []byte, end, lost bool) {
	a := s.a
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.streams[s.key]
	if st == nil || st.sink != s.sink {
		return nil, true, true
	}
	if take {
		b, st.buf = st.buf, nil
		a.queued -= len(b)
		if a.mcp {
			st.mcp.taken()
		}
	}
	end = a.closed
	if st.final && len(st.buf) == 0 {
		// An MCP POST stream ends with its response; it is kept a while
		// for a client that lost the end and resumes (Last-Event-ID).
		a.retire(s.key)
		end = true
	}
	return b, end, false
}

// Sent counts n bytes written to the peer and lets the connection's writer
// go on (it may have stopped at the backlog limit).
func (s *Stream) Sent(n int) {
	s.a.f.m.Out(s.Label(), 1, n)
	s.a.Wake()
}

// Pending reports whether the stream holds something for its sink, or the
// connection has ended.
func (s *Stream) Pending() bool {
	a := s.a
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.streams[s.key]
	return st != nil && st.sink == s.sink && len(st.buf) > 0 || a.closed
}

// Detach ends the sink's hold on the stream (its GET has gone).
func (s *Stream) Detach() {
	a := s.a
	a.mu.Lock()
	if st := a.streams[s.key]; st != nil && st.sink == s.sink {
		st.sink = nil
		// An MCP POST stream outlives its POST: the client resumes it
		// with a GET and Last-Event-ID.
		if s.key != "" && (len(st.buf) == 0 || strings.HasPrefix(s.key, "\x01")) && !a.mcp {
			delete(a.streams, s.key)
		}
	}
	a.mu.Unlock()
	a.gets.Add(-1)
	a.active.Store(time.Now().UnixNano())
}

var _ delivery.Transport = (*acpConn)(nil)

// NewConnID is a random connection id (a UUID v4), as the ACP SDK makes
// them; it also names a WebSocket connection on its 101.
func NewConnID() string { return string(appendConnID(make([]byte, 0, 36))) }

// appendConnID appends a fresh NewConnID to dst.
func appendConnID(dst []byte) []byte {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	for i, part := range [...][2]int{{0, 4}, {4, 6}, {6, 8}, {8, 10}, {10, 16}} {
		if i > 0 {
			dst = append(dst, '-')
		}
		dst = hex.AppendEncode(dst, b[part[0]:part[1]])
	}
	return dst
}

// Wake asks the writer goroutine to flush. Any goroutine.
func (a *acpConn) Wake() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Frame is m as one SSE event; it also notes which stream m goes to, for
// the Write that follows. Writer only.
func (a *acpConn) Frame(m *wire.Msg) []byte {
	if a.mcp {
		a.routes = append(a.routes, a.routeMCP(m))
		// The MCP SDK client drops events named other than "message".
		return dataEvent(m)
	}
	a.routes = append(a.routes, a.route(m))
	return Event(m)
}

// route names the stream m belongs to (A1, "Routing of server→client
// messages"); "\x00init" is the answer the parked POST initialize waits for.
func (a *acpConn) route(m *wire.Msg) string {
	hd, err := jsonrpc.Peek(m.Body())
	if err != nil {
		return ""
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch hd.Kind {
	case jsonrpc.KindResponse:
		key := string(hd.ID)
		if a.initWait != nil && a.initWait.id == key {
			return "\x00init"
		}
		if s, ok := a.pending[key]; ok {
			delete(a.pending, key)
			return s
		}
		return ""
	default:
		if len(hd.SessionID) > 0 {
			s := string(hd.SessionID)
			if hd.Kind == jsonrpc.KindRequest {
				a.agentReq[string(hd.ID)] = s
			}
			return s
		}
		return ""
	}
}

// Write queues each frame on its stream and wakes the stream's GET.
// Writer only.
func (a *acpConn) Write(frames [][]byte) error {
	routes := a.routes
	a.routes = a.routes[:0]
	var initBody []byte
	var wakes []Sink
	a.mu.Lock()
	for i, f := range frames {
		r := ""
		if i < len(routes) {
			r = routes[i]
		}
		if r == "\x00init" {
			initBody = eventData(f)
			continue
		}
		final := false
		if strings.HasPrefix(r, "\x02") {
			r, final = r[1:], true
			for t, k := range a.progTok {
				if k == r {
					delete(a.progTok, t)
				}
			}
		}
		st := a.streams[r]
		if st == nil && strings.HasPrefix(r, "\x01") {
			continue // the POST that asked has gone: its stream with it
		}
		if final {
			st.final = true
		}
		if st == nil {
			st = &acpStream{}
			a.streams[r] = st
		}
		if a.mcp {
			f = st.mcp.event(f)
		}
		st.buf = append(st.buf, f...)
		a.queued += len(f)
		if st.sink != nil {
			wakes = append(wakes, st.sink)
		}
	}
	w := a.initWait
	if initBody != nil {
		a.initWait = nil
	}
	a.mu.Unlock()
	if initBody != nil && w != nil {
		a.answerInit(w, initBody)
	}
	for _, g := range wakes {
		g.Notify()
	}
	return nil
}

// eventData recovers the JSON of an SSE event built by appendEvent.
func eventData(ev []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(ev, []byte("\n")) {
		if d, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
			if out != nil {
				out = append(out, '\n')
			}
			out = append(out, d...)
		}
	}
	return out
}

// Backlog is what the streams hold; over the limit the outbox keeps the
// rest (and its policy judges the consumer). Writer only.
func (a *acpConn) Backlog() (int, bool) {
	a.mu.Lock()
	n := a.queued
	a.mu.Unlock()
	return n, n > acpBacklogMax
}

// Shut ends the writer goroutine. Any goroutine; called once.
func (a *acpConn) Shut() { close(a.quit) }

// run is the connection's writer goroutine.
func (a *acpConn) run() {
	for {
		select {
		case <-a.wake:
			_ = a.ep.Flush()
		case <-a.quit:
			_ = a.ep.Final()
			a.finish()
			return
		}
	}
}

// finish ends every open GET once what is queued for it is written, and
// forgets the connection.
func (a *acpConn) finish() {
	a.f.acp.remove(a)
	a.mu.Lock()
	a.closed = true
	var sinks []Sink
	for _, st := range a.streams {
		if st.sink != nil {
			sinks = append(sinks, st.sink)
		}
	}
	w := a.initWait
	a.initWait = nil
	a.mu.Unlock()
	for _, g := range sinks {
		g.Notify() // drains, sees closed, closes
	}
	if w != nil {
		w.answer(Text(http.StatusNotFound, "Unknown connection"))
	}
	a.ep.Release()
	a.f.m.ClosedConn(a.ep.Transport())
}

// answerInit answers the parked POST initialize with the agent's reply.
// Writer goroutine.
func (a *acpConn) answerInit(w *acpInitWait, body []byte) {
	name := "Acp-Connection-Id"
	if a.mcp {
		name = "Mcp-Session-Id"
	}
	rp := &Reply{Status: http.StatusOK, CType: jsonType, Body: body, Hdr: []string{name, a.id}}
	w.answer(rp)
}

// acpErr is a text/plain refusal of an ACP request.
func acpErr(status int, msg string) *Reply { return Text(status, msg) }

// ServeACP answers a non-WebSocket request on /acp (body is a POST's,
// read by the listener). It returns done when the exchange now carries an
// SSE stream, and a nil reply without done when the response will come
// through the Exchange's Park (POST initialize).
func (f *Front) ServeACP(hx Exchange, req *http.Request, body []byte) (rp *Reply, done bool) {
	switch req.Method {
	case http.MethodPost:
		return f.acpPost(hx, req, body), false
	case http.MethodGet:
		return f.acpGet(hx, req)
	case http.MethodDelete:
		return f.acpDelete(hx, req), false
	}
	return notAllowed(req.Method, "GET, POST, DELETE"), false
}

// acpLookup finds the request's connection, bound to the token that
// created it: another token gets the same 404 as an unknown id.
func (f *Front) acpLookup(req *http.Request) (*acpConn, *Reply) {
	return f.lookupConn(req, "Acp-Connection-Id", false)
}

func (f *Front) lookupConn(req *http.Request, header string, mcp bool) (*acpConn, *Reply) {
	id := req.Header.Get(header)
	if id == "" {
		return nil, acpErr(http.StatusBadRequest, "Missing "+header)
	}
	tok, _ := auth.TokenFromRequest(req)
	a := f.acp.get(id)
	if a == nil || a.mcp != mcp || sha256.Sum256([]byte(tok)) != a.token || a.ep.Closing() {
		return nil, acpErr(http.StatusNotFound, "Unknown "+header)
	}
	return a, nil
}

func (f *Front) acpPost(hx Exchange, req *http.Request, body []byte) *Reply {
	if _, _, rp := f.Admit(req, "acp-http", true, hx.TLS()); rp != nil {
		return rp
	}
	if mt := req.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(strings.TrimSpace(mt)), jsonType) {
		return acpErr(http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type must be application/json, not %q", mt))
	}
	trim := bytes.TrimSpace(body)
	if len(trim) > 0 && trim[0] == '[' {
		return &Reply{Status: http.StatusBadRequest, CType: jsonType,
			Body: []byte(`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request: JSON-RPC batches are not supported"}}` + "\n")}
	}
	if len(trim) == 0 || trim[0] != '{' {
		return acpErr(http.StatusBadRequest, "Invalid JSON-RPC message")
	}
	hd, err := jsonrpc.Peek(trim)
	if err != nil {
		return acpErr(http.StatusBadRequest, "Invalid JSON: "+err.Error())
	}
	if hd.ID != nil && hd.ID[0] == '"' && len(hd.ID) > acpMaxID+2 {
		return acpErr(http.StatusBadRequest, fmt.Sprintf("Request ID exceeds maxIdLength (%d)", acpMaxID))
	}
	method := string(hd.Method)
	if req.Header.Get("Acp-Connection-Id") == "" {
		if method != "initialize" || hd.Kind != jsonrpc.KindRequest {
			return acpErr(http.StatusBadRequest, "Missing Acp-Connection-Id")
		}
		if hd.ID == nil || string(hd.ID) == "null" {
			return acpErr(http.StatusBadRequest, "Initialize request must include an ID")
		}
		return f.openConn(hx, req, trim, hd, false)
	}
	a, rp := f.acpLookup(req)
	if rp != nil {
		return rp
	}
	if method == "initialize" && hd.Kind == jsonrpc.KindRequest {
		return acpErr(http.StatusBadRequest, "Initialize not allowed on existing connection")
	}
	sid := req.Header.Get("Acp-Session-Id")
	if len(sid) > acpMaxID || len(hd.SessionID) > acpMaxID {
		return acpErr(http.StatusBadRequest, fmt.Sprintf("Session ID exceeds maxIdLength (%d)", acpMaxID))
	}
	key := ""
	a.mu.Lock()
	switch hd.Kind {
	case jsonrpc.KindResponse:
		if s, ok := a.agentReq[string(hd.ID)]; ok {
			if sid == "" {
				a.mu.Unlock()
				return acpErr(http.StatusBadRequest, "Missing Acp-Session-Id")
			}
			if sid != s {
				a.mu.Unlock()
				return acpErr(http.StatusBadRequest, "Mismatched Acp-Session-Id")
			}
			delete(a.agentReq, string(hd.ID))
		}
	default:
		if hd.SessionID != nil {
			if sid == "" {
				a.mu.Unlock()
				return acpErr(http.StatusBadRequest, "Missing Acp-Session-Id")
			}
			if sid != string(hd.SessionID) {
				a.mu.Unlock()
				return acpErr(http.StatusBadRequest, "Mismatched Acp-Session-Id")
			}
		} else if acpSessionMethods[method] && sid == "" {
			a.mu.Unlock()
			return acpErr(http.StatusBadRequest, "Missing Acp-Session-Id")
		}
		key = sid
		if method == "session/load" {
			key = "" // its answer goes to the connection stream (A1)
		}
		if hd.Kind == jsonrpc.KindRequest {
			a.pending[string(hd.ID)] = key
		}
	}
	a.mu.Unlock()
	a.active.Store(time.Now().UnixNano())
	a.inMu.Lock()
	a.ep.Input(trim, time.Now())
	a.inMu.Unlock()
	return &Reply{Status: http.StatusAccepted, CType: textType}
}

// acpOpen creates a connection for a POST initialize and parks the POST
// until the hub answers it (from its cache, or once the agent has).
func (f *Front) openConn(hx Exchange, req *http.Request, msg []byte, hd jsonrpc.Header, mcp bool) *Reply {
	label := "acp-http"
	if mcp {
		label = "mcp-http"
	}
	role, _, rp := f.Admit(req, label, true, hx.TLS())
	if rp != nil {
		return rp
	}
	tok, _ := auth.TokenFromRequest(req)
	a := &acpConn{
		f: f, mcp: mcp, id: NewConnID(), token: sha256.Sum256([]byte(tok)),
		wake: make(chan struct{}, 1), quit: make(chan struct{}),
		streams:  map[string]*acpStream{"": {}},
		pending:  map[string]string{},
		agentReq: map[string]string{},
		progTok:  map[string]string{},
	}
	a.active.Store(time.Now().UnixNano())
	peer := hx.Peer()
	a.ep = delivery.NewEndpoint(&f.cfg.Endpoint, a, label, peer, f.m.Outbox(peer))
	a.initWait = &acpInitWait{answer: hx.Park(req.URL.Path), id: string(hd.ID)}
	f.acp.mu.Lock()
	f.acp.conns[a.id] = a
	f.acp.mu.Unlock()
	f.m.Opened(label)
	go a.run()
	a.ep.Register(role, nil)
	f.log.Debug("streamable http connection open", "transport", label, "peer", peer, "id", a.id, "role", role.String())
	a.inMu.Lock()
	a.ep.Input(msg, time.Now())
	a.inMu.Unlock()
	return nil
}

func (f *Front) acpGet(hx Exchange, req *http.Request) (*Reply, bool) {
	if _, _, rp := f.Admit(req, "acp-http", true, hx.TLS()); rp != nil {
		return rp, false
	}
	if !strings.Contains(req.Header.Get("Accept"), "text/event-stream") {
		return acpErr(http.StatusNotAcceptable, "GET /acp needs Accept: text/event-stream (or a WebSocket upgrade)"), false
	}
	a, rp := f.acpLookup(req)
	if rp != nil {
		return rp, false
	}
	key := req.Header.Get("Acp-Session-Id")
	if len(key) > acpMaxID {
		return acpErr(http.StatusBadRequest, fmt.Sprintf("Session ID exceeds maxIdLength (%d)", acpMaxID)), false
	}
	resume := req.Header.Get("Last-Event-ID")
	rp, done := f.openStream(hx, a, key, resume != "")
	if done && key != "" && resume != "" {
		if seq, err := strconv.ParseUint(resume, 10, 64); err == nil {
			a.resumeSession(key, seq)
		}
	}
	return rp, done
}

// openStream makes the exchange the receiver of a's stream key: a second
// receiver is refused 409 unless it takes the stream over (Last-Event-ID).
// Then the exchange only carries SSE.
func (f *Front) openStream(hx Exchange, a *acpConn, key string, takeover bool) (*Reply, bool) {
	s := &Stream{a: a, key: key}
	s.sink = hx.Sink(s)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return acpErr(http.StatusNotFound, "Unknown connection"), false
	}
	st := a.streams[key]
	if st == nil {
		st = &acpStream{}
		a.streams[key] = st
	}
	var old Sink
	if st.sink != nil {
		if !takeover {
			a.mu.Unlock()
			return acpErr(http.StatusConflict, "Outbound stream already has an active receiver"), false
		}
		old = st.sink
	}
	st.sink = s.sink
	a.mu.Unlock()
	a.gets.Add(1)
	a.active.Store(time.Now().UnixNano())
	if old != nil {
		old.Notify() // sees it lost the stream and closes
	}
	path := "/acp"
	if a.mcp {
		path = "/mcp"
	}
	f.m.Request(path, http.StatusOK)
	s.sink.Open()
	return nil, true
}

// resumeSession replays a session's events after seq from the log, as
// bridge/attach with since would (Hub.Attach: no answer to hide).
func (a *acpConn) resumeSession(sid string, seq uint64) {
	a.inMu.Lock() // in order with the connection's other input
	err := a.f.hub.Attach(a.ep.Client(), sid, &seq, nil)
	a.inMu.Unlock()
	if err != nil {
		a.f.log.Debug("acp session stream: no resume", "id", a.id, "session", sid, "since", seq, "err", err)
	}
}

func (f *Front) acpDelete(hx Exchange, req *http.Request) *Reply {
	if _, _, rp := f.Admit(req, "acp-http", true, hx.TLS()); rp != nil {
		return rp
	}
	a, rp := f.acpLookup(req)
	if rp != nil {
		return rp
	}
	a.ep.Close(wire.CloseGoingAway, "DELETE")
	return &Reply{Status: http.StatusAccepted, CType: textType}
}
