package loop

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/ws"
)

// gwsPeer is a gws client that collects what it receives.
type gwsPeer struct {
	gws.BuiltinEventHandler
	msgs   chan []byte
	closed chan error
	socket *gws.Conn
}

func (p *gwsPeer) OnMessage(_ *gws.Conn, m *gws.Message) {
	p.msgs <- append([]byte(nil), m.Bytes()...)
	m.Close()
}

func (p *gwsPeer) OnClose(_ *gws.Conn, err error) { p.closed <- err }

func dialGWS(t *testing.T, url string, pool *x509.CertPool, hdr ...string) (*gwsPeer, *http.Response, error) {
	t.Helper()
	p := &gwsPeer{msgs: make(chan []byte, 1024), closed: make(chan error, 1)}
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	opt := &gws.ClientOption{Addr: url, RequestHeader: h, ReadMaxPayloadSize: 64 << 20, CheckUtf8Enabled: true}
	if pool != nil {
		opt.TlsConfig = &tls.Config{RootCAs: pool}
	}
	socket, resp, err := gws.NewClient(p, opt)
	if err != nil {
		return nil, resp, err
	}
	p.socket = socket
	go socket.ReadLoop()
	t.Cleanup(func() { socket.NetConn().Close() })
	return p, resp, nil
}

func (p *gwsPeer) call(t *testing.T, id int, method string, params any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(params)
	if err := p.socket.WriteString(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":%s}`, id, method, b)); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case raw := <-p.msgs:
			var m map[string]any
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatalf("not JSON: %.200q", raw)
			}
			if _, note := m["method"]; !note && m["id"] == float64(id) {
				return m
			}
		case err := <-p.closed:
			t.Fatalf("closed while waiting for %s: %v", method, err)
		case <-time.After(wait):
			t.Fatalf("no answer to %s", method)
		}
	}
}

func (p *gwsPeer) closeCode(t *testing.T) uint16 {
	t.Helper()
	select {
	case err := <-p.closed:
		var ce *gws.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		t.Fatalf("closed without a close frame: %v", err)
	case <-time.After(wait):
		t.Fatal("not closed")
	}
	return 0
}

func TestTLS(t *testing.T) {
	cert, key, pool := writeCert(t)
	// Every peer here is dropped after two silent heartbeats: 1s leaves a
	// gws peer on a loaded machine time to answer pings between its calls
	// (300ms dropped one mid-test), and the silent peer is still dropped
	// well within wait.
	const heartbeat = time.Second
	e := startEnv(t, HTTPConfig{TLSCert: cert, TLSKey: key, Heartbeat: heartbeat, CloseTimeout: time.Second}, withMaxMessage(2<<20))
	if err := e.srv.eng.Validate(); err != nil {
		t.Fatalf("the engine must run with only TLS listening (the agent's connection lives on it): %v", err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	wss := "wss://" + e.addr + "/acp"

	t.Run("healthz and metrics", func(t *testing.T) {
		resp, err := hc.Get("https://" + e.addr + "/healthz")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("healthz: %v %v", resp, err)
		}
		resp.Body.Close()
		req, _ := http.NewRequest("GET", "https://"+e.addr+"/metrics", nil)
		if resp, err = hc.Do(req); err != nil || resp.StatusCode != 401 {
			t.Fatalf("metrics without token: %v %v", resp, err)
		}
		resp.Body.Close()
		req.Header.Set("Authorization", "Bearer "+viewerToken)
		resp, err = hc.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("metrics: %v %v", resp, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "agentbridge_agent_up 1") {
			t.Fatalf("metrics body lacks agent_up")
		}
	})

	t.Run("round trip and fan-out", func(t *testing.T) {
		p, resp, err := dialGWS(t, wss, pool, "Authorization", "Bearer "+clientToken)
		if err != nil {
			t.Fatal(err)
		}
		// As on the gnet listener, the 101 names the connection.
		id := resp.Header.Get("Acp-Connection-Id")
		if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(id) {
			t.Fatalf("Acp-Connection-Id %q on the wss 101 (headers %v)", id, resp.Header)
		}
		if _, resp2, err := dialGWS(t, wss, pool, "Authorization", "Bearer "+clientToken); err != nil || resp2.Header.Get("Acp-Connection-Id") == id {
			t.Fatalf("a second connection has the same id %q (%v)", id, err)
		}
		sid := p.call(t, 1, "session/new", map[string]any{"cwd": "/"})["result"].(map[string]any)["sessionId"].(string)
		big := strings.Repeat("y", 1<<20)
		if r := p.call(t, 2, "echo", map[string]string{"big": big}); r["result"].(map[string]any)["big"] != big {
			t.Fatal("1 MiB echo differs")
		}
		watcher, _, err := dialGWS(t, wss, pool, "Authorization", "Bearer "+viewerToken)
		if err != nil {
			t.Fatal(err)
		}
		watcher.call(t, 1, "bridge/attach", map[string]any{"sessionId": sid})
		p.call(t, 3, "emit", map[string]any{"sessionId": sid, "n": 3})
		for i := 1; i <= 3; i++ {
			select {
			case raw := <-watcher.msgs:
				if !strings.Contains(string(raw), `"i":`+fmt.Sprint(i)) {
					t.Fatalf("watcher got %s, want update %d", raw, i)
				}
			case <-time.After(wait):
				t.Fatal("watcher got no update")
			}
		}
		if r := watcher.call(t, 2, "session/prompt", map[string]any{"sessionId": sid}); errCode(r) != -32001 {
			t.Fatalf("viewer prompt: %v", r)
		}
	})

	t.Run("subprotocol token is selected", func(t *testing.T) {
		sub := auth.SubprotocolPrefix + clientToken
		p, resp, err := dialGWS(t, wss, pool, "Sec-WebSocket-Protocol", sub)
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != sub || p.socket.SubProtocol() != sub {
			t.Fatalf("selected %q", got)
		}
		p.call(t, 1, "echo", nil)
	})

	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			hdr    []string
			status int
		}{
			{"no token", nil, 401},
			{"wrong token", []string{"Authorization", "Bearer wrong-token-000000000000"}, 401},
			{"foreign origin", []string{"Authorization", "Bearer " + clientToken, "Origin", "https://evil.example"}, 403},
			{"version 8", []string{"Authorization", "Bearer " + clientToken, "Sec-WebSocket-Version", "8"}, 426},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req, _ := http.NewRequest("GET", "https://"+e.addr+"/acp", nil)
				for i := 0; i+1 < len(upgradeHeaders); i += 2 {
					req.Header.Set(upgradeHeaders[i], upgradeHeaders[i+1])
				}
				for i := 0; i+1 < len(tc.hdr); i += 2 {
					req.Header.Set(tc.hdr[i], tc.hdr[i+1])
				}
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != tc.status {
					t.Fatalf("status %s, want %d", resp.Status, tc.status)
				}
			})
		}
	})

	t.Run("binary closes 1003", func(t *testing.T) {
		p, _, err := dialGWS(t, wss, pool, "Authorization", "Bearer "+clientToken)
		if err != nil {
			t.Fatal(err)
		}
		_ = p.socket.WriteMessage(gws.OpcodeBinary, []byte("{}"))
		if code := p.closeCode(t); code != 1003 {
			t.Fatalf("close %d, want 1003", code)
		}
	})

	t.Run("too big closes 1009", func(t *testing.T) {
		// A frame that announces 3 MiB (over --max-message 2 MiB), sent
		// with only its first 64 KiB: the limit applies to what a header
		// announces, and a peer still writing megabytes when the server
		// closes could see its write fail (broken pipe) before it reads
		// the close frame, as gws did under load.
		w := dialWSS(t, e.addr, pool)
		head := []byte{0x81, 0x80 | 127, 0, 0, 0, 0, 0, 3 << 20 >> 16, 0, 0, 1, 2, 3, 4}
		w.write(head, make([]byte, 64<<10))
		w.expectClose(ws.CloseTooBig)
	})

	t.Run("sse resume", func(t *testing.T) {
		p, _, err := dialGWS(t, wss, pool, "Authorization", "Bearer "+clientToken)
		if err != nil {
			t.Fatal(err)
		}
		sid := p.call(t, 1, "session/new", map[string]any{"cwd": "/"})["result"].(map[string]any)["sessionId"].(string)
		p.call(t, 2, "emit", map[string]any{"sessionId": sid, "n": 4})
		s, resp := openSSE(t, hc, "https://"+e.addr+"/events?session="+sid, "Authorization", "Bearer "+viewerToken, "Last-Event-ID", "2")
		if s == nil {
			t.Fatalf("status %s", resp.Status)
		}
		s.expectSeqs(3, 4)
		p.call(t, 3, "emit", map[string]any{"sessionId": sid, "n": 1})
		s.expectSeqs(5)
	})

	t.Run("silent peer dropped", func(t *testing.T) {
		before := metricValue(t, e.m, "agentbridge_half_open_total", "transport", "wss")
		start := time.Now() // before the upgrade: silence starts no earlier
		c, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /acp HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n", e.addr, clientToken)
		for i := 0; i+1 < len(upgradeHeaders); i += 2 {
			fmt.Fprintf(c, "%s: %s\r\n", upgradeHeaders[i], upgradeHeaders[i+1])
		}
		io.WriteString(c, "\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("handshake: %v %v", resp, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		r := ws.Reader{MaxMessage: 1 << 20}
		var pending []byte
		buf := make([]byte, 4096)
		pings := 0
	read:
		for {
			n, err := br.Read(buf)
			if err != nil {
				break // the server ended the connection
			}
			pending = append(pending, buf[:n]...)
			for {
				ev, k, err := r.Next(pending)
				pending = pending[k:]
				if err != nil || ev.Kind == ws.EventNone {
					break
				}
				if ev.Kind == ws.EventPing {
					pings++
				}
				if ev.Kind == ws.EventClose {
					break read
				}
			}
		}
		if d := time.Since(start); d < 2*heartbeat || d >= wait {
			t.Fatalf("dropped after %s (heartbeat %s)", d, heartbeat)
		}
		if pings == 0 {
			t.Fatal("no ping before the drop")
		}
		eventually(t, "half-open counted", func() bool {
			return metricValue(t, e.m, "agentbridge_half_open_total", "transport", "wss") == before+1
		})
	})

	t.Run("shutdown closes 1001", func(t *testing.T) {
		p, _, err := dialGWS(t, wss, pool, "Authorization", "Bearer "+clientToken)
		if err != nil {
			t.Fatal(err)
		}
		p.call(t, 1, "echo", nil)
		e.hub.Shutdown("test")
		if code := p.closeCode(t); code != 1001 {
			t.Fatalf("close %d, want 1001", code)
		}
		eventually(t, "connections drained", func() bool { return e.srv.Connections() == 0 })
	})
}
