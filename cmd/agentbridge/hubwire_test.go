package main

import (
	"errors"
	"testing"

	"github.com/agentbridge/agentbridge/agent"
	"github.com/agentbridge/agentbridge/audit"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/store"
)

// The agent's overload reaches the hub as its own sentinel (so the client
// gets -32004), and its other errors pass unchanged.
func TestHubAgentErr(t *testing.T) {
	err := hubAgentErr(agent.ErrOverloaded)
	if !errors.Is(err, session.ErrAgentOverloaded) || !errors.Is(err, agent.ErrOverloaded) {
		t.Fatalf("overload became %v", err)
	}
	if err := hubAgentErr(agent.ErrUnavailable); err != agent.ErrUnavailable {
		t.Fatalf("unavailable became %v", err)
	}
	if hubAgentErr(nil) != nil {
		t.Fatal("nil became an error")
	}
}

func TestRestoredAndAuditConversions(t *testing.T) {
	body := []byte(`{"x":1}`)
	got := restored([]store.Session{{ID: "s", Seq: 9, Events: []store.Event{{Seq: 3, Body: body}}}})
	if len(got) != 1 || got[0].ID != "s" || got[0].Seq != 9 || len(got[0].Events) != 1 || got[0].Events[0].Seq != 3 || &got[0].Events[0].Body[0] != &body[0] {
		t.Fatalf("restored = %+v", got)
	}
	r := audit.Record(session.AuditRecord{Session: "s", Method: "m", Outcome: "o", RequestID: 4})
	if r.Session != "s" || r.Method != "m" || r.Outcome != "o" || r.RequestID != 4 {
		t.Fatalf("audit record = %+v", r)
	}
}
