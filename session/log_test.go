package session

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/agentbridge/agentbridge/wire"
)

// sseLike stands for an SSE encoding: one more copy of the body.
func sseLike(m *wire.Msg) []byte {
	return append(append(append(make([]byte, 0, m.Size()+8), "data: "...), m.Body()...), "\n\n"...)
}

// useEncodings asks m for every cached encoding, as a WebSocket, an SSE
// and an enveloped recipient would.
func useEncodings(m *wire.Msg) {
	m.Frame()
	m.Encoded(wire.SSEEvent, sseLike)
	m.Enveloped().Frame()
}

// TestLogHoldsWhatItCharges floods a log past its budget with ~200-byte
// events whose every cached encoding is built, after the append (as the
// fan-out's recipients build them) and again on the messages replay hands
// out (as a catching-up connection does): the heap the log keeps must stay
// within what it charged, and what it charged within its budget.
func TestLogHoldsWhatItCharges(t *testing.T) {
	const budget = 8 << 20
	b := &logBudget{max: budget}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)

	l := newEventLog("s1", 0, budget, b)
	pad := make([]byte, 150)
	for i := range pad {
		pad[i] = 'x'
	}
	const events = 60000 // ~20 MB of lines: the log must drop most
	for i := 1; i <= events; i++ {
		m := wire.New([]byte(fmt.Sprintf(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":%d,"t":"%s"}}`, i, pad)))
		m.SessionID, m.Seq = "s1", uint64(i)
		l.append(m)
		useEncodings(m) // the live fan-out, after the log kept the event
	}
	// A catch-up from the oldest kept event to the end.
	var cur uint64
	for {
		ms := l.sinceN(cur, 256, 64<<10)
		if len(ms) == 0 {
			break
		}
		for _, m := range ms {
			useEncodings(m)
		}
		cur = ms[len(ms)-1].Seq
	}
	if cur != events {
		t.Fatalf("replay ended at seq %d, want %d", cur, events)
	}
	for _, m := range l.last(100) {
		useEncodings(m)
	}

	runtime.GC()
	runtime.ReadMemStats(&after)
	held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if l.bytes > budget {
		t.Fatalf("log charged %d bytes, over its budget %d", l.bytes, budget)
	}
	if l.bytes < budget*3/4 {
		t.Fatalf("log charged %d bytes: it should fill its budget %d", l.bytes, budget)
	}
	if got := b.used.Load(); got != int64(l.bytes) {
		t.Fatalf("budget used %d, log charged %d", got, l.bytes)
	}
	// The heap the log holds (its lines and its ring) is at most what it
	// charged; 64 KiB for the test's own odds and ends.
	if held > int64(l.bytes)+64<<10 {
		t.Fatalf("log holds %d bytes of heap (%d events) but charged %d: encodings cached on logged events are not counted", held, l.n, l.bytes)
	}
	t.Logf("%d events kept: %d bytes charged, %d bytes of heap", l.n, l.bytes, held)

	l.release()
	if got := b.used.Load(); got != 0 || l.bytes != 0 {
		t.Fatalf("after release: budget used %d, log charged %d, want 0, 0", got, l.bytes)
	}
	runtime.KeepAlive(l)
}

// TestLogReplayMsgsAreFresh: a message replay hands out is not the one the
// fan-out shared, so nothing its recipients cache stays in the log, and it
// carries the event's session, seq and bytes.
func TestLogReplayMsgsAreFresh(t *testing.T) {
	l := newEventLog("s1", 0, 1<<20, nil)
	m := wire.New([]byte(`{"a":1}`))
	m.SessionID, m.Seq = "s1", 7
	l.append(m)
	got := l.since(0)
	if len(got) != 1 {
		t.Fatalf("since(0) = %d events, want 1", len(got))
	}
	r := got[0]
	if r == m {
		t.Fatal("replay handed out the fanned-out Msg itself")
	}
	if r.SessionID != "s1" || r.Seq != 7 || string(r.Line()) != "{\"a\":1}\n" {
		t.Fatalf("replayed %q %d %q", r.SessionID, r.Seq, r.Line())
	}
	if string(r.Enveloped().Body()) != string(m.Enveloped().Body()) {
		t.Fatalf("replayed envelope %s, fanned-out %s", r.Enveloped().Body(), m.Enveloped().Body())
	}
}

// BenchmarkLogReplay is one catch-up chunk (256 events of ~200 bytes) read
// from the log and framed for a WebSocket: the cost of a fresh Msg per
// replayed event (an allocation beside the frame the recipient needs
// anyway), per event.
func BenchmarkLogReplay(b *testing.B) {
	l := newEventLog("s1", 0, 64<<20, nil)
	body := []byte(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"` + string(make([]byte, 100)) + `"}}}}`)
	for i := 1; i <= 4096; i++ {
		m := wire.New(body)
		m.SessionID, m.Seq = "s1", uint64(i)
		l.append(m)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, m := range l.sinceN(uint64(i%16)*256, 256, 256<<10) {
			m.Frame()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*256), "ns/event")
}
