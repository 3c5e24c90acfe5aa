package session

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/wire"
)

// fakeConn records what the hub queues for it.
type fakeConn struct {
	mu     sync.Mutex
	got    []*wire.Msg
	closed string
}

func (c *fakeConn) Send(m *wire.Msg, _ wire.Class) bool {
	c.mu.Lock()
	c.got = append(c.got, m)
	c.mu.Unlock()
	return true
}

func (c *fakeConn) Close(_ CloseCode, reason string) {
	c.mu.Lock()
	c.closed = reason
	c.mu.Unlock()
}

// take returns and forgets what was queued, decoded.
func (c *fakeConn) take(t *testing.T) []map[string]any {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []map[string]any
	for _, m := range c.got {
		var v map[string]any
		if err := json.Unmarshal(m.Body(), &v); err != nil {
			t.Fatalf("hub queued invalid JSON %q: %v", m.Body(), err)
		}
		out = append(out, v)
	}
	c.got = nil
	return out
}

// fakeAgent records what the hub sends to the agent.
type fakeAgent struct {
	mu   sync.Mutex
	sent []map[string]any
	down bool
}

func (a *fakeAgent) Send(b []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.down {
		return fmt.Errorf("agent down")
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("hub sent invalid JSON %q: %v", b, err)
	}
	a.sent = append(a.sent, v)
	return nil
}

func (a *fakeAgent) take() []map[string]any {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.sent
	a.sent = nil
	return s
}

type rig struct {
	t   *testing.T
	hub *Hub
	ag  *fakeAgent
}

func newRig(t *testing.T, cfg Config) *rig {
	h := New(cfg)
	ag := &fakeAgent{}
	h.SetAgent(ag)
	h.AgentStarted(1)
	return &rig{t: t, hub: h, ag: ag}
}

func (r *rig) open(role auth.Role) (*Client, *fakeConn) {
	fc := &fakeConn{}
	return r.hub.Open(fc, ConnInfo{Role: role, Transport: "test"}), fc
}

func (r *rig) from(cl *Client, format string, a ...any) {
	r.hub.Handle(cl, []byte(fmt.Sprintf(format, a...)))
}

// agentSays delivers one message from the agent as the agent package does:
// lent from a reader's buffer (agent.Handler), valid only during the call.
// The buffer is scribbled over when the call returns, so anything the hub
// kept without copying shows up as 'X's in what a test reads later.
func (r *rig) agentSays(format string, a ...any) {
	lend(r.hub, 1, []byte(fmt.Sprintf(format, a...)))
}

// lend passes msg to h.AgentMessage with its capacity cut to its length
// (as the readers do), then overwrites it with 'X'.
func lend(h *Hub, gen uint64, msg []byte) {
	h.AgentMessage(gen, msg[:len(msg):len(msg)])
	for i := range msg {
		msg[i] = 'X'
	}
}

// forwarded returns the single message the agent got.
func (r *rig) forwarded() map[string]any {
	r.t.Helper()
	s := r.ag.take()
	if len(s) != 1 {
		r.t.Fatalf("agent got %d messages, want 1: %v", len(s), s)
	}
	return s[0]
}

func one(t *testing.T, fc *fakeConn) map[string]any {
	t.Helper()
	var got []map[string]any
	for _, m := range fc.take(t) {
		if m["method"] != "bridge/status" {
			got = append(got, m)
		}
	}
	if len(got) != 1 {
		t.Fatalf("want 1 message, got %d: %v", len(got), got)
	}
	return got[0]
}

func code(m map[string]any) float64 {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(float64)
	return c
}

func TestIDRemappingKeepsClientsApart(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	b, fb := r.open(auth.RoleClient)
	r.from(a, `{"jsonrpc":"2.0","id":1,"method":"x","params":{"who":"a"}}`)
	fwdA := r.forwarded()
	r.from(b, `{"jsonrpc":"2.0","id":1,"method":"x","params":{"who":"b"}}`)
	fwdB := r.forwarded()
	if fwdA["id"] == fwdB["id"] {
		t.Fatalf("both forwarded with id %v", fwdA["id"])
	}
	// Answer b first, then a.
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":"for-b"}`, fwdB["id"])
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":"for-a"}`, fwdA["id"])
	if m := one(t, fa); m["result"] != "for-a" || m["id"] != float64(1) {
		t.Fatalf("a got %v", m)
	}
	if m := one(t, fb); m["result"] != "for-b" || m["id"] != float64(1) {
		t.Fatalf("b got %v", m)
	}
}

func TestStringIDsAndBodyUntouched(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	r.from(a, `{"jsonrpc":"2.0","id":"req-7","method":"x","params":{"id":99,"nested":{"id":"inner"}}}`)
	f := r.forwarded()
	if p := f["params"].(map[string]any); p["id"] != float64(99) || p["nested"].(map[string]any)["id"] != "inner" {
		t.Fatalf("params rewritten: %v", f)
	}
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"id":"keep"}}`, f["id"])
	if m := one(t, fa); m["id"] != "req-7" || m["result"].(map[string]any)["id"] != "keep" {
		t.Fatalf("got %v", m)
	}
}

func TestInitializeOnceAndCached(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	b, fb := r.open(auth.RoleClient)
	r.from(a, `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`)
	r.from(b, `{"jsonrpc":"2.0","id":"b1","method":"initialize","params":{}}`) // while in flight
	f := r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"protocolVersion":1}}`, f["id"])
	if m := one(t, fa); m["id"] != float64(1) {
		t.Fatalf("a: %v", m)
	}
	if m := one(t, fb); m["id"] != "b1" {
		t.Fatalf("b: %v", m)
	}
	c, fc := r.open(auth.RoleClient)
	r.from(c, `{"jsonrpc":"2.0","id":3,"method":"initialize","params":{}}`)
	if len(r.ag.take()) != 0 {
		t.Fatalf("a later initialize reached the agent")
	}
	if m := one(t, fc); m["id"] != float64(3) || m["result"].(map[string]any)["protocolVersion"] != float64(1) {
		t.Fatalf("c: %v", m)
	}
	// A restarted agent is initialised again by the bridge itself.
	r.hub.AgentExited(1, nil, time.Second)
	r.hub.AgentStarted(2)
	re := r.ag.take()
	if len(re) != 1 || re[0]["method"] != "initialize" {
		t.Fatalf("restart: agent got %v, want initialize", re)
	}
}

// newSession makes cl own a session sid through session/new.
func (r *rig) newSession(cl *Client, fc *fakeConn, sid string) {
	r.t.Helper()
	r.from(cl, `{"jsonrpc":"2.0","id":"new","method":"session/new","params":{}}`)
	f := r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"sessionId":%q}}`, f["id"], sid)
	fc.take(r.t)
}

func TestNotificationsFanOutBySession(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	b, fb := r.open(auth.RoleClient)
	r.newSession(a, fa, "s1")
	r.newSession(b, fb, "s2")
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":1}}`)
	if len(fb.take(t)) != 0 {
		t.Fatalf("b got s1's event")
	}
	if m := one(t, fa); m["params"].(map[string]any)["n"] != float64(1) {
		t.Fatalf("a: %v", m)
	}
	r.agentSays(`{"jsonrpc":"2.0","method":"global/notice","params":{}}`)
	if len(fa.take(t)) != 1 || len(fb.take(t)) != 1 {
		t.Fatalf("a notification without sessionId must reach every client")
	}
	// b may not drive a's session without attaching.
	r.from(b, `{"jsonrpc":"2.0","id":5,"method":"session/prompt","params":{"sessionId":"s1"}}`)
	if m := one(t, fb); code(m) != codeUnknownSession {
		t.Fatalf("unattached prompt: %v", m)
	}
}

func TestPermissionFirstAnswerWins(t *testing.T) {
	r := newRig(t, Config{})
	owner, fo := r.open(auth.RoleClient)
	op, fop := r.open(auth.RoleOperator)
	viewer, fv := r.open(auth.RoleViewer)
	r.newSession(owner, fo, "s1")
	r.from(op, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1"}}`)
	r.from(viewer, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1"}}`)
	fop.take(t)
	fv.take(t)
	r.agentSays(`{"jsonrpc":"2.0","id":0,"method":"session/request_permission","params":{"sessionId":"s1","options":[]}}`)
	reqO, reqOp := one(t, fo), one(t, fop)
	for _, m := range fv.take(t) {
		if m["method"] == "session/request_permission" {
			t.Fatalf("viewer received the permission request")
		}
	}
	if reqO["id"] != reqOp["id"] {
		t.Fatalf("owner and operator see different ids")
	}
	// The viewer may not answer; the operator answers first; the owner is late.
	r.from(viewer, `{"jsonrpc":"2.0","id":%v,"result":{}}`, reqO["id"])
	if m := one(t, fv); code(m) != codeNotAllowed {
		t.Fatalf("viewer answer: %v", m)
	}
	r.from(op, `{"jsonrpc":"2.0","id":%v,"result":{"outcome":{"outcome":"selected","optionId":"allow"}}}`, reqO["id"])
	f := r.forwarded()
	if f["id"] != float64(0) {
		t.Fatalf("agent got the answer with id %v, want its own 0", f["id"])
	}
	if m := one(t, fo); m["method"] != "bridge/resolved" {
		t.Fatalf("owner: %v", m)
	}
	r.from(owner, `{"jsonrpc":"2.0","id":%v,"result":{}}`, reqO["id"])
	if len(r.ag.take()) != 0 {
		t.Fatalf("a second answer reached the agent")
	}
	if m := one(t, fo); m["method"] != "bridge/resolved" {
		t.Fatalf("late owner answer: %v", m)
	}
}

func TestPendingRequestWaitsForNextOwner(t *testing.T) {
	r := newRig(t, Config{})
	owner, fo := r.open(auth.RoleClient)
	r.newSession(owner, fo, "s1")
	r.hub.Closed(owner)
	r.agentSays(`{"jsonrpc":"2.0","id":"q","method":"session/request_permission","params":{"sessionId":"s1"}}`)
	var snap map[string]any
	probe, fp := r.open(auth.RoleViewer)
	r.from(probe, `{"jsonrpc":"2.0","id":1,"method":"bridge/snapshot","params":{"sessionId":"s1"}}`)
	snap = one(t, fp)
	res := snap["result"].(map[string]any)
	if res["status"] != string(StatusAwaitingHITL) || len(res["pending"].([]any)) != 1 {
		t.Fatalf("snapshot: %v", snap)
	}
	back, fb := r.open(auth.RoleClient)
	r.from(back, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1"}}`)
	got := fb.take(t)
	if len(got) != 2 || got[1]["method"] != "session/request_permission" {
		t.Fatalf("re-attached owner got %v", got)
	}
	r.from(back, `{"jsonrpc":"2.0","id":%v,"result":{"ok":true}}`, got[1]["id"])
	if f := r.forwarded(); f["id"] != "q" {
		t.Fatalf("agent got %v", f)
	}
}

func TestAgentRequestTimesOut(t *testing.T) {
	r := newRig(t, Config{RequestTimeout: 20 * time.Millisecond})
	r.agentSays(`{"jsonrpc":"2.0","id":9,"method":"session/request_permission","params":{"sessionId":"nobody"}}`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s := r.ag.take(); len(s) == 1 {
			if code(s[0]) != codeTimeout || s[0]["id"] != float64(9) {
				t.Fatalf("agent got %v", s[0])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no timeout error reached the agent")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAgentExitFailsPendingCalls(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	r.newSession(a, fa, "s1")
	r.from(a, `{"jsonrpc":"2.0","id":7,"method":"session/prompt","params":{"sessionId":"s1"}}`)
	r.forwarded()
	if got := fa.take(t); len(got) != 1 || got[0]["params"].(map[string]any)["status"] != "running" {
		t.Fatalf("want bridge/status running, got %v", got)
	}
	r.hub.AgentExited(1, fmt.Errorf("exit status 3"), time.Second)
	var sawErr, sawBlocked bool
	for _, m := range fa.take(t) {
		if m["id"] == float64(7) && code(m) == codeAgentUnavailable {
			sawErr = true
		}
		if m["method"] == "bridge/status" && m["params"].(map[string]any)["status"] == "blocked" {
			sawBlocked = true
		}
	}
	if !sawErr || !sawBlocked {
		t.Fatalf("after exit: error=%v blocked=%v", sawErr, sawBlocked)
	}
	r.from(a, `{"jsonrpc":"2.0","id":8,"method":"x"}`)
	if m := one(t, fa); code(m) != codeAgentUnavailable {
		t.Fatalf("request while down: %v", m)
	}
}

func TestAttachReplaySinceLastAndGap(t *testing.T) {
	r := newRig(t, Config{Replay: 5})
	a, fa := r.open(auth.RoleClient)
	r.newSession(a, fa, "s1")
	for i := 1; i <= 8; i++ {
		r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":%d}}`, i)
	}
	fa.take(t)
	v, fv := r.open(auth.RoleViewer)
	r.from(v, `{"jsonrpc":"2.0","id":1,"method":"bridge/hello","params":{"envelope":true}}`)
	fv.take(t)
	r.from(v, `{"jsonrpc":"2.0","id":2,"method":"bridge/attach","params":{"sessionId":"s1","since":1}}`)
	got := fv.take(t)
	// the answer, gap 2..3 (evicted), then seq 4..8 enveloped
	if len(got) != 7 || got[1]["method"] != "bridge/gap" {
		t.Fatalf("attach since=1 got %d: %v", len(got), got)
	}
	gp := got[1]["params"].(map[string]any)
	if gp["fromSeq"] != float64(2) || gp["toSeq"] != float64(3) {
		t.Fatalf("gap %v", gp)
	}
	if res := got[0]["result"].(map[string]any); res["replayed"] != float64(5) || res["seq"] != float64(8) {
		t.Fatalf("attach result %v", got[0])
	}
	for i, m := range got[2:] {
		p := m["params"].(map[string]any)
		if m["method"] != "bridge/event" || p["seq"] != float64(4+i) {
			t.Fatalf("replayed event %d: %v", i, m)
		}
	}
	// live events continue the sequence, no duplicates
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":9}}`)
	if m := one(t, fv); m["params"].(map[string]any)["seq"] != float64(9) {
		t.Fatalf("live after replay: %v", m)
	}
	w, fw := r.open(auth.RoleViewer)
	r.from(w, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1","last":2}}`)
	if got := fw.take(t); len(got) != 3 || got[1]["params"].(map[string]any)["n"] != float64(8) {
		t.Fatalf("last=2: %v", got)
	}
}

func TestRolePolicy(t *testing.T) {
	r := newRig(t, Config{})
	v, fv := r.open(auth.RoleViewer)
	r.from(v, `{"jsonrpc":"2.0","id":1,"method":"session/prompt","params":{"sessionId":"s"}}`)
	if m := one(t, fv); code(m) != codeNotAllowed {
		t.Fatalf("viewer prompt: %v", m)
	}
	if len(r.ag.take()) != 0 {
		t.Fatalf("a denied request reached the agent")
	}
	r.from(v, `{"jsonrpc":"2.0","id":2,"method":"bridge/sessions"}`)
	if m := one(t, fv); m["result"] == nil {
		t.Fatalf("viewer bridge/sessions: %v", m)
	}
}

func TestBridgeParamsValidation(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	// params that are neither object nor array break JSON-RPC itself
	r.from(a, `{"jsonrpc":"2.0","id":1,"method":"bridge/detach","params":"x"}`)
	if m := one(t, fa); code(m) != codeInvalidRequest || m["id"] != float64(1) {
		t.Fatalf("string params: want -32600 with the request's id, got %v", m)
	}
	for _, tc := range []struct{ msg string }{
		{`{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{}}`},
		{`{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":5}}`},
		{`{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":[1]}`},
		{`{"jsonrpc":"2.0","id":1,"method":"bridge/hello","params":{"onSlow":"explode"}}`},
		{`{"jsonrpc":"2.0","id":1,"method":"bridge/snapshot","params":{"sessionId":""}}`},
	} {
		r.from(a, "%s", tc.msg)
		if m := one(t, fa); code(m) != codeInvalidParams {
			t.Fatalf("%s: want -32602, got %v", tc.msg, m)
		}
	}
}

// BenchmarkFanout measures delivering one agent notification to N attached
// clients: the per-recipient cost of the hot path.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			h := New(Config{Replay: 1024})
			h.SetAgent(&fakeAgent{})
			h.AgentStarted(1)
			nc := nopConn{}
			var first *Client
			for i := 0; i < n; i++ {
				cl := h.Open(nc, ConnInfo{Role: auth.RoleViewer})
				if first == nil {
					first = cl
				}
			}
			h.mu.Lock()
			s := h.session("s1")
			for _, cl := range h.conns {
				s.attach(cl)
			}
			h.mu.Unlock()
			msg := []byte(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"0123456789012345678901234567890123456789012345678901234567890123"}}}}`)
			buf := make([]byte, len(msg))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				copy(buf, msg)
				h.AgentMessage(1, buf[:len(msg):len(msg)])
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
		})
	}
}

type nopConn struct{}

func (nopConn) Send(*wire.Msg, wire.Class) bool { return true }
func (nopConn) Close(CloseCode, string)         {}
