package session

import (
	"strings"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
)

// TestMirror: a fleet mirror is listed with its node, attached like a
// local session (replay then live, duplicates and stale seqs dropped, a
// hole reported as bridge/gap), its status is the owning node's, it never
// reaches the journal or the local agent, and a local session's id is
// never taken over by a mirror.
func TestMirror(t *testing.T) {
	j := &recJournal{}
	r := newRig(t, Config{Node: "B", Journal: j})
	a, fa := r.open(auth.RoleClient)
	r.newSession(a, fa, "local")
	if r.hub.Mirror("local", "A", StatusIdle) {
		t.Fatal("Mirror took over a session of the local agent")
	}
	if !r.hub.Mirror("rs", "A", StatusRunning) {
		t.Fatal("Mirror refused a new remote session")
	}
	for seq := uint64(1); seq <= 3; seq++ {
		r.hub.MirrorEvent("rs", seq, []byte(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"rs","n":`+string(rune('0'+seq))+`}}`))
	}
	r.hub.MirrorEvent("rs", 2, []byte(`{"dup":true}`)) // redelivered: dropped
	rows := map[string]SessionInfo{}
	for _, in := range r.hub.Sessions() {
		rows[in.SessionID] = in
	}
	if rows["rs"].Node != "A" || rows["rs"].Seq != 3 || rows["rs"].Status != StatusRunning || rows["local"].Node != "B" {
		t.Fatalf("listing %+v", rows)
	}
	v, fv := r.open(auth.RoleViewer)
	r.from(v, `{"jsonrpc":"2.0","id":1,"method":"bridge/hello","params":{"envelope":true}}`)
	fv.take(t)
	r.from(v, `{"jsonrpc":"2.0","id":2,"method":"bridge/attach","params":{"sessionId":"rs","since":1}}`)
	got := fv.take(t)
	if len(got) != 3 || got[1]["params"].(map[string]any)["seq"] != float64(2) || got[2]["params"].(map[string]any)["seq"] != float64(3) {
		t.Fatalf("attach since 1 on a mirror: %v", got)
	}
	// Live: 4, then 6 (5 never reached the stream): the hole is a gap
	// for the next attach, and live delivery carries seq 6.
	r.hub.MirrorEvent("rs", 4, []byte(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"rs","n":4}}`))
	r.hub.MirrorEvent("rs", 6, []byte(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"rs","n":6}}`))
	got = fv.take(t)
	if len(got) != 2 || got[0]["params"].(map[string]any)["seq"] != float64(4) || got[1]["params"].(map[string]any)["seq"] != float64(6) {
		t.Fatalf("live on a mirror: %v", got)
	}
	w, fw := r.open(auth.RoleViewer)
	r.from(w, `{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"rs","since":3}}`)
	got = fw.take(t)
	if len(got) != 4 || got[2]["method"] != "bridge/gap" || got[2]["params"].(map[string]any)["fromSeq"] != float64(5) {
		t.Fatalf("attach since 3 across the hole: %v", got)
	}
	// The owning node's status reaches attached clients; the local agent's
	// restart does not change it.
	r.hub.Mirror("rs", "A", StatusBlocked)
	if m := fv.take(t); len(m) != 1 || m[0]["method"] != "bridge/status" || m[0]["params"].(map[string]any)["status"] != "blocked" {
		t.Fatalf("status change on a mirror: %v", m)
	}
	r.hub.AgentStarted(2)
	for _, in := range r.hub.Sessions() {
		if in.SessionID == "rs" && in.Status != StatusBlocked {
			t.Fatalf("local agent restart changed a mirror's status to %s", in.Status)
		}
	}
	// Requests naming it never reach the local agent.
	r.ag.take()
	r.from(a, `{"jsonrpc":"2.0","id":9,"method":"session/prompt","params":{"sessionId":"rs","prompt":[]}}`)
	m := one(t, fa)
	if code(m) != codeAgentUnavailable || !strings.Contains(m["error"].(map[string]any)["message"].(string), `"A"`) {
		t.Fatalf("prompt to a mirror: %v", m)
	}
	r.from(a, `{"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":"rs"}}`)
	if got := r.ag.take(); len(got) != 0 {
		t.Fatalf("the local agent got %v for a remote session", got)
	}
	for _, e := range j.appended {
		if e == "rs" {
			t.Fatal("a mirror's event reached the journal")
		}
	}
}

type recJournal struct{ appended []string }

func (j *recJournal) Create(string)                         {}
func (j *recJournal) Append(sid string, _ uint64, _ []byte) { j.appended = append(j.appended, sid) }
