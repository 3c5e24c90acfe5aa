package breaker

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder collects onChange calls. The callback runs under the breaker's
// lock, possibly on several goroutines, so it has its own mutex.
type recorder struct {
	mu  sync.Mutex
	seq []string
}

func (r *recorder) onChange(from, to State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq = append(r.seq, from.String()+">"+to.String())
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.seq, " ")
}

// waitState polls until b reaches want or the deadline passes. gobreaker
// reads the wall clock with no hook, so the open period can only be waited
// out; the deadline is a failure bound, not the synchronisation.
func waitState(t *testing.T, b *Breaker, want State) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for b.State() != want {
		if time.Now().After(deadline) {
			t.Fatalf("state %v, still waiting for %v", b.State(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func expect(t *testing.T, b *Breaker, want State) {
	t.Helper()
	if got := b.State(); got != want {
		t.Fatalf("state = %v, want %v", got, want)
	}
	if got := b.Degraded(); got != (want == Open) {
		t.Fatalf("Degraded() = %v in state %v", got, want)
	}
}

func TestConfig(t *testing.T) {
	got := Config{}.WithDefaults()
	if got != (Config{TripAfter: 3, OpenFor: time.Second, ProbeSuccesses: 3}) {
		t.Fatalf("defaults = %+v", got)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{TripAfter: -1}, "TripAfter -1"},
		{Config{TripAfter: 1 << 40}, "TripAfter 1099511627776"},
		{Config{OpenFor: -time.Second}, "OpenFor -1s"},
	} {
		err := tc.cfg.Validate()
		if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want ErrBadConfig naming %q", tc.cfg, err, tc.want)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("New with a bad config did not panic")
		}
	}()
	New("x", Config{TripAfter: -1}, nil)
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Closed: "closed", Open: "open", HalfOpen: "half-open", State(7): "State(7)"} {
		if got := s.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(s), got, want)
		}
	}
}

func TestTripsAfterConsecutiveUnhealthy(t *testing.T) {
	for _, trip := range []int{1, 2, 3, 5} {
		t.Run(fmt.Sprint(trip), func(t *testing.T) {
			var rec recorder
			b := New("c1", Config{TripAfter: trip, OpenFor: time.Hour}, rec.onChange)
			expect(t, b, Closed)
			// A healthy observation resets the run, so trip-1 unhealthy
			// ones followed by a healthy one, twice over, never trip.
			for range 2 {
				for range trip - 1 {
					b.Observe(false)
				}
				expect(t, b, Closed)
				b.Observe(true)
			}
			for range trip - 1 {
				b.Observe(false)
			}
			expect(t, b, Closed)
			b.Observe(false)
			expect(t, b, Open)
			if rec.String() != "closed>open" {
				t.Fatalf("onChange = %q", rec.String())
			}
		})
	}
}

func TestStaysOpenIgnoringObservations(t *testing.T) {
	var rec recorder
	b := New("c1", Config{TripAfter: 1, OpenFor: time.Hour, ProbeSuccesses: 1}, rec.onChange)
	b.Observe(false)
	for range 100 {
		b.Observe(true)
	}
	expect(t, b, Open)
	if rec.String() != "closed>open" {
		t.Fatalf("onChange = %q", rec.String())
	}
}

func TestHalfOpenCloseAndReopen(t *testing.T) {
	const openFor = 30 * time.Millisecond
	var rec recorder
	b := New("c1", Config{TripAfter: 2, OpenFor: openFor, ProbeSuccesses: 3}, rec.onChange)

	tripped := time.Now()
	b.Observe(false)
	b.Observe(false)
	if s := b.State(); s == Closed {
		t.Fatalf("state after %d unhealthy = %v", 2, s)
	}
	waitState(t, b, HalfOpen)
	if el := time.Since(tripped); el < openFor {
		t.Fatalf("half-open after %v, before OpenFor %v", el, openFor)
	}
	expect(t, b, HalfOpen)

	// An unhealthy probe re-opens at once.
	b.Observe(true)
	b.Observe(false)
	if s := b.State(); s != Open && s != HalfOpen {
		t.Fatalf("after an unhealthy probe state = %v", s)
	}
	reopened := time.Now()
	waitState(t, b, HalfOpen)

	// ProbeSuccesses healthy observations in a row close it.
	b.Observe(true)
	b.Observe(true)
	expect(t, b, HalfOpen)
	b.Observe(true)
	expect(t, b, Closed)

	want := "closed>open open>half-open half-open>open open>half-open half-open>closed"
	if got := rec.String(); got != want {
		t.Fatalf("onChange = %q, want %q (reopened %v ago)", got, want, time.Since(reopened))
	}

	// Closed again means the unhealthy count starts over.
	b.Observe(false)
	expect(t, b, Closed)
	b.Observe(false)
	expect(t, b, Open)
}

// TestDegradedNoticesOpenForAlone checks that Degraded by itself (the call
// the router makes) moves Open to HalfOpen once OpenFor has passed, not
// only State or Observe.
func TestDegradedNoticesOpenForAlone(t *testing.T) {
	var rec recorder
	b := New("c1", Config{TripAfter: 1, OpenFor: 5 * time.Millisecond}, rec.onChange)
	tripped := time.Now()
	b.Observe(false)
	deadline := tripped.Add(10 * time.Second)
	for b.Degraded() {
		if time.Now().After(deadline) {
			t.Fatal("still degraded 10s after a 5ms OpenFor")
		}
		time.Sleep(time.Millisecond)
	}
	if el := time.Since(tripped); el < 5*time.Millisecond {
		t.Fatalf("no longer degraded after %v", el)
	}
	if got := rec.String(); got != "closed>open open>half-open" {
		t.Fatalf("onChange = %q", got)
	}
}

func TestNilOnChange(t *testing.T) {
	b := New("c1", Config{TripAfter: 1, OpenFor: time.Millisecond, ProbeSuccesses: 1}, nil)
	b.Observe(false)
	waitState(t, b, HalfOpen)
	b.Observe(true)
	expect(t, b, Closed)
}

// TestConcurrentObservers hammers one breaker from several goroutines and
// checks that the transitions it reports form a valid chain.
func TestConcurrentObservers(t *testing.T) {
	var rec recorder
	b := New("c1", Config{TripAfter: 2, OpenFor: 100 * time.Microsecond, ProbeSuccesses: 2}, rec.onChange)
	// Start open so the goroutines below race through half-open probing
	// however they interleave.
	b.Observe(false)
	b.Observe(false)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 5000 {
				b.Observe((i+g)%3 != 0)
				b.Degraded()
			}
		})
	}
	wg.Wait()
	valid := map[string]bool{"closed>open": true, "open>half-open": true, "half-open>closed": true, "half-open>open": true}
	prev := "closed"
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, tr := range rec.seq {
		from, to, _ := strings.Cut(tr, ">")
		if !valid[tr] || from != prev {
			t.Fatalf("transition %d %q after state %q", i, tr, prev)
		}
		prev = to
	}
	t.Logf("%d transitions", len(rec.seq))
}

func BenchmarkObserve(b *testing.B) {
	br := New("c1", Config{}, nil)
	for b.Loop() {
		br.Observe(true)
	}
}

func BenchmarkDegraded(b *testing.B) {
	br := New("c1", Config{}, nil)
	for b.Loop() {
		br.Degraded()
	}
}
