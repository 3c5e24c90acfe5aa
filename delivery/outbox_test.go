package delivery

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/breaker"
	"github.com/agentbridge/agentbridge/ring"
	"github.com/agentbridge/agentbridge/wire"
)

// event builds a sequenced agent_message_chunk of session sid streaming
// text, padded to at least size bytes.
func event(sid string, seq uint64, text string, size int) *wire.Msg {
	body := fmt.Sprintf(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":%q,"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":%q}}}}`, sid, text)
	if pad := size - len(body) - 1; pad > 0 {
		body = body[:len(body)-1] + `,"pad":"` + strings.Repeat("x", max(pad-9, 0)) + `"}`
	}
	m := wire.New([]byte(body))
	m.SessionID, m.Seq = sid, seq
	return m
}

func control(id int) *wire.Msg {
	return wire.New(fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"result":{}}`, id))
}

// item is one drained message as a client would classify it.
type item struct {
	kind     string // "event", "gap", "summary", "control"
	sid      string
	seq      uint64 // event seq, summary seq
	from, to uint64 // gap
	dropped  uint64 // summary
	bytes    uint64
	text     string
	reason   string
	id       int
}

func classify(t testing.TB, m *wire.Msg) item {
	t.Helper()
	if m.Seq != 0 {
		return item{kind: "event", sid: m.SessionID, seq: m.Seq}
	}
	var v struct {
		ID     *int   `json:"id"`
		Method string `json:"method"`
		Params struct {
			SessionID string `json:"sessionId"`
			FromSeq   uint64 `json:"fromSeq"`
			ToSeq     uint64 `json:"toSeq"`
			Reason    string `json:"reason"`
			Seq       uint64 `json:"seq"`
			Dropped   uint64 `json:"dropped"`
			Bytes     uint64 `json:"bytes"`
			Text      string `json:"text"`
		} `json:"params"`
	}
	if err := json.Unmarshal(m.Body(), &v); err != nil {
		t.Fatalf("drained invalid JSON %q: %v", m.Body(), err)
	}
	p := v.Params
	switch v.Method {
	case "bridge/gap":
		return item{kind: "gap", sid: p.SessionID, from: p.FromSeq, to: p.ToSeq, reason: p.Reason}
	case "bridge/summary":
		return item{kind: "summary", sid: p.SessionID, seq: p.Seq, dropped: p.Dropped, bytes: p.Bytes, text: p.Text}
	}
	if v.ID != nil {
		return item{kind: "control", id: *v.ID}
	}
	if v.Method == "notice" {
		return item{kind: "notice"}
	}
	t.Fatalf("unexpected message %s", m.Body())
	return item{}
}

// checkExact verifies that, for session sid, events and gaps in stream
// order cover 1..last exactly once each, in order.
func checkExact(t testing.TB, items []item, sid string, last uint64) (events, gapped uint64) {
	t.Helper()
	next := uint64(1)
	for i, it := range items {
		if it.sid != sid {
			continue
		}
		switch it.kind {
		case "event":
			if it.seq != next {
				t.Fatalf("item %d: event %d, want %d (%s)", i, it.seq, next, around(items, i))
			}
			next++
			events++
		case "gap":
			if it.from != next || it.to < it.from {
				t.Fatalf("item %d: gap %d-%d, want one from %d (%s)", i, it.from, it.to, next, around(items, i))
			}
			gapped += it.to - it.from + 1
			next = it.to + 1
		}
	}
	if next != last+1 {
		t.Fatalf("session %s covered up to %d, want %d (%d events, %d in gaps)", sid, next-1, last, events, gapped)
	}
	return events, gapped
}

func around(items []item, i int) string {
	lo, hi := max(i-4, 0), min(i+4, len(items))
	return fmt.Sprintf("%+v", items[lo:hi])
}

// harness drives one Outbox like a transport: Wake signals a channel, the
// test drains.
type harness struct {
	t      testing.TB
	o      *Outbox
	wakes  chan struct{}
	closed chan wire.CloseReason
	m      *countMetrics
	items  []item
}

func newHarness(t testing.TB, cfg Config) *harness {
	h := &harness{t: t, wakes: make(chan struct{}, 1), closed: make(chan wire.CloseReason, 1), m: &countMetrics{}}
	h.o = NewOutbox(cfg, Hooks{
		Wake: func() {
			select {
			case h.wakes <- struct{}{}:
			default:
			}
		},
		Close:   func(r wire.CloseReason, _ string) { h.closed <- r },
		Metrics: h.m,
	})
	t.Cleanup(h.o.Close)
	return h
}

func (h *harness) drain() {
	h.t.Helper()
	for {
		ms := h.o.Drain(nil, 1<<20)
		if len(ms) == 0 {
			return
		}
		for _, m := range ms {
			h.items = append(h.items, classify(h.t, m))
		}
	}
}

func (h *harness) count(kind string) int {
	n := 0
	for _, it := range h.items {
		if it.kind == kind {
			n++
		}
	}
	return n
}

// until drains on every wake until cond holds or the deadline passes.
func (h *harness) until(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-h.wakes:
			h.drain()
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s; items %+v", what, h.items)
		}
	}
}

// counts is a snapshot of countMetrics.
type counts struct {
	lost        map[string]uint64
	transitions []string
	degraded    int
	summaries   int
	gaps        int
	closes      []wire.CloseReason
	samples     int
}

type countMetrics struct {
	mu sync.Mutex
	c  counts
}

func (c *countMetrics) Lost(r string, n uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c.lost == nil {
		c.c.lost = map[string]uint64{}
	}
	c.c.lost[r] += n
}

func (c *countMetrics) Transition(from, to breaker.State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.c.transitions = append(c.c.transitions, from.String()+">"+to.String())
}

func (c *countMetrics) Degraded(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if on {
		c.c.degraded++
	} else {
		c.c.degraded--
	}
}

func (c *countMetrics) Summary() { c.mu.Lock(); c.c.summaries++; c.mu.Unlock() }
func (c *countMetrics) Gap()     { c.mu.Lock(); c.c.gaps++; c.mu.Unlock() }
func (c *countMetrics) Closed(r wire.CloseReason) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.c.closes = append(c.c.closes, r)
}
func (c *countMetrics) Queue(int, int) { c.mu.Lock(); c.c.samples++; c.mu.Unlock() }

func (c *countMetrics) get() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := c.c
	cp.transitions = append([]string(nil), c.c.transitions...)
	cp.closes = append([]wire.CloseReason(nil), c.c.closes...)
	cp.lost = map[string]uint64{}
	for k, v := range c.c.lost {
		cp.lost[k] = v
	}
	return cp
}

func TestOrderAcrossClasses(t *testing.T) {
	h := newHarness(t, Config{})
	for i := 1; i <= 10; i++ {
		h.o.Send(event("s1", uint64(i), "x", 0), wire.Data)
		if i%3 == 0 {
			h.o.Send(control(i), wire.Control)
		}
	}
	select {
	case <-h.wakes:
	default:
		t.Fatal("no wake on the first push")
	}
	h.drain()
	var got []string
	for _, it := range h.items {
		if it.kind == "event" {
			got = append(got, fmt.Sprint(it.seq))
		} else {
			got = append(got, fmt.Sprintf("c%d", it.id))
		}
	}
	if s := strings.Join(got, " "); s != "1 2 3 c3 4 5 6 c6 7 8 9 c9 10" {
		t.Fatalf("order = %s", s)
	}
}

func TestEvictionGapsAreExact(t *testing.T) {
	// A breaker that never trips here: pushes over the high watermark
	// would degrade the connection (pushedOver) before the ceiling bit.
	h := newHarness(t, Config{Queue: ring.Config{MaxDataBytes: 2000, HighWater: 1500, LowWater: 500}, Breaker: breaker.Config{TripAfter: 1000}})
	for i := 1; i <= 100; i++ {
		h.o.Send(event("s1", uint64(i), "x", 200), wire.Data)
		if i == 50 {
			h.o.Send(control(1), wire.Control)
		}
	}
	h.drain()
	events, gapped := checkExact(t, h.items, "s1", 100)
	if gapped == 0 || events == 0 {
		t.Fatalf("events %d, gapped %d: the ceiling did not bite", events, gapped)
	}
	h.o.Observe(false, 0)
	if l := h.m.get().lost["ceiling"]; l != gapped {
		t.Fatalf("metrics lost[ceiling] = %d, gaps named %d", l, gapped)
	}
}

// A push that finds no free slot leaves no tombstone; its event must still
// be named by a gap, before the session's next delivered event.
func TestFullSlotDropsBecomeGaps(t *testing.T) {
	// A breaker that never trips here: pushes that find no slot would
	// degrade the connection (pushedOver).
	h := newHarness(t, Config{Queue: ring.Config{MaxItems: 8}, Breaker: breaker.Config{TripAfter: 1000}})
	for i := 1; i <= 20; i++ {
		h.o.Send(event("s1", uint64(i), "x", 0), wire.Data)
	}
	// A second session's drop, then room for s1 again after a partial drain.
	h.o.Send(event("s2", 1, "x", 0), wire.Data)
	h.items = nil
	for _, m := range h.o.Drain(nil, 1) { // one entry
		h.items = append(h.items, classify(t, m))
	}
	h.o.Send(event("s1", 21, "x", 0), wire.Data)
	h.o.Send(event("s2", 2, "x", 0), wire.Data)
	h.drain()
	checkExact(t, h.items, "s1", 21)
	checkExact(t, h.items, "s2", 2)
	// The stream stops with a drop pending: the drainer is woken for it.
	for i := 22; i <= 40; i++ {
		h.o.Send(event("s1", uint64(i), "x", 0), wire.Data)
	}
	h.until("every seq up to 40 accounted", func() bool {
		next := uint64(0)
		for _, it := range h.items {
			if it.sid == "s1" && it.kind == "event" {
				next = it.seq
			} else if it.sid == "s1" && it.kind == "gap" {
				next = it.to
			}
		}
		return next == 40
	})
	checkExact(t, h.items, "s1", 40)
}

func TestUnsequencedEvictionsAreNotGaps(t *testing.T) {
	h := newHarness(t, Config{Queue: ring.Config{MaxDataBytes: 1000, HighWater: 700, LowWater: 100}})
	for i := 0; i < 50; i++ {
		h.o.Send(wire.New([]byte(`{"jsonrpc":"2.0","method":"notice","params":{"pad":"`+strings.Repeat("y", 100)+`"}}`)), wire.Data)
	}
	h.drain()
	for _, it := range h.items {
		if it.kind == "gap" {
			t.Fatalf("gap for unsequenced data: %+v", it)
		}
	}
}

func TestControlCeilingCloses(t *testing.T) {
	h := newHarness(t, Config{Queue: ring.Config{MaxControlBytes: 200}})
	ok := true
	for i := 0; i < 10 && ok; i++ {
		ok = h.o.Send(control(i), wire.Control)
	}
	if ok {
		t.Fatal("control past the ceiling was accepted")
	}
	if r := <-h.closed; r != wire.CloseControlCeiling {
		t.Fatalf("close reason %v", r)
	}
	if h.o.Send(control(99), wire.Control) {
		t.Fatal("Send after the close request accepted control")
	}
}

func TestDisconnectPolicyClosesInsteadOfEvicting(t *testing.T) {
	h := newHarness(t, Config{Queue: ring.Config{MaxDataBytes: 2000, HighWater: 1500, LowWater: 500}})
	h.o.SetPolicy(Disconnect)
	for i := 1; i <= 20; i++ {
		h.o.Send(event("s1", uint64(i), "x", 200), wire.Data)
	}
	select {
	case r := <-h.closed:
		if r != wire.CloseSlowConsumer {
			t.Fatalf("close reason %v", r)
		}
	default:
		t.Fatal("no close when the queue would have evicted")
	}
	if h.o.Level().Stats.Lost[ring.ReasonCeiling] != 0 {
		t.Fatal("a disconnect connection had data evicted")
	}
}

func TestDisconnectPolicyClosesWhenBreakerOpens(t *testing.T) {
	h := newHarness(t, Config{Breaker: breaker.Config{TripAfter: 2, OpenFor: time.Hour}, DrainDeadline: time.Nanosecond})
	h.o.SetDefaultPolicy(Disconnect)
	h.o.Send(event("s1", 1, "x", 0), wire.Data)
	h.o.Observe(true, 100) // blocked: starts the deadline
	h.o.Observe(true, 100)
	select {
	case <-h.closed:
		t.Fatal("closed after one unhealthy observation")
	default:
	}
	h.o.Observe(true, 100)
	if r := <-h.closed; r != wire.CloseSlowConsumer {
		t.Fatalf("close reason %v", r)
	}
	if got := h.m.get(); len(got.closes) != 1 || got.degraded != 0 {
		t.Fatalf("metrics %+v", got)
	}
}

func TestExplicitPolicyBeatsDefault(t *testing.T) {
	o := NewOutbox(Config{}, Hooks{})
	defer o.Close()
	if o.Policy() != Degrade {
		t.Fatalf("zero config policy %v", o.Policy())
	}
	o.SetPolicy(Degrade)
	o.SetDefaultPolicy(Disconnect)
	if o.Policy() != Degrade {
		t.Fatal("default overrode the client's choice")
	}
}

// degradeConfig trips on the first unhealthy observation and stays open
// for openFor.
func degradeConfig(openFor, interval time.Duration) Config {
	return Config{
		Queue:           ring.Config{MaxDataBytes: 4000, HighWater: 3000, LowWater: 1000},
		Breaker:         breaker.Config{TripAfter: 1, OpenFor: openFor, ProbeSuccesses: 1},
		SummaryInterval: interval,
		DrainDeadline:   time.Nanosecond,
		TextTail:        16,
	}
}

func TestDegradeSummariesAndRecovery(t *testing.T) {
	const interval = 40 * time.Millisecond
	// OpenFor outlasts the degraded stretch below even on a loaded machine.
	h := newHarness(t, degradeConfig(time.Second, interval))
	seq := uint64(0)
	send := func(text string) {
		seq++
		h.o.Send(event("s1", seq, text, 0), wire.Data)
	}
	for range 5 {
		send("a")
	}
	h.drain()
	h.o.Observe(true, 100)
	h.o.Observe(true, 100) // blocked past the deadline: the breaker opens
	if !h.o.Degraded() {
		t.Fatalf("not degraded after a missed deadline; state %v", h.o.State())
	}
	start := time.Now()
	// Stream while degraded; "héllo wörld " is cut to its last 16 bytes on
	// a rune boundary.
	for range 3 {
		for range 10 {
			send("héllo wörld ")
		}
		time.Sleep(interval / 2)
	}
	h.until("a summary", func() bool { return h.count("summary") > 0 })
	var first item
	for _, it := range h.items {
		if it.kind == "summary" {
			first = it
			break
		}
	}
	if first.sid != "s1" || first.dropped == 0 || first.bytes == 0 || first.seq <= 5 || !strings.HasSuffix(strings.Repeat("héllo wörld ", 30), first.text) || len(first.text) > 16 || first.text == "" {
		t.Fatalf("summary %+v", first)
	}
	// The peer reads again: a drain attempt finds the transport empty.
	// Recovery: the breaker half-opens after OpenFor; the timer notices
	// (it does not while the transport still holds bytes for the peer).
	h.o.Observe(false, 0)
	h.until("recovery", func() bool { return !h.o.Degraded() })
	elapsed := time.Since(start)
	h.until("the final summary", func() bool {
		for _, it := range h.items {
			if it.kind == "summary" && it.seq == seq {
				return true
			}
		}
		return false
	})
	// Full delivery again.
	for range 5 {
		send("b")
	}
	h.drain()
	h.o.Observe(false, 0)
	if st := h.o.State(); st != breaker.Closed {
		t.Fatalf("state after a healthy probe: %v", st)
	}
	events, gapped := checkExact(t, h.items, "s1", seq)
	if events != 10 || gapped != 30 {
		t.Fatalf("events %d gapped %d, want 10 and 30", events, gapped)
	}
	// Summaries: at most one per interval while degraded plus the final one.
	if n := h.count("summary"); n > int(elapsed/interval)+2 {
		t.Fatalf("%d summaries in %v at an interval of %v", n, elapsed, interval)
	}
	var dropped uint64
	for _, it := range h.items {
		if it.kind == "summary" {
			dropped += it.dropped
		}
	}
	if dropped != 30 {
		t.Fatalf("summaries account for %d dropped, want 30", dropped)
	}
	m := h.m.get()
	if m.degraded != 0 || m.summaries != h.count("summary") || m.gaps != h.count("gap") {
		t.Fatalf("metrics %+v vs %d summaries %d gaps", m, h.count("summary"), h.count("gap"))
	}
	if want := "closed>open open>half-open half-open>closed"; strings.Join(m.transitions, " ") != want {
		t.Fatalf("transitions %v, want %s", m.transitions, want)
	}
}

// Entering degraded delivery purges the queued backlog into gaps, so the
// consumer reaches its summaries without reading stale events first.
func TestDegradePurgesBacklog(t *testing.T) {
	h := newHarness(t, degradeConfig(time.Hour, 10*time.Millisecond))
	for i := 1; i <= 14; i++ { // 14*250 bytes: over the high watermark
		h.o.Send(event("s1", uint64(i), "x", 250), wire.Data)
	}
	h.o.Observe(false, 0)
	if !h.o.Degraded() {
		t.Fatal("not degraded over the high watermark")
	}
	h.o.Send(event("s1", 15, "tail", 0), wire.Data)
	h.until("the summary", func() bool { return h.count("summary") > 0 })
	checkExact(t, h.items, "s1", 15)
	if h.count("event") != 0 {
		t.Fatalf("stale events delivered after degrading: %+v", h.items)
	}
	h.o.Observe(false, 0)
	if got := h.m.get().lost; got["purged"] != 14 || got[LostDegraded] != 1 {
		t.Fatalf("lost %v", got)
	}
}

// TestPushesFeedTheBreaker: pushes that find the queue at its ceiling
// (one had to evict since it was last under its high watermark) are
// unhealthy observations, so a flood the drainer makes no attempt on (a
// peer that stopped reading, woken less and less often) degrades a degrade
// connection; a queue merely over its high watermark is left to the
// drainer, and a drain under the low watermark ends the run, so a reader
// that keeps draining is not tripped by pushes spread across its drains.
func TestPushesFeedTheBreaker(t *testing.T) {
	cfg := degradeConfig(time.Hour, time.Hour)
	cfg.Breaker.TripAfter = 3
	t.Run("flood", func(t *testing.T) {
		h := newHarness(t, cfg)
		seq := uint64(0)
		for h.o.Level().DataBytes <= cfg.Queue.HighWater {
			seq++
			h.o.Send(event("s1", seq, "x", 250), wire.Data)
		}
		if h.o.Degraded() || h.o.State() != breaker.Closed {
			t.Fatalf("degraded %v, breaker %v over the high watermark, short of the ceiling: the drainer judges that", h.o.Degraded(), h.o.State())
		}
		for range 20 {
			seq++
			h.o.Send(event("s1", seq, "x", 250), wire.Data)
		}
		if !h.o.Degraded() || h.o.State() != breaker.Open {
			t.Fatalf("degraded %v, breaker %v after a flood past the ceiling with no drain", h.o.Degraded(), h.o.State())
		}
	})
	t.Run("drained between", func(t *testing.T) {
		h := newHarness(t, cfg)
		seq := uint64(0)
		for range 5 {
			// Two pushes at the ceiling, then the reader takes all.
			for !h.o.q.AtCeiling() {
				seq++
				h.o.Send(event("s1", seq, "x", 250), wire.Data)
			}
			seq++
			h.o.Send(event("s1", seq, "x", 250), wire.Data)
			h.drain()
			h.o.Observe(false, 0)
		}
		if h.o.Degraded() || h.o.State() != breaker.Closed {
			t.Fatalf("degraded %v, breaker %v: pushes across healthy drains tripped it", h.o.Degraded(), h.o.State())
		}
		checkExact(t, h.items, "s1", seq)
	})
}

// A final summary goes out when the stream stops, without further Sends.
func TestFinalSummaryWithoutTraffic(t *testing.T) {
	// The summary interval is well above how long three Sends can take on
	// a loaded machine (at 30 ms a CI run split them across two stretches).
	const every = 300 * time.Millisecond
	h := newHarness(t, degradeConfig(time.Hour, every))
	h.o.Send(event("s1", 1, "x", 0), wire.Data)
	h.o.Observe(true, 100)
	h.o.Observe(true, 100)
	h.drain()
	for i := 2; i <= 4; i++ {
		h.o.Send(event("s1", uint64(i), "x", 0), wire.Data)
	}
	h.until("summary", func() bool { return h.count("summary") == 1 })
	time.Sleep(3 * every) // nothing more to say: no more summaries
	h.drain()
	if n := h.count("summary"); n != 1 {
		t.Fatalf("%d summaries for one stretch", n)
	}
	checkExact(t, h.items, "s1", 4)
}

// A stalled degraded connection (its peer takes nothing) keeps counting
// what it skips rather than queue a gap and a summary every interval for
// a peer that reads none of them: its control queue stays at one batch
// however long the stall (it used to grow to the control ceiling and get
// the connection closed), and once the peer reads again the stream
// accounts for every seq. What ends a stall is the stall timeout.
func TestDegradedStallHoldsItsAccounting(t *testing.T) {
	const interval = 2 * time.Millisecond
	cfg := degradeConfig(time.Hour, interval)
	cfg.Queue.MaxControlBytes = 2000
	h := newHarness(t, cfg)
	h.o.Send(event("s1", 1, "x", 0), wire.Data)
	h.o.Observe(true, 100)
	h.o.Observe(true, 100)
	if !h.o.Degraded() {
		t.Fatal("not degraded after a missed deadline")
	}
	seq := uint64(1)
	// 150 intervals: a summary and a gap every interval would be over
	// 2000 bytes ten times over.
	for end := time.Now().Add(150 * interval); time.Now().Before(end); {
		seq++
		h.o.Send(event("s1", seq, "x", 0), wire.Data)
		select {
		case r := <-h.closed:
			t.Fatalf("a stalled degraded connection was closed (%v) at seq %d", r, seq)
		case <-time.After(time.Millisecond / 4):
		}
	}
	if ctrl := h.o.Level().ControlBytes; ctrl > cfg.Queue.MaxControlBytes/2 {
		t.Fatalf("control queue holds %d bytes after the stall", ctrl)
	}
	h.readsAgain(t, seq)
	if n := h.count("summary"); n > 3 {
		t.Fatalf("%d summaries for one stalled stretch", n)
	}
}

// TestConcurrentExactness is the property that matters: whatever the
// interleaving of a sender, a drainer that is sometimes blocked, the
// breaker and the summary timer, every seq of every session is delivered
// or named by a gap, exactly once, in order.
func TestConcurrentExactness(t *testing.T) {
	cfg := Config{
		Queue:           ring.Config{MaxItems: 256, MaxDataBytes: 8000, HighWater: 6000, LowWater: 2000, MaxControlBytes: 1 << 20},
		Breaker:         breaker.Config{TripAfter: 2, OpenFor: 20 * time.Millisecond, ProbeSuccesses: 2},
		SummaryInterval: 3 * time.Millisecond,
		DrainDeadline:   time.Millisecond,
	}
	h := newHarness(t, cfg)
	sessions := []string{"a", "b", "c"}
	const perSession = 5000
	var sent atomic.Bool
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		seqs := map[string]uint64{}
		for i := 0; i < perSession*len(sessions); i++ {
			sid := sessions[i%len(sessions)]
			seqs[sid]++
			h.o.Send(event(sid, seqs[sid], "t", 50+rng.IntN(200)), wire.Data)
			if rng.IntN(200) == 0 {
				h.o.Send(control(i), wire.Control)
			}
			if i%20 == 0 {
				// Pace the sender so that the drainer keeps up in
				// stretches and the run visits every state.
				time.Sleep(time.Millisecond)
			}
		}
		sent.Store(true)
		h.o.Send(control(-1), wire.Control)
	}()
	rng := rand.New(rand.NewPCG(3, 4))
	sawDegrade := false
	done := func() bool {
		if !sent.Load() {
			return false
		}
		for _, sid := range sessions {
			last := uint64(0)
			for _, it := range h.items {
				if it.sid != sid {
					continue
				}
				if it.kind == "event" {
					last = it.seq
				} else if it.kind == "gap" {
					last = it.to
				}
			}
			if last != perSession {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(60 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			var closed string
			select {
			case r := <-h.closed:
				closed = r.String()
			default:
			}
			t.Fatalf("not every seq accounted for; %d items, closed %q, degraded %v, state %v, len %d, metrics %+v, last %s",
				len(h.items), closed, h.o.Degraded(), h.o.State(), h.o.Len(), h.m.get(), around(h.items, len(h.items)-1))
		}
		blocked := rng.IntN(3) == 0
		if !blocked {
			for _, m := range h.o.Drain(nil, 4000) {
				h.items = append(h.items, classify(t, m))
			}
		} else {
			time.Sleep(200 * time.Microsecond)
		}
		h.o.Observe(blocked, 100)
		sawDegrade = sawDegrade || h.o.Degraded()
		if h.o.Len() == 0 {
			select {
			case <-h.wakes:
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
	select {
	case r := <-h.closed:
		t.Fatalf("closed: %v", r)
	default:
	}
	var delivered, gapped uint64
	for _, sid := range sessions {
		e, g := checkExact(t, h.items, sid, perSession)
		delivered += e
		gapped += g
	}
	t.Logf("delivered %d, in gaps %d, summaries %d, degraded seen %v, metrics %+v", delivered, gapped, h.count("summary"), sawDegrade, h.m.get())
	if gapped == 0 || delivered == 0 {
		t.Fatalf("the run exercised nothing: delivered %d gapped %d", delivered, gapped)
	}
}

// A blocked transport whose peer keeps taking bytes is slow, not stalled:
// only no progress for DrainDeadline is a missed deadline.
func TestDrainDeadlineCountsOnlyNoProgress(t *testing.T) {
	cfg := degradeConfig(time.Hour, time.Hour)
	cfg.DrainDeadline = 30 * time.Millisecond
	h := newHarness(t, cfg)
	start := time.Now()
	for buffered := 1 << 20; time.Since(start) < 100*time.Millisecond; buffered -= 100 {
		h.o.Observe(true, buffered) // the buffer shrinks: progress
		time.Sleep(time.Millisecond)
	}
	seq := uint64(0)
	var lastProgress time.Time
	for time.Since(start) < 200*time.Millisecond {
		seq++
		h.o.Send(event("s1", seq, "x", 0), wire.Data)
		h.drain() // Drain hands out messages: progress
		lastProgress = time.Now()
		h.o.Observe(true, 1<<20)
		time.Sleep(time.Millisecond)
	}
	if h.o.Degraded() {
		t.Fatal("degraded although the peer made progress")
	}
	// The last observation with progress was the loop's last; the deadline
	// runs from before it.
	stuck := time.Now()
	for !h.o.Degraded() {
		h.o.Observe(true, 1<<20)
		time.Sleep(time.Millisecond)
		if time.Since(stuck) > 5*time.Second {
			t.Fatal("no progress for 5s and still not degraded")
		}
	}
	if d := time.Since(lastProgress); d < cfg.DrainDeadline {
		t.Fatalf("degraded after %v without progress; the deadline is %v", d, cfg.DrainDeadline)
	}
}

// A stalled peer degraded with a full queue keeps the purged backlog's
// tombstones in their slots (the drainer, blocked, never pops them): the
// summary timer must not spend the few control slots left on gaps and
// summaries nobody reads. The control bytes stay far under their quarter
// here, so only the slots show it; it used to be closed at the control
// ceiling after ControlSlots/2 intervals.
func TestDegradedStallWithFullQueueKeepsControlSlots(t *testing.T) {
	const interval = 2 * time.Millisecond
	h, seq := degradedFullQueue(t, degradeConfig(time.Hour, interval))
	for end := time.Now().Add(100 * interval); time.Now().Before(end); {
		seq++
		h.o.Send(event("s1", seq, "x", 0), wire.Data)
		select {
		case r := <-h.closed:
			t.Fatalf("a stalled degraded connection was closed (%v) at seq %d", r, seq)
		case <-time.After(time.Millisecond / 4):
		}
	}
	// An answer still finds its slot.
	if !h.o.Send(control(1), wire.Control) {
		t.Fatalf("no slot left for an answer: %d queued", h.o.Len())
	}
	h.readsAgain(t, seq)
}

// A stalled degraded peer whose drainer handed out the purged backlog's
// gap (the kernel took that much) counts as having made progress at the
// next drain attempt, though it reads nothing. When the breaker
// half-opens it must not be put back on full delivery while its transport
// still holds bytes: every such probe queued a gap and a summary, filled
// the queue again, and split the stalled stretch into runs of alternating
// reasons until the control queue, which nobody reads, overflowed.
func TestStalledDegradedPeerIsNotProbed(t *testing.T) {
	cfg := degradeConfig(2*time.Millisecond, time.Millisecond)
	h, seq := degradedFullQueue(t, cfg)
	h.drain() // the purged backlog's gap, taken by the kernel
	h.o.Observe(true, 100)
	// 100 open periods of a peer that takes nothing more; the transport
	// re-wakes a stalled connection less and less often, so the drain
	// attempts come in stretches several open periods apart.
	for end := time.Now().Add(100 * cfg.Breaker.OpenFor); time.Now().Before(end); {
		for range 10 {
			for range 10 {
				seq++
				h.o.Send(event("s1", seq, "x", 0), wire.Data)
			}
			select {
			case r := <-h.closed:
				t.Fatalf("a stalled degraded connection was closed (%v) at seq %d", r, seq)
			case <-time.After(time.Millisecond):
			}
		}
		h.o.Observe(true, 100)
	}
	if !h.o.Degraded() {
		t.Fatal("a stalled peer left degraded delivery")
	}
	if n := h.o.Level().Stats.Lost[ring.ReasonPurged]; n != 56 {
		t.Fatalf("%d events purged, want the 56 of the first backlog: the stalled peer was probed with full delivery", n)
	}
	h.readsAgain(t, seq)
	// One gap for the purged backlog, then one per summary: a stretch
	// split into runs would show more.
	if g, s := h.count("gap"), h.count("summary"); g > s+1 {
		t.Fatalf("the stall came out as %d gaps for %d summaries: %+v", g, s, h.items)
	}
}

// readsAgain is the stalled peer reading again: it drains, and the
// stall's summary up to seq arrives with an exact account of s1.
func (h *harness) readsAgain(t *testing.T, seq uint64) {
	t.Helper()
	h.drain()
	h.o.Observe(false, 0)
	h.until("the summary of the whole stall", func() bool {
		for _, it := range h.items {
			if it.kind == "summary" && it.seq == seq {
				return true
			}
		}
		return false
	})
	checkExact(t, h.items, "s1", seq)
}

// degradedFullQueue is a connection with 8 control slots whose peer stopped
// reading: 56 events fill its queue, two missed deadlines degrade it. It
// returns the harness and the last seq sent.
func degradedFullQueue(t *testing.T, cfg Config) (*harness, uint64) {
	t.Helper()
	cfg.Queue.MaxItems = 64 // 8 control slots
	cfg.Queue.MaxDataBytes, cfg.Queue.HighWater, cfg.Queue.LowWater = 1<<20, 1<<19, 1<<10
	h := newHarness(t, cfg)
	seq := uint64(0)
	for h.o.Len() < 56 {
		seq++
		h.o.Send(event("s1", seq, "x", 0), wire.Data)
	}
	h.o.Observe(true, 100)
	h.o.Observe(true, 100)
	if !h.o.Degraded() {
		t.Fatal("not degraded after a missed deadline")
	}
	return h, seq
}
