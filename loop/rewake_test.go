package loop

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestWakeHeapOrder: the blocked connections come out of the heap in due
// order whatever order they went in, so rewake stops at the first one not
// due and never walks the stalled ones in between.
func TestWakeHeapOrder(t *testing.T) {
	var h wakeHeap
	r := rand.New(rand.NewPCG(1, 2))
	var want []int64
	for range 1000 {
		at := r.Int64N(1e9)
		want = append(want, at)
		h.push(wakeEntry{at: at})
	}
	slices.Sort(want)
	for i, at := range want {
		if got := h.pop(); got.at != at {
			t.Fatalf("pop %d: at %d, want %d", i, got.at, at)
		}
	}
	if len(h) != 0 || cap(h) > 64 {
		t.Fatalf("emptied heap holds len %d cap %d; a drained burst should not keep its array", len(h), cap(h))
	}
}

// TestRewakeSkipsStale: rewake wakes only connections still blocked whose
// entry is their current one; a closed connection's entry is dropped.
func TestRewakeSkipsStale(t *testing.T) {
	s := &Server{blocked: make(map[*conn]struct{})}
	gone := &conn{srv: s}
	s.markBlocked(gone)
	s.mu.Lock()
	delete(s.blocked, gone) // closed (OnClose)
	at := gone.wakeAt
	s.mu.Unlock()
	s.rewake(timeAt(at)) // a woken gone conn would dereference its nil gnet.Conn
	if len(s.wakes) != 0 {
		t.Fatalf("%d entries left after the due one was skipped", len(s.wakes))
	}
}

func timeAt(unixNano int64) time.Time { return time.Unix(0, unixNano) }
