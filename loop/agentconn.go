package loop

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/agentbridge/agentbridge/agent"
)

// With --agent-stdio socket the agent's stdin and stdout are one end of a
// socketpair, and the daemon's end is a connection of the gnet engine like
// any client's. The agent's output is read in OnTraffic on that loop and
// routed there (the hub pushes answers into the clients' outboxes; a client
// on the same loop is then drained before the loop goes back to epoll), and
// requests are queued here, copied back to back into one buffer, and
// written by the loop with one write per wake-up. No goroutine of the agent
// package sits on the data path.
//
// Why one buffer rather than a writev of the requests as they came: when
// the agent reads slower than requests arrive, gnet keeps what the kernel
// did not take as one node per piece, and peeks every node at each
// writable event; a thousand small requests cost a thousand-entry slice per
// event (a third of the daemon's allocation under pipelined load). A copy
// of each request (a few hundred bytes) is cheaper than that.

var _ agent.Attacher = (*Server)(nil)

// agentConn is the daemon's end of one agent generation's socket.
type agentConn struct {
	s    *Server
	in   agent.Input
	gc   gnet.Conn      // set once by AttachAgent before any Write can happen
	loop gnet.EventLoop // gc's loop, set with it

	// outbound is gnet's outbound buffer for the agent after the loop last
	// looked (OutboundBuffered is only valid on the loop); Write adds it to
	// what is pending to bound the bytes waiting for the agent.
	outbound atomic.Int64

	mu sync.Mutex
	// Guarded by mu.
	pending  []byte // framed requests not yet handed to gnet, back to back
	spare    []byte // pending's other buffer: flush hands it back empty
	woken    bool   // a Wake is on its way: no need for another
	busy     bool   // the agent's loop is in a client's callback, which flushes at its end
	closed   bool   // Close or the stream ended: Write fails
	shut     bool   // CloseWrite asked: shutdown(SHUT_WR) once all is written
	shutDone bool
	ended    bool
}

// AttachAgent registers f (the daemon's end of an agent's socket) with the
// engine and returns the stream that writes to it. It waits for the
// registration, so it must not be called from a loop callback (the agent
// supervisor calls it from Start's or its restart timer's goroutine).
func (s *Server) AttachAgent(f *os.File, in agent.Input) (agent.Stream, error) {
	if err := s.StartEngine(); err != nil {
		f.Close()
		return nil, err
	}
	nc, err := net.FileConn(f) // a dup: gnet takes that one over
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	ac := &agentConn{s: s, in: in}
	ch, err := s.eng.Register(gnet.NewNetConnContext(gnet.NewContext(context.Background(), ac), nc))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("register the agent socket: %w", err)
	}
	r := <-ch
	if r.Err != nil {
		return nil, fmt.Errorf("register the agent socket: %w", r.Err)
	}
	ac.gc, ac.loop = r.Conn, r.Conn.EventLoop()
	s.agentc.Store(ac)
	return ac, nil
}

var _ agent.FrameAppender = (*agentConn)(nil)

// Write queues framed bytes for the agent (copied). Safe from any
// goroutine.
func (ac *agentConn) Write(b []byte, limit int) error {
	if err := ac.reserve(len(b), limit); err != nil {
		return err
	}
	ac.pending = append(ac.pending, b...)
	ac.queued()
	return nil
}

// AppendFrame frames a request straight into the pending buffer, its id
// spliced in on the way (agent.FrameAppender): the one copy between the
// client's bytes and the agent's socket. Safe from any goroutine.
func (ac *agentConn) AppendFrame(f agent.Framing, msg []byte, start, end int, repl []byte, limit int) error {
	// The framing adds a newline or a header of a few dozen bytes.
	if err := ac.reserve(len(msg)-(end-start)+len(repl)+32, limit); err != nil {
		return err
	}
	ac.pending = agent.AppendFrameSplice(f, ac.pending, msg, start, end, repl)
	ac.queued()
	return nil
}

// reserve takes ac.mu for appending n bytes to pending, or fails (without
// it held) when the stream is closed or the bytes waiting would pass limit.
func (ac *agentConn) reserve(n, limit int) error {
	ac.mu.Lock()
	if ac.closed || ac.shut {
		ac.mu.Unlock()
		return agent.ErrUnavailable
	}
	if len(ac.pending)+n+int(ac.outbound.Load()) > limit {
		ac.mu.Unlock()
		return agent.ErrOverloaded
	}
	return nil
}

// queued releases ac.mu after an append and wakes the agent's loop unless
// a wake is on its way or the loop flushes at the end of its callback.
func (ac *agentConn) queued() {
	wake := !ac.woken && !ac.busy
	if wake {
		ac.woken = true
	}
	ac.mu.Unlock()
	if wake {
		_ = ac.gc.Wake(nil)
	}
}

// enter marks the agent's loop as inside a client's callback: a Write
// meanwhile (from this callback's routing, or from any goroutine) needs no
// Wake, since leave flushes. Event loop only (the agent's).
func (ac *agentConn) enter() {
	ac.mu.Lock()
	ac.busy = true
	ac.mu.Unlock()
}

// leave ends the callback and writes what it (or anyone meanwhile) queued,
// so a client's request goes to the agent in the callback that read it.
// Event loop only (the agent's).
func (ac *agentConn) leave() {
	ac.mu.Lock()
	ac.busy = false
	work := !ac.closed && (len(ac.pending) > 0 || ac.shut && !ac.shutDone)
	ac.mu.Unlock()
	if work {
		ac.flush(ac.gc)
	}
}

// CloseWrite shuts the write side once everything queued is written. Safe
// from any goroutine.
func (ac *agentConn) CloseWrite() {
	ac.mu.Lock()
	ac.shut = true
	ac.mu.Unlock()
	_ = ac.gc.Wake(nil)
}

// Close drops what is queued and closes the socket; OnClose reports the
// end. Safe from any goroutine.
func (ac *agentConn) Close() {
	ac.mu.Lock()
	ac.closed, ac.pending, ac.spare = true, nil, nil
	ac.mu.Unlock()
	_ = ac.gc.Close()
}

// onTraffic reads the agent's output and writes what is queued for it.
// Event loop only.
func (ac *agentConn) onTraffic(gc gnet.Conn) gnet.Action {
	if n := gc.InboundBuffered(); n > 0 {
		buf, _ := gc.Peek(n)
		ac.s.beginAgentFeed(gc.EventLoop())
		used := ac.in.Feed(buf)
		ac.s.endAgentFeed()
		if used > 0 { // gnet's Discard(0) drops everything
			_, _ = gc.Discard(used)
		}
	}
	ac.flush(gc)
	return gnet.None
}

// While the agent's output is routed (inside Feed), a connection of the
// same loop that the hub wakes is not woken through gnet's queue (a trip
// through epoll after this callback) but drained right after Feed, in this
// callback: the answer goes out in the callback that read it.

// wake is a connection's outbox Wake hook. Safe from any goroutine.
func (s *Server) wake(c *conn) {
	if s.inAgent.Load() {
		s.amu.Lock()
		// Re-checked under amu: endAgentFeed clears it under amu before it
		// takes the list, so nothing appended here is missed.
		if s.inAgent.Load() && c.gc.EventLoop() == s.agentLoop {
			s.drainAfter = append(s.drainAfter, c)
			s.amu.Unlock()
			return
		}
		s.amu.Unlock()
	}
	_ = c.gc.Wake(nil)
}

func (s *Server) beginAgentFeed(el gnet.EventLoop) {
	s.amu.Lock()
	s.agentLoop = el
	s.inAgent.Store(true)
	s.amu.Unlock()
}

// endAgentFeed drains the connections woken during Feed. Event loop only
// (the agent's).
func (s *Server) endAgentFeed() {
	s.amu.Lock()
	s.inAgent.Store(false)
	list := s.drainAfter
	s.drainAfter = s.spareDrain[:0]
	s.amu.Unlock()
	for i, c := range list {
		c.service()
		list[i] = nil
	}
	s.amu.Lock()
	s.spareDrain = list[:0]
	s.amu.Unlock()
}

// keepBatch is the largest request buffer kept for reuse after a flush; a
// larger one (a burst, a huge request) goes back to the GC.
const keepBatch = 256 << 10

// flush hands the queued requests to gnet in one write and, once all is
// written after CloseWrite, shuts the write side. Event loop only.
func (ac *agentConn) flush(gc gnet.Conn) {
	ac.mu.Lock()
	batch := ac.pending
	if len(batch) > 0 {
		ac.pending, ac.spare = ac.spare, nil
	}
	ac.woken = false
	shut := ac.shut && !ac.shutDone
	ac.mu.Unlock()
	if len(batch) > 0 {
		// gnet copies what the kernel does not take at once, so the
		// buffer is free again when Write returns.
		if _, err := gc.Write(batch); err != nil {
			return // gnet closes the connection; OnClose follows
		}
		if cap(batch) <= keepBatch {
			ac.mu.Lock()
			if !ac.closed && ac.spare == nil {
				ac.spare = batch[:0]
			}
			ac.mu.Unlock()
		}
	}
	out := gc.OutboundBuffered()
	ac.outbound.Store(int64(out))
	if shut && out == 0 {
		ac.mu.Lock()
		ac.shutDone = true
		ac.mu.Unlock()
		// gnet has no CloseWrite: the agent reads EOF on stdin, and its
		// output is still read until it closes its end.
		_ = unix.Shutdown(gc.Fd(), unix.SHUT_WR)
	}
}

// needsTick reports whether gnet still holds bytes for the agent or a
// shutdown waits for them: OnTick wakes the loop to look again, since gnet
// says nothing when its outbound buffer drains.
func (ac *agentConn) needsTick() bool {
	if ac.outbound.Load() > 0 {
		return true
	}
	ac.mu.Lock()
	defer ac.mu.Unlock()
	return ac.shut && !ac.shutDone && !ac.closed
}

// onClose reports the end of the stream. Event loop only.
func (ac *agentConn) onClose(err error) {
	ac.mu.Lock()
	ac.closed, ac.pending, ac.spare = true, nil, nil
	first := !ac.ended
	ac.ended = true
	ac.mu.Unlock()
	ac.outbound.Store(0)
	if first {
		if err != nil && errors.Is(err, unix.ECONNRESET) {
			err = nil // the agent exited with requests unread
		}
		ac.in.Ended(err)
	}
}
