package e2e

import (
	"bufio"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestStreamableHTTPOverTLS: ACP (/acp) and MCP (/mcp) Streamable HTTP on
// the TLS listener, through the same handlers as the plain one: POST
// initialize → 200 and the id, GET opens the connection stream, a POSTed
// request is 202 and its answer arrives on the stream; an MCP request is
// answered as an SSE stream that ends with its response; DELETE.
func TestStreamableHTTPOverTLS(t *testing.T) {
	t.Parallel()
	cert, key, pool := selfSigned(t)
	d := netDaemon(t, append([]string{"--tls-cert", cert, "--tls-key", key}, fakeAgentCmd()...)...)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 20 * time.Second}
	base := "https://" + d.listen
	do := func(method, path, body string, hdr ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+e2eClientToken)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp
	}
	// ACP.
	r := do("POST", "/acp", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}`)
	if r.StatusCode != 200 || r.Header.Get("Acp-Connection-Id") == "" {
		t.Fatalf("initialize: %d %v", r.StatusCode, r.Header)
	}
	r.Body.Close()
	id := r.Header.Get("Acp-Connection-Id")
	g := do("GET", "/acp", "", "Accept", "text/event-stream", "Acp-Connection-Id", id)
	if g.StatusCode != 200 || !strings.HasPrefix(g.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("GET: %d %v", g.StatusCode, g.Header)
	}
	defer g.Body.Close()
	if r := do("GET", "/acp", "", "Accept", "text/event-stream", "Acp-Connection-Id", id); r.StatusCode != 409 {
		t.Fatalf("second GET: %d", r.StatusCode)
	}
	if r := do("POST", "/acp", `{"jsonrpc":"2.0","id":2,"method":"echo","params":{"x":7}}`, "Acp-Connection-Id", id); r.StatusCode != 202 {
		t.Fatalf("POST echo: %d", r.StatusCode)
	}
	br := bufio.NewReader(g.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("connection stream: %v", err)
		}
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"id":2`) {
			if !strings.Contains(line, `"x":7`) {
				t.Fatalf("echo answer: %s", line)
			}
			break
		}
	}
	if r := do("DELETE", "/acp", "", "Acp-Connection-Id", id); r.StatusCode != 202 {
		t.Fatalf("DELETE: %d", r.StatusCode)
	}
	if r := do("POST", "/acp", `{"jsonrpc":"2.0","method":"x"}`, "Acp-Connection-Id", id); r.StatusCode != 404 {
		t.Fatalf("POST after DELETE: %d", r.StatusCode)
	}

	// MCP.
	acc := []string{"Accept", "application/json, text/event-stream"}
	r = do("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`, acc...)
	sid := r.Header.Get("Mcp-Session-Id")
	r.Body.Close()
	if r.StatusCode != 200 || sid == "" {
		t.Fatalf("mcp initialize: %d %v", r.StatusCode, r.Header)
	}
	r = do("POST", "/mcp", `{"jsonrpc":"2.0","id":5,"method":"echo","params":{"y":1}}`, append(acc, "Mcp-Session-Id", sid)...)
	if r.StatusCode != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("mcp request: %d %v", r.StatusCode, r.Header)
	}
	var all strings.Builder
	sc := bufio.NewScanner(r.Body)
	for sc.Scan() { // ends with the response
		all.WriteString(sc.Text() + "\n")
	}
	r.Body.Close()
	if !strings.Contains(all.String(), `"id":5`) || !strings.Contains(all.String(), `"y":1`) {
		t.Fatalf("mcp stream: %q", all.String())
	}
	if r := do("DELETE", "/mcp", "", "Mcp-Session-Id", sid); r.StatusCode != 200 {
		t.Fatalf("mcp DELETE: %d", r.StatusCode)
	}
}
