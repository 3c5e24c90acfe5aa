package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Sessions a plain ACP client takes through `agentbridge connect` with
// session/fork and session/resume are re-attached after a drop even when
// the drop comes before their first event: the editor gets every update of
// the next turn, once.

// demoTransports are shimTransports with the built-in demo agent (it
// implements session/fork and session/resume): 5 chunks a turn, no tool
// calls.
var demoTransports = []struct {
	name  string
	start func(t *testing.T) (p *cutProxy, env []string, args []string)
}{
	{name: "unix", start: func(t *testing.T) (*cutProxy, []string, []string) {
		d := startDaemon(t, "--", binPath, "demo-agent", "--chunks", "5", "--tool-calls", "0")
		p := newCutProxy(t, "unix", filepath.Join(d.dir, "proxy.sock"), d.sock)
		return p, nil, []string{"unix://" + p.ln.Addr().String()}
	}},
	{name: "ws", start: func(t *testing.T) (*cutProxy, []string, []string) {
		d := netDaemon(t, "--", binPath, "demo-agent", "--chunks", "5", "--tool-calls", "0")
		p := newCutProxy(t, "tcp", "127.0.0.1:0", d.listen)
		return p, []string{"AGENTBRIDGE_TOKEN=" + e2eClientToken}, []string{"ws://" + p.ln.Addr().String() + "/acp"}
	}},
}

// shimTurn prompts sid through the shim and returns the chunk texts that
// reached stdout before the prompt's answer. Updates of another session,
// or anything else unexpected, fail the test.
func shimTurn(t *testing.T, sh *shimProc, id int, sid, text string) []string {
	t.Helper()
	sh.send(req(id, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": text}}}))
	var chunks []string
	for {
		b := sh.next()
		var m struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Error  json.RawMessage `json:"error"`
			Result struct {
				StopReason string `json:"stopReason"`
			} `json:"result"`
			Params struct {
				SessionID string `json:"sessionId"`
				Update    struct {
					Kind    string `json:"sessionUpdate"`
					Content struct {
						Text string `json:"text"`
					} `json:"content"`
				} `json:"update"`
			} `json:"params"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("stdout line %q: %v", b, err)
		}
		switch {
		case m.Method == "bridge/status":
		case m.Method == "session/update":
			if m.Params.SessionID != sid {
				t.Fatalf("an update of another session during the turn on %s: %s", sid, b)
			}
			if m.Params.Update.Kind == "agent_message_chunk" {
				chunks = append(chunks, m.Params.Update.Content.Text)
			}
		case m.Method == "" && string(m.ID) == fmt.Sprint(id):
			if m.Error != nil || m.Result.StopReason != "end_turn" {
				t.Fatalf("prompt %d answered %s", id, b)
			}
			return chunks
		default:
			t.Fatalf("unexpected on stdout during the turn: %s", b)
		}
	}
}

// callSkipStatus is shimProc.call, passing over bridge/status
// notifications (a turn's last one follows its answer).
func callSkipStatus(t *testing.T, sh *shimProc, id int, method string, params any) frame {
	t.Helper()
	sh.send(req(id, method, params))
	for {
		b := sh.next()
		f := parseFrame(t, b)
		if f.Method == "bridge/status" {
			continue
		}
		if string(f.ID) != fmt.Sprint(id) || f.Error != nil {
			t.Fatalf("%s: got %s", method, b)
		}
		return f
	}
}

// waitReconnected waits until the shim logged n reconnections.
func waitReconnected(t *testing.T, sh *shimProc, n int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for strings.Count(sh.logs(), "reconnected") < n {
		if time.Now().After(deadline) {
			t.Fatalf("connect did not reconnect within %s", wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConnectResumesForkedAndResumedSessions: through connect, the editor
// forks a session (and, in the second case, resumes one another client
// created); the connection is cut before the new session's first event;
// the next turn on it reaches stdout whole, each chunk once, in order.
func TestConnectResumesForkedAndResumedSessions(t *testing.T) {
	t.Parallel()
	for _, tr := range demoTransports {
		for _, how := range []string{"fork", "resume"} {
			t.Run(tr.name+"/"+how, func(t *testing.T) {
				proxy, env, args := tr.start(t)
				init := map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}}
				newSession := func(sh *shimProc, id int) string {
					var r struct {
						SessionID string `json:"sessionId"`
					}
					json.Unmarshal(sh.call(id, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}).Result, &r)
					if r.SessionID == "" {
						t.Fatal("session/new without a sessionId")
					}
					return r.SessionID
				}
				var sh *shimProc
				var sid string
				switch how {
				case "fork":
					sh = startShim(t, env, args...)
					sh.call(1, "initialize", init)
					src := newSession(sh, 2)
					checkChunks(t, "turn in the source", shimTurn(t, sh, 3, src, "first"), 5)
					var r struct {
						SessionID string `json:"sessionId"`
					}
					json.Unmarshal(callSkipStatus(t, sh, 4, "session/fork", map[string]any{"sessionId": src, "cwd": "/tmp"}).Result, &r)
					if sid = r.SessionID; sid == "" || sid == src {
						t.Fatalf("fork answered session %q (source %s)", sid, src)
					}
				case "resume":
					// Another editor created the session and went away.
					other := startShim(t, env, args...)
					other.call(1, "initialize", init)
					sid = newSession(other, 2)
					checkChunks(t, "the other editor's turn", shimTurn(t, other, 3, sid, "first"), 5)
					other.stdin.Close()
					if err := <-other.exited; err != nil {
						t.Fatalf("the other connect exited with %v", err)
					}
					sh = startShim(t, env, args...)
					sh.call(1, "initialize", init)
					sh.call(4, "session/resume", map[string]any{"sessionId": sid, "cwd": "/tmp"})
				}
				// Cut before any event of the session reached this shim.
				if proxy.cut() == 0 {
					t.Fatal("nothing to cut")
				}
				waitReconnected(t, sh, 1)
				checkChunks(t, "turn after the cut", shimTurn(t, sh, 5, sid, "after the cut"), 5)
				// And once more, with the connection cut while nothing is
				// in flight and the session's cursor past its first events.
				proxy.cut()
				waitReconnected(t, sh, 2)
				checkChunks(t, "turn after the second cut", shimTurn(t, sh, 6, sid, "again"), 5)
				sh.stdin.Close()
				select {
				case err := <-sh.exited:
					if err != nil {
						t.Fatalf("connect exited with %v", err)
					}
				case <-time.After(wait):
					t.Fatal("connect did not exit after stdin closed")
				}
				// Nothing was left over: no duplicate after the last answer.
				for b := range sh.lines {
					if !strings.Contains(string(b), `"bridge/status"`) {
						t.Fatalf("after the last turn, stdout carried %s", b)
					}
				}
			})
		}
	}
}
