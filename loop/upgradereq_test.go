package loop

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lxzan/gws"
)

// handshakesSeen are WebSocket handshakes as real clients send them: each
// must take parseUpgrade's path (or every such client pays net/http's
// garbage again) and parse as net/http parses it.
var handshakesSeen = map[string]string{
	"bench": "GET /acp HTTP/1.1\r\nHost: 127.0.0.1:7777\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer client-token-0123456789abcdef\r\n\r\n",
	// gws v1.8.9's client (its request is written from a Header map, so
	// the order varies; the set does not; TestParseUpgradeGWSClient
	// checks what it sends today).
	"gws": "GET /acp HTTP/1.1\r\nHost: 127.0.0.1:7777\r\nAuthorization: Bearer client-token-0123456789abcdef\r\n" +
		"Connection: Upgrade\r\nSec-Websocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n" +
		"Sec-Websocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-Websocket-Version: 13\r\nUpgrade: websocket\r\n\r\n",
	// The ws npm package (test/node), token as a subprotocol, as captured.
	"node ws": "GET /acp HTTP/1.1\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: agentbridge.token.client-token-0123456789abcdef\r\n" +
		"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nHost: 127.0.0.1:7777\r\n\r\n",
	// Debian's chromium 156 through playwright-core (test/node's
	// browsers), token as a subprotocol.
	"chromium": "GET /acp HTTP/1.1\r\nHost: 127.0.0.1:36949\r\nConnection: Upgrade\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36\r\n" +
		"Upgrade: websocket\r\nOrigin: null\r\nSec-WebSocket-Version: 13\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n" +
		"Accept-Language: en-US,en;q=0.9\r\nSec-WebSocket-Key: luR0X5/4vqgBgeXstiNgOg==\r\n" +
		"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nSec-WebSocket-Protocol: agentbridge.token.abc\r\n\r\n",
	// A page served by the daemon: token in the query and the cookie.
	"page": "GET /acp?token=client-token-0123456789abcdef HTTP/1.1\r\nHost: localhost:7777\r\nConnection: Upgrade\r\n" +
		"Upgrade: websocket\r\nOrigin: http://localhost:7777\r\nSec-WebSocket-Version: 13\r\n" +
		"Cookie: agentbridge_token=client-token-0123456789abcdef\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
	// Firefox: Connection carries keep-alive too, and Pragma alone.
	"firefox": "GET /acp HTTP/1.1\r\nHost: localhost:7777\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n" +
		"Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nSec-WebSocket-Version: 13\r\n" +
		"Origin: http://localhost:7777\r\nSec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"Connection: keep-alive, Upgrade\r\nSec-Fetch-Dest: empty\r\nSec-Fetch-Mode: websocket\r\nSec-Fetch-Site: same-origin\r\n" +
		"Pragma: no-cache\r\nUpgrade: websocket\r\n\r\n",
	"close":         "GET /acp HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade, Close\r\n\r\n",
	"padded values": "GET /acp HTTP/1.1\r\nHost:h\r\nUpgrade: \t websocket \t\r\nConnection:Upgrade\r\n\r\n",
	"no host":       "GET /acp HTTP/1.1\r\nSec-WebSocket-Key: x\r\n\r\n",
}

// TestParseUpgradeRealClients: real clients' handshakes take the pooled
// path and come out as net/http reads them.
func TestParseUpgradeRealClients(t *testing.T) {
	for name, block := range handshakesSeen {
		t.Run(name, func(t *testing.T) {
			u := parseUpgrade([]byte(block))
			if u == nil {
				t.Fatalf("declined %q", block)
			}
			defer u.release()
			sameAsNetHTTP(t, block, &u.req)
		})
	}
}

// TestParseUpgradeDeclines: what parseUpgrade is not sure of goes to
// net/http, which answers it as before (its own errors included).
func TestParseUpgradeDeclines(t *testing.T) {
	const h = "Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
	for name, block := range map[string]string{
		"POST":                   "POST /acp HTTP/1.1\r\n" + h + "\r\n",
		"other path":             "GET /acpx HTTP/1.1\r\n" + h + "\r\n",
		"sub path":               "GET /acp/ HTTP/1.1\r\n" + h + "\r\n",
		"terminal":               "GET /terminal HTTP/1.1\r\n" + h + "\r\n",
		"HTTP/1.0":               "GET /acp HTTP/1.0\r\n" + h + "\r\n",
		"absolute form":          "GET http://h/acp HTTP/1.1\r\n" + h + "\r\n",
		"empty query":            "GET /acp? HTTP/1.1\r\n" + h + "\r\n",
		"two question marks":     "GET /acp?a?b HTTP/1.1\r\n" + h + "\r\n",
		"not a handshake":        "GET /acp HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n",
		"empty upgrade":          "GET /acp HTTP/1.1\r\nHost: h\r\nUpgrade: \r\n\r\n",
		"body":                   "GET /acp HTTP/1.1\r\n" + h + "Content-Length: 0\r\n\r\n",
		"chunked":                "GET /acp HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\n",
		"twice":                  "GET /acp HTTP/1.1\r\n" + h + "Host: g\r\n\r\n",
		"twice, other case":      "GET /acp HTTP/1.1\r\n" + h + "upgrade: websocket\r\n\r\n",
		"obs-fold":               "GET /acp HTTP/1.1\r\n" + h + "X-A: a\r\n b\r\n\r\n",
		"space before colon":     "GET /acp HTTP/1.1\r\n" + h + "X-A : a\r\n\r\n",
		"no colon":               "GET /acp HTTP/1.1\r\n" + h + "X-A\r\n\r\n",
		"empty name":             "GET /acp HTTP/1.1\r\n" + h + ": a\r\n\r\n",
		"bare LF":                "GET /acp HTTP/1.1\r\n" + h + "X-A: a\nX-B: b\r\n\r\n",
		"control byte":           "GET /acp HTTP/1.1\r\n" + h + "X-A: a\x01\r\n\r\n",
		"obs-text":               "GET /acp HTTP/1.1\r\n" + h + "X-A: caf\xc3\xa9\r\n\r\n",
		"request line too short": "GET /acp\r\n" + h + "\r\n",
		"not a whole block":      "GET /acp HTTP/1.1\r\n" + h,
		"too many fields":        "GET /acp HTTP/1.1\r\n" + h + manyFields(maxUpgradeFields) + "\r\n",
	} {
		if u := parseUpgrade([]byte(block)); u != nil {
			u.release()
			t.Errorf("%s: took %q", name, block)
		}
	}
}

func manyFields(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString("X-F")
		b.WriteByte(byte('a' + i%26))
		b.WriteByte(byte('a' + i/26))
		b.WriteString(": v\r\n")
	}
	return b.String()
}

// TestAllocsParseUpgrade: one allocation (the block's copy) per handshake,
// for every real client's.
func TestAllocsParseUpgrade(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates and drops pooled requests; make test-allocs runs TestAllocs without -race")
	}
	for name, block := range handshakesSeen {
		b := []byte(block)
		parseUpgrade(b).release() // warm the pool
		if n := testing.AllocsPerRun(100, func() { parseUpgrade(b).release() }); n > 1 {
			t.Errorf("%s: %v allocations per handshake, want 1", name, n)
		}
	}
}

// FuzzParseUpgrade: whatever parseUpgrade takes, net/http takes too, with
// the same fields.
func FuzzParseUpgrade(f *testing.F) {
	for _, b := range handshakesSeen {
		f.Add(b)
	}
	f.Add("GET /acp?token=a%20b HTTP/1.1\r\nHost: [::1]:80\r\nSec-WebSocket-Key: k\r\nPragma: no-cache\r\n\r\n")
	f.Add("GET /acp HTTP/1.1\r\nhost: h\r\nUPGRADE: websocket\r\nconnection: close\r\n\r\n")
	f.Add("GET /acp?t=%zz#frag&x=;y HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nX-Empty:\r\nx-tab:\tv\t\r\n\r\n")
	f.Fuzz(func(t *testing.T, block string) {
		u := parseUpgrade([]byte(block))
		if u == nil {
			return
		}
		defer u.release()
		sameAsNetHTTP(t, block, &u.req)
	})
}

// sameAsNetHTTP fails unless net/http reads block as got.
func sameAsNetHTTP(t *testing.T, block string, got *http.Request) {
	t.Helper()
	want, err := http.ReadRequest(bufio.NewReader(strings.NewReader(block)))
	if err != nil {
		t.Fatalf("parseUpgrade took %q; net/http refuses it: %v", block, err)
	}
	for _, c := range []struct {
		field     string
		got, want any
	}{
		{"Method", got.Method, want.Method},
		{"URL", *got.URL, *want.URL},
		{"Proto", []any{got.Proto, got.ProtoMajor, got.ProtoMinor}, []any{want.Proto, want.ProtoMajor, want.ProtoMinor}},
		{"Header", got.Header, want.Header},
		{"Host", got.Host, want.Host},
		{"RequestURI", got.RequestURI, want.RequestURI},
		{"Close", got.Close, want.Close},
		{"ContentLength", got.ContentLength, want.ContentLength},
		{"TransferEncoding", got.TransferEncoding, want.TransferEncoding},
		{"Body", got.Body == http.NoBody, want.Body == http.NoBody},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%q: %s is %#v; net/http reads %#v", block, c.field, c.got, c.want)
		}
	}
}

// TestParseUpgradeGWSClient: the handshake gws's client writes (what
// agentbridge connect sends) takes the pooled path.
func TestParseUpgradeGWSClient(t *testing.T) {
	srv, cli := net.Pipe()
	defer srv.Close()
	go func() {
		h := http.Header{}
		h.Set("Authorization", "Bearer "+clientToken)
		_, _, _ = gws.NewClientFromConn(gws.BuiltinEventHandler{}, &gws.ClientOption{
			Addr: "ws://127.0.0.1:7777/acp", RequestHeader: h, HandshakeTimeout: wait}, cli)
		cli.Close()
	}()
	_ = srv.SetReadDeadline(time.Now().Add(wait))
	var block []byte
	buf := make([]byte, 4096)
	for !bytes.HasSuffix(block, headerEnd) {
		n, err := srv.Read(buf)
		if err != nil {
			t.Fatalf("reading gws's handshake (%q so far): %v", block, err)
		}
		block = append(block, buf[:n]...)
	}
	u := parseUpgrade(block)
	if u == nil {
		t.Fatalf("declined gws's handshake %q", block)
	}
	defer u.release()
	sameAsNetHTTP(t, string(block), &u.req)
}
