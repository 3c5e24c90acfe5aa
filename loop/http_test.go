package loop

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/auth"
)

// exchange writes raw bytes on a fresh connection and reads n responses.
func exchange(t *testing.T, addr, raw string, n int) ([]*http.Response, []string, net.Conn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	br := bufio.NewReader(c)
	var resps []*http.Response
	var bodies []string
	for range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", len(resps)+1, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resps, bodies = append(resps, resp), append(bodies, string(b))
	}
	return resps, bodies, c
}

// expectClosed expects the server to close c without sending more.
func expectClosed(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %s", within)
	}
	if len(b) > 0 {
		t.Fatalf("unexpected bytes before close: %q", b)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	e := startEnv(t, HTTPConfig{})
	get := func(path string, hdr ...string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", "http://"+e.addr+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	t.Run("healthz", func(t *testing.T) {
		resp, body := get("/healthz")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s %v", resp.Status, resp.Header)
		}
		var h struct {
			Status string `json:"status"`
			Agent  struct {
				Up bool `json:"up"`
			} `json:"agent"`
			Connections *int `json:"connections"`
			Sessions    *int `json:"sessions"`
		}
		if err := json.Unmarshal([]byte(body), &h); err != nil || h.Status != "ok" || !h.Agent.Up || h.Connections == nil || h.Sessions == nil {
			t.Fatalf("healthz body %q (%v)", body, err)
		}
	})
	t.Run("metrics needs a token", func(t *testing.T) {
		resp, _ := get("/metrics")
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Fatalf("%s %v", resp.Status, resp.Header)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		resp, body := get("/metrics", "Authorization", "Bearer "+viewerToken)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
			t.Fatalf("%s %v", resp.Status, resp.Header)
		}
		for _, want := range []string{"agentbridge_agent_up 1", "agentbridge_agent_restarts_total 0", `agentbridge_connections_total{transport="http"}`, `agentbridge_refused_total{reason="no token",transport="http"} 1`, "agentbridge_sessions 0"} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
	t.Run("not found", func(t *testing.T) {
		for _, p := range []string{"/nope", "/acp/x", "/ui/nope.js", "/ui/index.html"} {
			resp, body := get(p)
			if resp.StatusCode != 404 || body == "" {
				t.Fatalf("%s: %s %q", p, resp.Status, body)
			}
		}
	})
	t.Run("method not allowed", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/metrics", "/acp", "/events"} {
			resps, bodies, _ := exchange(t, e.addr, "PUT "+p+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 1)
			if resps[0].StatusCode != 405 || resps[0].Header.Get("Allow") == "" || bodies[0] == "" {
				t.Fatalf("%s: %s %v %q", p, resps[0].Status, resps[0].Header, bodies[0])
			}
		}
	})
	t.Run("keep-alive pipelined", func(t *testing.T) {
		req := "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
		resps, _, c := exchange(t, e.addr, req+req+"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 3)
		if resps[0].StatusCode != 200 || resps[1].StatusCode != 200 || resps[2].StatusCode != 404 {
			t.Fatalf("statuses %d %d %d", resps[0].StatusCode, resps[1].StatusCode, resps[2].StatusCode)
		}
		// Still open: one more request on the same connection.
		io.WriteString(c, req)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("after pipelining: %v %v", resp, err)
		}
	})
	t.Run("body of a refused request is skipped", func(t *testing.T) {
		raw := "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world" +
			"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
		resps, _, _ := exchange(t, e.addr, raw, 2)
		if resps[0].StatusCode != 405 || resps[1].StatusCode != 200 {
			t.Fatalf("statuses %d %d", resps[0].StatusCode, resps[1].StatusCode)
		}
	})
	t.Run("chunked body closes", func(t *testing.T) {
		raw := "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
		resps, _, c := exchange(t, e.addr, raw, 1)
		if resps[0].StatusCode != 405 || !resps[0].Close {
			t.Fatalf("%s close=%v", resps[0].Status, resps[0].Close)
		}
		expectClosed(t, c, wait)
	})
	t.Run("connection close honoured", func(t *testing.T) {
		resps, _, c := exchange(t, e.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 1)
		if !resps[0].Close {
			t.Fatal("response does not say Connection: close")
		}
		expectClosed(t, c, wait)
	})
	t.Run("header block over 16 KiB", func(t *testing.T) {
		raw := "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 17<<10) + "\r\n\r\n"
		resps, _, c := exchange(t, e.addr, raw, 1)
		if resps[0].StatusCode != 431 {
			t.Fatalf("status %s, want 431", resps[0].Status)
		}
		expectClosed(t, c, wait)
	})
	t.Run("malformed", func(t *testing.T) {
		resps, _, c := exchange(t, e.addr, "BLAH\r\n\r\n", 1)
		if resps[0].StatusCode != 400 {
			t.Fatalf("status %s, want 400", resps[0].Status)
		}
		expectClosed(t, c, wait)
	})
}

func TestHTTPDeadlines(t *testing.T) {
	e := startEnv(t, HTTPConfig{HeaderTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	dial := func() net.Conn {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("unfinished header", func(t *testing.T) {
		start := time.Now()
		c := dial()
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
		expectClosed(t, c, wait)
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Fatalf("cut off after %s, before the deadline", d)
		}
	})
	t.Run("never speaks", func(t *testing.T) {
		expectClosed(t, dial(), wait)
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		_, _, c := exchange(t, e.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 1)
		expectClosed(t, c, wait)
	})
	t.Run("upgraded connection is not cut", func(t *testing.T) {
		w := dialWS(t, e.addr)
		// Longer than the header and idle deadlines, measured by the
		// heartbeat pings the connection answers (default 15s is too long,
		// so by a request answered after the deadline passed).
		deadline := time.Now().Add(600 * time.Millisecond)
		for i := 1; time.Now().Before(deadline); i++ {
			w.call(i, "echo", nil)
		}
		w.call(0, "echo", nil)
	})
}

func TestAuthMatrix(t *testing.T) {
	e := startEnv(t, HTTPConfig{Origins: mustOrigins(t, "https://ide.example.com")})
	self := "http://" + e.addr
	for _, tc := range []struct {
		name   string
		hdr    []string
		path   string
		status int
		sub    string
	}{
		{"no token", nil, "/acp", 401, ""},
		{"wrong token", []string{"Authorization", "Bearer not-a-real-token-000000"}, "/acp", 401, ""},
		{"bearer", []string{"Authorization", "Bearer " + clientToken}, "/acp", 101, ""},
		{"subprotocol", []string{"Sec-WebSocket-Protocol", "acp, " + auth.SubprotocolPrefix + clientToken}, "/acp", 101, auth.SubprotocolPrefix + clientToken},
		{"query", nil, "/acp?token=" + clientToken, 101, ""},
		{"cookie", []string{"Cookie", "theme=dark; " + auth.CookieName + "=" + clientToken}, "/acp", 101, ""},
		{"foreign origin", []string{"Authorization", "Bearer " + clientToken, "Origin", "https://evil.example"}, "/acp", 403, ""},
		{"foreign origin without token", []string{"Origin", "https://evil.example"}, "/acp", 403, ""},
		{"same origin", []string{"Authorization", "Bearer " + clientToken, "Origin", self}, "/acp", 101, ""},
		{"allowed origin", []string{"Authorization", "Bearer " + clientToken, "Origin", "https://ide.example.com"}, "/acp", 101, ""},
		{"null origin", []string{"Authorization", "Bearer " + clientToken, "Origin", "null"}, "/acp", 403, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, resp := handshake(t, e.addr, tc.path, hdrs(tc.hdr...)...)
			if resp.StatusCode != tc.status {
				body, _ := io.ReadAll(resp.Body)
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.status)
			}
			if tc.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
			if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != tc.sub {
				t.Fatalf("selected subprotocol %q, want %q", got, tc.sub)
			}
		})
	}
	if got := metricValue(t, e.m, "agentbridge_refused_total", "transport", "ws", "reason", "origin"); got != 3 {
		t.Errorf("origin refusals counted %v, want 3", got)
	}
	if got := metricValue(t, e.m, "agentbridge_refused_total", "transport", "ws", "reason", "bad token"); got != 1 {
		t.Errorf("bad-token refusals counted %v, want 1", got)
	}

	t.Run("roles", func(t *testing.T) {
		owner := dialWS(t, e.addr)
		sid := owner.call(1, "session/new", map[string]any{"cwd": "/"})["result"].(map[string]any)["sessionId"].(string)
		for _, tc := range []struct {
			token  string
			method string
			code   int
		}{
			{viewerToken, "session/prompt", -32001},
			{viewerToken, "session/cancel", -32001},
			{operatorToken, "session/prompt", -32001},
			{viewerToken, "bridge/sessions", 0},
		} {
			w := dialWS(t, e.addr, "Authorization", "Bearer "+tc.token)
			if tc.method != "bridge/sessions" {
				w.call(1, "bridge/attach", map[string]any{"sessionId": sid})
			}
			res := w.call(2, tc.method, map[string]any{"sessionId": sid, "prompt": []any{}})
			if errCode(res) != tc.code {
				t.Fatalf("%s calling %s: %v, want code %d", tc.token[:8], tc.method, res, tc.code)
			}
		}
	})
}

func mustOrigins(t *testing.T, o ...string) *auth.OriginPolicy {
	p, err := auth.NewOriginPolicy(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
