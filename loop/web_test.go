package loop

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/terminal"
)

func TestDashboardAuth(t *testing.T) {
	e := startEnv(t, HTTPConfig{})
	do := func(raw string) (*http.Response, string) {
		t.Helper()
		resps, bodies, _ := exchange(t, e.addr, raw, 1)
		return resps[0], bodies[0]
	}
	get := func(path string, hdr ...string) (*http.Response, string) {
		t.Helper()
		var b strings.Builder
		fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", path, e.addr)
		for i := 0; i+1 < len(hdr); i += 2 {
			fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
		}
		b.WriteString("\r\n")
		return do(b.String())
	}
	csp := func(t *testing.T, resp *http.Response) {
		t.Helper()
		c := resp.Header.Get("Content-Security-Policy")
		script := strings.Split(strings.Split(c, "script-src")[1], ";")[0]
		if strings.TrimSpace(script) != "'self'" || !strings.Contains(c, "default-src 'none'") {
			t.Errorf("CSP %q", c)
		}
	}

	t.Run("no token: the login form", func(t *testing.T) {
		resp, body := get("/")
		if resp.StatusCode != 200 || !strings.Contains(body, `action="/login"`) {
			t.Fatalf("%s %.100q", resp.Status, body)
		}
		csp(t, resp)
	})
	t.Run("?token= once sets the cookie and redirects to a clean URL", func(t *testing.T) {
		resp, _ := get("/?token=" + operatorToken + "&x=1")
		if resp.StatusCode != 303 || resp.Header.Get("Location") != "/?x=1" {
			t.Fatalf("%s Location %q", resp.Status, resp.Header.Get("Location"))
		}
		c := resp.Header.Get("Set-Cookie")
		for _, want := range []string{"agentbridge_token=" + operatorToken, "HttpOnly", "SameSite=Strict", "Path=/"} {
			if !strings.Contains(c, want) {
				t.Errorf("Set-Cookie %q lacks %q", c, want)
			}
		}
		if strings.Contains(c, "Secure") {
			t.Errorf("Secure cookie on plain HTTP: %q", c)
		}
	})
	t.Run("a bad ?token= is refused", func(t *testing.T) {
		resp, body := get("/?token=nottherightone-0123456789")
		if resp.StatusCode != 401 || !strings.Contains(body, "rejected") || resp.Header.Get("Set-Cookie") != "" {
			t.Fatalf("%s %v", resp.Status, resp.Header)
		}
	})
	t.Run("the cookie serves the dashboard", func(t *testing.T) {
		resp, body := get("/", "Cookie", "agentbridge_token="+viewerToken)
		if resp.StatusCode != 200 || !strings.Contains(body, `src="/ui/static/app.js"`) {
			t.Fatalf("%s %.200q", resp.Status, body)
		}
		csp(t, resp)
		if strings.Contains(body, "<script>") || strings.Contains(body, " onclick=") {
			t.Error("inline script in the dashboard")
		}
	})
	t.Run("a stale cookie gets the form and is cleared", func(t *testing.T) {
		resp, _ := get("/", "Cookie", "agentbridge_token=stale-token-0123456789")
		if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("Set-Cookie"), "Max-Age=0") {
			t.Fatalf("%s %v", resp.Status, resp.Header)
		}
	})
	t.Run("the login form, its body split across writes", func(t *testing.T) {
		body := "token=" + clientToken
		head := fmt.Sprintf("POST /login HTTP/1.1\r\nHost: %s\r\nOrigin: http://%s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n", e.addr, e.addr, len(body))
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, head+body[:7])
		time.Sleep(50 * time.Millisecond) // two TCP segments, so the loop sees the header first
		_, _ = io.WriteString(c, body[7:])
		_ = c.SetReadDeadline(time.Now().Add(wait))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 303 || resp.Header.Get("Location") != "/" || !strings.Contains(resp.Header.Get("Set-Cookie"), "agentbridge_token="+clientToken) {
			t.Fatalf("%s %v", resp.Status, resp.Header)
		}
	})
	t.Run("a login form from another origin is refused", func(t *testing.T) {
		body := "token=" + clientToken
		resp, _ := do(fmt.Sprintf("POST /login HTTP/1.1\r\nHost: %s\r\nOrigin: http://evil.example\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", e.addr, len(body), body))
		if resp.StatusCode != 403 || resp.Header.Get("Set-Cookie") != "" {
			t.Fatalf("%s %v", resp.Status, resp.Header)
		}
	})
	t.Run("a wrong token in the form", func(t *testing.T) {
		body := "token=wrong-token-0123456789"
		resp, page := do(fmt.Sprintf("POST /login HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", e.addr, len(body), body))
		if resp.StatusCode != 401 || !strings.Contains(page, "That token was rejected.") {
			t.Fatalf("%s %.300q", resp.Status, page)
		}
	})
	t.Run("logout clears the cookie", func(t *testing.T) {
		resp, _ := do(fmt.Sprintf("POST /logout HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", e.addr))
		if resp.StatusCode != 303 || !strings.Contains(resp.Header.Get("Set-Cookie"), "Max-Age=0") {
			t.Fatalf("%s %v", resp.Status, resp.Header)
		}
	})
	t.Run("static files need no token", func(t *testing.T) {
		resp, body := get("/ui/vendor/xterm/xterm.mjs")
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") || len(body) < 100000 {
			t.Fatalf("%s %v %d", resp.Status, resp.Header, len(body))
		}
	})
	t.Run("the cookie opens /acp", func(t *testing.T) {
		w := dialWS(t, e.addr, "Cookie", "agentbridge_token="+operatorToken, "Origin", "http://"+e.addr)
		r := w.call(1, "bridge/hello", map[string]any{})
		if r["result"].(map[string]any)["role"] != "operator" {
			t.Fatalf("hello: %v", r)
		}
	})
	t.Run("the terminal is off", func(t *testing.T) {
		resp, body := get("/terminal", "Cookie", "agentbridge_token="+clientToken)
		if resp.StatusCode != 404 || !strings.Contains(body, "--terminal") {
			t.Fatalf("%s %q", resp.Status, body)
		}
		_, _, resp = handshake(t, e.addr, "/terminal", hdrs("Authorization", "Bearer "+clientToken)...)
		if resp.StatusCode != 404 {
			t.Fatalf("upgrade: %s", resp.Status)
		}
	})
}

func newTestTerminal(t *testing.T) *terminal.Manager {
	t.Helper()
	m, err := terminal.New(terminal.Config{Command: []string{"/bin/sh"}, Dir: t.TempDir(), Env: []string{"PATH=/usr/bin:/bin", "PS1=$ ", "HOME=/tmp"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// readTerm reads frames until the binary output contains want.
func readTerm(t *testing.T, w *wsc, want string) (out string, notices []string) {
	t.Helper()
	for !strings.Contains(out, want) {
		g, err := w.next(wait)
		if err != nil {
			t.Fatalf("waiting for %q: %v (output so far %q, notices %v)", want, err, out, notices)
		}
		switch g.kind {
		case ws.EventBinary:
			out += g.payload
		case ws.EventText:
			notices = append(notices, g.payload)
		case ws.EventPing:
			w.write(w.frame(true, ws.OpPong, []byte(g.payload)))
		case ws.EventClose:
			t.Fatalf("closed (%d %q) waiting for %q; output %q", g.code, g.payload, want, out)
		}
	}
	return out, notices
}

func testTerminalOver(t *testing.T, addr string, dial func(path string, hdr ...string) (*wsc, *http.Response)) {
	t.Run("viewer 403, operator with nothing to watch 404, no token 401", func(t *testing.T) {
		for _, c := range []struct {
			hdr    []string
			status int
		}{
			{[]string{"Authorization", "Bearer " + viewerToken}, 403},
			{[]string{"Authorization", "Bearer " + operatorToken}, 404},
			{nil, 401},
			{[]string{"Authorization", "Bearer " + clientToken, "Origin", "http://evil.example"}, 403},
		} {
			if _, resp := dial("/terminal", c.hdr...); resp.StatusCode != c.status {
				t.Errorf("%v: %s, want %d", c.hdr, resp.Status, c.status)
			}
		}
	})
	t.Run("type, resize, watch read-only", func(t *testing.T) {
		w, resp := dial("/terminal", "Authorization", "Bearer "+clientToken)
		if resp.StatusCode != 101 {
			t.Fatalf("%s", resp.Status)
		}
		w.write(w.frame(true, ws.OpText, []byte(`{"type":"resize","cols":91,"rows":27}`)))
		w.write(w.frame(true, ws.OpBinary, []byte("stty size; echo d''one\n")))
		out, notices := readTerm(t, w, "done\r\n")
		if !strings.Contains(out, "27 91\r\n") || len(notices) == 0 || !strings.Contains(notices[0], `"mode":"write"`) {
			t.Fatalf("output %q notices %v", out, notices)
		}
		o, resp := dial("/terminal", "Authorization", "Bearer "+operatorToken)
		if resp.StatusCode != 101 {
			t.Fatalf("operator: %s", resp.Status)
		}
		out, notices = readTerm(t, o, "done\r\n") // the scrollback
		if !strings.Contains(notices[0], `"mode":"watch"`) || !strings.HasPrefix(out, "\x1bc") {
			t.Fatalf("watcher: %q %v", out, notices)
		}
		o.write(o.frame(true, ws.OpBinary, []byte("echo forged-input\n")))
		w.write(w.frame(true, ws.OpBinary, []byte("echo after''wards\n")))
		out, _ = readTerm(t, o, "afterwards\r\n")
		if strings.Contains(out, "forged-input") {
			t.Fatalf("a watcher typed: %q", out)
		}
		w.write(w.frame(true, ws.OpText, []byte(`{"type":"paste"}`)))
		w.expectClose(ws.CloseUnsupportedData)
	})
}

func TestTerminalGnet(t *testing.T) {
	e := startEnv(t, HTTPConfig{Terminal: newTestTerminal(t)})
	testTerminalOver(t, e.addr, func(path string, hdr ...string) (*wsc, *http.Response) {
		c, br, resp := handshake(t, e.addr, path, hdrs(hdr...)...)
		w := &wsc{t: t, c: c, br: br, key: [4]byte{9, 8, 7, 6}}
		w.r.MaxMessage = 64 << 20
		return w, resp
	})
}

func TestTerminalTLS(t *testing.T) {
	cert, key, pool := writeCert(t)
	e := startEnv(t, HTTPConfig{TLSCert: cert, TLSKey: key, Terminal: newTestTerminal(t), CloseTimeout: time.Second})
	testTerminalOver(t, e.addr, func(path string, hdr ...string) (*wsc, *http.Response) {
		c, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		var b strings.Builder
		fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\n", path, e.addr)
		h := hdrs(hdr...)
		for i := 0; i+1 < len(h); i += 2 {
			fmt.Fprintf(&b, "%s: %s\r\n", h[i], h[i+1])
		}
		b.WriteString("\r\n")
		_, _ = io.WriteString(c, b.String())
		_ = c.SetReadDeadline(time.Now().Add(wait))
		br := bufio.NewReaderSize(c, 64<<10)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		w := &wsc{t: t, c: c, br: br, key: [4]byte{9, 8, 7, 6}}
		w.r.MaxMessage = 64 << 20
		return w, resp
	})
}

func TestDashboardTLS(t *testing.T) {
	cert, key, pool := writeCert(t)
	e := startEnv(t, HTTPConfig{TLSCert: cert, TLSKey: key})
	hc := &http.Client{
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := hc.Get("https://" + e.addr + "/?token=" + clientToken)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c := resp.Header.Get("Set-Cookie")
	if resp.StatusCode != 303 || !strings.Contains(c, "; Secure") || !strings.Contains(c, "HttpOnly") || !strings.Contains(c, "SameSite=Strict") {
		t.Fatalf("%s Set-Cookie %q", resp.Status, c)
	}
	req, _ := http.NewRequest("POST", "https://"+e.addr+"/login", strings.NewReader("token="+operatorToken))
	req.Header.Set("Origin", "https://"+e.addr)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err = hc.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 303 || !strings.Contains(resp.Header.Get("Set-Cookie"), "agentbridge_token="+operatorToken) {
		t.Fatalf("login over TLS: %s %v", resp.Status, resp.Header)
	}
	req, _ = http.NewRequest("GET", "https://"+e.addr+"/", nil)
	req.Header.Set("Cookie", "agentbridge_token="+viewerToken)
	if resp, err = hc.Do(req); err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "/ui/static/app.js") || resp.Header.Get("Content-Security-Policy") == "" {
		t.Fatalf("dashboard over TLS: %s %.100q", resp.Status, body)
	}
}

// TestTerminalWriterBackpressure: a writer whose socket is not read stalls
// the shell (the PTY is not read), over a real gnet connection; once it
// reads, the shell finishes. (In loaded CI runs it read nothing for 30 s:
// the test took over two heartbeats without answering a ping, was dropped
// as half-open, and the close never reached it because the shell had
// inherited the socket; see TestCloseNotHeldByChild.)
func TestTerminalWriterBackpressure(t *testing.T) {
	dir := t.TempDir()
	m, err := terminal.New(terminal.Config{Command: []string{"/bin/sh"}, Dir: dir, Env: []string{"PATH=/usr/bin:/bin", "PS1=$ "}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	e := startEnv(t, HTTPConfig{Terminal: m})
	c, br, resp := handshake(t, e.addr, "/terminal", hdrs("Authorization", "Bearer "+clientToken)...)
	if resp.StatusCode != 101 {
		t.Fatal(resp.Status)
	}
	w := &wsc{t: t, c: c, br: br, key: [4]byte{1, 1, 1, 1}}
	w.r.MaxMessage = 64 << 20
	// Far more than the kernel's socket buffers and gnet's watermark hold.
	w.write(w.frame(true, ws.OpBinary, []byte("seq 1 4000000; touch DONE\n")))
	done := dir + "/DONE"
	deadline := time.Now().Add(1500 * time.Millisecond) // a window in which the shell must not finish
	for time.Now().Before(deadline) {
		if _, err := os.Stat(done); err == nil {
			t.Fatal("the shell finished although its writer read nothing")
		}
		time.Sleep(50 * time.Millisecond)
	}
	n := 0
	var last []byte
	for !strings.Contains(string(last), "4000000\r\n") {
		g, err := w.next(30 * time.Second)
		if err != nil {
			dumpTerminals(t, e)
			t.Fatalf("after %d bytes: %v", n, err)
		}
		switch g.kind {
		case ws.EventBinary:
			n += len(g.payload)
			last = append(last[max(0, len(last)-64):], g.payload...)
		case ws.EventPing:
			// As a browser does: a peer that does not answer for two
			// heartbeats is dropped as half-open, and under load reading
			// the whole output takes longer than that.
			w.write(w.frame(true, ws.OpPong, []byte(g.payload)))
		}
	}
	if n < 25<<20 {
		t.Errorf("read %d bytes, want the whole output (about 30 MB)", n)
	}
	eventually(t, "DONE after the writer read everything", func() bool { _, err := os.Stat(done); return err == nil })
}

// dumpTerminals logs what a lost wake-up would leave behind: for each
// terminal connection, its queue, what gnet holds, whether it waits for a
// re-wake (and when), the writer's counters; then the goroutines of the
// terminal and the loop (a PTY reader parked in waitWriter, say). Read on
// the connection's loop where the loop owns it.
func dumpTerminals(t *testing.T, e *env) {
	t.Helper()
	f := e.srv.front
	f.mu.Lock()
	var conns []*conn
	for w := range f.watches {
		conns = append(conns, w.c)
	}
	f.mu.Unlock()
	if mfs, err := e.m.Registry.Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() == "agentbridge_closes_total" {
				for _, m := range mf.GetMetric() {
					t.Logf("closed by the daemon: %v %v", m.GetLabel(), m.GetCounter().GetValue())
				}
			}
		}
	}
	if len(conns) == 0 {
		t.Log("no TCP connection is open on the daemon's side")
	}
	for _, c := range conns {
		lines := make(chan string, 1)
		err := c.gc.Wake(func(gc gnet.Conn, err error) error {
			p, ok := c.proto.(*termProto)
			if err != nil || !ok {
				lines <- fmt.Sprintf("%T (err %v)", c.proto, err)
				return nil
			}
			p.mu.Lock()
			q, qBytes := len(p.q), p.qBytes
			p.mu.Unlock()
			c.srv.mu.Lock()
			_, blocked := c.srv.blocked[c]
			wakeIn := time.Duration(c.wakeAt - time.Now().UnixNano())
			c.srv.mu.Unlock()
			s := fmt.Sprintf("terminal conn: queue %d frames %d bytes, queued %d, buffered at last pump %d, gnet holds %d, closing %v, closeBy %d, blocked %v (re-wake in %s, step %s)",
				q, qBytes, p.queued.Load(), p.buffered.Load(), gc.OutboundBuffered(), c.closing(), c.closeBy, blocked, wakeIn, time.Duration(c.wakeStep.Load()))
			if p.att != nil {
				s += fmt.Sprintf(", writer %v, %+v", p.att.Writer(), p.att.Stats())
			}
			lines <- s
			return nil
		})
		if err != nil {
			t.Logf("connection: wake failed: %v", err)
			continue
		}
		select {
		case s := <-lines:
			t.Log(s)
		case <-time.After(5 * time.Second):
			t.Log("connection: its loop did not run the dump within 5s")
		}
	}
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "/terminal.") || strings.Contains(g, "/loop.") {
			t.Logf("goroutine %s", strings.TrimPrefix(g, "goroutine "))
		}
	}
}
