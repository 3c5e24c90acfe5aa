// Package delivery owns what happens to a message between the router and a
// socket: the per-connection bounded queue (ring), the classes that decide
// what may be dropped, gap reporting for evicted events, and the degrade
// policy for slow consumers. It is transport-agnostic: the gnet loop (Unix
// socket, WebSocket, SSE) and the TLS listener both drain an Outbox and only
// choose how a message is framed.
package delivery

import (
	"sync/atomic"

	"github.com/agentbridge/agentbridge/ring"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// Hooks connect an Outbox to its transport.
type Hooks struct {
	// Wake asks the transport to drain soon; called on an empty->non-empty
	// transition from whichever goroutine pushed. Must not block.
	Wake func()
	// Overflow is called once when a control message cannot be queued; the
	// transport closes the connection (the client resumes by cursor).
	Overflow func(reason string)
}

// Outbox is one connection's outbound queue and delivery policy.
//
// Send is safe from any goroutine. Drain only from the goroutine that
// writes the connection's socket.
type Outbox struct {
	q        *ring.Queue[*wire.Msg]
	hooks    Hooks
	overflow atomic.Bool

	// Owned by the draining goroutine.
	batch []ring.Entry[*wire.Msg]
	gap   gapRun
}

type gapRun struct {
	session  string
	from, to uint64
	n        int
}

// New returns an Outbox with a queue of the given configuration.
func New(cfg ring.Config, hooks Hooks) *Outbox {
	return &Outbox{q: ring.New[*wire.Msg](cfg), hooks: hooks}
}

var _ session.Conn = (*connAdapter)(nil)

// connAdapter exists only for the compile-time check that an Outbox plus a
// Close method makes a session.Conn.
type connAdapter struct{ *Outbox }

func (connAdapter) Close(session.CloseCode, string) {}

// Send queues m. It reports false when a control message did not fit: the
// connection is then being closed through Hooks.Overflow.
func (o *Outbox) Send(m *wire.Msg, c wire.Class) bool {
	cls := ring.Data
	if c == wire.Control {
		cls = ring.Control
	}
	wasEmpty, err := o.q.Push(m, m.Size(), cls)
	if err != nil {
		if cls == ring.Control && o.overflow.CompareAndSwap(false, true) && o.hooks.Overflow != nil {
			o.hooks.Overflow("control queue over its ceiling: " + err.Error())
		}
		return cls == ring.Data
	}
	if wasEmpty && o.hooks.Wake != nil {
		o.hooks.Wake()
	}
	return true
}

// Drain appends to dst, in order, up to maxBytes of messages to write,
// replacing runs of evicted events with one bridge/gap each.
func (o *Outbox) Drain(dst []*wire.Msg, maxBytes int) []*wire.Msg {
	o.batch = o.q.PopBatch(o.batch[:0], maxBytes)
	for i := range o.batch {
		e := &o.batch[i]
		m := e.V
		if e.Evicted {
			if o.gap.n > 0 && (o.gap.session != m.SessionID || m.Seq != o.gap.to+1) {
				dst = append(dst, o.flushGap())
			}
			if o.gap.n == 0 {
				o.gap.session, o.gap.from = m.SessionID, m.Seq
			}
			o.gap.to = m.Seq
			o.gap.n++
			continue
		}
		if o.gap.n > 0 {
			dst = append(dst, o.flushGap())
		}
		dst = append(dst, m)
		e.V = nil
	}
	if o.gap.n > 0 && o.q.Len() == 0 {
		dst = append(dst, o.flushGap())
	}
	clear(o.batch)
	return dst
}

func (o *Outbox) flushGap() *wire.Msg {
	g := o.gap
	o.gap = gapRun{}
	return session.GapMsg(g.session, g.from, g.to, "slow consumer: evicted from the connection's queue")
}

// Len is the number of queued entries. Safe from any goroutine.
func (o *Outbox) Len() int { return o.q.Len() }

// Queue exposes the ring for metrics. Safe from any goroutine.
func (o *Outbox) Queue() *ring.Queue[*wire.Msg] { return o.q }

// Close releases the queue; later Sends are dropped.
func (o *Outbox) Close() { o.q.Close() }
