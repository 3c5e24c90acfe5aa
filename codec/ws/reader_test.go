package ws

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// readCase is one row of the RFC 6455 receive suite. Each row is fed whole,
// one byte at a time and in 7-byte chunks, and all three must agree.
type readCase struct {
	name     string
	in       []byte
	want     []got
	code     CloseCode // expected failure; 0 for none
	max      int       // Reader.MaxMessage
	unmasked bool      // Reader.RequireMask false
}

func (c readCase) reader() *Reader {
	return &Reader{MaxMessage: c.max, RequireMask: !c.unmasked}
}

func runCases(t *testing.T, cases []readCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			check := func(mode string, events []got, err error) {
				t.Helper()
				if !slices.Equal(events, c.want) {
					t.Fatalf("%s: events\n got %s\nwant %s", mode, brief(events), brief(c.want))
				}
				if code := errCode(err); code != c.code {
					t.Fatalf("%s: error %v (code %d), want code %d", mode, err, code, c.code)
				}
				if c.code != 0 && !errors.Is(err, c.code) {
					t.Fatalf("%s: errors.Is(%v, %d) is false", mode, err, c.code)
				}
			}
			r := c.reader()
			events, err := feedWhole(t, r, c.in)
			check("whole", events, err)
			if err != nil {
				// A failed Reader stays failed and consumes nothing.
				if _, n, err2 := r.Next(c.in); n != 0 || err2 != err {
					t.Fatalf("after failure: n=%d err=%v, want 0 and the same error", n, err2)
				}
			}
			events, err, _ = feedChunked(t, c.reader(), c.in, 1)
			check("byte by byte", events, err)
			events, err, _ = feedChunked(t, c.reader(), c.in, 7)
			check("7-byte chunks", events, err)
			// InPlace: the same events, whatever the chunking (feedChunked
			// hands the Reader its own copy of the bytes, as gnet does).
			for _, chunk := range []int{max(len(c.in), 1), 1, 7} {
				r := c.reader()
				r.InPlace = true
				events, err, _ = feedChunked(t, r, c.in, chunk)
				check(fmt.Sprintf("in place, %d-byte chunks", chunk), events, err)
			}
		})
	}
}

// brief prints events without megabytes of payload.
func brief(events []got) string {
	var b strings.Builder
	b.WriteString("[")
	for i, e := range events {
		if i > 0 {
			b.WriteString(" ")
		}
		p := e.Payload
		if len(p) > 40 {
			p = fmt.Sprintf("%.40q...(%d bytes)", p, len(p))
		} else {
			p = fmt.Sprintf("%q", p)
		}
		fmt.Fprintf(&b, "%v(%s", e.Kind, p)
		if e.Kind == EventClose {
			fmt.Fprintf(&b, " %d", e.Code)
		}
		b.WriteString(")")
	}
	b.WriteString("]")
	return b.String()
}

func pattern(n int, textual bool) string {
	b := make([]byte, n)
	for i := range b {
		if textual {
			b[i] = 'a' + byte(i%26)
		} else {
			b[i] = byte(i * 7)
		}
	}
	return string(b)
}

// Autobahn 1.x: frame sizes across every length encoding.
func TestReaderFrameSizes(t *testing.T) {
	var cases []readCase
	for _, size := range []int{0, 1, 125, 126, 127, 65535, 65536, 1 << 20} {
		txt, bin := pattern(size, true), pattern(size, false)
		cases = append(cases,
			readCase{name: fmt.Sprintf("masked text %d", size), in: mf(true, OpText, txt), want: []got{evText(txt)}},
			readCase{name: fmt.Sprintf("masked binary %d", size), in: mf(true, OpBinary, bin), want: []got{evBinary(bin)}},
		)
		if size <= 65536 {
			cases = append(cases,
				readCase{name: fmt.Sprintf("unmasked binary %d", size), in: uf(true, OpBinary, bin), want: []got{evBinary(bin)}, unmasked: true},
				readCase{name: fmt.Sprintf("unmasked text %d rejected", size), in: uf(true, OpText, txt), code: CloseProtocolError},
			)
		}
	}
	cases = append(cases,
		readCase{name: "masked and unmasked mixed when mask optional",
			in:       cat(mf(true, OpText, "a"), uf(true, OpText, "b"), mf(true, OpPing, "c")),
			want:     []got{evText("a"), evText("b"), evPing("c")},
			unmasked: true},
		readCase{name: "unmasked ping rejected", in: uf(true, OpPing, "x"), code: CloseProtocolError},
		readCase{name: "three messages in one buffer",
			in:   cat(mf(true, OpText, "one"), mf(true, OpBinary, "two"), mf(true, OpText, "three")),
			want: []got{evText("one"), evBinary("two"), evText("three")}},
		readCase{name: "valid frame then unmasked frame",
			in:   cat(mf(true, OpText, "ok"), uf(true, OpText, "no")),
			want: []got{evText("ok")}, code: CloseProtocolError},
		readCase{name: "incomplete header waits", in: mf(true, OpText, pattern(300, true))[:5]},
		readCase{name: "incomplete masked header waits", in: mf(true, OpText, "abc")[:5]},
	)
	runCases(t, cases)
}

// Length field encodings, including the non-minimal ones this package
// accepts (see the package documentation).
func TestReaderLengthEncodings(t *testing.T) {
	runCases(t, []readCase{
		{name: "16-bit length for 5 bytes (non-minimal) accepted",
			in: rawFrame(0x81, []byte{126, 0, 5}, "Hello"), want: []got{evText("Hello")}},
		{name: "64-bit length for 5 bytes (non-minimal) accepted",
			in: rawFrame(0x81, []byte{127, 0, 0, 0, 0, 0, 0, 0, 5}, "Hello"), want: []got{evText("Hello")}},
		{name: "64-bit length for 300 bytes (non-minimal) accepted",
			in: rawFrame(0x82, []byte{127, 0, 0, 0, 0, 0, 0, 1, 44}, pattern(300, false)), want: []got{evBinary(pattern(300, false))}},
		{name: "16-bit length 0 accepted",
			in: rawFrame(0x82, []byte{126, 0, 0}, ""), want: []got{evBinary("")}},
		{name: "64-bit length with the top bit set",
			in: rawFrame(0x82, []byte{127, 0x80, 0, 0, 0, 0, 0, 0, 5}, ""), code: CloseProtocolError},
		{name: "64-bit length all ones",
			in: rawFrame(0x82, []byte{127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, ""), code: CloseProtocolError},
		{name: "64-bit length 2^62 is too big, not a protocol error",
			in: rawFrame(0x82, []byte{127, 0x40, 0, 0, 0, 0, 0, 0, 0}, ""), code: CloseTooBig},
	})
}

// MaxMessage is enforced from frame headers, before any payload arrives.
func TestReaderMaxMessage(t *testing.T) {
	hdrOnly := func(b []byte, payloadLen int) []byte { return b[:len(b)-payloadLen] }
	runCases(t, []readCase{
		{name: "exactly the limit", max: 10, in: mf(true, OpText, "0123456789"), want: []got{evText("0123456789")}},
		{name: "one over, header only", max: 10, in: hdrOnly(mf(true, OpText, "0123456789A"), 11), code: CloseTooBig},
		{name: "one over, whole frame", max: 10, in: mf(true, OpBinary, "0123456789A"), code: CloseTooBig},
		{name: "fragments adding up to the limit", max: 10,
			in:   cat(mf(false, OpText, "01234"), mf(true, OpContinuation, "56789")),
			want: []got{evText("0123456789")}},
		{name: "fragments going over", max: 10,
			in:   cat(mf(false, OpText, "01234"), mf(false, OpContinuation, "5678"), hdrOnly(mf(true, OpContinuation, "9A"), 2)),
			code: CloseTooBig},
		{name: "limit is per message", max: 10,
			in:   cat(mf(true, OpText, "0123456789"), mf(true, OpText, "0123456789")),
			want: []got{evText("0123456789"), evText("0123456789")}},
		{name: "control frames are not counted", max: 10,
			in:   cat(mf(false, OpText, "01234"), mf(true, OpPing, pattern(125, false)), mf(true, OpContinuation, "56789")),
			want: []got{evPing(pattern(125, false)), evText("0123456789")}},
		{name: "default limit is 16 MiB",
			in:   rawFrame(0x82, []byte{127, 0, 0, 0, 0, 0x01, 0, 0, 1}, ""), // 16 MiB + 1
			code: CloseTooBig},
		{name: "default limit allows exactly 16 MiB",
			in: rawFrame(0x82, []byte{127, 0, 0, 0, 0, 0x01, 0, 0, 0}, "start of a 16 MiB payload")},
	})
}

// Autobahn 2.x: pings and pongs.
func TestReaderPingPong(t *testing.T) {
	runCases(t, []readCase{
		{name: "empty ping", in: mf(true, OpPing, ""), want: []got{evPing("")}},
		{name: "ping with text", in: mf(true, OpPing, "Hello, world!"), want: []got{evPing("Hello, world!")}},
		{name: "ping with binary", in: mf(true, OpPing, "\x00\xff\xfe\xfd\xfc\xfb\x00\xff"), want: []got{evPing("\x00\xff\xfe\xfd\xfc\xfb\x00\xff")}},
		{name: "ping with 125 bytes", in: mf(true, OpPing, pattern(125, false)), want: []got{evPing(pattern(125, false))}},
		{name: "ping with 126 bytes", in: mf(true, OpPing, pattern(126, false)), code: CloseProtocolError},
		{name: "ping with 64-bit length", in: rawFrame(0x89, []byte{127, 0, 0, 0, 0, 0, 0, 0, 5}, "Hello"), code: CloseProtocolError},
		{name: "unsolicited empty pong", in: mf(true, OpPong, ""), want: []got{evPong("")}},
		{name: "unsolicited pong", in: mf(true, OpPong, "unsolicited"), want: []got{evPong("unsolicited")}},
		{name: "pong with 126 bytes", in: mf(true, OpPong, pattern(126, false)), code: CloseProtocolError},
		{name: "ten pings", in: bytes.Repeat(mf(true, OpPing, "payload"), 10),
			want: slices.Repeat([]got{evPing("payload")}, 10)},
		{name: "ping, text, pong", in: cat(mf(true, OpPing, "p"), mf(true, OpText, "t"), mf(true, OpPong, "q")),
			want: []got{evPing("p"), evText("t"), evPong("q")}},
	})
}

// Autobahn 3.x: reserved bits without a negotiated extension.
func TestReaderReservedBits(t *testing.T) {
	var cases []readCase
	for _, rsv := range []byte{0x40, 0x20, 0x10, 0x70} {
		for _, op := range []Opcode{OpText, OpBinary, OpPing, OpClose, OpContinuation} {
			f := mf(true, op, "")
			f[0] |= rsv
			cases = append(cases, readCase{
				name: fmt.Sprintf("rsv 0x%02x on %v", rsv, op),
				in:   cat(mf(true, OpText, "before"), f, mf(true, OpText, "after")),
				want: []got{evText("before")}, code: CloseProtocolError,
			})
		}
	}
	f := mf(false, OpText, "frag")
	cont := mf(true, OpContinuation, "ment")
	cont[0] |= 0x40
	cases = append(cases, readCase{name: "rsv1 on a continuation", in: cat(f, cont), code: CloseProtocolError})
	runCases(t, cases)
}

// Autobahn 4.x: reserved opcodes.
func TestReaderReservedOpcodes(t *testing.T) {
	var cases []readCase
	for _, op := range []Opcode{3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF} {
		cases = append(cases,
			readCase{name: fmt.Sprintf("opcode %#x alone", byte(op)), in: mf(true, op, ""), code: CloseProtocolError},
			readCase{name: fmt.Sprintf("opcode %#x between messages", byte(op)),
				in:   cat(mf(true, OpText, "a"), mf(true, op, "reserved"), mf(true, OpPing, "")),
				want: []got{evText("a")}, code: CloseProtocolError},
			readCase{name: fmt.Sprintf("opcode %#x inside a fragmented message", byte(op)),
				in:   cat(mf(false, OpText, "a"), mf(true, op, "")),
				code: CloseProtocolError},
		)
	}
	runCases(t, cases)
}

// Autobahn 5.x: fragmentation, with control frames interleaved.
func TestReaderFragmentation(t *testing.T) {
	perByte := func(op Opcode, s string) []byte {
		var out []byte
		for i := 0; i < len(s); i++ {
			o := OpContinuation
			if i == 0 {
				o = op
			}
			out = append(out, mf(i == len(s)-1, o, s[i:i+1])...)
		}
		return out
	}
	runCases(t, []readCase{
		{name: "fragmented ping", in: mf(false, OpPing, "a"), code: CloseProtocolError},
		{name: "fragmented ping with continuation", in: cat(mf(false, OpPing, "frag"), mf(true, OpContinuation, "ment")), code: CloseProtocolError},
		{name: "fragmented pong", in: mf(false, OpPong, "a"), code: CloseProtocolError},
		{name: "fragmented close", in: mf(false, OpClose, closePayload(1000, "")), code: CloseProtocolError},
		{name: "text in 2 fragments", in: cat(mf(false, OpText, "frag"), mf(true, OpContinuation, "ment")), want: []got{evText("fragment")}},
		{name: "binary in 2 fragments", in: cat(mf(false, OpBinary, "\x00\x01"), mf(true, OpContinuation, "\x02")), want: []got{evBinary("\x00\x01\x02")}},
		{name: "text in 3 fragments", in: cat(mf(false, OpText, "a"), mf(false, OpContinuation, "b"), mf(true, OpContinuation, "c")), want: []got{evText("abc")}},
		{name: "text in 1 fragment per byte", in: perByte(OpText, "fragmented message"), want: []got{evText("fragmented message")}},
		{name: "binary in 1 fragment per byte", in: perByte(OpBinary, pattern(200, false)), want: []got{evBinary(pattern(200, false))}},
		{name: "large fragments", in: cat(mf(false, OpBinary, pattern(70000, false)), mf(false, OpContinuation, pattern(300, true)), mf(true, OpContinuation, pattern(65536, false))),
			want: []got{evBinary(pattern(70000, false) + pattern(300, true) + pattern(65536, false))}},
		{name: "empty first fragment", in: cat(mf(false, OpText, ""), mf(true, OpContinuation, "x")), want: []got{evText("x")}},
		{name: "empty middle and last fragments",
			in:   cat(mf(false, OpText, "a"), mf(false, OpContinuation, ""), mf(false, OpContinuation, "b"), mf(true, OpContinuation, "")),
			want: []got{evText("ab")}},
		{name: "all fragments empty", in: cat(mf(false, OpText, ""), mf(false, OpContinuation, ""), mf(true, OpContinuation, "")), want: []got{evText("")}},
		{name: "ping between fragments",
			in:   cat(mf(false, OpText, "frag"), mf(true, OpPing, "ping"), mf(true, OpContinuation, "ment")),
			want: []got{evPing("ping"), evText("fragment")}},
		{name: "pong between fragments",
			in:   cat(mf(false, OpBinary, "frag"), mf(true, OpPong, "pong"), mf(true, OpContinuation, "ment")),
			want: []got{evPong("pong"), evBinary("fragment")}},
		{name: "many control frames between fragments",
			in: cat(mf(false, OpText, "a"), mf(true, OpPing, "1"), mf(true, OpPong, "2"), mf(false, OpContinuation, "b"),
				mf(true, OpPing, ""), mf(false, OpContinuation, ""), mf(true, OpPing, "3"), mf(true, OpContinuation, "c")),
			want: []got{evPing("1"), evPong("2"), evPing(""), evPing("3"), evText("abc")}},
		{name: "close between fragments ends the stream",
			in:   cat(mf(false, OpText, "frag"), mf(true, OpClose, closePayload(1000, "bye")), mf(true, OpContinuation, "ment")),
			want: []got{evClose(CloseNormal, "bye")}},
		{name: "two fragmented messages back to back",
			in: cat(mf(false, OpText, "a"), mf(true, OpContinuation, "b"),
				mf(false, OpBinary, "c"), mf(true, OpContinuation, "d")),
			want: []got{evText("ab"), evBinary("cd")}},
		{name: "continuation first, final", in: mf(true, OpContinuation, "x"), code: CloseProtocolError},
		{name: "continuation first, non-final", in: mf(false, OpContinuation, "x"), code: CloseProtocolError},
		{name: "continuation after a complete message",
			in:   cat(mf(true, OpText, "done"), mf(true, OpContinuation, "extra")),
			want: []got{evText("done")}, code: CloseProtocolError},
		{name: "text inside a fragmented text message",
			in: cat(mf(false, OpText, "a"), mf(true, OpText, "b")), code: CloseProtocolError},
		{name: "binary inside a fragmented text message",
			in: cat(mf(false, OpText, "a"), mf(false, OpBinary, "b")), code: CloseProtocolError},
		{name: "text inside a fragmented binary message after a ping",
			in:   cat(mf(false, OpBinary, "a"), mf(true, OpPing, "p"), mf(true, OpText, "b")),
			want: []got{evPing("p")}, code: CloseProtocolError},
		{name: "unfinished message waits", in: cat(mf(false, OpText, "a"), mf(false, OpContinuation, "b"))},
	})
}

// Autobahn 7.x: the close frame.
func TestReaderClose(t *testing.T) {
	cases := []readCase{
		{name: "empty close", in: mf(true, OpClose, ""), want: []got{evClose(CloseNoStatus, "")}},
		{name: "close 1000 no reason", in: mf(true, OpClose, closePayload(1000, "")), want: []got{evClose(CloseNormal, "")}},
		{name: "close with reason", in: mf(true, OpClose, closePayload(1001, "going away")), want: []got{evClose(CloseGoingAway, "going away")}},
		{name: "close with 123-byte reason", in: mf(true, OpClose, closePayload(1000, pattern(123, true))), want: []got{evClose(CloseNormal, pattern(123, true))}},
		{name: "close with 124-byte reason", in: mf(true, OpClose, closePayload(1000, pattern(124, true))), code: CloseProtocolError},
		{name: "close with 1-byte payload", in: mf(true, OpClose, "\x03"), code: CloseProtocolError},
		{name: "close with UTF-8 reason", in: mf(true, OpClose, closePayload(1000, "κόσμε")), want: []got{evClose(CloseNormal, "κόσμε")}},
		{name: "close with invalid UTF-8 reason", in: mf(true, OpClose, closePayload(1000, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64")), code: CloseInvalidPayload},
		{name: "close with truncated UTF-8 reason", in: mf(true, OpClose, closePayload(1000, "ab\xe2\x82")), code: CloseInvalidPayload},
		{name: "bytes after close are ignored",
			in:   cat(mf(true, OpClose, closePayload(1000, "")), mf(true, OpText, "ignored"), []byte{0xff, 0xff, 0xff}),
			want: []got{evClose(CloseNormal, "")}},
		{name: "message then close",
			in:   cat(mf(true, OpText, "last"), mf(true, OpClose, closePayload(1000, "done"))),
			want: []got{evText("last"), evClose(CloseNormal, "done")}},
	}
	for _, code := range []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999} {
		cases = append(cases, readCase{name: fmt.Sprintf("valid code %d", code),
			in: mf(true, OpClose, closePayload(code, "r")), want: []got{evClose(CloseCode(code), "r")}})
	}
	for _, code := range []uint16{0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		cases = append(cases, readCase{name: fmt.Sprintf("invalid code %d", code),
			in: mf(true, OpClose, closePayload(code, "")), code: CloseProtocolError})
	}
	runCases(t, cases)
}

// utf8Cases covers every class of valid and invalid UTF-8 (Autobahn 6.x).
var utf8Cases = []struct {
	name string
	s    string
}{
	{"empty", ""},
	{"ascii", "Hello, world"},
	{"autobahn 6.2", "Hello-µ@ßöäüàá-UTF-8!!"},
	{"kosme", "κόσμε"},
	{"U+0000", "\x00"},
	{"U+007F", "\x7f"},
	{"U+0080", "\xc2\x80"},
	{"U+07FF", "\xdf\xbf"},
	{"U+0800", "\xe0\xa0\x80"},
	{"U+D7FF", "\xed\x9f\xbf"},
	{"U+E000", "\xee\x80\x80"},
	{"U+FFFD", "\xef\xbf\xbd"},
	{"U+FFFE noncharacter", "\xef\xbf\xbe"},
	{"U+FFFF", "\xef\xbf\xbf"},
	{"U+10000", "\xf0\x90\x80\x80"},
	{"U+10FFFF", "\xf4\x8f\xbf\xbf"},
	{"emoji mix", "a😀b€c߿d\U0010FFFF"},
	{"lone continuation 0x80", "\x80"},
	{"lone continuation 0xbf", "\xbf"},
	{"continuations", "\x80\xbf\x80\xbf"},
	{"continuation after ascii", "ab\x80cd"},
	{"lead 0xc0", "\xc0"},
	{"lead 0xc1", "\xc1"},
	{"lead 0xf5", "\xf5"},
	{"lead 0xf8", "\xf8"},
	{"lead 0xfc", "\xfc"},
	{"lead 0xfe", "\xfe"},
	{"lead 0xff", "\xff"},
	{"lead then space", "\xc2 "},
	{"overlong / in 2 bytes", "\xc0\xaf"},
	{"overlong / in 3 bytes", "\xe0\x80\xaf"},
	{"overlong / in 4 bytes", "\xf0\x80\x80\xaf"},
	{"overlong / in 5 bytes", "\xf8\x80\x80\x80\xaf"},
	{"overlong max 2 bytes", "\xc1\xbf"},
	{"overlong max 3 bytes", "\xe0\x9f\xbf"},
	{"overlong max 4 bytes", "\xf0\x8f\xbf\xbf"},
	{"overlong NUL", "\xc0\x80"},
	{"surrogate U+D800", "\xed\xa0\x80"},
	{"surrogate U+DB7F", "\xed\xad\xbf"},
	{"surrogate U+DB80", "\xed\xae\x80"},
	{"surrogate U+DBFF", "\xed\xaf\xbf"},
	{"surrogate U+DC00", "\xed\xb0\x80"},
	{"surrogate U+DF80", "\xed\xbe\x80"},
	{"surrogate U+DFFF", "\xed\xbf\xbf"},
	{"surrogate pair", "\xed\xa0\x80\xed\xb0\x80"},
	{"autobahn 6.3.1", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"},
	{"U+110000", "\xf4\x90\x80\x80"},
	{"U+13FFFF", "\xf4\xbf\xbf\xbf"},
	{"lead 0xf7 4 bytes", "\xf7\xbf\xbf\xbf"},
	{"6-byte form", "\xfc\x84\x80\x80\x80\x80"},
	{"autobahn 6.4.1", "κόσμε\xf4\x90\x80\x80edited"},
	{"truncated 2-byte at end", "ab\xc2"},
	{"truncated 3-byte at end", "ab\xe2\x82"},
	{"truncated 3-byte lead at end", "\xe2"},
	{"truncated 4-byte at end", "\xf0\x9f\x98"},
	{"truncated 3-byte in middle", "\xe2\x82ab"},
	{"truncated 4-byte in middle", "\xf0\x9f\x98a"},
	{"lead then lead", "\xe2\xe2\x82\xac"},
	{"valid then invalid long", strings.Repeat("€", 50) + "\xff" + strings.Repeat("a", 50)},
}

// Autobahn 6.x: text must be UTF-8, checked across fragments and failed as
// early as the bytes allow.
func TestReaderUTF8(t *testing.T) {
	var cases []readCase
	for _, u := range utf8Cases {
		s := u.s
		valid := validPrefix([]byte(s)) && strings.ToValidUTF8(s, "\uFFFD") == s
		want := func() ([]got, CloseCode) {
			if valid {
				return []got{evText(s)}, 0
			}
			return nil, CloseInvalidPayload
		}
		w, code := want()
		cases = append(cases, readCase{name: u.name + "/one frame", in: mf(true, OpText, s), want: w, code: code})

		// Split into two fragments at every byte, so every code point is
		// cut at every position.
		for i := 0; i <= len(s); i++ {
			w, code := want()
			cases = append(cases, readCase{name: fmt.Sprintf("%s/split at %d", u.name, i),
				in: cat(mf(false, OpText, s[:i]), mf(true, OpContinuation, s[i:])), want: w, code: code})
		}

		// One fragment per byte, with a ping in between each.
		var perByte []byte
		var pings []got
		for i := 0; i < len(s); i++ {
			op := OpContinuation
			if i == 0 {
				op = OpText
			}
			perByte = append(perByte, mf(false, op, s[i:i+1])...)
			perByte = append(perByte, mf(true, OpPing, "")...)
		}
		if len(s) == 0 {
			perByte = mf(false, OpText, "")
		}
		perByte = append(perByte, mf(true, OpContinuation, "")...)
		w, code = want()
		if !valid {
			// Events stop at the byte that makes the prefix invalid.
			pings = nil
			for i := 0; i < len(s) && validPrefix([]byte(s[:i+1])); i++ {
				pings = append(pings, evPing(""))
			}
			w = pings
		} else {
			for range len(s) {
				w = append([]got{evPing("")}, w...)
			}
		}
		cases = append(cases, readCase{name: u.name + "/fragment per byte", in: perByte, want: w, code: code})

		// Fail fast: an invalid prefix fails inside a non-final fragment,
		// and inside a frame whose remaining payload never arrives.
		var ffCode CloseCode
		if !validPrefix([]byte(s)) {
			ffCode = CloseInvalidPayload
		}
		cases = append(cases, readCase{name: u.name + "/non-final fragment", in: mf(false, OpText, s), code: ffCode})
		long := AppendMaskedFrame(nil, true, OpText, testKey, []byte(s+strings.Repeat("x", 200)))
		cases = append(cases, readCase{name: u.name + "/partial frame", in: long[:len(long)-200], code: ffCode})

		// Binary messages are not checked.
		cases = append(cases, readCase{name: u.name + "/binary", in: mf(true, OpBinary, s), want: []got{evBinary(s)}})

		// Close reasons are checked whole.
		if len(s) > maxCloseReason {
			continue
		}
		reason := []got{evClose(CloseNormal, s)}
		code = 0
		if !valid {
			reason, code = nil, CloseInvalidPayload
		}
		cases = append(cases, readCase{name: u.name + "/close reason", in: mf(true, OpClose, closePayload(1000, s)), want: reason, code: code})
	}
	runCases(t, cases)
}

// RFC 6455 §5.7 examples, kept as data in testdata/rfc6455-5.7.json.
func TestReaderGolden(t *testing.T) {
	for _, v := range loadGolden(t) {
		t.Run(v.Name, func(t *testing.T) {
			in := v.wire(t)
			var want []got
			for _, e := range v.Events {
				want = append(want, got{Kind: e.kind(t), Payload: string(e.payload(t))})
			}
			runCases(t, []readCase{{name: "mask optional", in: in, want: want, unmasked: true}})
			if !v.Masked {
				runCases(t, []readCase{{name: "mask required", in: in, code: CloseProtocolError}})
			} else {
				runCases(t, []readCase{{name: "mask required", in: in, want: want}})
			}
		})
	}
}

// A large message fed one byte at a time must be consumed as it arrives:
// the caller's buffer never holds more than a frame header, and the work is
// linear (a quadratic reader would not finish).
func TestReaderConsumesPayloadAsItArrives(t *testing.T) {
	msg := pattern(1<<20, true)
	in := cat(mf(false, OpText, msg[:1000]), mf(true, OpPing, "mid"), mf(false, OpContinuation, msg[1000:700000]),
		mf(true, OpContinuation, msg[700000:]))
	r := &Reader{RequireMask: true}
	events, err, maxPending := feedChunked(t, r, in, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(events, []got{evPing("mid"), evText(msg)}) {
		t.Fatalf("events %s", brief(events))
	}
	if maxPending > 14+MaxControlPayload {
		t.Fatalf("%d bytes were left pending; payload should be consumed as it arrives", maxPending)
	}
	// The large buffer is released once the next call starts.
	if _, _, err := r.Next(nil); err != nil {
		t.Fatal(err)
	}
	if cap(r.msg) > retainCap {
		t.Fatalf("reader kept a %d-byte buffer after the message", cap(r.msg))
	}
}

// Partial payload is consumed (n > 0) while the event is still EventNone.
func TestReaderReportsPartialProgress(t *testing.T) {
	f := mf(true, OpBinary, "0123456789")
	r := &Reader{RequireMask: true}
	ev, n, err := r.Next(f[:8])
	if err != nil || ev.Kind != EventNone || n != 8 {
		t.Fatalf("first half: kind=%v n=%d err=%v, want none 8 nil", ev.Kind, n, err)
	}
	if r.Buffered() != 2 {
		t.Fatalf("Buffered()=%d, want 2", r.Buffered())
	}
	ev, n, err = r.Next(f[8:])
	if err != nil || ev.Kind != EventBinary || n != len(f)-8 || string(ev.Payload) != "0123456789" {
		t.Fatalf("second half: kind=%v n=%d err=%v payload=%q", ev.Kind, n, err, ev.Payload)
	}
}

// The payload buffer is reused: the contract is "valid until the next call".
func TestReaderReusesPayloadBuffer(t *testing.T) {
	in := cat(mf(true, OpText, "first"), mf(true, OpText, "second"))
	r := &Reader{RequireMask: true}
	ev1, n, err := r.Next(in)
	if err != nil || ev1.Kind != EventText {
		t.Fatal(ev1.Kind, err)
	}
	p1 := ev1.Payload
	ev2, _, err := r.Next(in[n:])
	if err != nil || string(ev2.Payload) != "second" {
		t.Fatal(ev2.Kind, err)
	}
	if &p1[0] != &ev2.Payload[0] {
		t.Fatal("second message did not reuse the first message's buffer")
	}
	allocs := testing.AllocsPerRun(100, func() {
		var r2 Reader
		r2.RequireMask = true
		rest := in
		for len(rest) > 0 {
			_, n, err := r2.Next(rest)
			if err != nil {
				panic(err)
			}
			rest = rest[n:]
		}
	})
	if allocs > 1 {
		t.Fatalf("%v allocations for two small messages on a fresh reader, want at most 1", allocs)
	}
}

func TestReaderErrorText(t *testing.T) {
	r := &Reader{RequireMask: true}
	_, _, err := r.Next(uf(true, OpText, "x"))
	if err == nil || err.Error() != "ws: close 1002 protocol error: unmasked client frame" {
		t.Fatalf("err = %v", err)
	}
	if !errors.Is(err, CloseProtocolError) || errors.Is(err, CloseTooBig) {
		t.Fatalf("errors.Is does not match the close code: %v", err)
	}
}

// TestReaderInPlaceKeepsNoBuffer: with InPlace, a message whole in the
// input is unmasked where it lies and returned from there, so a connection
// that gets only such messages holds no buffer between them; a message
// that arrives in pieces still goes through the Reader's buffer.
func TestReaderInPlaceKeepsNoBuffer(t *testing.T) {
	r := &Reader{RequireMask: true, InPlace: true}
	in := cat(mf(true, OpText, "hello"), mf(true, OpPing, "p"))
	ev, n, err := r.Next(in)
	if err != nil || ev.Kind != EventText || string(ev.Payload) != "hello" {
		t.Fatalf("first event %v %q err %v", ev.Kind, ev.Payload, err)
	}
	if &ev.Payload[0] != &in[n-len("hello")] {
		t.Fatal("the payload was copied, not unmasked in place")
	}
	ev, _, err = r.Next(in[n:])
	if err != nil || ev.Kind != EventPing || string(ev.Payload) != "p" {
		t.Fatalf("second event %v %q err %v", ev.Kind, ev.Payload, err)
	}
	if cap(r.msg) != 0 {
		t.Fatalf("the Reader holds a %d-byte buffer after whole messages", cap(r.msg))
	}
	frame := mf(true, OpText, "split")
	if _, n, _ := r.Next(frame[:len(frame)-2]); n != len(frame)-2 {
		t.Fatalf("partial frame: consumed %d of %d", n, len(frame)-2)
	}
	ev, _, err = r.Next(frame[len(frame)-2:])
	if err != nil || ev.Kind != EventText || string(ev.Payload) != "split" {
		t.Fatalf("split message: %v %q err %v", ev.Kind, ev.Payload, err)
	}
}
