package session

import (
	"sort"

	"github.com/agentbridge/agentbridge/wire"
)

// eventLog keeps the last events of a session for replay, bounded in count
// and bytes. Seqs ascend; a log restored from disk may have holes (events
// that were never persisted), which attach reports as bridge/gap. Guarded
// by the hub mutex.
type eventLog struct {
	buf      []*wire.Msg // circular; len(buf) is the capacity once grown
	head     int         // index of the oldest event
	n        int
	bytes    int
	maxCount int
	maxBytes int
}

func newEventLog(maxCount, maxBytes int) *eventLog {
	return &eventLog{maxCount: maxCount, maxBytes: maxBytes}
}

func (l *eventLog) append(m *wire.Msg) {
	if l.maxCount <= 0 {
		return
	}
	for l.n > 0 && (l.n >= l.maxCount || l.bytes+m.Size() > l.maxBytes) {
		l.dropOldest()
	}
	if l.n == len(l.buf) {
		l.grow()
	}
	l.buf[(l.head+l.n)%len(l.buf)] = m
	l.n++
	l.bytes += m.Size()
}

func (l *eventLog) grow() {
	size := len(l.buf) * 2
	if size == 0 {
		size = 16
	}
	if size > l.maxCount {
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
	l.bytes -= m.Size()
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
