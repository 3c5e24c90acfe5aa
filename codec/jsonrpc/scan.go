package jsonrpc

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// maxDepth bounds the nesting of arrays and objects. A JSON-RPC message has no
// business nesting deeper, and the bound keeps the bracket stack on the
// goroutine stack (16 words) instead of the heap.
const maxDepth = 1024

// Why the scanner stopped. Constants, so failing costs nothing until a
// message is built for the peer.
const (
	failNone       = ""
	failByte       = "unexpected character"
	failEnd        = "unexpected end of input"
	failEscape     = "invalid escape sequence in string"
	failControl    = "unescaped control character in string"
	failUTF8       = "invalid UTF-8 in string"
	failDepth      = "nesting deeper than 1024 levels"
	failTrailing   = "data after the top-level value"
	failEmptyInput = "empty message"
)

// scanner validates JSON strictly (RFC 8259, UTF-8 inside strings) while
// reporting the spans the router needs, so each byte is looked at once.
// It never allocates.
type scanner struct {
	b      []byte
	errAt  int
	reason string
	// esc reports that the string str scanned last holds an escape, and
	// keyEsc the same of the key memberKey scanned last (object restores
	// it for visit): without one, a key or value is compared and returned
	// as it lies, with no second look for a backslash.
	esc, keyEsc bool
}

// fail records the first failure and returns -1, the "no end" index every
// scanning method returns on failure.
func (s *scanner) fail(i int, reason string) int {
	if s.reason == failNone {
		s.errAt, s.reason = i, reason
	}
	return -1
}

func (s *scanner) failAt(i int) int {
	if i >= len(s.b) {
		return s.fail(i, failEnd)
	}
	return s.fail(i, failByte)
}

// parseError turns the recorded failure into the error a peer is sent.
func (s *scanner) parseError() *Error {
	return &Error{
		Code:    CodeParseError,
		Message: "invalid JSON: " + s.reason + " at byte " + strconv.Itoa(s.errAt),
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// SWAR constants: eight bytes of a string are checked at once for the only
// bytes that need attention: '"', '\\', controls (< 0x20) and non-ASCII.
const (
	lsb   = 0x0101010101010101
	msb   = 0x8080808080808080
	quote = '"' * lsb
	bslsh = '\\' * lsb
	space = 0x20 * lsb
)

// special returns a mask whose lowest set high bit marks the first byte of w
// (little endian) that is a quote, a backslash, a control or non-ASCII byte.
// Bits above the lowest may be false positives, which is why callers only use
// the lowest.
func special(w uint64) uint64 {
	q := w ^ quote
	e := w ^ bslsh
	return ((q-lsb)&^q | (e-lsb)&^e | (w - space) | w) & msb
}

// str validates the string whose opening quote is at b[i] and returns the
// index just past its closing quote.
func (s *scanner) str(i int) int {
	b := s.b
	j := i + 1
	s.esc = false
	for {
		for j+8 <= len(b) {
			m := special(binary.LittleEndian.Uint64(b[j:]))
			if m != 0 {
				j += bits.TrailingZeros64(m) >> 3
				break
			}
			j += 8
		}
		if j >= len(b) {
			return s.fail(j, failEnd)
		}
		c := b[j]
		switch {
		case c == '"':
			return j + 1
		case c == '\\':
			s.esc = true
			if j+1 >= len(b) {
				return s.fail(j+1, failEnd)
			}
			switch b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j += 2
			case 'u':
				if j+6 > len(b) {
					return s.fail(len(b), failEnd)
				}
				if _, ok := hex4(b[j+2 : j+6]); !ok {
					return s.fail(j, failEscape)
				}
				j += 6
			default:
				return s.fail(j, failEscape)
			}
		case c < 0x20:
			return s.fail(j, failControl)
		case c < utf8.RuneSelf:
			j++
		default:
			r, n := utf8.DecodeRune(b[j:])
			if r == utf8.RuneError && n <= 1 {
				return s.fail(j, failUTF8)
			}
			j += n
		}
	}
}

func hex4(h []byte) (rune, bool) {
	var r rune
	for _, c := range h {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number validates the number starting at b[i] (RFC 8259 grammar).
func (s *scanner) number(i int) int {
	b := s.b
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return s.fail(i, failEnd)
	case b[i] == '0':
		i++
	case isDigit(b[i]):
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	default:
		return s.fail(i, failByte)
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return s.failAt(i)
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return s.failAt(i)
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	return i
}

func (s *scanner) literal(i int, lit string) int {
	b := s.b
	for k := 0; k < len(lit); k++ {
		if i+k >= len(b) || b[i+k] != lit[k] {
			return s.failAt(i + k)
		}
	}
	return i + len(lit)
}

// scalar validates a string, number or literal at b[i].
func (s *scanner) scalar(i int) int {
	b := s.b
	if i >= len(b) {
		return s.fail(i, failEnd)
	}
	switch c := b[i]; {
	case c == '"':
		return s.str(i)
	case c == '-' || isDigit(c):
		return s.number(i)
	case c == 't':
		return s.literal(i, "true")
	case c == 'f':
		return s.literal(i, "false")
	case c == 'n':
		return s.literal(i, "null")
	}
	return s.fail(i, failByte)
}

// value validates any value at b[i], which sits inside depth enclosing
// containers, and returns the index just past it.
func (s *scanner) value(i, depth int) int {
	if i < len(s.b) && (s.b[i] == '{' || s.b[i] == '[') {
		return s.container(i, depth)
	}
	return s.scalar(i)
}

// memberKey validates `"key" :` at b[i] (after whitespace) and returns the
// key's content span and the index of the value (whitespace skipped).
func (s *scanner) memberKey(i int) (ks, ke, vi int) {
	b := s.b
	if i >= len(b) || b[i] != '"' {
		return 0, 0, s.failAt(i)
	}
	// Keys are short and plain: a byte loop over a table costs less than
	// str's word loop; anything else (an escape, a control, non-ASCII, the
	// end) goes to str for the full check.
	e := i + 1
	for e < len(b) && plain[b[e]] {
		e++
	}
	if e < len(b) && b[e] == '"' {
		e++
		s.esc = false
	} else if e = s.str(i); e < 0 {
		return 0, 0, -1
	}
	s.keyEsc = s.esc
	j := e
	if j >= len(b) || b[j] != ':' {
		if j = skipWS(b, j); j >= len(b) || b[j] != ':' {
			return 0, 0, s.failAt(j)
		}
	}
	if j++; j < len(b) && b[j] > ' ' {
		return i + 1, e - 1, j // no blank after the colon, the usual case
	}
	return i + 1, e - 1, skipWS(b, j)
}

// plain reports the bytes a JSON string holds as they are, with nothing to
// check: printable ASCII but the quote and the backslash.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// Container states.
const (
	stFirst = iota // just opened: a first member/element or the closing bracket
	stValue        // a value must follow
	stAfter        // a value ended: a comma or the closing bracket
)

// container validates the array or object opening at b[i] without recursion:
// the kind of every open container is one bit in a fixed stack.
func (s *scanner) container(i, depth int) int {
	b := s.b
	var objs [maxDepth / 64]uint64
	n := 0 // open containers
	obj := false
	st := stValue
	for {
		i = skipWS(b, i)
		if i >= len(b) {
			return s.fail(i, failEnd)
		}
		c := b[i]
		closing := false
		switch st {
		case stValue:
			if c == '{' || c == '[' {
				if depth+n >= maxDepth {
					return s.fail(i, failDepth)
				}
				obj = c == '{'
				if obj {
					objs[n>>6] |= 1 << (n & 63)
				} else {
					objs[n>>6] &^= 1 << (n & 63)
				}
				n++
				i++
				st = stFirst
				continue
			}
			if i = s.scalar(i); i < 0 {
				return -1
			}
			st = stAfter
		case stFirst:
			if (obj && c == '}') || (!obj && c == ']') {
				closing = true
				break
			}
			if obj {
				if _, _, i = s.memberKey(i); i < 0 {
					return -1
				}
			}
			st = stValue
		case stAfter:
			switch {
			case c == ',':
				i++
				if obj {
					if _, _, i = s.memberKey(skipWS(b, i)); i < 0 {
						return -1
					}
				}
				st = stValue
			case (obj && c == '}') || (!obj && c == ']'):
				closing = true
			default:
				return s.fail(i, failByte)
			}
		}
		if closing {
			i++
			n--
			if n == 0 {
				return i
			}
			obj = objs[(n-1)>>6]>>((n-1)&63)&1 == 1
			st = stAfter
		}
	}
}

// object walks the object opening at b[i] (inside depth containers) one
// level deep, validating all of it, and calls visit for every member with the
// key's content span and the value's span; during visit, s.keyEsc is the
// key's escape flag and s.esc the value's when it is a string. visit does
// not escape, so a method value passed here stays on the stack.
func (s *scanner) object(i, depth int, visit func(ks, ke, vs, ve int)) int {
	b := s.b
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1
	}
	for {
		ks, ke, vs := s.memberKey(i)
		if vs < 0 {
			return -1
		}
		kesc := s.keyEsc
		ve := s.value(vs, depth+1)
		if ve < 0 {
			return -1
		}
		s.keyEsc = kesc // the value's own members moved it
		visit(ks, ke, vs, ve)
		i = skipWS(b, ve)
		if i >= len(b) {
			return s.fail(i, failEnd)
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return i + 1
		default:
			return s.fail(i, failByte)
		}
	}
}

// keyIs reports whether the key content raw (escapes not decoded) names want;
// esc says whether raw holds an escape. Escaped keys are decoded into a
// stack buffer: a peer must not be able to hide "id" from the router as
// "\u0069d" while the agent still sees an id.
func keyIs(raw []byte, esc bool, want string) bool {
	if !esc {
		return string(raw) == want
	}
	if len(raw) > 6*len(want) { // every decoded byte costs at most \uXXXX
		return false
	}
	var buf [64]byte
	return string(appendUnquoted(buf[:0], raw)) == want
}

// unquote returns the decoded content of the string value spanning b[vs:ve]
// (quotes included): borrowed from b when it has no escapes (esc false),
// else a copy.
func unquote(b []byte, vs, ve int, esc bool) []byte {
	raw := b[vs+1 : ve-1]
	if !esc {
		return raw
	}
	return appendUnquoted(make([]byte, 0, len(raw)), raw)
}

// appendUnquoted decodes JSON string content the way encoding/json does:
// an unpaired surrogate becomes U+FFFD.
func appendUnquoted(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		j := bytes.IndexByte(s[i:], '\\')
		if j < 0 {
			return append(dst, s[i:]...)
		}
		dst = append(dst, s[i:i+j]...)
		i += j
		if i+1 >= len(s) {
			return utf8.AppendRune(dst, utf8.RuneError)
		}
		c := s[i+1]
		i += 2
		switch c {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, ok := rune(0), false
			if i+4 <= len(s) {
				r, ok = hex4(s[i : i+4])
			}
			if !ok {
				dst = utf8.AppendRune(dst, utf8.RuneError)
				continue
			}
			i += 4
			if utf16.IsSurrogate(r) {
				r2 := utf8.RuneError
				if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
					if lo, ok := hex4(s[i+2 : i+6]); ok {
						r2 = utf16.DecodeRune(r, lo)
					}
				}
				if r2 != utf8.RuneError {
					i += 6
				}
				r = r2
			}
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, c)
		}
	}
	return dst
}
