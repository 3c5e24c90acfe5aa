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
				out := jsonrpc.ReplaceID(make([]byte, 0, len(benchRequest)+8), benchRequest, hd, id)
				if err := p.enqueue(out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
