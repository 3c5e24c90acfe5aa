package session

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/wire"
)

// lagConn is a connection with a bounded queue that refuses data when it
// is full, as delivery.Outbox does under onSlow "catchup".
type lagConn struct {
	mu    sync.Mutex
	limit int
	queue []*wire.Msg
	seen  []*wire.Msg   // everything drained, in order
	woken chan struct{} // signalled by Wake when set (wakeChan)
}

func (c *lagConn) Wake() {
	select {
	case c.woken <- struct{}{}:
	default:
	}
}

func (c *lagConn) Send(m *wire.Msg, cls wire.Class) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cls == wire.Data && len(c.queue) >= c.limit {
		return false
	}
	c.queue = append(c.queue, m)
	return true
}

func (c *lagConn) Close(CloseCode, string) {}

// drain takes everything queued, as a transport's writer does.
func (c *lagConn) drain() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.queue)
	c.seen = append(c.seen, c.queue...)
	c.queue = c.queue[:0]
	return n
}

// TestLagCatchesUpFromLog: a connection that refuses events while the
// agent streams is fed from the log when it drains, in order, with no
// hole, no duplicate and no gap, and then rejoins live delivery.
func TestLagCatchesUpFromLog(t *testing.T) {
	r := newRig(t, Config{})
	fc := &lagConn{limit: 10}
	cl := r.hub.Open(fc, ConnInfo{Role: auth.RoleClient, Transport: "test"})
	r.from(cl, `{"jsonrpc":"2.0","id":"new","method":"session/new","params":{}}`)
	f := r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"sessionId":"s1"}}`, f["id"])
	fc.drain()
	fc.seen = nil
	const n = 5000
	for i := 1; i <= n; i++ {
		r.hub.AgentMessage(1, update("s1", i))
		if i%700 == 0 {
			// The reader drains now and then, slower than the agent
			// writes, and pumps whenever its queue is empty.
			for fc.drain() > 0 || r.hub.Pump(cl) {
			}
		}
	}
	if !cl.Catching() {
		t.Fatal("the connection never fell behind")
	}
	if st := r.hub.Stats(); st.Lagged == 0 || st.CatchingUp != 1 {
		t.Fatalf("Stats.Lagged %d, CatchingUp %d while behind, want > 0 and 1", st.Lagged, st.CatchingUp)
	}
	for fc.drain() > 0 || r.hub.Pump(cl) {
	}
	if cl.Catching() {
		t.Fatal("still catching up after draining everything")
	}
	if n := r.hub.Stats().CatchingUp; n != 0 {
		t.Fatalf("Stats.CatchingUp %d once caught up, want 0", n)
	}
	r.hub.AgentMessage(1, update("s1", n+1))
	fc.drain()
	next := 1
	for _, m := range fc.seen {
		if m.Seq == 0 {
			t.Fatalf("unexpected control message %s", m.Body())
		}
		if m.Seq != uint64(next) {
			t.Fatalf("got seq %d, want %d", m.Seq, next)
		}
		next++
	}
	if next != n+2 {
		t.Fatalf("got %d events, want %d", next-1, n+1)
	}
}

// TestLagPastRetentionGaps: a connection that falls behind the log's
// retention gets one exact bridge/gap, then the oldest kept event on.
func TestLagPastRetentionGaps(t *testing.T) {
	r := newRig(t, Config{Replay: 100})
	fc := &lagConn{limit: 10}
	cl := r.hub.Open(fc, ConnInfo{Role: auth.RoleClient, Transport: "test"})
	r.from(cl, `{"jsonrpc":"2.0","id":"new","method":"session/new","params":{}}`)
	f := r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"sessionId":"s1"}}`, f["id"])
	fc.drain()
	fc.seen = nil
	for i := 1; i <= 500; i++ {
		r.hub.AgentMessage(1, update("s1", i))
	}
	for fc.drain() > 0 || r.hub.Pump(cl) {
	}
	var seqs []uint64
	gaps := 0
	for _, m := range fc.seen {
		if m.Seq == 0 {
			gaps++
			want := `{"jsonrpc":"2.0","method":"bridge/gap","params":{"sessionId":"s1","fromSeq":11,"toSeq":400,"reason":"evicted from the replay log"}}`
			if string(m.Body()) != want {
				t.Fatalf("gap %s, want %s", m.Body(), want)
			}
			continue
		}
		seqs = append(seqs, m.Seq)
	}
	if gaps != 1 || len(seqs) != 110 || seqs[9] != 10 || seqs[10] != 401 || seqs[109] != 500 {
		t.Fatalf("gaps %d, seqs %v", gaps, seqs)
	}
}

// TestReplayMemoryBudget: the logs of all sessions together stay within
// ReplayMemory; the oldest events of the largest log go first, a small
// log keeps everything, and no count caps a session by default.
func TestReplayMemoryBudget(t *testing.T) {
	const budget = 1 << 20
	r := newRig(t, Config{ReplayMemory: budget})
	big := r.hub.session("big")
	small := r.hub.session("small")
	r.hub.mu.Lock()
	for i := 1; i <= 20000; i++ {
		m := wire.New(update("big", i))
		r.hub.publish(big, m)
		if i%100 == 0 {
			r.hub.publish(small, wire.New(update("small", i)))
		}
		r.hub.trimLogs()
		if r.hub.logs.used.Load() > budget {
			r.hub.mu.Unlock()
			t.Fatalf("logs hold %d bytes, over the budget %d", r.hub.logs.used.Load(), budget)
		}
	}
	sum := big.log.bytes + small.log.bytes
	used := int(r.hub.logs.used.Load())
	smallN, bigN, bigOldest := small.log.n, big.log.n, big.log.oldest()
	r.hub.mu.Unlock()
	if sum != used {
		t.Fatalf("budget accounts %d bytes, the logs hold %d", used, sum)
	}
	if smallN != 200 {
		t.Fatalf("the small log kept %d of its 200 events", smallN)
	}
	if bigOldest <= 1 || bigN < 1000 || bigOldest+uint64(bigN)-1 != 20000 {
		t.Fatalf("big log: %d events from seq %d", bigN, bigOldest)
	}

	// The default budget holds a 200,000-event flood of ~200-byte events
	// in one session: no count cap, nothing evicted.
	r2 := newRig(t, Config{})
	s := r2.hub.session("s")
	body := []byte(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"` + string(make200()) + `"}}}}`)
	r2.hub.mu.Lock()
	for i := 0; i < 200000; i++ {
		r2.hub.publish(s, wire.New(body))
	}
	n, oldest := s.log.n, s.log.oldest()
	r2.hub.mu.Unlock()
	if n != 200000 || oldest != 1 {
		t.Fatalf("default retention kept %d events from seq %d, want all 200,000 (%d bytes each)", n, oldest, len(body)+1)
	}
}

func make200() []byte {
	b := make([]byte, 60)
	for i := range b {
		b[i] = 'x'
	}
	return b
}

// TestRecedeFeedsFromLog: a connection whose queued events are taken back
// (its peer stalled) is fed them again from the log, then everything
// after, in order, with no duplicate and no gap, whether the session was
// live or already paced for it.
func TestRecedeFeedsFromLog(t *testing.T) {
	r := newRig(t, Config{})
	fc := &lagConn{limit: 50}
	cl := r.hub.Open(fc, ConnInfo{Role: auth.RoleClient, Transport: "test"})
	r.from(cl, `{"jsonrpc":"2.0","id":"new","method":"session/new","params":{}}`)
	f := r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"sessionId":"s1"}}`, f["id"])
	fc.drain()
	fc.seen = nil
	take := func() map[string]uint64 {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		low := map[string]uint64{}
		k := 0
		for _, m := range fc.queue {
			if m.Seq == 0 {
				fc.queue[k] = m
				k++
				continue
			}
			if cur, ok := low[m.SessionID]; !ok || m.Seq < cur {
				low[m.SessionID] = m.Seq
			}
		}
		fc.queue = fc.queue[:k]
		return low
	}
	for i := 1; i <= 30; i++ { // live: all queued
		r.hub.AgentMessage(1, update("s1", i))
	}
	r.hub.Recede(cl, take)
	if !cl.Catching() {
		t.Fatal("a receded connection is not fed from the log")
	}
	for i := 31; i <= 200; i++ { // not pushed: read from the log
		r.hub.AgentMessage(1, update("s1", i))
	}
	fc.drain()
	r.hub.Pump(cl) // queues 31.. up to the limit, now paced
	r.hub.Recede(cl, take)
	for fc.drain() > 0 || r.hub.Pump(cl) {
	}
	r.hub.AgentMessage(1, update("s1", 201))
	fc.drain()
	next := uint64(1)
	for _, m := range fc.seen {
		if m.Seq != next {
			t.Fatalf("got seq %d (%s), want %d", m.Seq, m.Body(), next)
		}
		next++
	}
	if next != 202 {
		t.Fatalf("got %d events, want 201", next-1)
	}
}

// refuseConn refuses every data event (its connection lags) and counts
// the attempts.
type refuseConn struct{ sends atomic.Int64 }

func (c *refuseConn) Send(m *wire.Msg, cls wire.Class) bool {
	if cls != wire.Data {
		return true
	}
	c.sends.Add(1)
	return false
}

func (c *refuseConn) Close(CloseCode, string) {}

// stalledRig is s1 with one fast attached client and k attached ones that
// refuse events (stalled): after one event each of those has a cursor.
func stalledRig(tb testing.TB, k int) (*Hub, []*refuseConn) {
	tb.Helper()
	h, _, _ := forwardRig(tb)
	conns := make([]*refuseConn, k)
	clients := make([]*Client, k)
	for i := range conns {
		conns[i] = &refuseConn{}
		clients[i] = h.Open(conns[i], ConnInfo{Role: auth.RoleClient, Transport: "test"})
	}
	h.mu.Lock()
	for _, cl := range clients {
		h.sessions["s1"].attach(cl)
	}
	h.mu.Unlock()
	h.AgentMessage(1, update("s1", 0))
	return h, conns
}

// TestStalledCostNothingPerEvent: a client that refused an event is fed
// from the log; the fan-out does not try it again for later events.
func TestStalledCostNothingPerEvent(t *testing.T) {
	h, conns := stalledRig(t, 10)
	for i := 1; i <= 100; i++ {
		h.AgentMessage(1, update("s1", i))
	}
	for i, c := range conns {
		if n := c.sends.Load(); n != 1 {
			t.Fatalf("stalled client %d was offered %d events, want 1 (then a cursor)", i, n)
		}
	}
	if n := h.Stats().CatchingUp; n != len(conns) {
		t.Fatalf("Stats.CatchingUp %d, want the %d stalled clients", n, len(conns))
	}
	// A stalled client that goes away is not behind any more.
	h.mu.Lock()
	var gone []*Client
	for _, cl := range h.conns {
		if cl.Catching() {
			gone = append(gone, cl)
		}
	}
	h.mu.Unlock()
	for _, cl := range gone[:3] {
		h.Closed(cl)
	}
	if n := h.Stats().CatchingUp; n != len(conns)-3 {
		t.Fatalf("Stats.CatchingUp %d after 3 stalled clients closed, want %d", n, len(conns)-3)
	}
}

// BenchmarkFanoutBesideStalled is one event published to a session with
// one fast client beside 0 or 1,000 stalled ones (with cursors).
func BenchmarkFanoutBesideStalled(b *testing.B) {
	for _, k := range []int{0, 1000} {
		b.Run(fmt.Sprintf("stalled=%d", k), func(b *testing.B) {
			h, _ := stalledRig(b, k)
			msgs := make([][]byte, 64)
			for i := range msgs {
				msgs[i] = update("s1", i)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				h.AgentMessage(1, msgs[i%len(msgs)])
			}
		})
	}
}
