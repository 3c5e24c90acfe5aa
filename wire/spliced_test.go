package wire

import (
	"bytes"
	"strings"
	"testing"
)

// Spliced puts repl where body[start:end] was and frames the line, on both
// sides of every inline size and past the largest, fresh and recycled.
func TestSpliced(t *testing.T) {
	for _, n := range []int{0, 1, 20, 22, 23, 85, 86, 87, 213, 214, 215, 373, 374, 375, 885, 886, 887, 5000} {
		pad := strings.Repeat("x", n)
		body := []byte(`{"jsonrpc":"2.0","id":17,"result":"` + pad + `"}`)
		start := bytes.Index(body, []byte("17"))
		want := `{"jsonrpc":"2.0","id":"c-1","result":"` + pad + `"}`
		for round := range 3 {
			m := Spliced(body, start, start+2, []byte(`"c-1"`))
			if string(m.Body()) != want || string(m.Line()) != want+"\n" {
				t.Fatalf("pad %d round %d: Spliced = %q", n, round, m.Line())
			}
			if m.SessionID != "" || m.Seq != 0 || m.single {
				t.Fatalf("pad %d round %d: a recycled message kept its past: %+v", n, round, m)
			}
			// The line is the message's own: changing body afterwards changes nothing.
			body[start] = '9'
			if string(m.Body()) != want {
				t.Fatalf("pad %d: the message shares body's bytes", n)
			}
			body[start] = '1'
			if f := m.Frame(); !bytes.HasSuffix(f, []byte(want)) {
				t.Fatalf("pad %d: Frame = %q", n, f)
			}
			m.SessionID, m.Seq = "s", 3
			m.SingleUse()
			Recycle(m)
		}
	}
	body := []byte(`{"jsonrpc":"2.0","method":"m"}`)
	if m := Spliced(body, -1, -1, []byte("9")); string(m.Line()) != string(body)+"\n" {
		t.Fatalf("no span: Spliced = %q", m.Line())
	}
}

// Recycle leaves a message that SingleUse did not mark alone: whoever else
// holds it still reads its bytes.
func TestRecycleNeedsSingleUse(t *testing.T) {
	body := []byte(`{"jsonrpc":"2.0","id":17,"result":"ok"}`)
	start := bytes.Index(body, []byte("17"))
	kept := Spliced(body, start, start+2, []byte("3"))
	Recycle(kept)
	for range 100 { // a recycled kept would come back and be overwritten
		m := Spliced(body, start, start+2, []byte("4"))
		m.SingleUse()
		Recycle(m)
	}
	if got := string(kept.Line()); got != `{"jsonrpc":"2.0","id":3,"result":"ok"}`+"\n" {
		t.Fatalf("a message not marked SingleUse was recycled: it reads %q", got)
	}
	Recycle(New(body)) // not Spliced: nothing happens
	(&Msg{}).SingleUse()
}

// An answer of up to 928 bytes is one allocation, its Msg and its line
// together, and none when its writer recycles it.
func TestAllocsSpliced(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates; the Makefile runs TestAllocs without -race")
	}
	for _, tc := range []struct {
		pad              int
		fresh, recycling float64
	}{{10, 1, 0}, {100, 1, 0}, {400, 1, 0}, {850, 1, 0}, {2000, 2, 2}} {
		body := []byte(`{"jsonrpc":"2.0","id":17,"result":"` + strings.Repeat("x", tc.pad) + `"}`)
		start := bytes.Index(body, []byte("17"))
		repl := []byte(`"c3-0000000017"`)
		var sink *Msg
		if got := testing.AllocsPerRun(100, func() { sink = Spliced(body, start, start+2, repl) }); got != tc.fresh {
			t.Errorf("a %d-byte answer: %.0f allocations, want %.0f", len(sink.Line()), got, tc.fresh)
		}
		got := testing.AllocsPerRun(100, func() {
			m := Spliced(body, start, start+2, repl)
			m.SingleUse()
			Recycle(m)
		})
		if got != tc.recycling {
			t.Errorf("a %d-byte answer, recycled: %.0f allocations, want %.0f", len(sink.Line()), got, tc.recycling)
		}
	}
}

func BenchmarkSpliced(b *testing.B) {
	body := []byte(`{"jsonrpc":"2.0","id":1234567,"result":"` + strings.Repeat("x", 62) + `"}`)
	start := bytes.Index(body, []byte("1234567"))
	repl := []byte("1234")
	b.ReportAllocs()
	for b.Loop() {
		Spliced(body, start, start+7, repl)
	}
}
