package loop

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/httpfront"
	"github.com/agentbridge/agentbridge/terminal"
	"github.com/agentbridge/agentbridge/wire"
)

// GET /terminal (with --terminal): a WebSocket to a PTY owned by package
// terminal. Binary frames carry bytes both ways; the browser sends
// {"type":"resize","cols":C,"rows":R} as text, and gets small JSON notices
// (hello, degraded, live, exit) as text. The connection is a wsProto for
// everything RFC 6455 (pings, close handshake, half-open detection); only
// its messages differ, and its output comes from the terminal, not an
// outbox.

// pumper is a protocol that writes its own output queue on the loop
// instead of the connection's outbox.
type pumper interface {
	// pump writes what is queued while gnet's outbound buffer allows.
	// Event loop only.
	pump(c *conn)
}

// termProto is a /terminal connection; it is the terminal.Peer of its
// attachment.
type termProto struct {
	*wsProto
	c   *conn
	att *terminal.Attachment // nil until attached

	mu     sync.Mutex // guards q, qBytes
	q      []termFrame
	qBytes int

	queued   atomic.Int64 // bytes in q
	buffered atomic.Int64 // gnet's outbound buffer at the last pump

	// Owned by the event loop.
	spare []termFrame
	iov   [][]byte
	hdrs  []byte
}

type termFrame struct {
	op ws.Opcode
	b  []byte
}

var (
	_ protocol      = (*termProto)(nil)
	_ lingerer      = (*termProto)(nil)
	_ pumper        = (*termProto)(nil)
	_ terminal.Peer = (*termProto)(nil)
)

func (p *termProto) name() string { return "terminal" }

func (p *termProto) frame(m *wire.Msg) []byte { return nil } // nothing reaches a terminal from the hub

func (p *termProto) enqueue(op ws.Opcode, b []byte) {
	p.mu.Lock()
	wake := len(p.q) == 0
	p.q = append(p.q, termFrame{op, b})
	p.qBytes += len(b)
	p.mu.Unlock()
	p.queued.Add(int64(len(b)))
	if wake {
		_ = p.c.gc.Wake(nil)
	}
}

// Send implements terminal.Peer. Any goroutine.
func (p *termProto) Send(b []byte) { p.enqueue(ws.OpBinary, b) }

// SendText implements terminal.Peer. Any goroutine.
func (p *termProto) SendText(b []byte) { p.enqueue(ws.OpText, b) }

// Backlog implements terminal.Peer: queued here plus what gnet holds.
// Any goroutine.
func (p *termProto) Backlog() int { return int(p.queued.Load() + p.buffered.Load()) }

// Close implements terminal.Peer. Any goroutine.
func (p *termProto) Close(reason string) { p.c.Close(wire.CloseGoingAway, reason) }

// pump writes the queue into gnet while its outbound buffer is under the
// high watermark, then tells the terminal how far behind the browser is.
// A connection with bytes still in gnet's buffer is re-woken by the ticker,
// so the backlog is re-measured as the socket drains; a shrinking buffer
// counts as progress, so the re-wake does not back off while the browser
// reads.
func (p *termProto) pump(c *conn) {
	high := c.srv.cfg.OutboundHigh
	for c.gc.OutboundBuffered() < high {
		p.mu.Lock()
		q := p.q
		n := p.qBytes
		p.q, p.qBytes = p.spare[:0], 0
		p.mu.Unlock()
		if len(q) == 0 {
			p.spare = q
			break
		}
		if err := c.Write(p.frames(q)); err != nil {
			return // gnet closed the connection; OnClose follows
		}
		p.queued.Add(-int64(n))
		clear(q)
		clear(p.iov)
		p.spare = q[:0]
	}
	ob := c.gc.OutboundBuffered()
	if int64(ob) < p.buffered.Swap(int64(ob)) {
		c.wakeStep.Store(0)
	}
	if ob > 0 || p.queued.Load() > 0 {
		c.srv.markBlocked(c)
	}
	if p.att != nil {
		p.att.Drained(p.Backlog())
	}
}

// frames builds the iovec for q: one header per frame, payloads shared.
func (p *termProto) frames(q []termFrame) [][]byte {
	p.hdrs = p.hdrs[:0]
	for _, f := range q {
		p.hdrs = ws.AppendFrameHeader(p.hdrs, true, f.op, len(f.b))
	}
	p.iov = p.iov[:0]
	off := 0
	for _, f := range q {
		h := ws.FrameHeaderLen(len(f.b))
		p.iov = append(p.iov, p.hdrs[off:off+h:off+h], f.b)
		off += h
	}
	return p.iov
}

// farewell flushes what is queued (an exit notice) before the close frame.
func (p *termProto) farewell(code wire.CloseReason, reason string) []byte {
	p.mu.Lock()
	q := p.q
	p.q, p.qBytes = nil, 0
	p.mu.Unlock()
	var out []byte
	for _, f := range q {
		out = ws.AppendFrame(out, true, f.op, f.b)
	}
	if len(reason) > 120 {
		reason = reason[:120] // a close frame's payload is at most 125 bytes
	}
	return append(out, p.wsProto.farewell(code, reason)...)
}

func (p *termProto) closed() {
	p.wsProto.closed()
	if p.att != nil {
		p.att.Detach()
	}
}

func (p *termProto) read(c *conn, buf []byte) (int, error) {
	now := time.Now()
	p.w.seen.Store(now.UnixNano())
	used := 0
	for {
		ev, n, err := p.r.Next(buf[used:])
		used += n
		if err != nil {
			return len(buf), p.fail(c, err)
		}
		switch ev.Kind {
		case ws.EventNone:
			return used, nil
		case ws.EventBinary:
			p.f.m.in("terminal", len(ev.Payload))
			if p.att == nil {
				continue
			}
			switch err := p.att.Input(ev.Payload); {
			case errors.Is(err, terminal.ErrInputFull):
				return len(buf), &closeError{code: wire.ClosePolicy, reason: err.Error()}
			case err != nil:
				// A watcher's keystrokes: dropped and counted (audited
				// at close), never an error the page has to handle.
			}
		case ws.EventText:
			var m httpfront.Resize
			if err := json.Unmarshal(ev.Payload, &m); err != nil || m.Type != "resize" {
				return len(buf), p.failWith(c, ws.CloseUnsupportedData, `text messages are {"type":"resize","cols":C,"rows":R}; keystrokes go in binary messages`)
			}
			if p.att != nil {
				if err := p.att.Resize(m.Cols, m.Rows); err != nil {
					return len(buf), p.failWith(c, ws.ClosePolicyViolation, err.Error())
				}
			}
		case ws.EventPing:
			_, _ = c.gc.Write(ws.AppendFrame(nil, true, ws.OpPong, ev.Payload))
		case ws.EventPong:
		case ws.EventClose:
			p.peerClosed, p.peerCode = true, ev.CloseCode
			c.Close(wire.CloseGoingAway, "peer closed: "+strconv.Itoa(int(ev.CloseCode)))
			return len(buf), nil
		}
		if c.closing() {
			return used, nil
		}
	}
}

// upgradeTerminal completes a WebSocket handshake on /terminal: Origin and
// token (403, 401), role (403; 404 when an operator has nothing to watch),
// the handshake headers (400, 426), then 101 and the PTY.
func (p *httpProto) upgradeTerminal(c *conn, req *http.Request, after []byte) (int, bool, error) {
	refuse := func(rp *httpfront.Reply) (int, bool, error) {
		rp.Close = true
		_, _ = c.gc.Write(rp.AppendTo(nil, false))
		p.f.m.request("/terminal", rp.Status)
		c.Close(wire.ClosePolicy, "terminal handshake refused")
		return 0, true, nil
	}
	role, sub, rp := p.f.hf.Admit(req, "terminal", true, false)
	if rp != nil {
		return refuse(rp)
	}
	tok, _ := auth.TokenFromRequest(req)
	if rp := p.f.hf.TerminalRefusal(req, c.ep.Peer(), role, tok, false); rp != nil {
		return refuse(rp)
	}
	if status, why := ws.CheckHandshake(req); status != 0 {
		p.f.m.refused("terminal", "handshake")
		_, _ = c.gc.Write(ws.AppendHandshakeError(nil, status, why))
		p.f.m.request("/terminal", status)
		c.Close(wire.ClosePolicy, "websocket handshake refused")
		return 0, true, nil
	}
	_, _ = c.gc.Write(ws.AppendHandshakeResponse(nil, req.Header.Get("Sec-WebSocket-Key"), sub))
	p.f.m.request("/terminal", http.StatusSwitchingProtocols)
	wp := newWSProto(p.f, c, p.w)
	wp.r.MaxMessage = httpfront.TermMaxMessage
	tp := &termProto{wsProto: wp, c: c}
	c.proto = tp
	c.ep.SetTransport("terminal")
	p.f.m.closedConn("http")
	p.f.m.opened("terminal")
	att, err := p.f.cfg.Terminal.Attach(p.f.hf.TermInfo(req, c.ep.Peer(), role, tok, false), tp)
	if err != nil {
		c.Close(wire.CloseGoingAway, err.Error())
		return 0, true, nil
	}
	tp.att = att
	if len(after) == 0 || c.closing() {
		return 0, true, nil
	}
	n, err := tp.read(c, after)
	return n, true, err
}
