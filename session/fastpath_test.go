package session

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/wire"
)

// chanAgent hands every request the hub forwards to a goroutine that
// answers it, as an agent on its own goroutine does. Its channel must hold
// every request of a test: Send must not block (the hub calls it with its
// lock held).
type chanAgent struct{ ch chan []byte }

func (a *chanAgent) Send(b []byte) error {
	a.ch <- append([]byte(nil), b...)
	return nil
}

// seqConn records the seqs of the enveloped events it gets, and counts the
// answers.
type seqConn struct {
	mu      sync.Mutex
	seqs    map[string][]uint64
	answers int
}

func (c *seqConn) Send(m *wire.Msg, _ wire.Class) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.Seq != 0 {
		if c.seqs == nil {
			c.seqs = make(map[string][]uint64)
		}
		c.seqs[m.SessionID] = append(c.seqs[m.SessionID], m.Seq)
		return true
	}
	if hd, err := jsonrpc.Peek(m.Body()); err == nil && hd.Kind == jsonrpc.KindResponse && !hd.IsError {
		c.answers++
	}
	return true
}

func (c *seqConn) Close(CloseCode, string) {}

// The shared paths at once, under the race detector: clients on their own
// sessions send requests while the agent answers them and streams events,
// viewers attach and detach (exclusive), and Stats is scraped. Every
// request is answered exactly once, and every client sees its session's
// events in seq order with no duplicate.
func TestSharedPathsConcurrent(t *testing.T) {
	const clients, requests, events = 4, 300, 300
	h := New(Config{})
	ag := &chanAgent{ch: make(chan []byte, clients*requests)}
	h.SetAgent(ag)
	h.AgentStarted(1)
	conns := make([]*seqConn, clients)
	cls := make([]*Client, clients)
	for i := range cls {
		conns[i] = &seqConn{}
		cls[i] = h.Open(conns[i], ConnInfo{Role: auth.RoleClient, Transport: "test"})
		h.mu.Lock()
		s := h.session("s" + strconv.Itoa(i))
		h.setOwner(s, cls[i])
		s.attach(cls[i])
		cls[i].opts.Envelope = true
		h.claim(s)
		h.mu.Unlock()
	}
	var agentDone sync.WaitGroup
	agentDone.Add(1)
	go func() { // the agent: answers each request after an event for its session
		defer agentDone.Done()
		for b := range ag.ch {
			hd, err := jsonrpc.Peek(b)
			if err != nil {
				t.Errorf("agent got %q: %v", b, err)
				continue
			}
			h.AgentMessage(1, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":%q,"n":1}}`, hd.SessionID)))
			h.AgentMessage(1, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{}}`, hd.ID)))
		}
	}()
	var wg sync.WaitGroup
	for i := range cls {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < requests; j++ {
				h.Handle(cls[i], []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"session/set_mode","params":{"sessionId":"s%d","modeId":"m"}}`, j, i)))
			}
		}(i)
	}
	wg.Add(1)
	go func() { // an event stream on session s0 besides the answers' events
		defer wg.Done()
		for j := 0; j < events; j++ {
			h.AgentMessage(1, []byte(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s0","n":2}}`))
		}
	}()
	wg.Add(1)
	go func() { // a viewer attaches and detaches, replaying, and pumps
		defer wg.Done()
		vc := &seqConn{}
		v := h.Open(vc, ConnInfo{Role: auth.RoleViewer, Transport: "test"})
		for j := 0; j < 50; j++ {
			h.Handle(v, []byte(`{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s0","since":0}}`))
			for h.Pump(v) {
			}
			_ = h.Stats()
			h.Handle(v, []byte(`{"jsonrpc":"2.0","id":2,"method":"bridge/detach","params":{"sessionId":"s0"}}`))
		}
		h.Closed(v)
	}()
	wg.Wait()
	close(ag.ch)
	agentDone.Wait()
	if st := h.Stats(); st.PendingCalls != 0 || st.ClientMessages != clients*requests+100 {
		t.Fatalf("after the run: %+v", st)
	}
	for i, c := range conns {
		c.mu.Lock()
		if c.answers != requests {
			t.Errorf("client %d got %d answers, want %d", i, c.answers, requests)
		}
		seqs := c.seqs["s"+strconv.Itoa(i)]
		want := requests
		if i == 0 {
			want += events
		}
		if len(seqs) != want {
			t.Errorf("client %d got %d events, want %d", i, len(seqs), want)
		}
		for k, sq := range seqs {
			if sq != uint64(k+1) {
				t.Errorf("client %d: event %d has seq %d", i, k, sq)
				break
			}
		}
		c.mu.Unlock()
	}
	var sessions []SessionInfo
	b, _ := json.Marshal(h.Sessions())
	_ = json.Unmarshal(b, &sessions)
	for _, s := range sessions {
		if s.Status != StatusIdle {
			t.Errorf("session %s is %s after every answer", s.SessionID, s.Status)
		}
	}
}

func TestHasToken(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want bool
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"m","params":{"x":1}}`, false},
		{`{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"progressToken":1}}}`, true},
		{`{"jsonrpc":"2.0","id":1,"method":"m","params":{"workDoneToken":"w"}}`, true},
		{`{"jsonrpc":"2.0","id":1,"method":"m","params":{"partialResultToken":"p"}}`, true},
		// Another key ending in Token first, then a progress token.
		{`{"jsonrpc":"2.0","id":1,"method":"m","params":{"accessToken":"a","_meta":{"progressToken":2}}}`, true},
		{`{"jsonrpc":"2.0","id":1,"method":"m","params":{"accessToken":"a","Token":"b"}}`, false},
		{`Token"`, false},
	} {
		if got := hasToken([]byte(tc.msg)); got != tc.want {
			t.Errorf("hasToken(%s) = %v, want %v", tc.msg, got, tc.want)
		}
	}
}
