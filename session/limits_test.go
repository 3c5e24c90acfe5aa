package session

import (
	"strconv"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/store"
)

type discardAgent struct{}

func (discardAgent) Send([]byte) error { return nil }

// BenchmarkSessionCreate measures sessions created per second through the
// hub (a client's session/new, the agent's answer), in memory and with the
// state store, in the same run; the store's time includes Close, which
// writes and fsyncs every session (issue 10 finding 7: 300-500/s with a
// directory per session).
func BenchmarkSessionCreate(b *testing.B) {
	for _, persisted := range []bool{false, true} {
		name := "memory"
		if persisted {
			name = "store"
		}
		b.Run(name, func(b *testing.B) {
			cfg := Config{MaxInflight: 1 << 30}
			var st *store.Store
			if persisted {
				var err error
				if st, _, err = store.Open(b.TempDir(), store.Options{}); err != nil {
					b.Fatal(err)
				}
				cfg.Journal = st
			}
			h := New(cfg)
			h.SetAgent(discardAgent{})
			h.AgentStarted(1)
			cl := h.Open(nopConn{}, ConnInfo{Role: auth.RoleClient})
			req := []byte(`{"jsonrpc":"2.0","id":1,"method":"session/new","params":{"cwd":"/","mcpServers":[]}}`)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				h.Handle(cl, req)
				bid := h.calls.next.Load()
				h.AgentMessage(1, []byte(`{"jsonrpc":"2.0","id":`+strconv.FormatInt(bid, 10)+`,"result":{"sessionId":"sess-`+strconv.Itoa(i)+`"}}`))
			}
			if st != nil {
				if err := st.Close(); err != nil {
					b.Fatal(err)
				}
				if s := st.Stats(); s.Dropped != 0 || s.Sessions != b.N {
					b.Fatalf("store: %+v, want %d sessions, no drops", s, b.N)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sessions/s")
		})
	}
}
