package e2e

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestActionableParamErrors: a bad bridge/* parameter is answered -32602
// with one line naming the field and the value (finding 8: the decoder's
// multi-line dump, with part of the input).
func TestActionableParamErrors(t *testing.T) {
	d := startDaemon(t, fakeAgentCmd()...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{"protocolVersion": 1})
	r := c.call(2, "session/new", map[string]any{"cwd": "/", "mcpServers": []any{}})
	sid := field(r, "result", "sessionId").(string)
	for _, tc := range []struct {
		params map[string]any
		want   string
	}{
		{map[string]any{"sessionId": sid, "since": -1}, "bridge/attach: since must be a non-negative integer, not -1"},
		{map[string]any{"sessionId": sid, "last": "ten"}, `bridge/attach: last must be an integer, not "ten"`},
		{map[string]any{"sessionId": 7}, "bridge/attach: sessionId must be a string, not 7"},
	} {
		c.request(10, "bridge/attach", tc.params)
		m, _ := c.response(10, 10*time.Second)
		msg, _ := field(m, "error", "message").(string)
		if errCode(m) != -32602 || msg != tc.want {
			t.Fatalf("params %v: got %d %q, want -32602 %q", tc.params, errCode(m), msg, tc.want)
		}
	}
}

// TestBindErrorNamesAddress: a port in use fails serve with one line that
// names the address (finding 8: "listen: bind: address already in use").
func TestBindErrorNamesAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	p := startProc(t, binPath, nil, 0, nil, "serve", "--uds", filepath.Join(t.TempDir(), "ab.sock"), "--listen", addr)
	if code := p.exitCode(t, 15*time.Second); code == 0 {
		t.Fatal("serve started on a port in use")
	}
	out := p.output()
	if !strings.Contains(out, addr) || !strings.Contains(out, "address already in use") {
		t.Fatalf("bind error does not name %s:\n%s", addr, out)
	}
}
