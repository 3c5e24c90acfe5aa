// Package httpfront is the HTTP front both TCP listeners share: the gnet
// listener (package loop, plain HTTP/1.1) and the TLS listener (package
// tlsserve, net/http) are siblings that cmd starts, and each hands this
// package every decision about a request: auth (Bearer, cookie, ?token=),
// the Origin policy, limits, the routes (/acp, /mcp, /events, /metrics,
// /healthz, the dashboard, /terminal), the ACP and MCP Streamable HTTP
// connections and the SSE encoding. It knows nothing of gnet: a listener
// gives it an Exchange (how to answer later and how to carry a stream) and
// it gives back a Reply (status, headers, body) that the listener writes in
// its own way (Reply.AppendTo for gnet, Reply.Serve for net/http).
//
// Concurrency: every method of Front is safe from any goroutine and never
// blocks on a peer, except the net/http handlers (ServeHTTP, ServeUpgrade
// refusals), which run on the request's own goroutine and may block it.
// Each ACP/MCP connection has one writer goroutine (acpConn.run); a
// net/http stream is written by its handler's goroutine; the reaper is the
// Front's own goroutine, stopped by Close.
package httpfront

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/terminal"
)

// Metrics receives the front's counters (the transport's registry, so
// /metrics counts every listener). Every method must be safe from any
// goroutine and must not block.
type Metrics interface {
	// Request counts an answered request by path class and status.
	Request(path string, status int)
	// Refused counts a refused connection or request by reason.
	Refused(transport, reason string)
	Opened(transport string)
	ClosedConn(transport string)
	In(transport string, bytes int)
	Out(transport string, msgs, bytes int)
	// ProtocolError counts a peer's RFC 6455 violation by close code.
	ProtocolError(code uint16)
	// Outbox is the delivery counters of one connection from peer.
	Outbox(peer string) delivery.Metrics
}

// Config configures a Front. Zero values are documented per field.
type Config struct {
	// Hub routes every connection's messages; required.
	Hub *session.Hub
	// Endpoint is what the front's ACP and MCP connections share with the
	// listeners' (outbox policy, rate, close counters); its Hub is set
	// from Hub.
	Endpoint delivery.EndpointConfig
	// Metrics receives the counters; nil counts nothing.
	Metrics Metrics
	// Scrape serves the body of GET /metrics (the Prometheus registry);
	// nil answers it 404.
	Scrape http.Handler
	// Logger; nil means slog.Default().
	Logger *slog.Logger

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
	// Terminal serves GET /terminal (--terminal); nil answers it 404.
	Terminal *terminal.Manager
	// HTTPIdle reaps an ACP Streamable HTTP connection with no open GET
	// and no request for this long (--http-idle). Zero means 5m; negative
	// never reaps.
	HTTPIdle time.Duration
}

func (c *Config) fill() {
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
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
	if c.Origins == nil {
		c.Origins, _ = auth.NewOriginPolicy(nil)
	}
}

// ErrNoHub is New's error for a Config without a Hub.
var ErrNoHub = errors.New("httpfront: no hub")

// Front is the HTTP layer of both TCP listeners. Safe from any goroutine.
type Front struct {
	cfg Config
	hub *session.Hub
	log *slog.Logger
	m   Metrics

	// Streams and hijacked connections served through net/http (SSE,
	// ACP/MCP GETs, the terminal), for Connections.
	streams atomic.Int64

	// ACP and MCP Streamable HTTP connections (acp.go).
	acp acpRegistry

	quit chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// New makes the front and starts its reaper (of idle Streamable HTTP
// connections); Close stops it.
func New(cfg Config) (*Front, error) {
	cfg.fill()
	if cfg.Hub == nil {
		return nil, ErrNoHub
	}
	cfg.Endpoint.Hub = cfg.Hub
	f := &Front{cfg: cfg, hub: cfg.Hub, log: cfg.Logger, m: cfg.Metrics, quit: make(chan struct{})}
	f.acp = acpRegistry{conns: make(map[string]*acpConn), idle: cfg.HTTPIdle}
	if cfg.HTTPIdle > 0 {
		f.wg.Add(1)
		go f.reaper()
	}
	return f, nil
}

// Config is the front's configuration with its defaults filled in.
func (f *Front) Config() Config { return f.cfg }

// Connections is how many streams the front serves itself through net/http
// (TLS SSE streams, TLS terminals). Any goroutine.
func (f *Front) Connections() int { return int(f.streams.Load()) }

// Close stops the reaper. Connections end through the hub (Hub.Shutdown).
// Any goroutine; later calls do nothing.
func (f *Front) Close() {
	f.once.Do(func() { close(f.quit) })
	f.wg.Wait()
}

// reaper closes idle Streamable HTTP connections (--http-idle), checking at
// a tenth of the limit (at most every second). The Front's own goroutine.
func (f *Front) reaper() {
	defer f.wg.Done()
	t := time.NewTicker(max(min(f.cfg.HTTPIdle/10, time.Second), 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			f.acp.reap(now.UnixNano())
		case <-f.quit:
			return
		}
	}
}

var (
	// KeepAlive is the SSE comment written every heartbeat to an idle
	// stream.
	KeepAlive     = []byte(": keep-alive\n\n")
	jsonType      = "application/json"
	textType      = "text/plain; charset=utf-8"
	bearerRealm   = `Bearer realm="agentbridge"`
	bearerInvalid = `Bearer realm="agentbridge", error="invalid_token"`
)

// Reply is an HTTP response the front composes; the listener writes it.
type Reply struct {
	Status int
	CType  string
	Body   []byte
	Hdr    []string // extra headers: name, value, name, value...
	Close  bool     // close the connection after it
}

// Text is a text/plain reply of msg and a newline, with extra headers.
func Text(status int, msg string, hdr ...string) *Reply {
	return &Reply{Status: status, CType: textType, Body: []byte(msg + "\n"), Hdr: hdr}
}

// AppendTo appends the HTTP/1.1 response to dst (the gnet listener's
// path); head leaves the body out.
func (rp *Reply) AppendTo(dst []byte, head bool) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(rp.Status), 10)
	dst = append(dst, ' ')
	dst = append(dst, http.StatusText(rp.Status)...)
	dst = append(dst, "\r\nContent-Type: "...)
	dst = append(dst, rp.CType...)
	dst = append(dst, "\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(rp.Body)), 10)
	dst = append(dst, "\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"...)
	if rp.Close {
		dst = append(dst, "Connection: close\r\n"...)
	}
	for i := 0; i+1 < len(rp.Hdr); i += 2 {
		dst = append(dst, rp.Hdr[i]...)
		dst = append(dst, ": "...)
		dst = append(dst, rp.Hdr[i+1]...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	if !head {
		dst = append(dst, rp.Body...)
	}
	return dst
}

// Serve writes the response through net/http (the TLS listener's path).
func (rp *Reply) Serve(w http.ResponseWriter, head bool) {
	h := w.Header()
	for i := 0; i+1 < len(rp.Hdr); i += 2 {
		h.Set(rp.Hdr[i], rp.Hdr[i+1])
	}
	h.Set("Content-Type", rp.CType)
	h.Set("Content-Length", strconv.Itoa(len(rp.Body)))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if rp.Close {
		h.Set("Connection", "close")
	}
	w.WriteHeader(rp.Status)
	if !head {
		_, _ = w.Write(rp.Body)
	}
}

// PathClass bounds the path label of the request metric.
func PathClass(p string) string {
	switch p {
	case "/healthz", "/metrics", "/acp", "/mcp", "/events", "/", "/terminal", "/login", "/logout":
		return p
	}
	if strings.HasPrefix(p, "/ui/") {
		return "/ui/"
	}
	return "other"
}

// Admit finds and checks the request's token, and its Origin when the
// endpoint is one a browser page could open (WebSocket, SSE); transport
// labels the refusal in metrics and the audit log. It returns the
// role and the subprotocol entry to select, or the refusal to send. Safe
// from any goroutine.
func (f *Front) Admit(r *http.Request, transport string, checkOrigin, tls bool) (auth.Role, string, *Reply) {
	if checkOrigin {
		if o := r.Header.Get("Origin"); !f.cfg.Origins.Allowed(o, r.Host, tls) {
			f.m.Refused(transport, "origin")
			if len(o) > 200 {
				o = o[:200]
			}
			f.hub.AuditAuthFailure(r.RemoteAddr, transport, fmt.Sprintf("origin %q not allowed", o))
			return 0, "", Text(http.StatusForbidden, fmt.Sprintf("origin %q may not connect: the daemon allows its own origin and those given with --allow-origin", o))
		}
	}
	tok, sub := auth.TokenFromRequest(r)
	if tok == "" {
		f.m.Refused(transport, "no token")
		f.hub.AuditAuthFailure(r.RemoteAddr, transport, "no token")
		return 0, "", Text(http.StatusUnauthorized, "a token is required: send it as Authorization: Bearer <token>, the WebSocket subprotocol agentbridge.token.<token>, ?token=<token> or the agentbridge_token cookie", "WWW-Authenticate", bearerRealm)
	}
	role, ok := f.cfg.Tokens.Lookup(tok)
	if !ok {
		f.m.Refused(transport, "bad token")
		f.hub.AuditAuthFailure(r.RemoteAddr, transport, "token rejected")
		return 0, "", Text(http.StatusUnauthorized, "token rejected", "WWW-Authenticate", bearerInvalid)
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
func (f *Front) healthz() *Reply {
	st := f.hub.Stats()
	var b healthBody
	b.Status = "ok"
	if !st.AgentUp {
		b.Status = "degraded"
	}
	b.Agent.Up, b.Agent.Restarts = st.AgentUp, st.AgentRestarts
	b.Connections, b.Sessions = st.Connections, st.Sessions
	body, _ := json.Marshal(b)
	return &Reply{Status: http.StatusOK, CType: jsonType, Body: append(body, '\n')}
}

// metricsReply renders the registry with promhttp into a reply.
func (f *Front) metricsReply(r *http.Request) *Reply {
	if f.cfg.Scrape == nil {
		return notFound(r.URL.Path)
	}
	rec := &bufferedResponse{h: http.Header{}, status: http.StatusOK}
	f.cfg.Scrape.ServeHTTP(rec, r)
	return &Reply{Status: rec.status, CType: rec.h.Get("Content-Type"), Body: rec.buf.Bytes()}
}

// bufferedResponse collects a handler's response into a Reply.
type bufferedResponse struct {
	h      http.Header
	status int
	buf    bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.h }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.buf.Write(p) }
func (b *bufferedResponse) WriteHeader(status int)      { b.status = status }

func notFound(path string) *Reply {
	return Text(http.StatusNotFound, "not found: agentbridge serves / (the dashboard), /acp, /mcp, /events, /healthz, /metrics and /terminal")
}

func notAllowed(method, allow string) *Reply {
	return Text(http.StatusMethodNotAllowed, "method "+method+" is not allowed here (allowed: "+allow+")", "Allow", allow)
}

// Route answers the plain endpoints shared by both listeners; nil means the
// path is one the listener serves itself (/acp, /mcp, /events, a /terminal
// upgrade) through the front's other methods.
func (f *Front) Route(r *http.Request, tls bool) *Reply {
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
		if _, _, rp := f.Admit(r, transport, false, tls); rp != nil {
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

// Authorize implements tlsserve.Front: the same checks and refusals as the
// gnet path's upgrade, written through net/http; the 101 carries an
// Acp-Connection-Id as on gnet (UpgradeHeader).
func (f *Front) Authorize(w http.ResponseWriter, r *http.Request) (auth.Role, string, string, bool) {
	if rp := f.Route(r, true); rp != nil {
		rp.Serve(w, r.Method == http.MethodHead)
		f.m.Request("/acp", rp.Status)
		return 0, "", "", false
	}
	role, sub, rp := f.Admit(r, "wss", true, true)
	if rp != nil {
		rp.Close = closeAfter(r)
		rp.Serve(w, false)
		f.m.Request("/acp", rp.Status)
		return 0, "", "", false
	}
	if status, why := ws.CheckHandshake(r); status != 0 {
		f.m.Refused("wss", "handshake")
		hdr := []string{}
		if status == http.StatusUpgradeRequired {
			hdr = append(hdr, "Sec-WebSocket-Version", ws.Version, "Upgrade", "websocket")
		}
		rp := Text(status, why, hdr...)
		rp.Close = closeAfter(r)
		rp.Serve(w, false)
		f.m.Request("/acp", status)
		return 0, "", "", false
	}
	f.m.Request("/acp", http.StatusSwitchingProtocols)
	return role, sub, UpgradeHeader(), true
}

// UpgradeHeader is the header line a WebSocket 101 on /acp carries on either
// listener: a fresh Acp-Connection-Id, as the ACP SDK's Node upgrade handler
// sends it (the id names the connection in logs).
func UpgradeHeader() string { return string(AppendUpgradeHeader(nil)) }

// AppendUpgradeHeader appends UpgradeHeader's line to dst without garbage
// of its own (every WebSocket handshake on the gnet listener makes one).
func AppendUpgradeHeader(dst []byte) []byte {
	dst = append(dst, "Acp-Connection-Id: "...)
	return append(appendConnID(dst), "\r\n"...)
}

// ServeHTTP implements tlsserve.Front for every path but /acp.
func (f *Front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rp := f.Route(r, true); rp != nil {
		rp.Serve(w, r.Method == http.MethodHead)
		f.m.Request(PathClass(r.URL.Path), rp.Status)
		return
	}
	if r.URL.Path == "/events" {
		f.serveSSE(w, r)
		return
	}
	if r.URL.Path == "/acp" || r.URL.Path == "/mcp" {
		f.serveStreamable(w, r)
		return
	}
	if r.URL.Path == "/terminal" {
		f.serveTerminalTLS(w, r)
		return
	}
	notFound(r.URL.Path).Serve(w, false)
}

type nopMetrics struct{}

func (nopMetrics) Request(string, int)            {}
func (nopMetrics) Refused(string, string)         {}
func (nopMetrics) Opened(string)                  {}
func (nopMetrics) ClosedConn(string)              {}
func (nopMetrics) In(string, int)                 {}
func (nopMetrics) Out(string, int, int)           {}
func (nopMetrics) ProtocolError(uint16)           {}
func (nopMetrics) Outbox(string) delivery.Metrics { return nil }

// closeAfter reports whether a refused upgrade closes its connection: an
// HTTP/1.1 one does (the client meant to leave HTTP). Over HTTP/2,
// "Connection: close" would make net/http shut the whole connection down,
// every other stream of the client with it, so the refusal ends only its
// stream.
func closeAfter(r *http.Request) bool { return r.ProtoMajor < 2 }
