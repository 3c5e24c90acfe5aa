package loop

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/terminal"
	"github.com/agentbridge/agentbridge/wire"
)

// HTTPConfig configures the TCP listener: HTTP endpoints, WebSocket on /acp
// and SSE on /events. Zero values are documented per field.
type HTTPConfig struct {
	// Tokens maps bearer tokens to roles; nil knows no token, so every
	// request that needs one is refused with 401.
	Tokens *auth.Tokens
	// Origins judges the Origin of WebSocket handshakes and SSE requests;
	// nil allows requests without Origin and same-origin browser pages.
	Origins *auth.OriginPolicy
	// Heartbeat is the WebSocket ping interval (a peer silent for two
	// intervals is dropped) and the SSE keep-alive interval. Zero means 15s.
	Heartbeat time.Duration
	// HeaderTimeout bounds how long a client may take to send a request's
	// header block once it has started, and to send its first request.
	// Zero means 10s.
	HeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection with no request in
	// progress. Zero means 60s.
	IdleTimeout time.Duration
	// CloseTimeout bounds how long our WebSocket close frame waits for the
	// peer's before the socket is closed. Zero means 5s.
	CloseTimeout time.Duration
	// MaxHeaderBytes caps a request's header block (431 beyond). Zero
	// means 16 KiB.
	MaxHeaderBytes int
	// TLSCert and TLSKey, both set, make the listener speak HTTPS and WSS:
	// it is then served by package tlsserve rather than by gnet.
	TLSCert, TLSKey string
	// Terminal serves GET /terminal (--terminal); nil answers it 404.
	Terminal *terminal.Manager
	// HTTPIdle reaps an ACP Streamable HTTP connection with no open GET
	// and no request for this long (--http-idle). Zero means 5m; negative
	// never reaps.
	HTTPIdle time.Duration
}

func (c *HTTPConfig) fill() {
	if c.Heartbeat == 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.HeaderTimeout == 0 {
		c.HeaderTimeout = 10 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 5 * time.Second
	}
	if c.HTTPIdle == 0 {
		c.HTTPIdle = 5 * time.Minute
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 16 << 10
	}
	if c.Origins == nil {
		c.Origins, _ = auth.NewOriginPolicy(nil)
	}
}

// TLS reports whether the listener is configured for TLS.
func (c *HTTPConfig) TLS() bool { return c != nil && c.TLSCert != "" && c.TLSKey != "" }

// maxSkipBody is the largest request body the loop reads and discards to
// keep a connection alive after refusing the request; bigger bodies close
// the connection instead.
const maxSkipBody = 1 << 20

// front is the listener's HTTP layer: routes, auth and Origin policy, the
// plain endpoints, and the sweeper that enforces deadlines and heartbeats.
// The gnet protocols (httpProto, wsProto, sseProto) and the TLS listener
// (through ServeHTTP and Authorize) share it.
type front struct {
	s    *Server
	cfg  HTTPConfig
	m    *Metrics
	x    *httpMetrics
	prom http.Handler

	mu      sync.Mutex
	watches map[*watch]struct{}

	// Owned by the ticker goroutine.
	lastSweep time.Time
	lastBeat  time.Time
	todo      []*watch
	beat      []*watch

	// SSE streams served over net/http (TLS), for Connections.
	httpStreams atomic.Int64

	// ACP Streamable HTTP connections (acphttp.go).
	acp acpRegistry
}

// watch is what the sweeper may see of a TCP connection: atomics only,
// because the sweeper runs on gnet's ticker goroutine, not the loop.
type watch struct {
	c        *conn
	kind     atomic.Uint32 // watchHTTP, watchWS, watchSSE
	deadline atomic.Int64  // unix nanos, 0 for none: HTTP header/idle deadline, WebSocket close-handshake deadline
	seen     atomic.Int64  // WebSocket: when the peer last sent anything
	halfOpen atomic.Bool   // WebSocket: closed for silence; no close handshake
	acp      *acpSSEGet    // watchACP: the stream; set before kind is stored
}

const (
	watchHTTP uint32 = iota
	watchWS
	watchSSE
	watchACP
)

func newFront(s *Server, cfg HTTPConfig) *front {
	cfg.fill()
	f := &front{s: s, cfg: cfg, m: s.cfg.Metrics, watches: make(map[*watch]struct{})}
	f.acp = acpRegistry{conns: make(map[string]*acpConn), idle: cfg.HTTPIdle}
	f.prom = promhttp.HandlerFor(f.m.Registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, DisableCompression: true})
	f.x = newHTTPMetrics(f.m.Registry, s.hub)
	s.OnTickFunc(f.tick)
	return f
}

func (f *front) now() int64 { return time.Now().UnixNano() }

func (f *front) watch(c *conn) *watch {
	w := &watch{c: c}
	w.deadline.Store(f.now() + int64(f.cfg.HeaderTimeout))
	f.mu.Lock()
	f.watches[w] = struct{}{}
	f.mu.Unlock()
	return w
}

func (f *front) unwatch(w *watch) {
	f.mu.Lock()
	delete(f.watches, w)
	f.mu.Unlock()
}

// sweepEvery is how often deadlines are checked; heartbeats run on their
// own interval, checked at this granularity.
func (f *front) sweepEvery() time.Duration {
	return min(100*time.Millisecond, f.cfg.Heartbeat/4)
}

// tick runs on every engine tick, on the ticker goroutine. It only reads
// atomics and acts on connections through Close and Wake, which are safe
// from any goroutine.
func (f *front) tick(now time.Time) {
	if now.Sub(f.lastSweep) < f.sweepEvery() {
		return
	}
	f.lastSweep = now
	beat := now.Sub(f.lastBeat) >= f.cfg.Heartbeat
	if beat {
		f.lastBeat = now
	}
	n := now.UnixNano()
	silent := int64(2 * f.cfg.Heartbeat)
	f.todo, f.beat = f.todo[:0], f.beat[:0]
	f.mu.Lock()
	for w := range f.watches {
		switch w.kind.Load() {
		case watchHTTP:
			if d := w.deadline.Load(); d != 0 && n > d {
				f.todo = append(f.todo, w)
			}
		case watchWS:
			if d := w.deadline.Load(); d != 0 {
				if n > d {
					f.todo = append(f.todo, w)
				}
			} else if n-w.seen.Load() > silent {
				f.todo = append(f.todo, w)
			} else if beat {
				f.beat = append(f.beat, w)
			}
		case watchSSE:
			if beat {
				f.beat = append(f.beat, w)
			}
		case watchACP:
			// Also retried every sweep: a stream left queued for a slow
			// reader is handed to gnet once it has drained.
			f.beat = append(f.beat, w)
		}
	}
	f.mu.Unlock()
	f.acp.reap(n)
	for _, w := range f.todo {
		f.expire(w, n)
	}
	for _, w := range f.beat {
		if w.kind.Load() == watchACP {
			if beat {
				_ = w.c.gc.Wake(heartbeat)
			}
			if g := w.acp; g != nil && g.pending() {
				g.notify()
			}
			continue
		}
		_ = w.c.gc.Wake(heartbeat)
	}
	clear(f.todo)
	clear(f.beat)
}

// expire acts on a connection whose deadline passed. Ticker goroutine.
func (f *front) expire(w *watch, now int64) {
	c := w.c
	switch w.kind.Load() {
	case watchHTTP:
		w.deadline.Store(0)
		f.m.closed("http", "request timeout")
		f.s.log.Debug("closing connection", "peer", c.ep.Peer(), "transport", "http", "reason", "no complete request within the deadline")
		c.Close(session.ClosePolicy, "no complete request within the deadline")
	case watchWS:
		if w.deadline.Load() != 0 {
			// Our close frame went unanswered: close the socket.
			w.deadline.Store(0)
			_ = c.gc.Close()
			return
		}
		w.halfOpen.Store(true)
		w.seen.Store(now) // fire once
		f.x.halfOpen.WithLabelValues("ws").Inc()
		f.m.closed("ws", "half-open")
		f.s.log.Info("closing connection", "peer", c.ep.Peer(), "transport", "ws", "reason", "no frame from the peer for two heartbeats (half-open)")
		c.Close(session.CloseGoingAway, "no frame for two heartbeats")
	}
}

var (
	pingFrame     = ws.AppendFrame(nil, true, ws.OpPing, nil)
	sseKeepAlive  = []byte(": keep-alive\n\n")
	headerEnd     = []byte("\r\n\r\n")
	crlf          = []byte("\r\n")
	jsonType      = "application/json"
	textType      = "text/plain; charset=utf-8"
	bearerRealm   = `Bearer realm="agentbridge"`
	bearerInvalid = `Bearer realm="agentbridge", error="invalid_token"`
)

// heartbeat runs on the connection's loop, woken by the sweeper: a ping to
// a WebSocket peer, a comment to an SSE stream. One function value for
// every connection, so a heartbeat round allocates nothing per connection.
func heartbeat(gc gnet.Conn, err error) error {
	if err != nil {
		return nil
	}
	c, ok := gc.Context().(*conn)
	if !ok || c.closing() {
		return nil
	}
	switch c.proto.(type) {
	case *wsProto, *termProto:
		// Written even above the outbound watermark: a peer that is alive
		// but behind must still be asked, or it would be dropped as silent.
		_, _ = gc.Write(pingFrame)
	case *sseProto, *acpSSEGet:
		if gc.OutboundBuffered() == 0 {
			_, _ = gc.Write(sseKeepAlive)
		}
	}
	return nil
}

// reply is an HTTP response the listener composes itself.
type reply struct {
	status int
	ctype  string
	body   []byte
	hdr    []string // extra headers: name, value, name, value...
	close  bool     // close the connection after it
}

func textReply(status int, msg string, hdr ...string) *reply {
	return &reply{status: status, ctype: textType, body: []byte(msg + "\n"), hdr: hdr}
}

// appendTo appends the response bytes for the gnet path.
func (rp *reply) appendTo(dst []byte, head bool) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(rp.status), 10)
	dst = append(dst, ' ')
	dst = append(dst, http.StatusText(rp.status)...)
	dst = append(dst, "\r\nContent-Type: "...)
	dst = append(dst, rp.ctype...)
	dst = append(dst, "\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(rp.body)), 10)
	dst = append(dst, "\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"...)
	if rp.close {
		dst = append(dst, "Connection: close\r\n"...)
	}
	for i := 0; i+1 < len(rp.hdr); i += 2 {
		dst = append(dst, rp.hdr[i]...)
		dst = append(dst, ": "...)
		dst = append(dst, rp.hdr[i+1]...)
		dst = append(dst, crlf...)
	}
	dst = append(dst, crlf...)
	if !head {
		dst = append(dst, rp.body...)
	}
	return dst
}

// serve writes the response through net/http (the TLS path).
func (rp *reply) serve(w http.ResponseWriter, head bool) {
	h := w.Header()
	for i := 0; i+1 < len(rp.hdr); i += 2 {
		h.Set(rp.hdr[i], rp.hdr[i+1])
	}
	h.Set("Content-Type", rp.ctype)
	h.Set("Content-Length", strconv.Itoa(len(rp.body)))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if rp.close {
		h.Set("Connection", "close")
	}
	w.WriteHeader(rp.status)
	if !head {
		_, _ = w.Write(rp.body)
	}
}

// pathClass bounds the path label of the request metric.
func pathClass(p string) string {
	switch p {
	case "/healthz", "/metrics", "/acp", "/mcp", "/events", "/", "/terminal", "/login", "/logout":
		return p
	}
	if strings.HasPrefix(p, "/ui/") {
		return "/ui/"
	}
	return "other"
}

// authorize finds and checks the request's token, and its Origin when the
// endpoint is one a browser page could open (WebSocket, SSE). It returns the
// role and the subprotocol entry to select, or the refusal to send. Safe
// from any goroutine.
func (f *front) authorize(r *http.Request, transport string, checkOrigin, tls bool) (auth.Role, string, *reply) {
	if checkOrigin {
		if o := r.Header.Get("Origin"); !f.cfg.Origins.Allowed(o, r.Host, tls) {
			f.m.refused(transport, "origin")
			if len(o) > 200 {
				o = o[:200]
			}
			f.s.hub.AuditAuthFailure(r.RemoteAddr, transport, fmt.Sprintf("origin %q not allowed", o))
			return 0, "", textReply(http.StatusForbidden, fmt.Sprintf("origin %q may not connect: the daemon allows its own origin and those given with --allow-origin", o))
		}
	}
	tok, sub := auth.TokenFromRequest(r)
	if tok == "" {
		f.m.refused(transport, "no token")
		f.s.hub.AuditAuthFailure(r.RemoteAddr, transport, "no token")
		return 0, "", textReply(http.StatusUnauthorized, "a token is required: send it as Authorization: Bearer <token>, the WebSocket subprotocol agentbridge.token.<token>, ?token=<token> or the agentbridge_token cookie", "WWW-Authenticate", bearerRealm)
	}
	role, ok := f.cfg.Tokens.Lookup(tok)
	if !ok {
		f.m.refused(transport, "bad token")
		f.s.hub.AuditAuthFailure(r.RemoteAddr, transport, "token rejected")
		return 0, "", textReply(http.StatusUnauthorized, "token rejected", "WWW-Authenticate", bearerInvalid)
	}
	return role, sub, nil
}

type healthBody struct {
	Status string `json:"status"`
	Agent  struct {
		Up       bool   `json:"up"`
		Restarts uint64 `json:"restarts"`
	} `json:"agent"`
	Connections int    `json:"connections"`
	Sessions    int    `json:"sessions"`
	Version     string `json:"version,omitempty"`
}

// healthz is 200 while the daemon runs; status says whether the agent is up
// ("ok") or being restarted ("degraded").
func (f *front) healthz() *reply {
	st := f.s.hub.Stats()
	var b healthBody
	b.Status = "ok"
	if !st.AgentUp {
		b.Status = "degraded"
	}
	b.Agent.Up, b.Agent.Restarts = st.AgentUp, st.AgentRestarts
	b.Connections, b.Sessions = st.Connections, st.Sessions
	body, _ := json.Marshal(b)
	return &reply{status: http.StatusOK, ctype: jsonType, body: append(body, '\n')}
}

// metricsReply renders the registry with promhttp into a reply.
func (f *front) metricsReply(r *http.Request) *reply {
	rec := &bufferedResponse{h: http.Header{}, status: http.StatusOK}
	f.prom.ServeHTTP(rec, r)
	return &reply{status: rec.status, ctype: rec.h.Get("Content-Type"), body: rec.buf.Bytes()}
}

// bufferedResponse collects a handler's response for the gnet path.
type bufferedResponse struct {
	h      http.Header
	status int
	buf    bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.h }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.buf.Write(p) }
func (b *bufferedResponse) WriteHeader(status int)      { b.status = status }

func notFound(path string) *reply {
	return textReply(http.StatusNotFound, "not found: agentbridge serves / (the dashboard), /acp, /mcp, /events, /healthz, /metrics and /terminal")
}

func notAllowed(method, allow string) *reply {
	return textReply(http.StatusMethodNotAllowed, "method "+method+" is not allowed here (allowed: "+allow+")", "Allow", allow)
}

// route answers the plain endpoints shared by both listeners; nil means the
// path is /acp or /events, which the caller serves itself.
func (f *front) route(r *http.Request, tls bool) *reply {
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch r.URL.Path {
	case "/healthz":
		if !get {
			return notAllowed(r.Method, "GET, HEAD")
		}
		return f.healthz()
	case "/metrics":
		if !get {
			return notAllowed(r.Method, "GET, HEAD")
		}
		transport := "http"
		if tls {
			transport = "https"
		}
		if _, _, rp := f.authorize(r, transport, false, tls); rp != nil {
			return rp
		}
		return f.metricsReply(r)
	case "/acp", "/mcp":
		switch r.Method {
		case http.MethodGet, http.MethodPost, http.MethodDelete:
			return nil
		}
		return notAllowed(r.Method, "GET, POST, DELETE")
	case "/events":
		if r.Method != http.MethodGet {
			return notAllowed(r.Method, "GET")
		}
		return nil
	case "/terminal":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return notAllowed(r.Method, "GET, HEAD")
		}
		if isUpgrade(r) {
			return nil
		}
		return f.page(r, tls, "terminal.html")
	}
	if rp := f.web(r, tls); rp != nil {
		return rp
	}
	return notFound(r.URL.Path)
}

// httpProto is a TCP connection before it upgrades: HTTP/1.1 requests,
// parsed from complete header blocks, answered in order, kept alive.
type httpProto struct {
	f       *front
	w       *watch
	scanned int    // how much of the pending header block was searched for its end
	skip    int64  // body bytes of a refused request still to discard
	started bool   // a request has begun arriving: the header deadline runs
	parked  bool   // a request waits for its answer (POST initialize): read no further
	path    string // the parked request's path, for its metric
	body    []byte // the body of the request being served (POST /acp), borrowed
}

func newHTTPProto(s *Server, c *conn) protocol {
	if s.front == nil {
		return &httpProto{}
	}
	return &httpProto{f: s.front, w: s.front.watch(c)}
}

func (p *httpProto) name() string { return "http" }

func (p *httpProto) frame(m *wire.Msg) []byte { return m.Line() }

func (p *httpProto) farewell(wire.CloseReason, string) []byte { return nil }

func (p *httpProto) closed() {
	if p.w != nil {
		p.f.unwatch(p.w)
	}
}

func (p *httpProto) read(c *conn, buf []byte) (int, error) {
	if p.f == nil {
		_, _ = c.gc.Write(textReply(http.StatusNotFound, "no HTTP service on this listener").appendTo(nil, false))
		return len(buf), &closeError{code: session.ClosePolicy, reason: "http not served"}
	}
	used := 0
	for used < len(buf) {
		if p.parked {
			return used, nil
		}
		if p.skip > 0 {
			n := int(min(p.skip, int64(len(buf)-used)))
			used += n
			p.skip -= int64(n)
			continue
		}
		rest := buf[used:]
		if !p.started {
			// RFC 9112 §2.2: ignore empty lines before a request.
			if bytes.HasPrefix(rest, crlf) {
				used += 2
				continue
			}
			if len(rest) == 1 && rest[0] == '\r' {
				return used, nil
			}
			p.started = true
			if d := p.f.now() + int64(p.f.cfg.HeaderTimeout); d < p.w.deadline.Load() {
				p.w.deadline.Store(d)
			}
		}
		from := max(p.scanned-3, 0)
		i := bytes.Index(rest[from:], headerEnd)
		limit := p.f.cfg.MaxHeaderBytes
		if i < 0 {
			if len(rest) > limit {
				return len(buf), p.refuse(c, http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request header block is over the limit of %d bytes", limit))
			}
			p.scanned = len(rest)
			return used, nil
		}
		end := from + i + len(headerEnd)
		if end > limit {
			return len(buf), p.refuse(c, http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request header block is over the limit of %d bytes", limit))
		}
		block := rest[:end]
		req, err := http.ReadRequest(bufio.NewReaderSize(bytes.NewReader(block), len(block)))
		if err != nil {
			return len(buf), p.refuse(c, http.StatusBadRequest, "malformed request: "+err.Error())
		}
		p.body = nil
		if messageBody(req) {
			body, n, rp := readBody(req, rest[end:])
			if rp != nil {
				rp.close = true
				_, _ = c.gc.Write(rp.appendTo(nil, false))
				p.f.m.request(pathClass(req.URL.Path), rp.status)
				return len(buf), &closeError{code: session.ClosePolicy, reason: http.StatusText(rp.status)}
			}
			if n < 0 {
				p.scanned = 0
				return used, nil // wait for the rest of the body
			}
			p.body = body
			end += n
			req.ContentLength = 0
			req.TransferEncoding = nil
		} else if formBody(req) {
			// The login form: its small body is read with the headers.
			if len(rest)-end < int(req.ContentLength) {
				p.scanned = 0
				return used, nil // wait for the rest of the body
			}
			req.Body = io.NopCloser(bytes.NewReader(rest[end : end+int(req.ContentLength)]))
			end += int(req.ContentLength)
			req.ContentLength = 0
		}
		p.scanned, p.started = 0, false
		used += end
		n, done, err := p.serve(c, req, buf[used:])
		used += n
		if err != nil || done || c.closing() {
			return used, err
		}
	}
	return used, nil
}

// refuse answers a request the listener cannot parse and closes.
func (p *httpProto) refuse(c *conn, status int, why string) error {
	rp := textReply(status, why)
	rp.close = true
	_, _ = c.gc.Write(rp.appendTo(nil, false))
	p.f.m.request("other", status)
	return &closeError{code: session.ClosePolicy, reason: http.StatusText(status)}
}

// serve answers one request. after is what follows its header block; n is
// how much of it was consumed (the start of a WebSocket stream), done that
// the connection no longer speaks HTTP.
func (p *httpProto) serve(c *conn, req *http.Request, after []byte) (n int, done bool, err error) {
	head := req.Method == http.MethodHead
	chunked := len(req.TransferEncoding) > 0
	closeAfter := req.Close || chunked || req.ContentLength > maxSkipBody
	if !closeAfter && req.ContentLength > 0 {
		p.skip = req.ContentLength
	}
	class := pathClass(req.URL.Path)
	rp := p.f.route(req, false)
	if rp == nil && req.URL.Path == "/acp" && !wsAttempt(req) {
		var done bool
		rp, done = p.f.serveACP(&hxIO{c: c, p: p}, req, p.body)
		p.body = nil
		if done {
			return len(after), true, nil
		}
		if rp == nil { // parked: answered by resume
			return 0, false, nil
		}
		if rp.status >= 400 {
			p.f.m.refused("acp-http", strconv.Itoa(rp.status))
		}
	} else if rp == nil && req.URL.Path == "/mcp" {
		var done bool
		rp, done = p.f.serveMCP(&hxIO{c: c, p: p}, req, p.body)
		p.body = nil
		if done {
			return len(after), true, nil
		}
		if rp == nil {
			return 0, false, nil
		}
		if rp.status >= 400 {
			p.f.m.refused("mcp-http", strconv.Itoa(rp.status))
		}
	} else if rp == nil {
		if chunked || req.ContentLength > 0 {
			rp = textReply(http.StatusBadRequest, "a GET request for "+req.URL.Path+" has no body")
			closeAfter = true
		} else if req.URL.Path == "/acp" {
			return p.upgrade(c, req, after)
		} else if req.URL.Path == "/terminal" {
			return p.upgradeTerminal(c, req, after)
		} else {
			return p.f.startSSE(c, req, p.w, after)
		}
	}
	rp.close = rp.close || closeAfter
	_, _ = c.gc.Write(rp.appendTo(nil, head))
	p.f.m.request(class, rp.status)
	if rp.close {
		c.Close(session.ClosePolicy, "http: connection close")
		return 0, true, nil
	}
	p.w.deadline.Store(p.f.now() + int64(p.f.cfg.IdleTimeout))
	return 0, false, nil
}

// wsAttempt reports whether a request on /acp means to be a WebSocket
// handshake (refused as one when it is not a valid one) rather than a
// Streamable HTTP message or stream.
func wsAttempt(r *http.Request) bool {
	return r.Method == http.MethodGet && (r.Header.Get("Upgrade") != "" || r.Header.Get("Sec-WebSocket-Key") != "")
}

// upgrade completes a WebSocket handshake on /acp: Origin and token first
// (403, 401), then the handshake headers (400, 426), then 101 and the
// connection speaks RFC 6455 from the next byte on.
func (p *httpProto) upgrade(c *conn, req *http.Request, after []byte) (int, bool, error) {
	role, sub, rp := p.f.authorize(req, "ws", true, false)
	if rp == nil {
		if status, why := ws.CheckHandshake(req); status != 0 {
			p.f.m.refused("ws", "handshake")
			_, _ = c.gc.Write(ws.AppendHandshakeError(nil, status, why))
			p.f.m.request("/acp", status)
			c.Close(session.ClosePolicy, "websocket handshake refused")
			return 0, true, nil
		}
	}
	if rp != nil {
		rp.close = true
		_, _ = c.gc.Write(rp.appendTo(nil, false))
		p.f.m.request("/acp", rp.status)
		c.Close(session.ClosePolicy, "websocket handshake refused")
		return 0, true, nil
	}
	// Acp-Connection-Id on the 101, as the SDK's Node upgrade handler
	// sends it (the id names the connection in logs).
	hs := ws.AppendHandshakeResponse(nil, req.Header.Get("Sec-WebSocket-Key"), sub)
	hs = append(hs[:len(hs)-2], "Acp-Connection-Id: "+newConnID()+"\r\n\r\n"...)
	_, _ = c.gc.Write(hs)
	p.f.m.request("/acp", http.StatusSwitchingProtocols)
	wp := newWSProto(p.f, c, p.w)
	c.proto = wp
	p.f.m.closedConn("http")
	p.f.m.opened("ws")
	c.ep.SetTransport("ws")
	c.ep.Register(role, nil)
	p.f.s.log.Debug("websocket open", "peer", c.ep.Peer(), "transport", "ws", "role", role.String())
	if len(after) == 0 || c.closing() {
		return 0, true, nil
	}
	n, err := wp.read(c, after)
	return n, true, err
}

// Authorize implements tlsserve.Front: the same checks and refusals as the
// gnet path's upgrade, written through net/http.
func (f *front) Authorize(w http.ResponseWriter, r *http.Request) (auth.Role, string, bool) {
	if rp := f.route(r, true); rp != nil {
		rp.serve(w, r.Method == http.MethodHead)
		f.m.request("/acp", rp.status)
		return 0, "", false
	}
	role, sub, rp := f.authorize(r, "wss", true, true)
	if rp != nil {
		rp.close = true
		rp.serve(w, false)
		f.m.request("/acp", rp.status)
		return 0, "", false
	}
	if status, why := ws.CheckHandshake(r); status != 0 {
		f.m.refused("wss", "handshake")
		hdr := []string{}
		if status == http.StatusUpgradeRequired {
			hdr = append(hdr, "Sec-WebSocket-Version", ws.Version, "Upgrade", "websocket")
		}
		rp := textReply(status, why, hdr...)
		rp.close = true
		rp.serve(w, false)
		f.m.request("/acp", status)
		return 0, "", false
	}
	f.m.request("/acp", http.StatusSwitchingProtocols)
	return role, sub, true
}

// ServeHTTP implements tlsserve.Front for every path but /acp.
func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rp := f.route(r, true); rp != nil {
		rp.serve(w, r.Method == http.MethodHead)
		f.m.request(pathClass(r.URL.Path), rp.status)
		return
	}
	if r.URL.Path == "/events" {
		f.serveSSE(w, r)
		return
	}
	if r.URL.Path == "/acp" || r.URL.Path == "/mcp" {
		f.serveStreamableTLS(w, r)
		return
	}
	if r.URL.Path == "/terminal" {
		f.serveTerminalTLS(w, r)
		return
	}
	notFound(r.URL.Path).serve(w, false)
}
