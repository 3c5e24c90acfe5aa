package session

import (
	"sort"
	"sync/atomic"

	"github.com/agentbridge/agentbridge/wire"
)

// eventLog keeps the last events of a session for replay and catch-up,
// bounded in bytes (per session, and with every other log by the hub's
// memory budget) and optionally in count. Seqs ascend; a log restored from
// disk may have holes (events that were never persisted), which attach
// reports as bridge/gap. Guarded by the hub mutex.
type eventLog struct {
	buf      []*wire.Msg // circular; len(buf) is the capacity once grown
	head     int         // index of the oldest event
	n        int
	bytes    int // cost of the kept events (eventCost)
	maxCount int // 0: no count limit
	maxBytes int
	budget   *logBudget // shared by every log of the hub
}

// eventOverhead is what a kept event costs beside its bytes: the Msg
// header and its slot, so a flood of tiny events is bounded too.
const eventOverhead = 96

func eventCost(m *wire.Msg) int { return m.Size() + eventOverhead }

// logBudget is the memory every session log of a hub may hold together
// (--replay-memory). used is atomic: logs of different sessions grow
// under their own locks, and Stats reads it without one.
type logBudget struct {
	used atomic.Int64
	max  int64
}

func newEventLog(maxCount, maxBytes int, b *logBudget) *eventLog {
	return &eventLog{maxCount: maxCount, maxBytes: maxBytes, budget: b}
}

func (l *eventLog) append(m *wire.Msg) {
	if l.maxCount < 0 {
		return
	}
	c := eventCost(m)
	for l.n > 0 && ((l.maxCount > 0 && l.n >= l.maxCount) || l.bytes+c > l.maxBytes) {
		l.dropOldest()
	}
	if l.n == len(l.buf) {
		l.grow()
	}
	l.buf[(l.head+l.n)%len(l.buf)] = m
	l.n++
	l.bytes += c
	if l.budget != nil {
		l.budget.used.Add(int64(c))
	}
}

func (l *eventLog) grow() {
	size := len(l.buf) * 2
	if size == 0 {
		size = 16
	}
	if l.maxCount > 0 && size > l.maxCount {
		size = l.maxCount
	}
	nb := make([]*wire.Msg, size)
	for i := 0; i < l.n; i++ {
		nb[i] = l.buf[(l.head+i)%len(l.buf)]
	}
	l.buf, l.head = nb, 0
}

func (l *eventLog) dropOldest() {
	m := l.buf[l.head]
	l.buf[l.head] = nil
	l.head = (l.head + 1) % len(l.buf)
	l.n--
	c := eventCost(m)
	l.bytes -= c
	if l.budget != nil {
		l.budget.used.Add(-int64(c))
	}
	if l.n == 0 {
		l.buf, l.head = nil, 0 // an emptied log gives its array back
	} else if l.n < len(l.buf)/4 && len(l.buf) > 64 {
		l.shrink()
	}
}

// release empties the log of a session the hub forgets, giving its bytes
// back to the budget.
func (l *eventLog) release() {
	for l.n > 0 {
		l.dropOldest()
	}
}

// shrink halves the array of a log that lost most of its events to the
// budget, so the memory it freed is really freed.
func (l *eventLog) shrink() {
	nb := make([]*wire.Msg, len(l.buf)/2)
	for i := 0; i < l.n; i++ {
		nb[i] = l.buf[(l.head+i)%len(l.buf)]
	}
	l.buf, l.head = nb, 0
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

func (l *eventLog) at(i int) *wire.Msg { return l.buf[(l.head+i)%len(l.buf)] }

// oldest returns the seq of the oldest kept event, 0 if empty.
func (l *eventLog) oldest() uint64 {
	if l.n == 0 {
		return 0
	}
	return l.at(0).Seq
}

// since returns the kept events with seq > after, in order.
func (l *eventLog) since(after uint64) []*wire.Msg {
	// Binary search rather than arithmetic on the first seq: holes.
	start := sort.Search(l.n, func(i int) bool { return l.at(i).Seq > after })
	if start >= l.n {
		return nil
	}
	out := make([]*wire.Msg, 0, l.n-start)
	for i := start; i < l.n; i++ {
		out = append(out, l.at(i))
	}
	return out
}

// sinceN returns up to n events (and about maxBytes) with seq > after.
func (l *eventLog) sinceN(after uint64, n, maxBytes int) []*wire.Msg {
	start := sort.Search(l.n, func(i int) bool { return l.at(i).Seq > after })
	var out []*wire.Msg
	bytes := 0
	for i := start; i < l.n && len(out) < n && (len(out) == 0 || bytes < maxBytes); i++ {
		m := l.at(i)
		out = append(out, m)
		bytes += m.Size()
	}
	return out
}

// countSince is how many kept events have seq > after.
func (l *eventLog) countSince(after uint64) int {
	return l.n - sort.Search(l.n, func(i int) bool { return l.at(i).Seq > after })
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
		out = append(out, l.at(i))
	}
	return out
}
