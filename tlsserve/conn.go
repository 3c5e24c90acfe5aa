package tlsserve

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"

	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/wire"
)

// writeBatch is how many bytes of frames one write to the socket carries.
const writeBatch = 256 << 10

var pingFrame = ws.AppendFrame(nil, true, ws.OpPing, nil)

// wsConn is one WebSocket connection over TLS: the gws side of a
// delivery.Endpoint. It gives the endpoint wake, frame and write (writes
// are synchronous, bounded by WriteTimeout); the endpoint does the rest.
type wsConn struct {
	s    *Server
	ws   *gws.Conn
	raw  *guardConn
	ep   *delivery.Endpoint
	peer string

	wake       chan struct{} // capacity 1: the outbox has something
	quit       chan struct{} // closed by Shut
	flushed    chan struct{} // capacity 1: the writer flushed (a held reader looks again)
	readerDone chan struct{} // closed when gws's read loop ends

	wsCode atomic.Uint32 // non-zero overrides the close frame's code (set before Close)

	// Owned by the read loop.
	deadlineAt time.Time

	// Owned by the writer.
	buf []byte
}

var _ delivery.Transport = (*wsConn)(nil)

func newWSConn(s *Server, socket *gws.Conn, raw *guardConn, peer string) *wsConn {
	c := &wsConn{s: s, ws: socket, raw: raw, peer: peer,
		wake: make(chan struct{}, 1), quit: make(chan struct{}), readerDone: make(chan struct{}), flushed: make(chan struct{}, 1)}
	c.ep = delivery.NewEndpoint(&s.epc, c, Transport, peer, outboxMetrics(s.cfg.OutboxMetrics, peer))
	c.extendReadDeadline(time.Now())
	return c
}

func outboxMetrics(f func(string) delivery.Metrics, peer string) delivery.Metrics {
	if f == nil {
		return nil
	}
	return f(peer)
}

// Wake asks the writer to flush. Any goroutine.
func (c *wsConn) Wake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Frame is the message's shared WebSocket frame: encoded once for every
// recipient.
func (c *wsConn) Frame(m *wire.Msg) []byte { return m.Frame() }

// Write writes whole frames in one TLS write. Writer only.
func (c *wsConn) Write(frames [][]byte) error {
	c.buf = c.buf[:0]
	for _, f := range frames {
		c.buf = append(c.buf, f...)
	}
	err := c.raw.writeFrames(c.buf, false)
	if err != nil {
		c.drop(err)
		return err
	}
	c.s.m.Out(Transport, len(frames), len(c.buf))
	if cap(c.buf) > 4*writeBatch {
		c.buf = nil
	}
	return nil
}

// Backlog: writes are synchronous, so the writer is never "blocked" in the
// loop's sense; a peer that stops reading fails the write at WriteTimeout.
func (c *wsConn) Backlog() (int, bool) { return 0, false }

// Shut wakes the writer to finish. Any goroutine; called once.
func (c *wsConn) Shut() { close(c.quit) }

// closeWith closes with a WebSocket code of the transport's own (a
// protocol error) rather than the reason's.
func (c *wsConn) closeWith(r wire.CloseReason, wsCode ws.CloseCode, reason string) {
	if !c.ep.Closing() {
		c.wsCode.Store(uint32(wsCode))
	}
	c.ep.Close(r, reason)
}

// writeLoop is the connection's writer goroutine.
func (c *wsConn) writeLoop() {
	t := time.NewTicker(c.s.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-c.wake:
			if c.ep.Flush() != nil {
				return
			}
			select {
			case c.flushed <- struct{}{}:
			default:
			}
		case <-t.C:
			if err := c.raw.writeFrames(pingFrame, false); err != nil {
				c.drop(err)
				return
			}
		case <-c.quit:
			c.finish()
			return
		case <-c.readerDone:
			return
		}
	}
}

// drop closes a connection whose socket failed under the writer.
func (c *wsConn) drop(err error) {
	reason := "write failed"
	if errors.Is(err, os.ErrDeadlineExceeded) {
		reason = "write timeout (peer not reading)"
	}
	c.s.log.Info("closing websocket", "peer", c.peer, "transport", Transport, "reason", reason, "err", err)
	c.s.m.Closed(Transport, "write_failed")
	_ = c.raw.Close()
}

// finish is our side of the close handshake, on the writer goroutine.
func (c *wsConn) finish() {
	if c.ep.Final() != nil {
		return
	}
	r, detail := c.ep.Reason()
	code := ws.CloseCode(c.wsCode.Load())
	if code == 0 {
		code = ws.CloseCode(r.WebSocket())
	}
	if err := c.raw.writeFrames(ws.AppendClose(nil, code, detail), true); err != nil {
		_ = c.raw.Close()
		return
	}
	// gws reads the peer's close frame, tries to echo it (the guard drops
	// the echo: ours is already out) and closes the socket, which ends the
	// read loop. A peer that never answers is cut off.
	t := time.NewTimer(c.s.cfg.CloseTimeout)
	defer t.Stop()
	select {
	case <-c.readerDone:
	case <-t.C:
	}
	_ = c.raw.Close()
}

// waitInput holds the reader (and so, through TCP, the peer's writes)
// while the connection's answers pile up past its control watermark, until
// the writer has drained them. A peer that keeps them piled up for the
// stall timeout is closed (CloseInputBacklog, 1013). It reports whether to
// go on. Read loop only.
func (c *wsConn) waitInput() bool {
	if !c.ep.InputHeld() {
		return true
	}
	limit := c.s.cfg.Delivery.WithDefaults().StallTimeout
	t := time.NewTimer(limit)
	defer t.Stop()
	for c.ep.InputHeld() {
		c.Wake()
		select {
		case <-c.flushed:
		case <-c.quit:
			return false
		case <-t.C:
			c.ep.Close(wire.CloseInputBacklog, fmt.Sprintf("input backlog: requests waited %v while the answers piled up unread; resume by cursor", limit))
			return false
		}
	}
	return true
}

// extendReadDeadline moves the read deadline to two heartbeats from now:
// a peer that sends no frame of any kind for that long fails its read. It
// skips most calls because every frame calls it. Read loop only.
func (c *wsConn) extendReadDeadline(now time.Time) {
	hb := c.s.cfg.Heartbeat
	if now.Sub(c.deadlineAt) < hb/4 {
		return
	}
	c.deadlineAt = now
	_ = c.raw.SetReadDeadline(now.Add(2 * hb))
}

// handler receives gws's read-loop events for every connection.
type handler struct{ s *Server }

const connKey = "c"

func connOf(socket *gws.Conn) *wsConn {
	v, _ := socket.Session().Load(connKey)
	c, _ := v.(*wsConn)
	return c
}

func (h *handler) OnOpen(*gws.Conn) {}

func (h *handler) OnClose(socket *gws.Conn, err error) {
	c := connOf(socket)
	if c == nil {
		return
	}
	close(c.readerDone)
	c.ep.Release()
	h.s.untrack(c)
	h.s.m.ClosedConn(Transport)
	var ce *gws.CloseError
	switch {
	case errors.As(err, &ce):
		h.s.log.Debug("websocket closed by peer", "peer", c.peer, "code", ce.Code)
	case errors.Is(err, os.ErrDeadlineExceeded):
		h.s.m.HalfOpen(Transport)
		h.s.log.Info("closing websocket", "peer", c.peer, "transport", Transport, "reason", "no frame from the peer for two heartbeats (half-open)")
	default:
		var code ws.CloseCode
		if isProtocolCode(err, &code) {
			h.s.m.ProtocolError(uint16(code))
		}
		h.s.log.Debug("websocket closed", "peer", c.peer, "err", err)
	}
}

// isProtocolCode recognises gws's protocol failures: it reports most as its
// internal status-code type (which has Uint16) and invalid UTF-8 as
// ErrTextEncoding.
func isProtocolCode(err error, code *ws.CloseCode) bool {
	if errors.Is(err, gws.ErrTextEncoding) {
		*code = ws.CloseInvalidPayload
		return true
	}
	var sc interface{ Uint16() uint16 }
	if errors.As(err, &sc) {
		*code = ws.CloseCode(sc.Uint16())
		return *code != ws.CloseNormal
	}
	return false
}

func (h *handler) OnPing(socket *gws.Conn, payload []byte) {
	if c := connOf(socket); c != nil {
		c.extendReadDeadline(time.Now())
	}
	_ = socket.WritePong(payload)
}

func (h *handler) OnPong(socket *gws.Conn, _ []byte) {
	if c := connOf(socket); c != nil {
		c.extendReadDeadline(time.Now())
	}
}

func (h *handler) OnMessage(socket *gws.Conn, msg *gws.Message) {
	defer msg.Close()
	c := connOf(socket)
	if c == nil || c.ep.Closing() {
		return
	}
	now := time.Now()
	c.extendReadDeadline(now)
	if msg.Opcode != gws.OpcodeText {
		c.closeWith(wire.ClosePolicy, ws.CloseUnsupportedData, "binary messages are not accepted; send JSON-RPC as text frames")
		return
	}
	b := msg.Bytes()
	h.s.m.In(Transport, len(b))
	if !c.waitInput() {
		return
	}
	c.ep.Input(b, now)
}

// guardConn serialises writes to the TLS connection, a whole frame or batch
// of frames per Write, and owns the close handshake: once a close frame is
// out, later writes (gws echoing the peer's close) are dropped; and when gws
// fails a connection for a protocol error it closes the socket right after
// its close frame, which the guard turns into a lingering close.
type guardConn struct {
	net.Conn
	writeTimeout time.Duration
	lingerFor    time.Duration
	// head is header lines for the 101 that gws writes (its response
	// headers are per upgrader, the connection id is per connection).
	// Owned by the upgrading request's goroutine: the 101 is the first
	// write.
	head []byte

	mu        sync.Mutex
	closeSent bool
	linger    bool // gws failed the connection: close by half-closing and draining
	closeOnce sync.Once
	closeErr  error
}

// Write is gws's path: the 101 response, pongs and its own close frames
// (always final, so a close frame starts with 0x88; an HTTP response with
// 'H').
func (g *guardConn) Write(b []byte) (int, error) {
	if g.head != nil {
		n := len(b)
		b = addHeader(b, g.head)
		g.head = nil
		if err := g.writeFrames(b, false); err != nil {
			return 0, err
		}
		return n, nil
	}
	isClose := len(b) > 0 && b[0] == 0x80|byte(ws.OpClose)
	if isClose && failureClose(b) {
		g.mu.Lock()
		g.linger = !g.closeSent
		g.mu.Unlock()
	}
	if err := g.writeFrames(b, isClose); err != nil {
		return 0, err
	}
	return len(b), nil
}

// addHeader inserts header lines into the 101 response gws wrote, before
// the blank line that ends it; anything else is left alone.
func addHeader(resp, lines []byte) []byte {
	if len(lines) == 0 || !bytes.HasPrefix(resp, []byte("HTTP/1.1 101 ")) || !bytes.HasSuffix(resp, []byte("\r\n\r\n")) {
		return resp
	}
	out := make([]byte, 0, len(resp)+len(lines))
	out = append(out, resp[:len(resp)-2]...)
	out = append(out, lines...)
	return append(out, "\r\n"...)
}

// failureClose reports whether a close frame gws wrote fails the connection
// (a protocol error, invalid data, too big) rather than answering the peer's
// close (gws answers those with 1000, or with the peer's 3000-4999 code).
func failureClose(frame []byte) bool {
	if len(frame) < 4 || frame[1]&0x7F < 2 {
		return false
	}
	switch ws.CloseCode(uint16(frame[2])<<8 | uint16(frame[3])) {
	case ws.CloseProtocolError, ws.CloseUnsupportedData, ws.CloseInvalidPayload,
		ws.ClosePolicyViolation, ws.CloseTooBig, ws.CloseMandatoryExt, ws.CloseInternalError:
		return true
	}
	return false
}

func (g *guardConn) writeFrames(b []byte, isClose bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closeSent {
		return nil
	}
	if isClose {
		g.closeSent = true
	}
	_ = g.Conn.SetWriteDeadline(time.Now().Add(g.writeTimeout))
	_, err := g.Conn.Write(b)
	return err
}

// Close closes the socket once; gws and the writer may both call it. After
// a failure close it half-closes instead and drains what the peer still
// sends until it closes or lingerFor passes: closing with unread input would
// reset the connection and could destroy the close frame before the peer
// reads it.
func (g *guardConn) Close() error {
	g.closeOnce.Do(func() {
		g.mu.Lock()
		linger := g.linger
		g.mu.Unlock()
		if linger && g.lingerFor > 0 {
			go g.lingerClose()
			return
		}
		g.closeErr = g.Conn.Close()
	})
	return g.closeErr
}

func (g *guardConn) lingerClose() {
	if tc, ok := g.Conn.(*tls.Conn); ok {
		_ = tc.SetWriteDeadline(time.Now().Add(time.Second))
		_ = tc.CloseWrite() // TLS close_notify
		if hc, ok := tc.NetConn().(interface{ CloseWrite() error }); ok {
			_ = hc.CloseWrite() // TCP FIN
		}
	}
	_ = g.Conn.SetReadDeadline(time.Now().Add(g.lingerFor))
	_, _ = io.Copy(io.Discard, g.Conn)
	_ = g.Conn.Close()
}

// slot is gws session storage holding one value: the connection.
type slot struct {
	mu sync.Mutex
	v  any
}

func (s *slot) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.v == nil {
		return 0
	}
	return 1
}

func (s *slot) Load(key string) (any, bool) {
	if key != connKey {
		return nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v, s.v != nil
}

func (s *slot) Delete(key string) {
	if key == connKey {
		s.mu.Lock()
		s.v = nil
		s.mu.Unlock()
	}
}

func (s *slot) Store(key string, v any) {
	if key == connKey {
		s.mu.Lock()
		s.v = v
		s.mu.Unlock()
	}
}

func (s *slot) Range(f func(string, any) bool) {
	s.mu.Lock()
	v := s.v
	s.mu.Unlock()
	if v != nil {
		f(connKey, v)
	}
}
