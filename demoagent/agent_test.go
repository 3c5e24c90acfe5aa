package demoagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func selected(optionID string) map[string]any {
	return map[string]any{"outcome": map[string]any{"outcome": "selected", "optionId": optionID}}
}

// turn plays out one prompt: it answers permission requests with decide and
// returns the session/update messages and the prompt's response.
func (c *client) turn(id int, decide func(params json.RawMessage) any) ([]update, *msg) {
	c.t.Helper()
	var updates []update
	for {
		m := c.next()
		switch {
		case m.Method == "session/update":
			updates = append(updates, m.update(c.t))
		case m.Method == "session/request_permission":
			c.answer(m.ID, decide(m.Params))
		case m.Method == "" && string(m.ID) == jsonInt(id):
			return updates, m
		default:
			c.t.Fatalf("unexpected message during the turn: %s", m.raw)
		}
	}
}

func jsonInt(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestFullSession(t *testing.T) {
	opts := DefaultOptions()
	c := startAgent(t, opts)

	var init struct {
		ProtocolVersion   int `json:"protocolVersion"`
		AgentCapabilities struct {
			LoadSession bool `json:"loadSession"`
		} `json:"agentCapabilities"`
		AuthMethods []any `json:"authMethods"`
	}
	c.result(c.call("initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}}), &init)
	if init.ProtocolVersion != 1 || !init.AgentCapabilities.LoadSession || init.AuthMethods == nil {
		t.Fatalf("initialize result %+v", init)
	}
	sid := c.newSession()

	var permission json.RawMessage
	updates, resp := c.turn(c.call("session/prompt", promptParams(sid, "hello")), func(p json.RawMessage) any {
		permission = p
		return selected("allow")
	})
	if got := stopReason(t, resp); got != "end_turn" {
		t.Fatalf("stopReason %q", got)
	}
	if len(updates) != opts.Chunks+2 {
		t.Fatalf("%d updates, want %d chunks + tool_call + tool_call_update", len(updates), opts.Chunks)
	}
	var said strings.Builder
	for i, u := range updates[:opts.Chunks] {
		want := ChunkText(i+1, opts.Chunks, opts.ChunkSize)
		if u.SessionID != sid || u.Update.SessionUpdate != "agent_message_chunk" || u.text() != want {
			t.Fatalf("update %d = %+v, want chunk %q", i, u, want)
		}
		if u.Update.Meta != nil {
			t.Fatal("_meta without Stamp")
		}
		said.WriteString(want)
	}
	call, done := updates[opts.Chunks].Update, updates[opts.Chunks+1].Update
	if call.SessionUpdate != "tool_call" || call.Status != "pending" || call.ToolCallID == "" || call.Kind == "" || call.Title == "" {
		t.Fatalf("tool_call %+v", call)
	}
	if done.SessionUpdate != "tool_call_update" || done.ToolCallID != call.ToolCallID || done.Status != "completed" {
		t.Fatalf("tool_call_update after allow %+v", done)
	}
	var perm struct {
		SessionID string `json:"sessionId"`
		ToolCall  struct {
			ToolCallID string `json:"toolCallId"`
		} `json:"toolCall"`
		Options []struct {
			OptionID, Name, Kind string
		} `json:"options"`
	}
	if err := json.Unmarshal(permission, &perm); err != nil {
		t.Fatal(err)
	}
	if perm.SessionID != sid || perm.ToolCall.ToolCallID != call.ToolCallID || len(perm.Options) != 2 ||
		perm.Options[0].Kind != "allow_once" || perm.Options[1].Kind != "reject_once" {
		t.Fatalf("request_permission params %s", permission)
	}

	updates, resp = c.turn(c.call("session/prompt", promptParams(sid, "second")), func(json.RawMessage) any {
		return selected("reject")
	})
	if got := stopReason(t, resp); got != "end_turn" {
		t.Fatalf("stopReason after reject %q", got)
	}
	if last := updates[len(updates)-1].Update; last.SessionUpdate != "tool_call_update" || last.Status != "failed" {
		t.Fatalf("tool_call_update after reject %+v", last)
	}

	// session/load replays the conversation, then answers null.
	updates, resp = c.turn(c.call("session/load", map[string]any{"sessionId": sid, "cwd": "/tmp", "mcpServers": []any{}}), nil)
	if resp.Error != nil || string(resp.Result) != "null" {
		t.Fatalf("session/load response %s", resp.raw)
	}
	want := []struct{ kind, text string }{
		{"user_message_chunk", "hello"}, {"agent_message_chunk", said.String()},
		{"user_message_chunk", "second"}, {"agent_message_chunk", said.String()},
	}
	if len(updates) != len(want) {
		t.Fatalf("load replayed %d updates, want %d", len(updates), len(want))
	}
	for i, w := range want {
		if u := updates[i]; u.SessionID != sid || u.Update.SessionUpdate != w.kind || u.text() != w.text {
			t.Fatalf("replay %d = %s %q, want %s %q", i, u.Update.SessionUpdate, u.text(), w.kind, w.text)
		}
	}
	e := c.failure(c.call("session/load", map[string]any{"sessionId": "sess_nope", "cwd": "/tmp", "mcpServers": []any{}}))
	if e.Code != codeInvalidParams || e.Message != "unknown session sess_nope" {
		t.Fatalf("load of unknown session: %+v", e)
	}
}

func TestCancelMidStream(t *testing.T) {
	opts := DefaultOptions()
	opts.Chunks, opts.Pace = 1000, 10*time.Millisecond
	c := startAgent(t, opts)
	sid := c.newSession()
	id := c.call("session/prompt", promptParams(sid, "long story"))
	if u := c.next().update(t); u.Update.SessionUpdate != "agent_message_chunk" {
		t.Fatalf("first update %+v", u)
	}
	c.notify("session/cancel", map[string]any{"sessionId": sid})
	updates, resp := c.turn(id, nil)
	if got := stopReason(t, resp); got != "cancelled" {
		t.Fatalf("stopReason %q", got)
	}
	if len(updates) >= opts.Chunks-1 {
		t.Fatalf("%d more chunks after cancel: streaming did not stop", len(updates))
	}
	for _, u := range updates {
		if u.Update.SessionUpdate != "agent_message_chunk" {
			t.Fatalf("cancelled before the tool calls, got %+v", u)
		}
	}
	// The session is free again.
	id = c.call("session/prompt", promptParams(sid, "echo:again"))
	if _, resp := c.turn(id, nil); stopReason(t, resp) != "end_turn" {
		t.Fatalf("prompt after cancel: %s", resp.raw)
	}
}

func TestCancelWhileAwaitingPermission(t *testing.T) {
	opts := DefaultOptions()
	opts.Chunks = 0
	c := startAgent(t, opts)
	sid := c.newSession()
	id := c.call("session/prompt", promptParams(sid, "do it"))
	if u := c.next().update(t); u.Update.SessionUpdate != "tool_call" {
		t.Fatalf("first update %+v", u)
	}
	req := c.next()
	if req.Method != "session/request_permission" || len(req.ID) == 0 {
		t.Fatalf("want request_permission, got %s", req.raw)
	}
	c.notify("session/cancel", map[string]any{"sessionId": sid})
	updates, resp := c.turn(id, nil)
	if got := stopReason(t, resp); got != "cancelled" {
		t.Fatalf("stopReason %q", got)
	}
	if len(updates) != 1 || updates[0].Update.Status != "failed" {
		t.Fatalf("updates after cancel %+v", updates)
	}
	// The client's late answer, as ACP has it send, is ignored.
	c.answer(req.ID, map[string]any{"outcome": map[string]any{"outcome": "cancelled"}})
	c.newSession()
}

func TestPermissionCancelledOutcome(t *testing.T) {
	opts := DefaultOptions()
	opts.Chunks, opts.ToolCalls = 0, 3
	c := startAgent(t, opts)
	sid := c.newSession()
	updates, resp := c.turn(c.call("session/prompt", promptParams(sid, "x")), func(json.RawMessage) any {
		return map[string]any{"outcome": map[string]any{"outcome": "cancelled"}}
	})
	if got := stopReason(t, resp); got != "cancelled" {
		t.Fatalf("stopReason %q", got)
	}
	if len(updates) != 2 {
		t.Fatalf("a cancelled outcome must end the turn after the first tool call: %+v", updates)
	}
}

func TestKnobs(t *testing.T) {
	for _, size := range []int{5, 10, 300} {
		opts := Options{Chunks: 5, ChunkSize: size, Pace: 20 * time.Millisecond, Stamp: true}
		c := startAgent(t, opts)
		sid := c.newSession()
		before := time.Now().UnixNano()
		updates, resp := c.turn(c.call("session/prompt", promptParams(sid, "go")), nil)
		after := time.Now().UnixNano()
		if stopReason(t, resp) != "end_turn" || len(updates) != 5 {
			t.Fatalf("size %d: %d updates (want 5 chunks, no tool calls), %s", size, len(updates), resp.raw)
		}
		for i, u := range updates {
			if len(u.text()) != size || u.text() != ChunkText(i+1, 5, size) {
				t.Fatalf("chunk %d is %q, want %d bytes", i, u.text(), size)
			}
			if u.Update.Meta == nil || u.Update.Meta.SentAt < before || u.Update.Meta.SentAt > after {
				t.Fatalf("chunk %d sentAt %+v outside [%d, %d]", i, u.Update.Meta, before, after)
			}
		}
		if gap := time.Duration(updates[4].Update.Meta.SentAt - updates[0].Update.Meta.SentAt); gap < 4*opts.Pace {
			t.Fatalf("5 chunks %v apart took %v", opts.Pace, gap)
		}
	}
}

// TestPaceKeepsItsRate: chunks go on a schedule of one per Pace, so the
// rate is Pace's on average (a delay after each send would fall behind by
// the send and the timer's wake-up every chunk), and none goes early.
func TestPaceKeepsItsRate(t *testing.T) {
	const n = 400
	opts := Options{Chunks: n, ChunkSize: 8, Pace: time.Millisecond, Stamp: true}
	c := startAgent(t, opts)
	sid := c.newSession()
	updates, resp := c.turn(c.call("session/prompt", promptParams(sid, "go")), nil)
	if stopReason(t, resp) != "end_turn" || len(updates) != n {
		t.Fatalf("%d updates, want %d chunks: %s", len(updates), n, resp.raw)
	}
	first := updates[0].Update.Meta.SentAt
	for i, u := range updates {
		// The schedule starts once the first chunk is sent; a timer
		// never fires early.
		if due := first + int64(i)*int64(opts.Pace); u.Update.Meta.SentAt < due {
			t.Fatalf("chunk %d went %v ahead of its schedule", i+1, time.Duration(due-u.Update.Meta.SentAt))
		}
	}
	want := time.Duration(n-1) * opts.Pace
	if span := time.Duration(updates[n-1].Update.Meta.SentAt - first); span > want+want/10 {
		t.Fatalf("%d chunks %v apart took %v, more than 10%% over %v", n, opts.Pace, span, want)
	}
}

func TestPermissionOff(t *testing.T) {
	opts := DefaultOptions()
	opts.Permission, opts.Chunks, opts.ToolCalls = false, 2, 2
	c := startAgent(t, opts)
	sid := c.newSession()
	updates, resp := c.turn(c.call("session/prompt", promptParams(sid, "go")), func(json.RawMessage) any {
		t.Fatal("asked for permission with Permission off")
		return nil
	})
	if stopReason(t, resp) != "end_turn" || len(updates) != 6 {
		t.Fatalf("%d updates: %s", len(updates), resp.raw)
	}
	if updates[3].Update.Status != "completed" || updates[5].Update.Status != "completed" {
		t.Fatalf("tool calls not completed: %+v", updates[2:])
	}
}

func TestConcurrentSessions(t *testing.T) {
	opts := DefaultOptions()
	opts.Pace, opts.Permission = 2*time.Millisecond, false
	c := startAgent(t, opts)
	a, b := c.newSession(), c.newSession()
	if a == b {
		t.Fatal("duplicate session ids")
	}
	ida := c.call("session/prompt", promptParams(a, "one"))
	idb := c.call("session/prompt", promptParams(b, "two"))
	busy := c.call("session/prompt", promptParams(a, "three"))
	seen := map[string]int{}
	finished := map[int]bool{}
	for len(finished) < 3 {
		m := c.next()
		switch {
		case m.Method == "session/update":
			u := m.update(t)
			if u.Update.SessionUpdate == "agent_message_chunk" {
				seen[u.SessionID]++
				if want := ChunkText(seen[u.SessionID], opts.Chunks, opts.ChunkSize); u.text() != want {
					t.Fatalf("session %s chunk %d = %q, want %q", u.SessionID, seen[u.SessionID], u.text(), want)
				}
			}
		case m.Method == "":
			var id int
			json.Unmarshal(m.ID, &id)
			finished[id] = true
			if id == busy {
				if m.Error == nil || m.Error.Code != codeInvalidParams || !strings.Contains(m.Error.Message, "busy") {
					t.Fatalf("second prompt on a busy session: %s", m.raw)
				}
			} else if stopReason(t, m) != "end_turn" {
				t.Fatalf("prompt %d: %s", id, m.raw)
			}
		default:
			t.Fatalf("unexpected %s", m.raw)
		}
	}
	if !finished[ida] || !finished[idb] || seen[a] != opts.Chunks || seen[b] != opts.Chunks {
		t.Fatalf("finished %v chunks %v", finished, seen)
	}
}

func TestEchoPrompt(t *testing.T) {
	c := startAgent(t, DefaultOptions())
	sid := c.newSession()
	updates, resp := c.turn(c.call("session/prompt", map[string]any{"sessionId": sid, "prompt": []any{
		map[string]any{"type": "text", "text": "echo:hi "},
		map[string]any{"type": "resource_link", "uri": "file:///x", "name": "x"},
		map[string]any{"type": "text", "text": "there, no crash"},
	}}), nil)
	if stopReason(t, resp) != "end_turn" || len(updates) != 1 || updates[0].text() != "hi there, no crash" {
		t.Fatalf("echo turn: %+v %s", updates, resp.raw)
	}
	// Text that needs escaping survives the hand-written encoder.
	odd := "\"quoted\" \\ back\nslash\t é 😀 \x01 <&>"
	updates, resp = c.turn(c.call("session/prompt", promptParams(sid, "echo:"+odd)), nil)
	if stopReason(t, resp) != "end_turn" || len(updates) != 1 || updates[0].text() != odd {
		t.Fatalf("echo of %q: %+v %s", odd, updates, resp.raw)
	}
}

func TestErrors(t *testing.T) {
	c := startAgent(t, DefaultOptions())
	sid := c.newSession()
	c.sendRaw(`this is not json`)
	if m := c.next(); m.Error == nil || m.Error.Code != codeParseError || string(m.ID) != "null" {
		t.Fatalf("garbage: %s", m.raw)
	}
	c.sendRaw(`[{"jsonrpc":"2.0","id":1,"method":"initialize"}]`)
	if m := c.next(); m.Error == nil || m.Error.Code != codeInvalidRequest {
		t.Fatalf("batch: %s", m.raw)
	}
	c.sendRaw(`{"jsonrpc":"2.0","id":77}`)
	if m := c.next(); m.Error == nil || m.Error.Code != codeInvalidRequest || string(m.ID) != "77" {
		t.Fatalf("no method: %s", m.raw)
	}
	c.notify("unknown/notification", map[string]any{}) // ignored: no answer
	for _, tc := range []struct {
		method string
		params any
		code   int
		text   string
	}{
		{"session/fly", map[string]any{}, codeMethodNotFound, "session/fly"},
		{"session/prompt", []int{1}, codeInvalidParams, "object"},
		{"session/prompt", map[string]any{"sessionId": sid, "prompt": "hi"}, codeInvalidParams, "bad params"},
		{"session/prompt", map[string]any{"sessionId": sid}, codeInvalidParams, "prompt"},
		{"session/prompt", map[string]any{"sessionId": sid, "prompt": []int{3}}, codeInvalidParams, "prompt[0]"},
		{"session/prompt", promptParams("sess_gone", "x"), codeInvalidParams, "unknown session sess_gone"},
		{"session/new", map[string]any{"cwd": 5}, codeInvalidParams, "bad params"},
		{"session/new", map[string]any{"cwd": "/", "mcpServers": "x"}, codeInvalidParams, "mcpServers"},
		{"initialize", map[string]any{"protocolVersion": "one"}, codeInvalidParams, "protocolVersion"},
		{"session/cancel", map[string]any{"sessionId": "sess_gone"}, codeInvalidParams, "unknown session"},
	} {
		e := c.failure(c.call(tc.method, tc.params))
		if e.Code != tc.code || !strings.Contains(e.Message, tc.text) {
			t.Errorf("%s %v: error %+v, want code %d mentioning %q", tc.method, tc.params, e, tc.code, tc.text)
		}
	}
	// Still serving, and no stray answer to the notification came first.
	id := c.call("session/prompt", promptParams(sid, "echo:alive"))
	if _, resp := c.turn(id, nil); stopReason(t, resp) != "end_turn" {
		t.Fatalf("after errors: %s", resp.raw)
	}
}

func TestCrashPrompt(t *testing.T) {
	opts := DefaultOptions()
	var mu sync.Mutex
	codes := []int{}
	opts.exit = func(code int) {
		mu.Lock()
		codes = append(codes, code)
		mu.Unlock()
	}
	c := startAgent(t, opts)
	sid := c.newSession()
	c.call("session/prompt", promptParams(sid, "please crash now"))
	var chunks int
	for m := range c.msgs {
		if m.Method != "session/update" {
			t.Fatalf("after a crash prompt: %s", m.raw)
		}
		chunks++
	}
	if err := <-c.done; !errors.Is(err, ErrCrashed) {
		t.Fatalf("Run returned %v, want ErrCrashed", err)
	}
	c.done <- nil // for the cleanup
	mu.Lock()
	defer mu.Unlock()
	if len(codes) != 1 || codes[0] != 3 || chunks != opts.Chunks/2 {
		t.Fatalf("exit codes %v after %d chunks; want [3] after %d", codes, chunks, opts.Chunks/2)
	}
}

func TestInputEOFCancelsPrompts(t *testing.T) {
	opts := DefaultOptions()
	opts.Chunks, opts.Pace = 1000, 10*time.Millisecond
	c := startAgent(t, opts)
	sid := c.newSession()
	id := c.call("session/prompt", promptParams(sid, "long"))
	c.next() // streaming has begun
	c.in.Close()
	_, resp := c.turn(id, nil)
	if stopReason(t, resp) != "cancelled" {
		t.Fatalf("prompt at EOF: %s", resp.raw)
	}
	if err := <-c.done; err != nil {
		t.Fatalf("Run at EOF returned %v", err)
	}
	c.done <- nil
}

func TestContextCancelReturns(t *testing.T) {
	opts := DefaultOptions()
	opts.Chunks = 0
	c := startAgent(t, opts)
	sid := c.newSession()
	c.call("session/prompt", promptParams(sid, "wait for permission"))
	c.next()
	c.next() // request_permission: the prompt is parked
	c.cancel()
	select {
	case err := <-c.done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v", err)
		}
		c.done <- nil
	case <-time.After(waitLimit):
		t.Fatal("Run ignored its context")
	}
}

func TestRegisterFlags(t *testing.T) {
	var o Options
	fs := flag.NewFlagSet("demo-agent", flag.ContinueOnError)
	o.RegisterFlags(fs)
	if !sameOptions(o, DefaultOptions()) {
		t.Fatalf("before Parse: %+v, want defaults", o)
	}
	err := fs.Parse([]string{"--chunks=3", "--chunk-size=7", "--pace=5ms", "--permission=false", "--tool-calls=0", "--stamp", "--protocol=2"})
	if err != nil {
		t.Fatal(err)
	}
	want := Options{Chunks: 3, ChunkSize: 7, Pace: 5 * time.Millisecond, ToolCalls: 0, Stamp: true, Protocol: 2}
	if !sameOptions(o, want) {
		t.Fatalf("parsed %+v, want %+v", o, want)
	}
}

func sameOptions(a, b Options) bool {
	a.exit, b.exit = nil, nil
	return a.Chunks == b.Chunks && a.ChunkSize == b.ChunkSize && a.Pace == b.Pace &&
		a.Permission == b.Permission && a.ToolCalls == b.ToolCalls && a.Stamp == b.Stamp && a.Protocol == b.Protocol
}

func TestChunkText(t *testing.T) {
	for _, tc := range []struct {
		i, n, size int
		want       string
	}{
		{3, 20, 20, "chunk 3 of 20: abcde"},
		{1, 1, 5, "chunk"},
		{12, 12, 0, ""},
	} {
		if got := ChunkText(tc.i, tc.n, tc.size); got != tc.want {
			t.Errorf("ChunkText(%d, %d, %d) = %q, want %q", tc.i, tc.n, tc.size, got, tc.want)
		}
	}
	if got := ChunkText(2, 9, 100); len(got) != 100 || !strings.HasPrefix(got, "chunk 2 of 9: abc") || got[99] != byte('a'+(99-14)%26) {
		t.Errorf("ChunkText(2, 9, 100) = %q", got)
	}
}

func TestOversizedLine(t *testing.T) {
	in := strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"x","params":"` + strings.Repeat("a", maxLine) + "\"}\n" +
		`{"jsonrpc":"2.0","id":2,"method":"session/new","params":{}}` + "\n")
	var out bytes.Buffer
	if err := Run(context.Background(), in, &out, DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"code":-32600`) || !strings.Contains(lines[1], `"sessionId"`) {
		t.Fatalf("output %q", out.String())
	}
}

// FuzzInput feeds arbitrary input: the agent must neither panic nor hang,
// and everything it writes must be a JSON line.
func FuzzInput(f *testing.F) {
	f.Add([]byte("garbage\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{\"protocolVersion\":1}}\n"))
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"session/new","params":{"cwd":"/"}}` + "\n" + `{"jsonrpc":"2.0","id":"x","result":{}}`))
	f.Add([]byte(`{"jsonrpc":"2.0","id":[1],"method":"session/prompt","params":{"sessionId":1,"prompt":[{}]}}`))
	f.Add([]byte("\n\n  \r\n[1,2]\n{\"jsonrpc\":\"1.0\"}\n{\"jsonrpc\":\"2.0\",\"method\":\"session/cancel\",\"params\":null}\n"))
	f.Add([]byte(`{"jsonrpc":"2.0","id":1e400,"error":{"code":1,"message":"m"}}`))
	f.Fuzz(func(t *testing.T, input []byte) {
		opts := DefaultOptions()
		opts.exit = func(int) {}
		var out bytes.Buffer
		err := Run(context.Background(), bytes.NewReader(input), &out, opts)
		if err != nil && !errors.Is(err, ErrCrashed) {
			t.Fatalf("Run: %v", err)
		}
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if line != "" && !json.Valid([]byte(line)) {
				t.Fatalf("invalid output line %q", line)
			}
		}
	})
}

// BenchmarkPromptStream measures the agent's streaming rate: one op is one
// agent_message_chunk of 64 bytes encoded, written and read back as a line.
func BenchmarkPromptStream(b *testing.B) {
	opts := Options{Chunks: b.N, ChunkSize: 64}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	go Run(context.Background(), inR, outW, opts)
	defer inW.Close()
	go io.WriteString(inW, `{"jsonrpc":"2.0","id":1,"method":"session/new","params":{}}`+"\n")
	br := bufio.NewReaderSize(outR, 64<<10)
	line, _ := br.ReadBytes('\n')
	var r struct {
		Result struct {
			SessionID string `json:"sessionId"`
		} `json:"result"`
	}
	json.Unmarshal(line, &r)
	b.SetBytes(64)
	b.ResetTimer()
	go io.WriteString(inW, `{"jsonrpc":"2.0","id":2,"method":"session/prompt","params":{"sessionId":"`+r.Result.SessionID+`","prompt":[]}}`+"\n")
	for n := 0; ; n++ {
		line, err := br.ReadSlice('\n')
		if err != nil {
			b.Fatal(err)
		}
		if bytes.HasPrefix(line, []byte(`{"jsonrpc":"2.0","id":2`)) {
			if n != b.N {
				b.Fatalf("%d chunks, want %d", n, b.N)
			}
			return
		}
	}
}
