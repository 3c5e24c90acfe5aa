package e2e

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStopClosesIdleConnections: a daemon stopped (SIGTERM) while it holds
// a Unix-socket client, a WebSocket client and an idle HTTP keep-alive
// connection exits cleanly, removes its socket, and closes the idle
// connection rather than waiting for it to go away (it used to wait 2 s for
// connections it does not own, then gnet's 500 ms poll). Over plain TCP (the
// event loop) and TLS (net/http). No bound on the time: the time from
// SIGTERM to exit is logged (go test -v -run TestStopClosesIdle).
func TestStopClosesIdleConnections(t *testing.T) {
	t.Parallel()
	cert, key, pool := selfSigned(t)
	for _, tc := range []struct {
		name string
		args []string
		conf *tls.Config
	}{
		{"tcp", nil, nil},
		{"tls", []string{"--tls-cert", cert, "--tls-key", key}, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stopWithIdleConns(t, tc.conf, append(tc.args, fakeAgentCmd()...))
		})
	}
}

func stopWithIdleConns(t *testing.T, conf *tls.Config, args []string) {
	d := netDaemon(t, args...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{})
	wsScheme := "ws"
	if conf != nil {
		wsScheme = "wss"
	}
	p, _, err := dialPeer(t, wsScheme+"://"+d.listen+"/acp", conf, "Authorization", "Bearer "+e2eClientToken)
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	idle := keepAliveConn(t, d.listen, conf)
	start := time.Now()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon did not exit within 20s of SIGTERM")
	}
	t.Logf("SIGTERM to exit: %s", time.Since(start).Round(time.Millisecond))
	if d.err != nil {
		t.Fatalf("daemon exit: %v", d.err)
	}
	if _, err := os.Stat(d.sock); !os.IsNotExist(err) {
		t.Fatalf("socket not removed after shutdown: %v", err)
	}
	// The idle connection was closed by the daemon: EOF, not a timeout.
	_ = idle.SetReadDeadline(time.Now().Add(wait))
	if n, err := idle.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("idle keep-alive connection still open after the daemon exited (read %d, %v)", n, err)
	}
	select {
	case <-p.closed:
	case <-time.After(wait):
		t.Fatalf("WebSocket client not closed by the shutdown")
	}
}

// TestStopAnswersRequestInFlight: an HTTP request in flight when the daemon
// stops (a POST /acp initialize, parked until the agent answers, which is
// stalled) gets a whole answer with Connection: close, then the connection
// closes; it is neither cut nor kept alive. (The answer is the front's for
// a Streamable HTTP connection that ended before its initialize was
// answered.)
func TestStopAnswersRequestInFlight(t *testing.T) {
	t.Parallel()
	d := netDaemon(t, append([]string{"--grace", "200ms"}, fakeAgentCmd()...)...)
	c := dial(t, d)
	// The agent reads its stdin in order: the initialize below waits
	// behind the stall (it is the agent's first: none is cached).
	c.request(2, "stall", map[string]any{"ms": 10000})
	nc, err := net.DialTimeout("tcp", d.listen, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}`
	if _, err := io.WriteString(nc, "POST /acp HTTP/1.1\r\nHost: "+d.listen+"\r\nAuthorization: Bearer "+e2eClientToken+
		"\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	if !d.waitLog("streamable http connection open", wait) {
		t.Fatalf("the POST did not open a Streamable HTTP connection")
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	_ = nc.SetReadDeadline(time.Now().Add(wait))
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the request in flight got no answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("the answer was cut: %v (read %q)", err, b)
	}
	if !resp.Close || resp.ContentLength != int64(len(b)) {
		t.Fatalf("in-flight initialize at SIGTERM: want a whole answer with Connection: close, got %s close=%v length %d %q", resp.Status, resp.Close, resp.ContentLength, b)
	}
	t.Logf("in-flight initialize at SIGTERM: %s %q", resp.Status, strings.TrimSpace(string(b)))
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection not closed after its answer (read %d, %v)", n, err)
	}
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon did not exit within 20s of SIGTERM")
	}
	if d.err != nil {
		t.Fatalf("daemon exit: %v", d.err)
	}
}

// keepAliveConn answers one GET /healthz on a new connection and returns it
// open and idle (HTTP/1.1 keeps it alive).
func keepAliveConn(t *testing.T, addr string, conf *tls.Config) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	if conf != nil {
		tc := tls.Client(nc, conf)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
		nc = tc
	}
	t.Cleanup(func() { nc.Close() })
	if _, err := io.WriteString(nc, "GET /healthz HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("GET /healthz: %s (close %v), want a 200 kept alive", resp.Status, resp.Close)
	}
	return nc
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestClosedClientNotHeldByRestartedAgent: a Unix-socket client that was
// connected when the agent restarted is closed for real when the daemon
// closes it. The restarted agent used to inherit every client socket open
// at its start (gnet dups descriptors without close-on-exec), so the
// client saw silence instead of the end of the stream while that agent
// lived.
func TestClosedClientNotHeldByRestartedAgent(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, append([]string{"--max-message", "1024"}, fakeAgentCmd()...)...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{})
	k := dial(t, d)
	k.request(1, "crash", nil)
	deadline := time.Now().Add(wait)
	for strings.Count(d.logs(), `msg="agent started"`) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not restart within %s", wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// An oversized message: the daemon answers -32600 and closes c.
	c.sendRaw(`{"jsonrpc":"2.0","id":2,"method":"echo","params":{"x":"` + strings.Repeat("y", 2000) + `"}}` + "\n")
	for {
		select {
		case _, ok := <-c.msgs:
			if !ok {
				return // end of stream
			}
		case <-time.After(wait):
			t.Fatalf("the daemon closed the connection but its peer never saw the end of the stream (the restarted agent holds the socket?)")
		}
	}
}
