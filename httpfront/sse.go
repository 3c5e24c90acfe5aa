package httpfront

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// SSE: GET /events?session=ID is a read-only stream of one session's data
// plane. The stream registers with the hub as a viewer and attaches with
// Hub.Attach, bridge/attach's semantics without its JSON-RPC exchange (so
// replay, ordering and gaps are the hub's, not a second implementation): Last-Event-ID or ?since=SEQ
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

func parseSSE(r *http.Request) (sseRequest, *Reply) {
	q := r.URL.Query()
	sr := sseRequest{session: q.Get("session")}
	if sr.session == "" {
		return sr, Text(http.StatusBadRequest, "GET /events needs ?session=ID (bridge/sessions lists them)")
	}
	since := r.Header.Get("Last-Event-ID")
	if since == "" {
		since = q.Get("since")
	}
	if since != "" {
		n, err := strconv.ParseUint(since, 10, 64)
		if err != nil {
			return sr, Text(http.StatusBadRequest, fmt.Sprintf("Last-Event-ID or since must be an event seq (a non-negative integer), not %q", since))
		}
		sr.since = &n
	}
	if last := q.Get("last"); last != "" {
		n, err := strconv.Atoi(last)
		if err != nil || n < 0 {
			return sr, Text(http.StatusBadRequest, fmt.Sprintf("last must be a non-negative integer, not %q", last))
		}
		if sr.since != nil {
			return sr, Text(http.StatusBadRequest, "give since (or Last-Event-ID) or last, not both")
		}
		sr.last = &n
	}
	return sr, nil
}

// AttachSSE admits a GET /events (token, Origin), parses what it asks for
// and attaches ep, registered as a viewer, to the session; on refusal ep is
// unregistered and the reply says why. It returns the session id. Any
// goroutine.
func (f *Front) AttachSSE(r *http.Request, ep *delivery.Endpoint, tls bool) (string, *Reply) {
	if _, _, rp := f.Admit(r, "sse", true, tls); rp != nil {
		return "", rp
	}
	sr, rp := parseSSE(r)
	if rp != nil {
		return "", rp
	}
	ep.SetTransport("sse")
	cl := ep.Register(auth.RoleViewer, nil)
	if err := f.hub.Attach(cl, sr.session, sr.since, sr.last); err != nil {
		f.hub.Closed(cl)
		return "", attachRefusal(err)
	}
	return sr.session, nil
}

// attachRefusal maps Hub.Attach's refusal to an HTTP one.
func attachRefusal(err error) *Reply {
	var je *jsonrpc.Error
	switch {
	case errors.Is(err, session.ErrClientClosed):
		return Text(http.StatusServiceUnavailable, "the daemon is stopping")
	case !errors.As(err, &je):
		return Text(http.StatusInternalServerError, err.Error())
	case je.Code == jsonrpc.CodeUnknownSession:
		return Text(http.StatusNotFound, je.Message)
	case je.Code == jsonrpc.CodeNotAllowed:
		return Text(http.StatusForbidden, je.Message)
	}
	return Text(http.StatusBadRequest, je.Message)
}

// SSEHello opens every stream: EventSource's reconnection delay, and a
// comment so proxies and clients see the stream start at once.
const SSEHello = "retry: 2000\n: attached\n\n"

// AppendEvent appends m as one SSE event: a logged event with its seq as
// id, a bridge notification named by its method.
func AppendEvent(dst []byte, m *wire.Msg) []byte {
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

// Event is m as one SSE event (AppendEvent), encoded once and shared by
// all its recipients. The result must not be modified. Any goroutine.
func Event(m *wire.Msg) []byte { return m.Encoded(wire.SSEEvent, encodeEvent) }

// dataEvent is m as one unnamed SSE event of data lines only (what the MCP
// SDK client reads), encoded once and shared by all its recipients.
func dataEvent(m *wire.Msg) []byte { return m.Encoded(wire.SSEData, encodeData) }

func encodeEvent(m *wire.Msg) []byte { return AppendEvent(make([]byte, 0, m.Size()+32), m) }

func encodeData(m *wire.Msg) []byte { return appendDataLines(make([]byte, 0, m.Size()+8), m.Body()) }

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

// httpStream is an SSE stream served through net/http (the TLS listener):
// the net/http side of a delivery.Endpoint, drained on the handler's
// goroutine with synchronous writes.
type httpStream struct {
	ep    *delivery.Endpoint
	w     http.ResponseWriter
	rc    *http.ResponseController
	m     Metrics
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
func (s *httpStream) Frame(m *wire.Msg) []byte { return Event(m) }

// Write writes the events and flushes them. Handler goroutine only.
func (s *httpStream) Write(frames [][]byte) error {
	s.buf = s.buf[:0]
	for _, f := range frames {
		s.buf = append(s.buf, f...)
	}
	if err := s.write(s.buf); err != nil {
		return err
	}
	s.m.Out("sse", len(frames), len(s.buf))
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
func (f *Front) serveSSE(w http.ResponseWriter, r *http.Request) {
	st := &httpStream{w: w, rc: http.NewResponseController(w), m: f.m,
		wake: make(chan struct{}, 1), quit: make(chan struct{}), limit: max(2*f.cfg.Heartbeat, 10*time.Second)}
	st.ep = delivery.NewEndpoint(&f.cfg.Endpoint, st, "sse", r.RemoteAddr, f.m.Outbox(r.RemoteAddr))
	if _, rp := f.AttachSSE(r, st.ep, true); rp != nil {
		st.ep.Release()
		rp.Serve(w, false)
		f.m.Request("/events", rp.Status)
		return
	}
	defer st.ep.Release()
	f.m.Request("/events", http.StatusOK)
	f.m.Opened("sse")
	defer f.m.ClosedConn("sse")
	f.streams.Add(1)
	defer f.streams.Add(-1)

	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if st.write([]byte(SSEHello)) != nil {
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
			if st.write(KeepAlive) != nil {
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
