package delivery

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/wire"
)

// BenchmarkSendDrain is one healthy connection's steady state: the router
// queues an event, the drainer takes it and records its health
// observation. It must not allocate.
func BenchmarkSendDrain(b *testing.B) {
	o := NewOutbox(Config{}, Hooks{Wake: func() {}})
	defer o.Close()
	m := event("s1", 1, "hello", 200)
	dst := make([]*wire.Msg, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		o.Send(m, wire.Data)
		dst = o.Drain(dst[:0], 1<<20)
		o.Observe(false, 0)
	}
}

// BenchmarkSendDrainBatch64 is the same with 64 events per drain, as a
// busy connection sees them.
func BenchmarkSendDrainBatch64(b *testing.B) {
	o := NewOutbox(Config{}, Hooks{Wake: func() {}})
	defer o.Close()
	m := event("s1", 1, "hello", 200)
	dst := make([]*wire.Msg, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		for range 64 {
			o.Send(m, wire.Data)
		}
		dst = o.Drain(dst[:0], 1<<20)
		o.Observe(false, 0)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/event")
}

// BenchmarkSendDegraded is the router's cost of an event for a degraded
// connection: accounted for a summary, not queued.
func BenchmarkSendDegraded(b *testing.B) {
	h := newHarness(b, degradeConfig(time.Hour, time.Hour))
	h.o.Observe(true, 1)
	h.o.Observe(true, 1)
	if !h.o.Degraded() {
		b.Fatal("not degraded")
	}
	m := event("s1", 1, "hello", 200)
	m.Text(ChunkText) // the router's first degraded recipient pays this once
	b.ReportAllocs()
	for b.Loop() {
		m.Seq++
		h.o.Send(m, wire.Data)
	}
}

// BenchmarkIsolation measures what stalled connections cost the others.
// A publisher fans each event out to 1,000 fast outboxes and to 0, 1 or
// 100 stalled ones, as the hub does; two drainer goroutines (the event
// loops) drain the fast ones when woken and record each event's latency
// from publication to drain; a ticker observes the stalled ones every 5ms
// as blocked, as the loop's tick does. The three cases alternate in
// stretches of 100 events within one run, so that the machine's load
// (shared, noisy) weighs on all three alike. Events are published two
// every millisecond (2,000 a second: 2 million deliveries a second).
// Reported per case: p50 and p99 delivery latency of the fast outboxes and
// the publisher's time per event.
func BenchmarkIsolation(b *testing.B) {
	const (
		nFast    = 1000
		drainers = 2
		stretch  = 100
	)
	cases := []int{0, 1, 100}
	type drainer struct {
		wake    chan int
		samples [3][]int64 // by case
	}
	ds := make([]*drainer, drainers)
	for i := range ds {
		ds[i] = &drainer{wake: make(chan int, nFast)}
	}
	cfg := Config{}
	stamps := make([]atomic.Int64, b.N+1) // when event seq was published
	caseOf := make([]uint8, b.N+1)
	fast := make([]*Outbox, nFast)
	for i := range fast {
		d := ds[i%drainers]
		fast[i] = NewOutbox(cfg, Hooks{Wake: func() { d.wake <- i }})
	}
	stalled := make([]*Outbox, cases[len(cases)-1])
	for i := range stalled {
		stalled[i] = NewOutbox(cfg, Hooks{Wake: func() {}})
	}
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Go(func() {
			var dst []*wire.Msg
			for i := range d.wake {
				if i < 0 {
					return
				}
				dst = fast[i].Drain(dst[:0], 256<<10)
				now := time.Now().UnixNano()
				if i%10 == 0 { // a tenth of the outboxes is a fair sample
					for _, m := range dst {
						c := caseOf[m.Seq]
						d.samples[c] = append(d.samples[c], now-stamps[m.Seq].Load())
					}
				}
				fast[i].Observe(false, 0)
				clear(dst)
			}
		})
	}
	stop := make(chan struct{})
	var ticker sync.WaitGroup
	ticker.Go(func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				for _, o := range stalled {
					o.Observe(true, 1<<20)
				}
			}
		}
	})
	msgs := make([]*wire.Msg, b.N+1)
	for i := 1; i <= b.N; i++ {
		msgs[i] = event("s1", uint64(i), "chunk of text", 200)
	}
	var publish [3]time.Duration
	var published [3]int
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		c := (i / stretch) % len(cases)
		caseOf[i] = uint8(c)
		t0 := time.Now()
		stamps[i].Store(t0.UnixNano())
		m := msgs[i]
		for _, o := range fast {
			o.Send(m, wire.Data)
		}
		for _, o := range stalled[:cases[c]] {
			o.Send(m, wire.Data)
		}
		publish[c] += time.Since(t0)
		published[c]++
		if i%2 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	b.StopTimer()
	for _, o := range fast { // let the drainers finish
		for o.Len() > 0 {
			time.Sleep(time.Millisecond)
		}
	}
	for _, d := range ds {
		d.wake <- -1
	}
	wg.Wait()
	close(stop)
	ticker.Wait()
	for c, k := range cases {
		var all []int64
		for _, d := range ds {
			all = append(all, d.samples[c]...)
		}
		if len(all) == 0 || published[c] == 0 {
			continue
		}
		slices.Sort(all)
		pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))]) / 1e3 }
		b.ReportMetric(pct(0.50), fmt.Sprintf("p50-µs/stalled=%d", k))
		b.ReportMetric(pct(0.99), fmt.Sprintf("p99-µs/stalled=%d", k))
		b.ReportMetric(float64(publish[c].Microseconds())/float64(published[c]), fmt.Sprintf("publish-µs/stalled=%d", k))
	}
	degraded := 0
	for _, o := range stalled {
		if o.Degraded() {
			degraded++
		}
		o.Close()
	}
	b.ReportMetric(float64(degraded), "stalled-degraded")
	for _, o := range fast {
		if o.Degraded() {
			b.Fatal("a fast outbox was degraded")
		}
		o.Close()
	}
}
