package session

import (
	"errors"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// TestAttachAPI: Hub.Attach is bridge/attach without its JSON-RPC answer:
// the refusals come back as errors carrying bridge/attach's codes, and an
// attach sends only the replay and the live events.
func TestAttachAPI(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	r.newSession(a, fa, "s1")
	for i := 1; i <= 3; i++ {
		r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":%d}}`, i)
	}
	fa.take(t)
	v, fv := r.open(auth.RoleViewer)
	u64 := func(n uint64) *uint64 { return &n }
	one1 := 1
	for _, tc := range []struct {
		sid   string
		since *uint64
		last  *int
		code  int
	}{
		{"nope", nil, nil, jsonrpc.CodeUnknownSession},
		{"s1", u64(1), &one1, jsonrpc.CodeInvalidParams},
		{"s1", u64(99), nil, jsonrpc.CodeInvalidParams},
	} {
		var je *jsonrpc.Error
		if err := r.hub.Attach(v, tc.sid, tc.since, tc.last); !errors.As(err, &je) || je.Code != tc.code {
			t.Fatalf("Attach(%q, %v, %v) = %v, want code %d", tc.sid, tc.since, tc.last, err, tc.code)
		}
	}
	if got := fv.take(t); len(got) != 0 {
		t.Fatalf("refusals sent %v", got)
	}
	if err := r.hub.Attach(v, "s1", u64(1), nil); err != nil {
		t.Fatal(err)
	}
	for r.hub.Pump(v) {
	}
	got := fv.take(t)
	if len(got) != 2 {
		t.Fatalf("attach since 1 sent %d messages, want the 2 replayed events: %v", len(got), got)
	}
	for i, m := range got {
		if m["id"] != nil || m["params"].(map[string]any)["n"] != float64(2+i) {
			t.Fatalf("message %d: %v", i, m)
		}
	}
	r.agentSays(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","n":4}}`)
	if m := one(t, fv); m["params"].(map[string]any)["n"] != float64(4) {
		t.Fatalf("live event %v", m)
	}
	r.hub.Closed(v)
	if err := r.hub.Attach(v, "s1", nil, nil); !errors.Is(err, ErrClientClosed) {
		t.Fatalf("Attach after Closed = %v", err)
	}
}
