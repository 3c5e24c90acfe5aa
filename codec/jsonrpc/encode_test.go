package jsonrpc

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

type sessionResult struct {
	SessionID string `json:"sessionId"`
	Seq       uint64 `json:"seq"`
}

// mustPeek checks that what the builders write is something Peek accepts.
func mustPeek(t *testing.T, msg []byte) Header {
	t.Helper()
	h, err := Peek(msg)
	if err != nil {
		t.Fatalf("Peek(%s): %v", msg, err)
	}
	return h
}

func TestAppendResponse(t *testing.T) {
	got := AppendResponse([]byte("keep"), []byte(`"c1"`), sessionResult{SessionID: "s\u00e9\"", Seq: 3})
	want := `keep{"jsonrpc":"2.0","id":"c1","result":{"sessionId":"sé\"","seq":3}}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	h := mustPeek(t, got[4:])
	if h.Kind != KindResponse || h.IsError || string(h.ID) != `"c1"` {
		t.Fatalf("header %+v", h)
	}
	if sid := ResultSessionID(got[4:]); string(sid) != "sé\"" {
		t.Fatalf("ResultSessionID = %q", sid)
	}

	if got := AppendResponse(nil, nil, nil); string(got) != `{"jsonrpc":"2.0","id":null,"result":null}` {
		t.Fatalf("nil id/result: %s", got)
	}

	// Encoding in place must not disturb what dst already holds, even when
	// sonic repairs invalid UTF-8 in the value.
	dst := make([]byte, 0, 256)
	dst = append(dst, "\xff-earlier-bytes|"...)
	got = AppendResponse(dst, []byte("1"), "bad\xffutf8")
	if want := "\xff-earlier-bytes|" + `{"jsonrpc":"2.0","id":1,"result":"bad\ufffdutf8"}`; string(got) != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}

func TestAppendResponseUnencodable(t *testing.T) {
	for name, v := range map[string]any{"channel": make(chan int), "NaN": math.NaN()} {
		t.Run(name, func(t *testing.T) {
			got := AppendResponse([]byte("x"), []byte("5"), v)
			h := mustPeek(t, got[1:])
			if h.Kind != KindResponse || !h.IsError || string(h.ID) != "5" {
				t.Fatalf("want an error response, got %s", got)
			}
			var resp struct {
				Error Error `json:"error"`
			}
			if err := json.Unmarshal(got[1:], &resp); err != nil {
				t.Fatal(err)
			}
			if resp.Error.Code != CodeInternal || !strings.Contains(resp.Error.Message, "could not encode its result") {
				t.Fatalf("error = %+v", resp.Error)
			}
		})
	}
}

func TestAppendRawResponse(t *testing.T) {
	got := AppendRawResponse(nil, []byte("9"), []byte(`{"protocolVersion":1}`))
	if string(got) != `{"jsonrpc":"2.0","id":9,"result":{"protocolVersion":1}}` {
		t.Fatalf("got %s", got)
	}
	if got := AppendRawResponse(nil, []byte("9"), nil); string(got) != `{"jsonrpc":"2.0","id":9,"result":null}` {
		t.Fatalf("empty raw: %s", got)
	}
}

func TestAppendError(t *testing.T) {
	tests := []struct {
		name string
		id   []byte
		e    *Error
		want string
	}{
		{"null id", nil, &Error{Code: CodeParseError, Message: "invalid JSON"},
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"invalid JSON"}}`},
		{"data", []byte(`"q"`), &Error{Code: CodeNotAllowed, Message: "role \"viewer\" may not call session/prompt", Data: map[string]string{"role": "viewer"}},
			`{"jsonrpc":"2.0","id":"q","error":{"code":-32001,"message":"role \"viewer\" may not call session/prompt","data":{"role":"viewer"}}}`},
		{"escapes", []byte("1"), &Error{Code: 1, Message: "a\nb\t\x01\\\xff"},
			`{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"a\nb\t\u0001\\\ufffd"}}`},
		{"unencodable data", []byte("2"), &Error{Code: CodeTimeout, Message: "timed out", Data: func() {}},
			``},
		{"nil error", []byte("3"), nil,
			`{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"internal error"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AppendError(nil, tt.id, tt.e)
			h := mustPeek(t, got)
			if h.Kind != KindResponse || !h.IsError {
				t.Fatalf("header %+v", h)
			}
			if tt.want != "" && string(got) != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
			var resp struct {
				Error Error `json:"error"`
			}
			if err := json.Unmarshal(got, &resp); err != nil {
				t.Fatal(err)
			}
			if tt.name == "unencodable data" && (resp.Error.Data != nil || !strings.HasPrefix(resp.Error.Message, "timed out (error data could not be encoded: ")) {
				t.Fatalf("error = %+v", resp.Error)
			}
		})
	}
}

func TestAppendNotificationAndRequest(t *testing.T) {
	type gap struct {
		SessionID string `json:"sessionId"`
		FromSeq   uint64 `json:"fromSeq"`
		ToSeq     uint64 `json:"toSeq"`
	}
	got := AppendNotification(nil, "bridge/gap", gap{"s1", 4, 9})
	if want := `{"jsonrpc":"2.0","method":"bridge/gap","params":{"sessionId":"s1","fromSeq":4,"toSeq":9}}`; string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	h := mustPeek(t, got)
	if h.Kind != KindNotification || string(h.Method) != "bridge/gap" || string(h.SessionID) != "s1" {
		t.Fatalf("header %+v", h)
	}

	if got := AppendNotification(nil, "exit", nil); string(got) != `{"jsonrpc":"2.0","method":"exit"}` {
		t.Fatalf("nil params: %s", got)
	}
	if got := AppendNotification(nil, "exit", (*gap)(nil)); string(got) != `{"jsonrpc":"2.0","method":"exit"}` {
		t.Fatalf("typed nil params: %s", got)
	}
	raw := json.RawMessage(`[1, {"a":2}]`)
	if got := AppendNotification(nil, "m\"x", raw); string(got) != `{"jsonrpc":"2.0","method":"m\"x","params":[1, {"a":2}]}` {
		t.Fatalf("raw params: %s", got)
	}

	got = AppendRequest([]byte("p"), []byte(`"b-1"`), "session/request_permission", map[string]any{"sessionId": "s9"})
	if want := `p{"jsonrpc":"2.0","id":"b-1","method":"session/request_permission","params":{"sessionId":"s9"}}`; string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	h = mustPeek(t, got[1:])
	if h.Kind != KindRequest || string(h.ID) != `"b-1"` || string(h.SessionID) != "s9" {
		t.Fatalf("header %+v", h)
	}
}

func TestAppendParamsPanics(t *testing.T) {
	for name, params := range map[string]any{"scalar params": "just a string", "unencodable": make(chan int)} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				r := recover()
				if s, _ := r.(string); !strings.HasPrefix(s, "jsonrpc: ") || !strings.Contains(s, "bridge/status") {
					t.Fatalf("recovered %v, want a jsonrpc panic naming the method", r)
				}
			}()
			AppendNotification(nil, "bridge/status", params)
		})
	}
}

func TestMarshalUnmarshal(t *testing.T) {
	buf := []byte(`{"sessionId":"abc","SESSIONID":"upper","seq":5}`)
	var v sessionResult
	if err := Unmarshal(buf, &v); err != nil {
		t.Fatal(err)
	}
	if v.SessionID != "abc" || v.Seq != 5 {
		t.Fatalf("decoded %+v: keys must match case-sensitively", v)
	}
	// The input is usually a borrowed, reused buffer: decoded strings must
	// not alias it.
	copy(buf, strings.Repeat("#", len(buf)))
	if v.SessionID != "abc" {
		t.Fatalf("decoded string aliases the input: %q", v.SessionID)
	}
	if err := Unmarshal([]byte("{\"sessionId\":\"a\x01\"}"), &v); err == nil {
		t.Fatal("raw control character in a string must be rejected")
	}
	out, err := Marshal(sessionResult{SessionID: "<&>", Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"sessionId":"<&>","seq":1}` {
		t.Fatalf("Marshal = %s", out)
	}
}

func TestErrorType(t *testing.T) {
	var err error = &Error{Code: CodeUnknownSession, Message: "unknown session \"x\""}
	if got := err.Error(); got != `jsonrpc: unknown session "x" (code -32002)` {
		t.Fatalf("Error() = %q", got)
	}
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeUnknownSession {
		t.Fatal("errors.As")
	}
	b, err := json.Marshal(&Error{Code: 1, Message: "m"})
	if err != nil || string(b) != `{"code":1,"message":"m"}` {
		t.Fatalf("json tags: %s %v", b, err)
	}
}
