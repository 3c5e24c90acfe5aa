package httpfront

import (
	"strings"
	"sync"
	"testing"

	"github.com/agentbridge/agentbridge/wire"
)

func TestEventFraming(t *testing.T) {
	b := string(AppendEvent(nil, wire.GapMsg("s1", 1, 2, "test")))
	if !strings.HasPrefix(b, "event: bridge/gap\ndata: {") || strings.Contains(b, "id:") || !strings.HasSuffix(b, "}\n\n") {
		t.Fatalf("gap event %q", b)
	}
	multi := wire.New([]byte("{\n\"a\": 1\r\n}"))
	if got, want := string(AppendEvent(nil, multi)), "data: {\ndata: \"a\": 1\ndata: \ndata: }\n\n"; got != want {
		t.Fatalf("multi-line body %q, want %q", got, want)
	}
	logged := wire.New([]byte(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1"}}`))
	logged.Seq = 7
	if got, want := string(Event(logged)), "id: 7\ndata: "+string(logged.Body())+"\n\n"; got != want {
		t.Fatalf("logged event %q, want %q", got, want)
	}
	if got, want := string(dataEvent(logged)), "data: "+string(logged.Body())+"\n\n"; got != want {
		t.Fatalf("MCP event %q, want %q", got, want)
	}
}

// TestEventEncodedOnce: every recipient of a broadcast gets the same bytes,
// built once (as WebSocket frames are), on whichever goroutine asks first.
func TestEventEncodedOnce(t *testing.T) {
	m := wire.New([]byte(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":1}}`))
	m.Seq = 3
	const recipients = 16
	got := make([][]byte, recipients)
	var wg sync.WaitGroup
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = Event(m)
		}()
	}
	wg.Wait()
	for i, b := range got {
		if &b[0] != &got[0][0] || len(b) != len(got[0]) {
			t.Fatalf("recipient %d got its own encoding", i)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = Event(m); _ = dataEvent(m) }); n != 0 {
		t.Fatalf("%.0f allocations per recipient once encoded", n)
	}
	if &dataEvent(m)[0] == &Event(m)[0] {
		t.Fatal("the MCP encoding shares the SSE event's bytes")
	}
}

// BenchmarkFanout frames one 1 KiB session event for 100 SSE recipients:
// once for all of them (Event, what the listeners do) against once per
// recipient (what they did before).
func BenchmarkFanout(b *testing.B) {
	body := `{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","text":"` + strings.Repeat("x", 1000) + `"}}`
	const recipients = 100
	b.Run("once", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m := wire.New([]byte(body))
			m.Seq = 9
			for range recipients {
				_ = Event(m)
			}
		}
	})
	b.Run("per-recipient", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m := wire.New([]byte(body))
			m.Seq = 9
			for range recipients {
				_ = AppendEvent(nil, m)
			}
		}
	})
}
