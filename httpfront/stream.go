package httpfront

import (
	"io"
	"net/http"
	"time"
)

// ACP and MCP Streamable HTTP through net/http (the TLS listener): the same
// handlers as on gnet (acp.go, mcp.go), with net/http reading the body, a
// parked initialize waiting on its handler goroutine, and each stream
// written by its handler goroutine from the stream's queue (httpSink).

// httpExchange is a net/http request to /acp or /mcp. Handler goroutine.
type httpExchange struct {
	w      http.ResponseWriter
	r      *http.Request
	initCh chan *Reply // where a parked initialize's answer arrives
	sink   *httpSink   // the stream to serve once the handler returns done
}

var _ Exchange = (*httpExchange)(nil)

func (hx *httpExchange) Peer() string { return hx.r.RemoteAddr }

func (hx *httpExchange) TLS() bool { return hx.r.TLS != nil }

func (hx *httpExchange) Park(string) func(*Reply) {
	hx.initCh = make(chan *Reply, 1)
	return func(rp *Reply) { hx.initCh <- rp } // buffered; answered once
}

func (hx *httpExchange) Sink(st *Stream) Sink {
	hx.sink = &httpSink{st: st, wake: make(chan struct{}, 1)}
	return hx.sink
}

// httpSink receives one stream on a net/http handler goroutine.
type httpSink struct {
	st   *Stream
	wake chan struct{}
}

// Open does nothing: serve writes the head once the handler has the
// stream.
func (s *httpSink) Open() {}

func (s *httpSink) Notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// serve writes the stream until it ends or the client leaves. Handler
// goroutine.
func (s *httpSink) serve(f *Front, w http.ResponseWriter, r *http.Request) {
	defer s.st.Detach()
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()
	label := s.st.Label()
	f.m.Opened(label)
	defer f.m.ClosedConn(label)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(max(2*f.cfg.Heartbeat, 10*time.Second)))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	t := time.NewTicker(f.cfg.Heartbeat)
	defer t.Stop()
	s.Notify()
	for {
		select {
		case <-s.wake:
			b, end, _ := s.st.Take(true)
			if len(b) > 0 {
				if !write(b) {
					return
				}
				s.st.Sent(len(b))
			}
			if end {
				return
			}
		case <-t.C:
			if !write(KeepAlive) {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

// serveStreamable serves /acp (but its WebSocket upgrades) and /mcp
// through net/http.
func (f *Front) serveStreamable(w http.ResponseWriter, r *http.Request) {
	hx := &httpExchange{w: w, r: r}
	var body []byte
	if r.Method == http.MethodPost {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
		if err != nil {
			Text(http.StatusRequestEntityTooLarge, "Request body exceeds 16777216 bytes or could not be read: "+err.Error()).Serve(w, false)
			f.m.Request(r.URL.Path, http.StatusRequestEntityTooLarge)
			return
		}
		body = b
	}
	var rp *Reply
	var done bool
	if r.URL.Path == "/mcp" {
		rp, done = f.ServeMCP(hx, r, body)
	} else {
		rp, done = f.ServeACP(hx, r, body)
	}
	switch {
	case done && hx.sink != nil:
		hx.sink.serve(f, w, r)
		return
	case rp == nil && hx.initCh != nil:
		select {
		case rp = <-hx.initCh:
		case <-r.Context().Done():
			return // the connection stays until DELETE or --http-idle
		}
	}
	if rp == nil {
		rp = Text(http.StatusInternalServerError, "no answer")
	}
	rp.Serve(w, false)
	f.m.Request(r.URL.Path, rp.Status)
}
