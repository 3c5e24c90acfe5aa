package loop

import (
	"net/http"

	"github.com/agentbridge/agentbridge/httpfront"
	"github.com/agentbridge/agentbridge/wire"
)

// SSE on gnet: GET /events?session=ID is admitted and attached by the
// front (httpfront.AttachSSE); the connection then only writes events,
// framed by httpfront.AppendEvent.

const sseHead = "HTTP/1.1 200 OK\r\n" +
	"Content-Type: text/event-stream; charset=utf-8\r\n" +
	"Cache-Control: no-store\r\n" +
	"X-Accel-Buffering: no\r\n" +
	"Connection: close\r\n\r\n"

// sseProto is a TCP connection streaming events; it reads nothing more.
type sseProto struct {
	f *front
	w *watch
}

func (p *sseProto) name() string { return "sse" }

func (p *sseProto) read(_ *conn, buf []byte) (int, error) { return len(buf), nil }

func (p *sseProto) frame(m *wire.Msg) []byte { return httpfront.Event(m) }

func (p *sseProto) farewell(wire.CloseReason, string) []byte { return nil }

func (p *sseProto) closed() { p.f.unwatch(p.w) }

// startSSE serves GET /events on the gnet path: refusals as HTTP errors,
// then the stream's head, after which the connection only writes events.
func (f *front) startSSE(c *conn, req *http.Request, w *watch, after []byte) (int, bool, error) {
	sid, rp := f.hf.AttachSSE(req, c.ep, false)
	if rp != nil {
		// Whatever the hub queued for the refused stream (a bridge/status)
		// must not follow the HTTP answer.
		c.ep.Discard()
		rp.Close = true
		_, _ = c.gc.Write(rp.AppendTo(nil, false))
		f.m.request("/events", rp.Status)
		c.Close(wire.ClosePolicy, "sse refused")
		return len(after), true, nil
	}
	_, _ = c.gc.Write([]byte(sseHead + httpfront.SSEHello))
	f.m.request("/events", http.StatusOK)
	c.proto = &sseProto{f: f, w: w}
	w.deadline.Store(0)
	w.kind.Store(watchSSE)
	f.m.closedConn("http")
	f.m.opened("sse")
	f.s.log.Debug("sse open", "peer", c.ep.Peer(), "session", sid)
	return len(after), true, nil
}
