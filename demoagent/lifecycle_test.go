package demoagent

import (
	"encoding/json"
	"testing"
)

func TestLifecycleV1(t *testing.T) {
	opts := DefaultOptions()
	opts.Chunks, opts.ToolCalls = 2, 0
	c := startAgent(t, opts)
	var init struct {
		AgentCapabilities struct {
			SessionCapabilities map[string]json.RawMessage `json:"sessionCapabilities"`
		} `json:"agentCapabilities"`
	}
	c.result(c.call("initialize", map[string]any{"protocolVersion": 1}), &init)
	for _, k := range []string{"list", "resume", "close", "fork", "delete"} {
		if _, ok := init.AgentCapabilities.SessionCapabilities[k]; !ok {
			t.Fatalf("sessionCapabilities without %s: %v", k, init.AgentCapabilities.SessionCapabilities)
		}
	}
	sid := c.newSession()
	if _, resp := c.until(c.call("session/prompt", promptParams(sid, "first"))); stopReason(t, resp) != "end_turn" {
		t.Fatal(resp.raw)
	}
	// fork copies the history into a new session
	var fork struct{ SessionID string }
	c.result(c.call("session/fork", map[string]any{"sessionId": sid, "cwd": "/tmp"}), &fork)
	if fork.SessionID == "" || fork.SessionID == sid {
		t.Fatalf("fork answered %q", fork.SessionID)
	}
	before := c.result(c.call("session/load", map[string]any{"sessionId": fork.SessionID, "cwd": "/tmp", "mcpServers": []any{}}), nil)
	if len(before) != 2 || before[0].update(t).text() != "first" {
		t.Fatalf("the fork's history: %d updates", len(before))
	}
	// list shows both
	var list struct {
		Sessions []struct{ SessionID, Cwd, Title string }
	}
	c.result(c.call("session/list", map[string]any{}), &list)
	if len(list.Sessions) != 2 || list.Sessions[0].Title != "first" || list.Sessions[0].Cwd != "/tmp" {
		t.Fatalf("list %+v", list)
	}
	// close: prompting needs a resume; resume (v1) replays nothing
	c.result(c.call("session/close", map[string]any{"sessionId": sid}), nil)
	if e := c.failure(c.call("session/prompt", promptParams(sid, "after close"))); e.Code != codeResourceNotFound {
		t.Fatalf("prompt after close: %+v", e)
	}
	if before := c.result(c.call("session/resume", map[string]any{"sessionId": sid, "cwd": "/tmp"}), nil); len(before) != 0 {
		t.Fatalf("v1 resume sent %d messages", len(before))
	}
	if _, resp := c.until(c.call("session/prompt", promptParams(sid, "again"))); stopReason(t, resp) != "end_turn" {
		t.Fatal(resp.raw)
	}
	// delete forgets it
	c.result(c.call("session/delete", map[string]any{"sessionId": sid}), nil)
	if e := c.failure(c.call("session/resume", map[string]any{"sessionId": sid, "cwd": "/tmp"})); e.Code != codeResourceNotFound {
		t.Fatalf("resume after delete: %+v", e)
	}
}

func TestProtocolV2Turn(t *testing.T) {
	opts := DefaultOptions()
	opts.Chunks, opts.Protocol = 3, 2
	c := startAgent(t, opts)
	if e := c.failure(c.call("initialize", map[string]any{"protocolVersion": 1})); e.Code != codeUnsupportedVersion {
		t.Fatalf("v1 initialize of a v2 agent: %+v", e)
	}
	var init struct {
		ProtocolVersion int
		Capabilities    struct{ Session map[string]json.RawMessage }
	}
	c.result(c.call("initialize", map[string]any{"protocolVersion": 2}), &init)
	if init.ProtocolVersion != 2 || init.Capabilities.Session == nil {
		t.Fatalf("initialize %+v", init)
	}
	sid := c.newSession()
	var ack struct{ MessageID string }
	c.result(c.call("session/prompt", promptParams(sid, "hi")), &ack)
	if ack.MessageID == "" {
		t.Fatal("prompt not acknowledged with a messageId")
	}
	var states []string
	chunks := 0
	for done := false; !done; {
		m := c.next()
		switch m.Method {
		case "session/request_permission":
			c.answer(m.ID, selected("allow"))
		case "session/update":
			var u struct {
				Update struct{ SessionUpdate, State, StopReason, MessageID string }
			}
			json.Unmarshal(m.Params, &u)
			switch u.Update.SessionUpdate {
			case "state_update":
				states = append(states, u.Update.State)
				done = u.Update.State == "idle"
				if done && u.Update.StopReason != "end_turn" {
					t.Fatalf("idle without end_turn: %s", m.raw)
				}
			case "agent_message_chunk":
				if u.Update.MessageID == "" {
					t.Fatalf("v2 chunk without messageId: %s", m.raw)
				}
				chunks++
			case "tool_call":
				t.Fatalf("v2 has no tool_call: %s", m.raw)
			}
		default:
			t.Fatalf("unexpected %s", m.raw)
		}
	}
	if want := []string{"running", "requires_action", "running", "idle"}; len(states) != 4 || states[1] != want[1] || states[3] != want[3] || chunks != 3 {
		t.Fatalf("states %v, chunks %d", states, chunks)
	}
	if e := c.failure(c.call("session/load", map[string]any{"sessionId": sid, "cwd": "/tmp", "mcpServers": []any{}})); e.Code != codeMethodNotFound {
		t.Fatalf("v2 session/load: %+v", e)
	}
	// resume with replayFrom start replays, then a state snapshot, then answers.
	before := c.result(c.call("session/resume", map[string]any{"sessionId": sid, "cwd": "/tmp", "replayFrom": map[string]any{"type": "start"}}), nil)
	if len(before) != 3 || before[0].update(t).text() != "hi" {
		t.Fatalf("resume replayed %d messages", len(before))
	}
	var last struct {
		Update struct{ SessionUpdate, State string }
	}
	json.Unmarshal(before[2].Params, &last)
	if last.Update.SessionUpdate != "state_update" || last.Update.State != "idle" {
		t.Fatalf("resume ended with %s", before[2].raw)
	}
	if e := c.failure(c.call("session/resume", map[string]any{"sessionId": sid, "cwd": "/tmp", "replayFrom": map[string]any{"type": "_later"}})); e.Code != codeInvalidParams {
		t.Fatalf("unknown replayFrom: %+v", e)
	}
}
