// Package jsonrpc owns the JSON-RPC 2.0 wire format as agentbridge routes it.
//
// The router forwards the original bytes of every message and only rewrites
// the id, so the hot path never decodes: Peek validates a message and reports
// the byte span of its id plus the few values routing needs (kind, method,
// params.sessionId), and ReplaceID splices a new id into a copy. Messages the
// bridge writes or answers itself go through the Append* builders and
// Marshal/Unmarshal, which use sonic.
//
// Everything here is a pure function of its arguments: safe from any
// goroutine, no shared state. Results that are "borrowed" point into the
// caller's message and are valid only as long as those bytes are.
package jsonrpc

// Kind is what a message is, by which members it carries.
type Kind uint8

const (
	// KindInvalid is the zero Kind, never returned with a nil error.
	KindInvalid Kind = iota
	// KindRequest has "method" and "id": the peer expects a response.
	KindRequest
	// KindNotification has "method" and no "id".
	KindNotification
	// KindResponse has "id" and "result" or "error", and no "method".
	KindResponse
)

// String returns the kind's name for logs and metrics.
func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindNotification:
		return "notification"
	case KindResponse:
		return "response"
	}
	return "invalid"
}

// Header is what Peek learns about a message. Byte slices are borrowed from
// the message unless noted.
type Header struct {
	Kind Kind
	// ID is the raw JSON of the id value: a number, a string (quotes
	// included) or null. Nil when the message has no id.
	ID []byte
	// IDStart and IDEnd locate ID in the message (msg[IDStart:IDEnd] == ID),
	// for ReplaceID. Both are -1 when there is no id.
	IDStart, IDEnd int
	// Method is the method name without quotes. Borrowed, unless it contains
	// JSON escapes: then it is a freshly decoded copy.
	Method []byte
	// SessionID is params.sessionId when params is an object whose sessionId
	// is a string; nil otherwise. Borrowed or decoded like Method.
	SessionID []byte
	// IsError reports that a response carries "error" rather than "result".
	IsError bool
}

// Top-level member names Peek cares about.
const (
	keyOther = iota
	keyJSONRPC
	keyID
	keyMethod
	keyParams
	keyResult
	keyError
)

func topKey(raw []byte, esc bool) int {
	if esc {
		if len(raw) > 6*len("jsonrpc") {
			return keyOther
		}
		var buf [48]byte
		raw = appendUnquoted(buf[:0], raw)
	}
	switch string(raw) {
	case "jsonrpc":
		return keyJSONRPC
	case "id":
		return keyID
	case "method":
		return keyMethod
	case "params":
		return keyParams
	case "result":
		return keyResult
	case "error":
		return keyError
	}
	return keyOther
}

// span is a value's byte range in the message; start < 0 means absent. esc
// reports that a string value holds an escape.
type span struct {
	start, end int
	esc        bool
}

var absent = span{-1, -1, false}

// topScan is one validating pass over a message that remembers, for each
// top-level member routing needs, the span of its last occurrence, and the
// sessionId inside the last "params" and "result" objects. It also notes the
// first member routing needs that appears twice (dup): Peek refuses such a
// message, because the bridge and the peer's JSON parser could read
// different values (first wins in some parsers, last wins in others).
type topScan struct {
	scanner
	isObject                                bool
	first                                   byte // first non-blank byte
	jsonrpc, id, method, params, result, er span
	paramsSID, resultSID, inner             span
	innerDup                                bool
	dup                                     string // the duplicated member's name, "" if none
}

func (t *topScan) visitInner(ks, ke, vs, ve int) {
	if keyIs(t.b[ks:ke], t.keyEsc, "sessionId") {
		if t.inner.start >= 0 {
			t.innerDup = true
		}
		t.inner = span{vs, ve, t.esc}
	}
}

// keyNames are the top-level members Peek tracks, by key constant.
var keyNames = [...]string{keyJSONRPC: "jsonrpc", keyID: "id", keyMethod: "method", keyParams: "params", keyResult: "result", keyError: "error"}

// noteDup records that member k was seen again, keeping the first such name.
func (t *topScan) noteDup(prev span, name string) {
	if prev.start >= 0 && t.dup == "" {
		t.dup = name
	}
}

// run validates the whole message and records the spans. It reports whether
// the message is valid JSON.
func (t *topScan) run() bool {
	t.jsonrpc, t.id, t.method, t.params, t.result, t.er = absent, absent, absent, absent, absent, absent
	t.paramsSID, t.resultSID = absent, absent
	b := t.b
	i := skipWS(b, 0)
	if i >= len(b) {
		t.fail(i, failEmptyInput)
		return false
	}
	t.first = b[i]
	if t.first != '{' {
		i = t.value(i, 0)
	} else {
		t.isObject = true
		i = t.top(i)
	}
	if i < 0 {
		return false
	}
	if i = skipWS(b, i); i < len(b) {
		t.fail(i, failTrailing)
		return false
	}
	return true
}

// top walks the top-level object at b[i]. It is object() with one twist: the
// key is classified before the value is scanned, so "params" and "result"
// objects are walked one level deeper in the same pass.
func (t *topScan) top(i int) int {
	b := t.b
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1
	}
	for {
		ks, ke, vs := t.memberKey(i)
		if vs < 0 {
			return -1
		}
		k := topKey(b[ks:ke], t.keyEsc)
		var ve int
		t.inner, t.innerDup = absent, false
		if (k == keyParams || k == keyResult) && vs < len(b) && b[vs] == '{' {
			ve = t.object(vs, 1, t.visitInner)
		} else {
			ve = t.value(vs, 1)
		}
		if ve < 0 {
			return -1
		}
		sp := span{vs, ve, t.esc} // esc: the value's, if it is a string
		switch k {
		case keyJSONRPC:
			t.noteDup(t.jsonrpc, keyNames[k])
			t.jsonrpc = sp
		case keyID:
			t.noteDup(t.id, keyNames[k])
			t.id = sp
		case keyMethod:
			t.noteDup(t.method, keyNames[k])
			t.method = sp
		case keyParams:
			t.noteDup(t.params, keyNames[k])
			if t.innerDup && t.dup == "" {
				t.dup = "params.sessionId"
			}
			t.params, t.paramsSID = sp, t.inner
		case keyResult:
			t.noteDup(t.result, keyNames[k])
			t.result, t.resultSID = sp, t.inner
		case keyError:
			t.noteDup(t.er, keyNames[k])
			t.er = sp
		}
		i = skipWS(b, ve)
		if i >= len(b) {
			return t.fail(i, failEnd)
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return i + 1
		default:
			return t.fail(i, failByte)
		}
	}
}

func invalid(msg string) *Error { return &Error{Code: CodeInvalidRequest, Message: msg} }

// Peek validates msg as one JSON-RPC 2.0 message and reports its header
// without decoding it. The error, if any, is an *Error: CodeParseError when
// msg is not valid JSON (RFC 8259, including UTF-8 inside strings, nesting
// at most 1024 deep), CodeInvalidRequest when it is JSON but not a JSON-RPC
// 2.0 message. With CodeInvalidRequest the returned Header still carries the
// id if one of a valid type was found, so the caller can answer it as the
// specification asks.
//
// A message in which "jsonrpc", "id", "method", "params", "result", "error"
// or params.sessionId appears more than once is CodeInvalidRequest: parsers
// disagree on which value counts, so the bridge could check one session
// while the agent acts on another. With a duplicated "id" the returned
// Header has no id (the answer goes to null).
//
// A valid message costs one pass over its bytes and no allocation unless
// method or sessionId contains escapes.
func Peek(msg []byte) (Header, error) {
	h := Header{IDStart: -1, IDEnd: -1}
	t := topScan{scanner: scanner{b: msg}}
	if !t.run() {
		return h, t.parseError()
	}
	if !t.isObject {
		if t.first == '[' {
			return h, invalid("batch requests are not supported")
		}
		return h, invalid("a JSON-RPC message must be a JSON object")
	}
	if t.dup != "" {
		// Which of the two values counts depends on the parser; the
		// message is refused rather than read one way here and another
		// way by the peer. A duplicated id leaves the id unknown (null).
		if t.dup != "id" && t.id.start >= 0 && validIDStart(msg[t.id.start]) {
			h.ID, h.IDStart, h.IDEnd = msg[t.id.start:t.id.end], t.id.start, t.id.end
		}
		return h, invalid(`member "` + t.dup + `" appears more than once; send each member once`)
	}
	if t.id.start >= 0 {
		if !validIDStart(msg[t.id.start]) {
			return h, invalid(`"id" must be a number, a string or null`)
		}
		h.ID, h.IDStart, h.IDEnd = msg[t.id.start:t.id.end], t.id.start, t.id.end
	}
	if !isString(msg, t.jsonrpc) || string(unquote(msg, t.jsonrpc.start, t.jsonrpc.end, t.jsonrpc.esc)) != "2.0" {
		return h, invalid(`"jsonrpc" must be "2.0"`)
	}
	hasMethod, hasResult, hasError := t.method.start >= 0, t.result.start >= 0, t.er.start >= 0
	switch {
	case hasMethod && (hasResult || hasError):
		return h, invalid(`a message cannot have both "method" and "result" or "error"`)
	case hasMethod:
		if !isString(msg, t.method) {
			return h, invalid(`"method" must be a string`)
		}
		if t.params.start >= 0 {
			if c := msg[t.params.start]; c != '{' && c != '[' {
				return h, invalid(`"params" must be an object or an array`)
			}
		}
		h.Kind = KindNotification
		if h.ID != nil {
			h.Kind = KindRequest
		}
		h.Method = unquote(msg, t.method.start, t.method.end, t.method.esc)
		if isString(msg, t.paramsSID) {
			h.SessionID = unquote(msg, t.paramsSID.start, t.paramsSID.end, t.paramsSID.esc)
		}
	case hasResult && hasError:
		return h, invalid(`a response cannot have both "result" and "error"`)
	case hasResult || hasError:
		if h.ID == nil {
			return h, invalid(`a response must have an "id"`)
		}
		h.Kind = KindResponse
		h.IsError = hasError
	default:
		return h, invalid(`a message needs "method" (request or notification) or "result" or "error" (response)`)
	}
	return h, nil
}

// validIDStart reports whether a value starting with c is a valid id: a
// number, a string or null.
func validIDStart(c byte) bool {
	switch c {
	case '"', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'n':
		return true
	}
	return false
}

func isString(msg []byte, sp span) bool { return sp.start >= 0 && msg[sp.start] == '"' }

// ReplaceID appends msg to dst with its id value replaced by newID, which
// must be raw JSON (a number, a quoted string or null). h must be Peek's
// header for this very msg. A message without an id is appended unchanged.
// It does not allocate when dst has room for the result.
func ReplaceID(dst, msg []byte, h Header, newID []byte) []byte {
	if h.IDStart < 0 {
		return append(dst, msg...)
	}
	dst = append(dst, msg[:h.IDStart]...)
	dst = append(dst, newID...)
	return append(dst, msg[h.IDEnd:]...)
}

// ResultSessionID returns result.sessionId of a response (what session/new
// and session/load answer), unquoted: borrowed from msg unless it contains
// escapes. Nil when msg is not valid JSON, or result is not an object holding
// a string sessionId.
//
// It uses Peek's scanner rather than a sonic path lookup so that duplicate
// and escaped keys resolve exactly as they do for routing, and it does not
// allocate.
func ResultSessionID(msg []byte) []byte {
	t := topScan{scanner: scanner{b: msg}}
	if !t.run() || !t.isObject || !isString(msg, t.resultSID) {
		return nil
	}
	return unquote(msg, t.resultSID.start, t.resultSID.end, t.resultSID.esc)
}

// Member finds the value at path, a chain of object keys from the top level
// of msg (e.g. "params", "_meta", "progressToken"), and returns its span
// msg[start:end]. start is -1 when the value is absent or something on the
// way is not an object. dup reports that a key on the path appears twice in
// its object: the value is then ambiguous and start is -1. msg must be a
// message Peek accepted. Keys match after decoding escapes, as in Peek. It
// does not allocate.
func Member(msg []byte, path ...string) (start, end int, dup bool) {
	s := scanner{b: msg}
	i := skipWS(msg, 0)
	start, end = -1, -1
	for _, key := range path {
		if i >= len(msg) || msg[i] != '{' {
			return -1, -1, false
		}
		vs, ve := -1, -1
		if s.object(i, 0, func(ks, ke, a, b int) {
			if keyIs(msg[ks:ke], s.keyEsc, key) {
				if vs >= 0 {
					dup = true
				}
				vs, ve = a, b
			}
		}) < 0 || dup || vs < 0 {
			return -1, -1, dup
		}
		i, start, end = vs, vs, ve
	}
	return start, end, false
}

// Splice appends msg to dst with the value at msg[start:end] replaced by
// val (raw JSON). Spans must come from Member or Peek on this msg.
func Splice(dst, msg []byte, start, end int, val []byte) []byte {
	dst = append(dst, msg[:start]...)
	dst = append(dst, val...)
	return append(dst, msg[end:]...)
}
