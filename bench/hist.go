package bench

import (
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latency is a latency distribution in microseconds.
type Latency struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

// newHist records nanoseconds from 1 ns to 60 s with 3 significant digits.
func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(60*time.Second), 3)
}

// record adds one latency, clamped into the histogram's range.
func record(h *hdrhistogram.Histogram, d time.Duration) {
	ns := max(int64(d), 1)
	_ = h.RecordValue(min(ns, h.HighestTrackableValue()))
}

// summary turns a histogram into a Latency, or nil when it is empty.
func summary(h *hdrhistogram.Histogram) *Latency {
	if h.TotalCount() == 0 {
		return nil
	}
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	return &Latency{
		Count: h.TotalCount(), Mean: h.Mean() / 1e3,
		P50: us(h.ValueAtQuantile(50)), P90: us(h.ValueAtQuantile(90)), P99: us(h.ValueAtQuantile(99)),
		P999: us(h.ValueAtQuantile(99.9)), Max: us(h.Max()),
	}
}

// shardedHist lets many reader goroutines record into a few histograms (one
// per client would cost ~200 KB each). Each client batches locally and
// merges a batch under one shard's lock.
type shardedHist struct {
	shards [16]struct {
		mu sync.Mutex
		h  *hdrhistogram.Histogram
	}
}

func newShardedHist() *shardedHist {
	s := &shardedHist{}
	for i := range s.shards {
		s.shards[i].h = newHist()
	}
	return s
}

// latBatch is one client's unmerged latencies. Owned by that client's
// reader goroutine.
type latBatch struct {
	s     *shardedHist
	shard int
	buf   [256]int64
	n     int
}

func (s *shardedHist) batch(i int) *latBatch { return &latBatch{s: s, shard: i % len(s.shards)} }

func (b *latBatch) add(ns int64) {
	b.buf[b.n] = ns
	b.n++
	if b.n == len(b.buf) {
		b.flush()
	}
}

// flush merges the batch; call it before the histogram is read.
func (b *latBatch) flush() {
	if b.n == 0 {
		return
	}
	sh := &b.s.shards[b.shard]
	sh.mu.Lock()
	for _, v := range b.buf[:b.n] {
		record(sh.h, time.Duration(v))
	}
	sh.mu.Unlock()
	b.n = 0
}

// merged is every shard in one histogram. Call once all batches flushed.
func (s *shardedHist) merged() *hdrhistogram.Histogram {
	h := newHist()
	for i := range s.shards {
		s.shards[i].mu.Lock()
		h.Merge(s.shards[i].h)
		s.shards[i].mu.Unlock()
	}
	return h
}
