package jsonrpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// sessionUpdate is a typical agent → client data-plane message (~390 bytes).
const sessionUpdate = `{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"sess_7f3a9c2e1b","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"Here is the next part of the answer: the router forwards the original bytes of each message untouched except for the id, which it rewrites, so \"peek\" must find spans without decoding."}},"_meta":{"seq":1234,"ts":1732200000123}}}`

type want struct {
	kind    Kind
	id      string // raw JSON; "" means absent
	method  string
	session string // "": absent or empty, which the router reads alike (no session)
	isError bool
}

func TestPeekValid(t *testing.T) {
	tests := []struct {
		name string
		msg  string
		want want
	}{
		{"request number id", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`,
			want{kind: KindRequest, id: "1", method: "initialize"}},
		{"request negative exponent id", `{"jsonrpc":"2.0","id":-1.5e+3,"method":"m"}`,
			want{kind: KindRequest, id: "-1.5e+3", method: "m"}},
		{"request string id", `{"jsonrpc":"2.0","id":"abc-\"1\"","method":"session/prompt","params":{"sessionId":"s1","prompt":[]}}`,
			want{kind: KindRequest, id: `"abc-\"1\""`, method: "session/prompt", session: "s1"}},
		{"request null id", `{"jsonrpc":"2.0","id":null,"method":"m"}`,
			want{kind: KindRequest, id: "null", method: "m"}},
		{"notification", sessionUpdate,
			want{kind: KindNotification, method: "session/update", session: "sess_7f3a9c2e1b"}},
		{"notification params array", `{"jsonrpc":"2.0","method":"m","params":[{"sessionId":"no"}]}`,
			want{kind: KindNotification, method: "m"}},
		{"notification no params", `{"method":"exit","jsonrpc":"2.0"}`,
			want{kind: KindNotification, method: "exit"}},
		{"response result", `{"jsonrpc":"2.0","id":7,"result":{"sessionId":"not-params"}}`,
			want{kind: KindResponse, id: "7"}},
		{"response null result", `{"jsonrpc":"2.0","id":"a","result":null}`,
			want{kind: KindResponse, id: `"a"`}},
		{"response error", `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"bad"}}`,
			want{kind: KindResponse, id: "null", isError: true}},
		{"whitespace everywhere", " \t\r\n{ \"jsonrpc\" :\n\"2.0\" , \"id\"\t:\t42 ,\r\n\"method\" : \"m\" , \"params\" : { \"sessionId\" : \"s\" } } \n",
			want{kind: KindRequest, id: "42", method: "m", session: "s"}},
		{"escaped method", `{"jsonrpc":"2.0","method":"session\/upd\u0061te\n\ud83d\ude00","params":{"sessionId":"a\"b\\c\u00e9"}}`,
			want{kind: KindNotification, method: "session/update\n😀", session: "a\"b\\cé"}},
		{"escaped keys", `{"\u006asonrpc":"2.0","\u0069d":3,"meth\u006fd":"m","par\u0061ms":{"session\u0049d":"s"}}`,
			want{kind: KindRequest, id: "3", method: "m", session: "s"}},
		{"escaped jsonrpc value", `{"jsonrpc":"\u0032.0","method":"m"}`,
			want{kind: KindNotification, method: "m"}},
		{"nested id and method ignored", `{"jsonrpc":"2.0","method":"n","params":{"id":9,"method":"x","inner":{"sessionId":"deep","id":1}},"meta":{"id":5,"result":1}}`,
			want{kind: KindNotification, method: "n"}},
		{"nested result ignored in request", `{"jsonrpc":"2.0","id":1,"method":"m","params":{"result":1,"error":{}}}`,
			want{kind: KindRequest, id: "1", method: "m"}},
		{"duplicate nested keys are not ours", `{"jsonrpc":"2.0","method":"m","params":{"sessionId":"x","a":{"sessionId":"1","sessionId":"2"},"b":1,"b":2},"x":1,"x":2}`,
			want{kind: KindNotification, method: "m", session: "x"}},
		{"sessionId not a string", `{"jsonrpc":"2.0","method":"m","params":{"sessionId":12}}`,
			want{kind: KindNotification, method: "m"}},
		{"similar keys", `{"jsonrpc":"2.0","ids":1,"Id":2,"method":"m","Method":3,"params":{"sessionid":"x","SessionId":"y"}}`,
			want{kind: KindNotification, method: "m"}},
		{"unicode content", `{"jsonrpc":"2.0","method":"m","params":{"sessionId":"sé日本😀","text":"\u0000 ok"}}`,
			want{kind: KindNotification, method: "m", session: "sé日本😀"}},
		{"empty method", `{"jsonrpc":"2.0","method":""}`,
			want{kind: KindNotification, method: ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := []byte(tt.msg)
			h, err := Peek(msg)
			if err != nil {
				t.Fatalf("Peek: %v", err)
			}
			checkHeader(t, msg, h, tt.want)
		})
	}
}

func checkHeader(t *testing.T, msg []byte, h Header, w want) {
	t.Helper()
	if h.Kind != w.kind {
		t.Errorf("Kind = %v, want %v", h.Kind, w.kind)
	}
	if w.id == "" {
		if h.ID != nil || h.IDStart != -1 || h.IDEnd != -1 {
			t.Errorf("ID = %q [%d:%d], want absent", h.ID, h.IDStart, h.IDEnd)
		}
	} else {
		if string(h.ID) != w.id {
			t.Errorf("ID = %q, want %q", h.ID, w.id)
		}
		if h.IDStart < 0 || string(msg[h.IDStart:h.IDEnd]) != w.id {
			t.Errorf("ID span [%d:%d] does not hold %q", h.IDStart, h.IDEnd, w.id)
		}
	}
	if string(h.Method) != w.method || (w.kind != KindResponse && h.Method == nil) {
		t.Errorf("Method = %q, want %q", h.Method, w.method)
	}
	if w.kind == KindResponse && h.Method != nil {
		t.Errorf("response has Method %q", h.Method)
	}
	if w.session == "" {
		if len(h.SessionID) != 0 {
			t.Errorf("SessionID = %q, want none", h.SessionID)
		}
	} else if string(h.SessionID) != w.session {
		t.Errorf("SessionID = %q, want %q", h.SessionID, w.session)
	}
	if h.IsError != w.isError {
		t.Errorf("IsError = %v, want %v", h.IsError, w.isError)
	}
}

func TestPeekBorrows(t *testing.T) {
	msg := []byte(sessionUpdate)
	h, err := Peek(msg)
	if err != nil {
		t.Fatal(err)
	}
	within := func(b []byte) bool {
		for i := range msg {
			if len(b) > 0 && &msg[i] == &b[0] {
				return true
			}
		}
		return false
	}
	if !within(h.Method) || !within(h.SessionID) {
		t.Fatal("Method/SessionID without escapes must be borrowed from msg")
	}
	esc := []byte(`{"jsonrpc":"2.0","method":"a\/b","params":{"sessionId":"s\u0031"}}`)
	h, err = Peek(esc)
	if err != nil {
		t.Fatal(err)
	}
	orig := string(esc)
	h.Method[0], h.SessionID[0] = 'X', 'X'
	if string(esc) != orig {
		t.Fatal("decoded Method/SessionID must be copies, not views into msg")
	}
}

func TestPeekErrors(t *testing.T) {
	deep := strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1)
	deepParams := `{"jsonrpc":"2.0","method":"m","params":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`
	tests := []struct {
		name    string
		msg     string
		code    int
		message string // substring of the error message
		id      string // raw id still reported with the error
	}{
		{"empty", "", CodeParseError, "empty message", ""},
		{"blank", " \n\t", CodeParseError, "empty message", ""},
		{"truncated", `{"jsonrpc":"2.0","method":"m"`, CodeParseError, "unexpected end of input", ""},
		{"truncated string", `{"jsonrpc":"2.0","method":"m`, CodeParseError, "unexpected end", ""},
		{"missing value", `{"jsonrpc":}`, CodeParseError, "unexpected character at byte 11", ""},
		{"trailing comma", `{"jsonrpc":"2.0","method":"m",}`, CodeParseError, "unexpected character", ""},
		{"trailing data", `{"jsonrpc":"2.0","method":"m"} x`, CodeParseError, "data after the top-level value", ""},
		{"two objects", `{}{}`, CodeParseError, "data after", ""},
		{"single quotes", `{'jsonrpc':'2.0'}`, CodeParseError, "unexpected character", ""},
		{"control char in string", "{\"jsonrpc\":\"2.0\",\"method\":\"a\tb\"}", CodeParseError, "control character", ""},
		{"control char in nested string", "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":[\"\x01\"]}", CodeParseError, "control character", ""},
		{"bad escape", `{"jsonrpc":"2.0","method":"\x"}`, CodeParseError, "invalid escape", ""},
		{"short unicode escape", `{"jsonrpc":"2.0","method":"\u12"}`, CodeParseError, "invalid escape", ""},
		{"invalid utf8", "{\"jsonrpc\":\"2.0\",\"method\":\"\xff\"}", CodeParseError, "invalid UTF-8", ""},
		{"utf8 surrogate", "{\"jsonrpc\":\"2.0\",\"method\":\"\xed\xa0\x80\"}", CodeParseError, "invalid UTF-8", ""},
		{"leading zero", `{"jsonrpc":"2.0","id":01,"method":"m"}`, CodeParseError, "", ""},
		{"bad fraction", `{"jsonrpc":"2.0","id":1.,"method":"m"}`, CodeParseError, "", ""},
		{"bad exponent", `{"jsonrpc":"2.0","id":1e,"method":"m"}`, CodeParseError, "", ""},
		{"bad literal", `{"jsonrpc":"2.0","id":nul,"method":"m"}`, CodeParseError, "", ""},
		{"mismatched bracket", `{"jsonrpc":"2.0","method":"m","params":[1}}`, CodeParseError, "", ""},
		{"too deep", deep, CodeParseError, "nesting deeper than 1024", ""},
		{"too deep in params", deepParams, CodeParseError, "nesting deeper", ""},
		{"batch", `[{"jsonrpc":"2.0","method":"m"}]`, CodeInvalidRequest, "batch requests are not supported", ""},
		{"empty batch", ` [] `, CodeInvalidRequest, "batch requests are not supported", ""},
		{"number", `42`, CodeInvalidRequest, "must be a JSON object", ""},
		{"string", `"x"`, CodeInvalidRequest, "must be a JSON object", ""},
		{"null", `null`, CodeInvalidRequest, "must be a JSON object", ""},
		{"empty object", `{}`, CodeInvalidRequest, `"jsonrpc" must be "2.0"`, ""},
		{"missing jsonrpc", `{"id":1,"method":"m"}`, CodeInvalidRequest, `"jsonrpc" must be "2.0"`, "1"},
		{"jsonrpc 1.0", `{"jsonrpc":"1.0","id":1,"method":"m"}`, CodeInvalidRequest, `"jsonrpc"`, "1"},
		{"jsonrpc number", `{"jsonrpc":2.0,"id":1,"method":"m"}`, CodeInvalidRequest, `"jsonrpc"`, "1"},
		{"method number", `{"jsonrpc":"2.0","id":"q","method":1}`, CodeInvalidRequest, `"method" must be a string`, `"q"`},
		{"method null", `{"jsonrpc":"2.0","method":null}`, CodeInvalidRequest, `"method" must be a string`, ""},
		{"params string", `{"jsonrpc":"2.0","id":2,"method":"m","params":"x"}`, CodeInvalidRequest, `"params" must be an object or an array`, "2"},
		{"params null", `{"jsonrpc":"2.0","method":"m","params":null}`, CodeInvalidRequest, `"params"`, ""},
		{"params number", `{"jsonrpc":"2.0","method":"m","params":1}`, CodeInvalidRequest, `"params"`, ""},
		{"id object", `{"jsonrpc":"2.0","id":{"a":1},"method":"m"}`, CodeInvalidRequest, `"id" must be a number, a string or null`, ""},
		{"id array", `{"jsonrpc":"2.0","id":[1],"method":"m"}`, CodeInvalidRequest, `"id"`, ""},
		{"id bool", `{"jsonrpc":"2.0","id":true,"result":1}`, CodeInvalidRequest, `"id"`, ""},
		{"method and result", `{"jsonrpc":"2.0","id":1,"method":"m","result":1}`, CodeInvalidRequest, `both "method" and "result" or "error"`, "1"},
		{"method and error", `{"jsonrpc":"2.0","id":1,"method":"m","error":{}}`, CodeInvalidRequest, `both "method"`, "1"},
		{"neither", `{"jsonrpc":"2.0","id":1}`, CodeInvalidRequest, `needs "method"`, "1"},
		{"result and error", `{"jsonrpc":"2.0","id":1,"result":1,"error":{}}`, CodeInvalidRequest, `both "result" and "error"`, "1"},
		{"response without id", `{"jsonrpc":"2.0","result":1}`, CodeInvalidRequest, `must have an "id"`, ""},
		{"nested method does not count", `{"jsonrpc":"2.0","id":1,"params":{"method":"m"}}`, CodeInvalidRequest, `needs "method"`, "1"},
		{"escaped id key still typed", `{"jsonrpc":"2.0","\u0069d":[1],"method":"m"}`, CodeInvalidRequest, `"id"`, ""},
		{"duplicate id", `{"jsonrpc":"2.0","id":1,"id":"two","method":"m"}`, CodeInvalidRequest, `member "id" appears more than once`, ""},
		{"duplicate escaped id", `{"jsonrpc":"2.0","id":1,"\u0069d":2,"method":"m"}`, CodeInvalidRequest, `member "id"`, ""},
		{"duplicate jsonrpc", `{"jsonrpc":"1.0","jsonrpc":"2.0","id":1,"method":"m"}`, CodeInvalidRequest, `member "jsonrpc"`, "1"},
		{"duplicate method", `{"jsonrpc":"2.0","id":3,"method":"a","method":"b"}`, CodeInvalidRequest, `member "method"`, "3"},
		{"duplicate params", `{"jsonrpc":"2.0","method":"m","params":{"sessionId":"x"},"params":{"other":1}}`, CodeInvalidRequest, `member "params"`, ""},
		{"duplicate result", `{"jsonrpc":"2.0","id":4,"result":1,"result":2}`, CodeInvalidRequest, `member "result"`, "4"},
		{"duplicate error", `{"jsonrpc":"2.0","id":5,"error":{},"error":{}}`, CodeInvalidRequest, `member "error"`, "5"},
		{"duplicate sessionId", `{"jsonrpc":"2.0","id":6,"method":"session/prompt","params":{"sessionId":"mine","prompt":[],"sessionId":"yours"}}`, CodeInvalidRequest, `member "params.sessionId"`, "6"},
		{"duplicate escaped sessionId", `{"jsonrpc":"2.0","id":7,"method":"m","params":{"sessionId":"a","session\u0049d":"b"}}`, CodeInvalidRequest, `params.sessionId`, "7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Peek([]byte(tt.msg))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Peek error = %v (%T), want *Error", err, err)
			}
			if e.Code != tt.code {
				t.Errorf("code = %d, want %d (%s)", e.Code, tt.code, e.Message)
			}
			if !strings.Contains(e.Message, tt.message) {
				t.Errorf("message = %q, want it to contain %q", e.Message, tt.message)
			}
			if string(h.ID) != tt.id {
				t.Errorf("ID with error = %q, want %q", h.ID, tt.id)
			}
			if h.Kind != KindInvalid {
				t.Errorf("Kind with error = %v", h.Kind)
			}
		})
	}
}

func TestReplaceID(t *testing.T) {
	tests := []struct{ msg, newID, want string }{
		{`{"jsonrpc":"2.0","id":1,"method":"m"}`, `"b-7"`, `{"jsonrpc":"2.0","id":"b-7","method":"m"}`},
		{`{"jsonrpc":"2.0","id" : "long-client-id" ,"result":{"id":3}}`, `9`, `{"jsonrpc":"2.0","id" : 9 ,"result":{"id":3}}`},
		{`{"id":null,"jsonrpc":"2.0","error":{"code":1,"message":"x"}}`, `12345678901`, `{"id":12345678901,"jsonrpc":"2.0","error":{"code":1,"message":"x"}}`},
		{`{"jsonrpc":"2.0","method":"n"}`, `1`, `{"jsonrpc":"2.0","method":"n"}`},
	}
	for _, tt := range tests {
		h, err := Peek([]byte(tt.msg))
		if err != nil {
			t.Fatalf("Peek(%s): %v", tt.msg, err)
		}
		got := ReplaceID([]byte("prefix:"), []byte(tt.msg), h, []byte(tt.newID))
		if string(got) != "prefix:"+tt.want {
			t.Errorf("ReplaceID(%s, %s) = %s, want %s", tt.msg, tt.newID, got[len("prefix:"):], tt.want)
		}
	}
}

func TestResultSessionID(t *testing.T) {
	tests := []struct{ msg, want string }{
		{`{"jsonrpc":"2.0","id":1,"result":{"sessionId":"sess_1","modes":{"sessionId":"no"}}}`, "sess_1"},
		{`{"jsonrpc":"2.0","id":1,"result":{"session\u0049d":"s\u0032"}}`, "s2"},
		{`{"jsonrpc":"2.0","id":1,"result":{"sessionId":"a"},"result":{"sessionId":"b"}}`, "b"},
		{`{"jsonrpc":"2.0","id":1,"result":{"sessionId":5}}`, ""},
		{`{"jsonrpc":"2.0","id":1,"result":[{"sessionId":"x"}]}`, ""},
		{`{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m","data":{"sessionId":"x"}}}`, ""},
		{`{"jsonrpc":"2.0","id":1,"method":"m","params":{"sessionId":"x"}}`, ""},
		{`{"jsonrpc":"2.0","id":1,"result":{"sessionId":"x"}} garbage`, ""},
		{`not json`, ""},
	}
	for _, tt := range tests {
		got := ResultSessionID([]byte(tt.msg))
		if string(got) != tt.want || (tt.want == "" && got != nil) {
			t.Errorf("ResultSessionID(%s) = %q, want %q", tt.msg, got, tt.want)
		}
	}
}

func TestKindString(t *testing.T) {
	for k, s := range map[Kind]string{KindInvalid: "invalid", KindRequest: "request", KindNotification: "notification", KindResponse: "response", 99: "invalid"} {
		if k.String() != s {
			t.Errorf("Kind(%d).String() = %q, want %q", k, k.String(), s)
		}
	}
}

func TestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	msg := []byte(sessionUpdate)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := Peek(msg); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Peek: %v allocs/op, want 0", n)
	}
	req := []byte(`{"jsonrpc":"2.0","id":17,"method":"session/prompt","params":{"sessionId":"s","prompt":[{"type":"text","text":"hi"}]}}`)
	h, err := Peek(req)
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, 0, 512)
	newID := []byte(`"c3-0000000017"`)
	if n := testing.AllocsPerRun(100, func() { dst = ReplaceID(dst[:0], req, h, newID) }); n != 0 {
		t.Errorf("ReplaceID: %v allocs/op, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { ResultSessionID(req) }); n != 0 {
		t.Errorf("ResultSessionID: %v allocs/op, want 0", n)
	}
}

// repeated reports whether the JSON object raw has a member named in
// names more than once (keys compared after decoding escapes).
func repeated(raw []byte, names ...string) bool {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		k, _ := tok.(string)
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return false
		}
		for _, n := range names {
			if k == n {
				if seen[k] {
					return true
				}
				seen[k] = true
			}
		}
	}
	return false
}

// oracle derives the header with encoding/json (exact keys) for the
// differential fuzz check. ok is false when msg is not a valid message,
// duplicated routing members included.
func oracle(msg []byte) (w want, resultSID []byte, ok bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(msg, &m) != nil || m == nil {
		return w, nil, false
	}
	defer func() {
		if ok && (repeated(msg, "jsonrpc", "id", "method", "params", "result", "error") ||
			(len(m["params"]) > 0 && m["params"][0] == '{' && repeated(m["params"], "sessionId"))) {
			ok = false
		}
	}()
	str := func(raw json.RawMessage) (string, bool) {
		var s string
		if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	}
	sub := func(raw json.RawMessage) []byte {
		var o map[string]json.RawMessage
		if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &o) != nil {
			return nil
		}
		if s, ok := str(o["sessionId"]); ok {
			return []byte(s)
		}
		return nil
	}
	resultSID = sub(m["result"])
	if v, ok := str(m["jsonrpc"]); !ok || v != "2.0" {
		return w, resultSID, false
	}
	id, hasID := m["id"]
	if hasID {
		if c := id[0]; c == '{' || c == '[' || c == 't' || c == 'f' {
			return w, resultSID, false
		}
		w.id = string(id)
	}
	_, hasResult := m["result"]
	_, hasError := m["error"]
	method, hasMethod := m["method"]
	switch {
	case hasMethod && !hasResult && !hasError:
		s, ok := str(method)
		if !ok {
			return w, resultSID, false
		}
		if p, ok := m["params"]; ok && p[0] != '{' && p[0] != '[' {
			return w, resultSID, false
		}
		w.kind, w.method = KindNotification, s
		if hasID {
			w.kind = KindRequest
		}
		w.session = string(sub(m["params"]))
	case !hasMethod && hasResult != hasError && hasID:
		w.kind, w.isError = KindResponse, hasError
	default:
		return w, resultSID, false
	}
	return w, resultSID, true
}

var fuzzSeeds = []string{
	sessionUpdate,
	`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}`,
	`{"jsonrpc":"2.0","id":"a\u0062","method":"session/new","params":{"cwd":"/tmp","mcpServers":[]}}`,
	`{"jsonrpc":"2.0","id":null,"result":{"sessionId":"s\"1"}}`,
	`{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"nope","data":[1,2,{"id":4}]}}`,
	`{"\u0069d":1,"jsonrpc":"2.0","method":"m\u00e9","params":{"session\u0049d":"x","sessionId":"y"}}`,
	" {\n \"jsonrpc\" : \"2.0\" ,\n \"method\" : \"m\" , \"params\" : [ 1 , -0.5e-3 , true , false , null ] }\n",
	`{"jsonrpc":"2.0","id":1,"id":2,"method":"a","method":"b"}`,
	`[{"jsonrpc":"2.0","method":"m"}]`,
	`{"jsonrpc":"2.0","method":"m","params":"x"}`,
	`{"jsonrpc":"2.0","id":{},"method":"m"}`,
	`{"jsonrpc":"2.0","method":"\ud83d\ude00\ud83d"}`,
	"{\"jsonrpc\":\"2.0\",\"method\":\"\xe6\x97\xa5\xff\"}",
	`{"jsonrpc":"2.0","method":"m"`,
	`{"a":[[[[{"b":[]}]]]],"jsonrpc":"2.0","method":"m"}`,
	`{}`,
	``,
}

func FuzzPeek(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		h, err := Peek(msg)
		var e *Error
		if err != nil && !errors.As(err, &e) {
			t.Fatalf("error %T is not *Error", err)
		}
		strictValid := json.Valid(msg) && utf8.Valid(msg)
		shallow := bytes.Count(msg, []byte("["))+bytes.Count(msg, []byte("{")) < maxDepth
		if err != nil && e.Code == CodeParseError {
			if strictValid && shallow {
				t.Fatalf("valid JSON rejected: %v", err)
			}
		} else if !strictValid {
			t.Fatalf("invalid JSON accepted (err=%v)", err)
		}

		w, resultSID, ok := oracle(msg)
		if strictValid {
			if got := ResultSessionID(msg); !bytes.Equal(got, resultSID) {
				t.Fatalf("ResultSessionID = %q, oracle %q", got, resultSID)
			}
		}
		if err != nil {
			if strictValid && ok && e.Code != CodeParseError {
				t.Fatalf("oracle accepts what Peek rejects: %v", err)
			}
			return
		}
		if !ok {
			t.Fatalf("Peek accepts what the oracle rejects: %+v", h)
		}
		checkHeader(t, msg, h, w)

		out := ReplaceID(nil, msg, h, []byte(`"x"`))
		if h.ID == nil {
			if !bytes.Equal(out, msg) {
				t.Fatal("ReplaceID changed a message without id")
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("ReplaceID produced invalid JSON: %s", out)
		}
		h2, err := Peek(out)
		if err != nil {
			t.Fatalf("re-Peek: %v", err)
		}
		if h2.Kind != h.Kind || !bytes.Equal(h2.Method, h.Method) || !bytes.Equal(h2.SessionID, h.SessionID) ||
			string(h2.ID) != `"x"` || h2.IsError != h.IsError {
			t.Fatalf("re-Peek header %+v differs from %+v", h2, h)
		}
	})
}

func BenchmarkPeek(b *testing.B) {
	msg := []byte(sessionUpdate)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := Peek(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPeekRequest(b *testing.B) {
	msg := []byte(`{"jsonrpc":"2.0","id":17,"method":"session/prompt","params":{"sessionId":"sess_7f3a9c2e1b","prompt":[{"type":"text","text":"Refactor the frame reader so it never copies."}]}}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := Peek(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReplaceID(b *testing.B) {
	msg := []byte(`{"jsonrpc":"2.0","id":17,"method":"session/prompt","params":{"sessionId":"sess_7f3a9c2e1b","prompt":[{"type":"text","text":"Refactor the frame reader so it never copies."}]}}`)
	h, err := Peek(msg)
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, 512)
	newID := []byte(`"c3-0000000017"`)
	b.ReportAllocs()
	for b.Loop() {
		dst = ReplaceID(dst[:0], msg, h, newID)
	}
}

func TestMember(t *testing.T) {
	msg := []byte(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":2},"arguments":{"_meta":{"progressToken":"no"}}}}`)
	s, e, dup := Member(msg, "params", "_meta", "progressToken")
	if dup || s < 0 || string(msg[s:e]) != "2" {
		t.Fatalf("Member = %d %d %v", s, e, dup)
	}
	if got := string(Splice(nil, msg, s, e, []byte(`"p-1"`))); !strings.Contains(got, `"_meta":{"progressToken":"p-1"},"arguments":{"_meta":{"progressToken":"no"}}`) {
		t.Fatalf("Splice = %s", got)
	}
	if s, _, _ := Member(msg, "params", "workDoneToken"); s != -1 {
		t.Fatalf("absent member found at %d", s)
	}
	if s, _, _ := Member(msg, "params", "name", "x"); s != -1 {
		t.Fatalf("member of a string found at %d", s)
	}
	dupMsg := []byte(`{"jsonrpc":"2.0","method":"$/cancel_request","params":{"requestId":1,"request\u0049d":2}}`)
	if s, _, dup := Member(dupMsg, "params", "requestId"); s != -1 || !dup {
		t.Fatalf("duplicate key: start %d dup %v", s, dup)
	}
}

// The shapes bench's throughput and rtt scenarios send through the bridge:
// a 100-byte request and the echo agent's answer to it.
var (
	benchEchoRequest = []byte(`{"jsonrpc":"2.0","id":1234567,"method":"bench/echo","params":{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}`)
	benchEchoAnswer  = []byte(`{"jsonrpc":"2.0","id":1234567,"result":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
)

func BenchmarkPeekEchoRequest(b *testing.B) { benchPeek(b, benchEchoRequest) }
func BenchmarkPeekEchoAnswer(b *testing.B)  { benchPeek(b, benchEchoAnswer) }

func benchPeek(b *testing.B, msg []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := Peek(msg); err != nil {
			b.Fatal(err)
		}
	}
}
