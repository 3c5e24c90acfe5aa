package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// waitUntil polls cond every millisecond until it holds (true) or timeout
// passes (false).
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// TestActionableParamErrors: a bad bridge/* parameter is answered -32602
// with one line naming the field and the value (finding 8: the decoder's
// multi-line dump, with part of the input).
func TestActionableParamErrors(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, fakeAgentCmd()...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{"protocolVersion": 1})
	r := c.call(2, "session/new", map[string]any{"cwd": "/", "mcpServers": []any{}})
	sid := field(r, "result", "sessionId").(string)
	for _, tc := range []struct {
		params map[string]any
		want   string
	}{
		{map[string]any{"sessionId": sid, "since": -1}, "bridge/attach: since must be a non-negative integer, not -1"},
		{map[string]any{"sessionId": sid, "last": "ten"}, `bridge/attach: last must be an integer, not "ten"`},
		{map[string]any{"sessionId": 7}, "bridge/attach: sessionId must be a string, not 7"},
	} {
		c.request(10, "bridge/attach", tc.params)
		m, _ := c.response(10, 10*time.Second)
		msg, _ := field(m, "error", "message").(string)
		if errCode(m) != -32602 || msg != tc.want {
			t.Fatalf("params %v: got %d %q, want -32602 %q", tc.params, errCode(m), msg, tc.want)
		}
	}
}

// TestBindErrorNamesAddress: a port in use fails serve with one line that
// names the address (finding 8: "listen: bind: address already in use").
func TestBindErrorNamesAddress(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	p := startProc(t, binPath, nil, 0, nil, "serve", "--uds", filepath.Join(t.TempDir(), "ab.sock"), "--listen", addr)
	if code := p.exitCode(t, 15*time.Second); code == 0 {
		t.Fatal("serve started on a port in use")
	}
	out := p.output()
	if !strings.Contains(out, addr) || !strings.Contains(out, "address already in use") {
		t.Fatalf("bind error does not name %s:\n%s", addr, out)
	}
}

// createSessions makes n sessions with pipelined session/new and returns
// their ids.
func createSessions(t *testing.T, c *client, n, firstID int) []string {
	t.Helper()
	for i := 0; i < n; i++ {
		c.request(firstID+i, "session/new", map[string]any{"cwd": "/", "mcpServers": []any{}})
	}
	ids := make([]string, 0, n)
	for i := 0; i < n; i++ {
		m, _ := c.response(firstID+i, 30*time.Second)
		sid, ok := field(m, "result", "sessionId").(string)
		if !ok {
			t.Fatalf("session/new %d: %v", i, m)
		}
		ids = append(ids, sid)
	}
	return ids
}

// TestSessionsPaginated: bridge/sessions pages in sessionId order with a
// cursor that stays valid while sessions are created, each page well
// under the control ceiling (finding 4: the whole list in one answer
// closed the asker with 1013 once it passed the ceiling).
func TestSessionsPaginated(t *testing.T) {
	t.Parallel()
	const n = 3000
	// A control ceiling of 128 KiB: the unpaginated list of 3,000 sessions
	// (~200 KB) used to close the connection asking for it.
	d := startDaemon(t, append([]string{"--max-inflight", "5000", "--control-bytes", "131072"}, fakeAgentCmd()...)...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{"protocolVersion": 1})
	before := createSessions(t, c, n, 100)
	lister := dial(t, d)
	seen := map[string]int{}
	var order []string
	cursor := ""
	pages := 0
	for id := 10; ; id++ {
		params := map[string]any{"limit": 1000}
		if cursor != "" {
			params["cursor"] = cursor
		}
		m := lister.call(id, "bridge/sessions", params)
		rows, _ := field(m, "result", "sessions").([]any)
		if len(rows) == 0 {
			t.Fatalf("empty page: %v", m)
		}
		for _, r := range rows {
			sid := r.(map[string]any)["sessionId"].(string)
			seen[sid]++
			order = append(order, sid)
		}
		pages++
		// Sessions created between pages must not disturb the walk.
		createSessions(t, c, 50, 100000+id*100)
		next, _ := field(m, "result", "nextCursor").(string)
		if next == "" {
			break
		}
		cursor = next
		if pages > 20 {
			t.Fatal("paging does not end")
		}
	}
	for _, sid := range before {
		if seen[sid] != 1 {
			t.Fatalf("session %s listed %d times", sid, seen[sid])
		}
	}
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			t.Fatalf("not in ascending sessionId order at %d: %q then %q", i, order[i-1], order[i])
		}
	}
	// The default page is 100; sessionId filters; bad params are named.
	if rows, _ := field(lister.call(50, "bridge/sessions", nil), "result", "sessions").([]any); len(rows) != 100 {
		t.Fatalf("default page has %d rows, want 100", len(rows))
	}
	m := lister.call(51, "bridge/sessions", map[string]any{"sessionId": before[7]})
	if rows, _ := field(m, "result", "sessions").([]any); len(rows) != 1 || rows[0].(map[string]any)["sessionId"] != before[7] || field(m, "result", "nextCursor") != nil {
		t.Fatalf("sessionId filter: %v", m)
	}
	lister.request(52, "bridge/sessions", map[string]any{"limit": 5000})
	if m, _ := lister.response(52, 10*time.Second); errCode(m) != -32602 || !strings.Contains(field(m, "error", "message").(string), "between 1 and 1000, not 5000") {
		t.Fatalf("limit 5000: %v", m)
	}
	lister.request(53, "bridge/sessions", map[string]any{"status": "sleeping"})
	if m, _ := lister.response(53, 10*time.Second); errCode(m) != -32602 || !strings.Contains(field(m, "error", "message").(string), `not "sleeping"`) {
		t.Fatalf("status sleeping: %v", m)
	}
	if rows, _ := field(lister.call(54, "bridge/sessions", map[string]any{"status": "idle", "limit": 10}), "result", "sessions").([]any); len(rows) != 10 {
		t.Fatalf("status filter: %d rows", len(rows))
	}
}

// TestAgentNamedSessionsBounded: an agent that names thousands of sessions
// nobody created makes at most --max-sessions of them, forgets the oldest
// first (counted in agentbridge_sessions_evicted_total) and persists none
// until a client attaches (finding 4: 20,000 sessions, 25,000 directories).
func TestAgentNamedSessionsBounded(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	d := netDaemon(t, append([]string{"--max-sessions", "100", "--state-dir", state}, fakeAgentCmd()...)...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{"protocolVersion": 1})
	start := time.Now()
	c.call(2, "spray", map[string]any{"n": 5000, "prefix": "x"})
	// A client's request is answered promptly meanwhile and after.
	c.call(3, "echo", map[string]any{"ping": true})
	if el := time.Since(start); el > 20*time.Second {
		t.Fatalf("spray and echo took %s", el)
	}
	if got := d.metric(t, "agentbridge_sessions_evicted_total"); got != 4900 {
		t.Fatalf("evicted %v sessions, want 4900", got)
	}
	if got := d.metric(t, "agentbridge_sessions "); got != 100 {
		t.Fatalf("%v sessions kept, want 100", got)
	}
	// The newest are kept, the oldest are gone.
	m := c.call(4, "bridge/sessions", map[string]any{"sessionId": "x004999"})
	if rows, _ := field(m, "result", "sessions").([]any); len(rows) != 1 {
		t.Fatalf("newest session missing: %v", m)
	}
	c.request(5, "bridge/attach", map[string]any{"sessionId": "x000000"})
	if m, _ := c.response(5, 10*time.Second); errCode(m) != -32002 {
		t.Fatalf("oldest session still there: %v", m)
	}
	// A claimed one is persisted (with its event); the rest are not.
	c.call(6, "bridge/attach", map[string]any{"sessionId": "x004990", "since": 0})
	d.stop()
	d2 := startDaemon(t, append([]string{"--state-dir", state}, fakeAgentCmd()...)...)
	if !d2.waitLog("state restored", 10*time.Second) || !strings.Contains(d2.logs(), "sessions=1") {
		t.Fatalf("restart did not restore exactly the attached session:\n%s", d2.logs())
	}
	c2 := dial(t, d2)
	m = c2.call(1, "bridge/sessions", nil)
	rows, _ := field(m, "result", "sessions").([]any)
	if len(rows) != 1 || rows[0].(map[string]any)["sessionId"] != "x004990" || rows[0].(map[string]any)["seq"].(float64) < 1 {
		t.Fatalf("restored: %v", m)
	}
}

// TestMaxInflight: one connection gets -32004 past --max-inflight requests
// awaiting the agent, at once and naming the bound (finding 5: a million
// pipelined requests queued for an agent that did not read, RSS 24 → 266 MB).
func TestMaxInflight(t *testing.T) {
	d := bpDaemon(t, append([]string{"--max-inflight", "64"}, fakeAgentCmd()...)...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{"protocolVersion": 1})
	c.request("stall", "stall", map[string]any{"ms": 3000}) // the agent stops reading
	base := rssKiB(t, d.cmd.Process.Pid)
	w := watchRSS(t, d.cmd.Process.Pid)
	// A raw connection read as fast as it comes: the flood's answers are
	// control messages, and a reader that decodes JSON would be closed as a
	// slow consumer.
	raw, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	const flood = 300000
	// The writer keeps at most 2,048 requests unanswered beyond what may be
	// in flight: a reader at the socket's pace, not a slow consumer. Before
	// --max-inflight nothing was answered while the agent did not read (the
	// first -32004 came after ~1.55M requests), so the writer stalls there.
	var received atomic.Int64
	stalled := make(chan int, 1)
	go func() {
		var b strings.Builder
		for i := 0; i < flood; i++ {
			for int64(i)-received.Load() > 2048+64 {
				if !waitUntil(20*time.Second, func() bool { return int64(i)-received.Load() <= 2048+64 }) {
					stalled <- i
					return
				}
			}
			fmt.Fprintf(&b, `{"jsonrpc":"2.0","id":%d,"method":"echo","params":{}}`+"\n", i)
			if b.Len() > 16<<10 || i == flood-1 {
				if _, err := io.WriteString(raw, b.String()); err != nil {
					return
				}
				b.Reset()
			}
		}
	}()
	_ = raw.SetReadDeadline(time.Now().Add(120 * time.Second))
	r := bufio.NewReaderSize(raw, 1<<20)
	refused, answered := 0, 0
	for refused+answered < flood {
		select {
		case n := <-stalled:
			t.Fatalf("no answers for 20s with %d requests sent, %d answered", n, received.Load())
		default:
		}
		line, err := r.ReadSlice('\n')
		if err != nil {
			t.Fatalf("after %d refused, %d answered: %v", refused, answered, err)
		}
		switch {
		case bytes.Contains(line, []byte(`"code":-32004`)):
			if refused == 0 && !bytes.Contains(line, []byte("--max-inflight 64")) {
				t.Fatalf("-32004 does not name the bound: %s", line)
			}
			refused++
		case bytes.Contains(line, []byte(`"result"`)):
			answered++
		default:
			t.Fatalf("unexpected answer %s", line)
		}
		received.Add(1)
	}
	peak := w.finish()
	// 64 requests fit in flight; a few more once answers free slots.
	if answered < 64 || answered > flood/2 {
		t.Fatalf("%d answered, %d refused", answered, refused)
	}
	if grow := (peak - base) / 1024; grow > 64 {
		t.Fatalf("RSS grew %d MiB during the flood (base %d MiB)", grow, base/1024)
	}
	t.Logf("%d requests: %d answered, %d refused -32004; RSS %d → peak %d MiB", flood, answered, refused, base/1024, peak/1024)
	c.call("after", "echo", map[string]any{}) // the other connection carries on
}

// TestCallTimeout: with --call-timeout a request the agent does not answer
// is answered -32005 naming the flag, and its --max-inflight slot is free
// again (finding 5: a hung agent held the slots for ever).
func TestCallTimeout(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, append([]string{"--call-timeout", "300ms", "--max-inflight", "1"}, fakeAgentCmd()...)...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{"protocolVersion": 1})
	start := time.Now()
	c.request(2, "slow", map[string]any{"ms": 5000})
	c.request(3, "echo", map[string]any{}) // over --max-inflight 1
	m, _ := c.response(3, 5*time.Second)
	if errCode(m) != -32004 {
		t.Fatalf("second request: %v", m)
	}
	m, _ = c.response(2, 5*time.Second)
	if el := time.Since(start); errCode(m) != -32005 || !strings.Contains(field(m, "error", "message").(string), "--call-timeout") || el > 3*time.Second {
		t.Fatalf("after %s: %v", el, m)
	}
	c.call(4, "echo", map[string]any{"again": true}) // the slot is free
	// The agent's late answer (at 5 s) is dropped quietly: no warning.
	if !d.waitLog("answered a request after --call-timeout", 10*time.Second) || strings.Contains(d.logs(), "unknown request id") {
		t.Fatalf("the late answer was logged as unknown:\n%s", d.logs())
	}
	// Without the flag nothing times out.
	d2 := startDaemon(t, fakeAgentCmd()...)
	c2 := dial(t, d2)
	c2.call(1, "initialize", map[string]any{"protocolVersion": 1})
	c2.call(2, "slow", map[string]any{"ms": 1500})
}

// TestMetricsCollectors: /metrics carries Go's runtime and process
// collectors and the store's and audit log's dropped writes (finding 6).
func TestMetricsCollectors(t *testing.T) {
	t.Parallel()
	d := netDaemon(t, append([]string{"--state-dir", t.TempDir(), "--audit", filepath.Join(t.TempDir(), "audit.jsonl")}, fakeAgentCmd()...)...)
	body := httpGet(t, "http://"+d.listen+"/metrics", nil, e2eClientToken, 200)
	for _, name := range []string{"go_goroutines ", "go_memstats_heap_inuse_bytes ", "process_resident_memory_bytes ", "process_open_fds ", "process_max_fds ",
		"agentbridge_store_dropped_total ", "agentbridge_store_write_errors_total ", "agentbridge_audit_dropped_total ", "agentbridge_sessions_evicted_total ", "agentbridge_calls_timed_out_total "} {
		if !strings.Contains(body, "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// TestCleanStopPersistsEverySession: 20,000 session/new, SIGTERM, restart:
// every session comes back and the restart says so (finding 7: 19,213 or
// 16,642 of 20,000, silently; SIGTERM took up to 36 s).
func TestCleanStopPersistsEverySession(t *testing.T) {
	const n = 20000
	state := t.TempDir()
	d := bpDaemon(t, append([]string{"--state-dir", state, "--max-inflight", "100000"}, fakeAgentCmd()...)...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{"protocolVersion": 1})
	// In windows of 2,000 so the reading client is never a slow consumer.
	for k := 0; k < n; k += 2000 {
		createSessions(t, c, 2000, 1000+k)
	}
	start := time.Now()
	d.stop()
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("SIGTERM took %s", el)
	}
	if !strings.Contains(d.logs(), "msg=\"state saved\" sessions=20000") {
		t.Fatalf("no state saved line for 20000 sessions:\n%s", tail(d.logs(), 2000))
	}
	d2 := bpDaemon(t, append([]string{"--state-dir", state}, fakeAgentCmd()...)...)
	if !d2.waitLog("state restored", 10*time.Second) || !strings.Contains(d2.logs(), "sessions=20000") || !strings.Contains(d2.logs(), "clean=true") {
		t.Fatalf("restart:\n%s", tail(d2.logs(), 2000))
	}
	// The token file is written once the daemon serves, after the restore.
	if !d2.waitLog("agentbridge serving", 10*time.Second) {
		t.Fatalf("restarted daemon never served:\n%s", tail(d2.logs(), 2000))
	}
	if got := d2.metric(t, "agentbridge_sessions "); got != n {
		t.Fatalf("%v sessions after restart, want %d", got, n)
	}
	var files int
	filepath.Walk(state, func(string, os.FileInfo, error) error { files++; return nil })
	if files > 10 {
		t.Fatalf("%d files and directories in the state dir for %d sessions", files, n)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// TestRestartReportsWhatItCouldNotRestore: a corrupt record in the state
// directory is reported at start with what was lost, beside what was
// restored (finding 7: no log line said what a restart lost).
func TestRestartReportsWhatItCouldNotRestore(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	d := startDaemon(t, append([]string{"--state-dir", state}, fakeAgentCmd()...)...)
	c := dial(t, d)
	c.call(1, "initialize", map[string]any{"protocolVersion": 1})
	sid := createSessions(t, c, 1, 2)[0]
	c.call(3, "burst", map[string]any{"sessionId": sid, "n": 200, "size": 100})
	d.stop()
	segs, _ := filepath.Glob(filepath.Join(state, "log", "*.seg"))
	if len(segs) == 0 {
		t.Fatalf("no segment in %s", state)
	}
	var biggest string
	var size int64
	for _, p := range segs {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			biggest, size = p, fi.Size()
		}
	}
	data, _ := os.ReadFile(biggest)
	data[len(data)/2] ^= 0xff // inside an event in the middle of the stream
	if err := os.WriteFile(biggest, data, 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := startDaemon(t, append([]string{"--state-dir", state}, fakeAgentCmd()...)...)
	if !d2.waitLog("state restored", 10*time.Second) || !d2.waitLog("could not be restored", 5*time.Second) || !strings.Contains(d2.logs(), "corrupt_records=1") {
		t.Fatalf("restart did not report the corrupt record:\n%s", d2.logs())
	}
	c2 := dial(t, d2)
	m := c2.call(1, "bridge/sessions", map[string]any{"sessionId": sid})
	if rows, _ := field(m, "result", "sessions").([]any); len(rows) != 1 {
		t.Fatalf("the session itself was lost: %v", m)
	}
}
