package loop

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/delivery"
)

func withMaxMessage(n int) envOpt { return func(c *Config) { c.MaxMessage = n } }

// echoRequest is a JSON-RPC "echo" request of exactly size bytes.
func echoRequest(id, size int) string {
	head := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"echo","params":{"p":"`, id)
	tail := `"}}`
	return head + strings.Repeat("x", size-len(head)-len(tail)) + tail
}

// withB0 rewrites the first header byte of a frame (FIN, RSV, opcode).
func withB0(f []byte, b0 byte) []byte {
	f = bytes.Clone(f)
	f[0] = b0
	return f
}

func closePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

func TestWebSocketRFC6455(t *testing.T) {
	e := startEnv(t, HTTPConfig{CloseTimeout: 2 * time.Second}, withMaxMessage(2<<20))

	t.Run("sizes", func(t *testing.T) {
		for _, size := range []int{125, 126, 127, 65535, 65536, 1 << 20} {
			t.Run(fmt.Sprint(size), func(t *testing.T) {
				w := dialWS(t, e.addr)
				req := echoRequest(7, size)
				w.write(w.frame(true, ws.OpText, []byte(req)))
				res := w.response(7)
				var want struct {
					Params json.RawMessage `json:"params"`
				}
				_ = json.Unmarshal([]byte(req), &want)
				got, _ := json.Marshal(res["result"])
				if !bytes.Equal(got, want.Params) {
					t.Fatalf("echo of %d bytes came back as %d bytes", len(want.Params), len(got))
				}
			})
		}
	})

	t.Run("fragmented with interleaved pings", func(t *testing.T) {
		w := dialWS(t, e.addr)
		req := []byte(echoRequest(3, 300))
		w.write(
			w.frame(false, ws.OpText, req[:100]),
			w.frame(true, ws.OpPing, []byte("p1")),
			w.frame(false, ws.OpContinuation, req[100:101]),
			w.frame(false, ws.OpContinuation, nil),
			w.frame(true, ws.OpPing, []byte("p2")),
			w.frame(true, ws.OpContinuation, req[101:]),
		)
		for _, want := range []string{"p1", "p2"} {
			if g := w.mustNext(wait); g.kind != ws.EventPong || g.payload != want {
				t.Fatalf("got %v %q, want pong %q", g.kind, g.payload, want)
			}
		}
		if res := w.response(3); res["result"] == nil {
			t.Fatalf("no result: %v", res)
		}
	})

	t.Run("fragmented one byte per write", func(t *testing.T) {
		w := dialWS(t, e.addr)
		req := []byte(echoRequest(4, 200))
		all := append(w.frame(false, ws.OpText, req[:50]), w.frame(true, ws.OpContinuation, req[50:])...)
		for i := range all {
			w.write(all[i : i+1])
		}
		if res := w.response(4); res["result"] == nil {
			t.Fatalf("no result: %v", res)
		}
	})

	t.Run("utf8 split across fragments", func(t *testing.T) {
		w := dialWS(t, e.addr)
		req := []byte(`{"jsonrpc":"2.0","id":5,"method":"echo","params":{"s":"κόσμε 😀"}}`)
		cut := bytes.Index(req, []byte("😀")) + 2 // inside the 4-byte sequence
		w.write(w.frame(false, ws.OpText, req[:cut]), w.frame(true, ws.OpContinuation, req[cut:]))
		res := w.response(5)
		if s := res["result"].(map[string]any)["s"]; s != "κόσμε 😀" {
			t.Fatalf("echo = %q", s)
		}
	})

	t.Run("ping payload echoed", func(t *testing.T) {
		w := dialWS(t, e.addr)
		p := bytes.Repeat([]byte{0xAB}, 125)
		w.write(w.frame(true, ws.OpPing, p))
		if g := w.mustNext(wait); g.kind != ws.EventPong || g.payload != string(p) {
			t.Fatalf("got %v of %d bytes, want pong of 125", g.kind, len(g.payload))
		}
	})

	t.Run("unsolicited pong ignored", func(t *testing.T) {
		w := dialWS(t, e.addr)
		w.write(w.frame(true, ws.OpPong, []byte("hi")))
		if res := w.call(1, "echo", map[string]int{"a": 1}); res["result"] == nil {
			t.Fatalf("no result after a pong: %v", res)
		}
	})

	closes := []struct {
		name  string
		frame func(w *wsc) []byte
		want  ws.CloseCode
	}{
		{"normal with reason", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(1000, "bye")) }, 1000},
		{"going away", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(1001, "")) }, 1001},
		{"registered 3000", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(3000, "")) }, 3000},
		{"private 4999", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(4999, "x")) }, 4999},
		{"empty", func(w *wsc) []byte { return w.frame(true, ws.OpClose, nil) }, ws.CloseNoStatus},
	}
	for _, tc := range closes {
		t.Run("close handshake echo/"+tc.name, func(t *testing.T) {
			w := dialWS(t, e.addr)
			w.write(tc.frame(w))
			w.expectClose(tc.want)
		})
	}

	failures := []struct {
		name  string
		send  func(w *wsc) []byte
		want  ws.CloseCode
		bytes bool // send in a goroutine: the server may stop reading
	}{
		{"unmasked", func(w *wsc) []byte { return ws.AppendFrame(nil, true, ws.OpText, []byte("{}")) }, ws.CloseProtocolError, false},
		{"rsv1", func(w *wsc) []byte { return withB0(w.frame(true, ws.OpText, []byte("{}")), 0x80|0x40|1) }, ws.CloseProtocolError, false},
		{"rsv2", func(w *wsc) []byte { return withB0(w.frame(true, ws.OpText, []byte("{}")), 0x80|0x20|1) }, ws.CloseProtocolError, false},
		{"rsv3", func(w *wsc) []byte { return withB0(w.frame(true, ws.OpText, []byte("{}")), 0x80|0x10|1) }, ws.CloseProtocolError, false},
		{"opcode 3", func(w *wsc) []byte { return withB0(w.frame(true, ws.OpText, nil), 0x83) }, ws.CloseProtocolError, false},
		{"opcode 7", func(w *wsc) []byte { return withB0(w.frame(true, ws.OpText, nil), 0x87) }, ws.CloseProtocolError, false},
		{"opcode 0xB", func(w *wsc) []byte { return withB0(w.frame(true, ws.OpText, nil), 0x8B) }, ws.CloseProtocolError, false},
		{"opcode 0xF", func(w *wsc) []byte { return withB0(w.frame(true, ws.OpText, nil), 0x8F) }, ws.CloseProtocolError, false},
		{"continuation first", func(w *wsc) []byte { return w.frame(true, ws.OpContinuation, []byte("x")) }, ws.CloseProtocolError, false},
		{"text inside fragmented", func(w *wsc) []byte {
			return append(w.frame(false, ws.OpText, []byte("{")), w.frame(true, ws.OpText, []byte("}"))...)
		}, ws.CloseProtocolError, false},
		{"fragmented ping", func(w *wsc) []byte { return w.frame(false, ws.OpPing, []byte("x")) }, ws.CloseProtocolError, false},
		{"ping over 125", func(w *wsc) []byte { return w.frame(true, ws.OpPing, make([]byte, 126)) }, ws.CloseProtocolError, false},
		{"close 1-byte payload", func(w *wsc) []byte { return w.frame(true, ws.OpClose, []byte{3}) }, ws.CloseProtocolError, false},
		{"close code 999", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(999, "")) }, ws.CloseProtocolError, false},
		{"close code 1004", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(1004, "")) }, ws.CloseProtocolError, false},
		{"close code 1005", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(1005, "")) }, ws.CloseProtocolError, false},
		{"close code 1006", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(1006, "")) }, ws.CloseProtocolError, false},
		{"close code 1015", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(1015, "")) }, ws.CloseProtocolError, false},
		{"close code 2999", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(2999, "")) }, ws.CloseProtocolError, false},
		{"close code 5000", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(5000, "")) }, ws.CloseProtocolError, false},
		{"close reason not utf8", func(w *wsc) []byte { return w.frame(true, ws.OpClose, closePayload(1000, "\xff")) }, ws.CloseInvalidPayload, false},
		{"text not utf8", func(w *wsc) []byte { return w.frame(true, ws.OpText, []byte("{\"a\":\"\xc3\x28\"}")) }, ws.CloseInvalidPayload, false},
		{"utf8 broken across fragments", func(w *wsc) []byte {
			return append(w.frame(false, ws.OpText, []byte("\"\xf0\x90")), w.frame(true, ws.OpContinuation, []byte("\x28\""))...)
		}, ws.CloseInvalidPayload, false},
		{"text ends inside a sequence", func(w *wsc) []byte { return w.frame(true, ws.OpText, []byte("\"\xe2\x82")) }, ws.CloseInvalidPayload, false},
		{"binary", func(w *wsc) []byte { return w.frame(true, ws.OpBinary, []byte("{}")) }, ws.CloseUnsupportedData, false},
		{"too big in one frame", func(w *wsc) []byte { return w.frame(true, ws.OpText, bytes.Repeat([]byte("x"), 3<<20)) }, ws.CloseTooBig, true},
		{"too big across fragments", func(w *wsc) []byte {
			half := bytes.Repeat([]byte("x"), 1<<20+1)
			return append(w.frame(false, ws.OpText, half), w.frame(true, ws.OpContinuation, half)...)
		}, ws.CloseTooBig, true},
	}
	for _, tc := range failures {
		t.Run("fail/"+tc.name, func(t *testing.T) {
			w := dialWS(t, e.addr)
			b := tc.send(w)
			if tc.bytes {
				go func() { _, _ = w.c.Write(b) }()
			} else {
				w.write(b)
			}
			w.expectClose(tc.want)
		})
	}
	if n := metricValue(t, e.m, "agentbridge_ws_protocol_errors_total", "code", "1002"); n < 20 {
		t.Fatalf("protocol errors counted with 1002: %v, want >= 20", n)
	}

	t.Run("handshake errors", func(t *testing.T) {
		auth := []string{"Authorization", "Bearer " + clientToken}
		for _, tc := range []struct {
			name   string
			method string
			hdr    []string
			status int
		}{
			{"no key", "GET", []string{"Upgrade", "websocket", "Connection", "Upgrade", "Sec-WebSocket-Version", "13"}, 400},
			{"bad key", "GET", []string{"Upgrade", "websocket", "Connection", "Upgrade", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "c2hvcnQ="}, 400},
			{"no upgrade header", "GET", []string{"Connection", "Upgrade", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}, 400},
			{"no connection header", "GET", []string{"Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}, 400},
			{"version 8", "GET", []string{"Upgrade", "websocket", "Connection", "Upgrade", "Sec-WebSocket-Version", "8", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}, 426},
			{"no version", "GET", []string{"Upgrade", "websocket", "Connection", "Upgrade", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}, 426},
			// Without any WebSocket header a GET is a Streamable HTTP stream
			// request (406 without Accept: text/event-stream), and a POST
			// is a Streamable HTTP message (415 without application/json).
			{"plain GET", "GET", nil, 406},
			{"POST", "POST", hdrs(), 415},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp := rawRequest(t, e.addr, tc.method, "/acp", append(append([]string{}, auth...), tc.hdr...)...)
				if resp.StatusCode != tc.status {
					body, _ := io.ReadAll(resp.Body)
					t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.status)
				}
				if tc.status == 426 && resp.Header.Get("Sec-WebSocket-Version") != "13" {
					t.Fatalf("426 without Sec-WebSocket-Version: 13: %v", resp.Header)
				}
			})
		}
	})
}

// rawRequest sends one request on a fresh connection and reads the answer.
func rawRequest(t *testing.T, addr, method, path string, hdr ...string) *http.Response {
	t.Helper()
	if method == "GET" {
		_, _, resp := handshake(t, addr, path, hdr...)
		return resp
	}
	req, _ := http.NewRequest(method, "http://"+addr+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestWebSocketServerClose(t *testing.T) {
	t.Run("peer answers", func(t *testing.T) {
		e := startEnv(t, HTTPConfig{CloseTimeout: 10 * time.Second})
		w := dialWS(t, e.addr)
		w.call(1, "echo", nil)
		e.hub.Shutdown("test stops")
		g := w.mustNext(wait)
		for g.kind != ws.EventClose {
			g = w.mustNext(wait)
		}
		if g.code != ws.CloseGoingAway {
			t.Fatalf("close code %d, want 1001", g.code)
		}
		// Our close frame is followed by the end of the server's stream
		// (it shut its write side), yet it waits for our answer.
		w.expectEOF()
		start := time.Now()
		w.write(w.frame(true, ws.OpClose, closePayload(1001, "")))
		eventually(t, "server closes after our close frame", func() bool { return e.srv.Connections() == 0 })
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("close took %s", d)
		}
	})
	t.Run("peer silent", func(t *testing.T) {
		e := startEnv(t, HTTPConfig{CloseTimeout: 300 * time.Millisecond})
		w := dialWS(t, e.addr)
		w.call(1, "echo", nil)
		e.hub.Shutdown("test stops")
		for g := w.mustNext(wait); g.kind != ws.EventClose; g = w.mustNext(wait) {
		}
		eventually(t, "server closes after its close timeout", func() bool { return e.srv.Connections() == 0 })
	})
}

func TestWebSocketHeartbeat(t *testing.T) {
	// A peer that answers is dropped only if its pong takes longer than a
	// heartbeat to reach the daemon: 500ms leaves this test's reader (and
	// the daemon's loop) that long to be scheduled on a loaded machine,
	// where 200ms did not.
	const heartbeat = 500 * time.Millisecond
	e := startEnv(t, HTTPConfig{Heartbeat: heartbeat})
	t.Run("answering peer stays", func(t *testing.T) {
		w := dialWS(t, e.addr)
		for pings := 0; pings < 4; {
			g := w.mustNext(wait)
			if g.kind == ws.EventPing {
				pings++
				w.write(w.frame(true, ws.OpPong, []byte(g.payload)))
			}
		}
		if res := w.call(1, "echo", nil); res["result"] != nil || res["error"] != nil {
			return
		}
		t.Fatalf("connection unusable after heartbeats")
	})
	t.Run("silent peer dropped", func(t *testing.T) {
		before := metricValue(t, e.m, "agentbridge_half_open_total", "transport", "ws")
		start := time.Now() // before the upgrade: silence starts no earlier
		w := dialWS(t, e.addr)
		// Read (and ignore) pings without answering until the close.
		for {
			g, err := w.next(wait)
			if err != nil {
				t.Fatalf("no close for a silent peer: %v", err)
			}
			if g.kind == ws.EventClose {
				if g.code != ws.CloseGoingAway {
					t.Fatalf("close %d, want 1001", g.code)
				}
				break
			}
		}
		w.expectEOF()
		if d := time.Since(start); d < 2*heartbeat {
			t.Fatalf("dropped after %s, before two heartbeats", d)
		}
		if got := metricValue(t, e.m, "agentbridge_half_open_total", "transport", "ws"); got != before+1 {
			t.Fatalf("half-open count %v, want %v", got, before+1)
		}
	})
}

func TestWebSocketRateLimit(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		t.Run(map[bool]string{false: "ws", true: "wss"}[tlsOn], func(t *testing.T) {
			hc := HTTPConfig{}
			if tlsOn {
				hc.TLSCert, hc.TLSKey, _ = writeCert(t)
			}
			e := startEnv(t, hc, func(c *Config) { c.Rate = delivery.Rate{Messages: 3} })
			var send func(string)
			var read func() map[string]any
			if tlsOn {
				pool := certPool(t, hc.TLSCert)
				p, _, err := dialGWS(t, "wss://"+e.addr+"/acp", pool, "Authorization", "Bearer "+clientToken)
				if err != nil {
					t.Fatal(err)
				}
				send = func(s string) { _ = p.socket.WriteString(s) }
				read = func() map[string]any {
					select {
					case raw := <-p.msgs:
						var m map[string]any
						_ = json.Unmarshal(raw, &m)
						return m
					case <-time.After(wait):
						t.Fatal("no answer")
					}
					return nil
				}
			} else {
				w := dialWS(t, e.addr)
				send = w.text
				read = func() map[string]any {
					for {
						g := w.mustNext(wait)
						if g.kind == ws.EventPing { // a heartbeat, not an answer
							w.write(w.frame(true, ws.OpPong, []byte(g.payload)))
							continue
						}
						var m map[string]any
						if err := json.Unmarshal([]byte(g.payload), &m); err != nil {
							t.Fatalf("frame kind %v payload %q: not a JSON-RPC message: %v", g.kind, g.payload, err)
						}
						return m
					}
				}
			}
			// A burst of 10 within the bucket of 3: the rest are refused
			// with -32004, each with its own id.
			for i := 1; i <= 10; i++ {
				send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"echo","params":{}}`, i))
			}
			ok, refused := 0, 0
			for range 10 {
				m := read()
				switch {
				case m["result"] != nil:
					ok++
				case errCode(m) == -32004:
					refused++
				default:
					t.Fatalf("unexpected %v", m)
				}
			}
			if ok < 3 || refused == 0 || ok+refused != 10 {
				t.Fatalf("%d answered, %d refused", ok, refused)
			}
		})
	}
}
