package loop

import (
	"testing"
	"unsafe"
)

// TestConnFootprint guards the loop's share of an idle connection
// (docs/architecture.md, "What an idle connection holds"): a Unix
// connection with its NDJSON splitter is one 112-byte object, a TCP one
// 96 bytes, and a WebSocket's protocol state (with its frame reader) 128
// at most. A field added here moves every idle connection to the next
// size class: make it lazy, as conn.pending is.
func TestConnFootprint(t *testing.T) {
	for _, c := range []struct {
		what      string
		size, max uintptr
	}{
		{"unixConn", unsafe.Sizeof(unixConn{}), 112},
		{"conn", unsafe.Sizeof(conn{}), 96},
		{"wsProto", unsafe.Sizeof(wsProto{}), 128},
	} {
		if c.size > c.max {
			t.Errorf("%s is %d bytes, over the %d-byte size class an idle connection pays for it", c.what, c.size, c.max)
		}
	}
}
