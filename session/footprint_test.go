package session

import (
	"testing"
	"unsafe"
)

// TestClientFootprint guards the hub's record of every connection
// (docs/architecture.md, "What an idle connection holds"): 160 bytes, one
// size class. What only some connections need (a resume key, catch-up
// reads from disk) hangs off a pointer or a map made on first use; a field
// added here moves every idle connection to the next size class.
func TestClientFootprint(t *testing.T) {
	if n := unsafe.Sizeof(Client{}); n > 160 {
		t.Errorf("Client is %d bytes, over the 160-byte size class every connection pays for it", n)
	}
}
