package ring

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

type msg struct {
	id int
}

func popAll(q *Queue[*msg]) []Entry[*msg] {
	return q.PopBatch(nil, 1<<62)
}

// ids renders entries as "id" or "~id" (evicted) with a class prefix, so a
// whole queue can be compared as one string.
func ids(es []Entry[*msg]) string {
	s := ""
	for i, e := range es {
		if i > 0 {
			s += " "
		}
		if e.Class == Control {
			s += "c"
		} else {
			s += "d"
		}
		if e.Evicted {
			s += "~"
		}
		s += fmt.Sprint(e.V.id)
	}
	return s
}

func mustPush(t *testing.T, q *Queue[*msg], id, size int, c Class) bool {
	t.Helper()
	wasEmpty, err := q.Push(&msg{id}, size, c)
	if err != nil {
		t.Fatalf("Push(%d, %d, %v): %v", id, size, c, err)
	}
	return wasEmpty
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	got := Config{}.WithDefaults()
	want := Config{MaxItems: 4096, MaxDataBytes: 1 << 20, MaxControlBytes: 4 << 20, HighWater: 3 << 18, LowWater: 1 << 18}
	if got != want {
		t.Fatalf("defaults = %+v, want %+v", got, want)
	}
	bad := []struct {
		cfg  Config
		want string
	}{
		{Config{MaxItems: -1}, "MaxItems -1"},
		{Config{MaxDataBytes: -5}, "MaxDataBytes -5"},
		{Config{MaxControlBytes: -1}, "MaxControlBytes -1"},
		{Config{MaxDataBytes: 100, HighWater: 100}, "HighWater 100"},
		{Config{MaxDataBytes: 100, HighWater: 50, LowWater: 50}, "LowWater 50"},
		{Config{MaxDataBytes: 100, LowWater: -1}, "LowWater -1"},
		{Config{MaxDataBytes: 3}, "LowWater 0"},
	}
	for _, tc := range bad {
		err := tc.cfg.Validate()
		if !errors.Is(err, ErrBadConfig) {
			t.Errorf("Validate(%+v) = %v, want ErrBadConfig", tc.cfg, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %q, want it to name %q", tc.cfg, err, tc.want)
		}
	}
	if err := (Config{MaxDataBytes: 4}).Validate(); err != nil {
		t.Errorf("smallest valid config: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Error("New with a bad config did not panic")
		}
	}()
	New[*msg](Config{MaxItems: -1})
}

func TestOrderAcrossClasses(t *testing.T) {
	q := New[*msg](Config{})
	for i := range 10 {
		c := Data
		if i%3 == 2 {
			c = Control
		}
		mustPush(t, q, i, 10, c)
	}
	got := ids(popAll(q))
	want := "d0 d1 c2 d3 d4 c5 d6 d7 c8 d9"
	if got != want {
		t.Fatalf("order = %q, want %q", got, want)
	}
}

func TestEvictOldestDataOnly(t *testing.T) {
	q := New[*msg](Config{MaxDataBytes: 100, HighWater: 60, LowWater: 20})
	mustPush(t, q, 1, 40, Data)
	mustPush(t, q, 2, 30, Control)
	mustPush(t, q, 3, 40, Data)
	mustPush(t, q, 4, 500, Control) // control bytes do not count against data
	// 80 live data bytes; 50 more needs 30 freed: evict 1 only (40).
	mustPush(t, q, 5, 50, Data)
	if d, c := q.Bytes(); d != 90 || c != 530 {
		t.Fatalf("Bytes = %d, %d; want 90, 530", d, c)
	}
	// 90 + 60 needs 50 freed: evict 3 (40), then 5 (50); 1 is already gone.
	mustPush(t, q, 6, 60, Data)
	if d, _ := q.Bytes(); d != 60 {
		t.Fatalf("data bytes = %d, want 60", d)
	}
	got := ids(popAll(q))
	want := "d~1 c2 d~3 c4 d~5 d6"
	if got != want {
		t.Fatalf("queue = %q, want %q", got, want)
	}
	st := q.Stats()
	if st.Lost[ReasonCeiling] != 3 || st.Pushed != 6 || st.Popped != 6 {
		t.Fatalf("stats = %+v", st)
	}
	if d, c := q.Bytes(); d != 0 || c != 0 {
		t.Fatalf("after drain Bytes = %d, %d", d, c)
	}
}

func TestEvictionResumesAfterPartialPop(t *testing.T) {
	q := New[*msg](Config{MaxDataBytes: 100, HighWater: 60, LowWater: 20})
	for i := range 10 {
		mustPush(t, q, i, 10, Data)
	}
	mustPush(t, q, 10, 10, Data) // evicts 0
	if got := ids(q.PopBatch(nil, 0)); got != "d~0" {
		t.Fatalf("first pop = %q", got)
	}
	if got := ids(q.PopBatch(nil, 25)); got != "d1 d2" {
		t.Fatalf("second pop = %q", got)
	}
	mustPush(t, q, 11, 30, Data) // 80 live; needs 10 freed: evicts 3
	mustPush(t, q, 12, 30, Data) // 100 live; needs 30 freed: evicts 4 5 6
	got := ids(popAll(q))
	want := "d~3 d~4 d~5 d~6 d7 d8 d9 d10 d11 d12"
	if got != want {
		t.Fatalf("queue = %q, want %q", got, want)
	}
}

func TestTooLargeQueuedAsTombstone(t *testing.T) {
	q := New[*msg](Config{MaxDataBytes: 100, HighWater: 60, LowWater: 20})
	if !mustPush(t, q, 2, 50, Data) {
		t.Fatal("wasEmpty false on an empty queue")
	}
	mustPush(t, q, 3, 101, Data)
	got := ids(popAll(q))
	if got != "d2 d~3" {
		t.Fatalf("queue = %q, want the big item as a tombstone and 2 kept", got)
	}
	if st := q.Stats(); st.Lost[ReasonTooLarge] != 1 || st.Lost[ReasonCeiling] != 0 {
		t.Fatalf("stats = %+v", st)
	}
	// On an empty queue a too-large item still wakes the drainer.
	if !mustPush(t, q, 4, 1000, Data) {
		t.Fatal("too-large push on empty queue did not report wasEmpty")
	}
}

func TestSlotsFull(t *testing.T) {
	q := New[*msg](Config{MaxItems: 4, MaxDataBytes: 100, HighWater: 60, LowWater: 20})
	for i := range 4 {
		mustPush(t, q, i, 1, Data)
	}
	if _, err := q.Push(&msg{4}, 1, Data); !errors.Is(err, ErrFull) {
		t.Fatalf("data push into full slots: %v, want ErrFull", err)
	}
	if _, err := q.Push(&msg{5}, 1, Control); !errors.Is(err, ErrControlOverflow) {
		t.Fatalf("control push into full slots: %v, want ErrControlOverflow", err)
	}
	st := q.Stats()
	if st.Lost[ReasonFull] != 1 || st.Lost[ReasonControl] != 1 || st.Pushed != 4 {
		t.Fatalf("stats = %+v", st)
	}
	if got := ids(popAll(q)); got != "d0 d1 d2 d3" {
		t.Fatalf("queue = %q", got)
	}
}

func TestControlOverflowBytes(t *testing.T) {
	q := New[*msg](Config{MaxControlBytes: 100})
	mustPush(t, q, 1, 60, Control)
	mustPush(t, q, 2, 40, Control)
	wasEmpty, err := q.Push(&msg{3}, 1, Control)
	if !errors.Is(err, ErrControlOverflow) || wasEmpty {
		t.Fatalf("Push over control ceiling = %v, %v", wasEmpty, err)
	}
	// Data is unaffected by the control ceiling.
	mustPush(t, q, 4, 1000, Data)
	if got := ids(q.PopBatch(nil, 60)); got != "c1" {
		t.Fatalf("pop = %q", got)
	}
	mustPush(t, q, 5, 60, Control)
	if got := ids(popAll(q)); got != "c2 d4 c5" {
		t.Fatalf("queue = %q", got)
	}
}

func TestPopBatchBytes(t *testing.T) {
	q := New[*msg](Config{MaxDataBytes: 1000, HighWater: 600, LowWater: 200})
	mustPush(t, q, 1, 500, Data)
	mustPush(t, q, 2, 400, Data)
	mustPush(t, q, 3, 100, Control)
	mustPush(t, q, 4, 200, Data) // evicts 1
	cases := []struct {
		max  int
		want string
	}{
		{0, "d~1"},    // always at least one
		{0, "d2"},     // at least one even when larger than maxBytes
		{99, "c3"},    // first entry over budget still comes out
		{-1, "d4"},    // a negative budget still yields one entry
		{100, ""},     // empty
		{1 << 30, ""}, // still empty
	}
	for i, tc := range cases {
		if got := ids(q.PopBatch(nil, tc.max)); got != tc.want {
			t.Fatalf("case %d: PopBatch(%d) = %q, want %q", i, tc.max, got, tc.want)
		}
	}
	// Tombstones cost nothing, so a run of them comes out together with the
	// live entry that follows.
	q2 := New[*msg](Config{MaxDataBytes: 10, HighWater: 6, LowWater: 2})
	for i := range 5 {
		mustPush(t, q2, i, 10, Data)
	}
	if got := ids(q2.PopBatch(nil, 10)); got != "d~0 d~1 d~2 d~3 d4" {
		t.Fatalf("tombstone run = %q", got)
	}
	// dst is appended to, not overwritten.
	mustPush(t, q2, 9, 1, Data)
	dst := []Entry[*msg]{{V: &msg{-1}, Class: Data}}
	if got := ids(q2.PopBatch(dst, 10)); got != "d-1 d9" {
		t.Fatalf("append = %q", got)
	}
}

func TestPop(t *testing.T) {
	q := New[*msg](Config{})
	if _, ok := q.Pop(); ok {
		t.Fatal("Pop on empty queue returned an entry")
	}
	mustPush(t, q, 1, 5, Control)
	mustPush(t, q, 2, 7, Data)
	e, ok := q.Pop()
	if !ok || e.V.id != 1 || e.Class != Control || e.Size != 5 || e.Evicted {
		t.Fatalf("Pop = %+v, %v", e, ok)
	}
	if d, c := q.Bytes(); d != 7 || c != 0 {
		t.Fatalf("Bytes = %d, %d", d, c)
	}
	e, ok = q.Pop()
	if !ok || e.V.id != 2 || q.Len() != 0 {
		t.Fatalf("Pop = %+v, %v, len %d", e, ok, q.Len())
	}
}

func TestWasEmptyTransitions(t *testing.T) {
	q := New[*msg](Config{MaxItems: 2, MaxControlBytes: 10})
	steps := []struct {
		do   string // "push-d", "push-c", "pop"
		size int
		want bool
		err  error
	}{
		{"push-d", 1, true, nil},
		{"push-c", 1, false, nil},
		{"push-d", 1, false, ErrFull},
		{"pop", 0, false, nil},
		{"push-d", 1, false, nil},
		{"pop", 0, false, nil},
		{"pop", 0, false, nil}, // now empty
		{"push-c", 11, false, ErrControlOverflow},
		{"push-c", 1, true, nil}, // a refused push did not count as the transition
		{"push-d", 1, false, nil},
	}
	for i, s := range steps {
		switch s.do {
		case "pop":
			q.Pop()
		default:
			c := Data
			if s.do == "push-c" {
				c = Control
			}
			got, err := q.Push(&msg{i}, s.size, c)
			if got != s.want || !errors.Is(err, s.err) {
				t.Fatalf("step %d %s: wasEmpty=%v err=%v, want %v %v", i, s.do, got, err, s.want, s.err)
			}
		}
	}
}

func TestWatermarksHysteresis(t *testing.T) {
	q := New[*msg](Config{MaxDataBytes: 100, HighWater: 75, LowWater: 25})
	type state struct{ above, below, congested bool }
	check := func(step string, want state) {
		t.Helper()
		got := state{q.AboveHigh(), q.BelowLow(), q.Congested()}
		if got != want {
			t.Fatalf("%s: (above, below, congested) = %+v, want %+v", step, got, want)
		}
	}
	check("empty", state{false, true, false})
	mustPush(t, q, 1, 24, Data)
	check("24", state{false, true, false})
	mustPush(t, q, 2, 1, Data)
	check("25: in band", state{false, false, false})
	mustPush(t, q, 3, 50, Data)
	check("75: at high, not above", state{false, false, false})
	mustPush(t, q, 4, 1, Data)
	check("76: above high", state{true, false, true})
	mustPush(t, q, 5, 1000, Control)
	check("control bytes do not count", state{true, false, true})
	q.Pop() // -24 -> 52
	check("52: band on the way down stays congested", state{false, false, true})
	q.Pop() // -1 -> 51
	q.Pop() // -50 -> 1
	check("1: below low", state{false, true, false})
	mustPush(t, q, 6, 60, Data)
	check("61: band on the way up is not congested", state{false, false, false})
	// Eviction also lowers the bytes: a 100-byte push evicts everything.
	mustPush(t, q, 7, 99, Data)
	check("99 after evictions", state{true, false, true})
	mustPush(t, q, 8, 1000, Data) // too large: tombstone, bytes unchanged
	check("too-large tombstone changes nothing", state{true, false, true})
	q.Close()
	check("closed", state{false, true, false})
}

func TestGrowWrapAndRelease(t *testing.T) {
	q := New[*msg](Config{MaxItems: 100, MaxDataBytes: 1 << 20})
	if q.buf != nil {
		t.Fatal("New allocated slots before the first Push")
	}
	next, want := 0, 0
	// Keep the queue partly full while pushing so the array wraps before it
	// grows, then check that growth preserved order.
	for round := range 5 {
		for range 5 + round*8 {
			mustPush(t, q, next, 1, Data)
			next++
		}
		for _, e := range q.PopBatch(nil, 3) {
			if e.V.id != want {
				t.Fatalf("round %d: popped %d, want %d", round, e.V.id, want)
			}
			want++
		}
	}
	if len(q.buf) != 100 {
		t.Fatalf("slots = %d, want capped at MaxItems 100", len(q.buf))
	}
	for _, e := range popAll(q) {
		if e.V.id != want {
			t.Fatalf("popped %d, want %d", e.V.id, want)
		}
		want++
	}
	if want != next {
		t.Fatalf("popped %d of %d", want, next)
	}
	if q.buf != nil {
		t.Fatalf("a %d-slot array survived draining to empty", len(q.buf))
	}
	// Streaming one at a time keeps the small array.
	mustPush(t, q, 0, 1, Data)
	q.Pop()
	if len(q.buf) != initialSlots {
		t.Fatalf("slots after one push/pop = %d, want %d", len(q.buf), initialSlots)
	}
}

func TestPoppedSlotsAreCleared(t *testing.T) {
	q := New[*msg](Config{})
	for i := range 10 {
		mustPush(t, q, i, 1, Data)
	}
	q.PopBatch(nil, 5)
	for i, e := range q.buf {
		if (e.V == nil) != (i < 5 || i >= 10) {
			t.Fatalf("slot %d holds %v", i, e.V)
		}
	}
}

func TestClose(t *testing.T) {
	q := New[*msg](Config{})
	mustPush(t, q, 1, 10, Data)
	mustPush(t, q, 2, 10, Control)
	q.Close()
	q.Close()
	if _, err := q.Push(&msg{3}, 1, Control); !errors.Is(err, ErrClosed) {
		t.Fatalf("Push after Close: %v", err)
	}
	if _, err := q.Push(&msg{3}, 1, Data); !errors.Is(err, ErrClosed) {
		t.Fatalf("Push after Close: %v", err)
	}
	if got := popAll(q); len(got) != 0 || q.Len() != 0 || q.buf != nil {
		t.Fatalf("after Close: popped %d, len %d", len(got), q.Len())
	}
	if d, c := q.Bytes(); d != 0 || c != 0 {
		t.Fatalf("after Close Bytes = %d, %d", d, c)
	}
	if st := q.Stats(); st.Lost[ReasonClosed] != 2 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestPushPanics(t *testing.T) {
	q := New[*msg](Config{})
	for _, tc := range []struct {
		size int
		c    Class
	}{{-1, Data}, {1, Class(7)}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Push(size %d, class %v) did not panic", tc.size, tc.c)
				}
			}()
			q.Push(&msg{}, tc.size, tc.c)
		}()
	}
}

func TestStrings(t *testing.T) {
	for v, want := range map[fmt.Stringer]string{
		Control: "control", Data: "data", Class(9): "Class(9)",
		ReasonCeiling: "ceiling", ReasonTooLarge: "too_large", ReasonFull: "full",
		ReasonControl: "control_overflow", ReasonClosed: "closed", ReasonWouldEvict: "would_evict",
		ReasonPurged: "purged", NumReasons: "Reason(7)",
	} {
		if got := v.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}

// TestRandomAgainstModel drives the queue and a naive model (a slice,
// evicting by linear scan) with the same random operations and compares
// every popped batch and every counter.
func TestRandomAgainstModel(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		cfg := Config{MaxItems: 1 + r.IntN(40), MaxDataBytes: 40 + r.IntN(200), MaxControlBytes: 20 + r.IntN(200)}
		q := New[*msg](cfg)
		cfg = q.Config()
		var model []Entry[*msg]
		modelData, modelCtrl := 0, 0
		for step := range 3000 {
			if r.IntN(3) == 0 {
				max := r.IntN(100) - 10
				got := q.PopBatch(nil, max)
				var want []Entry[*msg]
				total := 0
				for len(model) > 0 {
					e := model[0]
					cost := e.Size
					if e.Evicted {
						cost = 0
					}
					if len(want) > 0 && total+cost > max {
						break
					}
					want = append(want, e)
					total += cost
					model = model[1:]
					if !e.Evicted {
						if e.Class == Data {
							modelData -= e.Size
						} else {
							modelCtrl -= e.Size
						}
					}
				}
				if ids(got) != ids(want) {
					t.Fatalf("seed %d step %d: PopBatch(%d) = %q, want %q", seed, step, max, ids(got), ids(want))
				}
				continue
			}
			c := Data
			if r.IntN(4) == 0 {
				c = Control
			}
			size := r.IntN(cfg.MaxDataBytes / 2)
			if r.IntN(50) == 0 {
				size = cfg.MaxDataBytes + 1
			}
			wasEmpty, err := q.Push(&msg{step}, size, c)
			var wantErr error
			wantEmpty := len(model) == 0
			switch {
			case c == Control && (len(model) >= cfg.MaxItems || modelCtrl+size > cfg.MaxControlBytes):
				wantErr = ErrControlOverflow
			case c == Control:
				model = append(model, Entry[*msg]{V: &msg{step}, Size: size, Class: Control})
				modelCtrl += size
			case len(model) >= cfg.MaxItems:
				wantErr = ErrFull
			case size > cfg.MaxDataBytes:
				model = append(model, Entry[*msg]{V: &msg{step}, Size: size, Class: Data, Evicted: true})
			default:
				for i := 0; modelData+size > cfg.MaxDataBytes; i++ {
					if model[i].Class == Data && !model[i].Evicted {
						model[i].Evicted = true
						modelData -= model[i].Size
					}
				}
				model = append(model, Entry[*msg]{V: &msg{step}, Size: size, Class: Data})
				modelData += size
			}
			if !errors.Is(err, wantErr) || (err == nil && wasEmpty != wantEmpty) {
				t.Fatalf("seed %d step %d: Push(%d, %v) = %v, %v; want %v, %v", seed, step, size, c, wasEmpty, err, wantEmpty, wantErr)
			}
			if d, ct := q.Bytes(); d != modelData || ct != modelCtrl || q.Len() != len(model) {
				t.Fatalf("seed %d step %d: bytes %d/%d len %d, model %d/%d len %d", seed, step, d, ct, q.Len(), modelData, modelCtrl, len(model))
			}
		}
	}
}

// TestConcurrentProducersConsumer runs producers on several goroutines
// against one consumer woken only through wasEmpty, with bounds small
// enough that eviction, ErrFull and control overflow all happen. Every
// accepted item must come out exactly once (live or as a tombstone), in
// each producer's push order; refused items must never come out; control
// must never come out evicted.
func TestConcurrentProducersConsumer(t *testing.T) {
	const (
		producers = 4
		perProd   = 20000
	)
	type item struct {
		prod, seq int
		class     Class
	}
	q := New[*item](Config{MaxItems: 64, MaxDataBytes: 2000, MaxControlBytes: 400})
	wake := make(chan struct{}, 1)
	accepted := make([][]bool, producers)
	var wg sync.WaitGroup
	for p := range producers {
		accepted[p] = make([]bool, perProd)
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(p), 2))
			for s := range perProd {
				c := Data
				if r.IntN(8) == 0 {
					c = Control
				}
				wasEmpty, err := q.Push(&item{p, s, c}, 1+r.IntN(100), c)
				switch {
				case err == nil:
					accepted[p][s] = true
				case errors.Is(err, ErrFull) && c == Data, errors.Is(err, ErrControlOverflow) && c == Control:
				default:
					t.Errorf("producer %d: Push: %v", p, err)
					return
				}
				if wasEmpty {
					select {
					case wake <- struct{}{}:
					default:
					}
				}
			}
		})
	}

	total := make(chan int)
	done := make(chan error)
	go func() {
		next := make([]int, producers) // lowest seq each producer may still emit
		seen := make([][]bool, producers)
		for p := range seen {
			seen[p] = make([]bool, perProd)
		}
		popped, want := 0, -1
		buf := make([]Entry[*item], 0, 32)
		for want < 0 || popped < want {
			select {
			case <-wake:
			case want = <-total:
				continue
			case <-time.After(10 * time.Second):
				done <- fmt.Errorf("consumer starved: popped %d, want %d, queue len %d (lost wake-up?)", popped, want, q.Len())
				return
			}
			for {
				buf = q.PopBatch(buf[:0], 500)
				if len(buf) == 0 {
					break
				}
				for _, e := range buf {
					it := e.V
					if it.seq < next[it.prod] || seen[it.prod][it.seq] {
						done <- fmt.Errorf("producer %d seq %d out of order or duplicated (next %d)", it.prod, it.seq, next[it.prod])
						return
					}
					if e.Evicted && it.class == Control {
						done <- fmt.Errorf("control item %d/%d evicted", it.prod, it.seq)
						return
					}
					seen[it.prod][it.seq] = true
					next[it.prod] = it.seq + 1
					popped++
				}
			}
		}
		// Compare against accepted once producers are done (total was sent
		// after wg.Wait, so accepted is safe to read).
		for p := range producers {
			for s := range perProd {
				if seen[p][s] != accepted[p][s] {
					done <- fmt.Errorf("producer %d seq %d: accepted=%v popped=%v", p, s, accepted[p][s], seen[p][s])
					return
				}
			}
		}
		done <- nil
	}()

	wg.Wait()
	n := 0
	for p := range producers {
		for _, ok := range accepted[p] {
			if ok {
				n++
			}
		}
	}
	total <- n
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := q.Stats()
	if st.Pushed != uint64(n) || st.Popped != uint64(n) {
		t.Fatalf("stats = %+v, accepted %d", st, n)
	}
	if st.Lost[ReasonCeiling] == 0 || st.Lost[ReasonFull] == 0 {
		t.Logf("stats = %+v: bounds did not bite on this run", st)
	}
	t.Logf("accepted %d of %d; stats %+v", n, producers*perProd, st)
}

func BenchmarkPushPop(b *testing.B) {
	q := New[*msg](Config{})
	m := &msg{}
	dst := make([]Entry[*msg], 0, 16)
	b.ReportAllocs()
	for b.Loop() {
		q.Push(m, 100, Data)
		dst = q.PopBatch(dst[:0], 1<<16)
	}
}

func BenchmarkPushPopBatch64(b *testing.B) {
	q := New[*msg](Config{})
	m := &msg{}
	dst := make([]Entry[*msg], 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		for range 64 {
			q.Push(m, 100, Data)
		}
		dst = q.PopBatch(dst[:0], 1<<20)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/item")
}

// BenchmarkPushPopParallel measures one producer pushing while a consumer
// goroutine drains through the wasEmpty wake-up, as the router and an event
// loop do. ns/op is per pushed item; lost/op is the share the consumer was
// too slow for (evicted or dropped), which depends on scheduling.
func BenchmarkPushPopParallel(b *testing.B) {
	benchProducerConsumer(b, func(q *Queue[*msg], m *msg, wake func()) {
		for b.Loop() {
			if wasEmpty, _ := q.Push(m, 100, Data); wasEmpty {
				wake()
			}
		}
	})
}

// BenchmarkPushPopContended is BenchmarkPushPopParallel with GOMAXPROCS
// producers contending for the lock.
func BenchmarkPushPopContended(b *testing.B) {
	benchProducerConsumer(b, func(q *Queue[*msg], m *msg, wake func()) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if wasEmpty, _ := q.Push(m, 100, Data); wasEmpty {
					wake()
				}
			}
		})
	})
}

func benchProducerConsumer(b *testing.B, produce func(q *Queue[*msg], m *msg, wake func())) {
	q := New[*msg](Config{})
	m := &msg{}
	wakeCh := make(chan struct{}, 1)
	wake := func() {
		select {
		case wakeCh <- struct{}{}:
		default:
		}
	}
	stop := make(chan struct{})
	var consumer sync.WaitGroup
	consumer.Go(func() {
		dst := make([]Entry[*msg], 0, 1024)
		for {
			select {
			case <-wakeCh:
			case <-stop:
				return
			}
			for {
				dst = q.PopBatch(dst[:0], 64<<10)
				if len(dst) == 0 {
					break
				}
			}
		}
	})
	b.ReportAllocs()
	produce(q, m, wake)
	b.StopTimer()
	close(stop)
	consumer.Wait()
	st := q.Stats()
	b.ReportMetric(float64(st.Lost[ReasonCeiling]+st.Lost[ReasonFull])/float64(st.Pushed+st.Lost[ReasonFull]), "lost/op")
}

func TestPushNoEvict(t *testing.T) {
	q := New[*msg](Config{MaxItems: 4, MaxDataBytes: 100, HighWater: 75, LowWater: 25})
	mustPush(t, q, 1, 60, Data)
	if _, err := q.PushNoEvict(&msg{2}, 50, Data); !errors.Is(err, ErrWouldEvict) {
		t.Fatalf("a push that needs an eviction: %v", err)
	}
	if _, err := q.PushNoEvict(&msg{3}, 40, Data); err != nil {
		t.Fatalf("a push that fits: %v", err)
	}
	if _, err := q.PushNoEvict(&msg{4}, 500, Data); !errors.Is(err, ErrWouldEvict) {
		t.Fatalf("a push larger than the ceiling: %v", err)
	}
	if _, err := q.PushNoEvict(&msg{5}, 1, Control); err != nil {
		t.Fatalf("control through PushNoEvict: %v", err)
	}
	mustPush(t, q, 6, 0, Data)
	if _, err := q.PushNoEvict(&msg{7}, 0, Data); !errors.Is(err, ErrWouldEvict) {
		t.Fatalf("a push with no free slot: %v", err)
	}
	if got := ids(popAll(q)); got != "d1 d3 c5 d6" {
		t.Fatalf("queue = %s", got)
	}
	if st := q.Stats(); st.Lost[ReasonWouldEvict] != 3 || st.Lost[ReasonCeiling] != 0 {
		t.Fatalf("stats %+v", st)
	}
	q.Close()
	if _, err := q.PushNoEvict(&msg{8}, 1, Data); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

func TestEvictDataAndLevel(t *testing.T) {
	q := New[*msg](Config{MaxDataBytes: 1000, HighWater: 750, LowWater: 250})
	mustPush(t, q, 1, 300, Data)
	mustPush(t, q, 2, 10, Control)
	mustPush(t, q, 3, 500, Data)
	if !q.Congested() {
		t.Fatal("not congested at 800 bytes")
	}
	if n := q.EvictData(); n != 2 {
		t.Fatalf("EvictData = %d", n)
	}
	if q.Congested() {
		t.Fatal("still congested with no live data")
	}
	mustPush(t, q, 4, 100, Data)
	// Evicting after a purge must find the new entry, not rescan tombstones.
	mustPush(t, q, 5, 950, Data)
	lvl := q.Level()
	if lvl.Items != 5 || lvl.DataBytes != 950 || lvl.ControlBytes != 10 || lvl.Stats.Lost[ReasonPurged] != 2 || lvl.Stats.Lost[ReasonCeiling] != 1 {
		t.Fatalf("level %+v", lvl)
	}
	if got := ids(popAll(q)); got != "d~1 c2 d~3 d~4 d5" {
		t.Fatalf("queue = %s", got)
	}
}

func TestControlSlots(t *testing.T) {
	if err := (Config{MaxItems: 4, ControlSlots: 4}).Validate(); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("ControlSlots == MaxItems: %v", err)
	}
	q := New[*msg](Config{MaxItems: 4, ControlSlots: 1})
	for i := 1; i <= 3; i++ {
		mustPush(t, q, i, 1, Data)
	}
	if _, err := q.Push(&msg{4}, 1, Data); !errors.Is(err, ErrFull) {
		t.Fatalf("data into the reserved slot: %v", err)
	}
	mustPush(t, q, 5, 1, Control)
	if _, err := q.Push(&msg{6}, 1, Control); !errors.Is(err, ErrControlOverflow) {
		t.Fatalf("control with no slot at all: %v", err)
	}
}

// Tombstones keep their slots until drained; the eviction hook lets the
// owner drop what an evicted value holds so they keep nothing else.
func TestOnEvictDropsPayload(t *testing.T) {
	type val struct {
		id      int
		payload []byte
	}
	q := New[val](Config{MaxDataBytes: 100, HighWater: 75, LowWater: 25})
	dropped := 0
	q.SetOnEvict(func(v *val) { v.payload = nil; dropped++ })
	for i := 1; i <= 5; i++ {
		if _, err := q.Push(val{i, make([]byte, 40)}, 40, Data); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.Push(val{6, make([]byte, 500)}, 500, Data); err != nil { // too large
		t.Fatal(err)
	}
	q.Push(val{7, make([]byte, 10)}, 10, Data)
	q.EvictData()
	got := ""
	for _, e := range q.PopBatch(nil, 1<<30) {
		if e.Evicted != (e.V.payload == nil) {
			t.Fatalf("entry %d: evicted %v, payload kept %v", e.V.id, e.Evicted, e.V.payload != nil)
		}
		got += fmt.Sprintf("%d ", e.V.id)
	}
	if got != "1 2 3 4 5 6 7 " || dropped != 7 {
		t.Fatalf("ids %q, hook ran %d times", got, dropped)
	}
}

// TestTakeData: data entries are taken out (the rest keeps its order and
// its accounting), except when that would reorder a control entry or a
// tombstone behind them.
func TestTakeData(t *testing.T) {
	q := New[*msg](Config{})
	mustPush(t, q, 0, 10, Control)
	for i := 1; i <= 5; i++ {
		mustPush(t, q, i, 10, Data)
	}
	n := q.TakeData(func(m **msg) bool { return (*m).id%2 == 1 })
	if n != 3 || q.Len() != 3 {
		t.Fatalf("took %d, %d left; want 3 and 3", n, q.Len())
	}
	if d, c := q.Bytes(); d != 20 || c != 10 {
		t.Fatalf("bytes after take: data %d control %d", d, c)
	}
	mustPush(t, q, 6, 10, Data) // the array shrank: it grows again
	if got := ids(popAll(q)); got != "c0 d2 d4 d6" {
		t.Fatalf("left %q", got)
	}
	mustPush(t, q, 7, 10, Data)
	mustPush(t, q, 8, 10, Control)
	if n := q.TakeData(func(**msg) bool { return true }); n != 0 || q.Len() != 2 {
		t.Fatalf("took %d across a later control entry", n)
	}
}

// TestTrim: an empty queue gives its slot array back whatever its size (a
// drained one keeps up to releaseAbove slots on its own); a queue that
// holds anything keeps it, in order.
func TestTrim(t *testing.T) {
	q := New[*msg](Config{})
	for i := 1; i <= 40; i++ {
		mustPush(t, q, i, 10, Data)
	}
	popAll(q)
	if len(q.buf) == 0 {
		t.Fatal("a drained queue of 40 slots released its array on its own: Trim proves nothing")
	}
	q.Trim()
	if q.buf != nil {
		t.Fatalf("Trim kept %d slots of an empty queue", len(q.buf))
	}
	for i := 1; i <= 3; i++ {
		mustPush(t, q, i, 10, Data)
	}
	q.Trim()
	if got := ids(popAll(q)); got != "d1 d2 d3" {
		t.Fatalf("after Trim of a non-empty queue: %q", got)
	}
}

// TestAtCeiling: a push that evicts (or finds no slot) marks the queue at
// its ceiling until it drains to its high watermark; over the watermark
// short of the ceiling it is not.
func TestAtCeiling(t *testing.T) {
	q := New[*msg](Config{MaxDataBytes: 100, HighWater: 75, LowWater: 25})
	for i := 1; i <= 8; i++ {
		mustPush(t, q, i, 10, Data)
	}
	if q.AtCeiling() {
		t.Fatal("at its ceiling at 80 of 100 bytes")
	}
	for i := 9; i <= 11; i++ { // 11 evicts
		mustPush(t, q, i, 10, Data)
	}
	if !q.AtCeiling() {
		t.Fatal("not at its ceiling after an eviction")
	}
	q.PopBatch(nil, 20) // 80 live bytes left: still over the watermark
	if !q.AtCeiling() {
		t.Fatal("left the ceiling while still over the high watermark")
	}
	q.PopBatch(nil, 20)
	if q.AtCeiling() {
		t.Fatal("still at its ceiling under the high watermark")
	}
	s := New[*msg](Config{MaxItems: 4, ControlSlots: 1})
	for i := 1; i <= 3; i++ {
		mustPush(t, s, i, 1, Data)
	}
	if _, err := s.Push(&msg{id: 4}, 1, Data); err != ErrFull || !s.AtCeiling() {
		t.Fatalf("no free slot: err %v, at ceiling %v", err, s.AtCeiling())
	}
}
