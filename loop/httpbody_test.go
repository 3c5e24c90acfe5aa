package loop

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/httpfront"
)

// chunkedOf is body in net/http's own chunked encoding (chunks of size n).
func chunkedOf(body string, n int) []byte {
	var b bytes.Buffer
	w := httputil.NewChunkedWriter(&b)
	for s := body; len(s) > 0; {
		k := min(n, len(s))
		_, _ = io.WriteString(w, s[:k])
		s = s[k:]
	}
	_ = w.Close()
	b.WriteString("\r\n")
	return b.Bytes()
}

func TestDechunk(t *testing.T) {
	for name, tc := range map[string]struct {
		in   string
		body string
		err  int // HTTP status of a refusal
	}{
		"one chunk":     {in: "5\r\nhello\r\n0\r\n\r\n", body: "hello"},
		"two chunks":    {in: "3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n", body: "hello"},
		"extension":     {in: "5;name=v\r\nhello\r\n0\r\n\r\n", body: "hello"},
		"trailers":      {in: "5\r\nhello\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n", body: "hello"},
		"upper hex":     {in: "A\r\n0123456789\r\n0\r\n\r\n", body: "0123456789"},
		"empty":         {in: "0\r\n\r\n", body: ""},
		"bad size":      {in: "zz\r\nhello\r\n0\r\n\r\n", err: 400},
		"negative":      {in: "-5\r\nhello\r\n0\r\n\r\n", err: 400},
		"no crlf after": {in: "5\r\nhelloXX0\r\n\r\n", err: 400},
		"too big":       {in: strconv.FormatInt(httpfront.MaxBody+1, 16) + "\r\n", err: 413},
		"long line":     {in: strings.Repeat("0", 2000), err: 400},
	} {
		t.Run(name, func(t *testing.T) {
			body, n, rp := dechunk([]byte(tc.in), httpfront.MaxBody)
			if tc.err != 0 {
				if rp == nil || rp.Status != tc.err {
					t.Fatalf("dechunk(%q) = %q, %d, %v; want a %d refusal", tc.in, body, n, rp, tc.err)
				}
				return
			}
			if rp != nil || n != len(tc.in) || string(body) != tc.body {
				t.Fatalf("dechunk(%q) = %q, %d, %v; want %q, %d", tc.in, body, n, rp, tc.body, len(tc.in))
			}
			// Every proper prefix is incomplete, never an error nor a body.
			for i := range len(tc.in) {
				if b, n, rp := dechunk([]byte(tc.in[:i]), httpfront.MaxBody); n >= 0 || rp != nil {
					t.Fatalf("prefix %q: %q, %d, %v; want incomplete", tc.in[:i], b, n, rp)
				}
			}
		})
	}
}

// FuzzDechunk: what net/http's chunked reader accepts, dechunk decodes to
// the same bytes; a split anywhere before the end is "incomplete"; data
// after the body is never consumed.
func FuzzDechunk(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), 3)
	f.Add(chunkedOf(`{"jsonrpc":"2.0","id":1,"method":"initialize"}`, 7), 11)
	f.Add([]byte("3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.1\r\n"), 1)
	f.Add([]byte("0\r\n\r\n"), 0)
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		body, n, rp := dechunk(in, 1<<20)
		if rp != nil {
			return
		}
		if n < 0 {
			return
		}
		want, err := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(in[:n])))
		if err == nil && !bytes.Equal(want, body) {
			t.Fatalf("dechunk(%q) = %q; net/http reads %q", in[:n], body, want)
		}
		if split = split % (n + 1); split < 0 {
			split = -split
		}
		if split < n {
			if _, m, rp := dechunk(in[:split], 1<<20); m >= 0 || rp != nil {
				t.Fatalf("prefix of %d bytes of %q: %d, %v; want incomplete", split, in[:n], m, rp)
			}
		}
	})
}

// postInit is a POST /acp initialize, its body framed as chunked when
// chunk > 0.
func postInit(chunk int) []byte {
	body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}`
	h := "POST /acp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + clientToken + "\r\nContent-Type: application/json\r\n"
	if chunk > 0 {
		return append([]byte(h+"Transfer-Encoding: chunked\r\n\r\n"), chunkedOf(body, chunk)...)
	}
	return []byte(h + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}

// TestACPPostSplitReads sends a POST initialize a few bytes at a time
// (Content-Length and chunked), then one pipelined behind a GET /healthz
// in a single write: each is answered whole, in order, on the same
// connection.
func TestACPPostSplitReads(t *testing.T) {
	e := startEnv(t, HTTPConfig{})
	for _, chunk := range []int{0, 5} {
		c, err := net.DialTimeout("tcp", e.addr, wait)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		req := postInit(chunk)
		for i := 0; i < len(req); i += 7 {
			if _, err := c.Write(req[i:min(i+7, len(req))]); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond) // separate segments, so reads split
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("chunk %d: %v", chunk, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || resp.Header.Get("Acp-Connection-Id") == "" || !strings.Contains(string(b), `"id":1`) {
			t.Fatalf("chunk %d: %d %v %s", chunk, resp.StatusCode, resp.Header, b)
		}
		// Pipelined: the initialize is parked for its answer; the request
		// behind it waits, then is answered after it.
		if _, err := c.Write(append(postInit(chunk), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"...)); err != nil {
			t.Fatal(err)
		}
		for i, want := range []int{200, 200} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("pipelined %d: %v", i, err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != want {
				t.Fatalf("pipelined %d: %d %s", i, resp.StatusCode, b)
			}
			if i == 0 && resp.Header.Get("Acp-Connection-Id") == "" {
				t.Fatalf("pipelined initialize: no Acp-Connection-Id")
			}
			if i == 1 && !strings.Contains(string(b), `"status"`) {
				t.Fatalf("pipelined healthz: %s", b)
			}
		}
	}
	// Over the body limit: 413 before any body is read.
	rs, _, _ := exchange(t, e.addr, "POST /acp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(httpfront.MaxBody+1)+"\r\n\r\n", 1)
	if rs[0].StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body: %d", rs[0].StatusCode)
	}
}

// heldAgent answers like the echo agent, but only what release lets
// through: a cold agent slower than the header deadline.
type heldAgent struct {
	echo *echoAgent
	held chan []byte
}

func (a *heldAgent) Send(msg []byte) error {
	a.held <- bytes.Clone(msg)
	return nil
}

func (a *heldAgent) release() error { return a.echo.Send(<-a.held) }

// TestACPPostParkedPastHeaderTimeout: a POST initialize whose agent
// answers after --header-timeout has passed still gets its answer (the
// header deadline is for reading the request, not for the agent).
func TestACPPostParkedPastHeaderTimeout(t *testing.T) {
	const headerTimeout = 200 * time.Millisecond
	e := startEnv(t, HTTPConfig{HeaderTimeout: headerTimeout})
	ag := &heldAgent{echo: newEchoAgent(e.hub), held: make(chan []byte, 1)}
	e.hub.SetAgent(ag)
	c, err := net.DialTimeout("tcp", e.addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(postInit(0)); err != nil {
		t.Fatal(err)
	}
	// Well past the header deadline and several sweeps of it.
	time.Sleep(5 * headerTimeout)
	if err := ag.release(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the parked initialize was not answered: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"id":1`) {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}
