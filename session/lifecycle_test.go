package session

import (
	"strconv"
	"strings"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/store"
)

func TestDuplicateKeysRefused(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	for _, tc := range []struct{ msg, id, member string }{
		{`{"jsonrpc":"2.0","id":5,"method":"session/prompt","params":{"sessionId":"s1","sessionId":"s2","prompt":[]}}`, "5", "params.sessionId"},
		{`{"jsonrpc":"2.0","id":6,"id":7,"method":"x"}`, "null", `"id"`},
		{`{"jsonrpc":"2.0","id":8,"method":"x","method":"y"}`, "8", `"method"`},
		{`{"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":"s1"},"params":{"sessionId":"s2"}}`, "null", `"params"`},
	} {
		r.from(a, "%s", tc.msg)
		m := one(t, fa)
		if code(m) != codeInvalidRequest || !strings.Contains(m["error"].(map[string]any)["message"].(string), tc.member) {
			t.Fatalf("%s: got %v", tc.msg, m)
		}
		if got := jsonID(m["id"]); got != tc.id {
			t.Fatalf("%s: answered id %s, want %s", tc.msg, got, tc.id)
		}
		if s := r.ag.take(); len(s) != 0 {
			t.Fatalf("%s reached the agent: %v", tc.msg, s)
		}
	}
}

func jsonID(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case float64:
		return fmtFloat(x)
	case string:
		return `"` + x + `"`
	}
	return "?"
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// acpRig is a rig whose agent answered initialize as an ACP agent of the
// given protocol version, with client a owning session s1.
func acpRig(t *testing.T, version int) (*rig, *Client, *fakeConn) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	r.from(a, `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":%d}}`, version)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"protocolVersion":%d}}`, r.forwarded()["id"], version)
	r.from(a, `{"jsonrpc":"2.0","id":1,"method":"session/new","params":{"cwd":"/"}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"sessionId":"s1"}}`, r.forwarded()["id"])
	fa.take(t)
	return r, a, fa
}

func methods(ms []map[string]any) []string {
	var out []string
	for _, m := range ms {
		if s, ok := m["method"].(string); ok {
			out = append(out, s)
		} else if _, ok := m["error"]; ok {
			out = append(out, "error")
		} else {
			out = append(out, "result")
		}
	}
	return out
}

func TestResumeByPlainClientAttachesAndTakesOver(t *testing.T) {
	r, a, _ := acpRig(t, 1)
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":1}}`)
	r.hub.Closed(a)
	b, fb := r.open(auth.RoleClient)
	// Before resuming, b may not prompt the session.
	r.from(b, `{"jsonrpc":"2.0","id":7,"method":"session/prompt","params":{"sessionId":"s1","prompt":[]}}`)
	if m := one(t, fb); code(m) != codeUnknownSession {
		t.Fatalf("prompt before resume: %v", m)
	}
	r.from(b, `{"jsonrpc":"2.0","id":8,"method":"session/resume","params":{"sessionId":"s1","cwd":"/"}}`)
	f := r.forwarded()
	// Attached as soon as forwarded: what the agent sends before its answer reaches b.
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":2}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{}}`, f["id"])
	got := fb.take(t)
	if len(got) != 2 || field(got[0], "params", "n") != float64(2) || got[1]["id"] != float64(8) {
		t.Fatalf("b got %v", got)
	}
	r.from(b, `{"jsonrpc":"2.0","id":9,"method":"session/prompt","params":{"sessionId":"s1","prompt":[]}}`)
	r.forwarded()
	// b owns it: agent requests reach b.
	r.agentSays(`{"jsonrpc":"2.0","id":0,"method":"session/request_permission","params":{"sessionId":"s1","options":[]}}`)
	if m := one(t, fb); m["method"] != "session/request_permission" {
		t.Fatalf("b did not get the permission request: %v", m)
	}
}

func TestResumeRefusedDetachesAndOwnerStays(t *testing.T) {
	r, _, fa := acpRig(t, 1)
	b, fb := r.open(auth.RoleClient)
	r.from(b, `{"jsonrpc":"2.0","id":8,"method":"session/resume","params":{"sessionId":"s1","cwd":"/"}}`)
	f := r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"error":{"code":-32002,"message":"no such session"}}`, f["id"])
	if m := one(t, fb); code(m) != -32002 {
		t.Fatalf("b: %v", m)
	}
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":1}}`)
	if ms := fb.take(t); len(ms) != 0 {
		t.Fatalf("b still attached after a refused resume: %v", ms)
	}
	if m := one(t, fa); field(m, "params", "n") != float64(1) {
		t.Fatalf("owner a: %v", m)
	}
	// Ownership never moves from a connected owner.
	r.from(b, `{"jsonrpc":"2.0","id":9,"method":"session/resume","params":{"sessionId":"s1","cwd":"/"}}`)
	f = r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{}}`, f["id"])
	fb.take(t)
	r.agentSays(`{"jsonrpc":"2.0","id":0,"method":"session/request_permission","params":{"sessionId":"s1","options":[]}}`)
	for _, m := range fb.take(t) {
		if m["method"] != "bridge/status" {
			t.Fatalf("an attached non-owner got the owner's agent request: %v", m)
		}
	}
	if m := one(t, fa); m["method"] != "session/request_permission" {
		t.Fatalf("owner a: %v", m)
	}
}

func TestLoadReplayGoesToLoaderOnlyAndIsNotLogged(t *testing.T) {
	r, _, fa := acpRig(t, 1)
	for i := 1; i <= 3; i++ {
		r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":%d}}`, i)
	}
	fa.take(t)
	b, fb := r.open(auth.RoleClient)
	r.from(b, `{"jsonrpc":"2.0","id":4,"method":"session/load","params":{"sessionId":"s1","cwd":"/","mcpServers":[]}}`)
	f := r.forwarded()
	for i := 1; i <= 3; i++ {
		r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":%d}}`, i)
	}
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":null}`, f["id"])
	if ms := fa.take(t); len(ms) != 0 {
		t.Fatalf("the other attached client saw the replay: %v", ms)
	}
	if ms := fb.take(t); len(ms) != 4 || ms[3]["id"] != float64(4) {
		t.Fatalf("loader got %v", ms)
	}
	if s := r.hub.Sessions()[0]; s.Seq != 3 || s.Clients != 2 {
		t.Fatalf("session after load: %+v", s)
	}
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":4}}`)
	if len(fa.take(t)) != 1 || len(fb.take(t)) != 1 || r.hub.Sessions()[0].Seq != 4 {
		t.Fatalf("live event after the load")
	}
}

func TestForkIsTheCallersFromItsFirstEvent(t *testing.T) {
	r, _, _ := acpRig(t, 1)
	b, fb := r.open(auth.RoleClient)
	r.from(b, `{"jsonrpc":"2.0","id":5,"method":"session/fork","params":{"sessionId":"s1","cwd":"/"}}`)
	f := r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s2","n":1}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"sessionId":"s2"}}`, f["id"])
	for r.hub.Pump(b) {
	}
	ms := fb.take(t)
	if got := methods(ms); len(got) != 2 || got[0] != "result" || got[1] != "session/update" {
		t.Fatalf("b got %v", ms)
	}
	r.from(b, `{"jsonrpc":"2.0","id":6,"method":"session/prompt","params":{"sessionId":"s2","prompt":[]}}`)
	r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s2","n":2}}`)
	if m := one(t, fb); field(m, "params", "n") != float64(2) {
		t.Fatalf("b: %v", m)
	}
}

func TestCloseByOwnerAndByOther(t *testing.T) {
	r, a, fa := acpRig(t, 1)
	b, fb := r.open(auth.RoleClient)
	r.from(b, `{"jsonrpc":"2.0","id":1,"method":"session/resume","params":{"sessionId":"s1","cwd":"/"}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{}}`, r.forwarded()["id"])
	fb.take(t)
	// Another client closing while the owner is connected: only detached.
	r.from(b, `{"jsonrpc":"2.0","id":2,"method":"session/close","params":{"sessionId":"s1"}}`)
	if s := r.ag.take(); len(s) != 0 {
		t.Fatalf("a non-owner's close reached the agent: %v", s)
	}
	if m := one(t, fb); m["id"] != float64(2) || m["result"] == nil {
		t.Fatalf("b: %v", m)
	}
	if s := r.hub.Sessions()[0]; s.Clients != 1 || s.Status != StatusIdle {
		t.Fatalf("after b's close: %+v", s)
	}
	// The owner's close is forwarded and closes the session.
	r.from(a, `{"jsonrpc":"2.0","id":3,"method":"session/close","params":{"sessionId":"s1"}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{}}`, r.forwarded()["id"])
	got := fa.take(t)
	if len(got) != 2 || got[0]["id"] != float64(3) || field(got[1], "params", "status") != "closed" {
		t.Fatalf("a: %v", got)
	}
	if s := r.hub.Sessions(); len(s) != 1 || s[0].Status != StatusClosed {
		t.Fatalf("after close: %+v", s)
	}
	// Delete takes it out of bridge/sessions.
	r.from(a, `{"jsonrpc":"2.0","id":4,"method":"session/delete","params":{"sessionId":"s1"}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{}}`, r.forwarded()["id"])
	if s := r.hub.Sessions(); len(s) != 0 {
		t.Fatalf("after delete: %+v", s)
	}
}

func TestCancelRemappedToTheSendersOwnRequest(t *testing.T) {
	r, a, _ := acpRig(t, 1)
	b, _ := r.open(auth.RoleClient)
	r.from(a, `{"jsonrpc":"2.0","id":9009,"method":"x"}`)
	fwdA := r.forwarded()
	r.from(b, `{"jsonrpc":"2.0","id":9009,"method":"x"}`)
	fwdB := r.forwarded()
	for _, tc := range []struct{ method, param string }{{"$/cancel_request", "requestId"}, {"$/cancelRequest", "id"}, {"notifications/cancelled", "requestId"}} {
		r.from(b, `{"jsonrpc":"2.0","method":"%s","params":{"%s":9009}}`, tc.method, tc.param)
		f := r.forwarded()
		if f["method"] != tc.method || field(f, "params", tc.param) != fwdB["id"] {
			t.Fatalf("%s reached the agent as %v; b's request is %v, a's %v", tc.method, f, fwdB["id"], fwdA["id"])
		}
	}
	// MCP's cancel ends the call: the server will not answer it.
	if st := r.hub.Stats(); st.PendingCalls != 1 {
		t.Fatalf("after notifications/cancelled %d calls pending, want a's only", st.PendingCalls)
	}
	r.from(a, `{"jsonrpc":"2.0","method":"$/cancel_request","params":{"requestId":9009}}`)
	if f := r.forwarded(); field(f, "params", "requestId") != fwdA["id"] {
		t.Fatalf("a's cancel reached the agent as %v", f)
	}
	// An id the client has not got in flight is dropped, never forwarded.
	r.from(b, `{"jsonrpc":"2.0","method":"$/cancel_request","params":{"requestId":1}}`)
	if s := r.ag.take(); len(s) != 0 {
		t.Fatalf("a cancel of nothing reached the agent: %v", s)
	}
}

func TestAgentCancelAndRetireSendProtocolCancel(t *testing.T) {
	r, a, fa := acpRig(t, 1)
	op, fo := r.open(auth.RoleOperator)
	r.from(op, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1"}}`)
	fo.take(t)
	r.agentSays(`{"jsonrpc":"2.0","id":0,"method":"session/request_permission","params":{"sessionId":"s1","options":[]}}`)
	req := one(t, fa)
	one(t, fo)
	// The agent cancels its request 0: clients hear it under the id they saw.
	r.agentSays(`{"jsonrpc":"2.0","method":"$/cancel_request","params":{"requestId":0}}`)
	if m := one(t, fa); m["method"] != "$/cancel_request" || field(m, "params", "requestId") != req["id"] {
		t.Fatalf("a: %v (request id %v)", m, req["id"])
	}
	one(t, fo)
	// Another request, answered by the owner: the operator hears
	// bridge/resolved and the ACP cancel.
	r.agentSays(`{"jsonrpc":"2.0","id":1,"method":"session/request_permission","params":{"sessionId":"s1","options":[]}}`)
	req = one(t, fa)
	fo.take(t)
	r.from(a, `{"jsonrpc":"2.0","id":%v,"result":{"outcome":{"outcome":"cancelled"}}}`, req["id"])
	got := fo.take(t)
	if ms := methods(got); len(ms) != 2 || ms[0] != "bridge/resolved" || ms[1] != "$/cancel_request" || field(got[1], "params", "requestId") != req["id"] {
		t.Fatalf("operator got %v", got)
	}
	// Its cancellation error answer is swallowed.
	r.from(op, `{"jsonrpc":"2.0","id":%v,"error":{"code":-32800,"message":"cancelled"}}`, req["id"])
	if ms := fo.take(t); len(ms) != 0 {
		t.Fatalf("operator got %v", ms)
	}
}

func TestProgressTokensPerClient(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	b, fb := r.open(auth.RoleClient)
	r.from(a, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"long","_meta":{"progressToken":2}}}`)
	fwdA := r.forwarded()
	r.from(b, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"long","_meta":{"progressToken":2}}}`)
	fwdB := r.forwarded()
	ta, tb := field(fwdA, "params", "_meta", "progressToken"), field(fwdB, "params", "_meta", "progressToken")
	if ta == tb || ta == float64(2) {
		t.Fatalf("tokens reached the agent as %v and %v", ta, tb)
	}
	r.agentSays(`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":%q,"progress":1}}`, tb)
	if m := one(t, fb); field(m, "params", "progressToken") != float64(2) || field(m, "params", "progress") != float64(1) {
		t.Fatalf("b: %v", m)
	}
	if ms := fa.take(t); len(ms) != 0 {
		t.Fatalf("a saw b's progress: %v", ms)
	}
	// LSP tokens too, and they end with the request.
	r.from(a, `{"jsonrpc":"2.0","id":3,"method":"textDocument/references","params":{"workDoneToken":"w","partialResultToken":"p"}}`)
	f := r.forwarded()
	wd := field(f, "params", "workDoneToken").(string)
	r.agentSays(`{"jsonrpc":"2.0","method":"$/progress","params":{"token":%q,"value":{"kind":"begin"}}}`, wd)
	if m := one(t, fa); field(m, "params", "token") != "w" {
		t.Fatalf("a: %v", m)
	}
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":[]}`, f["id"])
	fa.take(t)
	r.agentSays(`{"jsonrpc":"2.0","method":"$/progress","params":{"token":%q,"value":{"kind":"end"}}}`, wd)
	if len(fb.take(t)) != 0 || len(fa.take(t)) != 0 {
		t.Fatalf("progress for a finished request's bridge token went out")
	}
	r.agentSays(`{"jsonrpc":"2.0","method":"$/progress","params":{"token":"server-own","value":{"kind":"begin"}}}`)
	if len(fb.take(t)) != 1 || len(fa.take(t)) != 1 {
		t.Fatalf("the agent's own token is not broadcast as before")
	}
}

func TestV2StateUpdateDrivesStatus(t *testing.T) {
	r, a, _ := acpRig(t, 2)
	st := func() Status { return r.hub.Sessions()[0].Status }
	r.from(a, `{"jsonrpc":"2.0","id":2,"method":"session/prompt","params":{"sessionId":"s1","prompt":[]}}`)
	if st() != StatusIdle {
		t.Fatalf("a v2 prompt's round trip counted as running: %s", st())
	}
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"messageId":"m1"}}`, r.forwarded()["id"])
	if st() != StatusIdle {
		t.Fatalf("after the ack: %s", st())
	}
	for _, tc := range []struct {
		state string
		want  Status
	}{{"running", StatusRunning}, {"requires_action", StatusAwaitingHITL}, {"running", StatusRunning}, {"idle", StatusIdle}} {
		r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"state_update","state":%q}}}`, tc.state)
		if st() != tc.want {
			t.Fatalf("state %s: status %s, want %s", tc.state, st(), tc.want)
		}
	}
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

func TestLoadInFlightFollowsAResumedConnection(t *testing.T) {
	r, _, _ := acpRig(t, 1)
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":1}}`)
	b, fb := r.open(auth.RoleClient)
	r.from(b, `{"jsonrpc":"2.0","id":"h","method":"bridge/hello","params":{"resume":"0123456789abcdef-key"}}`)
	r.from(b, `{"jsonrpc":"2.0","id":4,"method":"session/load","params":{"sessionId":"s1","cwd":"/","mcpServers":[]}}`)
	f := r.forwarded()
	fb.take(t)
	r.hub.Closed(b)
	b2, fb2 := r.open(auth.RoleClient)
	r.from(b2, `{"jsonrpc":"2.0","id":"h","method":"bridge/hello","params":{"resume":"0123456789abcdef-key"}}`)
	fb2.take(t)
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":1}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":null}`, f["id"])
	got := fb2.take(t)
	if ms := methods(got); len(ms) != 2 || ms[0] != "session/update" || got[1]["id"] != float64(4) {
		t.Fatalf("successor got %v", got)
	}
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":2}}`)
	if s := r.hub.Sessions()[0]; s.Seq != 2 {
		t.Fatalf("a live event after the load was not logged: %+v", s)
	}
}

func TestDeleteLeavesThePersistedState(t *testing.T) {
	dir := t.TempDir()
	st, _, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, Config{Journal: st})
	a, fa := r.open(auth.RoleClient)
	r.newSession(a, fa, "s1")
	r.newSession(a, fa, "s2")
	r.hub.AgentMessage(1, update("s1", 1))
	r.hub.AgentMessage(1, update("s2", 1))
	r.from(a, `{"jsonrpc":"2.0","id":4,"method":"session/delete","params":{"sessionId":"s1"}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{}}`, r.forwarded()["id"])
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st2, rec, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if len(rec) != 1 || rec[0].ID != "s2" {
		t.Fatalf("recovered %+v, want s2 only", rec)
	}
}

func TestV2ResumeReplayFromIsTheAgentsAndNotLoggedTwice(t *testing.T) {
	r, _, fa := acpRig(t, 2)
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":1}}`)
	fa.take(t)
	b, fb := r.open(auth.RoleClient)
	r.from(b, `{"jsonrpc":"2.0","id":3,"method":"session/resume","params":{"sessionId":"s1","cwd":"/","replayFrom":{"type":"start"}}}`)
	f := r.forwarded()
	if field(f, "params", "replayFrom", "type") != "start" {
		t.Fatalf("replayFrom not forwarded unchanged: %v", f)
	}
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":1}}`)
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"state_update","state":"idle"}}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{}}`, f["id"])
	if got := methods(fb.take(t)); len(got) != 3 || got[2] != "result" {
		t.Fatalf("resumer got %v", got)
	}
	if ms := fa.take(t); len(ms) != 0 {
		t.Fatalf("the owner saw the replay: %v", ms)
	}
	if s := r.hub.Sessions()[0]; s.Seq != 1 {
		t.Fatalf("the replay was logged: %+v", s)
	}
	// Without replayFrom the resume's state snapshot is a live event.
	r.from(b, `{"jsonrpc":"2.0","id":4,"method":"session/resume","params":{"sessionId":"s1","cwd":"/"}}`)
	f = r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"state_update","state":"idle"}}}`)
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{}}`, f["id"])
	if s := r.hub.Sessions()[0]; s.Seq != 2 {
		t.Fatalf("a resume without replayFrom: %+v", s)
	}
}
