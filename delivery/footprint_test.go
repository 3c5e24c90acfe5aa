package delivery

import (
	"testing"
	"unsafe"

	"github.com/agentbridge/agentbridge/wire"
)

// nopTransport is a Transport that does nothing.
type nopTransport struct{}

func (nopTransport) Wake()                    {}
func (nopTransport) Frame(m *wire.Msg) []byte { return m.Line() }
func (nopTransport) Write([][]byte) error     { return nil }
func (nopTransport) Backlog() (int, bool)     { return 0, false }
func (nopTransport) Shut()                    {}

// TestEndpointFootprint guards what every idle connection pays here
// (docs/architecture.md, "What an idle connection holds"): the Endpoint
// with its Outbox and queue is one object of the 288-byte size class, and
// making one allocates it and the queue's eviction hook, nothing else (no
// hook closures, no drain scratch, no configuration copy). A field added
// here moves every idle connection to the next size class: make it lazy.
func TestEndpointFootprint(t *testing.T) {
	if n := unsafe.Sizeof(Endpoint{}); n > 288 {
		t.Errorf("Endpoint is %d bytes, over the 288-byte size class an idle connection pays for it", n)
	}
	cfg := &EndpointConfig{}
	NewEndpoint(cfg, nopTransport{}, "unix", "peer", nil) // interns the configuration
	if a := testing.AllocsPerRun(100, func() {
		NewEndpoint(cfg, nopTransport{}, "unix", "peer", nil)
	}); a > 2 {
		t.Errorf("NewEndpoint makes %v allocations, want at most 2 (the endpoint and its queue's eviction hook)", a)
	}
}
