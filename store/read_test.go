package store

import (
	"bytes"
	"errors"
	"sync"
	"testing"
)

// readAll reads sid's events in (after, upto] with ReadLog, chunk by
// chunk, as a catching-up reader would, checking each call's contract.
func readAll(t *testing.T, s *Store, sid string, after, upto uint64, chunk, maxBytes int) []Event {
	t.Helper()
	var out []Event
	for cur := after; cur < upto; {
		var got []Event
		covered, err := s.ReadLog(sid, cur, upto, chunk, maxBytes, func(seq uint64, b []byte) {
			got = append(got, Event{Seq: seq, Body: bytes.Clone(b)})
		})
		if err != nil {
			t.Fatalf("ReadLog(%s, %d, %d): %v", sid, cur, upto, err)
		}
		if len(got) > chunk {
			t.Fatalf("ReadLog returned %d events, over the %d asked", len(got), chunk)
		}
		if covered < upto && (len(got) == 0 || got[len(got)-1].Seq != covered) {
			t.Fatalf("ReadLog stopped at %d before %d, but its last event is %v", covered, upto, got)
		}
		if covered <= cur {
			t.Fatalf("ReadLog made no progress from %d", cur)
		}
		for _, e := range got {
			if e.Seq <= cur || e.Seq > covered {
				t.Fatalf("event %d outside (%d, %d]", e.Seq, cur, covered)
			}
			cur = e.Seq
		}
		out = append(out, got...)
		cur = covered
	}
	return out
}

// checkRange asserts that got is exactly sid's events with seq in want
// (ascending), bodies included.
func checkRange(t *testing.T, sid string, got []Event, want []uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: read %d events, want %d", sid, len(got), len(want))
	}
	for i, e := range got {
		if e.Seq != want[i] || !bytes.Equal(e.Body, body(sid, int(want[i]))) {
			t.Fatalf("%s: event %d is seq %d %q, want seq %d", sid, i, e.Seq, e.Body, want[i])
		}
	}
}

// holey reports whether seq i is one the tests never append: holes like
// the ones a full queue leaves.
func holey(i int) bool { return i%97 == 0 || (i > 1200 && i < 1260) }

// TestReadLogAcrossSegmentsAndRestart: three interleaved sessions over
// many small segments, compacted as retention drops their oldest events,
// read by seq range in small chunks: every kept event once, in order, the
// holes skipped; the same after a restart.
func TestReadLogAcrossSegmentsAndRestart(t *testing.T) {
	dir := t.TempDir()
	o := Options{MaxEvents: 1500, MaxBytes: 1 << 20, SegmentBytes: 8 << 10}
	s, _ := mustOpen(t, dir, o)
	ids := []string{"a", "b:\x00weird", "c"}
	const n = 3000
	for i := 1; i <= n; i++ {
		for _, id := range ids {
			if !holey(i) {
				s.Append(id, uint64(i), body(id, i))
			}
		}
	}
	expect := func(from int) []uint64 {
		var w []uint64
		for i := from; i <= n; i++ {
			if !holey(i) {
				w = append(w, uint64(i))
			}
		}
		return w
	}
	check := func(s *Store, oldest int) {
		for _, id := range ids {
			got := readAll(t, s, id, 0, n, 37, 1<<20)
			if len(got) == 0 {
				t.Fatalf("%s: nothing read", id)
			}
			first := int(got[0].Seq)
			if first > oldest {
				t.Fatalf("%s: reads start at %d, but retention keeps from %d", id, first, oldest)
			}
			checkRange(t, id, got, expect(first))
			// A range inside: from the middle of a run to before the end.
			mid := readAll(t, s, id, 2000, 2500, 5, 1<<20)
			var w []uint64
			for _, x := range expect(2001) {
				if x <= 2500 {
					w = append(w, x)
				}
			}
			checkRange(t, id, mid, w)
		}
	}
	// Retention keeps at least the last 1,500 events (whole runs: maybe
	// more) of each session.
	check(s, n-1500+1)
	if s.Stats().Segments < 10 || s.Stats().Compactions == 0 {
		t.Fatalf("want many segments and compactions: %+v", s.Stats())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, ss := mustOpen(t, dir, o)
	for _, id := range ids {
		x := find(ss, id)
		if x == nil || len(x.Events) != 1500 {
			t.Fatalf("%s: recovered %v", id, x)
		}
	}
	check(s2, n-1500+1)
	// Appends after the restart are read too, across the old and the new
	// segments.
	for i := n + 1; i <= n+100; i++ {
		s2.Append("a", uint64(i), body("a", i))
	}
	got := readAll(t, s2, "a", n-10, n+100, 1000, 1<<20)
	var w []uint64
	for i := n - 9; i <= n+100; i++ {
		w = append(w, uint64(i))
	}
	checkRange(t, "a", got, w)
}

// TestReadLogBounds: the count and byte bounds, an unknown session, an
// empty range, and a closed store.
func TestReadLogBounds(t *testing.T) {
	s, _ := mustOpen(t, t.TempDir(), Options{})
	for i := 1; i <= 100; i++ {
		s.Append("a", uint64(i), body("a", i))
	}
	var seqs []uint64
	covered, err := s.ReadLog("a", 10, 100, 1000, 1, func(seq uint64, _ []byte) { seqs = append(seqs, seq) })
	if err != nil || covered != 11 || len(seqs) != 1 || seqs[0] != 11 {
		t.Fatalf("one byte allowed: covered %d, %v, %v; want one event (11)", covered, seqs, err)
	}
	seqs = nil
	covered, err = s.ReadLog("a", 0, 50, 7, 1<<20, func(seq uint64, _ []byte) { seqs = append(seqs, seq) })
	if err != nil || covered != 7 || len(seqs) != 7 {
		t.Fatalf("7 events allowed: covered %d, %v, %v", covered, seqs, err)
	}
	covered, err = s.ReadLog("nobody", 3, 9, 10, 1<<20, func(uint64, []byte) { t.Fatal("an event of an unknown session") })
	if err != nil || covered != 9 {
		t.Fatalf("unknown session: covered %d, %v; want the whole range (9)", covered, err)
	}
	covered, err = s.ReadLog("a", 9, 9, 10, 1<<20, func(uint64, []byte) { t.Fatal("an event of an empty range") })
	if err != nil || covered != 9 {
		t.Fatalf("empty range: %d, %v", covered, err)
	}
	// Past the last event on disk: covered, nothing read.
	seqs = nil
	covered, err = s.ReadLog("a", 95, 200, 100, 1<<20, func(seq uint64, _ []byte) { seqs = append(seqs, seq) })
	if err != nil || covered != 200 || len(seqs) != 5 {
		t.Fatalf("past the end: covered %d, %v, %v", covered, seqs, err)
	}
	s.Close()
	if _, err := s.ReadLog("a", 0, 10, 10, 1<<20, func(uint64, []byte) {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}

// TestReadLogBesideWriter: a reader follows a writer that appends,
// rotates and compacts at the same time; each read sees everything
// appended before it, in order, with no duplicate (run with -race).
func TestReadLogBesideWriter(t *testing.T) {
	s, _ := mustOpen(t, t.TempDir(), Options{MaxEvents: 4000, SegmentBytes: 16 << 10, QueueRecords: 1 << 20})
	const n = 20000
	var (
		mu  sync.Mutex
		top uint64 // the last seq appended
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= n; i++ {
			s.Append("w", uint64(i), body("w", i))
			s.Append("other", uint64(i), body("other", i))
			mu.Lock()
			top = uint64(i)
			mu.Unlock()
		}
	}()
	cur := uint64(0)
	for cur < n {
		mu.Lock()
		upto := top
		mu.Unlock()
		if upto <= cur {
			continue
		}
		var got []uint64
		covered, err := s.ReadLog("w", cur, upto, 300, 1<<20, func(seq uint64, b []byte) {
			if !bytes.Equal(b, body("w", int(seq))) {
				t.Errorf("seq %d: body %q", seq, b)
			}
			got = append(got, seq)
		})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		now := top
		mu.Unlock()
		for _, seq := range got {
			// A reader that fell behind retention (the last 4,000
			// events) skips what was dropped; otherwise every event
			// comes once, in order.
			if seq != cur+1 && cur+1+4000 > now {
				t.Fatalf("after %d came %d, though retention keeps from %d", cur, seq, now-4000)
			}
			cur = seq
		}
		if covered != cur && covered != upto {
			t.Fatalf("covered %d, last event %d, range end %d", covered, cur, upto)
		}
		if len(got) == 0 && cur+1+4000 > now {
			t.Fatalf("(%d, %d] appended before the read and within retention, but none of it was read", cur, upto)
		}
		cur = covered
	}
	<-done
}
