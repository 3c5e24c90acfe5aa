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

// attach registers a stream's endpoint with the hub and attaches it; on
// failure it unregisters it and returns the refusal.
func (f *front) attach(ep *delivery.Endpoint, sr sseRequest) (*session.Client, *reply) {
	ep.SetTransport("sse")
	sc := &sseConn{Conn: ep}
	cl := ep.Register(auth.RoleViewer, sc)
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
	return appendDataLines(dst, body)
}

// appendData appends m as one unnamed SSE event of data lines only.
func appendData(dst []byte, m *wire.Msg) []byte { return appendDataLines(dst, m.Body()) }

func appendDataLines(dst, body []byte) []byte {
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

func (p *sseProto) farewell(wire.CloseReason, string) []byte { return nil }

func (p *sseProto) closed() { p.f.unwatch(p.w) }

// startSSE serves GET /events on the gnet path: refusals as HTTP errors,
// then the stream's head, after which the connection only writes events.
func (f *front) startSSE(c *conn, req *http.Request, w *watch, after []byte) (int, bool, error) {
	_, _, rp := f.authorize(req, "sse", true, false)
	var sr sseRequest
	if rp == nil {
		sr, rp = parseSSE(req)
	}
	if rp == nil {
		_, rp = f.attach(c.ep, sr)
	}
	if rp != nil {
		// Whatever the hub queued for the refused stream (a bridge/status)
		// must not follow the HTTP answer.
		c.ep.Discard()
		rp.close = true
		_, _ = c.gc.Write(rp.appendTo(nil, false))
		f.m.request("/events", rp.status)
		c.Close(wire.ClosePolicy, "sse refused")
		return len(after), true, nil
	}
	_, _ = c.gc.Write([]byte(sseHead + sseHello))
	f.m.request("/events", http.StatusOK)
	c.proto = &sseProto{f: f, w: w}
	w.deadline.Store(0)
	w.kind.Store(watchSSE)
	f.m.closedConn("http")
	f.m.opened("sse")
	f.s.log.Debug("sse open", "peer", c.ep.Peer(), "session", sr.session)
	return len(after), true, nil
}

// httpStream is an SSE stream served through net/http (the TLS listener):
// the net/http side of a delivery.Endpoint, drained on the handler's
// goroutine with synchronous writes.
type httpStream struct {
	ep    *delivery.Endpoint
	w     http.ResponseWriter
	rc    *http.ResponseController
	m     *Metrics
	wake  chan struct{}
	quit  chan struct{}
	limit time.Duration // write deadline
	buf   []byte        // owned by the handler goroutine
}

var _ delivery.Transport = (*httpStream)(nil)

// Wake asks the handler goroutine to flush. Any goroutine.
func (s *httpStream) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Frame is m as one SSE event. Handler goroutine only.
func (s *httpStream) Frame(m *wire.Msg) []byte { return appendEvent(nil, m) }

// Write writes the events and flushes them. Handler goroutine only.
func (s *httpStream) Write(frames [][]byte) error {
	s.buf = s.buf[:0]
	for _, f := range frames {
		s.buf = append(s.buf, f...)
	}
	if err := s.write(s.buf); err != nil {
		return err
	}
	s.m.out("sse", len(frames), len(s.buf))
	return nil
}

func (s *httpStream) write(b []byte) error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.limit))
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	return s.rc.Flush()
}

// Backlog: writes are synchronous (bounded by their deadline).
func (s *httpStream) Backlog() (int, bool) { return 0, false }

// Shut ends the stream after what is queued. Any goroutine; called once.
func (s *httpStream) Shut() { close(s.quit) }

// serveSSE serves GET /events on the TLS listener, on the request's
// goroutine, until the client leaves or the hub closes the stream.
func (f *front) serveSSE(w http.ResponseWriter, r *http.Request) {
	_, _, rp := f.authorize(r, "sse", true, true)
	var sr sseRequest
	if rp == nil {
		sr, rp = parseSSE(r)
	}
	st := &httpStream{w: w, rc: http.NewResponseController(w), m: f.s.cfg.Metrics,
		wake: make(chan struct{}, 1), quit: make(chan struct{}), limit: max(2*f.cfg.Heartbeat, 10*time.Second)}
	st.ep = delivery.NewEndpoint(&f.s.epc, st, "sse", r.RemoteAddr, f.s.cfg.Metrics.outbox(f.s.log, func() string { return r.RemoteAddr }))
	if rp == nil {
		_, rp = f.attach(st.ep, sr)
	}
	if rp != nil {
		st.ep.Release()
		rp.serve(w, false)
		f.m.request("/events", rp.status)
		return
	}
	defer st.ep.Release()
	f.m.request("/events", http.StatusOK)
	f.m.opened("sse")
	defer f.m.closedConn("sse")
	f.httpStreams.Add(1)
	defer f.httpStreams.Add(-1)

	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if st.write([]byte(sseHello)) != nil {
		return
	}
	t := time.NewTicker(f.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-st.wake:
			if st.ep.Flush() != nil {
				return
			}
		case <-t.C:
			if st.write(sseKeepAlive) != nil {
				return
			}
		case <-st.quit:
			_ = st.ep.Final()
			return
		case <-r.Context().Done():
			return
		}
	}
}
