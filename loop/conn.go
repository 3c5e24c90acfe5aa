package loop

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/session"
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
	farewell(code session.CloseCode, reason string) []byte
	// name is the transport label for logs and metrics.
	name() string
}

// closeError asks for the connection to be closed with a reason.
type closeError struct {
	code   session.CloseCode
	reason string
}

func (e *closeError) Error() string { return e.reason }

// maxIOV bounds one writev (the kernel's IOV_MAX is 1024).
const maxIOV = 512

// drainBytes is how much one drain pass takes from the queue.
const drainBytes = 256 << 10

// conn is one client connection.
type conn struct {
	srv   *Server
	gc    gnet.Conn
	out   *delivery.Outbox
	cl    *session.Client // nil until the protocol registers with the hub
	proto protocol
	peer  string

	closing     atomic.Bool
	closeCode   session.CloseCode
	closeReason string

	// Owned by the event loop.
	msgs        []*wire.Msg
	iov         [][]byte
	lim         *delivery.Limiter // nil: input not limited
	policyKnown bool              // the role's default onSlow policy is applied
}

// SetOptions applies what the client chose with bridge/hello; see
// session.OptionsListener. Safe from any goroutine: the hub calls it under
// its lock, and it only stores a word.
func (c *conn) SetOptions(o session.Options) {
	c.out.SetOptions(o)
}

var (
	_ session.Conn            = (*conn)(nil)
	_ session.OptionsListener = (*conn)(nil)
)

// admit applies the input rate limit to one complete message (borrowed)
// and reports whether to route it. A refused request is answered -32004
// with its own id; a refused notification is dropped; answers to the
// agent's requests are never refused (the agent is waiting on them); a
// connection that keeps flooding is closed with ClosePolicy (WebSocket
// 1008). Event loop only.
func (c *conn) admit(msg []byte, now time.Time) bool {
	if c.lim == nil {
		return true
	}
	g := c.lim.Gate(now, msg)
	if g.Pass {
		return true
	}
	if c.cl != nil {
		// Read, though not routed: a resuming client must not resend it.
		c.srv.hub.Refused(c.cl)
	}
	if g.Flood {
		c.srv.log.Info("closing connection", "peer", c.peer, "transport", c.proto.name(), "reason", g.Reason)
		c.srv.cfg.Metrics.floodClosed()
		c.srv.cfg.Metrics.closed(c.proto.name(), "flood")
		c.Close(session.ClosePolicy, g.Reason)
		return false
	}
	if g.Reply != nil {
		c.Send(g.Reply, wire.Control)
	}
	c.srv.cfg.Metrics.rateLimited(g.Kind)
	if g.Log > 0 {
		c.srv.log.Info("rate limited: refusing input", "peer", c.peer, "transport", c.proto.name(), "refused", g.Log, "rate", c.lim.Rate().String())
	}
	return false
}

// Send queues m; see session.Conn. Safe from any goroutine.
func (c *conn) Send(m *wire.Msg, cls wire.Class) bool {
	if c.closing.Load() {
		return cls == wire.Data
	}
	return c.out.Send(m, cls)
}

// Close schedules the connection's close: what is queued is written (unless
// the queue overflowed), then the protocol's farewell, then the socket is
// closed. Safe from any goroutine.
func (c *conn) Close(code session.CloseCode, reason string) {
	if !c.closing.CompareAndSwap(false, true) {
		return
	}
	c.closeCode, c.closeReason = code, reason
	_ = c.gc.Wake(func(gc gnet.Conn, err error) error {
		if err != nil {
			return nil
		}
		return c.finish()
	})
}

// finish runs on the loop: final drain, farewell, close.
func (c *conn) finish() error {
	if c.closeCode != session.CloseTryAgain {
		c.drain(true)
	}
	if b := c.proto.farewell(c.closeCode, c.closeReason); b != nil {
		_, _ = c.gc.Write(b)
	}
	if l, ok := c.proto.(lingerer); ok && l.linger(c) {
		return nil // the close handshake ends in readClosing or at its deadline
	}
	return c.gc.Close()
}

// drain writes queued messages into gnet while its outbound buffer is under
// the high watermark; force ignores the watermark (final flush). Each
// attempt that is not a final flush is one health observation for the
// connection's breaker: blocked when gnet's buffer stopped it.
func (c *conn) drain(force bool) {
	m := c.srv.cfg.Metrics
	if !c.policyKnown && c.cl != nil {
		// The role is known once the protocol registered with the hub
		// (at once on the Unix socket, after the upgrade on TCP).
		c.policyKnown = true
		c.out.SetDefaultPolicy(delivery.DefaultPolicy(c.cl.Role()))
	}
	blocked := false
	defer func() {
		if !force {
			c.out.Observe(blocked, c.gc.OutboundBuffered())
		}
	}()
	for {
		if !force && c.gc.OutboundBuffered() >= c.srv.cfg.OutboundHigh {
			c.srv.markBlocked(c)
			blocked = true
			return
		}
		c.msgs = c.out.Drain(c.msgs[:0], drainBytes)
		if len(c.msgs) == 0 {
			// A replay being paced out continues once the queue is empty.
			if !force && c.cl != nil && c.cl.Catching() && c.srv.hub.Pump(c.cl) {
				continue
			}
			return
		}
		bytes := 0
		for start := 0; start < len(c.msgs); start += maxIOV {
			end := min(start+maxIOV, len(c.msgs))
			c.iov = c.iov[:0]
			for _, msg := range c.msgs[start:end] {
				b := c.proto.frame(msg)
				bytes += len(b)
				c.iov = append(c.iov, b)
			}
			if _, err := c.gc.Writev(c.iov); err != nil {
				clear(c.msgs)
				return // gnet closed the connection; OnClose follows
			}
		}
		m.out(c.proto.name(), len(c.msgs), bytes)
		clear(c.msgs)
		clear(c.iov)
	}
}

// OnOpen accepts a connection: Unix-socket peers are checked by uid and
// registered with the hub at once; TCP peers speak HTTP first.
func (s *Server) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	if _, ok := gc.Context().(*agentConn); ok {
		return nil, gnet.None // the agent's socket (agentconn.go)
	}
	c := &conn{srv: s, gc: gc}
	c.out = delivery.NewOutbox(s.cfg.Delivery, delivery.Hooks{
		Wake: func() { s.wake(c) },
		// Any goroutine: c.peer is set below, before the hub can Send; the
		// protocol (and its name) may change on the loop meanwhile.
		Close: func(r delivery.CloseReason, detail string) {
			s.log.Info("closing connection", "peer", c.peer, "reason", detail, "class", r.String())
			c.Close(session.CloseTryAgain, detail)
		},
		Metrics: s.cfg.Metrics.outbox(s.log, func() string { return c.peer }),
	})
	c.lim = delivery.NewLimiter(s.cfg.Rate, time.Now())
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
		c.proto = &ndjsonProto{}
		c.peer = "uid:" + strconv.FormatUint(uint64(uid), 10) + " pid:" + strconv.Itoa(int(pid))
		c.out.SetDefaultPolicy(delivery.DefaultPolicy(s.cfg.UDSRole))
		gc.SetContext(c)
		s.track(c)
		c.cl = s.hub.Open(c, session.ConnInfo{Role: s.cfg.UDSRole, Transport: "unix", Peer: c.peer})
	default:
		c.peer = gc.RemoteAddr().String()
		c.proto = newHTTPProto(s, c)
		gc.SetContext(c)
		s.track(c)
	}
	s.cfg.Metrics.opened(c.proto.name())
	return nil, gnet.None
}

func (s *Server) track(c *conn) {
	s.nconns.Add(1)
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
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
	if l, ok := c.proto.(lingerer); ok && c.closing.Load() {
		// A close handshake is under way: input is only searched for the
		// peer's answer, and nothing is written but the farewell.
		return l.readClosing(c)
	}
	if n := gc.InboundBuffered(); n > 0 {
		if c.closing.Load() {
			_, _ = gc.Discard(n)
		} else {
			buf, _ := gc.Peek(n)
			used, err := c.proto.read(c, buf)
			if used > 0 { // gnet's Discard(0) drops everything buffered
				_, _ = gc.Discard(used)
			}
			if err != nil {
				ce, ok := err.(*closeError)
				if !ok {
					ce = &closeError{code: session.CloseInternal, reason: err.Error()}
				}
				s.log.Info("closing connection", "peer", c.peer, "transport", c.proto.name(), "reason", ce.reason)
				s.cfg.Metrics.closed(c.proto.name(), ce.reason)
				c.Close(ce.code, ce.reason)
			}
		}
	}
	c.drain(false)
	return gnet.None
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
	c.closing.Store(true)
	if c.cl != nil {
		s.hub.Closed(c.cl)
	}
	c.out.Close()
	s.nconns.Add(-1)
	s.mu.Lock()
	delete(s.blocked, c)
	delete(s.conns, c)
	s.mu.Unlock()
	if closer, ok := c.proto.(interface{ closed() }); ok {
		closer.closed()
	}
	s.cfg.Metrics.closedConn(c.proto.name())
	s.log.Debug("connection closed", "peer", c.peer, "transport", c.proto.name(), "err", err, "reason", c.closeReason)
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

func peerCred(fd int) (uint32, int32, error) {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return 0, 0, err
	}
	return cred.Uid, cred.Pid, nil
}

func refusal(why string) []byte {
	b := jsonrpc.AppendError(nil, []byte("null"), &jsonrpc.Error{Code: jsonrpc.CodeNotAllowed, Message: why})
	return append(b, '\n')
}
