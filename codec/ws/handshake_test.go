package ws

import (
	"bufio"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

func TestAcceptKeyRFCExample(t *testing.T) {
	// RFC 6455 §1.3.
	if got := AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("AcceptKey = %q", got)
	}
}

const goodKey = "dGhlIHNhbXBsZSBub25jZQ=="

func parseRequest(t *testing.T, raw string) *http.Request {
	t.Helper()
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(strings.ReplaceAll(raw, "\n", "\r\n"))))
	if err != nil {
		t.Fatalf("parse %q: %v", raw, err)
	}
	return req
}

func TestCheckHandshake(t *testing.T) {
	const ok = "GET /acp HTTP/1.1\nHost: example.com\nUpgrade: websocket\nConnection: Upgrade\n" +
		"Sec-WebSocket-Key: " + goodKey + "\nSec-WebSocket-Version: 13\n\n"
	replace := func(old, new string) string {
		if !strings.Contains(ok, old) {
			panic(old)
		}
		return strings.Replace(ok, old, new, 1)
	}
	for _, c := range []struct {
		name   string
		raw    string
		status int
	}{
		{"valid", ok, 0},
		{"tokens in any case", replace("Upgrade: websocket\nConnection: Upgrade", "Upgrade: WebSocket\nConnection: UPGRADE"), 0},
		{"connection list", replace("Connection: Upgrade", "Connection: keep-alive, Upgrade"), 0},
		{"connection split over lines", replace("Connection: Upgrade", "Connection: keep-alive\nConnection: upgrade"), 0},
		{"upgrade list", replace("Upgrade: websocket", "Upgrade: h2c, websocket"), 0},
		{"HTTP/2 style proto", replace("HTTP/1.1", "HTTP/1.2"), 0},
		{"with origin and protocol", replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13\nOrigin: http://example.com\nSec-WebSocket-Protocol: a, b"), 0},

		{"POST", replace("GET", "POST"), 400},
		{"HEAD", replace("GET", "HEAD"), 400},
		{"HTTP/1.0", replace("HTTP/1.1", "HTTP/1.0"), 400},
		{"no Host", replace("Host: example.com\n", ""), 400},
		{"no Upgrade", replace("Upgrade: websocket\n", ""), 400},
		{"wrong Upgrade", replace("Upgrade: websocket", "Upgrade: h2c"), 400},
		{"Upgrade token as substring", replace("Upgrade: websocket", "Upgrade: websocketx"), 400},
		{"no Connection", replace("Connection: Upgrade\n", ""), 400},
		{"Connection keep-alive only", replace("Connection: Upgrade", "Connection: keep-alive"), 400},
		{"no key", replace("Sec-WebSocket-Key: "+goodKey+"\n", ""), 400},
		{"empty key", replace(goodKey, ""), 400},
		{"key not base64", replace(goodKey, "!!!!!!!!!!!!!!!!!!!!!!=="), 400},
		{"key of 15 bytes", replace(goodKey, "AAAAAAAAAAAAAAAAAAAA"), 400},
		{"key of 17 bytes", replace(goodKey, "AAAAAAAAAAAAAAAAAAAAAAA="), 400},
		{"key without padding", replace(goodKey, "dGhlIHNhbXBsZSBub25jZQ"), 400},
		{"two keys", replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13\nSec-WebSocket-Key: "+goodKey), 400},

		{"no version", replace("Sec-WebSocket-Version: 13\n", ""), 426},
		{"version 8", replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"), 426},
		{"version list", replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13, 8"), 426},
		{"version twice", replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13\nSec-WebSocket-Version: 8"), 426},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, reason := CheckHandshake(parseRequest(t, c.raw))
			if status != c.status {
				t.Fatalf("status %d (%q), want %d", status, reason, c.status)
			}
			if (status == 0) != (reason == "") {
				t.Fatalf("status %d with reason %q", status, reason)
			}
		})
	}
}

func TestSubprotocols(t *testing.T) {
	req := parseRequest(t, "GET / HTTP/1.1\nHost: x\nSec-WebSocket-Protocol: agentbridge.token.abc, acp\nSec-WebSocket-Protocol: ,  mcp \n\n")
	if got := Subprotocols(req); !slices.Equal(got, []string{"agentbridge.token.abc", "acp", "mcp"}) {
		t.Fatalf("Subprotocols = %q", got)
	}
	if got := Subprotocols(parseRequest(t, "GET / HTTP/1.1\nHost: x\n\n")); got != nil {
		t.Fatalf("Subprotocols without header = %q", got)
	}
}

func TestAppendHandshakeResponse(t *testing.T) {
	want := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
	if got := string(AppendHandshakeResponse(nil, goodKey, "")); got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	out := AppendHandshakeResponse([]byte("x"), goodKey, "acp")
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(out[1:]))), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Protocol") != "acp" ||
		resp.Header.Get("Sec-WebSocket-Accept") != AcceptKey(goodKey) || resp.Header.Get("Upgrade") != "websocket" {
		t.Fatalf("response %d %v", resp.StatusCode, resp.Header)
	}
}

func TestAppendHandshakeError(t *testing.T) {
	for _, c := range []struct {
		status  int
		version string
	}{{400, ""}, {426, "13"}, {403, ""}, {599, ""}} {
		out := AppendHandshakeError(nil, c.status, "why it failed")
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(out))), nil)
		if err != nil {
			t.Fatalf("%d: %v", c.status, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != c.status || string(body) != "why it failed\n" || !resp.Close ||
			resp.Header.Get("Sec-WebSocket-Version") != c.version {
			t.Fatalf("%d: got %d %q close=%v %v", c.status, resp.StatusCode, body, resp.Close, resp.Header)
		}
	}
}
