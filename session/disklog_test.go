package session

import (
	"fmt"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/store"
)

// diskRig is a hub journaling to a real store, with a memory budget far
// below what the test streams, so catch-up must read the disk.
func diskRig(t *testing.T, dir string, so store.Options) (*rig, *store.Store, []store.Session) {
	t.Helper()
	st, rec, err := store.Open(dir, so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return newRig(t, Config{Journal: st, ReplayMemory: 64 << 10}), st, rec
}

// pumpAll drains fc and pumps cl as a transport's writer does, waiting for
// the wake of a chunk read from disk, until cl has caught up.
func pumpAll(t *testing.T, h *Hub, cl *Client, fc *lagConn, woken chan struct{}) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if fc.drain() > 0 || h.Pump(cl) {
			continue
		}
		if !cl.Catching() {
			return
		}
		select {
		case <-woken:
		case <-deadline:
			t.Fatal("catch-up from disk never woke the connection")
		}
	}
}

// wakeChan returns the channel cl's lagConn signals on Wake.
func wakeChan(cl *Client) chan struct{} {
	fc := cl.conn.(*lagConn)
	fc.woken = make(chan struct{}, 1)
	return fc.woken
}

// checkSeqs asserts fc saw the events from..to in order and nothing else
// but the gaps in want (their bodies).
func checkSeqs(t *testing.T, fc *lagConn, from, to int, gaps ...string) {
	t.Helper()
	next, g := from, 0
	for _, m := range fc.seen {
		if m.Seq == 0 {
			if g >= len(gaps) || string(m.Body()) != gaps[g] {
				t.Fatalf("unexpected control message %s (gaps wanted: %q)", m.Body(), gaps)
			}
			g++
			continue
		}
		if m.Seq != uint64(next) {
			t.Fatalf("got seq %d, want %d", m.Seq, next)
		}
		if string(m.Body()) != string(update("s1", next)) {
			t.Fatalf("seq %d: body %s", next, m.Body())
		}
		next++
	}
	if next != to+1 || g != len(gaps) {
		t.Fatalf("got events %d..%d and %d gaps, want %d..%d and %d", from, next-1, g, from, to, len(gaps))
	}
}

// TestLagCatchesUpFromDisk: a lagging connection whose cursor falls out
// of the memory log (64 KiB for 20,000 events) is fed from the state
// directory, in order, with no duplicate and no gap, then from memory,
// and rejoins live delivery.
func TestLagCatchesUpFromDisk(t *testing.T) {
	r, _, _ := diskRig(t, t.TempDir(), store.Options{})
	fc := &lagConn{limit: 10}
	cl := r.hub.Open(fc, ConnInfo{Role: auth.RoleClient, Transport: "test"})
	woken := wakeChan(cl)
	r.from(cl, `{"jsonrpc":"2.0","id":"new","method":"session/new","params":{}}`)
	f := r.forwarded()
	r.agentSays(`{"jsonrpc":"2.0","id":%v,"result":{"sessionId":"s1"}}`, f["id"])
	fc.drain()
	fc.seen = nil
	const n = 20000
	for i := 1; i <= n; i++ {
		r.hub.AgentMessage(1, update("s1", i))
		if i%5000 == 0 {
			pumpAll(t, r.hub, cl, fc, woken) // catches up now and then
		}
	}
	pumpAll(t, r.hub, cl, fc, woken)
	r.hub.AgentMessage(1, update("s1", n+1))
	fc.drain()
	checkSeqs(t, fc, 1, n+1)
	if st := r.hub.Stats(); st.ReplayBytes > 64<<10 {
		t.Fatalf("memory logs hold %d bytes, over the 64 KiB budget", st.ReplayBytes)
	}
}

// TestAttachSinceFromDisk: bridge/attach {since} older than the memory
// log replays from disk, then memory; with the disk's own retention
// passed, one exact gap names what neither holds. After a restart the
// same history comes from disk again.
func TestAttachSinceFromDisk(t *testing.T) {
	dir := t.TempDir()
	so := store.Options{MaxEvents: 6000}
	r, st, _ := diskRig(t, dir, so)
	a, fa := r.open(auth.RoleClient)
	r.newSession(a, fa, "s1")
	const n = 10000
	for i := 1; i <= n; i++ {
		r.hub.AgentMessage(1, update("s1", i))
	}
	attach := func(h *Hub, since int) *lagConn {
		fc := &lagConn{limit: 50}
		cl := h.Open(fc, ConnInfo{Role: auth.RoleViewer, Transport: "test"})
		woken := wakeChan(cl)
		h.Handle(cl, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"s1","since":%d}}`, since)))
		fc.drain()
		want := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"result":{"sessionId":"s1","seq":%d,"status":"`, n)
		if len(fc.seen) == 0 || string(fc.seen[0].Body()[:len(want)]) != want {
			t.Fatalf("attach answer %v", fc.seen)
		}
		fc.seen = fc.seen[1:]
		pumpAll(t, h, cl, fc, woken)
		return fc
	}
	// Within the disk's retention: everything, no gap.
	checkSeqs(t, attach(r.hub, n-5000), n-5000+1, n)
	// Past it: the disk keeps at least the last 6,000 (whole runs of 512,
	// so its oldest is at a run's start).
	fc := attach(r.hub, 100)
	first := int(fc.seen[1].Seq)
	if first > n-6000+1 || first < 1000 {
		t.Fatalf("after the gap came seq %d", first)
	}
	checkSeqs(t, fc, first, n, fmt.Sprintf(`{"jsonrpc":"2.0","method":"bridge/gap","params":{"sessionId":"s1","fromSeq":101,"toSeq":%d,"reason":"%s"}}`, first-1, reasonNotKept))

	// After a restart, restored sessions catch up from disk too.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	r2, _, rec := diskRig(t, dir, so)
	r2.hub.Restore(restoredFrom(rec))
	checkSeqs(t, attach(r2.hub, n-5500), n-5500+1, n)
}
