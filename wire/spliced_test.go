package wire

import (
	"bytes"
	"strings"
	"testing"
)

// Spliced puts repl where body[start:end] was and frames the line, on both
// sides of every inline size and past the largest.
func TestSpliced(t *testing.T) {
	for _, n := range []int{0, 1, 40, 71, 72, 73, 135, 136, 137, 263, 264, 265, 423, 424, 425, 935, 936, 937, 5000} {
		pad := strings.Repeat("x", n)
		body := []byte(`{"jsonrpc":"2.0","id":17,"result":"` + pad + `"}`)
		start := bytes.Index(body, []byte("17"))
		m := Spliced(body, start, start+2, []byte(`"c-1"`))
		want := `{"jsonrpc":"2.0","id":"c-1","result":"` + pad + `"}`
		if string(m.Body()) != want || string(m.Line()) != want+"\n" {
			t.Fatalf("pad %d: Spliced = %q", n, m.Line())
		}
		if cap(m.Line()) != len(m.Line()) {
			t.Fatalf("pad %d: the line has spare capacity %d: an append could write into another message", n, cap(m.Line())-len(m.Line()))
		}
		// The line is the message's own: changing body afterwards changes nothing.
		body[start] = '9'
		if string(m.Body()) != want {
			t.Fatalf("pad %d: the message shares body's bytes", n)
		}
		if f := m.Frame(); !bytes.HasSuffix(f, []byte(want)) {
			t.Fatalf("pad %d: Frame = %q", n, f)
		}
	}
	body := []byte(`{"jsonrpc":"2.0","method":"m"}`)
	if m := Spliced(body, -1, -1, []byte("9")); string(m.Line()) != string(body)+"\n" {
		t.Fatalf("no span: Spliced = %q", m.Line())
	}
}

// An answer of up to 936 bytes is one allocation: its Msg and its line
// together.
func TestAllocsSpliced(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates; the Makefile runs TestAllocs without -race")
	}
	for _, tc := range []struct {
		pad  int
		want float64
	}{{10, 1}, {100, 1}, {400, 1}, {880, 1}, {2000, 2}} {
		body := []byte(`{"jsonrpc":"2.0","id":17,"result":"` + strings.Repeat("x", tc.pad) + `"}`)
		start := bytes.Index(body, []byte("17"))
		repl := []byte(`"c3-0000000017"`)
		var sink *Msg
		got := testing.AllocsPerRun(100, func() { sink = Spliced(body, start, start+2, repl) })
		if got != tc.want {
			t.Errorf("a %d-byte answer: %.0f allocations, want %.0f", len(sink.Line()), got, tc.want)
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
