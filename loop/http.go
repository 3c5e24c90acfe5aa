package loop

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/httpfront"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// maxSkipBody is the largest request body the loop reads and discards to
// keep a connection alive after refusing the request; bigger bodies close
// the connection instead.
const maxSkipBody = 1 << 20

// front is the gnet listener's side of the HTTP front (package httpfront,
// which decides routes, auth, Origin and the Streamable HTTP and SSE
// semantics): the HTTP/1.1 parser, the protocols a connection upgrades to
// (httpProto, wsProto, sseProto, acpSSEGet, termProto) and the sweeper
// that enforces their deadlines and heartbeats.
type front struct {
	s   *Server
	hf  *httpfront.Front
	cfg httpfront.Config // hf's, defaults filled
	m   *Metrics
	x   *httpMetrics

	mu      sync.Mutex
	watches map[*watch]struct{}

	// draining is set by closeIdle (the daemon is stopping): no connection
	// is kept alive after its current response.
	draining atomic.Bool

	// Owned by the ticker goroutine.
	lastSweep time.Time
	lastBeat  time.Time
	todo      []*watch
	beat      []*watch
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

func newFront(s *Server, hf *httpfront.Front) *front {
	f := &front{s: s, hf: hf, cfg: hf.Config(), m: s.cfg.Metrics, x: newHTTPMetrics(s.cfg.Metrics.Registry), watches: make(map[*watch]struct{})}
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

// closeIdle ends keep-alive, as net/http's Shutdown does: connections
// waiting for a request are closed now, the others after the response to
// the request they are in (the daemon waits for them, bounded). Any
// goroutine.
func (f *front) closeIdle() {
	f.draining.Store(true)
	var idle []*watch
	f.mu.Lock()
	for w := range f.watches {
		if w.kind.Load() == watchHTTP {
			idle = append(idle, w)
		}
	}
	f.mu.Unlock()
	for _, w := range idle {
		_ = w.c.gc.Wake(closeIfIdle)
	}
}

// wokenConn is the connection a Wake callback acts on: none when the wake
// failed, gnet closed the connection (its context is cleared) or ours is
// closing.
func wokenConn(gc gnet.Conn, err error) (*conn, bool) {
	if err != nil {
		return nil, false
	}
	c, ok := gc.Context().(*conn)
	if !ok || c.closing() {
		return nil, false
	}
	return c, true
}

// closeIfIdle runs on the connection's loop, woken by closeIdle: an HTTP
// connection between requests is closed; one in a request is left to
// serve's Connection: close.
func closeIfIdle(gc gnet.Conn, err error) error {
	c, ok := wokenConn(gc, err)
	if !ok {
		return nil
	}
	if p, ok := c.proto.(*httpProto); ok && !p.started && !p.parked && p.skip == 0 && gc.InboundBuffered() == 0 {
		c.Close(session.CloseGoingAway, "shutting down")
	}
	return nil
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
	for _, w := range f.todo {
		f.expire(w, n)
	}
	for _, w := range f.beat {
		if w.kind.Load() == watchACP {
			if beat {
				_ = w.c.gc.Wake(heartbeat)
			}
			if g := w.acp; g != nil && g.st.Pending() {
				g.Notify()
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
	pingFrame = ws.AppendFrame(nil, true, ws.OpPing, nil)
	headerEnd = []byte("\r\n\r\n")
	crlf      = []byte("\r\n")
)

// heartbeat runs on the connection's loop, woken by the sweeper: a ping to
// a WebSocket peer, a comment to an SSE stream. One function value for
// every connection, so a heartbeat round allocates nothing per connection.
func heartbeat(gc gnet.Conn, err error) error {
	c, ok := wokenConn(gc, err)
	if !ok {
		return nil
	}
	switch c.proto.(type) {
	case *wsProto, *termProto:
		// Written even above the outbound watermark: a peer that is alive
		// but behind must still be asked, or it would be dropped as silent.
		_, _ = gc.Write(pingFrame)
	case *sseProto, *acpSSEGet:
		if gc.OutboundBuffered() == 0 {
			_, _ = gc.Write(httpfront.KeepAlive)
		}
	}
	return nil
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
		_, _ = c.gc.Write(httpfront.Text(http.StatusNotFound, "no HTTP service on this listener").AppendTo(nil, false))
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
		var req *http.Request
		up := parseUpgrade(rest[:end])
		if up != nil {
			req = &up.req
		} else {
			var err error
			if req, err = readRequest(rest[:end]); err != nil {
				return len(buf), p.refuse(c, http.StatusBadRequest, "malformed request: "+err.Error())
			}
		}
		p.body = nil
		if messageBody(req) {
			body, n, rp := readBody(req, rest[end:])
			if rp != nil {
				rp.Close = true
				_, _ = c.gc.Write(rp.AppendTo(nil, false))
				p.f.m.request(httpfront.PathClass(req.URL.Path), rp.Status)
				return len(buf), &closeError{code: session.ClosePolicy, reason: http.StatusText(rp.Status)}
			}
			if n < 0 {
				p.scanned = 0
				return used, nil // wait for the rest of the body
			}
			p.body = body
			end += n
			req.ContentLength = 0
			req.TransferEncoding = nil
		} else if httpfront.FormBody(req) {
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
		if up != nil {
			// A handshake on /acp: serve went to upgrade, which keeps
			// nothing of the request.
			up.release()
		}
		used += n
		if err != nil || done || c.closing() {
			return used, err
		}
	}
	return used, nil
}

// headerReader is what a header block is parsed through. Reused (pooled):
// a fresh pair per request was a third of the garbage a WebSocket
// handshake left behind.
type headerReader struct {
	r bytes.Reader
	b *bufio.Reader
}

var headerReaders = sync.Pool{New: func() any {
	h := new(headerReader)
	h.b = bufio.NewReaderSize(&h.r, 1024)
	return h
}}

// readRequest parses one complete header block (borrowed).
func readRequest(block []byte) (*http.Request, error) {
	h := headerReaders.Get().(*headerReader)
	h.r.Reset(block)
	h.b.Reset(&h.r)
	req, err := http.ReadRequest(h.b)
	if err == nil && req.Body != http.NoBody {
		// The request's body reads through h (nothing: the block ends
		// with the headers), so h is not reused while req may be read.
		return req, nil
	}
	h.r.Reset(nil)
	headerReaders.Put(h)
	return req, err
}

// handshakes are scratch for a 101 response: gnet copies what it does not
// write at once, so the buffer is free again when Write returns.
var handshakes = sync.Pool{New: func() any { return new([]byte) }}

// refuse answers a request the listener cannot parse and closes.
func (p *httpProto) refuse(c *conn, status int, why string) error {
	rp := httpfront.Text(status, why)
	rp.Close = true
	_, _ = c.gc.Write(rp.AppendTo(nil, false))
	p.f.m.request("other", status)
	return &closeError{code: session.ClosePolicy, reason: http.StatusText(status)}
}

// serve answers one request. after is what follows its header block; n is
// how much of it was consumed (the start of a WebSocket stream), done that
// the connection no longer speaks HTTP.
func (p *httpProto) serve(c *conn, req *http.Request, after []byte) (n int, done bool, err error) {
	head := req.Method == http.MethodHead
	chunked := len(req.TransferEncoding) > 0
	closeAfter := req.Close || chunked || req.ContentLength > maxSkipBody || p.f.draining.Load()
	if !closeAfter && req.ContentLength > 0 {
		p.skip = req.ContentLength
	}
	class := httpfront.PathClass(req.URL.Path)
	rp := p.f.hf.Route(req, false)
	if rp == nil && req.URL.Path == "/acp" && !wsAttempt(req) {
		var done bool
		rp, done = p.f.hf.ServeACP(&hxIO{c: c, p: p}, req, p.body)
		p.body = nil
		if done {
			return len(after), true, nil
		}
		if rp == nil { // parked: answered by resume
			return 0, false, nil
		}
		if rp.Status >= 400 {
			p.f.m.refused("acp-http", strconv.Itoa(rp.Status))
		}
	} else if rp == nil && req.URL.Path == "/mcp" {
		var done bool
		rp, done = p.f.hf.ServeMCP(&hxIO{c: c, p: p}, req, p.body)
		p.body = nil
		if done {
			return len(after), true, nil
		}
		if rp == nil {
			return 0, false, nil
		}
		if rp.Status >= 400 {
			p.f.m.refused("mcp-http", strconv.Itoa(rp.Status))
		}
	} else if rp == nil {
		if chunked || req.ContentLength > 0 {
			rp = httpfront.Text(http.StatusBadRequest, "a GET request for "+req.URL.Path+" has no body")
			closeAfter = true
		} else if req.URL.Path == "/acp" {
			return p.upgrade(c, req, after)
		} else if req.URL.Path == "/terminal" {
			return p.upgradeTerminal(c, req, after)
		} else {
			return p.f.startSSE(c, req, p.w, after)
		}
	}
	rp.Close = rp.Close || closeAfter
	_, _ = c.gc.Write(rp.AppendTo(nil, head))
	p.f.m.request(class, rp.Status)
	if rp.Close {
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
	// "Sec-Websocket-Key" is the canonical form: Get canonicalises
	// anything else into a fresh string.
	return r.Method == http.MethodGet && (r.Header.Get("Upgrade") != "" || r.Header.Get("Sec-Websocket-Key") != "")
}

// upgrade completes a WebSocket handshake on /acp: Origin and token first
// (403, 401), then the handshake headers (400, 426), then 101 and the
// connection speaks RFC 6455 from the next byte on.
func (p *httpProto) upgrade(c *conn, req *http.Request, after []byte) (int, bool, error) {
	role, sub, rp := p.f.hf.Admit(req, "ws", true, false)
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
		rp.Close = true
		_, _ = c.gc.Write(rp.AppendTo(nil, false))
		p.f.m.request("/acp", rp.Status)
		c.Close(session.ClosePolicy, "websocket handshake refused")
		return 0, true, nil
	}
	bp := handshakes.Get().(*[]byte)
	hs := ws.AppendHandshakeResponse((*bp)[:0], req.Header.Get("Sec-Websocket-Key"), sub) // canonical: no copy of the name
	hs = append(httpfront.AppendUpgradeHeader(hs[:len(hs)-2]), crlf...)
	_, _ = c.gc.Write(hs)
	*bp = hs[:0]
	handshakes.Put(bp)
	p.f.m.request("/acp", http.StatusSwitchingProtocols)
	wp := newWSProto(p.f, c, p.w)
	c.proto = wp
	p.f.m.closedConn("http")
	p.f.m.opened("ws")
	c.ep.SetTransport("ws")
	c.ep.Register(role, nil)
	if p.f.s.log.Enabled(context.Background(), slog.LevelDebug) {
		// Guarded: the arguments alone are two allocations per handshake
		// when debug logging is off.
		p.f.s.log.Debug("websocket open", "peer", c.ep.Peer(), "transport", "ws", "role", role.String())
	}
	if len(after) == 0 || c.closing() {
		return 0, true, nil
	}
	n, err := wp.read(c, after)
	return n, true, err
}
