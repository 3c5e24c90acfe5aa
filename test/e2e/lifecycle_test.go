package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The ACP session lifecycle as a plain client (no bridge/* call) drives it
// through the daemon, against the built-in demo agent speaking protocol
// version 1 and 2, each on its own daemon.

// acpInit initialises c for protocol version v.
func acpInit(t *testing.T, c *client, v int) {
	t.Helper()
	m := c.call("init", "initialize", map[string]any{"protocolVersion": v, "clientCapabilities": map[string]any{}})
	if got := field(m, "result", "protocolVersion"); got != float64(v) {
		t.Fatalf("initialize answered protocolVersion %v, want %d", got, v)
	}
}

// turn sends a prompt on sid and plays it out, allowing every permission
// request; it returns the chunk texts in order and the stop reason (v1:
// the response's; v2: the idle state_update's, after the messageId ack).
func turn(t *testing.T, c *client, v int, id any, sid, text string) (chunks []string, stop string) {
	t.Helper()
	c.request(id, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": text}}})
	acked := false
	for {
		m, _ := c.waitFor(wait, "the turn's next message", func(map[string]any) bool { return true })
		switch {
		case m["method"] == "bridge/status" && field(m, "params", "sessionId") == sid:
			c.sawStatus = append(c.sawStatus, field(m, "params", "status").(string))
		case m["method"] == "session/request_permission":
			if field(m, "params", "sessionId") != sid {
				t.Fatalf("permission request of another session: %v", m)
			}
			c.send(map[string]any{"id": m["id"], "result": map[string]any{"outcome": map[string]any{"outcome": "selected", "optionId": "allow"}}})
		case m["method"] == "session/update":
			if field(m, "params", "sessionId") != sid {
				t.Fatalf("update of another session: %v", m)
			}
			switch field(m, "params", "update", "sessionUpdate") {
			case "agent_message_chunk":
				chunks = append(chunks, field(m, "params", "update", "content", "text").(string))
			case "state_update":
				if v == 2 && field(m, "params", "update", "state") == "idle" {
					if !acked {
						t.Fatalf("turn ended before the prompt's ack")
					}
					return chunks, fmt.Sprint(field(m, "params", "update", "stopReason"))
				}
			}
		case m["method"] == nil && fmt.Sprint(m["id"]) == fmt.Sprint(id):
			if m["error"] != nil {
				t.Fatalf("prompt failed: %v", m)
			}
			if v == 1 {
				return chunks, fmt.Sprint(field(m, "result", "stopReason"))
			}
			if field(m, "result", "messageId") == nil {
				t.Fatalf("v2 prompt answered without messageId: %v", m)
			}
			acked = true
		}
	}
}

func checkChunks(t *testing.T, what string, chunks []string, n int) {
	t.Helper()
	if len(chunks) != n {
		t.Fatalf("%s: %d chunks, want %d: %q", what, len(chunks), n, chunks)
	}
	for i, c := range chunks {
		if !strings.HasPrefix(c, fmt.Sprintf("chunk %d of %d: ", i+1, n)) {
			t.Fatalf("%s: chunk %d is %q", what, i+1, c)
		}
	}
}

func TestLifecyclePlainClient(t *testing.T) {
	t.Parallel()
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			d := startDaemon(t, "--", binPath, "demo-agent", "--protocol", fmt.Sprint(v), "--chunks", "5")
			a := dial(t, d)
			acpInit(t, a, v)
			sid := field(a.call(1, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}), "result", "sessionId").(string)
			chunks, stop := turn(t, a, v, 2, sid, "first")
			checkChunks(t, "first turn", chunks, 5)
			if stop != "end_turn" {
				t.Fatalf("stop %s", stop)
			}
			a.c.Close()

			// The editor restarts: a new connection resumes its session
			// with nothing but ACP, and owns it.
			b := dial(t, d)
			acpInit(t, b, v)
			b.call(3, "session/resume", map[string]any{"sessionId": sid, "cwd": "/tmp"})
			b.sawStatus = nil
			chunks, stop = turn(t, b, v, 4, sid, "after the restart")
			checkChunks(t, "turn after resume", chunks, 5)
			if stop != "end_turn" {
				t.Fatalf("stop %s", stop)
			}
			// The bridge's status followed the turn: v1 by the prompt's
			// round trip, v2 by state_update (running, requires_action
			// while the permission waits, idle).
			b.waitFor(wait, "bridge/status idle", func(m map[string]any) bool {
				return m["method"] == "bridge/status" && field(m, "params", "status") == "idle"
			})
			if got := strings.Join(b.sawStatus, ","); !strings.HasPrefix(got, "running,awaiting_hitl,running") {
				t.Fatalf("bridge/status during the turn: %s", got)
			}

			if v == 2 {
				// replayFrom: the agent replays (decision in
				// docs/protocol.md); the replay reaches the resumer only
				// and is not logged again.
				before := sessionSeq(t, b, sid)
				c := dial(t, d)
				acpInit(t, c, v)
				c.request("rf", "session/resume", map[string]any{"sessionId": sid, "cwd": "/tmp", "replayFrom": map[string]any{"type": "start"}})
				m, replay := c.response("rf", wait)
				if m["error"] != nil {
					t.Fatalf("resume with replayFrom: %v", m)
				}
				users := 0
				for _, r := range replay {
					if field(r, "params", "update", "sessionUpdate") == "user_message_chunk" {
						users++
					}
				}
				if users != 2 { // "first" and "after the restart"
					t.Fatalf("replay held %d user messages: %s", users, brief(replay))
				}
				if after := sessionSeq(t, b, sid); after != before {
					t.Fatalf("the replay was logged: seq %v -> %v", before, after)
				}
				c.c.Close()
			}
			// A fork is the caller's from its first event.
			fork := field(b.call(5, "session/fork", map[string]any{"sessionId": sid, "cwd": "/tmp"}), "result", "sessionId").(string)
			if fork == sid {
				t.Fatal("fork answered the source session")
			}
			chunks, _ = turn(t, b, v, 6, fork, "in the fork")
			checkChunks(t, "turn in the fork", chunks, 5)

			// Another client closing b's session only detaches itself.
			c := dial(t, d)
			acpInit(t, c, v)
			c.call(7, "session/resume", map[string]any{"sessionId": sid, "cwd": "/tmp"})
			c.call(8, "session/close", map[string]any{"sessionId": sid})
			if st := sessionStatus(t, c, sid); st != "idle" {
				t.Fatalf("after a non-owner's close the session is %s", st)
			}
			// The owner's close closes it for the bridge.
			b.call(9, "session/close", map[string]any{"sessionId": sid})
			if _, _ = b.waitFor(wait, "bridge/status closed", func(m map[string]any) bool {
				return m["method"] == "bridge/status" && field(m, "params", "status") == "closed"
			}); sessionStatus(t, b, sid) != "closed" {
				t.Fatalf("after the owner's close the session is %s", sessionStatus(t, b, sid))
			}
			// Resumed again, it is live.
			b.call(10, "session/resume", map[string]any{"sessionId": sid, "cwd": "/tmp"})
			if st := sessionStatus(t, b, sid); st != "idle" {
				t.Fatalf("after resume the session is %s", st)
			}
			// Delete takes it out of bridge/sessions.
			b.call(11, "session/delete", map[string]any{"sessionId": fork})
			if st := sessionStatus(t, b, fork); st != "" {
				t.Fatalf("deleted session still listed as %s", st)
			}
		})
	}
}

// sessionStatus is the session's status in bridge/sessions, "" if unlisted.
func sessionStatus(t *testing.T, c *client, sid string) string {
	t.Helper()
	m := c.call("status-"+fmt.Sprint(time.Now().UnixNano()), "bridge/sessions", map[string]any{})
	list, _ := field(m, "result", "sessions").([]any)
	for _, e := range list {
		if em, _ := e.(map[string]any); em["sessionId"] == sid {
			return em["status"].(string)
		}
	}
	return ""
}

// Two clients each have a prompt in flight under the same id, 77; one
// cancels "its 77": only its own turn is cancelled.
func TestCancelRemappedPerClient(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--", binPath, "demo-agent", "--chunks", "40", "--pace", "25ms", "--tool-calls", "0")
	a, b := dial(t, d), dial(t, d)
	acpInit(t, a, 1)
	acpInit(t, b, 1)
	sa := field(a.call(1, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}), "result", "sessionId").(string)
	sb := field(b.call(1, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}), "result", "sessionId").(string)
	prompt := map[string]any{"prompt": []any{map[string]any{"type": "text", "text": "long"}}}
	prompt["sessionId"] = sa
	a.request(77, "session/prompt", prompt)
	b.request(77, "session/prompt", map[string]any{"sessionId": sb, "prompt": prompt["prompt"]})
	// Both turns are streaming before the cancel.
	for _, c := range []*client{a, b} {
		c.waitFor(wait, "a first chunk", func(m map[string]any) bool { return m["method"] == "session/update" })
	}
	a.send(map[string]any{"method": "$/cancel_request", "params": map[string]any{"requestId": 77}})
	m, _ := a.response(77, wait)
	if got := field(m, "result", "stopReason"); got != "cancelled" {
		t.Fatalf("a's prompt: %v", m)
	}
	m, others := b.response(77, wait)
	if got := field(m, "result", "stopReason"); got != "end_turn" {
		t.Fatalf("b's prompt was touched by a's cancel: %v", m)
	}
	n := 1 // the first chunk was taken above
	for _, o := range others {
		if field(o, "params", "update", "sessionUpdate") == "agent_message_chunk" {
			n++
		}
	}
	if n != 40 {
		t.Fatalf("b got %d of 40 chunks", n)
	}
	// A cancel naming nothing in flight is dropped, and logged.
	b.send(map[string]any{"method": "$/cancel_request", "params": map[string]any{"requestId": 12345}})
	if !d.waitLog("not got in flight; dropped", wait) {
		t.Fatal("no log line for a cancel naming nothing in flight")
	}
}

// A permission request goes to the owner and to an attached operator; the
// owner answers first; the operator hears bridge/resolved and ACP's
// $/cancel_request naming the request it was sent, so an ACP client closes
// its prompt.
func TestRetiredRequestCancelsTheOthers(t *testing.T) {
	t.Parallel()
	tokens := filepath.Join(t.TempDir(), "tokens")
	const opToken = "e2e-operator-token-0123456789"
	if err := os.WriteFile(tokens, []byte("operator "+opToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--listen", anyPort, "--tokens", tokens, "--", binPath, "demo-agent", "--chunks", "1")
	addr := d.listen
	owner := dial(t, d)
	acpInit(t, owner, 1)
	sid := field(owner.call(1, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}), "result", "sessionId").(string)
	op, _, err := dialPeer(t, "ws://"+addr+"/acp", nil, "Authorization", "Bearer "+opToken)
	if err != nil {
		t.Fatal(err)
	}
	op.call("att", "bridge/attach", map[string]any{"sessionId": sid})
	owner.request(2, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "go"}}})
	perm, _ := owner.waitFor(wait, "the permission request", func(m map[string]any) bool { return m["method"] == "session/request_permission" })
	opPerm, _ := op.waitFor("the operator's copy", func(m map[string]any) bool { return m["method"] == "session/request_permission" })
	if opPerm["id"] != perm["id"] {
		t.Fatalf("owner and operator got ids %v and %v", perm["id"], opPerm["id"])
	}
	owner.send(map[string]any{"id": perm["id"], "result": map[string]any{"outcome": map[string]any{"outcome": "selected", "optionId": "allow"}}})
	res, _ := op.waitFor("bridge/resolved", func(m map[string]any) bool { return m["method"] == "bridge/resolved" })
	cancel, _ := op.waitFor("$/cancel_request", func(m map[string]any) bool { return m["method"] == "$/cancel_request" })
	if field(res, "params", "id") != perm["id"] || field(cancel, "params", "requestId") != perm["id"] {
		t.Fatalf("operator got %v and %v for request %v", res, cancel, perm["id"])
	}
	if m, _ := owner.response(2, wait); field(m, "result", "stopReason") != "end_turn" {
		t.Fatalf("prompt: %v", m)
	}
}

// sessionSeq is the session's seq in bridge/sessions.
func sessionSeq(t *testing.T, c *client, sid string) float64 {
	t.Helper()
	m := c.call("seq-"+fmt.Sprint(time.Now().UnixNano()), "bridge/sessions", map[string]any{})
	list, _ := field(m, "result", "sessions").([]any)
	for _, e := range list {
		if em, _ := e.(map[string]any); em["sessionId"] == sid {
			return em["seq"].(float64)
		}
	}
	t.Fatalf("session %s not listed", sid)
	return 0
}
