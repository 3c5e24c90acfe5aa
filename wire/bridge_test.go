package wire

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestBridgeMsgs decodes every builder's output with encoding/json: valid
// JSON, the documented keys, strings escaped, no seq (a bridge notification
// is never a logged event).
func TestBridgeMsgs(t *testing.T) {
	type note struct {
		JSONRPC string         `json:"jsonrpc"`
		Method  string         `json:"method"`
		Params  map[string]any `json:"params"`
	}
	cases := []struct {
		m      *Msg
		method string
		params map[string]any
	}{
		{GapMsg("s\"1", 3, 9, "evicted\n"), "bridge/gap", map[string]any{"sessionId": "s\"1", "fromSeq": 3.0, "toSeq": 9.0, "reason": "evicted\n"}},
		{SummaryMsg("s\"1", 42, 7, 1234, "tail \x01 ✓"), "bridge/summary", map[string]any{"sessionId": "s\"1", "seq": 42.0, "dropped": 7.0, "bytes": 1234.0, "text": "tail \x01 ✓"}},
		{StatusMsg("s1", "running"), "bridge/status", map[string]any{"sessionId": "s1", "status": "running"}},
		{StatusMsg("", "blocked"), "bridge/status", map[string]any{"status": "blocked"}},
		{ResolvedMsg("s1", 17), "bridge/resolved", map[string]any{"sessionId": "s1", "id": 17.0}},
		{ResolvedMsg("", 5), "bridge/resolved", map[string]any{"id": 5.0}},
	}
	for _, c := range cases {
		var v note
		if err := json.Unmarshal(c.m.Body(), &v); err != nil {
			t.Fatalf("%s: %v", c.m.Body(), err)
		}
		if v.JSONRPC != "2.0" || v.Method != c.method || !reflect.DeepEqual(v.Params, c.params) {
			t.Errorf("%s decoded as %+v, want %s %v", c.m.Body(), v, c.method, c.params)
		}
		if c.m.Seq != 0 || c.m.SessionID != "" {
			t.Errorf("%s must not look like a logged event", c.method)
		}
		if l := c.m.Line(); l[len(l)-1] != '\n' {
			t.Errorf("%s: no NDJSON newline", c.method)
		}
	}
}

func TestCloseReason(t *testing.T) {
	seen := map[string]bool{}
	for r := ClosePolicy; r < numCloseReasons; r++ {
		s := r.String()
		if seen[s] || s == "" {
			t.Fatalf("reason %d: label %q repeated or empty", r, s)
		}
		seen[s] = true
		if c := r.WebSocket(); c < 1000 || c > 1015 {
			t.Fatalf("%s: WebSocket code %d", s, c)
		}
	}
	if CloseStalled.WebSocket() != 1013 || !CloseStalled.Overload() || ClosePolicy.Overload() {
		t.Fatal("stall must close 1013 as an overload; policy must not")
	}
	if CloseReason(200).String() != "CloseReason(200)" {
		t.Fatal(CloseReason(200).String())
	}
}
