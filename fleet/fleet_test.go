package fleet

import (
	"context"
	"encoding/json"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentbridge/agentbridge/session"
)

func TestEncodeIsSubjectSafeAndReversible(t *testing.T) {
	token := regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	for _, id := range []string{"sess_1", "a.b.c", "*", ">", "with space", "x/y\\z", "ünïcødé", "a\x00b", strings.Repeat("z", 500)} {
		enc := Encode(id)
		if !token.MatchString(enc) {
			t.Errorf("Encode(%q) = %q: not one subject token", id, enc)
		}
		if back, err := Decode(enc); err != nil || back != id {
			t.Errorf("Decode(Encode(%q)) = %q, %v", id, back, err)
		}
	}
}

func TestCheckNameNamesTheValue(t *testing.T) {
	for _, bad := range []string{"", "a.b", "a b", "*", ">", strings.Repeat("n", 65)} {
		err := CheckName("--node", bad)
		if err == nil || !strings.Contains(err.Error(), "--node") || !strings.Contains(err.Error(), `"`+bad+`"`) {
			t.Errorf("CheckName(%q) = %v: want an error naming the flag and the value", bad, err)
		}
	}
	for _, good := range []string{"A", "node-1", "eu_west_2"} {
		if err := CheckName("--fleet", good); err != nil {
			t.Errorf("CheckName(%q) = %v", good, err)
		}
	}
}

func startNATS(t *testing.T) string {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS not ready")
	}
	t.Cleanup(ns.Shutdown)
	return ns.ClientURL()
}

// fakeHub is a hub with fixed local sessions that records what the fleet
// mirrors into it.
type fakeHub struct {
	local []session.SessionInfo

	mu      sync.Mutex
	status  map[string]session.Status
	node    map[string]string
	events  map[string][]uint64
	changed chan struct{}
}

func newFakeHub(local ...session.SessionInfo) *fakeHub {
	return &fakeHub{local: local, status: map[string]session.Status{}, node: map[string]string{}, events: map[string][]uint64{}, changed: make(chan struct{}, 1000)}
}

func (h *fakeHub) Sessions() []session.SessionInfo { return h.local }
func (h *fakeHub) Mirror(sid, node string, st session.Status) bool {
	h.mu.Lock()
	h.status[sid], h.node[sid] = st, node
	h.mu.Unlock()
	h.signal()
	return true
}
func (h *fakeHub) MirrorEvent(sid string, seq uint64, body []byte) bool {
	h.mu.Lock()
	h.events[sid] = append(h.events[sid], seq)
	h.mu.Unlock()
	h.signal()
	return true
}

// signal wakes waitFor; a full channel already will.
func (h *fakeHub) signal() {
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

func (h *fakeHub) waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		h.mu.Lock()
		done := ok()
		h.mu.Unlock()
		if done {
			return
		}
		select {
		case <-h.changed:
		case <-deadline:
			t.Fatalf("no %s within 10s", what)
		}
	}
}

// TestStreamDedupAndMirror: node A's events reach the stream once each
// with their seq header and message id, even when appended twice (a
// republish); node B mirrors the session with node A and gets them in
// order; when A stops refreshing its entry, B marks the session blocked.
func TestStreamDedupAndMirror(t *testing.T) {
	url := startNATS(t)
	ctx := context.Background()
	sid := "sess.with*odd>chars"
	hubA := newFakeHub(session.SessionInfo{SessionID: sid, Status: session.StatusRunning, Seq: 3, Node: "A"})
	a, err := Join(ctx, Config{URL: url, Node: "A", Fleet: "unit", Refresh: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(hubA); err != nil {
		t.Fatal(err)
	}
	a.Create(sid)
	a.Append(sid, 1, []byte(`{"n":1}`))
	a.Append(sid, 2, []byte(`{"n":2}`))
	a.Append(sid, 3, []byte(`{"n":3}`))

	hubB := newFakeHub()
	b, err := Join(ctx, Config{URL: url, Node: "B", Fleet: "unit", Refresh: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(hubB); err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	hubB.waitFor(t, "events 1..3 mirrored on B", func() bool { return len(hubB.events[sid]) >= 3 })
	hubB.mu.Lock()
	if got := hubB.events[sid]; len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 3 || hubB.node[sid] != "A" {
		t.Fatalf("B mirrored %v from node %q; want [1 2 3] from A", got, hubB.node[sid])
	}
	hubB.mu.Unlock()

	// The stream holds each event once, in runs (one message per run of
	// consecutive events the writer found queued), each with its first
	// seq, its count and an id naming its seqs; the writer's retry of a
	// run (the same message) is dropped as a duplicate.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, "AGENTBRIDGE_unit")
	if err != nil {
		t.Fatal(err)
	}
	stored := func() (seqs []uint64, bodies []string, msgs uint64) {
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for n := uint64(1); n <= info.State.LastSeq; n++ {
			m, err := st.GetMsg(ctx, n)
			if err != nil {
				t.Fatalf("stream message %d: %v", n, err)
			}
			if m.Subject != "agentbridge.unit.s."+Encode(sid) {
				t.Fatalf("subject %q", m.Subject)
			}
			first, _ := strconv.ParseUint(m.Header.Get(SeqHeader), 10, 64)
			count := 1
			if c := m.Header.Get(CountHeader); c != "" {
				count, _ = strconv.Atoi(c)
			}
			wantID := "A." + Encode(sid) + "." + strconv.FormatUint(first, 10)
			if count > 1 {
				wantID += "-" + strconv.FormatUint(first+uint64(count)-1, 10)
			}
			if m.Header.Get(jetstream.MsgIDHeader) != wantID {
				t.Fatalf("message %d: id %q, want %q", n, m.Header.Get(jetstream.MsgIDHeader), wantID)
			}
			run, err := splitRun(m.Data, count)
			if err != nil {
				t.Fatalf("message %d: %v", n, err)
			}
			for k, b := range run {
				seqs = append(seqs, first+uint64(k))
				bodies = append(bodies, string(b))
			}
		}
		return seqs, bodies, info.State.Msgs
	}
	seqs, bodies, msgs := stored()
	if !slices.Equal(seqs, []uint64{1, 2, 3}) || !slices.Equal(bodies, []string{`{"n":1}`, `{"n":2}`, `{"n":3}`}) {
		t.Fatalf("stream holds events %v %v, want 1..3", seqs, bodies)
	}
	a.publishSync([]op{{kind: 'a', sid: sid, seq: 2, body: []byte(`{"n":2}`)}, {kind: 'a', sid: sid, seq: 3, body: []byte(`{"n":3}`)}})
	a.publishSync([]op{{kind: 'a', sid: sid, seq: 2, body: []byte(`{"n":2}`)}, {kind: 'a', sid: sid, seq: 3, body: []byte(`{"n":3}`)}})
	if _, _, after := stored(); after != msgs+1 {
		t.Fatalf("a run published twice added %d messages, want 1", after-msgs)
	}

	// The KV entry names the node.
	kv, err := js.KeyValue(ctx, "agentbridge-unit-sessions")
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, Encode(sid))
	if err != nil {
		t.Fatal(err)
	}
	var ent Entry
	if err := json.Unmarshal(e.Value(), &ent); err != nil || ent.Node != "A" || ent.SessionID != sid {
		t.Fatalf("KV entry %s (%v)", e.Value(), err)
	}

	// A leaves cleanly: its entry says blocked at once.
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	hubB.waitFor(t, "blocked on B", func() bool { return hubB.status[sid] == session.StatusBlocked })
}

// TestNodeSilenceBlocks: an entry whose node stops refreshing it (no clean
// Close: the node died) is marked blocked within the TTL.
func TestNodeSilenceBlocks(t *testing.T) {
	url := startNATS(t)
	ctx := context.Background()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hubB := newFakeHub()
	b, err := Join(ctx, Config{URL: url, Node: "B", Fleet: "unit", Refresh: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(hubB); err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(ctx, "agentbridge-unit-sessions")
	if err != nil {
		t.Fatal(err)
	}
	v, _ := json.Marshal(Entry{SessionID: "s1", Node: "A", Status: session.StatusIdle})
	put := time.Now()
	if _, err := kv.Put(ctx, Encode("s1"), v); err != nil {
		t.Fatal(err)
	}
	hubB.waitFor(t, "s1 mirrored idle", func() bool { return hubB.status["s1"] == session.StatusIdle })
	hubB.waitFor(t, "s1 blocked", func() bool { return hubB.status["s1"] == session.StatusBlocked })
	if took := time.Since(put); took < 300*time.Millisecond || took > 2*time.Second {
		t.Fatalf("blocked after %s; want the TTL (300ms) plus at most a refresh or so", took)
	}
}

// TestNATSRestartLosesNothing: the NATS server stops for about two
// seconds (its store kept) while node A keeps appending; once it is back,
// node B's mirror holds every event exactly once, in order.
func TestNATSRestartLosesNothing(t *testing.T) {
	dir := t.TempDir()
	opts := &natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true}
	ns, err := natsserver.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS not ready")
	}
	url := ns.ClientURL()
	ctx := context.Background()
	sid := "s1"
	a, err := Join(ctx, Config{URL: url, Node: "A", Fleet: "unit", Refresh: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(newFakeHub(session.SessionInfo{SessionID: sid, Status: session.StatusRunning, Node: "A"})); err != nil {
		t.Fatal(err)
	}
	hubB := newFakeHub()
	b, err := Join(ctx, Config{URL: url, Node: "B", Fleet: "unit", Refresh: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(hubB); err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	defer a.Close(ctx)
	seq := uint64(0)
	appendN := func(n int) {
		for range n {
			seq++
			a.Append(sid, seq, []byte(`{"n":`+strconv.FormatUint(seq, 10)+`}`))
		}
	}
	appendN(100)
	hubB.waitFor(t, "the first 100 events on B", func() bool { return len(hubB.events[sid]) >= 100 })

	ns.Shutdown()
	ns.WaitForShutdown()
	appendN(100) // while NATS is down: queued, buffered, retried
	time.Sleep(2 * time.Second)
	opts2 := *opts
	_, ps, _ := net.SplitHostPort(strings.TrimPrefix(url, "nats://"))
	opts2.Port, _ = strconv.Atoi(ps)
	t.Logf("restarting NATS on port %d", opts2.Port)
	ns2, err := natsserver.NewServer(&opts2)
	if err != nil {
		t.Fatal(err)
	}
	go ns2.Start()
	if !ns2.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS not ready after restart")
	}
	t.Cleanup(ns2.Shutdown)
	appendN(100)
	deadline := time.Now().Add(30 * time.Second)
	for {
		hubB.mu.Lock()
		got := append([]uint64(nil), hubB.events[sid]...)
		hubB.mu.Unlock()
		for i, s := range got {
			if s != uint64(i+1) {
				t.Fatalf("B's event %d has seq %d: a hole or a duplicate (%v)", i, s, got)
			}
		}
		if len(got) == int(seq) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("B has %d of %d events 30s after NATS came back", len(got), seq)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
