package delivery

import (
	"testing"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/breaker"
	"github.com/agentbridge/agentbridge/ring"
	"github.com/agentbridge/agentbridge/wire"
)

// TestCatchupRefusesOverHighWater: under onSlow "catchup" a sequenced event
// is refused (Send false, nothing queued, nothing lost) once the queue is
// over its high watermark; the consumer is never degraded nor closed, and
// takes events again once drained.
func TestCatchupRefusesOverHighWater(t *testing.T) {
	h := newHarness(t, Config{OnSlow: Catchup, Queue: ring.Config{MaxDataBytes: 2000, HighWater: 1500, LowWater: 500},
		Breaker: breaker.Config{TripAfter: 1}})
	refused := 0
	var seq uint64
	for i := 0; i < 50; i++ {
		seq++
		if !h.o.Send(event("s1", seq, "x", 100), wire.Data) {
			refused++
		}
		h.o.Observe(false, 0)
	}
	lvl := h.o.Level()
	if refused == 0 || lvl.DataBytes > 2000 {
		t.Fatalf("refused %d, queued %d bytes", refused, lvl.DataBytes)
	}
	for r, n := range lvl.Stats.Lost {
		if n != 0 {
			t.Fatalf("lost %d for reason %v: a refusal is not a loss", n, ring.Reason(r))
		}
	}
	if h.o.Degraded() {
		t.Fatal("a catchup consumer must never be degraded")
	}
	select {
	case r := <-h.closed:
		t.Fatalf("closed: %v", r)
	default:
	}
	h.drain()
	if h.count("gap") != 0 || h.count("summary") != 0 {
		t.Fatalf("items %+v", h.items)
	}
	if !h.o.Send(event("s1", seq+1, "x", 100), wire.Data) {
		t.Fatal("refused after draining")
	}
	// A message without a session cannot be read from a log: it is
	// never refused.
	for i := 0; i < 50; i++ {
		if !h.o.Send(wire.New([]byte(`{"jsonrpc":"2.0","method":"x"}`)), wire.Data) {
			t.Fatal("refused an event without a seq")
		}
	}
}

func TestCatchupDefaults(t *testing.T) {
	if DefaultPolicy(auth.RoleClient) != Catchup || DefaultPolicy(auth.RoleOperator) != Catchup || DefaultPolicy(auth.RoleViewer) != Degrade {
		t.Fatal("role defaults")
	}
	if p, err := ParsePolicy("catchup"); err != nil || p != Catchup || p.String() != "catchup" {
		t.Fatal(p, err)
	}
}
