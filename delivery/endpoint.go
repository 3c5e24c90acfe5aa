package delivery

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// Transport is what a transport gives an Endpoint: a way to be woken, the
// framing of a message, and a write. Everything else about a connection
// (queueing, policy, admission, replay pacing, closing) is the Endpoint's.
type Transport interface {
	// Wake asks the transport's writer to call Endpoint.Flush soon. Any
	// goroutine; it must not block nor call back into the Endpoint (it may
	// run under the Outbox's locks).
	Wake()
	// Frame returns the bytes that carry m on this transport. They must
	// stay valid until the Write that takes them returns. Writer only.
	Frame(m *wire.Msg) []byte
	// Write writes frames, whole and in order. An error means the socket
	// failed; the transport closes it by itself. Writer only.
	Write(frames [][]byte) error
	// Backlog is how many written bytes the transport still holds for the
	// peer, and whether that is over its high watermark (stop draining:
	// the peer is not keeping up; the transport wakes the writer again
	// later). A transport whose writes are synchronous returns 0, false.
	// Writer only.
	Backlog() (n int, over bool)
	// Shut asks the transport to close: on its writer it then calls
	// Endpoint.Final, writes its farewell for Endpoint.Reason and closes
	// the socket. Called once, from any goroutine; it must not block.
	Shut()
}

// PartialWriter is a Transport whose writes the peer may refuse in part (a
// non-blocking socket). WriteSome writes whole frames, in order, as far as
// the peer takes them, and reports how many it took; a frame taken in part
// counts as taken (the transport finishes it, and holds its tail until
// then). It must arrange to be woken (Transport.Wake) when it refused
// any. The endpoint keeps the messages of the frames it did not take, not
// the frames, and writes them first at the next Flush; a catch-up
// connection whose peer stopped taking anything hands their events back to
// the hub with what is queued (Hub.Recede), so that what a stalled
// connection holds is a cursor per session, not a write pass of frames.
// Writer only.
type PartialWriter interface {
	WriteSome(frames [][]byte) (int, error)
}

// Copier is a Transport that is done with the frames when Write or
// WriteSome returns: it copies what the peer did not take at once (the
// event loop's connections). The endpoint then recycles the single-use
// messages it wrote (wire.Recycle: a client's answer), so that answering a
// request allocates nothing once the pool is warm. A transport that keeps
// frames after the call (an asynchronous writer) must not be a Copier.
type Copier interface {
	CopiesFrames()
}

// EndpointConfig is shared by every Endpoint of a listener; it is read,
// never written, once the first Endpoint exists.
type EndpointConfig struct {
	// Hub routes what the connection sends and feeds it.
	Hub *session.Hub
	// Outbox configures each connection's queue and slow-consumer policy.
	Outbox Config
	// Rate limits each connection's input; the zero Rate means no limit.
	Rate Rate
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Closed counts a close the bridge initiated (agentbridge_closes_total
	// {transport, reason}); nil means none. Any goroutine.
	Closed func(transport string, r wire.CloseReason)
	// RateLimited counts a refused input message by kind ("request" or
	// "notification"); nil means none. Reader only.
	RateLimited func(kind string)
}

// maxIOV bounds the frames of one Write (the kernel's IOV_MAX is 1024).
const maxIOV = 512

// flushBytes is how much one pass of Flush takes from the queue: also the
// most a transport holds for a peer that stopped reading, since no pass
// starts while it holds anything.
const flushBytes = 64 << 10

// Endpoint is one client connection (or one stream of a connection that
// multiplexes several, such as Streamable HTTP) as the hub sees it: it
// implements session.Conn. Every transport (gnet Unix socket and
// WebSocket, TLS WebSocket, SSE) owns one Endpoint per stream and feeds it
// only wake, frame and write (Transport); the Endpoint owns the Outbox
// (queue and onSlow policy), the role's default policy, input admission,
// the drain-and-pump loop that paces replay and catch-up from the session
// log, and the close reason.
//
// Send, Close, SetOptions and Closing are safe from any goroutine. Input
// and Admit belong to the goroutine that reads the connection (the
// reader); Flush, Final and Observe to the one that writes it (the writer;
// on gnet both are the connection's event loop).
//
// An Endpoint is one allocation with its Outbox and the Outbox's queue,
// and it is the Outbox's owner itself: an idle connection carries no
// closures for its hooks.
type Endpoint struct {
	cfg       *EndpointConfig
	t         Transport
	out       Outbox
	transport atomic.Pointer[string] // label for logs and metrics: "unix", "ws", "wss", "sse"
	peer      string

	cl atomic.Pointer[session.Client] // set by Register
	// why is set once, by Close (or Release): the endpoint is closing. Read
	// by the writer after Shut for the farewell.
	why atomic.Pointer[closeWhy]

	// Owned by the reader.
	lim *Limiter
}

// heldMsgs are the messages whose frames the transport refused, oldest
// first, ahead of everything queued. They live in the Outbox's lagging
// state (made on first need), since only a peer that is behind has any:
// an idle endpoint carries nothing for them.
type heldMsgs struct {
	msgs  []*wire.Msg
	bytes int // their frames' bytes
}

// held is what the transport refused, nil when nothing. Writer only.
func (e *Endpoint) held() *heldMsgs {
	if o := &e.out; o.lagging != nil && len(o.held.msgs) > 0 {
		return &o.held
	}
	return nil
}

// dropHeld forgets what the transport refused. Writer only.
func (e *Endpoint) dropHeld() {
	if o := &e.out; o.lagging != nil {
		o.held = heldMsgs{} // a stalled peer's array is not kept
	}
}

// scratch is one Flush's working memory: the messages of a pass and their
// frames. It is pooled, not kept per endpoint, so that a connection holds
// none between flushes: idle (or stalled) ones keep nothing.
type scratch struct {
	msgs   []*wire.Msg
	frames [][]byte
}

var scratches = sync.Pool{New: func() any { return new(scratch) }}

func getScratch() *scratch { return scratches.Get().(*scratch) }

// put returns sc to the pool, holding no message.
func (sc *scratch) put() {
	clear(sc.msgs)
	clear(sc.frames)
	sc.msgs, sc.frames = sc.msgs[:0], sc.frames[:0]
	scratches.Put(sc)
}

// closeWhy is why an endpoint closes. It is made by Close, the only time
// an endpoint needs it, so an open one carries one pointer, not the reason
// and its detail.
type closeWhy struct {
	reason wire.CloseReason
	detail string
}

// released is the closeWhy of an endpoint Release found open.
var released = &closeWhy{}

var (
	_ session.Conn            = (*Endpoint)(nil)
	_ session.OptionsListener = (*Endpoint)(nil)
	_ session.Waker           = (*Endpoint)(nil)
)

// NewEndpoint makes the endpoint of one connection speaking transport
// (the label of logs and metrics) with peer (its address or uid). The
// connection is not known to the hub until Register. m receives the
// outbox's counters (nil for none).
func NewEndpoint(cfg *EndpointConfig, t Transport, transport, peer string, m Metrics) *Endpoint {
	e := &Endpoint{cfg: cfg, t: t, peer: peer}
	e.transport.Store(label(transport))
	e.out.init(cfg.Outbox, e, m)
	if !cfg.Rate.Unlimited() {
		e.lim = NewLimiter(cfg.Rate, time.Now())
	}
	return e
}

// Wake asks the transport's writer to call Flush soon (session.Waker: a
// catch-up chunk read from disk off the hub's lock is queued by the next
// Flush's pump). Any goroutine.
func (e *Endpoint) Wake() { e.t.Wake() }

// The Endpoint as its Outbox's owner.
func (e *Endpoint) wake()                                      { e.t.Wake() }
func (e *Endpoint) overload(r wire.CloseReason, detail string) { e.Close(r, detail) }

// recede is the outbox's Recede hook: the peer took nothing since the
// last drain attempt, so the events held for it (queued, or refused by the
// transport) go back to the hub, which feeds them from the log once the
// peer takes again. It takes the hub's lock only when there is something
// to hand back: a stalled connection that receded already costs a
// re-wake now and then, not an exclusive lock. Writer only (Observe).
func (e *Endpoint) recede() {
	cl := e.cl.Load()
	if h := e.held(); cl == nil || (h == nil || len(h.msgs) < 2) && !e.out.hasData() {
		return
	}
	e.cfg.Hub.Recede(cl, e.takeEvents)
}

// takeEvents removes the sequenced data events the endpoint holds and
// returns the lowest seq removed per session (Hub.Recede's take). The
// queue gives its own (Outbox.TakeEvents). What the transport refused
// precedes the queue, so its events are taken only when they all are
// events and nothing at all is left queued after them: handing one back
// while a control message or a later event of its session stays would
// reorder the stream or duplicate events. The first refused message
// stays: it is what the next attempt writes, so the connection keeps
// something due (the stall deadline runs on) and learns, when the kernel
// takes it, that the peer reads again (then the pump feeds it the rest
// from the log), instead of being fed a chunk from the log and refused
// again at every re-wake. Writer only, under the hub lock.
func (e *Endpoint) takeEvents() map[string]uint64 {
	low := e.out.TakeEvents()
	h := e.held()
	if h == nil || len(h.msgs) < 2 || e.out.Len() > 0 {
		return low
	}
	for _, m := range h.msgs {
		if m.Seq == 0 || m.SessionID == "" {
			return low // a control message among them: all stay, in order
		}
	}
	if low == nil {
		low = make(map[string]uint64)
	}
	for _, m := range h.msgs[1:] {
		if cur, ok := low[m.SessionID]; !ok || m.Seq < cur {
			low[m.SessionID] = m.Seq
		}
		h.bytes -= len(e.t.Frame(m))
	}
	h.msgs = []*wire.Msg{h.msgs[0]} // the pass's array goes
	return low
}

func (e *Endpoint) log() *slog.Logger {
	if e.cfg.Logger != nil {
		return e.cfg.Logger
	}
	return slog.Default()
}

// SetTransport renames the endpoint's transport label (an HTTP connection
// that became a WebSocket or an SSE stream). Before Register; any goroutine.
func (e *Endpoint) SetTransport(name string) { e.transport.Store(label(name)) }

// labels are the transport labels the bridge uses, stored once: a label
// taken by address would otherwise be a 16-byte allocation per connection.
var labels = [...]string{"unix", "ws", "wss", "http", "https", "sse", "terminal"}

// label returns a pointer to name, shared when it is one of labels.
func label(name string) *string {
	for i := range labels {
		if labels[i] == name {
			return &labels[i]
		}
	}
	// A copy: &name itself would move the parameter to the heap on every
	// call, known labels included.
	other := name
	return &other
}

// Transport is the endpoint's transport label. Any goroutine.
func (e *Endpoint) Transport() string { return *e.transport.Load() }

// Peer is the connection's peer, as given to NewEndpoint.
func (e *Endpoint) Peer() string { return e.peer }

// Register opens the connection with the hub in role r and applies the
// role's default onSlow policy (DefaultPolicy, unless the client already
// chose one). via, when not nil, is what the hub sends to instead of the
// endpoint itself (a wrapper that must see every message first; it passes
// them on to the endpoint). Call it once, from the reader, before Input.
func (e *Endpoint) Register(r auth.Role, via session.Conn) *session.Client {
	e.out.SetDefaultPolicy(DefaultPolicy(r))
	if via == nil {
		via = e
	}
	cl := e.cfg.Hub.Open(via, session.ConnInfo{Role: r, Transport: e.Transport(), Peer: e.peer})
	e.cl.Store(cl)
	return cl
}

// Client is the hub's client of this connection, nil before Register.
func (e *Endpoint) Client() *session.Client { return e.cl.Load() }

// Outbox is the endpoint's queue, for metrics and tests.
func (e *Endpoint) Outbox() *Outbox { return &e.out }

// Send queues m; see session.Conn. Safe from any goroutine.
func (e *Endpoint) Send(m *wire.Msg, cls wire.Class) bool {
	if e.why.Load() != nil {
		return cls == wire.Data
	}
	return e.out.Send(m, cls)
}

// SetOptions applies what the client chose with bridge/hello (its onSlow
// policy); see session.OptionsListener. Safe from any goroutine.
func (e *Endpoint) SetOptions(o session.Options) { e.out.SetOptions(o) }

// Close schedules the connection's close for reason r: unless r is an
// overload (whose backlog the client replays by cursor), what is queued is
// written first, then the transport's farewell. It logs and counts the
// close once. Safe from any goroutine; only the first call counts.
func (e *Endpoint) Close(r wire.CloseReason, detail string) {
	if !e.why.CompareAndSwap(nil, &closeWhy{reason: r, detail: detail}) {
		return
	}
	switch r {
	case wire.CloseGoingAway, wire.ClosePolicy, wire.CloseIdle:
		// Ordinary ends (the peer left, a refused HTTP request, a
		// shutdown): not worth a line at info.
		e.log().Debug("closing connection", "peer", e.peer, "transport", e.Transport(), "reason", r.String(), "detail", detail)
	default:
		e.log().Info("closing connection", "peer", e.peer, "transport", e.Transport(), "reason", r.String(), "detail", detail)
	}
	if e.cfg.Closed != nil {
		e.cfg.Closed(e.Transport(), r)
	}
	e.t.Shut()
}

// Closing reports whether Close was called. Safe from any goroutine.
func (e *Endpoint) Closing() bool { return e.why.Load() != nil }

// Reason is why the connection is closing, once Closing reports true.
// Writer only (after Shut).
func (e *Endpoint) Reason() (wire.CloseReason, string) {
	w := e.why.Load()
	if w == nil {
		return 0, ""
	}
	return w.reason, w.detail
}

// InputHeld reports whether the reader should stop handing this
// connection's input to the hub for now: its answers pile up past its
// control high watermark (see Outbox.InputHeld). The reader keeps what it
// has not handed over and tries again after the next Flush. Any goroutine.
func (e *Endpoint) InputHeld() bool {
	inflight := 0
	if cl := e.cl.Load(); cl != nil {
		inflight = e.cfg.Hub.Inflight(cl)
	}
	return e.out.InputHeld(inflight)
}

// Input admits one complete message (borrowed) under the input rate limit
// and hands it to the hub. Reader only, after Register.
func (e *Endpoint) Input(msg []byte, now time.Time) {
	if e.Admit(msg, now) {
		e.cfg.Hub.Handle(e.cl.Load(), msg)
	}
}

// Admit applies the input rate limit to one complete message (borrowed)
// and reports whether to route it. A refused request is answered -32004
// with its own id; a refused notification is dropped; answers to the
// agent's requests are never refused (the agent is waiting on them); a
// connection that keeps flooding is closed (CloseFlood, 1008). Reader only.
func (e *Endpoint) Admit(msg []byte, now time.Time) bool {
	if e.lim == nil {
		return true
	}
	g := e.lim.Gate(now, msg)
	if g.Pass {
		return true
	}
	if cl := e.cl.Load(); cl != nil {
		// Read, though not routed: a resuming client must not resend it.
		e.cfg.Hub.Refused(cl)
	}
	if g.Flood {
		e.Close(wire.CloseFlood, g.Reason)
		return false
	}
	if g.Reply != nil {
		e.Send(g.Reply, wire.Control)
	}
	if e.cfg.RateLimited != nil {
		e.cfg.RateLimited(g.Kind)
	}
	if g.Log > 0 {
		e.log().Info("rate limited: refusing input", "peer", e.peer, "transport", e.Transport(), "refused", g.Log, "rate", e.lim.Rate().String())
	}
	return false
}

// Flush writes what is queued while the transport takes it: the queue,
// then the next chunk of every replay or catch-up being paced out of the
// session log (Hub.Pump) whenever the queue is empty. It stops when
// there is nothing left or the transport's backlog is over its watermark,
// and records the attempt for the consumer's health (Outbox.Observe). It
// returns the transport's write error. Writer only.
func (e *Endpoint) Flush() error {
	blocked, err := e.flush(false)
	n, _ := e.t.Backlog()
	if h := e.held(); h != nil {
		n += h.bytes
	}
	e.out.Observe(blocked, n)
	return err
}

// Final is the flush before a close: what the transport refused earlier,
// then everything queued regardless of the transport's watermark, unless
// the close is an overload (the client resumes by cursor, and its backlog
// may be what overloaded it). Replays are not pumped. Writer only.
func (e *Endpoint) Final() error {
	if r, _ := e.Reason(); r.Overload() {
		sc := getScratch()
		defer sc.put()
		_, err := e.writeHeld(sc)
		return err
	}
	_, err := e.flush(true)
	return err
}

func (e *Endpoint) flush(force bool) (blocked bool, err error) {
	sc := getScratch()
	defer sc.put()
	cl := e.cl.Load()
	for {
		if e.held() != nil {
			// What the peer refused goes first; while it still refuses,
			// nothing more is written.
			if blocked, err := e.writeHeld(sc); blocked || err != nil {
				return blocked, err
			}
		}
		if !force {
			n, over := e.t.Backlog()
			if over {
				return true, nil
			}
			if n == 0 {
				// The peer took everything it was given: it is not
				// behind, whatever the last attempt saw, so the pump
				// below fills its queue up to the watermark rather than
				// one event a pass.
				e.out.Taking()
			}
		}
		sc.msgs = e.out.Drain(sc.msgs[:0], flushBytes)
		if len(sc.msgs) == 0 {
			if !force && cl != nil && cl.Catching() && e.cfg.Hub.Pump(cl) {
				continue
			}
			return false, nil
		}
		for start := 0; start < len(sc.msgs); start += maxIOV {
			end := min(start+maxIOV, len(sc.msgs))
			taken, err := e.write(sc, sc.msgs[start:end])
			if err != nil {
				return false, err
			}
			e.recycle(sc.msgs[start : start+taken])
			if taken < end-start {
				// The peer refused the rest: keep the messages, not
				// their frames, for the next Flush (or Recede).
				e.hold(sc.msgs[start+taken:])
				return true, nil
			}
		}
		clear(sc.msgs)
	}
}

// write frames msgs and writes them; it reports how many the transport
// took (all of them unless it is a PartialWriter). Writer only.
func (e *Endpoint) write(sc *scratch, msgs []*wire.Msg) (int, error) {
	sc.frames = sc.frames[:0]
	for _, m := range msgs {
		sc.frames = append(sc.frames, e.t.Frame(m))
	}
	defer clear(sc.frames)
	if pw, ok := e.t.(PartialWriter); ok {
		return pw.WriteSome(sc.frames)
	}
	return len(msgs), e.t.Write(sc.frames)
}

// recycle hands the messages a Copier transport took back to their pools
// (only those marked wire.SingleUse go): nothing refers to them any more.
// The caller must not touch msgs' messages afterwards. Writer only.
func (e *Endpoint) recycle(msgs []*wire.Msg) {
	if _, ok := e.t.(Copier); !ok {
		return
	}
	for _, m := range msgs {
		wire.Recycle(m)
	}
}

// hold appends msgs to what the transport refused. Writer only.
func (e *Endpoint) hold(msgs []*wire.Msg) {
	e.out.lag()
	h := &e.out.held
	for _, m := range msgs {
		h.bytes += len(e.t.Frame(m))
	}
	h.msgs = append(h.msgs, msgs...)
}

// writeHeld writes what the transport refused earlier, in order, and
// reports whether it still refuses some. Writer only.
func (e *Endpoint) writeHeld(sc *scratch) (blocked bool, err error) {
	for h := e.held(); h != nil; h = e.held() {
		batch := h.msgs[:min(len(h.msgs), maxIOV)]
		taken, err := e.write(sc, batch)
		if err != nil {
			return false, err
		}
		for _, m := range batch[:taken] {
			h.bytes -= len(e.t.Frame(m))
		}
		e.recycle(batch[:taken])
		clear(batch[:taken])
		h.msgs = h.msgs[taken:]
		if len(h.msgs) == 0 {
			e.dropHeld()
		}
		if taken < len(batch) {
			return true, nil
		}
	}
	return false, nil
}

// Release unregisters the connection from the hub and frees its queue.
// Call it once the socket is closed. Any goroutine; idempotent with
// respect to the queue.
func (e *Endpoint) Release() {
	e.why.CompareAndSwap(nil, released)
	if cl := e.cl.Load(); cl != nil {
		e.cfg.Hub.Closed(cl)
	}
	e.out.Close()
}

// Discard drops what is queued without writing it (a refused stream whose
// HTTP refusal must not be followed by what the hub queued meanwhile).
// Writer only.
func (e *Endpoint) Discard() {
	e.dropHeld()
	sc := getScratch()
	defer sc.put()
	for {
		sc.msgs = e.out.Drain(sc.msgs[:0], flushBytes)
		if len(sc.msgs) == 0 {
			return
		}
		clear(sc.msgs)
	}
}
