// Package e2e tests the real agentbridge binary as a user runs it: started
// as a process, spoken to over real Unix sockets and TCP on loopback.
//
// Every test runs in parallel with the others (t.Parallel; make test runs
// -parallel 4) except the ones that measure the daemon's memory, rate or
// stall bounds under a flood (backpressure_test.go, TestCatchupFromDisk,
// TestMaxInflight, TestCleanStopPersistsEverySession): Go runs those first,
// one at a time, and releases the parallel ones after them. make test runs
// them in a go test of their own (E2E_FLOOD in the Makefile names them),
// after its parallel lanes, alone, so a flood never shares the machine. A new test that measures memory or time
// under load belongs with them (in both places); one that only waits for
// what it asserts may run in parallel (each test has its own daemons, temp
// dirs and ports).
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var binPath string

// agentStdio is the daemon's own AGENTBRIDGE_AGENT_STDIO ("socket", the
// default, or "pipe"): every daemon a test starts inherits the environment,
// so the whole suite runs with the agent on a socketpair or on pipes (make
// test runs both). A test that passes --agent-stdio itself keeps its own:
// the command line beats the environment.
var agentStdio = os.Getenv("AGENTBRIDGE_AGENT_STDIO")

func TestMain(m *testing.M) {
	switch agentStdio {
	case "", "socket", "pipe":
	default:
		fmt.Fprintf(os.Stderr, "AGENTBRIDGE_AGENT_STDIO=%q: want socket or pipe\n", agentStdio)
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "abe2e")
	if err != nil {
		panic(err)
	}
	binPath = filepath.Join(dir, "agentbridge")
	if p := os.Getenv("AGENTBRIDGE_BIN"); p != "" {
		binPath = p
	} else {
		out, err := exec.Command("go", "build", "-race", "-o", binPath, "../../cmd/agentbridge").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build agentbridge: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemon is a running `agentbridge serve`.
type daemon struct {
	t      *testing.T
	cmd    *exec.Cmd
	dir    string
	sock   string
	listen string
	logMu  sync.Mutex
	logBuf bytes.Buffer
	exited chan struct{}
	err    error
}

type logWriter struct{ d *daemon }

func (w logWriter) Write(p []byte) (int, error) {
	w.d.logMu.Lock()
	defer w.d.logMu.Unlock()
	return w.d.logBuf.Write(p)
}

func (d *daemon) logs() string {
	d.logMu.Lock()
	defer d.logMu.Unlock()
	return d.logBuf.String()
}

// startDaemon runs serve with the given extra args (before "--" for the
// agent command, if any) and waits until the socket accepts connections.
func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	return startDaemonExe(t, binPath, nil, args...)
}

// startDaemonWrapped is startDaemon run under wrap (say prlimit), which
// must exec the daemon so that d.cmd's pid is the daemon's.
func startDaemonWrapped(t *testing.T, wrap []string, args ...string) *daemon {
	t.Helper()
	return startDaemonExe(t, binPath, wrap, args...)
}

// startDaemonExe is startDaemonWrapped with the binary exe (the
// backpressure tests run one built without -race). A --listen of anyPort
// is replaced by a free port, picked again if the daemon could not bind it.
func startDaemonExe(t *testing.T, exe string, wrap []string, args ...string) *daemon {
	t.Helper()
	for attempt := 1; ; attempt++ {
		picked := slices.Clone(args)
		i := slices.Index(picked, anyPort)
		if i >= 0 {
			picked[i] = freeAddr(t)
		}
		d, err := launchDaemon(t, exe, wrap, picked)
		if err == nil {
			return d
		}
		if i >= 0 && attempt < 5 && strings.Contains(d.logs(), "address already in use") {
			t.Logf("%s was taken between its pick and the daemon's bind; picking another", picked[i])
			continue
		}
		t.Fatalf("%v\n%s", err, d.logs())
	}
}

// anyPort as the value of --listen asks startDaemon for a free loopback
// port. freeAddr's port is free when picked, but tests run in parallel
// (and beside the node suite in make test): another process may bind it
// before the daemon does, and then the daemon is started on another.
const anyPort = "127.0.0.1:any"

// launchDaemon starts the daemon and waits until its socket accepts; the
// error says why not if it exited first.
func launchDaemon(t *testing.T, exe string, wrap []string, args []string) (*daemon, error) {
	t.Helper()
	dir, err := os.MkdirTemp("", "ab")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &daemon{t: t, dir: dir, sock: filepath.Join(dir, "ab.sock"), exited: make(chan struct{})}
	full := []string{"serve", "--uds", d.sock, "--listen", "", "--log-level", "debug"}
	hasListen := false
	for i, a := range args {
		if a == "--listen" && i+1 < len(args) {
			hasListen = true
			d.listen = args[i+1]
		}
	}
	if hasListen {
		full = []string{"serve", "--uds", d.sock, "--log-level", "debug"}
	}
	full = append(full, args...)
	full = append([]string{exe}, full...)
	full = append(append([]string(nil), wrap...), full...)
	d.cmd = exec.Command(full[0], full[1:]...)
	d.cmd.Stdout = logWriter{d}
	d.cmd.Stderr = logWriter{d}
	d.cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+dir)
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		d.stop()
		if !slices.Contains(args, "--agent-stdio") {
			checkAgentStdio(t, d.logs())
		}
		// The daemon (and an agent built from this test binary, whose
		// stderr the daemon logs) runs with the race detector: a race it
		// reports fails the test rather than passing unread.
		if strings.Contains(d.logs(), "WARNING: DATA RACE") {
			t.Errorf("the daemon or its agent reported a data race (see the daemon log)")
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("unix", d.sock)
		if err == nil {
			c.Close()
			return d, nil
		}
		select {
		case <-d.exited:
			return d, fmt.Errorf("daemon exited during start: %v", d.err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not listen on %s within 15s\n%s", d.sock, d.logs())
		}
	}
}

// agentStarted finds the stdio mode in the daemon's "agent started" lines.
var agentStarted = regexp.MustCompile(`msg="agent started".* stdio=(\w+)`)

// checkAgentStdio fails the test if a daemon started its agent in another
// mode than AGENTBRIDGE_AGENT_STDIO asks for: a pipe-mode run that quietly
// ran on the socketpair would prove nothing.
func checkAgentStdio(t *testing.T, logs string) {
	if agentStdio == "" {
		return
	}
	for _, m := range agentStarted.FindAllStringSubmatch(logs, -1) {
		if m[1] != agentStdio {
			t.Errorf("agent started with stdio=%s, but AGENTBRIDGE_AGENT_STDIO=%s", m[1], agentStdio)
			return
		}
	}
}

// waitLog waits until the daemon's log contains s: log lines are written by
// another process and may trail what a client observes on its socket.
func (d *daemon) waitLog(s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for !strings.Contains(d.logs(), s) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func (d *daemon) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

// client is an NDJSON JSON-RPC client over the Unix socket.
type client struct {
	t    *testing.T
	c    net.Conn
	r    *bufio.Reader
	msgs chan map[string]any
	raw  chan []byte
	mu   sync.Mutex
	// sawStatus collects bridge/status values a helper saw (lifecycle_test.go).
	sawStatus []string
}

func dial(t *testing.T, d *daemon) *client {
	t.Helper()
	c, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	cl := &client{t: t, c: c, r: bufio.NewReaderSize(c, 1<<20), msgs: make(chan map[string]any, 100000)}
	go func() {
		defer close(cl.msgs)
		for {
			line, err := cl.r.ReadBytes('\n')
			if err != nil {
				return
			}
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				m = map[string]any{"_invalid": string(line)}
			}
			cl.msgs <- m
		}
	}()
	t.Cleanup(func() { c.Close() })
	return cl
}

func (cl *client) sendRaw(s string) {
	cl.t.Helper()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if _, err := io.WriteString(cl.c, s); err != nil {
		cl.t.Fatalf("write: %v", err)
	}
}

func (cl *client) send(v map[string]any) {
	cl.t.Helper()
	v["jsonrpc"] = "2.0"
	b, err := json.Marshal(v)
	if err != nil {
		cl.t.Fatal(err)
	}
	cl.sendRaw(string(b) + "\n")
}

func (cl *client) request(id any, method string, params any) {
	cl.t.Helper()
	m := map[string]any{"id": id, "method": method}
	if params != nil {
		m["params"] = params
	}
	cl.send(m)
}

// next returns the next message or fails after timeout.
func (cl *client) next(timeout time.Duration) map[string]any {
	cl.t.Helper()
	select {
	case m, ok := <-cl.msgs:
		if !ok {
			cl.t.Fatalf("connection closed while waiting for a message")
		}
		return m
	case <-time.After(timeout):
		cl.t.Fatalf("no message within %s", timeout)
	}
	return nil
}

// waitFor reads messages until match returns true, collecting the others.
func (cl *client) waitFor(timeout time.Duration, what string, match func(map[string]any) bool) (map[string]any, []map[string]any) {
	cl.t.Helper()
	var others []map[string]any
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-cl.msgs:
			if !ok {
				cl.t.Fatalf("connection closed while waiting for %s (saw %d others: %s)", what, len(others), brief(others))
			}
			if match(m) {
				return m, others
			}
			others = append(others, m)
		case <-deadline:
			cl.t.Fatalf("no %s within %s (saw %d others: %s)", what, timeout, len(others), brief(others))
		}
	}
}

func brief(ms []map[string]any) string {
	var sb strings.Builder
	for i, m := range ms {
		if i == 8 {
			fmt.Fprintf(&sb, " ... %d more", len(ms)-8)
			break
		}
		b, _ := json.Marshal(m)
		if len(b) > 200 {
			b = append(b[:200], "..."...)
		}
		sb.Write(b)
		sb.WriteByte(' ')
	}
	return sb.String()
}

// response waits for the response with the given id.
func (cl *client) response(id any, timeout time.Duration) (map[string]any, []map[string]any) {
	cl.t.Helper()
	want, _ := json.Marshal(id)
	return cl.waitFor(timeout, "response "+string(want), func(m map[string]any) bool {
		if _, isReq := m["method"]; isReq {
			return false
		}
		got, _ := json.Marshal(m["id"])
		return bytes.Equal(got, want)
	})
}

func (cl *client) call(id any, method string, params any) map[string]any {
	cl.t.Helper()
	cl.request(id, method, params)
	m, _ := cl.response(id, 10*time.Second)
	if e, ok := m["error"]; ok {
		cl.t.Fatalf("%s: error %v", method, e)
	}
	return m
}

func errCode(m map[string]any) int {
	e, ok := m["error"].(map[string]any)
	if !ok {
		return 0
	}
	c, _ := e["code"].(float64)
	return int(c)
}

func field(m map[string]any, path ...string) any {
	var v any = m
	for _, p := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[p]
	}
	return v
}
