package delivery

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestChunkText(t *testing.T) {
	raw := []byte(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"hi \"there\""}}}}`)
	if got := ChunkText(raw); got != `hi "there"` {
		t.Fatalf("raw: %q", got)
	}
	env := []byte(`{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":"s1","seq":4,"message":` + string(raw) + `}}`)
	if got := ChunkText(env); got != `hi "there"` {
		t.Fatalf("enveloped: %q", got)
	}
	for _, b := range []string{
		`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1","update":{"sessionUpdate":"tool_call","title":"agent_message_chunk"}}}`,
		`{"jsonrpc":"2.0","method":"x","params":{"agent_message_chunk":1}}`,
		`not json agent_message_chunk`,
		`{"jsonrpc":"2.0","id":1,"result":{}}`,
	} {
		if got := ChunkText([]byte(b)); got != "" {
			t.Errorf("ChunkText(%s) = %q, want empty", b, got)
		}
	}
}

func TestAppendTail(t *testing.T) {
	var tail []byte
	for _, s := range []string{"abc", "défg", "", "héllo wörld"} {
		tail = appendTail(tail, s, 8)
		if len(tail) > 8 || !utf8.Valid(tail) {
			t.Fatalf("tail %q after %q", tail, s)
		}
	}
	if !strings.HasSuffix("abcdéfghéllo wörld", string(tail)) || len(tail) < 5 {
		t.Fatalf("tail %q is not the end of the stream", tail)
	}
	tail = appendTail(tail[:0], strings.Repeat("€", 10), 8) // 3-byte runes
	if string(tail) != "€€" {
		t.Fatalf("tail %q, want two whole runes", tail)
	}
}
