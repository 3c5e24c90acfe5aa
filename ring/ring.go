package ring

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Class is the delivery class of an entry. It only decides eviction; order
// is always push order.
type Class uint8

const (
	// Control is a response, an agent request, a bridge/* answer or an
	// error: never evicted, never dropped silently.
	Control Class = iota
	// Data is a notification: evicted oldest-first past MaxDataBytes.
	Data
)

// String returns "control" or "data".
func (c Class) String() string {
	switch c {
	case Control:
		return "control"
	case Data:
		return "data"
	default:
		return fmt.Sprintf("Class(%d)", uint8(c))
	}
}

// Reason says why an item did not reach the drainer as a live entry. It is
// the label of the counters in Stats.
type Reason uint8

const (
	// ReasonCeiling: a queued data entry was evicted, oldest first, to make
	// room under MaxDataBytes. It still comes out as a tombstone.
	ReasonCeiling Reason = iota
	// ReasonTooLarge: a data item larger than MaxDataBytes on its own was
	// queued directly as a tombstone (evicting others could never make it
	// fit, so none were evicted for it).
	ReasonTooLarge
	// ReasonFull: a data item was dropped because every slot data may
	// take was taken.
	// It leaves no tombstone (Push returned ErrFull).
	ReasonFull
	// ReasonControl: a control item was refused with ErrControlOverflow.
	ReasonControl
	// ReasonClosed: an item was refused with ErrClosed.
	ReasonClosed
	// ReasonWouldEvict: PushNoEvict refused a data item that would have
	// needed an eviction (or a slot there was none of).
	ReasonWouldEvict
	// ReasonPurged: EvictData turned a queued live data entry into a
	// tombstone (the consumer was degraded).
	ReasonPurged

	// NumReasons is the number of reasons, for sizing Stats.Lost.
	NumReasons
)

// String returns the metric label of r.
func (r Reason) String() string {
	switch r {
	case ReasonCeiling:
		return "ceiling"
	case ReasonTooLarge:
		return "too_large"
	case ReasonFull:
		return "full"
	case ReasonControl:
		return "control_overflow"
	case ReasonClosed:
		return "closed"
	case ReasonWouldEvict:
		return "would_evict"
	case ReasonPurged:
		return "purged"
	default:
		return fmt.Sprintf("Reason(%d)", uint8(r))
	}
}

// Config bounds a Queue. Every zero value means the documented default.
type Config struct {
	// MaxItems is the number of slots, tombstones included. Zero means 4096.
	MaxItems int
	// ControlSlots are slots data may not take, so that a queue whose slots
	// a burst of small data filled can still take a response. Zero means
	// none are reserved. It must be below MaxItems.
	ControlSlots int
	// MaxDataBytes is the ceiling on live data bytes; past it the oldest
	// data is evicted. Zero means 1 MiB.
	MaxDataBytes int
	// MaxControlBytes is the ceiling on queued control bytes; past it Push
	// returns ErrControlOverflow. Zero means 4 MiB.
	MaxControlBytes int
	// HighWater is the live data bytes above which the consumer counts as
	// unhealthy (AboveHigh). Zero means 3/4 of MaxDataBytes. It must be
	// below MaxDataBytes so that degrading starts before evicting.
	HighWater int
	// LowWater is the live data bytes below which the consumer counts as
	// healthy again (BelowLow). Zero means 1/4 of MaxDataBytes. It must be
	// positive and below HighWater.
	LowWater int
}

const (
	defaultMaxItems        = 4096
	defaultMaxDataBytes    = 1 << 20
	defaultMaxControlBytes = 4 << 20

	// initialSlots is the slot array a queue starts with on its first Push:
	// one, which an idle connection keeps after its last answer (a
	// request/response connection rarely holds two at once; more double).
	initialSlots = 1
	// releaseAbove: an array larger than this is released when the queue
	// drains to empty. Small enough that idle connections stay cheap, large
	// enough that a connection streaming one message at a time never
	// reallocates.
	releaseAbove = 64
)

// WithDefaults returns c with every zero field replaced by its default.
func (c Config) WithDefaults() Config {
	if c.MaxItems == 0 {
		c.MaxItems = defaultMaxItems
	}
	if c.MaxDataBytes == 0 {
		c.MaxDataBytes = defaultMaxDataBytes
	}
	if c.MaxControlBytes == 0 {
		c.MaxControlBytes = defaultMaxControlBytes
	}
	if c.HighWater == 0 {
		c.HighWater = c.MaxDataBytes / 4 * 3
	}
	if c.LowWater == 0 {
		c.LowWater = c.MaxDataBytes / 4
	}
	return c
}

// Validate reports the first inconsistent field of c after defaults, naming
// the value. The daemon calls it on its configuration so a bad value exits
// with one clear line; New panics on a config that fails it.
func (c Config) Validate() error {
	c = c.WithDefaults()
	switch {
	case c.MaxItems < 1:
		return fmt.Errorf("%w: MaxItems %d must be positive", ErrBadConfig, c.MaxItems)
	case c.ControlSlots < 0 || c.ControlSlots >= c.MaxItems:
		return fmt.Errorf("%w: ControlSlots %d must be between 0 and MaxItems-1 (MaxItems %d)", ErrBadConfig, c.ControlSlots, c.MaxItems)
	case c.MaxDataBytes < 1:
		return fmt.Errorf("%w: MaxDataBytes %d must be positive", ErrBadConfig, c.MaxDataBytes)
	case c.MaxControlBytes < 1:
		return fmt.Errorf("%w: MaxControlBytes %d must be positive", ErrBadConfig, c.MaxControlBytes)
	case c.HighWater >= c.MaxDataBytes:
		return fmt.Errorf("%w: HighWater %d must be below MaxDataBytes %d", ErrBadConfig, c.HighWater, c.MaxDataBytes)
	case c.LowWater < 1 || c.LowWater >= c.HighWater:
		return fmt.Errorf("%w: LowWater %d must be positive and below HighWater %d (MaxDataBytes %d)",
			ErrBadConfig, c.LowWater, c.HighWater, c.MaxDataBytes)
	}
	return nil
}

// Entry is one popped item. An evicted entry (a tombstone) still carries
// its value so the drainer can tell which event it skipped.
type Entry[T any] struct {
	V       T
	Size    int
	Class   Class
	Evicted bool
}

// Stats is a snapshot of a queue's counters since New.
type Stats struct {
	// Pushed counts items queued, live or as a ReasonTooLarge tombstone.
	Pushed uint64
	// Popped counts entries handed to the drainer, tombstones included.
	Popped uint64
	// Lost counts, by reason, items that did not reach the drainer live:
	// evicted (ReasonCeiling, ReasonTooLarge) or refused (the others).
	Lost [NumReasons]uint64
}

// Queue is a bounded FIFO of T with per-entry classes. T is usually a
// pointer to a message shared by every connection it is broadcast to.
type Queue[T any] struct {
	cfg     *Config  // immutable, shared by every queue made from one Config (configs)
	onEvict func(*T) // set before the first Push

	mu sync.Mutex
	// Everything below is guarded by mu.
	buf       []Entry[T] // circular; nil until the first Push
	head      int        // index of the oldest entry
	n         int        // entries queued, tombstones included
	scan      int        // entries from head known to hold no live data
	dataBytes int        // live (not evicted) data bytes
	ctrlBytes int
	congested bool // hysteresis latch between HighWater and LowWater
	closed    bool
	// ceiling is AtCeiling's answer, read without the lock: written under
	// mu, in the padding after the two bools.
	ceiling atomic.Bool
	// The counters of Stats. The losses are made on the first one: most
	// queues never lose anything, and an idle connection's queue should
	// not carry seven words for it.
	pushed, popped uint64
	lost           *[NumReasons]uint64
}

// lose counts n items lost for reason r. Precondition: q.mu held.
func (q *Queue[T]) lose(r Reason, n uint64) {
	if n == 0 {
		return
	}
	if q.lost == nil {
		q.lost = new([NumReasons]uint64)
	}
	q.lost[r] += n
}

// statsLocked is the snapshot of the counters. Precondition: q.mu held.
func (q *Queue[T]) statsLocked() Stats {
	st := Stats{Pushed: q.pushed, Popped: q.popped}
	if q.lost != nil {
		st.Lost = *q.lost
	}
	return st
}

// New returns an empty queue bounded by cfg (zero fields take their
// defaults). It panics if cfg fails Validate: configuration is checked
// where it is read, so a bad one here is a programming error.
func New[T any](cfg Config) *Queue[T] {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	q := new(Queue[T])
	q.Init(cfg)
	return q
}

// Init readies q, a zero Queue that is part of a larger value (so that one
// allocation holds both), as New would. Call it once, before any other
// method; it panics if cfg fails Validate.
func (q *Queue[T]) Init(cfg Config) {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	q.cfg = interned(cfg)
}

// configs interns configurations with their defaults filled in: a server
// makes one queue per connection from one Config, and a copy in each would
// be a quarter of an idle queue. Values are immutable.
var configs sync.Map // Config -> *Config

func interned(c Config) *Config {
	if p, ok := configs.Load(c); ok {
		return p.(*Config)
	}
	n := c.WithDefaults()
	p, _ := configs.LoadOrStore(c, &n)
	return p.(*Config)
}

// SetOnEvict registers f to run, under the queue's lock, on the value of
// every entry that becomes a tombstone (evicted, purged or queued too
// large). f may shrink the value, e.g. drop a payload and keep only what
// the drainer needs to report the gap, so that tombstones, which keep
// their slots until drained, hold no more memory than their slot. f must
// be quick and must not call into the queue. Call SetOnEvict before the
// first Push, from the goroutine that created the queue.
func (q *Queue[T]) SetOnEvict(f func(*T)) { q.onEvict = f }

// tombstone marks e evicted. Precondition: q.mu held.
func (q *Queue[T]) tombstone(e *Entry[T]) {
	e.Evicted = true
	if q.onEvict != nil {
		q.onEvict(&e.V)
	}
}

// Config returns the queue's configuration with defaults filled in. Safe
// from any goroutine.
func (q *Queue[T]) Config() Config { return *q.cfg }

// Push queues v, whose encoded size is size bytes, in class c. It is safe
// from any goroutine.
//
// wasEmpty reports that the queue went from empty to non-empty; the caller
// wakes the drainer only then.
//
// Data past MaxDataBytes evicts the oldest live data entries until v fits.
// A data item larger than MaxDataBytes by itself is queued already evicted
// (a tombstone), so the drainer still reports its gap. A data item that
// finds no free slot (ControlSlots excepted) is dropped and ErrFull
// returned: it leaves no
// tombstone, so the drainer must notice the hole from the event sequence
// (or Stats().Lost[ReasonFull]).
//
// Control that finds no free slot or would exceed MaxControlBytes returns
// ErrControlOverflow and queues nothing. After Close every Push returns
// ErrClosed. Push panics on a negative size or an unknown class.
func (q *Queue[T]) Push(v T, size int, c Class) (wasEmpty bool, err error) {
	if size < 0 {
		panic("ring: negative size")
	}
	if c != Control && c != Data {
		panic("ring: unknown class " + c.String())
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		q.lose(ReasonClosed, 1)
		return false, ErrClosed
	}
	if c == Control {
		if q.n >= q.cfg.MaxItems || size > q.cfg.MaxControlBytes-q.ctrlBytes {
			q.lose(ReasonControl, 1)
			return false, ErrControlOverflow
		}
		wasEmpty = q.n == 0
		q.append(Entry[T]{V: v, Size: size, Class: Control})
		q.ctrlBytes += size
		q.pushed++
		return wasEmpty, nil
	}
	if q.n >= q.cfg.MaxItems-q.cfg.ControlSlots {
		// Tombstones keep their slots, so evicting cannot make room here.
		q.lose(ReasonFull, 1)
		q.ceiling.Store(true)
		return false, ErrFull
	}
	wasEmpty = q.n == 0
	if size > q.cfg.MaxDataBytes {
		q.append(Entry[T]{V: v, Size: size, Class: Data})
		q.tombstoneTail()
		q.lose(ReasonTooLarge, 1)
		q.pushed++
		return wasEmpty, nil
	}
	if size > q.cfg.MaxDataBytes-q.dataBytes && !q.ceiling.Load() {
		q.ceiling.Store(true)
	}
	for size > q.cfg.MaxDataBytes-q.dataBytes {
		q.evictOldest()
	}
	q.append(Entry[T]{V: v, Size: size, Class: Data})
	q.dataBytes += size
	q.pushed++
	q.updateLatch()
	return wasEmpty, nil
}

// PushNoEvict is Push for a consumer that must not lose data (one that
// would rather be disconnected and replay): a data item that would need an
// eviction, that is larger than MaxDataBytes, or that finds no free slot is
// refused with ErrWouldEvict and nothing changes. Control items behave as in
// Push. Safe from any goroutine.
func (q *Queue[T]) PushNoEvict(v T, size int, c Class) (wasEmpty bool, err error) {
	if c != Data {
		return q.Push(v, size, c)
	}
	if size < 0 {
		panic("ring: negative size")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		q.lose(ReasonClosed, 1)
		return false, ErrClosed
	}
	if q.n >= q.cfg.MaxItems-q.cfg.ControlSlots || size > q.cfg.MaxDataBytes-q.dataBytes {
		q.lose(ReasonWouldEvict, 1)
		return false, ErrWouldEvict
	}
	wasEmpty = q.n == 0
	q.append(Entry[T]{V: v, Size: size, Class: Data})
	q.dataBytes += size
	q.pushed++
	q.updateLatch()
	return wasEmpty, nil
}

// PushUnder queues a data item for a consumer that is fed from elsewhere
// (its session log) when it lags: the item is refused with ErrLagging, and
// nothing changes, when the queue is not empty and already holds more than
// HighWater data bytes or more than maxItems entries, or when it would need
// an eviction or finds no free slot. A refusal is not a loss: it is not
// counted in Stats. Safe from any goroutine.
func (q *Queue[T]) PushUnder(v T, size, maxItems int) (wasEmpty bool, err error) {
	if size < 0 {
		panic("ring: negative size")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		q.lose(ReasonClosed, 1)
		return false, ErrClosed
	}
	if q.n > 0 && (q.dataBytes > q.cfg.HighWater || q.n > maxItems) ||
		q.n >= q.cfg.MaxItems-q.cfg.ControlSlots || size > q.cfg.MaxDataBytes-q.dataBytes {
		return false, ErrLagging
	}
	wasEmpty = q.n == 0
	q.append(Entry[T]{V: v, Size: size, Class: Data})
	q.dataBytes += size
	q.pushed++
	q.updateLatch()
	return wasEmpty, nil
}

// EvictData turns every queued live data entry into a tombstone (counted as
// ReasonPurged) and returns how many it turned. A consumer that has just been
// degraded calls it so the drainer skips the stale backlog (reporting it as
// gaps) and the consumer sees its summaries sooner. Safe from any goroutine;
// O(entries queued).
func (q *Queue[T]) EvictData() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := 0
	for i := q.scan; i < q.n; i++ {
		j := q.head + i
		if j >= len(q.buf) {
			j -= len(q.buf)
		}
		e := &q.buf[j]
		if e.Class != Data || e.Evicted {
			continue
		}
		q.tombstone(e)
		q.dataBytes -= e.Size
		k++
	}
	q.scan = q.n
	q.lose(ReasonPurged, uint64(k))
	q.updateLatch()
	return k
}

// TakeData removes the live data entries for which take returns true and
// shrinks the slot array to what is left, so a consumer that will be fed
// again from elsewhere (a connection that catches up from its session's
// log) holds nothing for them. It takes nothing, and reports 0, when the
// queue holds a tombstone or a control entry after a data entry: taking
// data out from before either would reorder what the drainer reports. It
// returns how many entries it took. take runs under the queue's lock: it
// must be quick and must not call into the queue. Safe from any goroutine.
func (q *Queue[T]) TakeData(take func(v *T) bool) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	seenData := false
	for i := 0; i < q.n; i++ {
		e := &q.buf[(q.head+i)%len(q.buf)]
		if e.Evicted || (e.Class == Control && seenData) {
			return 0
		}
		seenData = seenData || e.Class == Data
	}
	if !seenData {
		return 0
	}
	var kept []Entry[T]
	k := 0
	for i := 0; i < q.n; i++ {
		e := q.buf[(q.head+i)%len(q.buf)]
		if e.Class == Data && take(&e.V) {
			q.dataBytes -= e.Size
			k++
			continue
		}
		kept = append(kept, e)
	}
	if k == 0 {
		return 0
	}
	q.buf, q.head, q.n, q.scan = nil, 0, 0, 0
	if len(kept) > 0 {
		q.buf, q.n = kept[:len(kept):len(kept)], len(kept)
	}
	q.updateLatch()
	return k
}

// append stores e at the tail, growing the array if it is full. The caller
// has checked q.n < MaxItems. Precondition: q.mu held.
func (q *Queue[T]) append(e Entry[T]) {
	if q.n == len(q.buf) {
		q.grow()
	}
	i := q.head + q.n
	if i >= len(q.buf) {
		i -= len(q.buf)
	}
	q.buf[i] = e
	q.n++
}

// tombstoneTail marks the entry just appended evicted. Precondition: q.mu
// held, q.n > 0.
func (q *Queue[T]) tombstoneTail() {
	i := q.head + q.n - 1
	if i >= len(q.buf) {
		i -= len(q.buf)
	}
	q.tombstone(&q.buf[i])
}

// grow doubles the slot array (or allocates the first one), capped at
// MaxItems, and unrolls it so head is 0. Precondition: q.mu held and every
// slot in use.
func (q *Queue[T]) grow() {
	size := initialSlots
	if len(q.buf) > 0 {
		size = 2 * len(q.buf)
	}
	size = min(size, q.cfg.MaxItems)
	nb := make([]Entry[T], size)
	k := copy(nb, q.buf[q.head:])
	copy(nb[k:], q.buf[:q.head])
	q.buf = nb
	q.head = 0
}

// evictOldest tombstones the oldest live data entry. It resumes from q.scan
// because every entry before it is control or already a tombstone, which
// keeps a run of evictions linear in the queue length rather than
// quadratic. Precondition: q.mu held and q.dataBytes > 0, so a live data
// entry exists.
func (q *Queue[T]) evictOldest() {
	for i := q.scan; i < q.n; i++ {
		j := q.head + i
		if j >= len(q.buf) {
			j -= len(q.buf)
		}
		e := &q.buf[j]
		if e.Class != Data || e.Evicted {
			continue
		}
		q.tombstone(e)
		q.dataBytes -= e.Size
		q.scan = i + 1
		q.lose(ReasonCeiling, 1)
		return
	}
	panic("ring: data bytes accounted but no live data entry queued")
}

// updateLatch moves the hysteresis latch. Precondition: q.mu held.
func (q *Queue[T]) updateLatch() {
	if q.dataBytes <= q.cfg.HighWater && q.ceiling.Load() {
		q.ceiling.Store(false)
	}
	if q.dataBytes > q.cfg.HighWater {
		q.congested = true
	} else if q.dataBytes < q.cfg.LowWater {
		q.congested = false
	}
}

// PopBatch appends entries to dst in push order and returns it: at least
// one entry if any is queued, then more while the live bytes taken stay
// within maxBytes. Tombstones count zero bytes (the drainer writes a gap
// notice, not the event). Only the owning event loop may call it. It does
// not allocate when dst has room; entries it hands out are cleared from
// their slots so the queue keeps no reference to them.
func (q *Queue[T]) PopBatch(dst []Entry[T], maxBytes int) []Entry[T] {
	q.mu.Lock()
	defer q.mu.Unlock()
	taken, total := 0, 0
	for q.n > 0 {
		e := &q.buf[q.head]
		cost := e.Size
		if e.Evicted {
			cost = 0
		}
		if taken > 0 && cost > maxBytes-total {
			break
		}
		dst = append(dst, *e)
		q.release(e)
		taken++
		total += cost
	}
	q.afterPop(taken)
	return dst
}

// Pop removes and returns the oldest entry. Only the owning event loop may
// call it.
func (q *Queue[T]) Pop() (Entry[T], bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 {
		return Entry[T]{}, false
	}
	e := &q.buf[q.head]
	out := *e
	q.release(e)
	q.afterPop(1)
	return out, true
}

// release accounts for and clears the head entry e and advances head.
// Precondition: q.mu held, q.n > 0, e == &q.buf[q.head].
func (q *Queue[T]) release(e *Entry[T]) {
	if !e.Evicted {
		if e.Class == Data {
			q.dataBytes -= e.Size
		} else {
			q.ctrlBytes -= e.Size
		}
	}
	*e = Entry[T]{}
	q.head++
	if q.head == len(q.buf) {
		q.head = 0
	}
	q.n--
}

// afterPop finishes a pop of taken entries. Precondition: q.mu held.
func (q *Queue[T]) afterPop(taken int) {
	q.scan = max(0, q.scan-taken)
	q.popped += uint64(taken)
	if q.n == 0 {
		q.head = 0
		if len(q.buf) > releaseAbove {
			q.buf = nil
		}
	}
	q.updateLatch()
}

// Trim releases the slot array of an empty queue whatever its size: a
// consumer that stopped reading keeps no array for pushes it will not
// take (one that drains to empty otherwise keeps up to releaseAbove
// slots). Safe from any goroutine.
func (q *Queue[T]) Trim() {
	q.mu.Lock()
	if q.n == 0 {
		q.buf, q.head = nil, 0
	}
	q.mu.Unlock()
}

// Len returns the number of queued entries, tombstones included. Safe from
// any goroutine.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// Bytes returns the live data bytes and the control bytes queued. Safe from
// any goroutine.
func (q *Queue[T]) Bytes() (data, control int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dataBytes, q.ctrlBytes
}

// Level is a snapshot of a queue's occupancy and counters, taken under one
// lock.
type Level struct {
	// Items is the number of queued entries, tombstones included.
	Items int
	// DataBytes and ControlBytes are the live bytes queued per class.
	DataBytes, ControlBytes int
	// Stats are the counters since New.
	Stats Stats
}

// Level returns the queue's occupancy and counters at once. Safe from any
// goroutine.
func (q *Queue[T]) Level() Level {
	q.mu.Lock()
	defer q.mu.Unlock()
	return Level{Items: q.n, DataBytes: q.dataBytes, ControlBytes: q.ctrlBytes, Stats: q.statsLocked()}
}

// AtCeiling reports whether a data push had to evict (or found no free
// slot) since the queue was last at or under HighWater: it is full, and
// not draining. It takes no lock, so a pusher asks it after each push at
// no cost to the others. Safe from any goroutine.
func (q *Queue[T]) AtCeiling() bool { return q.ceiling.Load() }

// AboveHigh reports whether live data bytes exceed HighWater right now.
// Safe from any goroutine.
func (q *Queue[T]) AboveHigh() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dataBytes > q.cfg.HighWater
}

// BelowLow reports whether live data bytes are under LowWater right now.
// Between the two watermarks neither AboveHigh nor BelowLow holds, which is
// the hysteresis band: the caller makes no health observation there. Safe
// from any goroutine.
func (q *Queue[T]) BelowLow() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dataBytes < q.cfg.LowWater
}

// Congested is the latched form of the watermarks: it turns true when live
// data bytes exceed HighWater and false only once they fall under LowWater,
// so a queue hovering between the two does not flap. Safe from any
// goroutine.
func (q *Queue[T]) Congested() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.congested
}

// Stats returns a snapshot of the counters. Safe from any goroutine.
func (q *Queue[T]) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.statsLocked()
}

// Close discards every queued entry (dropping the queue's references so the
// messages can be collected) and makes further pushes return ErrClosed.
// Safe from any goroutine; idempotent.
func (q *Queue[T]) Close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.buf = nil
	q.head, q.n, q.scan = 0, 0, 0
	q.dataBytes, q.ctrlBytes = 0, 0
	q.congested = false
}
