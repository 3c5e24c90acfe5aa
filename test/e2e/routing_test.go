package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const wait = 10 * time.Second

func TestDemoAgentPromptWithPermission(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	c := dial(t, d)
	init := c.call(1, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}})
	if field(init, "result", "protocolVersion") == nil {
		t.Fatalf("initialize result without protocolVersion: %v", init)
	}
	nw := c.call(2, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}})
	sid, _ := field(nw, "result", "sessionId").(string)
	if sid == "" {
		t.Fatalf("session/new without sessionId: %v", nw)
	}
	c.request(3, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "hello"}}})
	perm, before := c.waitFor(wait, "session/request_permission", func(m map[string]any) bool { return m["method"] == "session/request_permission" })
	chunks := 0
	for _, m := range before {
		if field(m, "params", "update", "sessionUpdate") == "agent_message_chunk" {
			chunks++
		}
	}
	opts, _ := field(perm, "params", "options").([]any)
	if len(opts) == 0 {
		t.Fatalf("permission request without options: %v", perm)
	}
	allow := ""
	for _, o := range opts {
		if om, ok := o.(map[string]any); ok && strings.HasPrefix(fmt.Sprint(om["kind"]), "allow") {
			allow, _ = om["optionId"].(string)
		}
	}
	c.send(map[string]any{"id": perm["id"], "result": map[string]any{"outcome": map[string]any{"outcome": "selected", "optionId": allow}}})
	res, after := c.response(3, wait)
	for _, m := range after {
		if field(m, "params", "update", "sessionUpdate") == "agent_message_chunk" {
			chunks++
		}
	}
	if got := field(res, "result", "stopReason"); got != "end_turn" {
		t.Fatalf("stopReason = %v, want end_turn (%v)", got, res)
	}
	if chunks == 0 {
		t.Fatalf("no agent_message_chunk updates arrived")
	}
	completed := false
	for _, m := range after {
		if field(m, "params", "update", "sessionUpdate") == "tool_call_update" && field(m, "params", "update", "status") == "completed" {
			completed = true
		}
	}
	if !completed {
		t.Fatalf("no completed tool_call_update after allowing the permission: %s", brief(after))
	}
}

func TestCollidingIDsAndSessionIsolation(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, fakeAgentCmd()...)
	a, b := dial(t, d), dial(t, d)
	a.call(1, "initialize", map[string]any{})
	b.call(1, "initialize", map[string]any{})
	sa := field(a.call(2, "session/new", map[string]any{}), "result", "sessionId").(string)
	sb := field(b.call(2, "session/new", map[string]any{}), "result", "sessionId").(string)
	if sa == sb {
		t.Fatalf("both clients got session %s", sa)
	}
	// Same ids, different payloads, interleaved.
	var wg sync.WaitGroup
	for _, x := range []struct {
		c   *client
		tag string
	}{{a, "A"}, {b, "B"}} {
		wg.Add(1)
		go func(c *client, tag string) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				c.request(1000+i, "echo", map[string]any{"who": tag, "i": i})
			}
		}(x.c, x.tag)
	}
	wg.Wait()
	for _, x := range []struct {
		c   *client
		tag string
	}{{a, "A"}, {b, "B"}} {
		for i := 0; i < 200; i++ {
			m, _ := x.c.response(1000+i, wait)
			if field(m, "result", "who") != x.tag || field(m, "result", "i") != float64(i) {
				t.Fatalf("client %s id %d got %v", x.tag, 1000+i, m)
			}
		}
	}
	// A's session stream never reaches B.
	a.call(3, "burst", map[string]any{"sessionId": sa, "n": 50, "size": 10})
	b.call(3, "burst", map[string]any{"sessionId": sb, "n": 5, "size": 10})
	b.call(4, "echo", map[string]any{}) // a fence: everything before it has been delivered
	// drain B: only its own session's updates
	deadline := time.After(200 * time.Millisecond)
	for {
		select {
		case m := <-b.msgs:
			if sid := field(m, "params", "sessionId"); sid != nil && sid != sb {
				t.Fatalf("client B received an event of session %v: %v", sid, m)
			}
			continue
		case <-deadline:
		}
		break
	}
	// A sees B's session only after attaching, and then may not prompt it without attach.
	a.request(5, "burst", map[string]any{"sessionId": sb, "n": 1, "size": 1})
	m, _ := a.response(5, wait)
	if errCode(m) != -32002 {
		t.Fatalf("request naming another client's session: want -32002, got %v", m)
	}
}

func TestInitializeReachesAgentOnce(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, fakeAgentCmd()...)
	var results []string
	for i := 0; i < 3; i++ {
		c := dial(t, d)
		r := c.call(7, "initialize", map[string]any{"protocolVersion": 1})
		b, _ := json.Marshal(r["result"])
		results = append(results, string(b))
	}
	for _, r := range results {
		if r != results[0] {
			t.Fatalf("initialize results differ: %v", results)
		}
	}
	if !strings.Contains(results[0], `"initializeCount":1`) {
		t.Fatalf("agent saw initialize more than once: %s", results[0])
	}
}

func TestBrokenInput(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, fakeAgentCmd()...)
	c := dial(t, d)
	cases := []struct {
		in   string
		code int
		id   any // the request's id when it was well-formed, else null
	}{
		{"{not json\n", -32700, nil},
		{"[1,2]\n", -32600, nil},
		{`{"jsonrpc":"2.0"}` + "\n", -32600, nil},
		{`{"jsonrpc":"1.0","id":1,"method":"x"}` + "\n", -32600, float64(1)},
		{`"just a string"` + "\n", -32600, nil},
		{`{"jsonrpc":"2.0","id":{"a":1},"method":"echo"}` + "\n", -32600, nil},
	}
	for _, tc := range cases {
		c.sendRaw(tc.in)
		m := c.next(wait)
		if errCode(m) != tc.code {
			t.Fatalf("input %q: want error %d, got %v", tc.in, tc.code, m)
		}
		if m["id"] != tc.id {
			t.Fatalf("input %q: want id %v, got %v", tc.in, tc.id, m["id"])
		}
		if msg, _ := field(m, "error", "message").(string); msg == "" {
			t.Fatalf("input %q: error without a message", tc.in)
		}
	}
	// The connection lives on.
	r := c.call(1, "echo", map[string]any{"ok": true})
	if field(r, "result", "ok") != true {
		t.Fatalf("after bad input: %v", r)
	}
	// Unknown bridge method, bad bridge params.
	c.request(2, "bridge/nope", nil)
	if m, _ := c.response(2, wait); errCode(m) != -32601 {
		t.Fatalf("bridge/nope: %v", m)
	}
	c.request(3, "bridge/attach", []any{1})
	if m, _ := c.response(3, wait); errCode(m) != -32602 {
		t.Fatalf("bridge/attach with array params: %v", m)
	}
	c.request(4, "bridge/attach", map[string]any{"sessionId": "nope"})
	if m, _ := c.response(4, wait); errCode(m) != -32002 {
		t.Fatalf("bridge/attach unknown session: %v", m)
	}
}

func TestMessageOverLimitClosesConnection(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, append([]string{"--max-message", "1024"}, fakeAgentCmd()...)...)
	c := dial(t, d)
	c.sendRaw(`{"jsonrpc":"2.0","id":1,"method":"echo","params":{"x":"` + strings.Repeat("y", 2000) + `"}}` + "\n")
	m := c.next(wait)
	if errCode(m) != -32600 || !strings.Contains(fmt.Sprint(field(m, "error", "message")), "1024") {
		t.Fatalf("want -32600 naming the limit, got %v", m)
	}
	select {
	case _, ok := <-c.msgs:
		if ok {
			t.Fatalf("connection still delivering after an oversized message")
		}
	case <-time.After(wait):
		t.Fatalf("connection not closed after an oversized message")
	}
	if !d.waitLog("closing connection", wait) {
		t.Fatalf("no log line naming the close reason:\n%s", d.logs())
	}
}

func TestAgentCrashFailsPendingAndRestarts(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, fakeAgentCmd()...)
	c := dial(t, d)
	first := c.call(1, "initialize", map[string]any{})
	pid1 := field(first, "result", "pid")
	c.request(2, "slow", map[string]any{"ms": 60000})
	c.request(3, "crash", nil)
	m, others := c.response(2, wait)
	if errCode(m) != -32003 {
		t.Fatalf("pending request after crash: want -32003, got %v", m)
	}
	m3, more := c.response(3, wait)
	if errCode(m3) != -32003 {
		t.Fatalf("crashing request: want -32003, got %v", m3)
	}
	sawBlocked := false
	for _, x := range append(others, more...) {
		if x["method"] == "bridge/status" && field(x, "params", "status") == "blocked" {
			sawBlocked = true
		}
	}
	if !sawBlocked {
		c.waitFor(wait, "bridge/status blocked", func(x map[string]any) bool {
			return x["method"] == "bridge/status" && field(x, "params", "status") == "blocked"
		})
	}
	// The agent comes back; the bridge re-initialises it; requests work again.
	deadline := time.Now().Add(wait)
	for {
		c.request(4, "echo", map[string]any{"back": true})
		r, _ := c.response(4, wait)
		if field(r, "result", "back") == true {
			break
		}
		if errCode(r) != -32003 || time.Now().After(deadline) {
			t.Fatalf("agent did not come back: %v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	again := c.call(5, "initialize", map[string]any{})
	if field(again, "result", "pid") == pid1 {
		// cached result of the old generation is fine too; what matters is that the new agent was initialised
		t.Logf("initialize still answers from the first generation's cache")
	}
	if !d.waitLog("exit", wait) {
		t.Fatalf("agent exit not logged")
	}
}

func TestSocketModeStaleAndLiveDaemon(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, fakeAgentCmd()...)
	fi, err := os.Stat(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %o, want 600", fi.Mode().Perm())
	}
	// A second daemon on the same path refuses to start, naming the path.
	out, err := exec.Command(binPath, "serve", "--uds", d.sock, "--listen", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), d.sock) || !strings.Contains(string(out), "in use") {
		t.Fatalf("second daemon: err=%v out=%s", err, out)
	}
	// A non-socket file at the path is never replaced.
	file := d.dir + "/notasocket"
	os.WriteFile(file, []byte("keep me"), 0o600)
	out, err = exec.Command(binPath, "serve", "--uds", file, "--listen", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not a socket") {
		t.Fatalf("non-socket path: err=%v out=%s", err, out)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Fatalf("file at the socket path was modified")
	}
	// A stale socket file (nobody listening) is replaced.
	stale := d.dir + "/stale.sock"
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	d2 := &daemon{}
	_ = d2
	cmd := exec.Command(binPath, append([]string{"serve", "--uds", stale, "--listen", ""}, fakeAgentCmd()...)...)
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+d.dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	deadline := time.Now().Add(wait)
	for {
		if c, err := net.Dial("unix", stale); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not replace the stale socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestForeignUIDRefused(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("needs root to act as another uid") // not counted: reported as skipped
	}
	d := startDaemon(t, fakeAgentCmd()...)
	// Let uid 65534 reach the socket file, so the refusal tested is the
	// daemon's SO_PEERCRED check, not file permissions. The daemon sets
	// the socket's mode itself once listening, before it logs that it
	// serves: change it only after that.
	if !d.waitLog("agentbridge serving", wait) {
		t.Fatalf("daemon never logged that it serves")
	}
	os.Chmod(d.dir, 0o755)
	os.Chmod(d.sock, 0o666)
	os.Chmod(filepath.Dir(binPath), 0o755)
	// --allow-uid: this user trusts the daemon's uid (0), so the shim's own
	// server check passes and the refusal tested is the daemon's.
	cmd := exec.Command(binPath, "connect", "--allow-uid", "0", "unix://"+d.sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Stdin = strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"echo","params":{}}` + "\n")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if !strings.Contains(string(out), "-32001") || !strings.Contains(string(out), "uid 65534") {
		t.Fatalf("foreign uid: want a -32001 refusal naming the uid, got %q (err %v, stderr %q)", out, err, stderr.String())
	}
	if !d.waitLog("uid not allowed", wait) {
		t.Fatalf("refusal not logged")
	}
}

func TestSIGTERMWithRequestsInFlight(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, fakeAgentCmd()...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{})
	for i := 0; i < 5; i++ {
		c.request(10+i, "slow", map[string]any{"ms": 60000})
	}
	c.call(2, "echo", map[string]any{}) // the slow ones have reached the agent
	d.cmd.Process.Signal(syscall.SIGTERM)
	for i := 0; i < 5; i++ {
		m, _ := c.response(10+i, wait)
		if errCode(m) != -32003 {
			t.Fatalf("in-flight request at SIGTERM: want -32003, got %v", m)
		}
	}
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon did not exit after SIGTERM")
	}
	if d.err != nil {
		t.Fatalf("daemon exit: %v\n%s", d.err, d.logs())
	}
	if _, err := os.Stat(d.sock); !os.IsNotExist(err) {
		t.Fatalf("socket not removed after shutdown: %v", err)
	}
}

func TestConnectErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(binPath, "connect", "unix://"+dir+"/none.sock")
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no agentbridge daemon is listening") {
		t.Fatalf("connect to nothing: err=%v out=%s", err, out)
	}
	out, err = exec.Command(binPath, "connect", "ftp://x").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "unsupported URL scheme") {
		t.Fatalf("connect bad scheme: err=%v out=%s", err, out)
	}
}

func TestBadFlagsExitWithOneLine(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"serve", "--framing", "xml"},
		{"serve", "--replay", "-1"},
		{"serve", "--log-level", "loud"},
		{"serve", "--tokens", "/nonexistent/tokens"},
	} {
		out, err := exec.Command(binPath, args...).CombinedOutput()
		if err == nil {
			t.Fatalf("%v: exited 0", args)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1 {
			t.Fatalf("%v: want one line, got %q", args, out)
		}
	}
	cmd := exec.Command(binPath, "serve", "--uds", t.TempDir()+"/x.sock")
	cmd.Env = append(os.Environ(), "AGENTBRIDGE_FRAMING=yaml")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "AGENTBRIDGE_FRAMING") {
		t.Fatalf("bad env value: err=%v out=%s", err, out)
	}
}
