package session

import (
	"github.com/agentbridge/agentbridge/wire"
)

// LogReader reads the events of a session its Journal persisted, by seq
// range (store.Store, --state-dir). A connection catching up (onSlow
// "catchup", bridge/attach {since}, SSE Last-Event-ID) whose cursor is
// older than what the session's memory log still holds is fed from it, in
// order, before it goes on from memory; only what neither holds becomes a
// bridge/gap. The hub uses it when its Journal implements it.
type LogReader interface {
	// ReadLog calls fn, in ascending seq order, for the persisted events
	// of sessionID with after < seq <= upto: at most maxEvents, and no
	// more once they hold maxBytes (at least one). body is borrowed for
	// the call. It returns the highest seq it covered: upto when it went
	// through the whole range (a seq it did not pass to fn is not on
	// disk), else the last seq it passed to fn. It may block on disk I/O:
	// the hub calls it from a goroutine of its own, never under its lock.
	ReadLog(sessionID string, after, upto uint64, maxEvents, maxBytes int, fn func(seq uint64, body []byte)) (uint64, error)
}

// reasonNotKept is the bridge/gap reason of events a connection caught up
// on from disk did not get because neither the memory log nor the state
// directory holds them (past both retentions, or never persisted).
const reasonNotKept = "evicted from the replay log and not in the state directory"

// diskRead is one chunk of a session's log being read from disk for one
// client, or read and not yet queued. Guarded by the session's lock (or
// the hub mutex held exclusively), except that the reading goroutine owns
// events, covered and err while busy and sets them back under the hub
// mutex held exclusively. Client.disk itself is guarded by Client.cmu.
type diskRead struct {
	after, upto uint64 // the range asked: (after, upto]
	busy        bool   // the read is running
	events      []*wire.Msg
	next        int    // events[next:] are not queued yet
	covered     uint64 // what the read went through (LogReader.ReadLog)
	err         error
}

// logReader is what feeds s's catching-up clients from disk, nil when
// nothing can: no journal that reads, or a session it never persisted.
// Precondition: h.mu held.
func (h *Hub) logReader(s *Session) LogReader {
	r, ok := h.cfg.Journal.(LogReader)
	if !ok || !s.journaled() {
		return nil
	}
	return r
}

// memFloor is the oldest seq s's memory log can replay: its oldest event,
// or the next seq when it holds none. Precondition: h.mu held.
func memFloor(s *Session) uint64 {
	if s.log.n > 0 {
		return s.log.oldest()
	}
	return s.seq + 1
}

// diskSpan is how many seqs after cursor a catch-up from s reads from
// disk, before the memory log takes over: attach counts them as replayed
// (each arrives as an event, or within a bridge/gap if the disk lacks it).
// Precondition: h.mu held.
func (h *Hub) diskSpan(s *Session, cursor uint64) int {
	if floor := memFloor(s); cursor+1 < floor && h.logReader(s) != nil {
		return int(floor - 1 - cursor)
	}
	return 0
}

// pumpDisk queues the next chunk of s's events after cl's cursor cur from
// disk, up to upto (the seq before the memory log's oldest): the chunk
// read last time, or else it starts reading one off the lock and reports
// false (the read wakes cl's transport when it is done). It reports
// whether it queued anything. Precondition: h.mu held exclusively, or
// shared with s.mu; s in cl.catchup.
func (h *Hub) pumpDisk(cl *Client, s *Session, cur, upto uint64, r LogReader) bool {
	cl.cmu.Lock()
	d := cl.disk[s]
	cl.cmu.Unlock()
	if d != nil && d.busy {
		return false
	}
	if d == nil || d.after != cur {
		h.readDisk(cl, s, cur, upto, r)
		return false
	}
	next, queued := cur+1, false
	for ; d.next < len(d.events); d.next++ {
		m := d.events[d.next]
		if m.Seq > next {
			h.send(cl, wire.GapMsg(s.ID, next, m.Seq-1, reasonNotKept), wire.Control)
		}
		if !h.queueEvent(cl, s, m) {
			// The queue is full again: the rest waits for the next pump.
			d.after = m.Seq - 1
			h.setCursor(cl, s, d.after)
			return queued || m.Seq > next
		}
		h.st.deliveries.Add(1)
		next, queued = m.Seq+1, true
	}
	end := d.covered
	reason := reasonNotKept
	if d.err != nil {
		// What could not be read is named, not waited for for ever.
		h.log.Warn("catch-up: cannot read a session's events from the state directory; the connection gets a gap for them", "session", s.ID, "from", d.covered+1, "to", d.upto, "err", d.err)
		end, reason = d.upto, "the state directory could not be read: "+d.err.Error()
	}
	if end >= next {
		h.send(cl, wire.GapMsg(s.ID, next, end, reason), wire.Control)
		next = end + 1
	}
	cl.cmu.Lock()
	delete(cl.disk, s)
	cl.cmu.Unlock()
	h.setCursor(cl, s, next-1)
	if next > s.seq {
		h.endCatchup(cl, s)
	}
	return true
}

// readDisk starts reading the chunk of s after cur (up to upto) for cl on
// a goroutine of its own, which wakes cl's transport when it is done.
// Precondition: as pumpDisk.
func (h *Hub) readDisk(cl *Client, s *Session, cur, upto uint64, r LogReader) {
	d := &diskRead{after: cur, upto: upto, busy: true}
	cl.cmu.Lock()
	if cl.disk == nil {
		cl.disk = make(map[*Session]*diskRead)
	}
	cl.disk[s] = d
	cl.cmu.Unlock()
	sid := s.ID
	wake, _ := cl.conn.(Waker)
	go func() {
		var events []*wire.Msg
		covered, err := r.ReadLog(sid, cur, upto, pumpEvents, pumpBytes, func(seq uint64, body []byte) {
			m := wire.New(body)
			m.SessionID, m.Seq = sid, seq
			events = append(events, m)
		})
		h.mu.Lock() // exclusively: no pump reads d meanwhile
		d.events, d.covered, d.err, d.busy = events, covered, err, false
		cl.cmu.Lock()
		current := !cl.closed && cl.disk[s] == d
		cl.cmu.Unlock()
		h.mu.Unlock()
		if current && wake != nil {
			wake.Wake()
		}
	}()
}
