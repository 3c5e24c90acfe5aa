package httpfront

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/terminal"
)

// /terminal over TLS: net/http hands the request to the front (tlsserve
// serves only /acp with gws), which hijacks the connection and speaks RFC
// 6455 with codec/ws on two goroutines: a reader (frames to the
// attachment) and a writer (the queue to the socket, pings, our close).
// The same checks and the same terminal.Attachment as the gnet path.

func (f *Front) serveTerminalTLS(w http.ResponseWriter, r *http.Request) {
	refuse := func(rp *Reply) {
		rp.Close = closeAfter(r)
		rp.Serve(w, false)
		f.m.Request("/terminal", rp.Status)
	}
	role, sub, rp := f.Admit(r, "terminal", true, true)
	if rp != nil {
		refuse(rp)
		return
	}
	tok, _ := auth.TokenFromRequest(r)
	if rp := f.TerminalRefusal(r, r.RemoteAddr, role, tok, true); rp != nil {
		refuse(rp)
		return
	}
	if status, why := ws.CheckHandshake(r); status != 0 {
		f.m.Refused("terminal", "handshake")
		refuse(Text(status, why))
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		refuse(Text(http.StatusInternalServerError, "this connection cannot be upgraded"))
		return
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	_ = nc.SetDeadline(time.Time{})
	if _, err := nc.Write(ws.AppendHandshakeResponse(nil, r.Header.Get("Sec-WebSocket-Key"), sub)); err != nil {
		nc.Close()
		return
	}
	f.m.Request("/terminal", http.StatusSwitchingProtocols)
	f.m.Opened("terminal")
	f.streams.Add(1)
	p := &tlsTermPeer{f: f, nc: nc, wake: make(chan struct{}, 1), done: make(chan struct{})}
	att, err := f.cfg.Terminal.Attach(f.TermInfo(r, r.RemoteAddr, role, tok, true), p)
	if err != nil {
		_, _ = nc.Write(ws.AppendClose(nil, ws.CloseGoingAway, err.Error()))
		nc.Close()
		f.streams.Add(-1)
		f.m.ClosedConn("terminal")
		return
	}
	p.att = att
	// What the client sent after its handshake is already buffered.
	pre := make([]byte, brw.Reader.Buffered())
	_, _ = brw.Reader.Read(pre)
	go p.writeLoop()
	p.readLoop(pre)
}

// tlsTermPeer is a hijacked TLS connection attached to a terminal.
type tlsTermPeer struct {
	f   *Front
	nc  net.Conn
	att *terminal.Attachment

	mu     sync.Mutex
	q      []tlsFrame
	code   ws.CloseCode // set once closing
	reason string
	closed bool

	queued atomic.Int64
	wake   chan struct{}
	done   chan struct{} // closed by the writer when it stops
}

var _ terminal.Peer = (*tlsTermPeer)(nil)

func (p *tlsTermPeer) enqueue(op ws.Opcode, b []byte) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.q = append(p.q, tlsFrame{op, b})
	p.mu.Unlock()
	p.queued.Add(int64(len(b)))
	p.poke()
}

func (p *tlsTermPeer) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *tlsTermPeer) Send(b []byte)     { p.enqueue(ws.OpBinary, b) }
func (p *tlsTermPeer) SendText(b []byte) { p.enqueue(ws.OpText, b) }
func (p *tlsTermPeer) Backlog() int      { return int(p.queued.Load()) }

// Close implements terminal.Peer: the terminal ended or was taken over.
func (p *tlsTermPeer) Close(reason string) { p.closeWith(ws.CloseGoingAway, reason) }

func (p *tlsTermPeer) closeWith(code ws.CloseCode, reason string) {
	p.mu.Lock()
	if !p.closed {
		p.closed, p.code, p.reason = true, code, reason
	}
	p.mu.Unlock()
	p.poke()
}

// writeLoop writes queued frames (a blocking write: only this goroutine
// waits on a slow browser), pings every heartbeat, and ends the
// connection with a close frame once Close was called.
func (p *tlsTermPeer) writeLoop() {
	defer close(p.done)
	beat := time.NewTicker(p.f.cfg.Heartbeat)
	defer beat.Stop()
	var buf []byte
	for {
		select {
		case <-p.wake:
		case <-beat.C:
			_ = p.nc.SetWriteDeadline(time.Now().Add(2 * p.f.cfg.Heartbeat))
			if _, err := p.nc.Write(pingFrame); err != nil {
				p.nc.Close()
				return
			}
			continue
		}
		for {
			p.mu.Lock()
			q := p.q
			p.q = nil
			closing, code, reason := p.closed, p.code, p.reason
			p.mu.Unlock()
			if len(q) == 0 && !closing {
				break
			}
			buf = buf[:0]
			n := 0
			for _, fr := range q {
				buf = ws.AppendFrame(buf, true, fr.op, fr.b)
				n += len(fr.b)
			}
			if closing && len(q) == 0 {
				if len(reason) > 120 {
					reason = reason[:120]
				}
				buf = ws.AppendClose(buf, code, reason)
			}
			_ = p.nc.SetWriteDeadline(time.Now().Add(2 * p.f.cfg.Heartbeat))
			_, err := p.nc.Write(buf)
			p.queued.Add(-int64(n))
			p.f.m.Out("terminal", len(q), n)
			if p.att != nil {
				p.att.Drained(p.Backlog())
			}
			if err != nil || (closing && len(q) == 0) {
				// Our close frame is out; the reader sees the peer's answer
				// or the deadline, then the socket closes.
				_ = p.nc.SetReadDeadline(time.Now().Add(p.f.cfg.CloseTimeout))
				return
			}
		}
	}
}

// readLoop parses frames until the connection ends, then detaches.
func (p *tlsTermPeer) readLoop(pre []byte) {
	defer func() {
		p.closeWith(ws.CloseGoingAway, "connection closed")
		<-p.done
		p.nc.Close()
		p.att.Detach()
		p.f.streams.Add(-1)
		p.f.m.ClosedConn("terminal")
	}()
	var rd ws.Reader
	rd.MaxMessage = TermMaxMessage
	rd.RequireMask = true
	buf := append(make([]byte, 0, 32<<10), pre...)
	for {
		used := 0
		for {
			ev, n, err := rd.Next(buf[used:])
			used += n
			if err != nil {
				var pe *ws.ProtocolError
				if errors.As(err, &pe) {
					p.f.m.ProtocolError(uint16(pe.Code))
				}
				code := ws.CloseProtocolError
				if pe != nil {
					code = pe.Code
				}
				p.closeWith(code, err.Error())
				return
			}
			if ev.Kind == ws.EventNone {
				break
			}
			switch ev.Kind {
			case ws.EventBinary:
				p.f.m.In("terminal", len(ev.Payload))
				if errors.Is(p.att.Input(ev.Payload), terminal.ErrInputFull) {
					p.closeWith(ws.ClosePolicyViolation, terminal.ErrInputFull.Error())
					return
				}
			case ws.EventText:
				var m Resize
				if json.Unmarshal(ev.Payload, &m) != nil || m.Type != "resize" {
					p.closeWith(ws.CloseUnsupportedData, `text messages are {"type":"resize","cols":C,"rows":R}`)
					return
				}
				if err := p.att.Resize(m.Cols, m.Rows); err != nil {
					p.closeWith(ws.ClosePolicyViolation, err.Error())
					return
				}
			case ws.EventPing:
				p.enqueue(ws.OpPong, append([]byte(nil), ev.Payload...))
			case ws.EventClose:
				p.closeWith(ev.CloseCode, "")
				return
			}
		}
		buf = buf[:copy(buf, buf[used:])]
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		p.mu.Lock()
		closing := p.closed
		p.mu.Unlock()
		if !closing {
			_ = p.nc.SetReadDeadline(time.Now().Add(2 * p.f.cfg.Heartbeat))
		}
		n, err := p.nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return
		}
	}
}

// tlsFrame is one queued message to a TLS terminal peer.
type tlsFrame struct {
	op ws.Opcode
	b  []byte
}

var pingFrame = ws.AppendFrame(nil, true, ws.OpPing, nil)

// TermMaxMessage bounds one message from the browser (a paste).
const TermMaxMessage = 1 << 20

// Resize is the one text message the browser sends a terminal.
type Resize struct {
	Type string `json:"type"`
	Cols int    `json:"cols"`
	Rows int    `json:"rows"`
}

// TerminalRefusal is the HTTP answer to a /terminal request that may not
// attach, or nil. Any goroutine.
func (f *Front) TerminalRefusal(r *http.Request, peer string, role auth.Role, tok string, tls bool) *Reply {
	if f.cfg.Terminal == nil {
		return Text(http.StatusNotFound, "the terminal is off: start the daemon with --terminal CMD (e.g. --terminal /bin/bash) to enable GET /terminal")
	}
	err := f.cfg.Terminal.Check(f.TermInfo(r, peer, role, tok, tls))
	switch {
	case errors.Is(err, terminal.ErrForbidden):
		return Text(http.StatusForbidden, "the terminal is for client tokens (operator tokens may watch it); this token's role is "+role.String())
	case errors.Is(err, terminal.ErrNothingToWatch):
		return Text(http.StatusNotFound, "no terminal is running to watch: a client token opens one")
	case err != nil:
		return Text(http.StatusInternalServerError, err.Error())
	}
	return nil
}

// TermInfo is what the terminal manager is told of a /terminal request.
func (f *Front) TermInfo(r *http.Request, peer string, role auth.Role, tok string, tls bool) terminal.Info {
	transport := "ws"
	if tls {
		transport = "wss"
	}
	return terminal.Info{Role: role, Token: tok, Peer: peer, Transport: transport, Watch: r.URL.Query().Get("watch")}
}
