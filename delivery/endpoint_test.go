package delivery

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// stallTransport is a non-blocking socket whose peer takes room bytes,
// whole frames only, then refuses everything until room is raised.
type stallTransport struct {
	room   int
	frames [][]byte // what the peer got, copied
}

var _ PartialWriter = (*stallTransport)(nil)

func (t *stallTransport) Wake()                    {}
func (t *stallTransport) Frame(m *wire.Msg) []byte { return m.Line() }
func (t *stallTransport) Backlog() (int, bool)     { return 0, false }
func (t *stallTransport) Shut()                    {}
func (t *stallTransport) Write(frames [][]byte) error {
	panic("the endpoint must write a PartialWriter with WriteSome")
}

func (t *stallTransport) WriteSome(frames [][]byte) (int, error) {
	for i, f := range frames {
		if len(f) > t.room {
			return i, nil
		}
		t.room -= len(f)
		t.frames = append(t.frames, append([]byte(nil), f...))
	}
	return len(frames), nil
}

// recordingAgent keeps what the hub sends the agent.
type recordingAgent struct {
	mu   sync.Mutex
	sent [][]byte
}

func (a *recordingAgent) Send(b []byte) error {
	a.mu.Lock()
	a.sent = append(a.sent, append([]byte(nil), b...))
	a.mu.Unlock()
	return nil
}

// TestEndpointStalledPeerHoldsACursor: a catch-up connection whose peer
// stops reading keeps, of what its transport refused, only the message
// the next attempt writes; the rest goes back to the hub as a cursor, and
// later events cost it nothing (nothing is queued for it). When the peer
// reads again it gets every event, in order, no duplicate, no gap.
func TestEndpointStalledPeerHoldsACursor(t *testing.T) {
	hub := session.New(session.Config{})
	ag := &recordingAgent{}
	hub.SetAgent(ag)
	hub.AgentStarted(1)
	tr := &stallTransport{room: 1 << 20}
	cfg := &EndpointConfig{Hub: hub, Outbox: Config{}}
	e := NewEndpoint(cfg, tr, "test", "peer", nil)
	cl := e.Register(auth.RoleClient, nil)
	if e.Outbox().Policy() != Catchup {
		t.Fatalf("a client's policy is %v", e.Outbox().Policy())
	}
	hub.Handle(cl, []byte(`{"jsonrpc":"2.0","id":1,"method":"session/new","params":{}}`))
	var req struct {
		ID json.RawMessage `json:"id"`
	}
	if len(ag.sent) != 1 || json.Unmarshal(ag.sent[0], &req) != nil {
		t.Fatalf("agent got %q", ag.sent)
	}
	hub.AgentMessage(1, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{"sessionId":"s1"}}`, req.ID)))
	flush := func() {
		t.Helper()
		if err := e.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	flush()
	update := func(i int) []byte {
		return []byte(fmt.Sprintf(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"n":%d}}}`, i))
	}
	n := 0
	publish := func(k int) {
		for range k {
			n++
			hub.AgentMessage(1, update(n))
		}
	}
	publish(10)
	flush()
	// The peer stops reading: a pass is refused in part.
	tr.room = 300
	publish(200)
	flush() // writes what fits, holds the rest
	flush() // no progress: stuck, the held events recede
	flush()
	if h := e.held(); h == nil || len(h.msgs) != 1 {
		t.Fatalf("a stalled connection holds %v refused messages, want 1", h)
	}
	if e.Outbox().Len() != 0 || !cl.Catching() {
		t.Fatalf("queue %d entries, catching %v: want a cursor, not a queue", e.Outbox().Len(), cl.Catching())
	}
	publish(500)
	if e.Outbox().Len() != 0 {
		t.Fatalf("events were queued for a stalled connection: %d", e.Outbox().Len())
	}
	flush()
	if h := e.held(); h == nil || len(h.msgs) != 1 {
		t.Fatalf("held %v after a re-wake", h)
	}
	// It reads again.
	tr.room = 1 << 30
	for range 100 {
		flush()
		if !cl.Catching() && e.Outbox().Len() == 0 && e.held() == nil {
			break
		}
	}
	publish(5) // live again
	flush()
	next := 1
	for _, f := range tr.frames {
		var m struct {
			Method string `json:"method"`
			Params struct {
				Update struct {
					N int `json:"n"`
				} `json:"update"`
			} `json:"params"`
		}
		if err := json.Unmarshal(f, &m); err != nil {
			t.Fatalf("frame %q: %v", f, err)
		}
		if m.Method != "session/update" {
			continue
		}
		if m.Params.Update.N != next {
			t.Fatalf("got event %d, want %d", m.Params.Update.N, next)
		}
		next++
	}
	if next != n+1 {
		t.Fatalf("got %d events, want %d", next-1, n)
	}
}
