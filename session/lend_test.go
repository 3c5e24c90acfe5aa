package session

import (
	"fmt"
	"strings"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/store"
)

// TestAgentMessageIsLent: the agent's message is lent to the hub
// (agent.Handler), valid only during AgentMessage; rig.agentSays scribbles
// over it with 'X' when the call returns. Everything that keeps bytes of
// it past the call must have copied them: the replay log (attach since 0,
// bridge/snapshot's recent), the --state-dir store's writer queue
// (ReadLog), the agent-request table (the agent's id, used when a client
// answers later), the pending permission shown in a snapshot, a load's
// replay to its loader, a broadcast without session, an answer to a call.
func TestAgentMessageIsLent(t *testing.T) {
	r, st, _ := diskRig(t, t.TempDir(), store.Options{})
	a, fa := r.open(auth.RoleClient)
	r.newSession(a, fa, "s1")

	r.from(a, `{"jsonrpc":"2.0","id":5,"method":"session/prompt","params":{"sessionId":"s1","prompt":[]}}`)
	prompt := r.forwarded()
	event := func(i int) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"chunk-%d"}}}}`, i)
	}
	for i := 1; i <= 3; i++ {
		r.agentSays("%s", event(i))
	}
	r.agentSays(`{"jsonrpc":"2.0","method":"_vendor/hello","params":{"greeting":"to-everyone"}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":"perm-1","method":"session/request_permission","params":{"sessionId":"s1","toolCall":{"toolCallId":"tool-7","title":"write file"},"options":[{"optionId":"allow-once","kind":"allow_once","name":"Allow"}]}}`)

	var reqID any
	var got []string
	for _, m := range fa.take(t) {
		switch m["method"] {
		case "session/update":
			got = append(got, fmt.Sprint(m["params"].(map[string]any)["update"].(map[string]any)["content"].(map[string]any)["text"]))
		case "_vendor/hello":
			got = append(got, fmt.Sprint(m["params"].(map[string]any)["greeting"]))
		case "session/request_permission":
			reqID = m["id"]
			tc := m["params"].(map[string]any)["toolCall"].(map[string]any)
			got = append(got, fmt.Sprint(tc["toolCallId"], " ", tc["title"]))
		}
	}
	if s := strings.Join(got, ","); s != "chunk-1,chunk-2,chunk-3,to-everyone,tool-7 write file" {
		t.Fatalf("the owner got %q", s)
	}

	// The pending permission as a snapshot shows it, after the buffer is gone.
	v, fv := r.open(auth.RoleViewer)
	r.from(v, `{"jsonrpc":"2.0","id":2,"method":"bridge/snapshot","params":{"sessionId":"s1"}}`)
	snap := one(t, fv)["result"].(map[string]any)
	pend := snap["pending"].([]any)
	if len(pend) != 1 {
		t.Fatalf("pending %v", pend)
	}
	p := pend[0].(map[string]any)
	if tc := p["params"].(map[string]any)["toolCall"].(map[string]any); p["method"] != "session/request_permission" || tc["toolCallId"] != "tool-7" {
		t.Fatalf("pending permission %v", p)
	}
	if recent := snap["recent"].([]any); len(recent) == 0 || !strings.Contains(fmt.Sprint(recent[len(recent)-1]), "chunk-3") {
		t.Fatalf("recent %v", recent)
	}

	// Answered later: the agent gets its own id back.
	r.from(a, `{"jsonrpc":"2.0","id":%v,"result":{"outcome":{"outcome":"selected","optionId":"allow-once"}}}`, reqID)
	ans := r.forwarded()
	if ans["id"] != "perm-1" || fmt.Sprint(ans["result"]) != "map[outcome:map[optionId:allow-once outcome:selected]]" {
		t.Fatalf("the agent got %v for its permission request", ans)
	}
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"stopReason":"end_turn"}}`, prompt["id"])
	if m := one(t, fa); m["id"] != float64(5) || fmt.Sprint(m["result"]) != "map[stopReason:end_turn]" {
		t.Fatalf("the prompt's answer %v", m)
	}

	// Replay from the memory log: attach since 0.
	w, fw := r.open(auth.RoleViewer)
	r.from(w, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1","since":0}}`)
	for r.hub.Pump(w) {
	}
	var replayed []string
	for _, m := range fw.take(t) {
		if m["method"] == "session/update" {
			replayed = append(replayed, fmt.Sprint(m["params"].(map[string]any)["update"].(map[string]any)["content"].(map[string]any)["text"]))
		}
	}
	if s := strings.Join(replayed, ","); s != "chunk-1,chunk-2,chunk-3" {
		t.Fatalf("attach since 0 replayed %q", s)
	}

	// The store's writer queue: what it wrote is what the agent sent.
	var stored []string
	if _, err := st.ReadLog("s1", 0, 3, 10, 1<<20, func(_ uint64, body []byte) { stored = append(stored, string(body)) }); err != nil {
		t.Fatal(err)
	}
	if len(stored) != 3 {
		t.Fatalf("the store holds %d events of s1, want 3: %q", len(stored), stored)
	}
	for i, b := range stored {
		if b != event(i+1) {
			t.Fatalf("stored event %d is %q, want %q", i+1, b, event(i+1))
		}
	}

	// A load's replay goes to its loader only (loaderOnly).
	b, fb := r.open(auth.RoleClient)
	r.from(b, `{"jsonrpc":"2.0","id":4,"method":"session/load","params":{"sessionId":"s1","cwd":"/","mcpServers":[]}}`)
	f := r.forwarded()
	r.agentSays("%s", event(1))
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"loaded":"yes"}}`, f["id"])
	ms := fb.take(t)
	if len(ms) != 2 || !strings.Contains(fmt.Sprint(ms[0]), "chunk-1") || fmt.Sprint(ms[1]["result"]) != "map[loaded:yes]" {
		t.Fatalf("the loader got %v", ms)
	}
}
