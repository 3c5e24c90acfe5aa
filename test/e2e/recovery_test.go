package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rawConn is one client connection whose messages are kept as the exact
// bytes the daemon sent, for byte-for-byte comparisons.
type rawConn interface {
	send(t *testing.T, v any)
	recv() <-chan []byte // closed when the connection ends
	close()
}

// transport dials a rawConn to a daemon. The recovery tests run over each;
// WebSocket joins the list once its client side exists (it needs a token
// and also unlocks the operator-role tests, which the Unix socket cannot
// express: every peer there is a client).
type transport struct {
	name string
	args []string // extra serve flags the transport needs
	dial func(t *testing.T, d *daemon) rawConn
}

var recoveryTransports = []transport{
	{name: "unix", dial: dialUnixRaw},
}

type unixRaw struct {
	c  net.Conn
	ch chan []byte
}

func dialUnixRaw(t *testing.T, d *daemon) rawConn {
	t.Helper()
	c, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	u := &unixRaw{c: c, ch: make(chan []byte, 1<<16)}
	go func() {
		defer close(u.ch)
		r := bufio.NewReaderSize(c, 1<<20)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			u.ch <- line[:len(line)-1]
		}
	}()
	t.Cleanup(func() { c.Close() })
	return u
}

func (u *unixRaw) send(t *testing.T, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.c.Write(append(b, '\n')); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func (u *unixRaw) recv() <-chan []byte { return u.ch }

// close cuts the connection abruptly: whatever the daemon had queued or
// written but we had not read is lost, as in a real drop.
func (u *unixRaw) close() { u.c.Close() }

// frame is what the recovery tests read from a raw message.
type frame struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Params struct {
		SessionID string          `json:"sessionId"`
		Seq       uint64          `json:"seq"`
		Message   json.RawMessage `json:"message"`
		FromSeq   uint64          `json:"fromSeq"`
		ToSeq     uint64          `json:"toSeq"`
		Reason    string          `json:"reason"`
	} `json:"params"`
}

func parseFrame(t *testing.T, b []byte) frame {
	t.Helper()
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("daemon sent invalid JSON %q: %v", b, err)
	}
	return f
}

func req(id any, method string, params any) map[string]any {
	return map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params}
}

// rawCall sends a request and returns its response, collecting what came
// before it.
func rawCall(t *testing.T, c rawConn, id int, method string, params any) (frame, []frame) {
	t.Helper()
	c.send(t, req(id, method, params))
	var before []frame
	deadline := time.After(wait)
	want := fmt.Sprint(id)
	for {
		select {
		case b, ok := <-c.recv():
			if !ok {
				t.Fatalf("%s: connection closed", method)
			}
			f := parseFrame(t, b)
			if f.Method == "" && string(f.ID) == want {
				return f, before
			}
			before = append(before, f)
		case <-deadline:
			t.Fatalf("%s: no response within %s", method, wait)
		}
	}
}

// bigQueues are serve flags for tests that attach with a replay of the
// whole log: the hub queues a replay at once, and a client-role connection
// (onSlow=disconnect) whose queue cannot take it is closed as a slow
// consumer. With the default --queue-items 4096 and --queue-bytes 1 MiB a
// replay of 10,000 events does not fit.
func bigQueues() []string {
	return []string{"--queue-items", "65536", "--queue-bytes", "67108864"}
}

// ownSession creates a session over c and detaches from its data plane (c
// stays its owner), returning its id.
func ownSession(t *testing.T, c *client) string {
	t.Helper()
	sid, _ := field(c.call("new", "session/new", map[string]any{}), "result", "sessionId").(string)
	if sid == "" {
		t.Fatalf("session/new without sessionId")
	}
	c.call("detach", "bridge/detach", map[string]any{"sessionId": sid})
	return sid
}

// TestRecoveryRandomCuts streams 10,000 events per round, 20 rounds, while
// a reader is cut at random points and re-attaches with since = the last
// seq it received. The stream it reassembles must equal what the agent
// wrote, byte for byte, with no duplicate and no hole.
func TestRecoveryRandomCuts(t *testing.T) {
	t.Parallel()
	const rounds, n, size = 20, 10000, 80
	for _, tr := range recoveryTransports {
		t.Run(tr.name, func(t *testing.T) {
			args := append(bigQueues(), tr.args...)
			d := startDaemon(t, append(args, fakeAgentCmd()...)...)
			owner := dial(t, d)
			owner.call("init", "initialize", map[string]any{})
			rnd := rand.New(rand.NewSource(time.Now().UnixNano()))
			totalCuts := 0
			for round := 0; round < rounds; round++ {
				sid := ownSession(t, owner)
				owner.request(fmt.Sprintf("stream-%d", round), "stream", map[string]any{"sessionId": sid, "n": n, "size": size, "every": 200, "pauseUs": 300})
				var got [][]byte
				cursor := uint64(0)
				for cursor < n {
					c := tr.dial(t, d)
					rawCall(t, c, 1, "bridge/hello", map[string]any{"envelope": true})
					res, before := rawCall(t, c, 2, "bridge/attach", map[string]any{"sessionId": sid, "since": cursor})
					if res.Error != nil || len(before) != 0 {
						t.Fatalf("round %d attach since %d: %+v (before it: %+v)", round, cursor, res.Error, before)
					}
					cut := 1 + rnd.Intn(3000)
					read := 0
					for read < cut && cursor < n {
						var b []byte
						select {
						case b = <-c.recv():
						case <-time.After(wait):
							t.Fatalf("round %d: no event after seq %d within %s", round, cursor, wait)
						}
						f := parseFrame(t, b)
						switch f.Method {
						case "bridge/event":
						case "bridge/gap":
							t.Fatalf("round %d: gap %s", round, b)
						default:
							continue // bridge/status and the like
						}
						if f.Params.SessionID != sid || f.Params.Seq != cursor+1 {
							t.Fatalf("round %d: got %s seq %d after seq %d", round, f.Params.SessionID, f.Params.Seq, cursor)
						}
						cursor = f.Params.Seq
						got = append(got, f.Params.Message)
						read++
					}
					c.close()
					if cursor < n {
						totalCuts++
					}
				}
				for i, b := range got {
					if want := streamEvent(sid, i, size); !bytes.Equal(b, want) {
						t.Fatalf("round %d: event %d differs:\n got %s\nwant %s", round, i+1, b, want)
					}
				}
				if m, _ := owner.response(fmt.Sprintf("stream-%d", round), wait); field(m, "result", "sent") != float64(n) {
					t.Fatalf("stream answer %v", m)
				}
			}
			t.Logf("%d rounds of %d events, %d cuts", rounds, n, totalCuts)
		})
	}
}

func TestRecoverySinceOlderThanLogAndUnknownSession(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, append([]string{"--replay", "100"}, fakeAgentCmd()...)...)
	owner := dial(t, d)
	sid := ownSession(t, owner)
	owner.call(3, "burst", map[string]any{"sessionId": sid, "n": 500, "size": 10})
	c := dialUnixRaw(t, d)
	rawCall(t, c, 1, "bridge/hello", map[string]any{"envelope": true})
	res, _ := rawCall(t, c, 2, "bridge/attach", map[string]any{"sessionId": sid, "since": 10})
	// The replay is a stream: the gap stands where seq 11..400 would be,
	// right after the answer and before seq 401.
	if first := parseFrame(t, <-c.recv()); first.Method != "bridge/gap" || first.Params.FromSeq != 11 || first.Params.ToSeq != 400 {
		t.Fatalf("want bridge/gap 11..400 first, got %+v", first)
	}
	var ar struct{ Seq, Replayed int }
	json.Unmarshal(res.Result, &ar)
	if ar.Seq != 500 || ar.Replayed != 100 {
		t.Fatalf("attach result %s", res.Result)
	}
	for want := uint64(401); want <= 500; want++ {
		f := parseFrame(t, <-c.recv())
		if f.Method != "bridge/event" || f.Params.Seq != want {
			t.Fatalf("want event %d, got %+v", want, f)
		}
	}
	res, _ = rawCall(t, c, 3, "bridge/attach", map[string]any{"sessionId": "no-such-session"})
	if res.Error == nil || res.Error.Code != -32002 {
		t.Fatalf("unknown session: %+v", res)
	}
}

func TestRecoveryMalformedBridgeParams(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, fakeAgentCmd()...)
	c := dial(t, d)
	sid := ownSession(t, c)
	cases := map[string][]any{
		"bridge/hello":    {[]any{1}, map[string]any{"envelope": "yes"}, map[string]any{"onSlow": "explode"}, map[string]any{"resume": 7}, map[string]any{"resume": "short"}},
		"bridge/sessions": {[]any{1}},
		"bridge/attach":   {map[string]any{}, map[string]any{"sessionId": 5}, map[string]any{"sessionId": sid, "since": -1}, map[string]any{"sessionId": sid, "last": "x"}, map[string]any{"sessionId": sid, "since": 1, "last": 1}},
		"bridge/detach":   {map[string]any{}, map[string]any{"sessionId": []any{sid}}},
		"bridge/snapshot": {map[string]any{"sessionId": ""}, []any{sid}},
	}
	id := 100
	for method, list := range cases {
		for _, p := range list {
			id++
			c.request(id, method, p)
			m, _ := c.response(id, wait)
			if errCode(m) != -32602 {
				t.Errorf("%s %v: want -32602, got %v", method, p, m)
			}
		}
	}
}

// TestRecoveryPermissionWhileOwnerAway: the owner drops, the agent asks
// for permission with nobody eligible connected, bridge/snapshot shows it,
// and the next client to attach gets it and answers it; the decision is in
// the audit log. (Over the Unix socket every peer is a client; the
// operator variant is in the session tests until WebSocket rounds exist.)
func TestRecoveryPermissionWhileOwnerAway(t *testing.T) {
	t.Parallel()
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	d := startDaemon(t, append([]string{"--audit", auditPath}, fakeAgentCmd()...)...)
	a := dial(t, d)
	sid := ownSession(t, a)
	asker := dial(t, d) // attached, but not the owner: not eligible
	asker.call(1, "bridge/attach", map[string]any{"sessionId": sid})
	a.c.Close()
	waitFor(t, "the owner's close to be seen", func() bool {
		probe := dial(t, d)
		defer probe.c.Close()
		snap := probe.call(1, "bridge/snapshot", map[string]any{"sessionId": sid})
		return field(snap, "result", "ownerConnected") == false
	})
	asker.request(2, "ask", map[string]any{"sessionId": sid})
	b := dial(t, d)
	waitFor(t, "the pending permission in bridge/snapshot", func() bool {
		snap := b.call(fmt.Sprint("snap", time.Now().UnixNano()), "bridge/snapshot", map[string]any{"sessionId": sid})
		pend, _ := field(snap, "result", "pending").([]any)
		return field(snap, "result", "status") == "awaiting_hitl" && len(pend) == 1
	})
	b.request(3, "bridge/attach", map[string]any{"sessionId": sid})
	perm, _ := b.waitFor(wait, "session/request_permission", func(m map[string]any) bool { return m["method"] == "session/request_permission" })
	b.send(map[string]any{"id": perm["id"], "result": map[string]any{"outcome": map[string]any{"outcome": "selected", "optionId": "allow"}}})
	res, _ := asker.response(2, wait)
	if field(res, "result", "answer", "outcome", "optionId") != "allow" {
		t.Fatalf("the agent got %v", res)
	}
	waitFor(t, "the answer in the audit log", func() bool {
		raw, _ := os.ReadFile(auditPath)
		for _, line := range strings.Split(string(raw), "\n") {
			var r map[string]any
			if json.Unmarshal([]byte(line), &r) == nil && r["method"] == "session/request_permission" && r["outcome"] == "answered" &&
				r["option"] == "selected:allow" && r["session"] == sid && r["role"] == "client" && r["transport"] == "unix" {
				return true
			}
		}
		return false
	})
	fi, err := os.Stat(auditPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("audit log mode: %v %v", fi.Mode(), err)
	}
}

// waitFor polls cond, which observes the daemon, until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// attachAll attaches since 0 and reads every event up to seq, returning
// the gaps and the events' messages by seq.
func attachAll(t *testing.T, d *daemon, sid string) (seq uint64, status string, gaps []frame, events map[uint64][]byte) {
	t.Helper()
	c := dialUnixRaw(t, d)
	rawCall(t, c, 1, "bridge/hello", map[string]any{"envelope": true})
	res, before := rawCall(t, c, 2, "bridge/attach", map[string]any{"sessionId": sid, "since": 0})
	if res.Error != nil {
		t.Fatalf("attach: %+v", res.Error)
	}
	var ar struct {
		Seq      uint64
		Status   string
		Replayed int
	}
	json.Unmarshal(res.Result, &ar)
	gaps = before
	events = map[uint64][]byte{}
	// Events and gaps together cover 1..seq, in stream order.
	for covered := uint64(0); covered < ar.Seq; {
		f := parseFrame(t, <-c.recv())
		switch f.Method {
		case "bridge/event":
			events[f.Params.Seq] = f.Params.Message
			covered++
		case "bridge/gap":
			gaps = append(gaps, f)
			covered += f.Params.ToSeq - f.Params.FromSeq + 1
		}
	}
	c.close()
	return ar.Seq, ar.Status, gaps, events
}

func TestRecoveryRestartKeepsHistory(t *testing.T) {
	t.Parallel()
	const n, size = 3000, 40
	state := t.TempDir()
	args := append([]string{"--state-dir", state}, bigQueues()...)
	d := startDaemon(t, append(args, fakeAgentCmd()...)...)
	c := dial(t, d)
	sid := ownSession(t, c)
	c.call(1, "stream", map[string]any{"sessionId": sid, "n": n, "size": size, "every": 500})
	quiet := ownSession(t, c)
	d.stop()
	if d.err != nil {
		t.Fatalf("daemon exit: %v", d.err)
	}

	d2 := startDaemon(t, append(args, fakeAgentCmd()...)...)
	c2 := dial(t, d2)
	list, _ := field(c2.call(1, "bridge/sessions", map[string]any{}), "result", "sessions").([]any)
	byID := map[string]map[string]any{}
	for _, s := range list {
		m := s.(map[string]any)
		byID[m["sessionId"].(string)] = m
	}
	if s := byID[sid]; s == nil || s["seq"] != float64(n) || s["status"] != "closed" {
		t.Fatalf("after restart bridge/sessions = %v", list)
	}
	if s := byID[quiet]; s == nil || s["seq"] != float64(0) {
		t.Fatalf("the event-less session is gone: %v", list)
	}
	seq, status, gaps, events := attachAll(t, d2, sid)
	if seq != n || status != "closed" || len(gaps) != 0 || len(events) != n {
		t.Fatalf("attach after restart: seq %d status %s gaps %+v events %d", seq, status, gaps, len(events))
	}
	for i := 0; i < n; i++ {
		if want := streamEvent(sid, i, size); !bytes.Equal(events[uint64(i+1)], want) {
			t.Fatalf("event %d differs after restart:\n got %s\nwant %s", i+1, events[uint64(i+1)], want)
		}
	}
	snap := c2.call(2, "bridge/snapshot", map[string]any{"sessionId": sid})
	if recent, _ := field(snap, "result", "recent").([]any); field(snap, "result", "status") != "closed" || len(recent) != 50 {
		t.Fatalf("snapshot after restart: %v", snap)
	}
}

func TestRecoveryKill9KeepsAPrefix(t *testing.T) {
	t.Parallel()
	const n, size = 20000, 40
	state := t.TempDir()
	args := append([]string{"--state-dir", state, "--replay", "100000"}, bigQueues()...)
	d := startDaemon(t, append(args, fakeAgentCmd()...)...)
	c := dial(t, d)
	sid := ownSession(t, c)
	r := dialUnixRaw(t, d)
	rawCall(t, r, 1, "bridge/hello", map[string]any{"envelope": true})
	rawCall(t, r, 2, "bridge/attach", map[string]any{"sessionId": sid})
	c.request(1, "stream", map[string]any{"sessionId": sid, "n": n, "size": size, "every": 100, "pauseUs": 200})
	seen := 0
	for seen < 2000 {
		if parseFrame(t, <-r.recv()).Method == "bridge/event" {
			seen++
		}
	}
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.exited

	d2 := startDaemon(t, append(args, fakeAgentCmd()...)...)
	seq, status, gaps, events := attachAll(t, d2, sid)
	kept := uint64(len(events))
	if kept == 0 || status != "closed" {
		t.Fatalf("after kill -9: %d events, status %s", kept, status)
	}
	for i := uint64(1); i <= kept; i++ {
		if want := streamEvent(sid, int(i-1), size); !bytes.Equal(events[i], want) {
			t.Fatalf("event %d of the recovered prefix differs:\n got %s\nwant %s", i, events[i], want)
		}
	}
	// The seq resumes past anything that may have been delivered and lost,
	// and the range is reported, not silently skipped.
	if seq <= kept || len(gaps) != 1 || gaps[0].Method != "bridge/gap" || gaps[0].Params.FromSeq != kept+1 || gaps[0].Params.ToSeq != seq {
		t.Fatalf("after kill -9: kept %d, seq %d, gaps %+v", kept, seq, gaps)
	}
	t.Logf("kill -9 after %d delivered events: %d recovered, seq resumes at %d", seen, kept, seq)
}

// TestRecoveryResumeKey: a request in flight when the connection drops is
// answered on the next connection that says hello with the same key.
func TestRecoveryResumeKey(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, fakeAgentCmd()...)
	const key = "e2e-resume-key-0123456789abcdef"
	a := dialUnixRaw(t, d)
	res, _ := rawCall(t, a, 1, "bridge/hello", map[string]any{"resume": key})
	if res.Error != nil {
		t.Fatalf("hello: %+v", res.Error)
	}
	a.send(t, req(7, "slow", map[string]any{"ms": 500}))
	// The daemon must have read the request before the cut, or there is
	// nothing to resume: a second call answered on A proves it (requests
	// of one connection are handled in order).
	rawCall(t, a, 8, "echo", map[string]any{})
	a.close()

	b := dialUnixRaw(t, d)
	res, _ = rawCall(t, b, 1, "bridge/hello", map[string]any{"resume": key})
	var hr struct {
		Resume struct {
			Resumed  bool
			Received int
			Pending  []json.RawMessage
		}
	}
	json.Unmarshal(res.Result, &hr)
	if !hr.Resume.Resumed || hr.Resume.Received != 3 || len(hr.Resume.Pending) != 1 || string(hr.Resume.Pending[0]) != "7" {
		t.Fatalf("resume result %s", res.Result)
	}
	deadline := time.After(wait)
	for {
		select {
		case raw := <-b.recv():
			f := parseFrame(t, raw)
			if string(f.ID) == "7" {
				if f.Error != nil || !bytes.Contains(f.Result, []byte(`"ms":500`)) {
					t.Fatalf("answer %s", raw)
				}
				return
			}
		case <-deadline:
			t.Fatalf("the answer to id 7 never reached the resumed connection")
		}
	}
}
