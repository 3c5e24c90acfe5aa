package e2e

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCatchupFromDisk: with --state-dir and a memory budget (1 MiB) far
// below a 100,000-event flood (~15 MB), an owner reading at half the
// agent's speed falls behind what memory holds and is fed from disk: it
// gets every event, in order, without a gap or a disconnect. A client
// attaching afterwards with since=0 and an SSE stream resuming with
// Last-Event-ID get the whole history from disk the same way.
//
// The one thing allowed to cost them events is the store itself: when the
// disk stalls (another process's writeback, an fsync under I/O pressure)
// its bounded queue drops records and counts them
// (agentbridge_store_dropped_total). Those seqs are then in neither log,
// so a client owed them gets them as bridge/gap, exactly: the test checks
// that the gaps are all of that reason and name no more seqs than the
// store dropped, and that every other event arrives.
func TestCatchupFromDisk(t *testing.T) {
	const (
		calib = 10000
		flood = 100000
		total = calib + flood
	)
	d := bpDaemon(t, append([]string{"--state-dir", t.TempDir(), "--replay-memory", "1048576", "--tokens", writeTokens(t)}, fakeAgentCmd()...)...)
	own, sid, _ := halfSpeedOwner(t, d, calib)
	own.send("flood", "stream", map[string]any{"sessionId": sid, "n": flood, "size": 0, "every": 1000})
	readThrough(t, own, total)
	own.check()
	dropped := uint64(d.metric(t, "agentbridge_store_dropped_total"))
	if dropped > 0 {
		t.Logf("the store dropped %d records (the disk fell behind the agent): they may only come as gaps", dropped)
	}
	gaps, sums, rerr := own.snapshot()
	if len(sums) > 0 || rerr != nil {
		t.Fatalf("owner: summaries %v, read error %v", sums, rerr)
	}
	checkDiskGaps(t, "owner", gaps, uint64(own.events.Load()), total, dropped)
	if n := d.metric(t, "agentbridge_hub_lagged_total"); n < 1 {
		t.Fatalf("the owner never fell behind: the test proves nothing")
	}
	if b := d.metric(t, "agentbridge_replay_bytes"); b > 1<<20 {
		t.Fatalf("memory logs hold %v bytes, over --replay-memory", b)
	}

	// A late client asks for everything: memory holds the last few
	// thousand events, disk the rest.
	late := bpDial(t, d.sock, "late", 1<<16).start()
	late.call("hello", "bridge/hello", map[string]any{"envelope": true})
	late.watch(sid)
	var at struct {
		Seq      uint64 `json:"seq"`
		Replayed int    `json:"replayed"`
	}
	if err := json.Unmarshal(late.call("attach", "bridge/attach", map[string]any{"sessionId": sid, "since": 0}), &at); err != nil || at.Seq != total || at.Replayed != total {
		t.Fatalf("attach since 0: %+v %v; want seq and replayed %d", at, err, total)
	}
	bpWait(t, time.Minute, "the late client's replay", func() bool { late.check(); return late.next.Load() > total })
	gaps, _, rerr = late.snapshot()
	if rerr != nil {
		t.Fatalf("late client: read error %v", rerr)
	}
	checkDiskGaps(t, "late client", gaps, uint64(late.events.Load()), total, dropped)

	// An SSE stream resuming from seq 5 reads the rest from disk too.
	req, _ := http.NewRequest("GET", "http://"+d.listen+"/events?session="+sid, nil)
	req.Header.Set("Authorization", "Bearer "+e2eViewerToken)
	req.Header.Set("Last-Event-ID", "5")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("SSE: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	want, gapped := 6, uint64(0)
	done := make(chan struct{})
	timer := time.AfterFunc(time.Minute, func() { resp.Body.Close() })
	defer timer.Stop()
	go func() {
		defer close(done)
		inGap := false
		for want <= total && sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				if line[4:] != strconv.Itoa(want) {
					t.Errorf("SSE event id %s, want %d", line[4:], want)
					return
				}
				want++
			case line == "event: bridge/gap":
				inGap = true
			case inGap && strings.HasPrefix(line, "data: "):
				inGap = false
				var g struct {
					Params struct {
						FromSeq, ToSeq uint64
						Reason         string
					}
				}
				if err := json.Unmarshal([]byte(line[6:]), &g); err != nil || g.Params.FromSeq != uint64(want) || g.Params.ToSeq < g.Params.FromSeq || g.Params.Reason != reasonNotKept {
					t.Errorf("SSE gap %s before event %d (%v)", line[6:], want, err)
					return
				}
				gapped += g.Params.ToSeq - g.Params.FromSeq + 1
				want = int(g.Params.ToSeq) + 1
			}
		}
	}()
	<-done
	if want != total+1 {
		t.Fatalf("SSE stream stopped before event %d (of %d): %v", want, total, sc.Err())
	}
	if gapped > dropped {
		t.Fatalf("SSE: gaps name %d seqs, but the store dropped only %d", gapped, dropped)
	}
}

// reasonNotKept is the hub's bridge/gap reason for events neither the
// memory log nor the state directory holds (docs/protocol.md).
const reasonNotKept = "evicted from the replay log and not in the state directory"

// checkDiskGaps asserts that a client that read total events from a
// session got every one except those its gaps name (the peer checks each
// gap starts where the events stopped), that every gap is one of events
// the state directory does not hold, and that together they name no more
// seqs than the store dropped.
func checkDiskGaps(t *testing.T, who string, gaps []bpGap, events, total, dropped uint64) {
	t.Helper()
	var gapped uint64
	for _, g := range gaps {
		if g.reason != reasonNotKept {
			t.Fatalf("%s: gap %d-%d: reason %q, want %q", who, g.from, g.to, g.reason, reasonNotKept)
		}
		gapped += g.to - g.from + 1
	}
	if gapped > dropped {
		t.Fatalf("%s: gaps %v name %d seqs, but the store dropped only %d: the hub reported events the state directory holds as lost", who, gaps, gapped, dropped)
	}
	if events+gapped != total {
		t.Fatalf("%s: %d events and %d in gaps, want %d in all", who, events, gapped, total)
	}
}

// writeTokens writes netDaemon's tokens file (a client and a viewer) for a
// daemon started another way.
func writeTokens(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(p, []byte("client "+e2eClientToken+"\nviewer "+e2eViewerToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
