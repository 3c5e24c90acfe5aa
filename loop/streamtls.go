package loop

import (
	"io"
	"net/http"
	"strings"
	"time"
)

// ACP and MCP Streamable HTTP on the TLS listener: the same handlers as on
// gnet (acphttp.go, mcphttp.go), with net/http reading the body, a parked
// initialize waiting on its handler goroutine, and each stream served by
// its handler goroutine from the stream's queue (httpSink).

// httpSink receives one stream on a net/http handler goroutine.
type httpSink struct {
	a    *acpConn
	key  string
	wake chan struct{}
}

func (s *httpSink) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// take returns what the stream holds, and whether the stream is over for
// this receiver (taken over, connection closed, or an MCP response sent).
func (s *httpSink) take() ([]byte, bool) {
	a := s.a
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.streams[s.key]
	if st == nil || st.sink != streamSink(s) {
		return nil, true
	}
	b := st.buf
	st.buf = nil
	a.queued -= len(b)
	end := a.closed
	if st.final {
		delete(a.streams, s.key)
		end = true
	}
	return b, end
}

func (s *httpSink) detach() {
	a := s.a
	a.mu.Lock()
	if st := a.streams[s.key]; st != nil && st.sink == streamSink(s) {
		st.sink = nil
		if s.key != "" && (len(st.buf) == 0 || strings.HasPrefix(s.key, "\x01")) {
			delete(a.streams, s.key)
		}
	}
	a.mu.Unlock()
	a.gets.Add(-1)
	a.active.Store(time.Now().UnixNano())
}

// serve writes the stream until it ends or the client leaves. Handler
// goroutine.
func (s *httpSink) serve(f *front, w http.ResponseWriter, r *http.Request) {
	defer s.detach()
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()
	label := "acp-sse"
	if s.a.mcp {
		label = "mcp-sse"
	}
	f.m.opened(label)
	defer f.m.closedConn(label)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(max(2*f.cfg.Heartbeat, 10*time.Second)))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	t := time.NewTicker(f.cfg.Heartbeat)
	defer t.Stop()
	s.notify()
	for {
		select {
		case <-s.wake:
			b, end := s.take()
			if len(b) > 0 {
				if !write(b) {
					return
				}
				f.m.out(label, 1, len(b))
				s.a.Wake()
			}
			if end {
				return
			}
		case <-t.C:
			if !write(sseKeepAlive) {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

// serveStreamableTLS serves /acp (but its WebSocket upgrades) and /mcp on
// the TLS listener.
func (f *front) serveStreamableTLS(w http.ResponseWriter, r *http.Request) {
	hx := &hxIO{tls: true, w: w}
	var body []byte
	if r.Method == http.MethodPost {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, acpMaxBody))
		if err != nil {
			textReply(http.StatusRequestEntityTooLarge, "Request body exceeds 16777216 bytes or could not be read: "+err.Error()).serve(w, false)
			f.m.request(r.URL.Path, http.StatusRequestEntityTooLarge)
			return
		}
		body = b
	}
	var rp *reply
	var done bool
	if r.URL.Path == "/mcp" {
		rp, done = f.serveMCP(hx, r, body)
	} else {
		rp, done = f.serveACP(hx, r, body)
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
		rp = textReply(http.StatusInternalServerError, "no answer")
	}
	rp.serve(w, false)
	f.m.request(r.URL.Path, rp.status)
}
