package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStreamableHTTPOverH2: ACP Streamable HTTP on the TLS listener over
// HTTP/2 (ALPN h2), with the real binary and the demo agent: initialize,
// the connection stream, session/new, the session stream, a prompt whose
// updates and permission request arrive on the session stream, the
// permission answered by POST, the prompt's answer — every request and both
// SSE streams multiplexed on one TCP connection.
func TestStreamableHTTPOverH2(t *testing.T) {
	t.Parallel()
	cert, key, pool := selfSigned(t)
	d := netDaemon(t, "--tls-cert", cert, "--tls-key", key)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	base := "https://" + d.listen + "/acp"

	var mu sync.Mutex
	conns := map[string]bool{} // local addresses of the TCP connections used
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		mu.Lock()
		conns[i.Conn.LocalAddr().String()] = true
		mu.Unlock()
	}})
	do := func(method, body string, hdr ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, base, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+e2eClientToken)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, body, err)
		}
		if resp.ProtoMajor != 2 {
			t.Fatalf("%s %s answered over %s, want HTTP/2.0", method, body, resp.Proto)
		}
		return resp
	}
	post := func(body string, hdr ...string) {
		t.Helper()
		r := do("POST", body, hdr...)
		r.Body.Close()
		if r.StatusCode != http.StatusAccepted {
			t.Fatalf("POST %s: %d", body, r.StatusCode)
		}
	}

	r := do("POST", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1,"clientCapabilities":{}}}`)
	var init struct {
		Result struct {
			ProtocolVersion int `json:"protocolVersion"`
		} `json:"result"`
	}
	if err := json.NewDecoder(r.Body).Decode(&init); err != nil || r.StatusCode != 200 || init.Result.ProtocolVersion != 1 {
		t.Fatalf("initialize: %d %v %+v", r.StatusCode, err, init)
	}
	r.Body.Close()
	id := r.Header.Get("Acp-Connection-Id")
	if id == "" {
		t.Fatalf("initialize: no Acp-Connection-Id in %v", r.Header)
	}

	connStream := sseMessages(t, do("GET", "", "Accept", "text/event-stream", "Acp-Connection-Id", id))
	post(`{"jsonrpc":"2.0","id":2,"method":"session/new","params":{"cwd":"/","mcpServers":[]}}`, "Acp-Connection-Id", id)
	var sid string
	for m := range connStream {
		if string(m["id"]) == "2" {
			var res struct {
				SessionID string `json:"sessionId"`
			}
			_ = json.Unmarshal(m["result"], &res)
			sid = res.SessionID
			break
		}
	}
	if sid == "" {
		t.Fatal("no session/new answer on the connection stream")
	}

	sessStream := sseMessages(t, do("GET", "", "Accept", "text/event-stream", "Acp-Connection-Id", id, "Acp-Session-Id", sid))
	post(`{"jsonrpc":"2.0","id":3,"method":"session/prompt","params":{"sessionId":"`+sid+`","prompt":[{"type":"text","text":"over h2"}]}}`,
		"Acp-Connection-Id", id, "Acp-Session-Id", sid)
	chunks, permissions := 0, 0
	var stop string
	for m := range sessStream {
		switch {
		case string(m["method"]) == `"session/update"`:
			if strings.Contains(string(m["params"]), `"agent_message_chunk"`) {
				chunks++
			}
		case string(m["method"]) == `"session/request_permission"`:
			permissions++
			post(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{"outcome":{"outcome":"selected","optionId":"allow"}}}`, m["id"]),
				"Acp-Connection-Id", id, "Acp-Session-Id", sid)
		case string(m["id"]) == "3":
			var res struct {
				StopReason string `json:"stopReason"`
			}
			_ = json.Unmarshal(m["result"], &res)
			stop = res.StopReason
		}
		if stop != "" {
			break
		}
	}
	if stop != "end_turn" || chunks == 0 || permissions != 1 {
		t.Fatalf("prompt over h2: stopReason %q, %d chunks, %d permission requests", stop, chunks, permissions)
	}
	// The session's /events stream over the same connection replays the
	// prompt's logged events with their seqs.
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+d.listen+"/events?session="+sid+"&since=0", nil)
	req.Header.Set("Authorization", "Bearer "+e2eViewerToken)
	ev, err := hc.Do(req)
	if err != nil || ev.ProtoMajor != 2 || ev.StatusCode != 200 {
		t.Fatalf("/events over h2: %v %v", ev, err)
	}
	evr := bufio.NewReader(ev.Body)
	line, err := evr.ReadString('\n')
	for err == nil && !strings.HasPrefix(line, "id: ") {
		line, err = evr.ReadString('\n')
	}
	ev.Body.Close()
	if line != "id: 1\n" {
		t.Fatalf("/events over h2: first event line %q (%v)", line, err)
	}
	// A refused WebSocket attempt ends only its own stream over h2 (a
	// "Connection: close" would make net/http shut the whole connection).
	if r := do("GET", "", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version", "13"); r.StatusCode < 400 || r.StatusCode >= 500 {
		t.Fatalf("WebSocket attempt over h2: %d", r.StatusCode)
	}
	if r := do("DELETE", "", "Acp-Connection-Id", id); r.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE: %d", r.StatusCode)
	}
	mu.Lock()
	n := len(conns)
	mu.Unlock()
	if n != 1 {
		t.Fatalf("requests and streams used %d TCP connections, want one (HTTP/2 multiplexing): %v", n, conns)
	}
}

// sseMessages reads an SSE response's data lines as JSON-RPC messages (field →
// raw value) until the stream ends or the test does.
func sseMessages(t *testing.T, resp *http.Response) <-chan map[string]json.RawMessage {
	t.Helper()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("GET stream: %d %v", resp.StatusCode, resp.Header)
	}
	ch := make(chan map[string]json.RawMessage, 64)
	t.Cleanup(func() { resp.Body.Close() })
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var m map[string]json.RawMessage
			if json.Unmarshal([]byte(data), &m) != nil {
				continue
			}
			select {
			case ch <- m:
			case <-resp.Request.Context().Done():
				return
			}
		}
	}()
	return ch
}
