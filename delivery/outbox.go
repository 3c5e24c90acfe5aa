package delivery

import (
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/breaker"
	"github.com/agentbridge/agentbridge/ring"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// LostDegraded is the Metrics.Lost reason of data events a degraded
// connection was not sent; the ring's reasons (ring.Reason.String) label
// the others.
const LostDegraded = "degraded"

// Metrics receives an Outbox's counters. Every method must be safe from
// any goroutine, quick, and must not call back into the Outbox.
type Metrics interface {
	// Lost counts data events that did not reach the socket, by reason.
	Lost(reason string, n uint64)
	// Transition counts a breaker state change. It runs under the
	// breaker's lock.
	Transition(from, to breaker.State)
	// Degraded reports that the connection entered (true) or left (false)
	// degraded delivery; the two always pair up.
	Degraded(on bool)
	// Summary counts one bridge/summary and Gap one bridge/gap queued.
	Summary()
	Gap()
	// Closed counts a close the Outbox asked for: CloseControlCeiling,
	// CloseSlowConsumer or CloseStalled.
	Closed(reason wire.CloseReason)
	// Queue samples the queue's depth at a drain.
	Queue(items, dataBytes int)
}

// owner is what an Outbox calls back: its connection. An Endpoint is its
// own Outbox's owner (one interface in the Outbox, no closures per
// connection); Hooks adapts functions for an Outbox made on its own. Each
// method must not block and must not call back into the Outbox: they may
// run under its lock.
type owner interface {
	// wake is Hooks.Wake.
	wake()
	// overload is Hooks.Close.
	overload(reason wire.CloseReason, detail string)
	// recede is Hooks.Recede.
	recede()
}

// Hooks connect an Outbox made by NewOutbox to its transport. Each must not
// block and must not call back into the Outbox: they may run under its
// lock.
type Hooks struct {
	// Wake asks the transport to drain soon; called on an empty->non-empty
	// transition from whichever goroutine pushed, and when queued gaps or
	// summaries are waiting for the drainer.
	Wake func()
	// Close is called once when the connection must be closed for an
	// overload (WebSocket 1013); the client resumes by cursor.
	Close func(reason wire.CloseReason, detail string)
	// Metrics receives counters; nil means none.
	Metrics Metrics
	// Recede is called, from the drainer, when a catch-up connection's
	// peer took nothing since the last drain attempt while events are
	// queued: the endpoint hands them back to the hub (Hub.Recede with
	// TakeEvents), which feeds them from the log later. nil means never.
	Recede func()
}

func (h *Hooks) wake() {
	if h.Wake != nil {
		h.Wake()
	}
}

func (h *Hooks) overload(r wire.CloseReason, detail string) {
	if h.Close != nil {
		h.Close(r, detail)
	}
}

func (h *Hooks) recede() {
	if h.Recede != nil {
		h.Recede()
	}
}

// Outbox is one connection's outbound queue and delivery policy.
//
// Send, SetPolicy, SetDefaultPolicy, Degraded, State, Len, Level and Close
// are safe from any goroutine. Drain and Observe only from the goroutine
// that writes the connection's socket (the drainer).
//
// An Outbox is usually part of its Endpoint's allocation (and its queue of
// the Outbox's): an idle connection is a few objects, not one per layer.
type Outbox struct {
	cfg *outboxConfig // immutable, shared by every outbox made from the same Config
	q   ring.Queue[slot]
	own owner
	m   Metrics

	policy atomic.Uint32 // Policy | explicitPolicy
	flags  atomic.Uint32 // the flag bits below (dead, slow, degraded, behind, stuck): one word, not five
	closed bool          // guarded by mu
	// Owned by the drainer. Its scratch for the queue's entries is not
	// kept between drains (batches): an idle connection holds none.
	drained bool // Drain handed out messages since the last Observe

	// What only a connection that lost events or was degraded needs; nil
	// until then (strain).
	st atomic.Pointer[strained]

	mu sync.Mutex // lock order: mu, then the ring's lock
	// The drainer's bookkeeping of a consumer that fell behind, nil until
	// the first need (lag): embedded so its fields read as the
	// Outbox's, every use is where it is known to exist or checks for nil.
	*lagging
}

// lagging is what the drainer keeps about a connection that fell behind:
// the gap run being collected, the stall and breaker observations, the
// losses already reported, the messages its transport refused. Most connections never need it, and 10,000
// idle ones should not carry it (184 bytes each), so it is made on the
// first eviction, blocked attempt, unhealthy observation or loss.
type lagging struct {
	gap          gapRun    // the run of tombstones being collected
	stuckSince   time.Time // blocked without progress since; zero while not blocked
	lastBuffered int       // the transport's buffer at the previous blocked attempt
	unhealthy    int       // unhealthy observations since the last healthy one
	why          string    // what the last unhealthy observation saw, for the close reason
	reported     [ring.NumReasons]uint64
	held         heldMsgs // what the transport refused (Endpoint.hold); the endpoint is the drainer
}

// The Outbox's flags, each read and written atomically (flag).
const (
	flagDead       uint32 = 1 << iota // a close was requested: queue nothing more
	flagSlow                          // degraded or gaps pending: Send takes mu
	flagDegraded                      // written under mu; read anywhere
	flagBehind                        // the transport held bytes at the last drain attempt (written by the drainer)
	flagStuck                         // ... and its peer had taken nothing since the attempt before (written by the drainer)
	flagPushedOver                    // a push observed the queue over its high watermark since the last healthy drain (pushedOver)
)

// flag is one bit of a flags word, used as an atomic.Bool would be.
type flag struct {
	w *atomic.Uint32
	m uint32
}

func (f flag) Load() bool { return f.w.Load()&f.m != 0 }

func (f flag) Store(on bool) {
	if on {
		f.w.Or(f.m)
	} else {
		f.w.And(^f.m)
	}
}

func (f flag) CompareAndSwap(old, new bool) bool {
	for {
		v := f.w.Load()
		if (v&f.m != 0) != old {
			return false
		}
		n := v &^ f.m
		if new {
			n |= f.m
		}
		if f.w.CompareAndSwap(v, n) {
			return true
		}
	}
}

func (o *Outbox) dead() flag     { return flag{&o.flags, flagDead} }
func (o *Outbox) slow() flag     { return flag{&o.flags, flagSlow} }
func (o *Outbox) degraded() flag { return flag{&o.flags, flagDegraded} }
func (o *Outbox) behind() flag   { return flag{&o.flags, flagBehind} }
func (o *Outbox) stuck() flag    { return flag{&o.flags, flagStuck} }
func (o *Outbox) pushed() flag   { return flag{&o.flags, flagPushedOver} }

// strained is what only a connection that lost events or was degraded
// needs: its breaker, the events it was not sent, its pending gaps and
// summaries and their timer. Most connections never need it, and 10,000
// idle ones should not carry it (four words each), so it is made on first need and kept until the
// connection closes. Each field keeps its own guard.
type strained struct {
	br      atomic.Pointer[breaker.Breaker] // written by the drainer
	skipped atomic.Uint64                   // events not sent while degraded, not yet reported
	pending map[string]*acc                 // per session: skipped events not yet reported; under mu
	timer   *time.Timer                     // the summary timer, runs only while degraded; under mu
}

// strain returns the connection's strained state, making it on first
// need. Any goroutine.
func (o *Outbox) strain() *strained {
	if st := o.st.Load(); st != nil {
		return st
	}
	o.st.CompareAndSwap(nil, new(strained))
	return o.st.Load()
}

// pending is the per-session skipped events not yet reported (nil while
// there were none). Precondition: mu held.
func (o *Outbox) pending() map[string]*acc {
	if st := o.st.Load(); st != nil {
		return st.pending
	}
	return nil
}

// lag makes the lagging state on first need. Drainer only.
func (o *Outbox) lag() {
	if o.lagging == nil {
		o.lagging = new(lagging)
	}
}

// gapOpen reports whether a gap run is being collected. Drainer only.
func (o *Outbox) gapOpen() bool { return o.lagging != nil && o.gap.n > 0 }

// explicitPolicy marks a policy the client chose (bridge/hello); a default
// never overrides it.
const explicitPolicy = 1 << 8

// maxRuns is how many gap runs one session may hold before a degraded
// connection queues them early (as far as the room kept for reports
// allows). Contiguous seqs always share a run, so runs fragment only
// where events of the session were queued in between: when the peer took
// something (the breaker let it back to full delivery and the drainer
// could pass them on) or a client re-attached with an older cursor. A
// stalled peer holds one run per session.
const maxRuns = 64

// slot is what the ring holds per message (32 bytes a slot with the ring's
// entry header). Data keeps its seq beside the message because eviction
// swaps the message for its session's marker: a tombstone must not keep an
// evicted payload alive, yet the drainer still names it in a gap.
type slot struct {
	m   *wire.Msg
	seq uint64
}

// markers caches the marker of recently evicted sessions, shared by every
// outbox: a marker is never written to a socket (only its SessionID is
// read, by Drain, for the gap), so one per session does for all, and a
// miss only makes a new one. Shared rather than per outbox so that the
// eviction hook is a plain function: no closure per connection.
var markers [256]atomic.Pointer[wire.Msg]

// dropPayload is the ring's eviction hook (under the ring's lock): the
// tombstone keeps its session's marker instead of the message.
func dropPayload(s *slot) {
	if s.m == nil || s.m.SessionID == "" || s.seq == 0 {
		s.m = nil // nothing to name in a gap
		return
	}
	sid := s.m.SessionID
	b := &markers[maphash.String(markerSeed, sid)%uint64(len(markers))]
	mk := b.Load()
	if mk == nil || mk.SessionID != sid {
		mk = &wire.Msg{SessionID: sid}
		b.Store(mk)
	}
	s.m = mk
}

var markerSeed = maphash.MakeSeed()

type gapRun struct {
	session  string
	from, to uint64
	n        int
}

// Gap reasons, as clients read them in bridge/gap.
const (
	reasonEvicted  = "slow consumer: evicted from the connection's queue"
	reasonFull     = "slow consumer: the connection's queue had no free slot"
	reasonDegraded = "slow consumer: degraded to bridge/summary"
)

// NewOutbox returns an Outbox configured by cfg. It panics if cfg fails
// Validate: configuration is checked where it is read.
func NewOutbox(c Config, hooks Hooks) *Outbox {
	o := new(Outbox)
	o.init(c, &hooks, hooks.Metrics)
	return o
}

// init readies a zero Outbox (one inside its Endpoint) as NewOutbox would,
// calling back own and counting into m (nil for none).
func (o *Outbox) init(c Config, own owner, m Metrics) {
	o.cfg = normalised(c)
	o.q.Init(o.cfg.Queue)
	o.own, o.m = own, m
	if o.m == nil {
		o.m = nopMetrics{}
	}
	o.q.SetOnEvict(dropPayload)
	o.policy.Store(uint32(o.cfg.OnSlow))
	// The breaker is made on the first unhealthy observation: most
	// connections never have one, and 10,000 idle ones should not carry it.
}

// outboxConfig is a Config with its defaults filled and what the Outbox
// derives from it.
type outboxConfig struct {
	Config
	itemsHigh int // slot watermarks, like the byte ones
	itemsLow  int
}

// configs interns normalised configurations: a server makes thousands of
// outboxes from one Config, and each would otherwise carry its own copy
// (a fifth of an idle connection's footprint). Values are immutable.
var configs sync.Map // Config -> *outboxConfig

func normalised(c Config) *outboxConfig {
	if p, ok := configs.Load(c); ok {
		return p.(*outboxConfig)
	}
	if err := c.Validate(); err != nil {
		panic(err)
	}
	n := &outboxConfig{Config: c.WithDefaults()}
	q := &n.Queue
	n.itemsHigh = (q.MaxItems - q.ControlSlots) / 4 * 3
	n.itemsLow = max((q.MaxItems-q.ControlSlots)/4, 1)
	p, _ := configs.LoadOrStore(c, n)
	return p.(*outboxConfig)
}

// batches holds drain scratch for the queue's entries between drains: a
// connection takes one for the length of a Drain, so only connections
// being drained at that moment hold any.
var batches = sync.Pool{New: func() any { return new([]ring.Entry[slot]) }}

// SetOptions applies what the client chose with bridge/hello (its onSlow
// policy); transports forward session.OptionsListener calls here. Safe from
// any goroutine.
func (o *Outbox) SetOptions(opts session.Options) {
	if p, err := ParsePolicy(opts.OnSlow); err == nil {
		o.SetPolicy(p)
	}
}

// Policy returns the connection's current onSlow policy. Safe from any
// goroutine.
func (o *Outbox) Policy() Policy { return Policy(o.policy.Load() &^ explicitPolicy) }

// SetPolicy sets the policy the client chose (bridge/hello onSlow). Safe
// from any goroutine; it only stores a word, so the hub may call it under
// its lock.
func (o *Outbox) SetPolicy(p Policy) { o.policy.Store(uint32(p) | explicitPolicy) }

// SetDefaultPolicy sets the policy unless the client already chose one:
// transports call it once they know the connection's role. Safe from any
// goroutine.
func (o *Outbox) SetDefaultPolicy(p Policy) {
	for {
		old := o.policy.Load()
		if old&explicitPolicy != 0 || o.policy.CompareAndSwap(old, uint32(p)) {
			return
		}
	}
}

// Degraded reports whether the connection is getting summaries instead of
// the data plane. Safe from any goroutine.
func (o *Outbox) Degraded() bool { return o.degraded().Load() }

// State is the connection's breaker state. Safe from any goroutine.
func (o *Outbox) State() breaker.State {
	if br := o.breaker(); br != nil {
		return br.State()
	}
	return breaker.Closed
}

// ensureBreaker returns the connection's breaker, making it on the first
// unhealthy observation (the drainer's or a pusher's, whichever comes
// first). Safe from any goroutine.
func (o *Outbox) ensureBreaker() *breaker.Breaker {
	st := o.strain()
	if br := st.br.Load(); br != nil {
		return br
	}
	st.br.CompareAndSwap(nil, breaker.New("outbox", o.cfg.Breaker, o.m.Transition))
	return st.br.Load()
}

// breaker returns the connection's breaker, nil while it never needed one.
// Safe from any goroutine.
func (o *Outbox) breaker() *breaker.Breaker {
	if st := o.st.Load(); st != nil {
		return st.br.Load()
	}
	return nil
}

// Send queues m. It reports false when a control message could not be
// queued: the connection is then being closed through the hooks. For data
// it reports false only under the Catchup policy, when the connection lags
// (see pushCatchup): the caller feeds it from the log instead. Otherwise
// data reports true: what is not delivered is named by a bridge/gap.
// Safe from any goroutine; one connection's messages must be sent in order
// (the hub serialises them).
func (o *Outbox) Send(m *wire.Msg, c wire.Class) bool {
	if o.dead().Load() {
		return c == wire.Data
	}
	if c == wire.Control {
		wasEmpty, err := o.q.Push(slot{m: m}, m.Size(), ring.Control)
		if err != nil {
			if err == ring.ErrControlOverflow {
				o.fail(wire.CloseControlCeiling, "control queue over its ceiling ("+o.ceilings()+"): "+err.Error())
			}
			return false
		}
		if wasEmpty {
			o.wake()
		}
		return true
	}
	full := false
	if !o.slow().Load() {
		if m.Seq != 0 && m.SessionID != "" && o.Policy() == Catchup {
			return o.pushCatchup(m)
		}
		if o.pushData(m) {
			if o.q.AtCeiling() {
				o.pushedOver()
			}
			return true
		}
		full = true
	}
	o.mu.Lock()
	wake := o.sendSlow(m, full)
	o.mu.Unlock()
	if wake {
		o.wake()
	}
	if (full || o.q.AtCeiling()) && !o.degraded().Load() {
		o.pushedOver()
	}
	return true
}

// pushedOver is the push side's observation of a degrade consumer whose
// queue reached its ceiling: since it was last under its high watermark a
// push had to evict, or found no free slot (ring.Queue.AtCeiling), so the
// peer is losing events. Each such push is an unhealthy observation, so
// the breaker trips on the events themselves, not on how many attempts
// the drainer happened to make: a flood the loop drains in one or two
// attempts, or a peer that stopped reading (re-woken less and less
// often), is still degraded to summaries instead of losing events to
// evictions. A queue merely over its high watermark is left to the
// drainer's observations, so a reader's momentary hiccup is not degraded
// at once. Only the next healthy drain (under the low watermark) ends the
// run. Once the breaker is open the pushes stop observing: a degraded
// connection's events skip the queue. (A disconnect consumer is closed
// at the ceiling by its push itself.) Any goroutine.
func (o *Outbox) pushedOver() {
	br := o.ensureBreaker()
	if br.State() == breaker.Open {
		return
	}
	o.pushed().Store(true)
	br.Observe(false)
	if br.State() == breaker.Open {
		data, _ := o.q.Bytes()
		o.apply(fmt.Sprintf("its queue reached its ceiling as events were pushed (%d messages, %d data bytes queued)", o.q.Len(), data))
	}
}

// pushData queues a data message by the connection's policy. It reports
// false only when the message was dropped for want of a slot (the caller
// records the gap).
func (o *Outbox) pushData(m *wire.Msg) bool {
	var (
		wasEmpty bool
		err      error
	)
	s := slot{m: m, seq: m.Seq}
	if o.Policy() == Disconnect {
		wasEmpty, err = o.q.PushNoEvict(s, m.Size(), ring.Data)
	} else {
		wasEmpty, err = o.q.Push(s, m.Size(), ring.Data)
	}
	switch err {
	case nil:
		if wasEmpty {
			o.wake()
		}
	case ring.ErrWouldEvict:
		o.fail(wire.CloseSlowConsumer, "slow consumer (onSlow=disconnect): its queue is full ("+o.ceilings()+"); resume by cursor")
	case ring.ErrFull:
		return false
	}
	return true
}

// pushCatchup queues a sequenced data event for a connection that catches
// up from the log when it lags: it reports false, queuing nothing, when
// the queue is over its high watermark (in bytes or slots) or the event
// would need an eviction; the hub then stops pushing the session to this
// connection and feeds it from the log once the queue drains. An event
// larger than the whole data ceiling could never be queued: it is queued
// as a tombstone, so the drainer names it in a gap, rather than blocking
// the catch-up forever.
func (o *Outbox) pushCatchup(m *wire.Msg) bool {
	s, size := slot{m: m, seq: m.Seq}, m.Size()
	var (
		wasEmpty bool
		err      error
	)
	if size > o.cfg.Queue.MaxDataBytes {
		wasEmpty, err = o.q.Push(s, size, ring.Data)
	} else if o.stuck().Load() && o.q.Len() > 0 {
		// The peer took nothing since the drainer last looked: rather
		// than queue more for it, let it read the log at its own pace. A
		// peer that merely has bytes in flight (the transport held some
		// at the last look, but less than before, or the drainer handed
		// out more since) is reading: it is queued for up to the
		// watermark, so a momentary stall of a fast reader does not
		// switch it to the log.
		return false
	} else {
		wasEmpty, err = o.q.PushUnder(s, size, o.cfg.itemsHigh)
	}
	if err != nil {
		return err != ring.ErrLagging // a closed queue takes nothing more anyway
	}
	if wasEmpty {
		o.wake()
	}
	return true
}

// sendSlow is Send while the connection is degraded or has gaps pending,
// or after a push found no slot (full). It reports whether to wake the
// drainer. Precondition: mu held.
func (o *Outbox) sendSlow(m *wire.Msg, full bool) (wake bool) {
	if o.closed {
		return false
	}
	sid, seq := m.SessionID, m.Seq
	sequenced := sid != "" && seq != 0
	if o.degraded().Load() {
		o.strain().skipped.Add(1)
		if sequenced {
			o.skip(m)
		}
		return false
	}
	if !full && sequenced {
		if a := o.pending()[sid]; a != nil {
			// The session's earlier gap must precede this event; without
			// room for both, this event joins the gap.
			if !o.flushToRing(a, time.Now()) {
				full = true
			} else {
				delete(o.pending(), sid)
			}
		}
	}
	if !full {
		full = !o.pushData(m)
	}
	if full && sequenced {
		o.accFor(sid).addRun(seq, reasonFull)
		// A drainer that already emptied the queue would not come back
		// for this gap on its own.
		wake = wake || o.q.Len() == 0
	}
	o.updateSlow()
	return wake
}

// skip accounts for an event a degraded connection is not sent.
// Precondition: mu held, m sequenced.
func (o *Outbox) skip(m *wire.Msg) {
	a := o.accFor(m.SessionID)
	a.addRun(m.Seq, reasonDegraded)
	a.dropped++
	a.bytes += uint64(m.Size())
	a.seq = m.Seq
	a.owed = true
	if t := m.Text(ChunkText); t != "" {
		a.tail = appendTail(a.tail, t, o.cfg.TextTail)
	}
	if len(a.runs) > maxRuns {
		o.queueGaps(a)
	}
}

// queueGaps queues a's runs as gaps now, oldest first, as many as the room
// kept for reports takes (see pushReport); the rest stay in a, in order,
// for a later tick or the drain. It reports whether every run was queued.
// Precondition: mu held.
func (o *Outbox) queueGaps(a *acc) bool {
	k := 0
	for ; k < len(a.runs); k++ {
		r := &a.runs[k]
		if !o.reportRoom(0) || !o.pushReport(wire.GapMsg(a.sid, r.from, r.to, r.why)) {
			break
		}
		o.m.Gap()
	}
	a.runs = a.runs[:copy(a.runs, a.runs[k:])]
	return len(a.runs) == 0
}

// reportRoom reports whether a degraded connection may queue a gap or
// summary of size bytes (0: not known yet) now. Its reports are held
// rather than queued when they would take the last half of the control
// slots (which answers need: tombstones of a purged backlog keep every
// other slot until the peer reads) or more than a quarter of the control
// bytes: a stalled peer takes none of them, and queuing one per interval
// would fill its control queue and get it closed at the ceiling. Held
// reports stay counted in the accumulators. An empty queue takes any
// report under the ceiling, so a small ceiling does not hold them forever.
// Precondition: mu held.
func (o *Outbox) reportRoom(size int) bool {
	qc := &o.cfg.Queue
	if o.q.Len() == 0 {
		return size <= qc.MaxControlBytes
	}
	_, ctrl := o.q.Bytes()
	return o.q.Len() < qc.MaxItems-qc.ControlSlots/2 && ctrl+size <= qc.MaxControlBytes/4
}

// pushReport queues a degraded connection's gap or summary if reportRoom
// allows, and reports whether it did. Precondition: mu held.
func (o *Outbox) pushReport(m *wire.Msg) bool {
	return o.reportRoom(m.Size()) && o.pushControl(m)
}

func (o *Outbox) accFor(sid string) *acc {
	a := o.pending()[sid]
	if a == nil {
		st := o.strain()
		if st.pending == nil {
			st.pending = make(map[string]*acc)
		}
		a = &acc{sid: sid}
		st.pending[sid] = a
	}
	return a
}

// updateSlow recomputes the slow-path flag. Precondition: mu held.
func (o *Outbox) updateSlow() {
	o.slow().Store(o.degraded().Load() || len(o.pending()) > 0)
}

// pushControl queues a gap or summary; one that does not fit closes the
// connection, as any control message. Precondition: mu held.
func (o *Outbox) pushControl(m *wire.Msg) bool {
	wasEmpty, err := o.q.Push(slot{m: m}, m.Size(), ring.Control)
	if err != nil {
		if err == ring.ErrControlOverflow {
			o.fail(wire.CloseControlCeiling, "control queue over its ceiling ("+o.ceilings()+") with gaps or summaries to report: "+err.Error())
		}
		return false
	}
	if wasEmpty {
		o.wake()
	}
	return true
}

// flushToRing queues a's gaps and, if one is owed, its summary. It first
// checks there is room for them and one more event and reports false
// (queuing nothing) when there is not. Precondition: mu held.
func (o *Outbox) flushToRing(a *acc, now time.Time) bool {
	if o.q.Len()+len(a.runs)+2 > o.cfg.Queue.MaxItems-o.cfg.Queue.ControlSlots {
		return false
	}
	for _, m := range o.accMsgs(a, now, nil) {
		if !o.pushControl(m) {
			return false
		}
	}
	return true
}

// accMsgs appends a's gaps and owed summary to dst and resets a. Counted as
// sent. Precondition: mu held.
func (o *Outbox) accMsgs(a *acc, now time.Time, dst []*wire.Msg) []*wire.Msg {
	for _, r := range a.runs {
		dst = append(dst, wire.GapMsg(a.sid, r.from, r.to, r.why))
		o.m.Gap()
	}
	a.runs = a.runs[:0]
	if a.owed {
		dst = append(dst, summaryOf(a))
		o.summarised(a, now)
	}
	return dst
}

// summaryOf is the bridge/summary of what a counts since its last one.
func summaryOf(a *acc) *wire.Msg {
	return wire.SummaryMsg(a.sid, a.seq, a.dropped, a.bytes, string(a.tail))
}

// summarised counts a's summary as sent and starts its next stretch.
// Precondition: mu held.
func (o *Outbox) summarised(a *acc, now time.Time) {
	o.m.Summary()
	a.owed, a.dropped, a.bytes, a.lastSummary = false, 0, 0, now
}

// Drain appends to dst, in order, up to maxBytes of messages to write:
// queued messages, one bridge/gap per run of evicted events, and, once the
// queue is empty, the gaps and final summaries still pending. Drainer only.
func (o *Outbox) Drain(dst []*wire.Msg, maxBytes int) []*wire.Msg {
	bp := batches.Get().(*[]ring.Entry[slot])
	batch := o.q.PopBatch((*bp)[:0], maxBytes)
	for i := range batch {
		e := &batch[i]
		if e.Evicted {
			if e.V.m == nil {
				continue // no seq to name; counted by the ring
			}
			sid, seq := e.V.m.SessionID, e.V.seq
			if sid == "" || seq == 0 {
				continue // no seq to name; counted by the ring
			}
			o.lag()
			if o.gap.n > 0 && (o.gap.session != sid || seq != o.gap.to+1) {
				dst = append(dst, o.flushGap())
			}
			if o.gap.n == 0 {
				o.gap.session, o.gap.from = sid, seq
			}
			o.gap.to = seq
			o.gap.n++
			continue
		}
		if o.gapOpen() {
			dst = append(dst, o.flushGap())
		}
		dst = append(dst, e.V.m)
	}
	if len(batch) > 0 {
		o.drained = true
	}
	clear(batch)
	*bp = batch[:0]
	batches.Put(bp)
	if (o.gapOpen() || o.slow().Load()) && o.q.Len() == 0 {
		if o.gapOpen() {
			dst = append(dst, o.flushGap())
		}
		if o.slow().Load() {
			dst = o.drainPending(dst)
		}
	}
	return dst
}

// drainPending appends every pending gap and owed summary once the queue is
// empty, unless degraded (the timer paces those). Drainer only.
func (o *Outbox) drainPending(dst []*wire.Msg) []*wire.Msg {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || o.degraded().Load() || o.q.Len() != 0 {
		return dst
	}
	now := time.Now()
	pending := o.pending()
	for sid, a := range pending {
		dst = o.accMsgs(a, now, dst)
		delete(pending, sid)
	}
	o.updateSlow()
	return dst
}

func (o *Outbox) flushGap() *wire.Msg {
	g := o.gap
	o.gap = gapRun{}
	o.m.Gap()
	return wire.GapMsg(g.session, g.from, g.to, reasonEvicted)
}

// Observe records one drain attempt: blocked reports that the transport
// stopped because its own buffer is over its watermark, and buffered is
// how many bytes that buffer holds. A blocked attempt made progress if
// Drain handed out anything since the previous one or the buffer shrank;
// blocked without progress for DrainDeadline (the peer read nothing) is a
// missed deadline; without progress for StallTimeout while bytes are due
// the connection is closed (CloseStalled, 1013), whatever its policy.
// Observe feeds the breaker and applies the policy: degrade, recover or
// disconnect. Drainer only; call it once per drain attempt, not per Drain
// call.
func (o *Outbox) Observe(blocked bool, buffered int) {
	if o.dead().Load() {
		return
	}
	lvl := o.q.Level()
	o.report(lvl)
	missed := false
	progress := o.drained
	o.drained = false
	held := blocked || buffered > 0
	stuckNow := false
	if held {
		// Something is due that the peer has not taken.
		now := time.Now()
		o.lag()
		if o.stuckSince.IsZero() || progress || buffered < o.lastBuffered {
			o.stuckSince = now
		} else if stuck := now.Sub(o.stuckSince); stuck >= o.cfg.StallTimeout {
			o.fail(wire.CloseStalled, fmt.Sprintf("stalled: its peer took nothing for %v while %d bytes were due (stall timeout %v); resume by cursor",
				stuck.Round(time.Millisecond), buffered, o.cfg.StallTimeout))
			return
		} else {
			// The peer took nothing since the previous attempt.
			stuckNow = true
			if o.Policy() == Catchup {
				// Its memory is a cursor, not a backlog: the events
				// queued for it go back to the log, read again once it
				// takes what gnet holds.
				o.own.recede()
			}
			// Nor does it keep the slot array its queue grew to while
			// the peer read (up to 2 KiB once drained).
			o.q.Trim()
			missed = blocked && stuck >= o.cfg.DrainDeadline
		}
		o.lastBuffered = buffered
	} else if o.lagging != nil {
		o.stuckSince = time.Time{}
	}
	o.setBehind(held, stuckNow)
	qc := &o.cfg.Queue
	// A connection that catches up from the log is never degraded: over
	// its watermark it is simply fed from the log.
	catchup := o.Policy() == Catchup
	switch {
	case catchup:
		if o.lagging != nil {
			o.unhealthy = 0
		}
	case missed || stuckNow && o.degraded().Load() || lvl.DataBytes > qc.HighWater || lvl.Items > o.cfg.itemsHigh:
		// A degraded connection whose peer still takes nothing stays
		// degraded: its queue was purged, so only the stall shows, and
		// without this observation the breaker would half-open and put
		// the stalled peer back on full delivery (and its queue over the
		// watermark again) every OpenFor.
		o.lag()
		o.unhealthy++
		if missed || stuckNow {
			o.why = fmt.Sprintf("its peer took nothing for %v", time.Since(o.stuckSince).Round(time.Millisecond))
		} else {
			o.why = fmt.Sprintf("its queue stayed over the high watermark (%d messages, %d data bytes queued)", lvl.Items, lvl.DataBytes)
		}
		o.ensureBreaker().Observe(false)
	case !blocked && lvl.DataBytes < qc.LowWater && lvl.Items < o.cfg.itemsLow:
		// A healthy observation in the closed state changes nothing
		// unless it breaks a run of unhealthy ones.
		pushed := o.pushed().Load()
		if o.lagging == nil && !pushed {
			break // never unhealthy, so no breaker either
		}
		if br := o.breaker(); br != nil && (pushed || o.lagging != nil && o.unhealthy > 0 || br.State() != breaker.Closed) {
			br.Observe(true)
		}
		if pushed {
			o.pushed().Store(false)
		}
		if o.lagging != nil {
			o.unhealthy = 0
		}
	}
	if held && o.degraded().Load() && o.State() == breaker.HalfOpen {
		// The probe waits until the peer took what the transport holds
		// (the tick leaves then) or the breaker closes on healthy
		// observations: "progress" here may be nothing but Drain handing
		// the purged backlog's gap to the transport, and a stalled peer
		// put back on full delivery would fill its queue again only to be
		// degraded at the next attempt, its queue full of tombstones.
		return
	}
	why := ""
	if o.lagging != nil {
		why = o.why
	}
	o.apply(why)
}

// TakeEvents removes the sequenced data events from the queue (unless that
// would reorder what the drainer reports: see ring.Queue.TakeData) and
// returns the lowest seq removed per session, for Hub.Recede. Any
// goroutine; it takes the ring's lock.
func (o *Outbox) TakeEvents() map[string]uint64 {
	var low map[string]uint64
	o.q.TakeData(func(s *slot) bool {
		if s.m == nil || s.m.SessionID == "" || s.seq == 0 {
			return false
		}
		if low == nil {
			low = make(map[string]uint64)
		}
		if cur, ok := low[s.m.SessionID]; !ok || s.seq < cur {
			low[s.m.SessionID] = s.seq
		}
		return true
	})
	return low
}

// hasData reports whether live data entries are queued. Any goroutine.
func (o *Outbox) hasData() bool {
	data, _ := o.q.Bytes()
	return data > 0
}

// setBehind records what the last drain attempt saw of the peer: held, the
// transport still holds bytes for it; stuck, it took nothing since the
// attempt before. Drainer only.
func (o *Outbox) setBehind(held, stuck bool) {
	if held != o.behind().Load() {
		o.behind().Store(held)
	}
	if stuck != o.stuck().Load() {
		o.stuck().Store(stuck)
	}
}

// Taking records that the transport holds nothing for the peer any more:
// it took everything it was given. Until the next Observe the connection
// is not behind: a catch-up connection is queued (and pumped) up to its
// watermark again. Drainer only.
func (o *Outbox) Taking() { o.setBehind(false, false) }

// report hands the ring's new losses and a depth sample to Metrics.
// Drainer only.
func (o *Outbox) report(lvl ring.Level) {
	o.m.Queue(lvl.Items, lvl.DataBytes)
	for _, r := range [...]ring.Reason{ring.ReasonCeiling, ring.ReasonTooLarge, ring.ReasonFull, ring.ReasonPurged} {
		if lvl.Stats.Lost[r] == 0 {
			continue
		}
		o.lag()
		if d := lvl.Stats.Lost[r] - o.reported[r]; d > 0 {
			o.reported[r] = lvl.Stats.Lost[r]
			o.m.Lost(r.String(), d)
		}
	}
	o.reportSkipped()
}

// reportSkipped counts the events a degraded connection was not sent
// since the last report. Any goroutine.
func (o *Outbox) reportSkipped() {
	if st := o.st.Load(); st != nil {
		if n := st.skipped.Swap(0); n > 0 {
			o.m.Lost(LostDegraded, n)
		}
	}
}

// apply moves the connection between full and degraded delivery, or
// closes it, as the breaker and the policy say; why is what made the
// consumer unhealthy, for a close's reason. Safe from any goroutine.
func (o *Outbox) apply(why string) {
	pol := o.Policy()
	open := o.State() == breaker.Open && pol != Catchup
	deg := o.degraded().Load()
	switch {
	case open && pol == Disconnect:
		o.fail(wire.CloseSlowConsumer, "slow consumer (onSlow=disconnect): "+why+"; resume by cursor")
		return
	case open == deg:
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	switch {
	case open && !o.degraded().Load():
		o.enter()
	case !open && o.degraded().Load():
		o.leave()
	}
}

// enter starts degraded delivery: the backlog is purged (the drainer
// reports it as gaps) and the summary timer starts. Precondition: mu held.
func (o *Outbox) enter() {
	o.degraded().Store(true)
	o.slow().Store(true)
	o.q.EvictData()
	o.m.Degraded(true)
	if st := o.strain(); st.timer == nil {
		st.timer = time.AfterFunc(o.cfg.tickEvery(), o.tick)
	} else {
		st.timer.Reset(o.cfg.tickEvery())
	}
	// The drainer turns the purged backlog into gaps at once.
	o.wake()
}

// leave ends degraded delivery; what is pending goes out before each
// session's next event or when the queue empties. Precondition: mu held.
func (o *Outbox) leave() {
	o.degraded().Store(false)
	o.m.Degraded(false)
	if st := o.st.Load(); st != nil && st.timer != nil {
		st.timer.Stop()
	}
	o.updateSlow()
	if len(o.pending()) > 0 {
		o.wake()
	}
}

// tick is the summary timer: it queues each session's gaps and summary
// when its interval has passed, and notices the breaker half-opening (which
// gobreaker does lazily, and no drain may come to ask). It runs on the
// timer's goroutine.
func (o *Outbox) tick() {
	o.reportSkipped()
	if o.Policy() == Disconnect && o.degraded().Load() {
		o.apply("it was degraded when it chose onSlow=disconnect")
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || !o.degraded().Load() || o.dead().Load() {
		return
	}
	if o.State() != breaker.Open {
		if !o.behind().Load() {
			o.leave()
			return
		}
		// The breaker half-opened, but the transport still held bytes for
		// the peer at the drainer's last look: it stays degraded until
		// the peer takes them (Taking, then this tick) or a drain attempt
		// judges it (Observe: healthy ones close the breaker, one without
		// progress re-opens it). Leaving now would put a peer that
		// may have taken nothing (a drain that handed out the purged
		// backlog's gap counts as progress, so "stuck" can be false for a
		// re-wake) back on full delivery, only for the next Observe to
		// degrade it again.
	}
	now := time.Now()
	for _, a := range o.pending() {
		if len(a.runs) == 0 && !a.owed {
			continue
		}
		if a.owed && now.Sub(a.lastSummary) < o.cfg.SummaryInterval {
			continue
		}
		// A peer that has not taken what is queued may find no room
		// for these (reportRoom): they wait, counted, for a later tick.
		if o.queueGaps(a) && a.owed && o.pushReport(summaryOf(a)) {
			o.summarised(a, now)
		}
		if o.dead().Load() {
			return // closed: the control ceiling
		}
	}
	o.strain().timer.Reset(o.cfg.tickEvery())
}

// fail asks the transport, once, to close the connection.
func (o *Outbox) fail(r wire.CloseReason, detail string) {
	if !o.dead().CompareAndSwap(false, true) {
		return
	}
	o.m.Closed(r)
	o.own.overload(r, detail)
}

func (o *Outbox) wake() { o.own.wake() }

func (o *Outbox) ceilings() string {
	q := &o.cfg.Queue
	return fmt.Sprintf("%d messages, %d data bytes, %d control bytes", q.MaxItems, q.MaxDataBytes, q.MaxControlBytes)
}

// InputHeld reports whether the connection's answers pile up past its
// control high watermark (half its control bytes, or half its slots
// counting the coming answers to its requests in flight): its reader
// should stop handing it requests until they drain, rather than have it
// closed at the control ceiling while it is still reading. Safe from any
// goroutine.
func (o *Outbox) InputHeld(inflight int) bool {
	_, ctrl := o.q.Bytes()
	return ctrl > o.cfg.Queue.MaxControlBytes/2 || o.q.Len()+inflight > o.cfg.Queue.MaxItems/2
}

// Len is the number of queued entries. Safe from any goroutine.
func (o *Outbox) Len() int { return o.q.Len() }

// Level is the queue's occupancy and counters, for metrics and tests. Safe
// from any goroutine.
func (o *Outbox) Level() ring.Level { return o.q.Level() }

// Close releases the queue and stops the summary timer; later Sends are
// dropped. Safe from any goroutine; idempotent.
func (o *Outbox) Close() {
	o.mu.Lock()
	if !o.closed {
		o.closed = true
		st := o.st.Load()
		if st != nil && st.timer != nil {
			st.timer.Stop()
		}
		if o.degraded().Load() {
			o.degraded().Store(false)
			o.m.Degraded(false)
		}
		if st != nil {
			st.pending = nil
		}
		o.slow().Store(false)
	}
	o.mu.Unlock()
	o.dead().Store(true)
	o.q.Close()
}

type nopMetrics struct{}

func (nopMetrics) Lost(string, uint64)                     {}
func (nopMetrics) Transition(breaker.State, breaker.State) {}
func (nopMetrics) Degraded(bool)                           {}
func (nopMetrics) Summary()                                {}
func (nopMetrics) Gap()                                    {}
func (nopMetrics) Closed(wire.CloseReason)                 {}
func (nopMetrics) Queue(int, int)                          {}
