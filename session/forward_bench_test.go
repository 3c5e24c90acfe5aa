package session

import (
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// sinkAgent takes what the hub sends to the agent and keeps only the last
// message's bytes in a reused buffer: it allocates nothing, so allocation
// counts through it are the hub's.
type sinkAgent struct{ last []byte }

func (a *sinkAgent) Send(b []byte) error {
	a.last = append(a.last[:0], b...)
	return nil
}

// SendSplice makes it a SplicingAgent, as agent.Supervisor is.
func (a *sinkAgent) SendSplice(b []byte, start, end int, repl []byte) error {
	a.last = append(append(append(a.last[:0], b[:start]...), repl...), b[end:]...)
	return nil
}

// forwardRig is a hub with one client that owns session s1, for the
// benchmarks and allocation tests of the request path.
func forwardRig(tb testing.TB) (*Hub, *Client, *sinkAgent) {
	tb.Helper()
	h := New(Config{Replay: 1024})
	ag := &sinkAgent{}
	h.SetAgent(ag)
	h.AgentStarted(1)
	cl := h.Open(nopConn{}, ConnInfo{Role: auth.RoleClient, Transport: "test"})
	h.mu.Lock()
	s := h.session("s1")
	h.setOwner(s, cl)
	s.attach(cl)
	h.mu.Unlock()
	return h, cl, ag
}

// promptReq is a session-gated client request of the size of a short
// prompt, with its id at the end of a reused buffer's prefix.
const promptReq = `{"jsonrpc":"2.0","id":17,"method":"session/set_mode","params":{"sessionId":"s1","modeId":"Refactor the frame reader so it never copies."}}`

// roundTrip sends one client request and the agent's answer to it (the
// bridge ids ascend from 1 in a fresh hub).
func roundTrip(h *Hub, cl *Client, req, resp []byte, bid int64) []byte {
	h.Handle(cl, req)
	resp = append(resp[:0], `{"jsonrpc":"2.0","id":`...)
	resp = strconv.AppendInt(resp, bid, 10)
	resp = append(resp, `,"result":{}}`...)
	h.AgentMessage(1, resp)
	return resp
}

// BenchmarkRequestRoundTrip is one client request forwarded to the agent
// and its answer routed back: the hub's share of the RTT path.
func BenchmarkRequestRoundTrip(b *testing.B) {
	h, cl, _ := forwardRig(b)
	req := []byte(promptReq)
	resp := make([]byte, 0, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp = roundTrip(h, cl, req, resp, int64(i+1))
	}
}

// BenchmarkRequestRoundTripParallel is the same from GOMAXPROCS clients
// at once, each on its own session: what sharing the hub costs them.
func BenchmarkRequestRoundTripParallel(b *testing.B) {
	h := New(Config{Replay: 1024})
	ag := &routeAgent{bids: make(map[string]*int64)}
	h.SetAgent(ag)
	h.AgentStarted(1)
	var mu sync.Mutex
	next := 0
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		cl := h.Open(nopConn{}, ConnInfo{Role: auth.RoleClient, Transport: "test"})
		mu.Lock()
		next++
		sid := "s" + strconv.Itoa(next)
		slot := new(int64)
		ag.mu.Lock()
		ag.bids[sid] = slot
		ag.mu.Unlock()
		mu.Unlock()
		h.mu.Lock()
		s := h.session(sid)
		h.setOwner(s, cl)
		s.attach(cl)
		h.mu.Unlock()
		req := []byte(`{"jsonrpc":"2.0","id":17,"method":"session/set_mode","params":{"sessionId":"` + sid + `","modeId":"Refactor the frame reader so it never copies."}}`)
		resp := make([]byte, 0, 64)
		for pb.Next() {
			h.Handle(cl, req)
			resp = append(resp[:0], `{"jsonrpc":"2.0","id":`...)
			resp = strconv.AppendInt(resp, *slot, 10)
			resp = append(resp, `,"result":{}}`...)
			h.AgentMessage(1, resp)
		}
	})
}

// routeAgent records, per session, the bridge id of the last request the
// hub sent it, in a slot its sender reads back (Send runs on the sender's
// goroutine, inside Handle).
type routeAgent struct {
	mu   sync.Mutex // guards bids' keys (set up before the requests)
	bids map[string]*int64
}

func (a *routeAgent) Send(b []byte) error {
	hd, err := jsonrpc.Peek(b)
	if err != nil {
		return err
	}
	a.mu.Lock()
	slot := a.bids[string(hd.SessionID)]
	a.mu.Unlock()
	if id, ok := parseID(hd.ID); ok && slot != nil {
		*slot = id
	}
	return nil
}

// mallocs is the process's allocation count so far.
func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// A client's request for its session goes to the agent with no allocation
// (interned method, pooled call, id spliced into the agent's queue), and
// the round trip allocates only the answer the client gets: its wire.Msg
// with its bytes (one allocation, wire.Spliced).
func TestAllocsForward(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates; the Makefile runs TestAllocs without -race")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	h, cl, ag := forwardRig(t)
	req := []byte(promptReq)
	resp := make([]byte, 0, 64)
	const warm, runs = 100, 1000
	for i := 1; i <= warm; i++ {
		resp = roundTrip(h, cl, req, resp, int64(i))
	}
	var forward uint64
	start := mallocs()
	for i := warm + 1; i <= warm+runs; i++ {
		before := mallocs()
		h.Handle(cl, req)
		forward += mallocs() - before
		resp = append(resp[:0], `{"jsonrpc":"2.0","id":`...)
		resp = strconv.AppendInt(resp, int64(i), 10)
		resp = append(resp, `,"result":{}}`...)
		h.AgentMessage(1, resp)
	}
	total := mallocs() - start
	if string(ag.last) != `{"jsonrpc":"2.0","id":`+strconv.Itoa(warm+runs)+`,"method":"session/set_mode","params":{"sessionId":"s1","modeId":"Refactor the frame reader so it never copies."}}` {
		t.Fatalf("the agent got %s", ag.last)
	}
	if forward != 0 {
		t.Errorf("forwarding a request allocated %.2f times per request, want 0", float64(forward)/runs)
	}
	// Each ReadMemStats pair around Handle adds nothing to the count.
	if per := float64(total-forward) / runs; per > 1 {
		t.Errorf("the answer allocated %.2f times per request, want at most 1 (its wire.Msg with its bytes)", per)
	}
	if st := h.Stats(); st.PendingCalls != 0 {
		t.Fatalf("calls left pending: %+v", st)
	}
}
