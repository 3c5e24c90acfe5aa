package session

import (
	"sort"
	"sync/atomic"
	"unsafe"

	"github.com/agentbridge/agentbridge/wire"
)

// eventLog keeps the last events of a session for replay and catch-up,
// bounded in bytes (per session, and with every other log by the hub's
// memory budget) and optionally in count. Seqs ascend; a log restored from
// disk may have holes (events that were never persisted), which attach
// reports as bridge/gap. Guarded by the hub mutex.
//
// The log keeps an event's line and seq, not the *wire.Msg that was fanned
// out: that Msg caches its encodings (WebSocket frame, SSE event, bridge/event
// envelope) as its recipients ask for them, after publish has returned, so a
// logged Msg would come to hold two or three copies of its bytes that
// --replay-memory never counted. Replay wraps the kept line in a fresh Msg
// (sharing the bytes) that caches for its own recipient and is dropped with
// it: an allocation per replayed event, against a log whose every byte is
// charged to the budget.
type eventLog struct {
	sid      string  // the session's ID, for the Msgs that replay builds
	buf      []entry // circular; len(buf) is the capacity once grown
	head     int     // index of the oldest event
	n        int
	bytes    int // what it holds: lineCost of each event, entrySlot per slot of buf
	maxCount int // 0: no count limit
	maxBytes int
	budget   *logBudget // shared by every log of the hub
}

// entry is one kept event: its NDJSON line (shared with the Msg it came in,
// never modified) and its seq.
type entry struct {
	line []byte
	seq  uint64
}

// entrySlot is what an entry costs in buf beside its line. The log is
// charged for every slot of buf, used or not: a ring grown by doubling may
// be up to twice (and, before it shrinks, four times) its count.
const entrySlot = int(unsafe.Sizeof(entry{}))

// lineCost is what a kept line holds: its bytes, rounded up by an eighth
// for the allocator's size classes (spaced at most 1/8 apart above 128
// bytes).
func lineCost(line []byte) int { return len(line) + len(line)/8 }

// logBudget is the memory every session log of a hub may hold together
// (--replay-memory). used is atomic: logs of different sessions grow
// under their own locks, and Stats reads it without one.
type logBudget struct {
	used atomic.Int64
	max  int64
}

func newEventLog(sid string, maxCount, maxBytes int, b *logBudget) *eventLog {
	return &eventLog{sid: sid, maxCount: maxCount, maxBytes: maxBytes, budget: b}
}

// append keeps m's line and seq (not m: see eventLog).
func (l *eventLog) append(m *wire.Msg) {
	if l.maxCount < 0 {
		return
	}
	e := entry{line: m.Line(), seq: m.Seq}
	c := lineCost(e.line)
	for l.n > 0 && ((l.maxCount > 0 && l.n >= l.maxCount) || l.bytes+c+l.growth() > l.maxBytes) {
		l.dropOldest()
	}
	if l.n == len(l.buf) {
		l.resize(l.grownSize())
	}
	l.buf[(l.head+l.n)%len(l.buf)] = e
	l.n++
	l.charge(c)
}

// charge adds c bytes (negative: gives them back) to the log and its budget.
func (l *eventLog) charge(c int) {
	l.bytes += c
	if l.budget != nil {
		l.budget.used.Add(int64(c))
	}
}

// grownSize is the size of buf after it grows by one step.
func (l *eventLog) grownSize() int {
	size := len(l.buf) * 2
	if size == 0 {
		size = 16
	}
	if l.maxCount > 0 && size > l.maxCount {
		size = l.maxCount
	}
	return size
}

// growth is what appending one more event would cost in slots: the growth
// of a full buf.
func (l *eventLog) growth() int {
	if l.n < len(l.buf) {
		return 0
	}
	return (l.grownSize() - len(l.buf)) * entrySlot
}

// resize moves the kept events to an array of size slots (nil for 0) and
// charges the difference.
func (l *eventLog) resize(size int) {
	var nb []entry
	if size > 0 {
		nb = make([]entry, size)
	}
	for i := 0; i < l.n; i++ {
		nb[i] = l.buf[(l.head+i)%len(l.buf)]
	}
	l.charge((size - len(l.buf)) * entrySlot)
	l.buf, l.head = nb, 0
}

func (l *eventLog) dropOldest() {
	c := lineCost(l.buf[l.head].line)
	l.buf[l.head] = entry{}
	l.head = (l.head + 1) % len(l.buf)
	l.n--
	l.charge(-c)
	if l.n == 0 {
		l.resize(0) // an emptied log gives its array back
	} else if l.n < len(l.buf)/4 && len(l.buf) > 64 {
		// Most of it went to the budget: halve the array so the memory
		// it freed is really freed.
		l.resize(len(l.buf) / 2)
	}
}

// release empties the log of a session the hub forgets, giving its bytes
// back to the budget.
func (l *eventLog) release() {
	for l.n > 0 {
		l.dropOldest()
	}
}

// trimLogs enforces the hub's memory budget after an append: while the
// logs together hold more than it, the oldest events of the largest log
// go first, down to 1/64 under the budget so that the scan of the sessions
// runs once per that much appended, not per event. It takes trimMu and
// each session's lock in turn (logs grow under their own session's lock).
// Precondition: h.mu held, either way; no session's lock held.
func (h *Hub) trimLogs() {
	b := &h.logs
	if b.used.Load() <= b.max {
		return
	}
	h.trimMu.Lock()
	defer h.trimMu.Unlock()
	target := b.max - b.max/64
	for b.used.Load() > target {
		var big *Session
		bigBytes, floor := 0, 0 // the largest log, and the next largest
		for _, s := range h.sessions {
			s.mu.Lock()
			n := s.log.bytes
			s.mu.Unlock()
			switch {
			case big == nil || n > bigBytes:
				big, bigBytes, floor = s, n, bigBytes
			case n > floor:
				floor = n
			}
		}
		if big == nil {
			return
		}
		// Down to the next largest (or the target), then look again.
		big.mu.Lock()
		l := big.log
		if l.n == 0 {
			big.mu.Unlock()
			return
		}
		l.dropOldest()
		for l.n > 0 && b.used.Load() > target && l.bytes >= floor {
			l.dropOldest()
		}
		big.mu.Unlock()
	}
}

func (l *eventLog) at(i int) *entry { return &l.buf[(l.head+i)%len(l.buf)] }

// msg wraps the i-th kept event in a Msg of its own for one replay: it
// shares the line and caches only for as long as its recipient keeps it.
func (l *eventLog) msg(i int) *wire.Msg {
	e := l.at(i)
	m := wire.Own(e.line)
	m.SessionID, m.Seq = l.sid, e.seq
	return m
}

// oldest returns the seq of the oldest kept event, 0 if empty.
func (l *eventLog) oldest() uint64 {
	if l.n == 0 {
		return 0
	}
	return l.at(0).seq
}

// first is the index of the first kept event with seq > after.
func (l *eventLog) first(after uint64) int {
	// Binary search rather than arithmetic on the first seq: holes.
	return sort.Search(l.n, func(i int) bool { return l.at(i).seq > after })
}

// since returns the kept events with seq > after, in order.
func (l *eventLog) since(after uint64) []*wire.Msg {
	start := l.first(after)
	if start >= l.n {
		return nil
	}
	out := make([]*wire.Msg, 0, l.n-start)
	for i := start; i < l.n; i++ {
		out = append(out, l.msg(i))
	}
	return out
}

// sinceN returns up to n events (and about maxBytes) with seq > after.
func (l *eventLog) sinceN(after uint64, n, maxBytes int) []*wire.Msg {
	var out []*wire.Msg
	bytes := 0
	for i := l.first(after); i < l.n && len(out) < n && (len(out) == 0 || bytes < maxBytes); i++ {
		m := l.msg(i)
		out = append(out, m)
		bytes += m.Size()
	}
	return out
}

// countSince is how many kept events have seq > after.
func (l *eventLog) countSince(after uint64) int {
	return l.n - l.first(after)
}

// lastSpan is where the last k events start: the seq of the first of them
// and how many there are (0, 0 for none), without building their Msgs.
func (l *eventLog) lastSpan(k int) (first uint64, n int) {
	k = min(k, l.n)
	if k <= 0 {
		return 0, 0
	}
	return l.at(l.n - k).seq, k
}

// last returns the last k events, in order.
func (l *eventLog) last(k int) []*wire.Msg {
	if k > l.n {
		k = l.n
	}
	if k <= 0 {
		return nil
	}
	out := make([]*wire.Msg, 0, k)
	for i := l.n - k; i < l.n; i++ {
		out = append(out, l.msg(i))
	}
	return out
}
