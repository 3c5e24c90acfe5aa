package loop

import (
	"errors"
	"strconv"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// lingerer is a protocol whose close is a handshake: after its farewell the
// socket stays open until the peer answers or a deadline passes, and input
// that arrives meanwhile is only searched for the answer.
type lingerer interface {
	// linger reports, right after the farewell was written, whether the
	// socket should stay open for the peer's answer. Event loop only.
	linger(c *conn) bool
	// readClosing consumes input while the connection is closing and
	// returns gnet.Close once the handshake is complete. Event loop only.
	readClosing(c *conn) gnet.Action
}

// wsProto is a TCP connection after its WebSocket upgrade. Frames are parsed
// incrementally from what gnet buffered (the Reader keeps its place across
// reads and consumes payload bytes as they arrive, so gnet's buffer never
// holds more than a frame header or one control frame); text messages go to
// the hub; control frames are answered directly on the loop.
type wsProto struct {
	f *front
	w *watch
	r ws.Reader

	failReason string // the peer broke RFC 6455: our close carries this and failCode
	// The small fields side by side: one word, not three (an idle
	// connection's footprint).
	failCode   ws.CloseCode
	peerCode   ws.CloseCode
	peerClosed bool // the peer's close frame arrived
	sentClose  bool
	// No scratch for pongs: a peer's pings are rare, and a slice kept for
	// them was a fifth of the protocol's share of an idle connection.
}

var (
	_ protocol = (*wsProto)(nil)
	_ lingerer = (*wsProto)(nil)
)

// wsNotSentLowat bounds the bytes the kernel keeps unsent for a WebSocket
// peer (TCP_NOTSENT_LOWAT): past it a write takes nothing more and gnet
// holds the rest, which stops our writes (conn.Backlog). Without it Linux
// autotunes the send buffer of a loopback or LAN peer that stopped reading
// up to tcp_wmem's maximum (4 MiB): a thousand such peers hold gigabytes
// of kernel memory, push TCP into memory pressure that slows every other
// connection, and each takes a write per event until its buffer is full
// instead of being left to catch up from the log. Bytes in flight (the
// peer's window) are not counted, so a fast peer's throughput over a long
// path is not capped by it.
const wsNotSentLowat = 128 << 10

func newWSProto(f *front, c *conn, w *watch) *wsProto {
	// Best effort: a kernel without it (before 3.12) keeps autotuning.
	_ = unix.SetsockoptInt(c.gc.Fd(), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, wsNotSentLowat)
	p := &wsProto{f: f, w: w}
	p.r.MaxMessage = f.s.cfg.MaxMessage
	p.r.RequireMask = true
	// Frames are unmasked in gnet's buffer, which read consumes anyway: no
	// copy, and no message buffer kept on an idle connection (as a Unix
	// connection's lines, payloads are borrowed until the bytes are
	// discarded).
	p.r.InPlace = true
	w.seen.Store(f.now())
	w.deadline.Store(0)
	w.kind.Store(watchWS)
	return p
}

func (p *wsProto) name() string { return "ws" }

// frame is the message's shared WebSocket frame: encoded once, written to
// every recipient.
func (p *wsProto) frame(m *wire.Msg) []byte { return m.Frame() }

func (p *wsProto) closed() { p.f.unwatch(p.w) }

func (p *wsProto) read(c *conn, buf []byte) (int, error) {
	now := time.Now()
	p.w.seen.Store(now.UnixNano())
	used := 0
	for {
		if c.holdInput(len(buf) - used) {
			return used, nil // the rest waits in gnet's buffer; see holdInput
		}
		ev, n, err := p.r.Next(buf[used:])
		used += n
		if err != nil {
			return len(buf), p.fail(c, err)
		}
		switch ev.Kind {
		case ws.EventNone:
			return used, nil
		case ws.EventText:
			p.f.m.in("ws", len(ev.Payload))
			c.ep.Input(ev.Payload, now)
			if c.closing() {
				// What follows is left for readClosing: it may hold the
				// peer's close frame.
				return used, nil
			}
		case ws.EventBinary:
			return len(buf), p.failWith(c, ws.CloseUnsupportedData, "binary messages are not accepted; send JSON-RPC as text frames")
		case ws.EventPing:
			// Control frames go out at once, between whole queued frames.
			_, _ = c.gc.Write(ws.AppendFrame(nil, true, ws.OpPong, ev.Payload))
			if !c.open(c.gc) {
				// The write failed and gnet closed the connection on
				// the spot, releasing the input buf points into: read
				// no further.
				return len(buf), nil
			}
		case ws.EventPong:
		case ws.EventClose:
			p.peerClosed, p.peerCode = true, ev.CloseCode
			c.Close(session.CloseGoingAway, "peer closed: "+strconv.Itoa(int(ev.CloseCode)))
			return len(buf), nil
		}
	}
}

// fail turns the Reader's error into our close: the ProtocolError's code in
// the close frame, a short class for logs and metrics.
func (p *wsProto) fail(c *conn, err error) error {
	var pe *ws.ProtocolError
	if errors.As(err, &pe) {
		return p.failWith(c, pe.Code, pe.Reason)
	}
	return p.failWith(c, ws.CloseProtocolError, err.Error())
}

func (p *wsProto) failWith(c *conn, code ws.CloseCode, reason string) error {
	p.failCode, p.failReason = code, reason
	p.f.m.protocolError(uint16(code))
	p.f.s.log.Debug("websocket protocol error", "peer", c.ep.Peer(), "code", int(code), "detail", reason)
	return &closeError{code: wire.CloseProtocol, reason: "ws " + strconv.Itoa(int(code)) + " " + code.String()}
}

// wsCloseCode is the RFC 6455 status code for a close reason.
func wsCloseCode(code wire.CloseReason) ws.CloseCode { return ws.CloseCode(code.WebSocket()) }

// farewell is our close frame: the echo of the peer's, the code of its
// protocol error, or the hub's reason.
func (p *wsProto) farewell(code wire.CloseReason, reason string) []byte {
	p.sentClose = true
	switch {
	case p.peerClosed:
		return ws.AppendClose(nil, p.peerCode, "")
	case p.failCode != 0:
		return ws.AppendClose(nil, p.failCode, p.failReason)
	}
	return ws.AppendClose(nil, wsCloseCode(code), reason)
}

// linger keeps the socket open after our close frame until the peer's
// arrives (or it closes, or the close deadline passes), so a peer still
// sending does not get a reset that could destroy our close frame before it
// reads it. The write side is shut at once when nothing else is pending:
// the peer sees our close frame followed by end of stream.
func (p *wsProto) linger(c *conn) bool {
	if p.peerClosed || p.w.halfOpen.Load() {
		return false
	}
	p.w.deadline.Store(p.f.now() + int64(p.f.cfg.CloseTimeout))
	if c.gc.OutboundBuffered() == 0 {
		_ = unix.Shutdown(c.gc.Fd(), unix.SHUT_WR)
	}
	return true
}

func (p *wsProto) readClosing(c *conn) gnet.Action {
	done := false
	if n := c.gc.InboundBuffered(); n > 0 {
		buf, _ := c.gc.Peek(n)
		used := len(buf)
		if p.failCode == 0 && !p.peerClosed {
			used = 0
			for {
				ev, k, err := p.r.Next(buf[used:])
				used += k
				if err != nil {
					// The peer breaks the protocol while we close: there is
					// no answer left to wait for.
					if !p.sentClose {
						p.failCode, p.failReason = ws.CloseProtocolError, err.Error()
					}
					used, done = len(buf), true
					break
				}
				if ev.Kind == ws.EventNone {
					break
				}
				if ev.Kind == ws.EventClose {
					p.peerClosed, p.peerCode = true, ev.CloseCode
					used, done = len(buf), true
					break
				}
			}
		}
		if used > 0 { // gnet's Discard(0) drops everything buffered
			_, _ = c.gc.Discard(used)
		}
	}
	if p.sentClose && (done || p.peerClosed) {
		return gnet.Close
	}
	return gnet.None
}
