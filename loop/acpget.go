package loop

import (
	"github.com/panjf2000/gnet/v2"

	"github.com/agentbridge/agentbridge/httpfront"
	"github.com/agentbridge/agentbridge/wire"
)

// ACP and MCP Streamable HTTP on gnet: the front (httpfront) decides
// everything; a request's TCP connection is its Exchange. A parked POST
// initialize stops the connection reading until its answer is written
// (resume); a GET makes the connection an acpSSEGet, fed from its stream's
// queue on the connection's loop.

// hxIO is a request to /acp or /mcp on a gnet connection, whose httpProto
// p just parsed it. Event loop only.
type hxIO struct {
	c *conn
	p *httpProto
}

var _ httpfront.Exchange = (*hxIO)(nil)

func (hx *hxIO) Peer() string { return hx.c.ep.Peer() }

func (hx *hxIO) TLS() bool { return false }

// Park stops the connection reading (pipelined requests wait) until the
// answer is written by resume. The request is complete, so the header
// deadline no longer applies: a parked initialize waits for the agent (a
// cold agent can take longer than --header-timeout to answer), and resume
// starts the idle deadline once it is answered.
func (hx *hxIO) Park(path string) func(*httpfront.Reply) {
	hx.p.parked = true
	hx.p.w.deadline.Store(0)
	hx.p.path = path
	f, c := hx.p.f, hx.c
	return func(rp *httpfront.Reply) { f.resume(c, rp) }
}

func (hx *hxIO) Sink(st *httpfront.Stream) httpfront.Sink {
	return &acpSSEGet{st: st, c: hx.c, p: hx.p}
}

// resume writes rp on a TCP connection whose request was parked, and lets
// it read its next request. Any goroutine.
func (f *front) resume(c *conn, rp *httpfront.Reply) {
	_ = c.gc.Wake(func(gc gnet.Conn, err error) error {
		if err != nil || !c.open(gc) {
			return nil
		}
		draining := f.draining.Load()
		rp.Close = rp.Close || draining
		_, _ = gc.Write(rp.AppendTo(nil, false))
		p, ok := c.proto.(*httpProto)
		if !ok {
			return nil
		}
		p.parked = false
		if rp.Close {
			f.m.request(p.path, rp.Status)
			c.Close(wire.ClosePolicy, "http: connection close")
			return nil
		}
		p.w.deadline.Store(f.now() + int64(f.cfg.IdleTimeout))
		f.m.request(p.path, rp.Status)
		// Requests pipelined behind the parked one.
		if n := gc.InboundBuffered(); n > 0 && !c.closing() {
			buf, _ := gc.Peek(n)
			used, err := p.read(c, buf)
			if used > 0 {
				_, _ = gc.Discard(used)
			}
			if err != nil {
				c.Close(wire.ClosePolicy, err.Error())
			}
		}
		return nil
	})
}

// acpSSEGet is a GET holding one stream of a connection, on a gnet TCP
// connection whose protocol it is once opened.
type acpSSEGet struct {
	st *httpfront.Stream
	c  *conn
	p  *httpProto // the connection's protocol before it
	w  *watch
}

var _ httpfront.Sink = (*acpSSEGet)(nil)

// Open writes the stream's head and makes the connection carry it. Event
// loop (the request's).
func (g *acpSSEGet) Open() {
	c, p, f := g.c, g.p, g.p.f
	_, _ = c.gc.Write([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n" +
		"X-Accel-Buffering: no\r\nConnection: close\r\n\r\n"))
	g.w = p.w
	c.proto = g
	p.w.deadline.Store(0)
	p.w.acp = g
	p.w.kind.Store(watchACP)
	f.m.closedConn("http")
	f.m.opened(g.name())
	g.Notify()
}

func (g *acpSSEGet) name() string { return g.st.Label() }

func (g *acpSSEGet) read(_ *conn, buf []byte) (int, error) { return len(buf), nil }

func (g *acpSSEGet) frame(m *wire.Msg) []byte { return httpfront.Event(m) }

func (g *acpSSEGet) farewell(wire.CloseReason, string) []byte { return nil }

func (g *acpSSEGet) closed() {
	g.p.f.unwatch(g.w)
	g.st.Detach()
}

// Notify has the GET's loop write what its stream holds. Any goroutine.
func (g *acpSSEGet) Notify() { _ = g.c.gc.Wake(g.drain) }

// drain runs on the GET's loop: it takes its stream's queue while gnet
// holds little for the peer (a slow reader leaves it queued, where it
// counts against the connection's backlog; the sweeper retries).
func (g *acpSSEGet) drain(gc gnet.Conn, err error) error {
	if err != nil || g.c.closing() {
		return nil
	}
	b, end, lost := g.st.Take(gc.OutboundBuffered() < flushWatermark)
	if lost {
		g.c.Close(wire.ClosePolicy, "stream taken over")
		return nil
	}
	if len(b) > 0 {
		_, _ = gc.Write(b)
		g.st.Sent(len(b))
	}
	if end {
		g.c.Close(wire.CloseGoingAway, "acp connection ended")
	}
	return nil
}

// flushWatermark is what gnet may hold for a GET before its stream stops
// handing it more.
const flushWatermark = 256 << 10
