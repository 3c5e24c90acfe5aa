package loop

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/agentbridge/agentbridge/breaker"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/wire"
)

// protocol is what a connection speaks; it parses input and frames output.
// Every method runs on the connection's event loop.
type protocol interface {
	// read consumes complete messages from buf (borrowed) and returns how
	// many bytes to discard. A *closeError closes the connection once what
	// is queued has been written.
	read(c *conn, buf []byte) (int, error)
	// frame returns the bytes that carry m on this connection.
	frame(m *wire.Msg) []byte
	// farewell returns the bytes to write just before closing (a WebSocket
	// close frame), or nil.
	farewell(code wire.CloseReason, reason string) []byte
	// name is the transport label for logs and metrics.
	name() string
}

// closeError asks for the connection to be closed with a reason.
type closeError struct {
	code   wire.CloseReason
	reason string
}

func (e *closeError) Error() string { return e.reason }

// closeFlushDeadline bounds how long a close waits for gnet to hand what it
// holds to a peer that is still reading, so the close falls on a message
// boundary; a peer that reads nothing for that long gets cut wherever the
// kernel's buffer ends.
const closeFlushDeadline = 2 * time.Second

// conn is one client connection: the gnet side of a delivery.Endpoint. It
// gives the endpoint wake, frame and write; the endpoint does the rest.
type conn struct {
	srv   *Server
	gc    gnet.Conn
	ep    *delivery.Endpoint
	proto protocol

	// Owned by the event loop.
	closeBy int64 // UnixNano: a close waiting for gnet's buffer to drain; 0 when none
	lastOut int   // what gnet held for the peer at the previous Backlog
	held    bool  // the reader stopped handing input over: answers pile up (holdInput)
	toGnet  bool  // closing: everything goes through gnet's buffer
	// reading is readIdle, or readBusy while consume hands input over: a
	// Wake then only marks it readWoken, since the drain that follows
	// consume writes what was queued (an answer the hub gives in the
	// callback that read its request: bridge/hello on every connection)
	// without a gnet task and an eventfd write. Any goroutine.
	reading atomic.Uint32
	// Re-wake backoff while the peer refuses what is written; see
	// Server.rewake.
	wakeAt   int64        // UnixNano; guarded by srv.mu
	wakeStep atomic.Int64 // nanoseconds; 0 after progress
}

var (
	_ delivery.Transport     = (*conn)(nil)
	_ delivery.PartialWriter = (*conn)(nil)
)

// Wake asks the loop to drain soon (or, while the agent's output is routed
// on this loop, right after it: agentconn.go; while consume reads this
// connection's input, right after that). Any goroutine.
func (c *conn) Wake() {
	if c.reading.CompareAndSwap(readBusy, readWoken) || c.reading.Load() == readWoken {
		return
	}
	c.srv.wake(c)
}

// conn.reading's states.
const (
	readIdle  = iota
	readBusy  // consume is handing input over
	readWoken // and a Wake came meanwhile
)

// Frame is the protocol's framing of m. Event loop only.
func (c *conn) Frame(m *wire.Msg) []byte { return c.proto.frame(m) }

var _ delivery.Copier = (*conn)(nil)

// CopiesFrames: WriteSome and Write are done with the frames when they
// return (writev, then gnet's buffer copies any tail), so the endpoint
// recycles the single-use answers it wrote (delivery.Copier).
func (c *conn) CopiesFrames() {}

// WriteSome writes whole frames with one writev, straight to the socket
// while gnet holds nothing for the peer, and reports how many the kernel
// took. Only the tail of a frame it took in part goes to gnet's buffer (a
// copy), so the frame is finished in order and gnet writes it when the
// socket has room; the frames it refused are left to the endpoint, which
// keeps their messages, not the frames (delivery.PartialWriter), and the
// connection is re-woken later, with backoff, to write them. While gnet
// holds anything nothing is written. So a peer that stops reading costs
// gnet at most one frame's tail. A terminal's frames are scratch, and a
// closing connection writes everything through gnet. Event loop only.
func (c *conn) WriteSome(frames [][]byte) (int, error) {
	if _, term := c.proto.(*termProto); c.toGnet || term {
		c.count(frames)
		_, err := c.gc.Writev(frames)
		return len(frames), err
	}
	if c.gc.OutboundBuffered() > 0 {
		c.markBlocked()
		return 0, nil
	}
	total := 0
	for _, f := range frames {
		total += len(f)
	}
	taken, err := c.writeDirect(frames, total)
	if err != nil {
		return taken, err
	}
	c.count(frames[:taken])
	if taken < len(frames) {
		c.markBlocked()
	}
	return taken, nil
}

// Write writes frames whole and in order: what the kernel refuses goes to
// gnet's buffer (a copy). The endpoint writes through WriteSome; this is
// delivery.Transport's contract for other callers. Event loop only.
func (c *conn) Write(frames [][]byte) error {
	taken, err := c.WriteSome(frames)
	if err != nil || taken == len(frames) {
		return err
	}
	c.count(frames[taken:])
	_, err = c.gc.Writev(frames[taken:])
	return err
}

// count adds frames to the outbound metrics. Event loop only.
func (c *conn) count(frames [][]byte) {
	if len(frames) == 0 {
		return
	}
	n := 0
	for _, f := range frames {
		n += len(f)
	}
	c.srv.cfg.Metrics.out(c.proto.name(), len(frames), n)
}

// writeDirect writes frames (total bytes) to the socket and returns how
// many it took; the tail of one taken in part is handed to gnet. A write
// error closes the connection. Event loop only, while gnet holds nothing
// for the peer.
func (c *conn) writeDirect(frames [][]byte, total int) (int, error) {
	n, err := writev(c.gc.Fd(), frames)
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		_ = c.gc.Close()
		return 0, err
	}
	if n > 0 && c.wakeStep.Load() != 0 {
		c.wakeStep.Store(0) // the peer takes again: no backoff
	}
	if n >= total {
		return len(frames), nil
	}
	n = max(n, 0)
	i := 0
	for ; n >= len(frames[i]); i++ {
		n -= len(frames[i])
	}
	if n > 0 {
		// gnet copies the tail and writes it when the socket has room.
		if _, err := c.gc.Write(frames[i][n:]); err != nil {
			return i, err
		}
		i++
	}
	return i, nil
}

// toGnetAll routes every later write through gnet's buffer: a close
// writes what the endpoint holds, then its farewell after everything
// (gnet's buffer is where closeAtBoundary waits for the peer). Event loop
// only.
func (c *conn) toGnetAll() { c.toGnet = true }

// Backlog is what gnet holds for the peer: only what the kernel did not
// take, so anything held means the peer is not keeping up: nothing more is
// written, and the connection is re-woken later, with backoff, to write
// again or to notice the stall deadline. Event loop only.
func (c *conn) Backlog() (int, bool) {
	n := c.gc.OutboundBuffered()
	if n > 0 {
		if n < c.lastOut {
			// The peer is reading: come back soon, no backoff. Only a
			// peer that takes nothing is woken less and less often.
			c.wakeStep.Store(0)
		}
		c.markBlocked()
	}
	c.lastOut = n
	return n, n > 0
}

func (c *conn) markBlocked() { c.srv.markBlocked(c) }

// Shut runs finish on the loop, unless gnet closed the connection first.
// Any goroutine.
func (c *conn) Shut() {
	_ = c.gc.Wake(func(gc gnet.Conn, err error) error {
		if err != nil || !c.open(gc) {
			return nil
		}
		return c.finish()
	})
}

// open reports whether gc, handed to a Wake callback, is still c's open
// connection. gnet runs the callback with a nil error even for a
// connection it has closed meanwhile (a hang-up or a failed write is
// handled before queued tasks), and the descriptor number it closed may
// by then be another connection's or file's: writing, or shutting down,
// there would hand one peer's messages to another. gnet clears a closed
// connection's context. Event loop only.
func (c *conn) open(gc gnet.Conn) bool { return gc.Context() == any(c) }

// Close schedules the connection's close; see delivery.Endpoint.Close.
func (c *conn) Close(code wire.CloseReason, reason string) { c.ep.Close(code, reason) }

// closing reports whether the connection is being closed. Any goroutine.
func (c *conn) closing() bool { return c.ep.Closing() }

// finish runs on the loop: final drain, farewell, close.
func (c *conn) finish() error {
	c.toGnetAll()
	_ = c.ep.Final()
	if !c.open(c.gc) {
		return nil // the final flush failed and gnet closed the connection
	}
	r, detail := c.ep.Reason()
	if b := c.proto.farewell(r, detail); b != nil {
		_, _ = c.gc.Write(b)
	}
	if l, ok := c.proto.(lingerer); ok && l.linger(c) {
		return nil // the close handshake ends in readClosing or at its deadline
	}
	return c.closeAtBoundary(time.Now())
}

// closeAtBoundary closes the socket once gnet holds nothing more for the
// peer, or at closeFlushDeadline: gnet's own close writes what the kernel
// takes at once and drops the rest, which would cut a peer that is still
// reading mid-message. It reports gnet's close, or nil while it waits (the
// connection is re-woken on the server's tick). Event loop only.
func (c *conn) closeAtBoundary(now time.Time) error {
	if c.closeBy == 0 {
		c.closeBy = now.Add(closeFlushDeadline).UnixNano()
	}
	if c.gc.OutboundBuffered() == 0 || now.UnixNano() >= c.closeBy {
		return c.gc.Close()
	}
	c.srv.markBlocked(c)
	return nil
}

// holdInput reports whether the reader must stop handing messages to the
// hub: the connection's answers pile up past its control watermark, so
// its requests wait, unparsed, in gnet's input buffer until they drain
// (gnet cannot stop reading the socket). pending is how many unread bytes
// wait; past the bound (twice --max-message) the connection is closed
// (CloseInputBacklog, 1013) here, at a message boundary. Event loop only.
func (c *conn) holdInput(pending int) bool {
	if !c.ep.InputHeld() {
		c.held = false
		return false
	}
	c.held = true
	if limit := 2 * c.srv.cfg.MaxMessage; pending > limit {
		c.Close(wire.CloseInputBacklog, fmt.Sprintf("input backlog: %d bytes of requests wait while %s's answers pile up unread (limit %d); resume by cursor", pending, c.ep.Peer(), limit))
	}
	return true
}

// drain writes what is queued and paces replays; see
// delivery.Endpoint.Flush. Event loop only.
func (c *conn) drain() { _ = c.ep.Flush() }

// endpointConfig is what every connection's endpoint shares.
func (s *Server) endpointConfig() delivery.EndpointConfig {
	return delivery.EndpointConfig{
		Hub:         s.hub,
		Outbox:      s.cfg.Delivery,
		Rate:        s.cfg.Rate,
		Logger:      s.log,
		Closed:      s.cfg.Metrics.closedFor,
		RateLimited: s.cfg.Metrics.rateLimited,
	}
}

// newEndpoint makes c's endpoint.
func (s *Server) newEndpoint(c *conn, transport, peer string) {
	c.ep = delivery.NewEndpoint(&s.epc, c, transport, peer, (*connMetrics)(c))
}

// connMetrics is a connection seen as its outbox's delivery.Metrics: the
// conversion allocates nothing, where an adapter value would cost every
// idle connection one more object. Rare paths build the adapter on the
// stack.
type connMetrics conn

var _ delivery.Metrics = (*connMetrics)(nil)

func (m *connMetrics) adapter() outboxMetrics {
	return outboxMetrics{m: &m.srv.cfg.Metrics.bp, log: m.srv.log, peer: m.ep.Peer}
}

func (m *connMetrics) Lost(reason string, n uint64)      { m.adapter().Lost(reason, n) }
func (m *connMetrics) Transition(from, to breaker.State) { m.adapter().Transition(from, to) }
func (m *connMetrics) Degraded(on bool)                  { m.adapter().Degraded(on) }
func (m *connMetrics) Summary()                          { m.adapter().Summary() }
func (m *connMetrics) Gap()                              { m.adapter().Gap() }
func (m *connMetrics) Closed(r wire.CloseReason)         { m.adapter().Closed(r) }
func (m *connMetrics) Queue(items, dataBytes int)        { m.adapter().Queue(items, dataBytes) }

// Re-waking connections whose gnet buffer is over its watermark: gnet has
// no writable callback, so the server's tick wakes them. A peer that keeps
// taking nothing is woken less and less often (5ms doubling to 1s), so
// stalled connections cost next to nothing; progress resets the step.
const (
	rewakeMin = 5 * time.Millisecond
	rewakeMax = time.Second
)

// markBlocked asks for c to be woken on a later tick. Any goroutine.
func (s *Server) markBlocked(c *conn) {
	s.mu.Lock()
	if _, ok := s.blocked[c]; !ok {
		s.blocked[c] = struct{}{}
		step := c.wakeStep.Load()
		if step == 0 {
			step = int64(rewakeMin)
		}
		c.wakeAt = time.Now().UnixNano() + step
		s.wakes.push(wakeEntry{at: c.wakeAt, c: c})
	}
	s.mu.Unlock()
}

// rewake wakes the blocked connections that are due, doubling the wait of
// each one whose buffer has not shrunk since it was last woken. Called
// from the engine's tick. It looks only at the due ones (Server.wakes is
// ordered by time), so a thousand stalled connections woken once a second
// cost nothing on the ticks in between.
func (s *Server) rewake(now time.Time) {
	t := now.UnixNano()
	s.mu.Lock()
	for len(s.wakes) > 0 && s.wakes[0].at <= t {
		e := s.wakes.pop()
		if _, ok := s.blocked[e.c]; !ok || e.c.wakeAt != e.at {
			continue // closed since, or blocked again later
		}
		c := e.c
		delete(s.blocked, c)
		c.wakeStep.Store(min(max(c.wakeStep.Load(), int64(rewakeMin))*2, int64(rewakeMax)))
		_ = c.gc.Wake(nil)
	}
	s.mu.Unlock()
}

// wakeEntry is a blocked connection's due time.
type wakeEntry struct {
	at int64 // UnixNano, the conn's wakeAt when it was queued
	c  *conn
}

// wakeHeap orders blocked connections by due time (a binary min-heap).
// An entry whose connection closed (it left Server.blocked) or was
// re-queued stays until popped and is skipped then: no index per
// connection. Guarded by Server.mu.
type wakeHeap []wakeEntry

func (h *wakeHeap) push(e wakeEntry) {
	*h = append(*h, e)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if q[p].at <= q[i].at {
			break
		}
		q[p], q[i] = q[i], q[p]
		i = p
	}
}

func (h *wakeHeap) pop() wakeEntry {
	q := *h
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q[last] = wakeEntry{}
	q = q[:last]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < len(q) && q[l].at < q[m].at {
			m = l
		}
		if r := l + 1; r < len(q) && q[r].at < q[m].at {
			m = r
		}
		if m == i {
			break
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
	if cap(q) > 64 && len(q) < cap(q)/4 {
		q = append(wakeHeap(nil), q...) // a burst of blocked connections is over
	}
	*h = q
	return top
}

// unixConn is a Unix-socket connection and its protocol in one allocation
// (an idle connection's footprint is what 10,000 of them cost).
type unixConn struct {
	conn
	p ndjsonProto
}

// OnOpen accepts a connection: Unix-socket peers are checked by uid and
// registered with the hub at once; TCP peers speak HTTP first.
func (s *Server) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	// gnet's Register dups the descriptor, and dup(2) drops close-on-exec:
	// a child started later (the agent after a restart, a --terminal
	// shell) would inherit the socket and keep it open after the daemon
	// closes it, so the peer would never see the close while the child
	// lives (a terminal's writer, dropped as half-open, waited on a silent
	// socket). The first callback to see the descriptor sets it again; an
	// exec between gnet's dup and this callback can still inherit it.
	unix.CloseOnExec(gc.Fd())
	if _, ok := gc.Context().(*agentConn); ok {
		return nil, gnet.None // the agent's socket (agentconn.go)
	}
	switch gc.LocalAddr().Network() {
	case "unix":
		uid, pid, err := peerCred(gc.Fd())
		if err != nil {
			s.log.Warn("unix peer refused: cannot read its credentials", "err", err)
			s.cfg.Metrics.refused("unix", "credentials")
			return refusal("cannot read peer credentials: " + err.Error()), gnet.Close
		}
		if !s.uidAllowed(uid) {
			s.log.Warn("unix peer refused: uid not allowed", "uid", uid, "pid", pid)
			s.hub.AuditAuthFailure(fmt.Sprintf("uid:%d pid:%d", uid, pid), "unix", "uid not allowed")
			s.cfg.Metrics.refused("unix", "uid")
			return refusal(fmt.Sprintf("uid %d is not allowed on this socket (the daemon runs as uid %d)", uid, s.uid)), gnet.Close
		}
		u := &unixConn{conn: conn{srv: s, gc: gc}}
		c := &u.conn
		c.proto = &u.p
		s.newEndpoint(c, "unix", unixPeer(uid, pid))
		gc.SetContext(c)
		s.nconns.Add(1)
		c.ep.Register(s.cfg.UDSRole, nil)
		s.cfg.Metrics.opened(c.proto.name())
	default:
		c := &conn{srv: s, gc: gc}
		s.newEndpoint(c, "http", tcpPeer(gc.RemoteAddr()))
		c.proto = newHTTPProto(s, c)
		gc.SetContext(c)
		s.nconns.Add(1)
		s.cfg.Metrics.opened(c.proto.name())
	}
	return nil, gnet.None
}

// OnTraffic reads what arrived, then drains the outbox. Wake calls land
// here too, with nothing to read.
func (s *Server) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		if ac, ok := gc.Context().(*agentConn); ok {
			return ac.onTraffic(gc)
		}
		return gnet.Close
	}
	// On the agent's loop, requests routed here are written to the agent
	// when this callback ends (agentconn.go), not through a Wake.
	if ac := s.agentc.Load(); ac != nil && gc.EventLoop() == ac.loop {
		ac.enter()
		defer ac.leave()
	}
	return s.clientTraffic(gc, c)
}

// clientTraffic is OnTraffic for a client connection.
func (s *Server) clientTraffic(gc gnet.Conn, c *conn) gnet.Action {
	if c.closeBy != 0 {
		// Closing once gnet's buffer has drained: input is discarded.
		_, _ = gc.Discard(gc.InboundBuffered())
		if c.closeAtBoundary(time.Now()) != nil {
			return gnet.Close
		}
		return gnet.None
	}
	if l, ok := c.proto.(lingerer); ok && c.closing() {
		// A close handshake is under way: input is only searched for the
		// peer's answer, and nothing is written but the farewell.
		return l.readClosing(c)
	}
	if n := gc.InboundBuffered(); n > 0 {
		if c.closing() {
			_, _ = gc.Discard(n)
		} else {
			c.consume()
		}
	}
	if p, ok := c.proto.(pumper); ok {
		p.pump(c) // a terminal: its own queue, no outbox
		return gnet.None
	}
	c.service()
	return gnet.None
}

// consume hands what gnet has buffered to the protocol and closes the
// connection on the protocol's error; it reports whether the input was
// taken without one. Event loop only.
func (c *conn) consume() bool {
	buf, _ := c.gc.Peek(c.gc.InboundBuffered())
	c.reading.Store(readBusy)
	used, err := c.proto.read(c, buf)
	if c.reading.Swap(readIdle) == readWoken {
		// Its callers drain next (service), unless the connection is
		// closing (its finish drains) or has become a terminal, which
		// has its own queue and drains only when woken.
		if _, term := c.proto.(pumper); term {
			c.srv.wake(c)
		}
	}
	if used > 0 && c.open(c.gc) { // gnet's Discard(0) drops everything buffered; a closed conn has nothing
		_, _ = c.gc.Discard(used)
	}
	if err == nil {
		return true
	}
	ce, ok := err.(*closeError)
	if !ok {
		ce = &closeError{code: wire.CloseInternal, reason: err.Error()}
	}
	c.Close(ce.code, ce.reason)
	return false
}

// service drains the connection, then hands the hub the input it held
// back while answers piled up, as soon as they have drained (the peer may
// have sent everything and wait for its answers: no other event would
// come). Event loop only.
func (c *conn) service() {
	if c.closing() {
		return
	}
	c.drain()
	gc := c.gc
	for range 8 {
		if !c.held || c.closing() || c.ep.InputHeld() || gc.InboundBuffered() == 0 {
			break
		}
		if !c.consume() {
			break
		}
		c.drain()
	}
}

// OnClose unregisters the connection.
func (s *Server) OnClose(gc gnet.Conn, err error) gnet.Action {
	if ac, ok := gc.Context().(*agentConn); ok {
		ac.onClose(err)
		return gnet.None
	}
	s.adm.release(addrIP(gc.RemoteAddr())) // every client connection came through acceptLoop
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	c.ep.Release()
	s.nconns.Add(-1)
	s.mu.Lock()
	delete(s.blocked, c)
	s.mu.Unlock()
	if closer, ok := c.proto.(interface{ closed() }); ok {
		closer.closed()
	}
	s.cfg.Metrics.closedConn(c.proto.name())
	_, detail := c.ep.Reason()
	s.log.Debug("connection closed", "peer", c.ep.Peer(), "transport", c.proto.name(), "err", err, "detail", detail)
	return gnet.None
}

func (s *Server) uidAllowed(uid uint32) bool {
	if uid == s.uid {
		return true
	}
	for _, u := range s.cfg.AllowUIDs {
		if u == uid {
			return true
		}
	}
	return false
}

// peerCred reads a Unix peer's uid and pid with getsockopt(SO_PEERCRED)
// into a Ucred on the stack: x/sys's GetsockoptUcred returns it on the
// heap, garbage that every accepted connection left behind.
func peerCred(fd int) (uint32, int32, error) {
	var cred unix.Ucred
	size := uint32(unix.SizeofUcred)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERCRED,
		uintptr(unsafe.Pointer(&cred)), uintptr(unsafe.Pointer(&size)), 0)
	if e != 0 {
		return 0, 0, e
	}
	return cred.Uid, cred.Pid, nil
}

func refusal(why string) []byte {
	b := jsonrpc.AppendError(nil, []byte("null"), &jsonrpc.Error{Code: jsonrpc.CodeNotAllowed, Message: why})
	return append(b, '\n')
}

// iovecs are writev's scratch: x/sys's Writev allocates one per call.
var iovecs = sync.Pool{New: func() any { s := make([]unix.Iovec, 0, 64); return &s }}

// writev is writev(2) without an allocation: frames must be at most
// IOV_MAX (the endpoint writes maxIOV at a time).
func writev(fd int, frames [][]byte) (int, error) {
	p := iovecs.Get().(*[]unix.Iovec)
	v := (*p)[:0]
	for _, f := range frames {
		if len(f) == 0 {
			continue
		}
		iov := unix.Iovec{Base: &f[0]}
		iov.SetLen(len(f))
		v = append(v, iov)
	}
	var n int
	var err error
	if len(v) > 0 {
		r, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&v[0])), uintptr(len(v)))
		n = int(r)
		if e != 0 {
			n, err = -1, e
		}
	}
	clear(v) // the pool must not keep the frames alive
	*p = v[:0]
	iovecs.Put(p)
	return n, err
}
