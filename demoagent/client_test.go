package demoagent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

const waitLimit = 20 * time.Second

// msg is one message from the agent.
type msg struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *rpcError       `json:"error"`
	raw    string
}

// update is params of a session/update notification.
type update struct {
	SessionID string `json:"sessionId"`
	Update    struct {
		SessionUpdate string          `json:"sessionUpdate"`
		Content       json.RawMessage `json:"content"`
		ToolCallID    string          `json:"toolCallId"`
		Status        string          `json:"status"`
		Kind          string          `json:"kind"`
		Title         string          `json:"title"`
		Meta          *struct {
			SentAt int64 `json:"sentAt"`
		} `json:"_meta"`
	} `json:"update"`
}

// text is the text of a content block update ("" for anything else).
func (u update) text() string {
	var c struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(u.Update.Content, &c) != nil || c.Type != "text" {
		return ""
	}
	return c.Text
}

func (m *msg) update(t *testing.T) update {
	t.Helper()
	if m.Method != "session/update" {
		t.Fatalf("want session/update, got %s", m.raw)
	}
	var u update
	if err := json.Unmarshal(m.Params, &u); err != nil {
		t.Fatalf("bad session/update %s: %v", m.raw, err)
	}
	return u
}

// client drives Run over a pair of pipes, as an ACP client would.
type client struct {
	t      *testing.T
	in     *io.PipeWriter
	msgs   chan *msg
	done   chan error
	cancel context.CancelFunc
	nextID int
}

func startAgent(t *testing.T, opts Options) *client {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{t: t, in: inW, msgs: make(chan *msg, 1<<14), done: make(chan error, 1), cancel: cancel}
	go func() {
		err := Run(ctx, inR, outW, opts)
		outW.Close()
		c.done <- err
	}()
	go func() {
		sc := bufio.NewScanner(outR)
		sc.Buffer(nil, 32<<20)
		for sc.Scan() {
			m := &msg{raw: sc.Text()}
			if err := json.Unmarshal(sc.Bytes(), m); err != nil {
				m.Method = "!unparsable: " + err.Error()
			}
			c.msgs <- m
		}
		close(c.msgs)
	}()
	t.Cleanup(func() {
		cancel()
		inW.Close()
		select {
		case <-c.done:
		case <-time.After(waitLimit):
			t.Error("Run did not return")
		}
	})
	return c
}

func (c *client) sendRaw(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(string(b))
}

// call sends a request and returns its id.
func (c *client) call(method string, params any) int {
	c.t.Helper()
	c.nextID++
	c.send(map[string]any{"jsonrpc": "2.0", "id": c.nextID, "method": method, "params": params})
	return c.nextID
}

func (c *client) notify(method string, params any) {
	c.t.Helper()
	c.send(map[string]any{"jsonrpc": "2.0", "method": method, "params": params})
}

// answer replies to one of the agent's requests.
func (c *client) answer(id json.RawMessage, result any) {
	c.t.Helper()
	c.send(map[string]any{"jsonrpc": "2.0", "id": id, "result": result})
}

func (c *client) next() *msg {
	c.t.Helper()
	select {
	case m, ok := <-c.msgs:
		if !ok {
			c.t.Fatal("agent output ended")
		}
		return m
	case <-time.After(waitLimit):
		c.t.Fatal("timed out waiting for the agent")
	}
	panic("unreachable")
}

// until collects messages up to the response with the given id and returns
// them and the response.
func (c *client) until(id int) ([]*msg, *msg) {
	c.t.Helper()
	var before []*msg
	for {
		m := c.next()
		if m.Method == "" && string(m.ID) == fmt.Sprint(id) {
			return before, m
		}
		before = append(before, m)
	}
}

// result waits for the response to id and decodes its result into v.
func (c *client) result(id int, v any) []*msg {
	c.t.Helper()
	before, resp := c.until(id)
	if resp.Error != nil {
		c.t.Fatalf("request %d failed: %s", id, resp.raw)
	}
	if v != nil {
		if err := json.Unmarshal(resp.Result, v); err != nil {
			c.t.Fatalf("bad result %s: %v", resp.raw, err)
		}
	}
	return before
}

// failure waits for the response to id and returns its error.
func (c *client) failure(id int) *rpcError {
	c.t.Helper()
	_, resp := c.until(id)
	if resp.Error == nil {
		c.t.Fatalf("request %d succeeded: %s", id, resp.raw)
	}
	return resp.Error
}

func (c *client) newSession() string {
	c.t.Helper()
	var r struct {
		SessionID string `json:"sessionId"`
	}
	c.result(c.call("session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}), &r)
	if !strings.HasPrefix(r.SessionID, "sess_") {
		c.t.Fatalf("session id %q", r.SessionID)
	}
	return r.SessionID
}

func promptParams(sessionID, text string) map[string]any {
	return map[string]any{"sessionId": sessionID, "prompt": []any{map[string]any{"type": "text", "text": text}}}
}

func stopReason(t *testing.T, m *msg) string {
	t.Helper()
	var r struct {
		StopReason string `json:"stopReason"`
	}
	if m.Error != nil || json.Unmarshal(m.Result, &r) != nil {
		t.Fatalf("bad prompt response %s", m.raw)
	}
	return r.StopReason
}
