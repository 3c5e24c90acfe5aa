package loop

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

	"github.com/panjf2000/gnet/v2"

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
// TCP connection that the gnet loop feeds from that queue; a stream with no
// GET keeps queueing, and a connection whose streams hold more than
// acpBacklogMax stops draining its outbox, so the outbox's slow-consumer
// policy (degrade or disconnect) applies as on every other transport.

// acpBacklogMax is what a connection's stream queues may hold before its
// writer stops draining the outbox.
const acpBacklogMax = 4 << 20

// acpMaxBody bounds a POSTed message (the SDK's Node adapter: 16 MiB, 413).
const acpMaxBody = 16 << 20

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
	buf   []byte     // events framed and not yet taken by a GET
	sink  streamSink // the GET that receives it; nil while none
	final bool       // MCP POST stream: its response is queued; end after it
}

// acpConn is one ACP Streamable HTTP connection.
type acpConn struct {
	f     *front
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

	// Writer goroutine only.
	routes []string
}

// acpInitWait is a POST initialize waiting for its answer: parked on its
// gnet TCP connection (c), or its net/http handler waiting on ch.
type acpInitWait struct {
	c  *conn
	ch chan *reply
	id string
}

func (w *acpInitWait) answer(f *front, rp *reply) {
	if w.ch != nil {
		w.ch <- rp // buffered; answered once
		return
	}
	f.resume(w.c, rp)
}

// streamSink is what receives a stream: a gnet connection (acpSSEGet) or
// a net/http handler (httpSink). notify asks it to take the stream's
// queue; any goroutine, never blocks.
type streamSink interface{ notify() }

// hxIO is the HTTP exchange an ACP or MCP request arrived on: a gnet
// connection (c, p) or a net/http one (the TLS listener: w, r).
type hxIO struct {
	c      *conn
	p      *httpProto
	tls    bool
	w      http.ResponseWriter
	initCh chan *reply // net/http: where a parked initialize's answer arrives
	sink   *httpSink   // net/http: the stream to serve once the handler returns done
}

var _ delivery.Transport = (*acpConn)(nil)

// peer names the exchange's client for logs.
func (hx *hxIO) peer() string {
	if hx.c != nil {
		return hx.c.ep.Peer()
	}
	return "tls"
}

func newConnID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
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
		return appendData(nil, m)
	}
	a.routes = append(a.routes, a.route(m))
	return appendEvent(nil, m)
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
	var wakes []streamSink
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
		if r == "\x00drop" {
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
		g.notify()
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
	var sinks []streamSink
	for _, st := range a.streams {
		if st.sink != nil {
			sinks = append(sinks, st.sink)
		}
	}
	w := a.initWait
	a.initWait = nil
	a.mu.Unlock()
	for _, g := range sinks {
		g.notify() // drains, sees closed, closes
	}
	if w != nil {
		w.answer(a.f, textReply(http.StatusNotFound, "Unknown connection"))
	}
	a.ep.Release()
	a.f.m.closedConn(a.ep.Transport())
}

// answerInit answers the parked POST initialize with the agent's reply.
// Writer goroutine.
func (a *acpConn) answerInit(w *acpInitWait, body []byte) {
	name := "Acp-Connection-Id"
	if a.mcp {
		name = "Mcp-Session-Id"
	}
	rp := &reply{status: http.StatusOK, ctype: jsonType, body: body, hdr: []string{name, a.id}}
	w.answer(a.f, rp)
}

// resume writes rp on a TCP connection whose request was parked, and lets
// it read its next request. Any goroutine.
func (f *front) resume(c *conn, rp *reply) {
	_ = c.gc.Wake(func(gc gnet.Conn, err error) error {
		if err != nil {
			return nil
		}
		_, _ = gc.Write(rp.appendTo(nil, false))
		p, ok := c.proto.(*httpProto)
		if !ok {
			return nil
		}
		p.parked = false
		p.w.deadline.Store(f.now() + int64(f.cfg.IdleTimeout))
		f.m.request(p.path, rp.status)
		// Requests pipelined behind the parked one.
		if n := gc.InboundBuffered(); n > 0 && !c.closing() {
			buf, _ := gc.Peek(n)
			used, err := p.read(c, buf)
			if used > 0 {
				_, _ = gc.Discard(used)
			}
			if err != nil {
				c.Close(wire.ClosePolicy, err.Error())
			}
		}
		return nil
	})
}

// acpSSEGet is a GET holding one stream of a connection, on a gnet TCP
// connection whose protocol it is.
type acpSSEGet struct {
	a   *acpConn
	key string
	c   *conn
	w   *watch
	gen bool // replaced by a takeover: close without touching the stream
}

func (g *acpSSEGet) name() string {
	if g.a.mcp {
		return "mcp-sse"
	}
	return "acp-sse"
}

func (g *acpSSEGet) read(_ *conn, buf []byte) (int, error) { return len(buf), nil }

func (g *acpSSEGet) frame(m *wire.Msg) []byte { return appendEvent(nil, m) }

func (g *acpSSEGet) farewell(wire.CloseReason, string) []byte { return nil }

func (g *acpSSEGet) closed() {
	g.a.f.unwatch(g.w)
	a := g.a
	a.mu.Lock()
	if st := a.streams[g.key]; st != nil && st.sink == g {
		st.sink = nil
		if g.key != "" && (len(st.buf) == 0 || strings.HasPrefix(g.key, "\x01")) {
			delete(a.streams, g.key)
		}
	}
	a.mu.Unlock()
	a.gets.Add(-1)
	a.active.Store(time.Now().UnixNano())
}

// notify has the GET's loop write what its stream holds. Any goroutine.
func (g *acpSSEGet) notify() { _ = g.c.gc.Wake(g.drain) }

// drain runs on the GET's loop: it takes its stream's queue while gnet
// holds little for the peer (a slow reader leaves it queued, where it
// counts against the connection's backlog; the sweeper retries).
func (g *acpSSEGet) drain(gc gnet.Conn, err error) error {
	if err != nil || g.c.closing() {
		return nil
	}
	a := g.a
	a.mu.Lock()
	st := a.streams[g.key]
	if st == nil || st.sink != g {
		a.mu.Unlock()
		g.c.Close(wire.ClosePolicy, "stream taken over")
		return nil
	}
	var b []byte
	if gc.OutboundBuffered() < flushWatermark {
		b, st.buf = st.buf, nil
		a.queued -= len(b)
	}
	closed := a.closed
	if st.final && len(st.buf) == 0 {
		// An MCP POST stream ends with its response.
		delete(a.streams, g.key)
		closed = true
	}
	a.mu.Unlock()
	if len(b) > 0 {
		_, _ = gc.Write(b)
		a.f.m.out(g.name(), 1, len(b))
		a.Wake() // the writer may have stopped at the backlog limit
	}
	if closed {
		g.c.Close(wire.CloseGoingAway, "acp connection ended")
	}
	return nil
}

// flushWatermark is what gnet may hold for a GET before its stream stops
// handing it more.
const flushWatermark = 256 << 10

// acpErr is a text/plain refusal of an ACP request.
func acpErr(status int, msg string) *reply { return textReply(status, msg) }

// serveACP answers a non-WebSocket request on /acp on the gnet path. It
// returns done when the connection now carries an SSE stream, parked when
// the response will be written later (POST initialize).
func (f *front) serveACP(hx *hxIO, req *http.Request, body []byte) (rp *reply, done bool) {
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
func (f *front) acpLookup(req *http.Request) (*acpConn, *reply) {
	return f.lookupConn(req, "Acp-Connection-Id", false)
}

func (f *front) lookupConn(req *http.Request, header string, mcp bool) (*acpConn, *reply) {
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

func (f *front) acpPost(hx *hxIO, req *http.Request, body []byte) *reply {
	if _, _, rp := f.authorize(req, "acp-http", true, hx.tls); rp != nil {
		return rp
	}
	if mt := req.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(strings.TrimSpace(mt)), jsonType) {
		return acpErr(http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type must be application/json, not %q", mt))
	}
	trim := bytes.TrimSpace(body)
	if len(trim) > 0 && trim[0] == '[' {
		return &reply{status: http.StatusBadRequest, ctype: jsonType,
			body: []byte(`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request: JSON-RPC batches are not supported"}}` + "\n")}
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
	return &reply{status: http.StatusAccepted, ctype: textType}
}

// acpOpen creates a connection for a POST initialize and parks the POST
// until the hub answers it (from its cache, or once the agent has).
func (f *front) openConn(hx *hxIO, req *http.Request, msg []byte, hd jsonrpc.Header, mcp bool) *reply {
	label := "acp-http"
	if mcp {
		label = "mcp-http"
	}
	role, _, rp := f.authorize(req, label, true, hx.tls)
	if rp != nil {
		return rp
	}
	tok, _ := auth.TokenFromRequest(req)
	a := &acpConn{
		f: f, mcp: mcp, id: newConnID(), token: sha256.Sum256([]byte(tok)),
		wake: make(chan struct{}, 1), quit: make(chan struct{}),
		streams:  map[string]*acpStream{"": {}},
		pending:  map[string]string{},
		agentReq: map[string]string{},
		progTok:  map[string]string{},
	}
	a.active.Store(time.Now().UnixNano())
	peer := hx.peer()
	a.ep = delivery.NewEndpoint(&f.s.epc, a, label, peer, f.s.cfg.Metrics.outbox(f.s.log, func() string { return peer }))
	a.initWait = &acpInitWait{c: hx.c, id: string(hd.ID)}
	if hx.c != nil {
		hx.p.parked = true
		hx.p.path = req.URL.Path
	} else {
		hx.initCh = make(chan *reply, 1)
		a.initWait.ch = hx.initCh
	}
	f.acp.mu.Lock()
	f.acp.conns[a.id] = a
	f.acp.mu.Unlock()
	f.m.opened(label)
	go a.run()
	a.ep.Register(role, nil)
	f.s.log.Debug("streamable http connection open", "transport", label, "peer", peer, "id", a.id, "role", role.String())
	a.inMu.Lock()
	a.ep.Input(msg, time.Now())
	a.inMu.Unlock()
	return nil
}

func (f *front) acpGet(hx *hxIO, req *http.Request) (*reply, bool) {
	if _, _, rp := f.authorize(req, "acp-http", true, hx.tls); rp != nil {
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

// openStream makes c, whose request p just parsed, the receiver of a's
// stream key: a second receiver is refused 409 unless it takes the stream
// over (Last-Event-ID). Then c only writes SSE.
func (f *front) openStream(hx *hxIO, a *acpConn, key string, takeover bool) (*reply, bool) {
	var g streamSink
	if hx.c != nil {
		g = &acpSSEGet{a: a, key: key, c: hx.c, w: hx.p.w}
	} else {
		hx.sink = &httpSink{a: a, key: key, wake: make(chan struct{}, 1)}
		g = hx.sink
	}
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
	var old streamSink
	if st.sink != nil {
		if !takeover {
			a.mu.Unlock()
			return acpErr(http.StatusConflict, "Outbound stream already has an active receiver"), false
		}
		old = st.sink
	}
	st.sink = g
	a.mu.Unlock()
	a.gets.Add(1)
	a.active.Store(time.Now().UnixNano())
	if old != nil {
		old.notify() // sees it lost the stream and closes
	}
	path := "/acp"
	if a.mcp {
		path = "/mcp"
	}
	f.m.request(path, http.StatusOK)
	gg, ok := g.(*acpSSEGet)
	if !ok {
		return nil, true // the TLS handler writes the head and serves the stream
	}
	c, p := hx.c, hx.p
	_, _ = c.gc.Write([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n" +
		"X-Accel-Buffering: no\r\nConnection: close\r\n\r\n"))
	c.proto = gg
	p.w.deadline.Store(0)
	p.w.acp = gg
	p.w.kind.Store(watchACP)
	f.m.closedConn("http")
	f.m.opened(gg.name())
	gg.notify()
	return nil, true
}

// resumeSession replays a session's events after seq from the log, as a
// bridge/attach with since would; its answer is not shown to the client.
func (a *acpConn) resumeSession(sid string, seq uint64) {
	b := []byte(`{"jsonrpc":"2.0","id":"acp-resume-` + strconv.FormatUint(seq, 10) + `","method":"bridge/attach","params":{"sessionId":`)
	b = wire.AppendString(b, sid)
	b = append(b, `,"since":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, "}}"...)
	a.mu.Lock()
	a.pending[`"acp-resume-`+strconv.FormatUint(seq, 10)+`"`] = "\x00drop"
	a.mu.Unlock()
	a.inMu.Lock()
	a.f.s.hub.Handle(a.ep.Client(), b)
	a.inMu.Unlock()
}

func (f *front) acpDelete(hx *hxIO, req *http.Request) *reply {
	if _, _, rp := f.authorize(req, "acp-http", true, hx.tls); rp != nil {
		return rp
	}
	a, rp := f.acpLookup(req)
	if rp != nil {
		return rp
	}
	a.ep.Close(wire.CloseGoingAway, "DELETE")
	return &reply{status: http.StatusAccepted, ctype: textType}
}

// pending reports whether the GET's stream holds something. Any goroutine.
func (g *acpSSEGet) pending() bool {
	g.a.mu.Lock()
	defer g.a.mu.Unlock()
	st := g.a.streams[g.key]
	return st != nil && st.sink == g && len(st.buf) > 0 || g.a.closed
}
