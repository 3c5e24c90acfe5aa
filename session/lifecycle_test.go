package session

import (
	"strconv"
	"strings"
	"testing"

	"github.com/agentbridge/agentbridge/auth"
)

func TestDuplicateKeysRefused(t *testing.T) {
	r := newRig(t, Config{})
	a, fa := r.open(auth.RoleClient)
	for _, tc := range []struct{ msg, id, member string }{
		{`{"jsonrpc":"2.0","id":5,"method":"session/prompt","params":{"sessionId":"s1","sessionId":"s2","prompt":[]}}`, "5", "params.sessionId"},
		{`{"jsonrpc":"2.0","id":6,"id":7,"method":"x"}`, "null", `"id"`},
		{`{"jsonrpc":"2.0","id":8,"method":"x","method":"y"}`, "8", `"method"`},
		{`{"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":"s1"},"params":{"sessionId":"s2"}}`, "null", `"params"`},
	} {
		r.from(a, "%s", tc.msg)
		m := one(t, fa)
		if code(m) != codeInvalidRequest || !strings.Contains(m["error"].(map[string]any)["message"].(string), tc.member) {
			t.Fatalf("%s: got %v", tc.msg, m)
		}
		if got := jsonID(m["id"]); got != tc.id {
			t.Fatalf("%s: answered id %s, want %s", tc.msg, got, tc.id)
		}
		if s := r.ag.take(); len(s) != 0 {
			t.Fatalf("%s reached the agent: %v", tc.msg, s)
		}
	}
}

func jsonID(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case float64:
		return fmtFloat(x)
	case string:
		return `"` + x + `"`
	}
	return "?"
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
