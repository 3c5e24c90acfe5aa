package e2e

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// prlimit runs the daemon (and so its agent) with a small descriptor
// limit, soft and hard, so exhausting it takes hundreds of connections.
func prlimit(n string) []string { return []string{"prlimit", "--nofile=" + n + ":" + n, "--"} }

// outcome of one connection opened against a limit.
type outcome int

const (
	held    outcome = iota // still open, nothing said: admitted
	refused                // told why, then closed
	dropped                // closed (or reset) without a word
)

// probeUnix reads what a Unix-socket peer gets within d: nothing (held), one
// JSON-RPC error line then EOF (refused), or a bare close (dropped).
func probeUnix(t *testing.T, c net.Conn, d time.Duration) (outcome, string) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	line, err := bufio.NewReader(c).ReadString('\n')
	var ne net.Error
	switch {
	case err == nil:
		return refused, line
	case errors.As(err, &ne) && ne.Timeout():
		return held, ""
	}
	return dropped, err.Error()
}

// probeTCP is probeUnix for the plain HTTP listener: a refusal is a 503.
func probeTCP(c net.Conn, d time.Duration) (outcome, string) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	var ne net.Error
	switch {
	case len(b) > 0:
		return refused, string(b)
	case errors.As(err, &ne) && ne.Timeout():
		return held, ""
	case err == nil:
		return dropped, "EOF"
	}
	return dropped, err.Error()
}

func TestMaxConnsRefusesCleanly(t *testing.T) {
	t.Parallel()
	d := startDaemonWrapped(t, prlimit("512"), "--listen", anyPort, "--max-conns", "40")
	c := dial(t, d)
	if r := c.call(1, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}}); field(r, "result") == nil {
		t.Fatalf("initialize: %v", r)
	}
	// 80 more connections against a limit of 40 held by 1 (c): 39 fit.
	var conns []net.Conn
	kinds := map[net.Conn]string{}
	for i := range 80 {
		network, addr := "unix", d.sock
		if i%2 == 1 {
			network, addr = "tcp", d.listen
		}
		nc, err := net.DialTimeout(network, addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d (%s): %v", i, network, err)
		}
		conns = append(conns, nc)
		kinds[nc] = network
	}
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	var mu sync.Mutex
	count := map[outcome]int{}
	var wg sync.WaitGroup
	for _, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var o outcome
			var what string
			if kinds[nc] == "unix" {
				o, what = probeUnix(t, nc, 1500*time.Millisecond)
				if o == refused {
					var m map[string]any
					if err := json.Unmarshal([]byte(what), &m); err != nil || errCode(m) != -32004 ||
						!strings.Contains(what, "--max-conns 40") {
						t.Errorf("unix refusal is not a -32004 naming --max-conns 40: %q", what)
					}
				}
			} else {
				o, what = probeTCP(nc, 1500*time.Millisecond)
				if o == refused && (!strings.HasPrefix(what, "HTTP/1.1 503 ") || !strings.Contains(what, "--max-conns 40")) {
					t.Errorf("tcp refusal is not a 503 naming --max-conns 40: %q", what)
				}
			}
			if o == dropped {
				t.Errorf("%s connection closed without a word: %s", kinds[nc], what)
			}
			mu.Lock()
			count[o]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	// The readiness probe's connection may still be releasing its slot.
	if count[held] > 39 || count[held] < 37 || count[refused]+count[held] != 80 {
		t.Fatalf("with --max-conns 40 and one client: %d held, %d refused, %d dropped; want 37-39 held, the rest refused",
			count[held], count[refused], count[dropped])
	}
	// The existing client and the agent carry on.
	if r := c.call(2, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}); field(r, "result", "sessionId") == nil {
		t.Fatalf("session/new after the refusals: %v", r)
	}
	for _, nc := range conns {
		nc.Close()
	}
	conns = nil
	// Slots come back: a new client is served once the held ones are gone.
	deadline := time.Now().Add(wait)
	for {
		nc := dial(t, d)
		// A refused connection gets its -32004 line and is closed at once,
		// possibly before this write: a failed write or an ended stream is
		// a refusal too, and the loop tries again.
		_, werr := io.WriteString(nc.c, `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1,"clientCapabilities":{}}}`+"\n")
		var m map[string]any
		select {
		case m = <-nc.msgs:
		case <-time.After(wait):
			t.Fatalf("a new client after the others left: no answer within %s", wait)
		}
		if werr == nil && field(m, "result") != nil {
			break
		}
		if (m != nil && errCode(m) != -32004) || time.Now().After(deadline) {
			t.Fatalf("a new client after the others left: %v (write: %v)", m, werr)
		}
		nc.c.Close()
	}
	if got := d.metric(t, `agentbridge_refused_total{reason="max-conns"`); got < 41 {
		t.Errorf("agentbridge_refused_total{reason=max-conns} = %v, want at least 41", got)
	}
	select {
	case <-d.exited:
		t.Fatalf("daemon exited: %v", d.err)
	default:
	}
}

func TestFDExhaustionKeepsServing(t *testing.T) {
	t.Parallel()
	// --max-conns far above what 256 descriptors allow: accept itself fails
	// with EMFILE, which used to stop gnet's engine and the daemon.
	d := startDaemonWrapped(t, prlimit("256"), "--listen", anyPort, "--max-conns", "100000")
	c := dial(t, d)
	if r := c.call(1, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}}); field(r, "result") == nil {
		t.Fatalf("initialize: %v", r)
	}
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	failed := 0
	for range 400 {
		nc, err := net.DialTimeout("tcp", d.listen, 2*time.Second)
		if err != nil {
			failed++
			continue
		}
		conns = append(conns, nc)
	}
	if !d.waitLog("accept failed; backing off", wait) {
		t.Fatalf("no accept failure logged after 400 connections at an fd limit of 256 (%d dials failed)", failed)
	}
	// The daemon, its agent and the existing client carry on.
	if r := c.call(2, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}); field(r, "result", "sessionId") == nil {
		t.Fatalf("session/new during descriptor exhaustion: %v", r)
	}
	for _, nc := range conns {
		nc.Close()
	}
	conns = nil
	// Once descriptors are free again, new clients are served on both
	// listeners (the acceptor backs off at most 1 s between tries).
	deadline := time.Now().Add(wait)
	for {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + d.listen + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz after exhaustion: %v %v", resp, err)
		}
		time.Sleep(50 * time.Millisecond) // polling a recovery with a deadline
	}
	nc := dial(t, d)
	if r := nc.call(1, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}}); field(r, "result") == nil {
		t.Fatalf("a new client after exhaustion: %v", r)
	}
	select {
	case <-d.exited:
		t.Fatalf("daemon exited: %v", d.err)
	default:
	}
}

func TestRestartBindsWhileClientsLinger(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--listen", anyPort)
	addr := d.listen
	// Keep-alive HTTP clients that never close: once the daemon closes its
	// side, its sockets sit in FIN_WAIT_2 on the port.
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for range 20 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		if _, err := io.WriteString(nc, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("healthz: %v %v", resp, err)
		}
	}
	d.stop()
	d2 := startDaemon(t, "--listen", addr)
	resp, err := http.Get("http://" + d2.listen + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz on the restarted daemon: %v %v\n%s", resp, err, d2.logs())
	}
	resp.Body.Close()
}

func TestAgentOutputPolicy(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, append([]string{"--max-message", "65536"}, fakeAgentCmd()...)...)
	c := dial(t, d)
	if r := c.call(1, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}}); field(r, "result") == nil {
		t.Fatalf("initialize: %v", r)
	}
	// An answer over --max-message: dropped, the caller told its size, the
	// agent kept.
	c.request(2, "huge", map[string]any{"size": 200000})
	r, _ := c.response(2, wait)
	msg, _ := field(r, "error", "message").(string)
	if errCode(r) != -32603 || !strings.Contains(msg, "bytes, over the limit (--max-message)") || !strings.Contains(msg, "2000") {
		t.Fatalf("oversize answer: %v", r)
	}
	if r := c.call(3, "echo", map[string]any{"x": 1}); field(r, "result", "x") != 1.0 {
		t.Fatalf("echo after the oversize answer: %v", r)
	}
	if strings.Contains(d.logs(), "agent exited") {
		t.Fatalf("the agent was stopped for one oversize message:\n%s", d.logs())
	}
	// Garbage: at most one log line a second, with what it held back.
	start := time.Now()
	if r := c.call(4, "garbage", map[string]any{"n": 20000}); field(r, "result", "sent") != 20000.0 {
		t.Fatalf("garbage: %v", r)
	}
	id := 5
	for !d.waitLog("also_dropped_since_last_line=1", 200*time.Millisecond) &&
		!strings.Contains(d.logs(), "also_dropped_since_last_line=2") {
		if time.Since(start) > wait {
			t.Fatalf("no rate-limited line with a count after 20,000 bad lines:\n%s", d.logs())
		}
		c.call(id, "garbage", map[string]any{"n": 1})
		id++
	}
	lines := strings.Count(d.logs(), "agent sent an invalid JSON-RPC message")
	if max := int(time.Since(start)/time.Second) + 2; lines > max {
		t.Fatalf("%d log lines for bad agent output in %s, want at most %d", lines, time.Since(start).Round(time.Millisecond), max)
	}
	if !strings.Contains(d.logs(), "dropped_total=") {
		t.Fatal("the invalid-output line carries no total")
	}
}

func TestMaxConnsPerIP(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, "--listen", anyPort, "--max-conns-per-ip", "3")
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for range 3 {
		nc, err := net.Dial("tcp", d.listen)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
	}
	for i, nc := range conns {
		if o, what := probeTCP(nc, 300*time.Millisecond); o != held {
			t.Fatalf("connection %d of 3 from one address: %v %q", i, o, what)
		}
	}
	nc, err := net.Dial("tcp", d.listen)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if o, what := probeTCP(nc, 2*time.Second); o != refused || !strings.HasPrefix(what, "HTTP/1.1 503 ") || !strings.Contains(what, "--max-conns-per-ip 3") {
		t.Fatalf("the 4th connection from one address: %v %q, want a 503 naming --max-conns-per-ip 3", o, what)
	}
	// The Unix socket has no address: not counted.
	c := dial(t, d)
	if r := c.call(1, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}}); field(r, "result") == nil {
		t.Fatalf("a Unix-socket client beside the per-IP limit: %v", r)
	}
	// A slot comes back when one of the three closes.
	conns[0].Close()
	conns = conns[1:]
	deadline := time.Now().Add(wait)
	for {
		nc, err := net.Dial("tcp", d.listen)
		if err != nil {
			t.Fatal(err)
		}
		o, what := probeTCP(nc, 300*time.Millisecond)
		if o == held {
			conns = append(conns, nc)
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatalf("no slot after one of three closed: %v %q", o, what)
		}
	}
}

func TestMaxConnsTLSClosesAfterAccept(t *testing.T) {
	t.Parallel()
	cert, key, pool := selfSigned(t)
	d := netDaemon(t, "--tls-cert", cert, "--tls-key", key, "--max-conns", "4")
	// The Unix socket and TLS share the limit: hold 2 Unix clients, then 2
	// TLS connections fit and the rest are closed right after accept.
	for i := range 2 {
		c := dial(t, d)
		if r := c.call(i+1, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}}); field(r, "result") == nil {
			t.Fatalf("initialize: %v", r)
		}
	}
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	closed := 0
	for range 5 {
		nc, err := net.Dial("tcp", d.listen)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		if o, _ := probeTCP(nc, 500*time.Millisecond); o == dropped {
			closed++
		}
	}
	// The readiness probe's slot may still be returning: 2 or 3 fit.
	if closed < 2 || closed > 3 {
		t.Fatalf("%d of 5 TLS connections closed at once with 2 of 4 slots held, want 3 (or 2)", closed)
	}
	// An https client is served again once the raw ones are gone.
	for _, nc := range conns {
		nc.Close()
	}
	conns = nil
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(wait)
	for {
		resp, err := hc.Get("https://" + d.listen + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("https after the limit cleared: %v %v", resp, err)
		}
		time.Sleep(50 * time.Millisecond) // polling a recovery with a deadline
	}
}
