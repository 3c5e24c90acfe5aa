package jsonrpc

import (
	"strconv"
	"unicode/utf8"

	"github.com/bytedance/sonic"
	"github.com/bytedance/sonic/encoder"
)

// api is the one sonic configuration of the project:
//   - CopyString: decoded strings must not alias the input, which is usually a
//     borrowed event-loop buffer that is reused after the call.
//   - ValidateString: reject raw control characters when decoding, and turn
//     invalid UTF-8 into U+FFFD when encoding, as encoding/json does; output
//     goes into WebSocket text frames, which must be UTF-8.
//   - CaseSensitive: JSON-RPC member names are case-sensitive, and Peek matches
//     them exactly; a struct field must not match "SESSIONID" when routing
//     ignored it.
var api = sonic.Config{CopyString: true, ValidateString: true, CaseSensitive: true}.Froze()

// encOpts mirrors api's encoder options for encoder.EncodeInto.
const encOpts = encoder.ValidateString

// Marshal encodes v with sonic (see api for the options). Safe from any
// goroutine.
func Marshal(v any) ([]byte, error) { return api.Marshal(v) }

// Unmarshal decodes data into v with sonic, for the messages the bridge
// answers itself. Decoded strings are copies, so data may be a borrowed
// buffer. Safe from any goroutine.
func Unmarshal(data []byte, v any) error { return api.Unmarshal(data, v) }

// appendValue appends the JSON encoding of v to dst. sonic post-processes
// (UTF-8 correction) the whole buffer it is given, so it gets only the empty
// tail of dst; when it encoded in place the tail is adopted without a copy.
func appendValue(dst []byte, v any) ([]byte, error) {
	tail := dst[len(dst):]
	if err := encoder.EncodeInto(&tail, v, encOpts); err != nil {
		return dst, err
	}
	if len(tail) == 0 {
		return dst, nil
	}
	if cap(dst)-len(dst) >= len(tail) && &dst[:len(dst)+1][len(dst)] == &tail[0] {
		return dst[:len(dst)+len(tail)], nil
	}
	return append(dst, tail...), nil
}

// appendHead appends `{"jsonrpc":"2.0","id":ID` (null for a nil id).
func appendHead(dst, id []byte) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	if id == nil {
		return append(dst, "null"...)
	}
	return append(dst, id...)
}

// AppendResponse appends a success response carrying result, encoded with
// sonic, for the raw JSON id (nil means null). If result cannot be encoded
// the peer still gets an answer: an error response with CodeInternal that
// says why. Safe from any goroutine.
func AppendResponse(dst, id []byte, result any) []byte {
	start := len(dst)
	dst = appendHead(dst, id)
	dst = append(dst, `,"result":`...)
	dst, err := appendValue(dst, result)
	if err != nil {
		return AppendError(dst[:start], id, &Error{
			Code:    CodeInternal,
			Message: "the bridge could not encode its result: " + err.Error(),
		})
	}
	return append(dst, '}')
}

// AppendRawResponse appends a success response whose result is rawResult,
// which must be valid JSON (empty means null), e.g. a cached initialize
// result. Safe from any goroutine.
func AppendRawResponse(dst, id, rawResult []byte) []byte {
	dst = appendHead(dst, id)
	dst = append(dst, `,"result":`...)
	if len(rawResult) == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, rawResult...)
	}
	return append(dst, '}')
}

// AppendError appends an error response for the raw JSON id (nil means null,
// as the specification asks when the id could not be determined). If e.Data
// cannot be encoded it is left out and the message says so. A nil e is
// written as an internal error. Safe from any goroutine.
func AppendError(dst, id []byte, e *Error) []byte {
	if e == nil {
		e = &Error{Code: CodeInternal, Message: "internal error"}
	}
	dst = appendHead(dst, id)
	dst = append(dst, `,"error":{"code":`...)
	dst = strconv.AppendInt(dst, int64(e.Code), 10)
	dst = append(dst, `,"message":`...)
	msgAt := len(dst)
	dst = appendString(dst, e.Message)
	if e.Data != nil {
		dst = append(dst, `,"data":`...)
		var err error
		if dst, err = appendValue(dst, e.Data); err != nil {
			dst = appendString(dst[:msgAt], e.Message+" (error data could not be encoded: "+err.Error()+")")
		}
	}
	return append(dst, "}}"...)
}

// AppendNotification appends a notification. A nil params (or one that
// encodes to null) is left out. params must encode to an object or an array;
// anything else, or an encoding failure, is a programming error in the
// bridge and panics, because no correct message can be written. Safe from any
// goroutine.
func AppendNotification(dst []byte, method string, params any) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","method":`...)
	dst = appendString(dst, method)
	dst = appendParams(dst, method, params)
	return append(dst, '}')
}

// AppendRequest appends a request with the raw JSON id (nil means null,
// which JSON-RPC discourages). params as for AppendNotification. Safe from
// any goroutine.
func AppendRequest(dst, id []byte, method string, params any) []byte {
	dst = appendHead(dst, id)
	dst = append(dst, `,"method":`...)
	dst = appendString(dst, method)
	dst = appendParams(dst, method, params)
	return append(dst, '}')
}

func appendParams(dst []byte, method string, params any) []byte {
	if params == nil {
		return dst
	}
	at := len(dst)
	dst = append(dst, `,"params":`...)
	v := len(dst)
	dst, err := appendValue(dst, params)
	if err != nil {
		panic("jsonrpc: cannot encode params of " + method + ": " + err.Error())
	}
	switch dst[v] {
	case '{', '[':
		return dst
	case 'n': // a typed nil
		return dst[:at]
	}
	panic("jsonrpc: params of " + method + " must encode to an object or an array, got " + string(dst[v:]))
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as
// with encoding/json, so the output is always valid UTF-8.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, `\ufffd`...)
				start = i + 1
			}
			i += n
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
