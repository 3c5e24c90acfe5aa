// Package tlsserve is the TLS listener: HTTPS (HTTP/2 by ALPN, or
// HTTP/1.1) and WSS on --listen when the daemon has a certificate. gnet has
// no TLS, and crypto/tls needs a blocking net.Conn, so this listener runs on
// goroutines (net/http for requests, gws for WebSockets) over the same
// session.Hub the event loop feeds: one routing core, two ways of moving
// bytes. It is the event loop's sibling, started by cmd; neither knows the
// other.
//
// Policy is not decided here. Everything but the WebSocket upgrade on /acp
// is handed to a Front (package httpfront, which the event loop's HTTP
// path asks too, so /healthz, /metrics, /events, /acp and /mcp Streamable
// HTTP, auth and Origin rules are the same code on both listeners), and
// the upgrade itself is judged by Front.Authorize before gws sees it.
//
// Concurrency: each WebSocket connection has two goroutines. gws's read loop
// hands text messages to the hub in order and answers pings. A writer drains
// the connection's delivery.Outbox (gws's own WriteAsync queue is unbounded,
// so it is not used), sends heartbeat pings and performs our side of the
// close handshake. The hub only enqueues and wakes the writer. Every write to
// a socket goes through one mutex, a whole frame (or batch of whole frames)
// at a time, so control frames from the read loop never split a data frame.
package tlsserve

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// Front is the HTTP layer this listener shares with the event loop.
type Front interface {
	// Authorize judges a request for /acp before the upgrade: method,
	// Origin, token and the handshake headers. When it refuses, it has
	// written the response and returns ok false; otherwise it has written
	// nothing and returns the connection's role, the subprotocol to select
	// ("" for none) and extra header lines for the 101 ("Name: value\r\n"
	// each; the Acp-Connection-Id). Called on the request's goroutine.
	Authorize(w http.ResponseWriter, r *http.Request) (role auth.Role, subprotocol, header string, ok bool)
	// ServeHTTP serves every request for a path other than /acp.
	http.Handler
}

// Metrics receives this listener's counters. Every method must be safe from
// any goroutine and must not block.
type Metrics interface {
	Opened(transport string)
	ClosedConn(transport string)
	In(transport string, bytes int)
	Out(transport string, msgs, bytes int)
	// Closed counts a close the bridge initiated; reason is a short class.
	Closed(transport, reason string)
	// ProtocolError counts a peer's RFC 6455 violation by close code.
	ProtocolError(code uint16)
	// HalfOpen counts a peer dropped for silence.
	HalfOpen(transport string)
	// RateLimited counts an input message refused by the rate limit, by
	// kind ("request", "notification").
	RateLimited(kind string)
}

// Transport is the label of this listener's WebSocket connections in the
// hub, logs and metrics.
const Transport = "wss"

// Config configures a Server. Zero values are documented per field.
type Config struct {
	// Addr is the TCP address to listen on, host:port.
	Addr string
	// Listener, when set, is served instead of listening on Addr; Stop
	// closes it.
	Listener net.Listener
	// Limit, when set, wraps the listener before it is served: the
	// daemon's admission (connection limits shared with the event loop).
	Limit func(net.Listener) net.Listener
	// CertFile and KeyFile are the PEM certificate chain and private key.
	CertFile, KeyFile string
	// Hub routes messages; required.
	Hub *session.Hub
	// Front judges upgrades and serves the other paths; required.
	Front Front
	// Delivery configures each WebSocket connection's outbound queue and
	// delivery policy (as on the event loop); zero fields take delivery's
	// defaults.
	Delivery delivery.Config
	// Rate limits each connection's input; the zero Rate limits nothing.
	Rate delivery.Rate
	// OutboxMetrics, if not nil, returns the delivery counters of the
	// connection from peer (the event loop's, so /metrics counts both
	// listeners).
	OutboxMetrics func(peer string) delivery.Metrics
	// MaxMessage is the largest message accepted from a client; bigger ones
	// close the connection with 1009. Zero means 16 MiB.
	MaxMessage int
	// MaxHeaderBytes caps a request's header block (431 beyond). Zero means
	// 16 KiB.
	MaxHeaderBytes int
	// Heartbeat is the ping interval; a peer silent for two intervals is
	// dropped and counted as half-open. Zero means 15s.
	Heartbeat time.Duration
	// HeaderTimeout bounds how long a client may take to send a request's
	// headers (and its TLS handshake). Zero means 10s.
	HeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection with no request in
	// progress. Zero means 60s.
	IdleTimeout time.Duration
	// CloseTimeout bounds how long our close frame waits for the peer's.
	// Zero means 5s.
	CloseTimeout time.Duration
	// WriteTimeout bounds one write to a WebSocket peer; a peer that reads
	// nothing for that long is dropped. Zero means twice Heartbeat, at
	// least 10s.
	WriteTimeout time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Metrics; nil means none.
	Metrics Metrics
}

func (c *Config) fill() {
	if c.MaxMessage == 0 {
		c.MaxMessage = 16 << 20
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 16 << 10
	}
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
	if c.WriteTimeout == 0 {
		c.WriteTimeout = max(2*c.Heartbeat, 10*time.Second)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
}

// Server is the TLS listener.
type Server struct {
	cfg     Config
	log     *slog.Logger
	m       Metrics
	tlsConf *tls.Config
	hs      *http.Server
	events  *handler
	done    chan error

	lnMu sync.Mutex
	ln   net.Listener

	epc delivery.EndpointConfig // what every connection's endpoint shares

	upMu      sync.Mutex
	upgraders map[string]*gws.Upgrader // by selected subprotocol

	mu      sync.Mutex
	conns   map[*wsConn]struct{}
	n       atomic.Int64
	stopped atomic.Bool
}

// New loads the certificate and prepares the server; it fails with an error
// naming the file when the certificate or key cannot be used.
func New(cfg Config) (*Server, error) {
	cfg.fill()
	if cfg.Hub == nil || cfg.Front == nil {
		return nil, ErrIncomplete
	}
	if err := cfg.Delivery.Validate(); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", cfg.CertFile, cfg.KeyFile, err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, m: cfg.Metrics, done: make(chan error, 1),
		upgraders: make(map[string]*gws.Upgrader), conns: make(map[*wsConn]struct{})}
	s.events = &handler{s: s}
	s.epc = delivery.EndpointConfig{Hub: cfg.Hub, Outbox: cfg.Delivery, Rate: cfg.Rate, Logger: cfg.Logger,
		Closed:      func(t string, r wire.CloseReason) { s.m.Closed(t, r.String()) },
		RateLimited: s.m.RateLimited}
	s.tlsConf = &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// HTTP/2 first (ALPN h2), so a browser's SSE session streams and
		// POSTs share one connection instead of queueing behind HTTP/1.1's
		// six per origin. WebSocket stays on HTTP/1.1: net/http does not
		// offer RFC 8441's extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL
		// is not sent), so a browser opens an HTTP/1.1 connection for it.
		NextProtos: []string{"h2", "http/1.1"},
	}
	s.hs = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: cfg.HeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		// net/http adds 4 KiB of slack to MaxHeaderBytes; take it back so
		// the limit is the one documented.
		MaxHeaderBytes: max(cfg.MaxHeaderBytes-4096, 1024),
		ErrorLog:       log.New(logWriter{s.log}, "", 0),
		HTTP2:          &http.HTTP2Config{MaxConcurrentStreams: maxStreams},
	}
	s.hs.Protocols = new(http.Protocols)
	s.hs.Protocols.SetHTTP1(true)
	s.hs.Protocols.SetHTTP2(true)
	return s, nil
}

// Start listens on Config.Addr and serves in the background. It returns
// once the socket is bound. Call it once, from any goroutine.
func (s *Server) Start() error {
	ln := s.cfg.Listener
	if ln == nil {
		var err error
		// Go's net.Listen sets SO_REUSEADDR, so a restart binds at once
		// while the previous daemon's connections linger in TIME_WAIT.
		if ln, err = net.Listen("tcp", s.cfg.Addr); err != nil {
			return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
		}
	}
	if s.cfg.Limit != nil {
		ln = s.cfg.Limit(ln)
	}
	s.lnMu.Lock()
	s.ln = ln
	s.lnMu.Unlock()
	go func() {
		// net/http bounds the TLS handshake by ReadHeaderTimeout too.
		err := s.hs.Serve(tls.NewListener(ln, s.tlsConf))
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return nil
}

// Addr is the bound address (useful with port 0), or nil before Start. Safe
// from any goroutine.
func (s *Server) Addr() net.Addr {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Done receives the serve error (nil after Stop) once the server stops.
func (s *Server) Done() <-chan error { return s.done }

// Connections is the number of open WebSocket connections. Safe from any
// goroutine.
func (s *Server) Connections() int { return int(s.n.Load()) }

// CloseIdle ends HTTP keep-alive, as the start of net/http's Shutdown:
// idle connections are closed now, the others after their response. For a
// daemon that is stopping, after Hub.Shutdown. Any goroutine.
func (s *Server) CloseIdle() { s.hs.SetKeepAlivesEnabled(false) }

// Stop stops accepting, closes idle HTTP connections and waits for active
// requests until ctx ends; WebSocket connections still open are then closed
// without a handshake. Call Hub.Shutdown first so clients get a close frame
// and a reason. Safe from any goroutine; later calls do nothing.
func (s *Server) Stop(ctx context.Context) error {
	if !s.stopped.CompareAndSwap(false, true) {
		return nil
	}
	err := s.hs.Shutdown(ctx)
	if err != nil {
		_ = s.hs.Close()
	}
	s.mu.Lock()
	for c := range s.conns {
		_ = c.raw.Close()
	}
	s.mu.Unlock()
	return err
}

// ServeHTTP routes /acp to the WebSocket upgrade and everything else to the
// Front. It runs on net/http's per-connection goroutine.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/acp" || !webSocketAttempt(r) {
		// Everything but a WebSocket handshake on /acp, including ACP
		// Streamable HTTP on /acp, is the Front's.
		s.cfg.Front.ServeHTTP(w, r)
		return
	}
	role, sub, extra, ok := s.cfg.Front.Authorize(w, r)
	if !ok {
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "this connection cannot be upgraded", http.StatusInternalServerError)
		return
	}
	netConn, brw, err := hj.Hijack()
	if err != nil {
		s.log.Warn("websocket upgrade: hijack failed", "peer", r.RemoteAddr, "err", err)
		return
	}
	raw := &guardConn{Conn: netConn, writeTimeout: s.cfg.WriteTimeout, lingerFor: s.cfg.CloseTimeout, head: []byte(extra)}
	// Bytes a client pipelined after its handshake are already in net/http's
	// reader; keep them in front of the socket.
	var br *bufio.Reader
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(early)), raw), 4096)
	} else {
		br = bufio.NewReaderSize(raw, 4096)
	}
	socket, err := s.upgrader(sub).UpgradeFromConn(raw, br, r)
	if err != nil {
		s.log.Info("websocket upgrade failed", "peer", r.RemoteAddr, "err", err)
		return
	}
	c := newWSConn(s, socket, raw, r.RemoteAddr)
	socket.Session().Store(connKey, c)
	s.track(c)
	s.m.Opened(Transport)
	// The client is registered before the writer starts, so the writer may
	// read c.cl; what Open queues is written once the writer runs.
	c.ep.Register(role, nil)
	go c.writeLoop()
	s.log.Debug("websocket open", "peer", c.peer, "transport", Transport, "role", role.String())
	go socket.ReadLoop()
}

// upgrader returns the gws upgrader that selects sub. gws negotiates
// subprotocols from a fixed list per upgrader, and the token subprotocol is
// per client, so there is one upgrader per selected subprotocol (bounded by
// the number of tokens).
func (s *Server) upgrader(sub string) *gws.Upgrader {
	s.upMu.Lock()
	defer s.upMu.Unlock()
	if u := s.upgraders[sub]; u != nil {
		return u
	}
	if len(s.upgraders) >= maxUpgraders {
		clear(s.upgraders)
	}
	opt := &gws.ServerOption{
		ReadMaxPayloadSize: s.cfg.MaxMessage,
		CheckUtf8Enabled:   true,
		HandshakeTimeout:   s.cfg.HeaderTimeout,
		Logger:             gwsLogger{s.log},
		NewSession:         func() gws.SessionStorage { return &slot{} },
	}
	if sub != "" {
		opt.SubProtocols = []string{sub}
	}
	u := gws.NewUpgrader(s.events, opt)
	s.upgraders[sub] = u
	return u
}

// maxStreams is the most concurrent HTTP/2 streams per connection: a
// browser tab's SSE streams (one per connection and per session) and its
// POSTs.
const maxStreams = 250

// maxUpgraders bounds the upgrader cache; it only grows past the number of
// configured tokens if tokens are replaced while running.
const maxUpgraders = 256

func (s *Server) track(c *wsConn) {
	s.n.Add(1)
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) untrack(c *wsConn) {
	s.mu.Lock()
	_, ok := s.conns[c]
	delete(s.conns, c)
	s.mu.Unlock()
	if ok {
		s.n.Add(-1)
	}
}

// logWriter sends net/http's own log lines (TLS handshake errors from port
// scanners, mostly) to slog at debug level.
type logWriter struct{ l *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(p)), "src", "https")
	return len(p), nil
}

type gwsLogger struct{ l *slog.Logger }

func (g gwsLogger) Error(v ...any) { g.l.Debug(fmt.Sprint(v...), "src", "gws") }

type nopMetrics struct{}

func (nopMetrics) Opened(string)         {}
func (nopMetrics) ClosedConn(string)     {}
func (nopMetrics) In(string, int)        {}
func (nopMetrics) Out(string, int, int)  {}
func (nopMetrics) Closed(string, string) {}
func (nopMetrics) ProtocolError(uint16)  {}
func (nopMetrics) HalfOpen(string)       {}
func (nopMetrics) RateLimited(string)    {}

// webSocketAttempt reports whether a request means to be a WebSocket
// handshake (judged as one, refused as one) rather than Streamable HTTP.
func webSocketAttempt(r *http.Request) bool {
	return r.Method == http.MethodGet && (r.Header.Get("Upgrade") != "" || r.Header.Get("Sec-WebSocket-Key") != "")
}
