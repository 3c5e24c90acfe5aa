package agent

import (
	"testing"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// discardStream is a Stream that drops what it is given at once, as the
// event loop does once gnet took the bytes.
type discardStream struct{ n int }

func (d *discardStream) Write(b []byte, limit int) error { d.n += len(b); return nil }
func (d *discardStream) CloseWrite()                     {}
func (d *discardStream) Close()                          {}

// streamProc is a generation in socket mode writing to st.
func streamProc(f Framing, st Stream) *proc {
	s := &Supervisor{cfg: Config{Framing: f, QueueBytes: DefaultQueueBytes, QueueMessages: DefaultQueueMessages}}
	return &proc{s: s, stream: st}
}

var benchRequest = []byte(`{"jsonrpc":"2.0","id":17,"method":"session/prompt","params":{"sessionId":"sess_7f3a9c2e1b","prompt":[{"type":"text","text":"Refactor the frame reader so it never copies."}]}}`)

// BenchmarkEnqueueRequest is a client request on its way to the agent's
// socket: its id replaced by the bridge's, framed, queued.
func BenchmarkEnqueueRequest(b *testing.B) {
	for _, f := range []Framing{FramingNDJSON, FramingLSP} {
		b.Run(f.String(), func(b *testing.B) {
			p := streamProc(f, &discardStream{})
			hd, err := jsonrpc.Peek(benchRequest)
			if err != nil {
				b.Fatal(err)
			}
			id := []byte("123456")
			b.ReportAllocs()
			b.SetBytes(int64(len(benchRequest)))
			for b.Loop() {
				if err := p.enqueueSplice(benchRequest, hd.IDStart, hd.IDEnd, id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The spliced framing is byte for byte the old two copies (the id replaced,
// then framed), NDJSON with raw newlines and LSP alike.
func TestFrameSpliceMatchesTwoCopies(t *testing.T) {
	msgs := [][]byte{benchRequest, []byte("{\n  \"jsonrpc\": \"2.0\",\r\n  \"id\": \"abc\",\n  \"method\": \"x\"\n}")}
	for _, f := range []Framing{FramingNDJSON, FramingLSP} {
		for _, msg := range msgs {
			hd, err := jsonrpc.Peek(msg)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range [][]byte{[]byte("1"), []byte("123456789012")} {
				want := appendFrame(f, nil, jsonrpc.ReplaceID(nil, msg, hd, id))
				got := appendFrameSplice(f, []byte("prefix"), msg, hd.IDStart, hd.IDEnd, id)
				if string(got[len("prefix"):]) != string(want) {
					t.Errorf("%s: spliced %q, want %q", f, got[len("prefix"):], want)
				}
			}
		}
	}
}

// bufStream is a FrameAppender that empties its buffer after each request,
// as the event loop's flush hands it back.
type bufStream struct{ buf []byte }

func (s *bufStream) Write(b []byte, limit int) error { s.buf = append(s.buf[:0], b...); return nil }
func (s *bufStream) CloseWrite()                     {}
func (s *bufStream) Close()                          {}
func (s *bufStream) AppendFrame(f Framing, msg []byte, start, end int, repl []byte, limit int) error {
	s.buf = AppendFrameSplice(f, s.buf[:0], msg, start, end, repl)
	return nil
}

// One request on its way to the event loop's stream costs one allocation
// with a stream that takes buffers over (the framed buffer; no spliced copy
// before it), and none with one that frames into its own (FrameAppender).
func TestAllocsEnqueueSplice(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates; the Makefile runs TestAllocs without -race")
	}
	p := streamProc(FramingNDJSON, &discardStream{})
	hd, err := jsonrpc.Peek(benchRequest)
	if err != nil {
		t.Fatal(err)
	}
	id := []byte("123456")
	if n := testing.AllocsPerRun(1000, func() { _ = p.enqueueSplice(benchRequest, hd.IDStart, hd.IDEnd, id) }); n != 1 {
		t.Fatalf("%v allocations per request, want 1 (the framed buffer the stream owns)", n)
	}
	bs := &bufStream{}
	p = streamProc(FramingLSP, bs)
	if n := testing.AllocsPerRun(1000, func() { _ = p.enqueueSplice(benchRequest, hd.IDStart, hd.IDEnd, id) }); n != 0 {
		t.Fatalf("%v allocations per request into a FrameAppender, want 0", n)
	}
	want := appendFrame(FramingLSP, nil, jsonrpc.ReplaceID(nil, benchRequest, hd, id))
	if string(bs.buf) != string(want) {
		t.Fatalf("appended %q, want %q", bs.buf, want)
	}
}
