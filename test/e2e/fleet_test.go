package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// startNATS runs a NATS server with JetStream in this test process, on
// loopback with a random port and a temporary store: the fleet tests need
// no network and no installed server.
func startNATS(t *testing.T) string {
	t.Helper()
	return runNATS(t, t.TempDir(), -1).ClientURL()
}

// runNATS runs a NATS server with JetStream on 127.0.0.1:port (-1: a free
// one) with its store in dir, shut down at the test's end.
func runNATS(t *testing.T, dir string, port int) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir,
		NoLog: true, NoSigs: true, JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 4 << 30,
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready within 10s")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

// fleetNode starts `serve --nats` as node name of fleet, running the demo
// agent with a paced stream of chunks and no tool calls.
func fleetNode(t *testing.T, url, fleet, name string) *daemon {
	t.Helper()
	return startDaemon(t, "--nats", url, "--node", name, "--fleet", fleet,
		"--", binPath, "demo-agent", "--chunks", "40", "--pace", "10ms", "--tool-calls", "0")
}

// permNode is fleetNode with one tool call per prompt that asks
// permission, and extra serve flags.
func permNode(t *testing.T, url, fleet, name string, extra ...string) *daemon {
	t.Helper()
	args := append([]string{"--nats", url, "--node", name, "--fleet", fleet}, extra...)
	return startDaemon(t, append(args, "--", binPath, "demo-agent", "--chunks", "20", "--pace", "5ms", "--tool-calls", "1", "--permission")...)
}

// listed returns the bridge/sessions row of sid on cl's daemon, or nil.
func listed(cl *client, id *int, sid string) map[string]any {
	cl.t.Helper()
	*id++
	res := cl.call(*id, "bridge/sessions", map[string]any{})
	rows, _ := field(res, "result", "sessions").([]any)
	for _, r := range rows {
		if m, _ := r.(map[string]any); m != nil && m["sessionId"] == sid {
			return m
		}
	}
	return nil
}

// waitListed polls cl's daemon until sid is listed and ok(row) holds: the
// fleet's KV bucket and stream reach other nodes asynchronously.
func waitListed(cl *client, id *int, sid string, what string, ok func(map[string]any) bool) map[string]any {
	cl.t.Helper()
	deadline := time.Now().Add(wait)
	var last map[string]any
	for time.Now().Before(deadline) {
		if last = listed(cl, id, sid); last != nil && ok(last) {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	cl.t.Fatalf("session %s: no row with %s within %s (last: %v)", sid, what, wait, last)
	return nil
}

// events collects enveloped bridge/event of sid until seq upto, failing on
// a duplicate or out-of-order seq, and returns the message bodies by seq.
func events(cl *client, sid string, from, upto uint64) map[uint64]string {
	cl.t.Helper()
	got := map[uint64]string{}
	next := from
	deadline := time.After(wait)
	for next <= upto {
		select {
		case m, ok := <-cl.msgs:
			if !ok {
				cl.t.Fatalf("connection closed at seq %d of %d..%d", next, from, upto)
			}
			if m["method"] == "bridge/gap" {
				cl.t.Fatalf("bridge/gap at seq %d: %v", next, m)
			}
			if m["method"] != "bridge/event" || field(m, "params", "sessionId") != sid {
				continue
			}
			seq := uint64(field(m, "params", "seq").(float64))
			if seq != next {
				cl.t.Fatalf("event seq %d, want %d (a hole or a duplicate)", seq, next)
			}
			b, _ := json.Marshal(field(m, "params", "message"))
			got[seq] = string(b)
			next++
		case <-deadline:
			cl.t.Fatalf("events of %s: got up to seq %d of %d..%d within %s", sid, next-1, from, upto, wait)
		}
	}
	return got
}

// TestFleetRemoteAttach: a session created on node A is listed on B and C
// with node A; a viewer on C attaches with since while A's prompt streams
// and gets every event exactly once, in order, the same as A's owner got;
// a second attach with since=k after the turn gets exactly k+1..end; a
// prompt sent on B to A's session by a client not attached to it reaches A
// and is refused by A's own gate (-32002), as a local one would be.
func TestFleetRemoteAttach(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	fleet := fmt.Sprintf("t%d", time.Now().UnixNano())
	a := fleetNode(t, url, fleet, "A")
	b := fleetNode(t, url, fleet, "B")
	c := fleetNode(t, url, fleet, "C")

	owner := dial(t, a)
	owner.call(1, "bridge/hello", map[string]any{"envelope": true})
	owner.call(2, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}})
	nw := owner.call(3, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}})
	sid, _ := field(nw, "result", "sessionId").(string)
	if sid == "" {
		t.Fatalf("session/new without sessionId: %v", nw)
	}

	bc, cc := dial(t, b), dial(t, c)
	bid, cid := 0, 0
	row := waitListed(bc, &bid, sid, "node A", func(m map[string]any) bool { return m["node"] == "A" })
	if row["status"] != "idle" {
		t.Fatalf("B lists A's session as %v, want idle", row)
	}
	waitListed(cc, &cid, sid, "node A", func(m map[string]any) bool { return m["node"] == "A" })

	viewer := dial(t, c)
	viewer.call(1, "bridge/hello", map[string]any{"envelope": true})
	owner.request(4, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "hello"}}})
	// Attach while the turn streams: since 0 is always valid on the mirror.
	att := viewer.call(2, "bridge/attach", map[string]any{"sessionId": sid, "since": 0})
	if field(att, "result", "sessionId") != sid {
		t.Fatalf("bridge/attach on C: %v", att)
	}
	res, live := owner.response(4, wait)
	if got := field(res, "result", "stopReason"); got != "end_turn" {
		t.Fatalf("prompt on A: %v", res)
	}
	oid := 10
	end := uint64(listed(owner, &oid, sid)["seq"].(float64))
	if end < 40 {
		t.Fatalf("A's session seq %d after a 40-chunk turn", end)
	}
	if n := listed(owner, &oid, sid)["node"]; n != "A" {
		t.Fatalf("A lists its own session with node %v, want A", n)
	}
	onC := events(viewer, sid, 1, end)

	// What A's owner got live (it attached at creation) before the
	// prompt's answer is what C got.
	ownerGot := map[uint64]string{}
	for _, m := range live {
		if m["method"] == "bridge/event" {
			b, _ := json.Marshal(field(m, "params", "message"))
			ownerGot[uint64(field(m, "params", "seq").(float64))] = string(b)
		}
	}
	if len(ownerGot) != int(end) {
		t.Fatalf("A's owner got %d events before the answer, A's seq is %d", len(ownerGot), end)
	}
	for seq := uint64(1); seq <= end; seq++ {
		if onC[seq] != ownerGot[seq] {
			t.Fatalf("seq %d: C got %s, A's owner got %s", seq, onC[seq], ownerGot[seq])
		}
	}

	// A later attach with since=k on B: exactly k+1..end, replayed.
	waitListed(bc, &bid, sid, fmt.Sprintf("seq %d", end), func(m map[string]any) bool { return uint64(m["seq"].(float64)) == end })
	late := dial(t, b)
	late.call(1, "bridge/hello", map[string]any{"envelope": true})
	k := end / 2
	att = late.call(2, "bridge/attach", map[string]any{"sessionId": sid, "since": k})
	if got := field(att, "result", "replayed"); got != float64(end-k) {
		t.Fatalf("attach since %d on B replayed %v, want %d", k, got, end-k)
	}
	onB := events(late, sid, k+1, end)
	for seq := k + 1; seq <= end; seq++ {
		if onB[seq] != ownerGot[seq] {
			t.Fatalf("seq %d: B got %s, A's owner got %s", seq, onB[seq], ownerGot[seq])
		}
	}
	select {
	case m := <-late.msgs:
		if m["method"] == "bridge/event" {
			t.Fatalf("an event past seq %d on B: %v", end, m)
		}
	case <-time.After(300 * time.Millisecond):
	}

	// Driving A's session from B unattached is refused by A's gate.
	bc.call(100, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}})
	bc.request(101, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "hi"}}})
	pr, _ := bc.response(101, wait)
	if errCode(pr) != -32002 || !strings.Contains(fmt.Sprint(field(pr, "error", "message")), "not attached") {
		t.Fatalf("session/prompt on B for A's session, unattached: %v, want A's -32002", pr)
	}

	// B's own session and A's, paged one per page on C, each with its node.
	bnw := bc.call(102, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}})
	bsid, _ := field(bnw, "result", "sessionId").(string)
	waitListed(cc, &cid, bsid, "node B", func(m map[string]any) bool { return m["node"] == "B" })
	nodes := map[string]any{}
	cursor := ""
	for page := 0; page < 10; page++ {
		p := map[string]any{"limit": 1}
		if cursor != "" {
			p["cursor"] = cursor
		}
		cid++
		r := cc.call(cid, "bridge/sessions", p)
		rows, _ := field(r, "result", "sessions").([]any)
		if len(rows) != 1 {
			t.Fatalf("page %d of limit 1: %v", page, r)
		}
		m := rows[0].(map[string]any)
		nodes[m["sessionId"].(string)] = m["node"]
		cursor, _ = field(r, "result", "nextCursor").(string)
		if cursor == "" {
			break
		}
	}
	if len(nodes) != 2 || nodes[sid] != "A" || nodes[bsid] != "B" {
		t.Fatalf("C's pages list %v, want %s on A and %s on B", nodes, sid, bsid)
	}
}

// TestFleetRemotePrompt: A's session, its creator gone, is attached by a
// client on B (which so becomes its owner on A) and by an operator on C.
// B prompts it; A's agent asks permission; both get the request under the
// same fleet id; C answers first, so B gets bridge/resolved and
// $/cancel_request naming that id; B gets every event of the turn, exactly
// once and in order, before the prompt's answer; a second prompt from B,
// cancelled from B with session/cancel while its permission request is
// pending, is answered cancelled; so is a third, cancelled with
// $/cancel_request naming B's own request id. C's operator, detached on
// C, is detached on A too.
func TestFleetRemotePrompt(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	fleet := fmt.Sprintf("t%d", time.Now().UnixNano())
	tokens := filepath.Join(t.TempDir(), "tokens")
	const opToken = "e2e-fleet-operator-token-0123456789"
	if err := os.WriteFile(tokens, []byte("operator "+opToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := permNode(t, url, fleet, "A")
	b := permNode(t, url, fleet, "B")
	c := permNode(t, url, fleet, "C", "--listen", anyPort, "--tokens", tokens)
	addrC := c.listen

	creator := dial(t, a)
	acpInit(t, creator, 1)
	sid, _ := field(creator.call(1, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}), "result", "sessionId").(string)
	if sid == "" {
		t.Fatal("session/new without sessionId")
	}
	creator.c.Close()
	ac := dial(t, a)
	aid := 0
	waitListed(ac, &aid, sid, "no owner connected", func(m map[string]any) bool { return m["ownerConnected"] == false })

	bc := dial(t, b)
	bc.call(1, "bridge/hello", map[string]any{"envelope": true})
	acpInit(t, bc, 1) // B's own agent: initialize names no session
	bid := 1
	waitListed(bc, &bid, sid, "node A", func(m map[string]any) bool { return m["node"] == "A" })
	if att := bc.call(2, "bridge/attach", map[string]any{"sessionId": sid, "since": 0}); field(att, "result", "sessionId") != sid {
		t.Fatalf("bridge/attach on B: %v", att)
	}
	// B's stand-in on A becomes the owner, as a local attach would.
	waitListed(ac, &aid, sid, "owner connected", func(m map[string]any) bool { return m["ownerConnected"] == true })

	op, _, err := dialPeer(t, "ws://"+addrC+"/acp", nil, "Authorization", "Bearer "+opToken)
	if err != nil {
		t.Fatal(err)
	}
	cc := dial(t, c)
	cid := 0
	waitListed(cc, &cid, sid, "node A", func(m map[string]any) bool { return m["node"] == "A" })
	op.call("att", "bridge/attach", map[string]any{"sessionId": sid})

	bc.request(10, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "go"}}})
	opPerm, _ := op.waitFor("the permission request on C", func(m map[string]any) bool { return m["method"] == "session/request_permission" })
	permID, _ := opPerm["id"].(string)
	if !strings.HasPrefix(permID, "fleet/A/") {
		t.Fatalf("permission request on C has id %v, want a fleet/A/ id", opPerm["id"])
	}
	var beforeAnswer []map[string]any
	bPerm, seen := bc.waitFor(wait, "the permission request on B", func(m map[string]any) bool { return m["method"] == "session/request_permission" })
	beforeAnswer = append(beforeAnswer, seen...)
	if bPerm["id"] != permID || field(bPerm, "params", "sessionId") != sid {
		t.Fatalf("B got %v, C got id %s", bPerm, permID)
	}
	op.send(map[string]any{"jsonrpc": "2.0", "id": permID, "result": map[string]any{"outcome": map[string]any{"outcome": "selected", "optionId": "allow"}}})
	res, seen := bc.waitFor(wait, "bridge/resolved on B", func(m map[string]any) bool { return m["method"] == "bridge/resolved" })
	beforeAnswer = append(beforeAnswer, seen...)
	if field(res, "params", "id") != permID {
		t.Fatalf("B's bridge/resolved %v, want id %s", res, permID)
	}
	pr, seen := bc.response(10, wait)
	beforeAnswer = append(beforeAnswer, seen...)
	if field(pr, "result", "stopReason") != "end_turn" {
		t.Fatalf("B's prompt of A's session: %v", pr)
	}
	sawCancel := false
	var seqs []uint64
	for _, m := range beforeAnswer {
		switch m["method"] {
		case "$/cancel_request":
			sawCancel = field(m, "params", "requestId") == permID
		case "bridge/event":
			seqs = append(seqs, uint64(field(m, "params", "seq").(float64)))
		case "bridge/gap":
			t.Fatalf("B got a gap: %v", m)
		}
	}
	if !sawCancel {
		t.Fatalf("B got no $/cancel_request naming %s before the answer: %s", permID, brief(beforeAnswer))
	}
	end := uint64(waitListed(ac, &aid, sid, "idle", func(m map[string]any) bool { return m["status"] == "idle" })["seq"].(float64))
	if end < 20 || uint64(len(seqs)) != end {
		t.Fatalf("B got %d events before the answer, A's seq is %d: %v", len(seqs), end, seqs)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("B's events out of order at %d: %v", i, seqs)
		}
	}

	// C's operator detaches on C: its stand-in on A is detached too, so
	// A's gate now refuses it a cancel (an operator must be attached).
	op.call("det", "bridge/detach", map[string]any{"sessionId": sid})
	if m, _ := op.call("c1", "session/cancel", map[string]any{"sessionId": sid}); errCode(m) != -32002 {
		t.Fatalf("session/cancel from C's detached operator: %v, want A's -32002", m)
	}

	// A prompt cancelled from B by its own id: the cancel follows it to A.
	bc.request(11, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "again"}}})
	bc.waitFor(wait, "the second permission request on B", func(m map[string]any) bool { return m["method"] == "session/request_permission" })
	bc.send(map[string]any{"jsonrpc": "2.0", "method": "session/cancel", "params": map[string]any{"sessionId": sid}})
	pr, _ = bc.response(11, wait)
	if field(pr, "result", "stopReason") != "cancelled" {
		t.Fatalf("B's cancelled prompt of A's session: %v", pr)
	}

	// $/cancel_request naming B's own request id follows the request to A,
	// where it is remapped to the stand-in's request.
	bc.request(12, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "third"}}})
	bc.waitFor(wait, "the third permission request on B", func(m map[string]any) bool { return m["method"] == "session/request_permission" })
	bc.send(map[string]any{"jsonrpc": "2.0", "method": "$/cancel_request", "params": map[string]any{"requestId": 12}})
	pr, _ = bc.response(12, wait)
	if field(pr, "result", "stopReason") != "cancelled" {
		t.Fatalf("B's prompt of A's session after $/cancel_request: %v", pr)
	}
	if strings.Contains(b.logs(), "not got in flight; dropped") {
		t.Fatalf("B dropped its client's cancel as naming nothing in flight:\n%s", b.logs())
	}
}

// TestFleetNodeDeath: when node A is SIGKILLed its session, mirrored on C,
// turns blocked for C's attached viewer within the KV TTL (3 x 2 s), and
// C keeps its history: a new attach with since 0 still replays it.
func TestFleetNodeDeath(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	fleet := fmt.Sprintf("t%d", time.Now().UnixNano())
	a := fleetNode(t, url, fleet, "A")
	c := fleetNode(t, url, fleet, "C")
	owner := dial(t, a)
	owner.call(1, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}})
	nw := owner.call(2, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}})
	sid, _ := field(nw, "result", "sessionId").(string)
	owner.call(3, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "hello"}}})
	oid := 10
	end := uint64(listed(owner, &oid, sid)["seq"].(float64))

	viewer := dial(t, c)
	vid := 0
	waitListed(viewer, &vid, sid, fmt.Sprintf("seq %d", end), func(m map[string]any) bool { return uint64(m["seq"].(float64)) == end })
	viewer.call(100, "bridge/hello", map[string]any{"envelope": true})
	viewer.call(101, "bridge/attach", map[string]any{"sessionId": sid, "since": 0})
	events(viewer, sid, 1, end)

	killed := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st, _ := viewer.waitFor(15*time.Second, "bridge/status blocked", func(m map[string]any) bool {
		return m["method"] == "bridge/status" && field(m, "params", "sessionId") == sid && field(m, "params", "status") == "blocked"
	})
	if took := time.Since(killed); took > 10*time.Second {
		t.Fatalf("blocked after %s: %v", took, st)
	}
	row := listed(viewer, &vid, sid)
	if row["status"] != "blocked" || row["node"] != "A" {
		t.Fatalf("C lists the dead node's session as %v, want blocked on A", row)
	}
	again := dial(t, c)
	again.call(1, "bridge/hello", map[string]any{"envelope": true})
	again.call(2, "bridge/attach", map[string]any{"sessionId": sid, "since": 0})
	events(again, sid, 1, end)
}

// TestFleetNodeRestart: node A, SIGKILLed and started again (a new
// process, the same --node), re-loads its session into its new agent with
// the recorded cwd and mcpServers (the demo agent keeps session ids on
// disk, as real agents do). B's attached client, whose prompt was in
// flight on A (waiting for the owner's permission) when A died, gets
// -32003 naming A, sees blocked, then idle after the restart, and prompts
// again: its stand-in on A is now the owner and answers the permission
// request, and it gets every event of the new turn, numbered on from the
// first turn's, exactly once and before the answer.
func TestFleetNodeRestart(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	fleet := fmt.Sprintf("t%d", time.Now().UnixNano())
	kept := t.TempDir()
	nodeA := func() *daemon {
		return startDaemon(t, "--nats", url, "--node", "A", "--fleet", fleet,
			"--", binPath, "demo-agent", "--chunks", "10", "--pace", "2ms", "--tool-calls", "1", "--permission", "--sessions-dir", kept)
	}
	isPerm := func(m map[string]any) bool { return m["method"] == "session/request_permission" }
	allow := func(cl *client, perm map[string]any) {
		cl.send(map[string]any{"jsonrpc": "2.0", "id": perm["id"], "result": map[string]any{"outcome": map[string]any{"outcome": "selected", "optionId": "allow"}}})
	}
	a := nodeA()
	b := fleetNode(t, url, fleet, "B")
	owner := dial(t, a)
	acpInit(t, owner, 1)
	sid, _ := field(owner.call(1, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}), "result", "sessionId").(string)
	owner.request(2, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "one"}}})
	perm, _ := owner.waitFor(wait, "the first permission request on A", isPerm)
	allow(owner, perm)
	if pr, _ := owner.response(2, wait); field(pr, "result", "stopReason") != "end_turn" {
		t.Fatalf("first prompt on A: %v", pr)
	}
	oid := 10
	end1 := uint64(listed(owner, &oid, sid)["seq"].(float64))

	bc := dial(t, b)
	bc.call(1, "bridge/hello", map[string]any{"envelope": true})
	acpInit(t, bc, 1)
	bid := 1
	waitListed(bc, &bid, sid, fmt.Sprintf("seq %d", end1), func(m map[string]any) bool { return uint64(m["seq"].(float64)) == end1 })
	bc.call(2, "bridge/attach", map[string]any{"sessionId": sid, "since": 0})
	events(bc, sid, 1, end1)

	// B's prompt waits on A for the owner's permission when A dies.
	bc.request(19, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "lost"}}})
	owner.waitFor(wait, "the permission request of B's prompt on A", isPerm)
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	isStatus := func(st string) func(map[string]any) bool {
		return func(m map[string]any) bool {
			return m["method"] == "bridge/status" && field(m, "params", "sessionId") == sid && field(m, "params", "status") == st
		}
	}
	// blocked is announced, then the forwarded prompt is failed.
	lost, seen := bc.response(19, 15*time.Second)
	if errCode(lost) != -32003 || !strings.Contains(fmt.Sprint(field(lost, "error", "message")), `"A"`) {
		t.Fatalf("B's prompt in flight when A died: %v, want -32003 naming A", lost)
	}
	if !slices.ContainsFunc(seen, isStatus("blocked")) {
		t.Fatalf("no bridge/status blocked before the -32003: %s", brief(seen))
	}
	a2 := nodeA()
	bc.waitFor(30*time.Second, "bridge/status idle after A's restart", isStatus("idle"))
	if !a2.waitLog("re-loaded this node's sessions", wait) || !strings.Contains(a2.logs(), "loaded=1") {
		t.Fatalf("A did not log re-loading its session:\n%s", a2.logs())
	}
	// The first turn's events and the dead prompt's (all in the stream)
	// are B's history; the new turn numbers on from them.
	end2 := uint64(waitListed(bc, &bid, sid, "idle", func(m map[string]any) bool { return m["status"] == "idle" })["seq"].(float64))

	bc.request(20, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "two"}}})
	perm, seen = bc.waitFor(wait, "the permission request on B after A's restart", isPerm)
	if id, _ := perm["id"].(string); !strings.HasPrefix(id, "fleet/A/") {
		t.Fatalf("B's permission request has id %v, want a fleet/A/ id", perm["id"])
	}
	allow(bc, perm)
	pr, more := bc.response(20, wait)
	if field(pr, "result", "stopReason") != "end_turn" {
		t.Fatalf("B's prompt after A's restart: %v", pr)
	}
	next := end2 + 1
	for _, m := range append(seen, more...) {
		switch m["method"] {
		case "bridge/gap":
			t.Fatalf("B got a gap after A's restart: %v", m)
		case "bridge/event":
			seq := uint64(field(m, "params", "seq").(float64))
			if seq <= end2 {
				continue // the dead prompt's last events, still arriving from the stream
			}
			if seq != next {
				t.Fatalf("B got seq %d after A's restart, want %d (a hole or a duplicate)", seq, next)
			}
			next++
		}
	}
	if next < end2+10 {
		t.Fatalf("B got events %d..%d of the second turn before its answer", end2+1, next-1)
	}
}

// TestFleetNATSCut: NATS is stopped for 2 s while A's session streams to
// viewers attached on B and C, then started again on its store: both
// viewers get every event of the turn exactly once, in order, with no gap,
// and the owner's prompt on A completes.
func TestFleetNATSCut(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ns := runNATS(t, dir, -1)
	url := ns.ClientURL()
	port := ns.Addr().(*net.TCPAddr).Port
	fleet := fmt.Sprintf("t%d", time.Now().UnixNano())
	a := startDaemon(t, "--nats", url, "--node", "A", "--fleet", fleet,
		"--", binPath, "demo-agent", "--chunks", "300", "--pace", "15ms", "--tool-calls", "0")
	b := fleetNode(t, url, fleet, "B")
	c := fleetNode(t, url, fleet, "C")
	owner := dial(t, a)
	acpInit(t, owner, 1)
	sid, _ := field(owner.call(1, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}}), "result", "sessionId").(string)
	var viewers []*client
	for _, d := range []*daemon{b, c} {
		v := dial(t, d)
		id := 0
		waitListed(v, &id, sid, "node A", func(m map[string]any) bool { return m["node"] == "A" })
		v.call(100, "bridge/hello", map[string]any{"envelope": true})
		v.call(101, "bridge/attach", map[string]any{"sessionId": sid, "since": 0})
		viewers = append(viewers, v)
	}
	owner.request(2, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "stream"}}})
	events(viewers[0], sid, 1, 50) // mid-stream on B
	ns.Shutdown()
	ns.WaitForShutdown()
	time.Sleep(2 * time.Second) // the outage itself
	runNATS(t, dir, port)
	if pr, _ := owner.response(2, 30*time.Second); field(pr, "result", "stopReason") != "end_turn" {
		t.Fatalf("A's prompt across the NATS outage: %v", pr)
	}
	oid := 10
	end := uint64(listed(owner, &oid, sid)["seq"].(float64))
	if end < 300 {
		t.Fatalf("A's session seq %d after a 300-chunk turn", end)
	}
	onB := events(viewers[0], sid, 51, end)
	onC := events(viewers[1], sid, 1, end)
	for seq := uint64(51); seq <= end; seq++ {
		if onB[seq] != onC[seq] {
			t.Fatalf("seq %d: B got %s, C got %s", seq, onB[seq], onC[seq])
		}
	}
}

// TestSingleNodeNoFleet: without --nats nothing names a node.
func TestSingleNodeNoFleet(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	cl := dial(t, d)
	cl.call(1, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}})
	nw := cl.call(2, "session/new", map[string]any{"cwd": "/tmp", "mcpServers": []any{}})
	sid, _ := field(nw, "result", "sessionId").(string)
	id := 2
	row := listed(cl, &id, sid)
	if row == nil {
		t.Fatalf("session %s not listed", sid)
	}
	if _, has := row["node"]; has {
		t.Fatalf("a single daemon lists a node: %v", row)
	}
	if logs := d.logs(); strings.Contains(logs, "src=fleet") || strings.Contains(logs, "joined the fleet") {
		t.Fatalf("a single daemon logged about a fleet:\n%s", d.logs())
	}
}
