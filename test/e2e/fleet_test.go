package e2e

import (
	"encoding/json"
	"fmt"
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
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
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
	return ns.ClientURL()
}

// fleetNode starts `serve --nats` as node name of fleet, running the demo
// agent with a paced stream of chunks and no tool calls.
func fleetNode(t *testing.T, url, fleet, name string) *daemon {
	t.Helper()
	return startDaemon(t, "--nats", url, "--node", name, "--fleet", fleet,
		"--", binPath, "demo-agent", "--chunks", "40", "--pace", "10ms", "--tool-calls", "0")
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
// prompt sent on B to A's session is refused with -32003 naming node A
// (cross-node forwarding is not done yet).
func TestFleetRemoteAttach(t *testing.T) {
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

	// Driving A's session from B is refused, naming the node.
	bc.call(100, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}})
	bc.request(101, "session/prompt", map[string]any{"sessionId": sid, "prompt": []any{map[string]any{"type": "text", "text": "hi"}}})
	pr, _ := bc.response(101, wait)
	if errCode(pr) != -32003 || !strings.Contains(fmt.Sprint(field(pr, "error", "message")), `"A"`) {
		t.Fatalf("session/prompt on B for A's session: %v, want -32003 naming node A", pr)
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

// TestFleetNodeDeath: when node A is SIGKILLed its session, mirrored on C,
// turns blocked for C's attached viewer within the KV TTL (3 x 2 s), and
// C keeps its history: a new attach with since 0 still replays it.
func TestFleetNodeDeath(t *testing.T) {
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

// TestSingleNodeNoFleet: without --nats nothing names a node.
func TestSingleNodeNoFleet(t *testing.T) {
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
