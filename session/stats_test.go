package session

import (
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/auth"
)

// checkGauges compares what Stats reports with the maps it counts.
func checkGauges(t *testing.T, h *Hub, when string) Stats {
	t.Helper()
	st := h.Stats()
	h.mu.Lock()
	want := Stats{Sessions: len(h.sessions), Connections: len(h.conns), PendingRequests: len(h.requests), Resumable: len(h.parked),
		PendingCalls: len(h.calls.ids(func(*call) bool { return true })), ReplayBytes: 0}
	for _, s := range h.sessions {
		want.ReplayBytes += s.log.bytes
	}
	h.mu.Unlock()
	if st.Sessions != want.Sessions || st.Connections != want.Connections || st.PendingRequests != want.PendingRequests ||
		st.Resumable != want.Resumable || st.PendingCalls != want.PendingCalls || st.ReplayBytes != want.ReplayBytes {
		t.Fatalf("%s: Stats %+v, the hub holds %+v", when, st, want)
	}
	return st
}

// Stats counts what it reports where it changes: through sessions, calls,
// agent requests, parked connections and evictions its figures match the
// hub's maps.
func TestStatsFollowTheHub(t *testing.T) {
	r := newRig(t, Config{MaxSessions: 1})
	a, fa := r.open(auth.RoleClient)
	checkGauges(t, r.hub, "one connection")
	r.from(a, `{"jsonrpc":"2.0","id":"new","method":"session/new","params":{}}`)
	f := r.forwarded()
	if st := checkGauges(t, r.hub, "session/new in flight"); st.PendingCalls != 1 {
		t.Fatalf("pending calls %d, want 1", st.PendingCalls)
	}
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"sessionId":"s1"}}`, f["id"])
	fa.take(t)
	r.agentSays(`{"jsonrpc":"2.0","id":"p","method":"session/request_permission","params":{"sessionId":"s1","options":[]}}`)
	ask := one(t, fa)
	if st := checkGauges(t, r.hub, "a permission pending"); st.PendingRequests != 1 || st.Sessions != 1 || st.PendingCalls != 0 {
		t.Fatalf("with a permission pending: %+v", st)
	}
	r.from(a, `{"jsonrpc":"2.0","id":%v,"result":{"outcome":{"outcome":"cancelled"}}}`, ask["id"])
	r.ag.take()
	if st := checkGauges(t, r.hub, "answered"); st.PendingRequests != 0 {
		t.Fatalf("after the answer: %+v", st)
	}
	// Sessions only the agent named, past MaxSessions 1: the older goes.
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"x1"}}`)
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"x2"}}`)
	if st := checkGauges(t, r.hub, "agent-named sessions"); st.SessionsEvicted != 1 || st.Sessions != 2 {
		t.Fatalf("after an eviction: %+v", st)
	}
	// A dropped connection with a resume key is parked.
	b, _, _ := r.resumeConn("0123456789abcdef-key")
	r.hub.Closed(b)
	if st := checkGauges(t, r.hub, "parked"); st.Resumable != 1 || st.Connections != 1 {
		t.Fatalf("after a drop with a resume key: %+v", st)
	}
	r.hub.Closed(a)
	checkGauges(t, r.hub, "all closed")
}

// A /metrics or /healthz scrape reads Stats while routing holds its lock:
// it must not wait for it.
func TestStatsTakeNoRoutingLock(t *testing.T) {
	r := newRig(t, Config{})
	r.open(auth.RoleClient)
	r.hub.mu.Lock()
	defer r.hub.mu.Unlock()
	done := make(chan Stats, 1)
	go func() { done <- r.hub.Stats() }()
	select {
	case st := <-done:
		if st.Connections != 1 || !st.AgentUp {
			t.Fatalf("Stats %+v", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stats waited for the routing lock")
	}
}
