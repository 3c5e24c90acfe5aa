package httpfront

import (
	"fmt"
	"strings"
	"testing"
)

// TestMCPLogReplay: events get "N-SEQ" ids in order; a rewind puts back
// exactly the taken events after the id, before what is still queued; and
// what is kept for replay is bounded in events and bytes.
func TestMCPLogReplay(t *testing.T) {
	l := mcpLog{n: 3}
	var all []string
	for i := 1; i <= 5; i++ {
		all = append(all, string(l.event([]byte(fmt.Sprintf("data: %d\n\n", i)))))
	}
	if all[0] != "id: 3-1\ndata: 1\n\n" || all[4] != "id: 3-5\ndata: 5\n\n" {
		t.Fatalf("ids: %q", all)
	}
	l.taken() // a sink wrote 1..5
	l.event([]byte("data: 6\n\n"))
	if got := string(l.rewind(2)); got != all[2]+all[3]+all[4] {
		t.Errorf("rewind(2) = %q, want events 3..5", got)
	}
	if len(l.queued) != 4 || l.queued[0].seq != 3 || l.queued[3].seq != 6 {
		t.Errorf("queue after rewind: %+v, want 3..6", l.queued)
	}
	// An older id puts back the rest: nothing is queued twice.
	if got := string(l.rewind(0)); got != all[0]+all[1] {
		t.Errorf("rewind(0) after rewind(2) = %q, want events 1 and 2", got)
	}
	if len(l.queued) != 6 || l.queued[0].seq != 1 || len(l.sent) != 0 {
		t.Errorf("queue after rewind(0): %+v, sent %+v", l.queued, l.sent)
	}
	l.taken()
	if got := string(l.rewind(6)); got != "" {
		t.Errorf("rewind after the last id = %q", got)
	}

	big := mcpLog{}
	for range mcpReplayEvents + 50 {
		big.event([]byte("data: x\n\n"))
	}
	big.taken()
	if len(big.sent) != mcpReplayEvents || big.sent[0].seq != 51 {
		t.Errorf("kept %d events from seq %d, want the last %d", len(big.sent), big.sent[0].seq, mcpReplayEvents)
	}
	huge := mcpLog{}
	chunk := "data: " + strings.Repeat("y", mcpReplayBytes/3) + "\n\n"
	for range 5 {
		huge.event([]byte(chunk))
	}
	huge.taken()
	if huge.sentBytes > mcpReplayBytes || len(huge.sent) != 2 {
		t.Errorf("kept %d events, %d bytes; want at most %d bytes", len(huge.sent), huge.sentBytes, mcpReplayBytes)
	}
}

// TestMCPResumeRefusals: a Last-Event-ID that is not this server's, or
// names a stream or event the session does not have, is refused with a
// reason; a known one rewinds its stream.
func TestMCPResumeRefusals(t *testing.T) {
	a := &acpConn{mcp: true, streams: map[string]*acpStream{"": {}}}
	st := &acpStream{mcp: mcpLog{n: 1}}
	st.buf = st.mcp.event([]byte("data: \n\n"))
	a.streams["\x011"] = st
	for id, status := range map[string]int{"x": 400, "1": 400, "-1-2": 400, "2-1": 404, "1-9": 404} {
		if _, rp := a.mcpResume(id); rp == nil || rp.Status != status {
			t.Errorf("Last-Event-ID %q: %+v, want %d", id, rp, status)
		}
	}
	st.buf = nil // a sink took the priming event
	st.mcp.taken()
	key, rp := a.mcpResume("1-0")
	if rp != nil || key != "\x011" || string(st.buf) != "id: 1-1\ndata: \n\n" || a.queued != len(st.buf) {
		t.Errorf("resume 1-0: key %q reply %+v buf %q queued %d", key, rp, st.buf, a.queued)
	}
}
