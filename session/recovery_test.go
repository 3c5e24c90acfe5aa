package session

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/store"
	"github.com/agentbridge/agentbridge/wire"
)

// streamConn records what the hub queues and lets a reader wait for it.
type streamConn struct {
	mu     sync.Mutex
	cond   *sync.Cond
	got    []*wire.Msg
	closed string
}

func newStreamConn() *streamConn {
	c := &streamConn{}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *streamConn) Send(m *wire.Msg, _ wire.Class) bool {
	c.mu.Lock()
	c.got = append(c.got, m)
	c.mu.Unlock()
	c.cond.Broadcast()
	return true
}

func (c *streamConn) Close(_ CloseCode, reason string) {
	c.mu.Lock()
	c.closed = reason
	c.mu.Unlock()
	c.cond.Broadcast()
}

// waitEvents blocks until the connection holds at least n data events or
// stop() reports true (checked whenever something arrives).
func (c *streamConn) waitEvents(n int, stop func() bool) []*wire.Msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	for countSeq(c.got) < n && !stop() {
		c.cond.Wait()
	}
	return append([]*wire.Msg(nil), c.got...)
}

func countSeq(ms []*wire.Msg) int {
	n := 0
	for _, m := range ms {
		if m.Seq > 0 {
			n++
		}
	}
	return n
}

func update(sid string, i int) []byte {
	return []byte(fmt.Sprintf(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":%q,"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"chunk %d é \"q\" %s"}}}}`, sid, i, bytes.Repeat([]byte{'a' + byte(i%26)}, i%50)))
}

// innerBody returns the agent's message inside an event as the client
// received it: the body itself, or params.message of a bridge/event (nil
// when the envelope is not exactly what the contract describes).
func innerBody(m *wire.Msg) []byte {
	b := m.Body()
	prefix := fmt.Sprintf(`{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":"s1","seq":%d,"message":`, m.Seq)
	if !bytes.HasPrefix(b, []byte(`{"jsonrpc":"2.0","method":"bridge/event"`)) {
		return b
	}
	if !bytes.HasPrefix(b, []byte(prefix)) || !bytes.HasSuffix(b, []byte("}}")) {
		return nil
	}
	inner := b[len(prefix) : len(b)-2]
	if !json.Valid(inner) {
		return nil
	}
	return inner
}

// TestAttachAtomicWhileStreaming cuts readers at random points while the
// agent streams and re-attaches them with since = the last seq they really
// received (a random prefix of what was queued: the rest is "lost in the
// cut"). Each reader's reassembled stream must equal what the agent sent,
// byte for byte, with no hole and no duplicate at any replay/live seam.
func TestAttachAtomicWhileStreaming(t *testing.T) {
	const n, readers = 10000, 4
	r := newRig(t, Config{Replay: n})
	owner, fo := r.open(auth.RoleClient)
	r.newSession(owner, fo, "s1")
	var done sync.WaitGroup
	var streamed sync.Mutex
	finished := false
	isFinished := func() bool { streamed.Lock(); defer streamed.Unlock(); return finished }
	var conns []*streamConn
	var connsMu sync.Mutex
	errs := make(chan error, readers)
	var cuts atomic.Int64
	for k := 0; k < readers; k++ {
		done.Add(1)
		go func(k int) {
			defer done.Done()
			rnd := rand.New(rand.NewSource(int64(k)))
			var got []*wire.Msg
			cursor := uint64(0)
			for rounds := 0; int(cursor) < n; rounds++ {
				sc := newStreamConn()
				connsMu.Lock()
				conns = append(conns, sc)
				connsMu.Unlock()
				cl := r.hub.Open(sc, ConnInfo{Role: auth.RoleViewer, Transport: "test"})
				envelope := rnd.Intn(2) == 0
				r.hub.Handle(cl, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"bridge/hello","params":{"envelope":%v}}`, envelope)))
				r.hub.Handle(cl, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":2,"method":"bridge/attach","params":{"sessionId":"s1","since":%d}}`, cursor)))
				want := 1 + rnd.Intn(400)
				msgs := sc.waitEvents(want, func() bool { return isFinished() })
				r.hub.Closed(cl)
				if !isFinished() {
					cuts.Add(1)
				}
				// What was queued after the wait is lost in the cut too.
				var evs []*wire.Msg
				for _, m := range msgs {
					if m.Seq == 0 {
						if bytes.Contains(m.Body(), []byte("bridge/gap")) {
							errs <- fmt.Errorf("reader %d: gap %s", k, m.Body())
							return
						}
						continue
					}
					evs = append(evs, m)
				}
				keep := len(evs)
				if keep > 0 && !isFinished() {
					keep = rnd.Intn(len(evs) + 1)
				}
				for _, m := range evs[:keep] {
					if m.Seq != cursor+1 {
						errs <- fmt.Errorf("reader %d round %d: got seq %d after %d", k, rounds, m.Seq, cursor)
						return
					}
					cursor = m.Seq
					got = append(got, m)
				}
			}
			for i, m := range got {
				if b := innerBody(m); !bytes.Equal(b, update("s1", i+1)) {
					errs <- fmt.Errorf("reader %d: event %d is %q, want %q", k, i+1, b, update("s1", i+1))
					return
				}
			}
			if len(got) != n {
				errs <- fmt.Errorf("reader %d reassembled %d events, want %d", k, len(got), n)
			}
		}(k)
	}
	const minCuts = 20
	for i := 1; i <= n; i++ {
		r.hub.AgentMessage(1, update("s1", i))
		if i%50 == 0 {
			// An agent streams at a pace; without one the stream would be
			// over before the readers' first few cuts.
			time.Sleep(100 * time.Microsecond)
		}
		if i%(n/4) == 0 {
			// On a loaded machine the readers may not be scheduled while
			// the agent streams: at each quarter wait (bounded) until they
			// have cut their share of minCuts, so the seams this test is
			// about happen mid-stream however the scheduler runs. If they
			// never do, the bound passes and the check below fails.
			waitUntil := time.Now().Add(5 * time.Second)
			for cuts.Load() < int64(minCuts*i/n) && time.Now().Before(waitUntil) {
				time.Sleep(time.Millisecond)
			}
		}
	}
	streamed.Lock()
	finished = true
	streamed.Unlock()
	// Every conn registered after this snapshot sees finished; every one
	// in it is woken while its reader is inside Wait (it holds c.mu
	// between checking stop and waiting).
	connsMu.Lock()
	snapshot := append([]*streamConn(nil), conns...)
	connsMu.Unlock()
	for _, c := range snapshot {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	}
	done.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d cuts while streaming", cuts.Load())
	if cuts.Load() < minCuts {
		t.Fatalf("only %d cuts happened while the agent was streaming", cuts.Load())
	}
}

func statuses(t *testing.T, fc *fakeConn) []string {
	t.Helper()
	var out []string
	for _, m := range fc.take(t) {
		if m["method"] == "bridge/status" {
			out = append(out, m["params"].(map[string]any)["status"].(string))
		}
	}
	return out
}

func TestTaskStateAndSnapshot(t *testing.T) {
	r := newRig(t, Config{Recent: 2})
	a, fa := r.open(auth.RoleClient)
	r.newSession(a, fa, "s1")
	v, fv := r.open(auth.RoleViewer)
	r.from(v, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1"}}`)
	fv.take(t)

	r.from(a, `{"jsonrpc":"2.0","id":5,"method":"session/prompt","params":{"sessionId":"s1","prompt":[]}}`)
	prompt := r.forwarded()
	for i := 1; i <= 3; i++ {
		r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":%d}}`, i)
	}
	r.agentSays(`{"jsonrpc":"2.0","id":"p1","method":"session/request_permission","params":{"sessionId":"s1","toolCall":{"toolCallId":"t1","title":"rm -rf"},"options":[]}}`)
	if got := statuses(t, fv); fmt.Sprint(got) != "[running awaiting_hitl]" {
		t.Fatalf("viewer saw %v", got)
	}
	r.from(v, `{"jsonrpc":"2.0","id":2,"method":"bridge/snapshot","params":{"sessionId":"s1"}}`)
	snap := one(t, fv)["result"].(map[string]any)
	if snap["status"] != "awaiting_hitl" || snap["seq"] != float64(3) || snap["ownerConnected"] != true {
		t.Fatalf("snapshot %v", snap)
	}
	pend := snap["pending"].([]any)
	if len(pend) != 1 || pend[0].(map[string]any)["method"] != "session/request_permission" {
		t.Fatalf("pending %v", pend)
	}
	recent := snap["recent"].([]any)
	if len(recent) != 2 || recent[1].(map[string]any)["params"].(map[string]any)["n"] != float64(3) {
		t.Fatalf("recent %v", recent)
	}
	var reqID any
	for _, m := range fa.take(t) {
		if m["method"] == "session/request_permission" {
			reqID = m["id"]
		}
	}
	r.from(a, `{"jsonrpc":"2.0","id":%v,"result":{"outcome":{"outcome":"selected","optionId":"ok"}}}`, reqID)
	r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"stopReason":"end_turn"}}`, prompt["id"])
	if got := statuses(t, fv); fmt.Sprint(got) != "[running idle]" {
		t.Fatalf("after answer and end of turn the viewer saw %v", got)
	}
	r.hub.AgentExited(1, fmt.Errorf("boom"), time.Second)
	if got := statuses(t, fv); len(got) == 0 || got[0] != "blocked" {
		t.Fatalf("after exit %v", got)
	}
	r.hub.AgentStarted(2)
	r.ag.take()
	if got := statuses(t, fv); len(got) == 0 || got[0] != "closed" {
		t.Fatalf("after restart %v (the new process does not know s1)", got)
	}
}

func TestOperatorAnswersAndCancelsWhileOwnerAway(t *testing.T) {
	var recs []AuditRecord
	var mu sync.Mutex
	r := newRig(t, Config{Audit: func(a AuditRecord) { mu.Lock(); recs = append(recs, a); mu.Unlock() }})
	owner, fo := r.open(auth.RoleClient)
	r.newSession(owner, fo, "s1")
	r.hub.Closed(owner)
	// Raised while nobody is there.
	r.agentSays(`{"jsonrpc":"2.0","id":40,"method":"session/request_permission","params":{"sessionId":"s1","toolCall":{"toolCallId":"t9","title":"write file"},"options":[]}}`)
	op, fop := r.open(auth.RoleOperator)
	r.from(op, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1"}}`)
	got := fop.take(t)
	var req map[string]any
	for _, m := range got {
		if m["method"] == "session/request_permission" {
			req = m
		}
	}
	if req == nil {
		t.Fatalf("attached operator did not get the pending request: %v", got)
	}
	r.from(op, `{"jsonrpc":"2.0","id":%v,"result":{"outcome":{"outcome":"selected","optionId":"allow"}}}`, req["id"])
	if f := r.forwarded(); f["id"] != float64(40) {
		t.Fatalf("agent got %v", f)
	}
	// A second one, then the operator cancels the turn: the agent gets the
	// cancel and the permission is answered "cancelled" by the bridge.
	r.agentSays(`{"jsonrpc":"2.0","id":41,"method":"session/request_permission","params":{"sessionId":"s1","toolCall":{"toolCallId":"t10"},"options":[]}}`)
	fop.take(t)
	r.from(op, `{"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":"s1"}}`)
	sent := r.ag.take()
	if len(sent) != 2 || sent[0]["method"] != "session/cancel" || sent[1]["id"] != float64(41) ||
		sent[1]["result"].(map[string]any)["outcome"].(map[string]any)["outcome"] != "cancelled" {
		t.Fatalf("agent got %v", sent)
	}
	if m := one(t, fop); m["method"] != "bridge/resolved" {
		t.Fatalf("operator got %v", m)
	}
	// Operators may only touch sessions they attached.
	for _, bad := range []string{
		`{"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":"nope"}}`,
		`{"jsonrpc":"2.0","method":"session/cancel","params":{}}`,
	} {
		r.from(op, "%s", bad)
		if m := one(t, fop); code(m) != codeUnknownSession {
			t.Fatalf("%s: %v", bad, m)
		}
	}
	if s := r.ag.take(); len(s) != 0 {
		t.Fatalf("refused cancels reached the agent: %v", s)
	}
	mu.Lock()
	defer mu.Unlock()
	var answered, cancelled, forwarded, denied bool
	for _, a := range recs {
		switch {
		case a.Outcome == "answered" && a.Role == "operator" && a.Option == "selected:allow" && a.ToolCall == "t9 (write file)" && a.Session == "s1" && a.Connection == op.ID:
			answered = true
		case a.Outcome == "cancelled" && a.ToolCall == "t10" && a.Role == "operator":
			cancelled = true
		case a.Method == "session/cancel" && a.Outcome == "forwarded":
			forwarded = true
		case a.Method == "session/cancel" && a.Outcome == "denied":
			denied = true
		}
	}
	if !answered || !cancelled || !forwarded || !denied {
		t.Fatalf("audit answered=%v cancelled=%v forwarded=%v denied=%v: %+v", answered, cancelled, forwarded, denied, recs)
	}
}

func TestRoleDenialsAreAudited(t *testing.T) {
	var recs []AuditRecord
	r := newRig(t, Config{Audit: func(a AuditRecord) { recs = append(recs, a) }})
	v, fv := r.open(auth.RoleViewer)
	r.from(v, `{"jsonrpc":"2.0","id":1,"method":"session/prompt","params":{"sessionId":"s"}}`)
	if m := one(t, fv); code(m) != codeNotAllowed {
		t.Fatalf("viewer prompt: %v", m)
	}
	r.hub.AuditAuthFailure("10.0.0.1:5555", "ws", "invalid token")
	if len(recs) != 2 || recs[0].Outcome != "denied" || recs[0].Role != "viewer" || recs[0].Method != "session/prompt" ||
		recs[1].Method != "auth" || recs[1].Peer != "10.0.0.1:5555" || recs[1].Detail != "invalid token" || recs[1].Time.IsZero() {
		t.Fatalf("audit %+v", recs)
	}
}

func TestAttachUnknownSessionAndMalformedParams(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	r.newSession(a, fa, "s1")
	r.from(a, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"nope"}}`)
	if m := one(t, fa); code(m) != codeUnknownSession {
		t.Fatalf("unknown session: %v", m)
	}
	bad := map[string][]string{
		"bridge/hello":    {`[1]`, `{"envelope":"yes"}`, `{"onSlow":5}`, `{"resume":5}`, `{"resume":"short"}`},
		"bridge/sessions": {`[1]`, `5`},
		"bridge/attach":   {`{}`, `{"sessionId":5}`, `{"sessionId":"s1","since":-1}`, `{"sessionId":"s1","since":"3"}`, `{"sessionId":"s1","last":-1}`, `{"sessionId":"s1","last":1.5}`, `{"sessionId":"s1","since":1,"last":1}`, `{"sessionId":"s1","since":99}`},
		"bridge/detach":   {`{}`, `{"sessionId":null}`, `[]`},
		"bridge/snapshot": {`{"sessionId":""}`, `{"sessionId":["s1"]}`, `"s1"`},
	}
	for method, list := range bad {
		for _, p := range list {
			r.from(a, `{"jsonrpc":"2.0","id":7,"method":%q,"params":%s}`, method, p)
			m := one(t, fa)
			// Non-structured params are a JSON-RPC framing error (-32600);
			// everything else is -32602.
			want := float64(codeInvalidParams)
			if p == `5` || p == `"s1"` {
				want = codeInvalidRequest
			}
			if code(m) != want || m["id"] != float64(7) {
				t.Errorf("%s %s: want %v with id 7, got %v", method, p, want, m)
			}
		}
	}
}

// TestRestoreFromState persists through a real store, restarts (a new hub
// on the reopened directory) and checks that history, seq and attach work,
// then that a session/load brings the session back to life.
func TestRestoreFromState(t *testing.T) {
	dir := t.TempDir()
	st, _, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, Config{Journal: st})
	a, fa := r.open(auth.RoleClient)
	r.newSession(a, fa, "s1")
	r.newSession(a, fa, "quiet") // no events, still listed after restart
	for i := 1; i <= 50; i++ {
		r.hub.AgentMessage(1, update("s1", i))
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st2, rec, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	r2 := newRig(t, Config{Journal: st2})
	r2.hub.Restore(restoredFrom(rec))
	list := r2.hub.Sessions()
	if len(list) != 2 || list[0].SessionID != "quiet" || list[1].SessionID != "s1" || list[1].Seq != 50 || list[1].Status != StatusClosed || list[0].Status != StatusClosed {
		t.Fatalf("sessions after restart %+v", list)
	}
	c := newStreamConn()
	cl := r2.hub.Open(c, ConnInfo{Role: auth.RoleViewer})
	r2.hub.Handle(cl, []byte(`{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1","since":0}}`))
	var evs [][]byte
	for _, m := range c.got {
		if m.Seq > 0 {
			evs = append(evs, m.Body())
		}
	}
	if len(evs) != 50 {
		t.Fatalf("replayed %d events after restart", len(evs))
	}
	for i, b := range evs {
		if !bytes.Equal(b, update("s1", i+1)) {
			t.Fatalf("event %d is %q", i+1, b)
		}
	}
	// A client loads it again: the agent's replay reaches the loader only
	// (the log has the history already); it is live, and new events
	// continue the seq.
	b, fb := r2.open(auth.RoleClient)
	r2.from(b, `{"jsonrpc":"2.0","id":9,"method":"session/load","params":{"sessionId":"s1"}}`)
	f := r2.forwarded()
	r2.hub.AgentMessage(1, update("s1", 1))
	r2.agentSays(`{"jsonrpc":"2.0","id":%v,"result":null}`, f["id"])
	if got := r2.hub.Sessions()[1]; got.Seq != 50 || got.Status != StatusIdle {
		t.Fatalf("after load %+v", got)
	}
	r2.hub.AgentMessage(1, update("s1", 51))
	if got := r2.hub.Sessions()[1]; got.Seq != 51 {
		t.Fatalf("after a live event %+v", got)
	}
	fb.take(t)
}

func TestRestoredHolesAreGaps(t *testing.T) {
	r := newRig(t, Config{Replay: 5})
	ev := func(seq uint64) RestoredEvent { return RestoredEvent{Seq: seq, Body: update("s1", int(seq))} }
	// Events 1..3 evicted, 4..5 kept, 6..7 lost, 8 kept, 9..12 lost (tail).
	r.hub.Restore([]RestoredSession{{ID: "s1", Seq: 12, Events: []RestoredEvent{ev(4), ev(5), ev(8)}}})
	v, fv := r.open(auth.RoleViewer)
	r.from(v, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1","since":1}}`)
	for r.hub.Pump(v) {
	}
	got := fv.take(t)
	type gap struct {
		from, to float64
		reason   string
	}
	var gaps []gap
	var seqs []float64
	// The stream, in order: the answer, then gaps where the events they
	// stand for would be: 2-3, 4, 5, 6-7, 8, 9-12.
	var order []string
	for _, m := range got {
		if m["method"] == "bridge/gap" {
			p := m["params"].(map[string]any)
			gaps = append(gaps, gap{p["fromSeq"].(float64), p["toSeq"].(float64), p["reason"].(string)})
			order = append(order, fmt.Sprintf("gap%v-%v", p["fromSeq"], p["toSeq"]))
		}
		if m["method"] == "session/update" {
			order = append(order, "event")
		}
		if m["id"] == float64(1) {
			seqs = append(seqs, m["result"].(map[string]any)["seq"].(float64))
			order = append(order, "answer")
		}
	}
	if fmt.Sprint(order) != "[answer gap2-3 event event gap6-7 event gap9-12]" {
		t.Fatalf("stream order %v", order)
	}
	want := []gap{{2, 3, "evicted from the replay log"}, {6, 7, "not persisted before the daemon stopped"}, {9, 12, "not persisted before the daemon stopped"}}
	if fmt.Sprint(gaps) != fmt.Sprint(want) || fmt.Sprint(seqs) != "[12]" {
		t.Fatalf("gaps %v seq %v", gaps, seqs)
	}
}

// resumeRig opens a client that said hello with key.
func (r *rig) resumeConn(key string) (*Client, *fakeConn, map[string]any) {
	r.t.Helper()
	cl, fc := r.open(auth.RoleClient)
	r.from(cl, `{"jsonrpc":"2.0","id":"h","method":"bridge/hello","params":{"resume":%q}}`, key)
	var rest []map[string]any
	var res map[string]any
	for _, m := range fc.take(r.t) {
		switch {
		case m["id"] == "h" && res == nil:
			if res, _ = m["result"].(map[string]any); res == nil {
				r.t.Fatalf("hello failed: %v", m)
			}
		case res != nil:
			rest = append(rest, m)
		}
	}
	if res == nil {
		r.t.Fatalf("no hello response")
	}
	fc.mu.Lock()
	for _, m := range rest {
		b, _ := json.Marshal(m)
		fc.got = append(fc.got, wire.New(b))
	}
	fc.mu.Unlock()
	return cl, fc, res["resume"].(map[string]any)
}

const keyK = "k-0123456789abcdef0123"

func TestResumeRebindsInFlightCalls(t *testing.T) {
	r := newRig(t, Config{})
	a, _, rr := r.resumeConn(keyK)
	if rr["resumed"] != false {
		t.Fatalf("first hello resumed: %v", rr)
	}
	r.from(a, `{"jsonrpc":"2.0","id":7,"method":"slow","params":{}}`)
	r.from(a, `{"jsonrpc":"2.0","id":8,"method":"quick","params":{}}`)
	for i := 9; i < 40; i++ {
		r.from(a, `{"jsonrpc":"2.0","id":%d,"method":"slow","params":{}}`, i)
	}
	fwd := r.ag.take()
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":"eight"}`, fwd[1]["id"]) // answered while A is alive
	r.hub.Closed(a)
	if st := r.hub.Stats(); st.Resumable != 1 || st.PendingCalls != 32 {
		t.Fatalf("stats after drop %+v", st)
	}
	b, fb, rr := r.resumeConn(keyK)
	want := "[7"
	for i := 9; i < 40; i++ {
		want += fmt.Sprint(" ", i)
	}
	if rr["resumed"] != true || rr["received"] != float64(34) || fmt.Sprint(rr["pending"]) != want+"]" {
		t.Fatalf("resume result %v", rr)
	}
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":"seven"}`, fwd[0]["id"])
	if m := one(t, fb); m["id"] != float64(7) || m["result"] != "seven" {
		t.Fatalf("B got %v", m)
	}
	_ = b
}

func TestResumeDeliversBufferedAnswersAndAgentDeath(t *testing.T) {
	r := newRig(t, Config{})
	a, _, _ := r.resumeConn(keyK)
	r.from(a, `{"jsonrpc":"2.0","id":"x","method":"slow","params":{}}`)
	r.from(a, `{"jsonrpc":"2.0","id":"y","method":"slow","params":{}}`)
	fwd := r.ag.take()
	r.hub.Closed(a)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"big":"answer"}}`, fwd[0]["id"])
	r.hub.AgentExited(1, fmt.Errorf("killed"), time.Second) // y fails with -32003
	_, fb, rr := r.resumeConn(keyK)
	if rr["resumed"] != true || fmt.Sprint(rr["pending"]) != "[x y]" {
		t.Fatalf("resume result %v", rr)
	}
	var x, y map[string]any
	for _, m := range fb.take(t) {
		switch m["id"] {
		case "x":
			x = m
		case "y":
			y = m
		}
	}
	if x == nil || x["result"].(map[string]any)["big"] != "answer" {
		t.Fatalf("x: %v", x)
	}
	if y == nil || code(y) != codeAgentUnavailable {
		t.Fatalf("y: %v", y)
	}
}

func TestResumeBufferCapAndExpiry(t *testing.T) {
	r := newRig(t, Config{ResumeBytes: 100, ResumeWindow: 30 * time.Millisecond})
	a, _, _ := r.resumeConn(keyK)
	r.from(a, `{"jsonrpc":"2.0","id":1,"method":"slow","params":{}}`)
	fwd := r.ag.take()
	r.hub.Closed(a)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":%q}`, fwd[0]["id"], string(bytes.Repeat([]byte("z"), 500)))
	_, fb, rr := r.resumeConn(keyK)
	if rr["resumed"] != true {
		t.Fatalf("%v", rr)
	}
	if m := one(t, fb); code(m) != codeOverloaded || m["id"] != float64(1) {
		t.Fatalf("over the cap: %v", m)
	}

	// Expiry: the key is forgotten, a later hello starts afresh.
	c, _, _ := r.resumeConn("another-key-0123456789")
	r.from(c, `{"jsonrpc":"2.0","id":2,"method":"slow","params":{}}`)
	fwd = r.ag.take()
	r.hub.Closed(c)
	deadline := time.Now().Add(5 * time.Second)
	for r.hub.Stats().Resumable > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("parked connection never expired")
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":"late"}`, fwd[0]["id"])
	_, fd, rr := r.resumeConn("another-key-0123456789")
	if rr["resumed"] != false {
		t.Fatalf("expired key resumed: %v", rr)
	}
	if got := fd.take(t); len(got) != 0 {
		t.Fatalf("got %v", got)
	}
}

func TestResumeTakeoverRoleAndSessions(t *testing.T) {
	r := newRig(t, Config{})
	a, fa, _ := r.resumeConn(keyK)
	r.newSession(a, fa, "s1")
	r.from(a, `{"jsonrpc":"2.0","id":3,"method":"session/new","params":{}}`)
	newCall := r.forwarded()

	// Another role may not take the key.
	op, fop := r.open(auth.RoleOperator)
	r.from(op, `{"jsonrpc":"2.0","id":1,"method":"bridge/hello","params":{"resume":%q}}`, keyK)
	if m := one(t, fop); code(m) != codeNotAllowed {
		t.Fatalf("operator took a client's key: %v", m)
	}
	// Same role while A is still open: B takes over, A is closed.
	b, fb, rr := r.resumeConn(keyK)
	fa.mu.Lock()
	closed := fa.closed
	fa.mu.Unlock()
	if closed == "" || rr["resumed"] != true || fmt.Sprint(rr["pending"]) != "[3]" {
		t.Fatalf("takeover: A closed %q, result %v", closed, rr)
	}
	r.hub.Closed(a) // the transport's later report is harmless
	// B owns s1 now: a permission request goes to B.
	r.agentSays(`{"jsonrpc":"2.0","id":50,"method":"session/request_permission","params":{"sessionId":"s1"}}`)
	if m := one(t, fb); m["method"] != "session/request_permission" {
		t.Fatalf("B: %v", m)
	}
	r.from(b, `{"jsonrpc":"2.0","method":"x","params":{}}`)
	r.ag.take()

	// A session created while the owner is away is owned and attached by
	// its successor, with its events from the start.
	r.hub.Closed(b)
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s2","n":1}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"sessionId":"s2"}}`, newCall["id"])
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s2","n":2}}`)
	_, fc, rr := r.resumeConn(keyK)
	if fmt.Sprint(rr["pending"]) != "[3]" {
		t.Fatalf("result %v", rr)
	}
	var order []string
	for _, m := range fc.take(t) {
		switch {
		case m["id"] == float64(3):
			order = append(order, "new:"+m["result"].(map[string]any)["sessionId"].(string))
		case m["method"] == "session/update":
			order = append(order, fmt.Sprint("update", m["params"].(map[string]any)["n"]))
		case m["method"] == "session/request_permission":
			order = append(order, "permission")
		}
	}
	if fmt.Sprint(order) != "[new:s2 update1 update2 permission]" {
		t.Fatalf("successor got %v", order)
	}
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s2","n":3}}`)
	if m := one(t, fc); m["params"].(map[string]any)["n"] != float64(3) {
		t.Fatalf("live after resume: %v", m)
	}
}

func TestEventLogSinceWithHoles(t *testing.T) {
	l := newEventLog("", 10, 1<<20, nil)
	for _, s := range []uint64{3, 4, 7, 8, 20} {
		m := wire.New([]byte("{}"))
		m.Seq = s
		l.append(m)
	}
	for after, want := range map[uint64]string{0: "[3 4 7 8 20]", 4: "[7 8 20]", 5: "[7 8 20]", 8: "[20]", 19: "[20]", 20: "[]"} {
		var got []uint64
		for _, m := range l.since(after) {
			got = append(got, m.Seq)
		}
		if g := fmt.Sprint(got); g != want && !(want == "[]" && len(got) == 0) {
			t.Errorf("since(%d) = %v, want %s", after, got, want)
		}
	}
}

// BenchmarkPublishPersisted is BenchmarkFanout with one client and a real
// store behind the hub: the hot-path cost of --state-dir (an enqueue under
// the hub lock) and whether the writer keeps up (drops per op).
func BenchmarkPublishPersisted(b *testing.B) {
	st, _, err := store.Open(b.TempDir(), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	h := New(Config{Replay: 1024, Journal: st})
	h.SetAgent(&fakeAgent{})
	h.AgentStarted(1)
	cl := h.Open(nopConn{}, ConnInfo{Role: auth.RoleViewer})
	h.mu.Lock()
	h.session("s1").attach(cl)
	h.mu.Unlock()
	msg := update("s1", 7)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h.AgentMessage(1, append([]byte(nil), msg...))
	}
	b.StopTimer()
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	s := st.Stats()
	b.ReportMetric(float64(s.Dropped)/float64(b.N), "drops/op")
}

// restoredFrom is what cmd does with the store's recovered sessions.
func restoredFrom(rec []store.Session) []RestoredSession {
	out := make([]RestoredSession, len(rec))
	for i, s := range rec {
		out[i] = RestoredSession{ID: s.ID, Seq: s.Seq, Events: make([]RestoredEvent, len(s.Events))}
		for j, e := range s.Events {
			out[i].Events[j] = RestoredEvent(e)
		}
	}
	return out
}
