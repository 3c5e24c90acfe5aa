package loop

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// SSE: GET /events?session=ID is a read-only stream of one session's data
// plane. The stream registers with the hub as a viewer and attaches through
// the hub's own bridge/attach (so replay, ordering and gaps are the hub's
// semantics, not a second implementation): Last-Event-ID or ?since=SEQ
// resume after a seq, ?last=N replays the last N events. Each logged event
// is "id: SEQ" plus its JSON as data; bridge notifications without a seq
// (bridge/status, bridge/gap, bridge/summary) are named events, so an
// EventSource's onmessage sees only the agent's events.

// sseRequest is what an /events request asks for.
type sseRequest struct {
	session string
	since   *uint64
	last    *int
}

func parseSSE(r *http.Request) (sseRequest, *reply) {
	q := r.URL.Query()
	sr := sseRequest{session: q.Get("session")}
	if sr.session == "" {
		return sr, textReply(http.StatusBadRequest, "GET /events needs ?session=ID (bridge/sessions lists them)")
	}
	since := r.Header.Get("Last-Event-ID")
	if since == "" {
		since = q.Get("since")
	}
	if since != "" {
		n, err := strconv.ParseUint(since, 10, 64)
		if err != nil {
			return sr, textReply(http.StatusBadRequest, fmt.Sprintf("Last-Event-ID or since must be an event seq (a non-negative integer), not %q", since))
		}
		sr.since = &n
	}
	if last := q.Get("last"); last != "" {
		n, err := strconv.Atoi(last)
		if err != nil || n < 0 {
			return sr, textReply(http.StatusBadRequest, fmt.Sprintf("last must be a non-negative integer, not %q", last))
		}
		if sr.since != nil {
			return sr, textReply(http.StatusBadRequest, "give since (or Last-Event-ID) or last, not both")
		}
		sr.last = &n
	}
	return sr, nil
}

// sseAttachID is the id of the stream's own bridge/attach request.
const sseAttachID = `"sse-attach"`

func (sr sseRequest) attachMsg() []byte {
	b := []byte(`{"jsonrpc":"2.0","id":` + sseAttachID + `,"method":"bridge/attach","params":{"sessionId":`)
	b = wire.AppendString(b, sr.session)
	if sr.since != nil {
		b = append(b, `,"since":`...)
		b = strconv.AppendUint(b, *sr.since, 10)
	}
	if sr.last != nil {
		b = append(b, `,"last":`...)
		b = strconv.AppendInt(b, int64(*sr.last), 10)
	}
	return append(b, "}}"...)
}

// sseConn is how the hub sees a stream: it captures the answer to the
// stream's attach request (Hub.Handle delivers it synchronously, before
// Handle returns) and passes everything else to the transport.
type sseConn struct {
	session.Conn
	answer atomic.Pointer[wire.Msg]
}

// Send is safe from any goroutine; see session.Conn.
func (s *sseConn) Send(m *wire.Msg, cls wire.Class) bool {
	if m.Seq == 0 {
		if hd, err := jsonrpc.Peek(m.Body()); err == nil && hd.Kind == jsonrpc.KindResponse {
			s.answer.CompareAndSwap(nil, m)
			return true
		}
	}
	return s.Conn.Send(m, cls)
}

// attach registers a stream with the hub and attaches it; on failure it
// unregisters it and returns the refusal.
func (f *front) attach(sc *sseConn, sr sseRequest, peer string) (*session.Client, *reply) {
	cl := f.s.hub.Open(sc, session.ConnInfo{Role: auth.RoleViewer, Transport: "sse", Peer: peer})
	f.s.hub.Handle(cl, sr.attachMsg())
	if rp := attachRefusal(sc.answer.Load()); rp != nil {
		f.s.hub.Closed(cl)
		return nil, rp
	}
	return cl, nil
}

// attachRefusal maps the answer to the stream's attach to an HTTP refusal,
// nil when the stream is attached.
func attachRefusal(m *wire.Msg) *reply {
	if m == nil {
		return textReply(http.StatusServiceUnavailable, "the daemon is stopping")
	}
	var ans struct {
		Error *jsonrpc.Error `json:"error"`
	}
	if err := jsonrpc.Unmarshal(m.Body(), &ans); err != nil {
		return textReply(http.StatusInternalServerError, "unreadable attach answer")
	}
	if ans.Error == nil {
		return nil
	}
	switch ans.Error.Code {
	case jsonrpc.CodeUnknownSession:
		return textReply(http.StatusNotFound, ans.Error.Message)
	case jsonrpc.CodeNotAllowed:
		return textReply(http.StatusForbidden, ans.Error.Message)
	}
	return textReply(http.StatusBadRequest, ans.Error.Message)
}

const sseHead = "HTTP/1.1 200 OK\r\n" +
	"Content-Type: text/event-stream; charset=utf-8\r\n" +
	"Cache-Control: no-store\r\n" +
	"X-Accel-Buffering: no\r\n" +
	"Connection: close\r\n\r\n"

// sseHello opens every stream: EventSource's reconnection delay, and a
// comment so proxies and clients see the stream start at once.
const sseHello = "retry: 2000\n: attached\n\n"

// appendEvent appends m as one SSE event.
func appendEvent(dst []byte, m *wire.Msg) []byte {
	body := m.Body()
	if m.Seq > 0 {
		dst = append(dst, "id: "...)
		dst = strconv.AppendUint(dst, m.Seq, 10)
		dst = append(dst, '\n')
	} else if hd, err := jsonrpc.Peek(body); err == nil && len(hd.Method) > 0 && !bytes.ContainsAny(hd.Method, "\r\n") {
		dst = append(dst, "event: "...)
		dst = append(dst, hd.Method...)
		dst = append(dst, '\n')
	}
	// JSON holds raw line breaks only as whitespace between tokens, so a
	// multi-line body becomes several data lines, which the client joins
	// with "\n" back into equivalent JSON.
	for {
		i := bytes.IndexAny(body, "\r\n")
		dst = append(dst, "data: "...)
		if i < 0 {
			dst = append(dst, body...)
			dst = append(dst, '\n')
			break
		}
		dst = append(dst, body[:i]...)
		dst = append(dst, '\n')
		body = body[i+1:]
	}
	return append(dst, '\n')
}

// sseProto is a TCP connection streaming events; it reads nothing more.
type sseProto struct {
	f *front
	w *watch
}

func (p *sseProto) name() string { return "sse" }

func (p *sseProto) read(_ *conn, buf []byte) (int, error) { return len(buf), nil }

func (p *sseProto) frame(m *wire.Msg) []byte { return appendEvent(nil, m) }

func (p *sseProto) farewell(session.CloseCode, string) []byte { return nil }

func (p *sseProto) closed() { p.f.unwatch(p.w) }

// startSSE serves GET /events on the gnet path: refusals as HTTP errors,
// then the stream's head, after which the connection only writes events.
func (f *front) startSSE(c *conn, req *http.Request, w *watch, after []byte) (int, bool, error) {
	_, _, rp := f.authorize(req, "sse", true, false)
	var sr sseRequest
	if rp == nil {
		sr, rp = parseSSE(req)
	}
	var sc *sseConn
	if rp == nil {
		sc = &sseConn{Conn: c}
		c.cl, rp = f.attach(sc, sr, c.peer)
	}
	if rp != nil {
		// Whatever the hub queued for the refused stream (a bridge/status)
		// must not follow the HTTP answer.
		c.msgs = c.out.Drain(c.msgs[:0], 1<<30)
		clear(c.msgs)
		rp.close = true
		_, _ = c.gc.Write(rp.appendTo(nil, false))
		f.m.request("/events", rp.status)
		c.Close(session.ClosePolicy, "sse refused")
		return len(after), true, nil
	}
	_, _ = c.gc.Write([]byte(sseHead + sseHello))
	f.m.request("/events", http.StatusOK)
	c.proto = &sseProto{f: f, w: w}
	w.deadline.Store(0)
	w.kind.Store(watchSSE)
	f.m.closedConn("http")
	f.m.opened("sse")
	f.s.log.Debug("sse open", "peer", c.peer, "session", sr.session)
	return len(after), true, nil
}

// httpStream is an SSE stream served through net/http (the TLS listener):
// the handler goroutine drains its outbox.
type httpStream struct {
	out     *delivery.Outbox
	wake    chan struct{}
	quit    chan struct{}
	closing atomic.Bool
	code    session.CloseCode
}

// Send queues m; see session.Conn. Safe from any goroutine.
func (s *httpStream) Send(m *wire.Msg, cls wire.Class) bool {
	if s.closing.Load() {
		return cls == wire.Data
	}
	return s.out.Send(m, cls)
}

// Close ends the stream after what is queued. Safe from any goroutine.
func (s *httpStream) Close(code session.CloseCode, _ string) {
	if s.closing.CompareAndSwap(false, true) {
		s.code = code
		close(s.quit)
	}
}

// serveSSE serves GET /events on the TLS listener, on the request's
// goroutine, until the client leaves or the hub closes the stream.
func (f *front) serveSSE(w http.ResponseWriter, r *http.Request) {
	_, _, rp := f.authorize(r, "sse", true, true)
	var sr sseRequest
	if rp == nil {
		sr, rp = parseSSE(r)
	}
	st := &httpStream{wake: make(chan struct{}, 1), quit: make(chan struct{})}
	st.out = delivery.NewOutbox(f.s.cfg.Delivery, delivery.Hooks{
		Wake: func() {
			select {
			case st.wake <- struct{}{}:
			default:
			}
		},
		Close:   func(_ delivery.CloseReason, detail string) { st.Close(session.CloseTryAgain, detail) },
		Metrics: f.s.cfg.Metrics.outbox(f.s.log, func() string { return r.RemoteAddr }),
	})
	st.out.SetDefaultPolicy(delivery.DefaultPolicy(auth.RoleViewer))
	defer st.out.Close()
	var cl *session.Client
	if rp == nil {
		cl, rp = f.attach(&sseConn{Conn: st}, sr, r.RemoteAddr)
	}
	if rp != nil {
		rp.serve(w, false)
		f.m.request("/events", rp.status)
		return
	}
	defer f.s.hub.Closed(cl)
	f.m.request("/events", http.StatusOK)
	f.m.opened("sse")
	defer f.m.closedConn("sse")
	f.httpStreams.Add(1)
	defer f.httpStreams.Add(-1)

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	writeTimeout := max(2*f.cfg.Heartbeat, 10*time.Second)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	var (
		msgs []*wire.Msg
		buf  []byte
	)
	flush := func() bool {
		for {
			msgs = st.out.Drain(msgs[:0], drainBytes)
			if len(msgs) == 0 {
				if cl.Catching() && f.s.hub.Pump(cl) {
					continue // the replay is paced out as the stream drains
				}
				return true
			}
			buf = buf[:0]
			for _, m := range msgs {
				buf = appendEvent(buf, m)
			}
			n := len(msgs)
			clear(msgs)
			if !write(buf) {
				return false
			}
			f.m.out("sse", n, len(buf))
		}
	}
	if !write([]byte(sseHello)) {
		return
	}
	t := time.NewTicker(f.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-st.wake:
			ok := flush()
			st.out.Observe(false, 0) // writes are synchronous: never "blocked"
			if !ok {
				return
			}
		case <-t.C:
			if !write(sseKeepAlive) {
				return
			}
		case <-st.quit:
			if st.code != session.CloseTryAgain {
				flush()
			}
			return
		case <-r.Context().Done():
			return
		}
	}
}
