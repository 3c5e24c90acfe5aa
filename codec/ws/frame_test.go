package ws

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAppendFrameLengthEncodings(t *testing.T) {
	for _, c := range []struct {
		n      int
		header []byte
	}{
		{0, []byte{0x82, 0}},
		{125, []byte{0x82, 125}},
		{126, []byte{0x82, 126, 0, 126}},
		{65535, []byte{0x82, 126, 0xff, 0xff}},
		{65536, []byte{0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0}},
		{1 << 20, []byte{0x82, 127, 0, 0, 0, 0, 0, 0x10, 0, 0}},
	} {
		p := fill(c.n)
		f := AppendFrame(nil, true, OpBinary, p)
		if !bytes.Equal(f[:len(c.header)], c.header) || !bytes.Equal(f[len(c.header):], p) {
			t.Errorf("%d bytes: header % x, want % x", c.n, f[:len(c.header)], c.header)
		}
		if got := FrameHeaderLen(c.n); got != len(c.header) {
			t.Errorf("FrameHeaderLen(%d) = %d, want %d", c.n, got, len(c.header))
		}
		if h := AppendFrameHeader([]byte("x"), true, OpBinary, c.n); !bytes.Equal(h[1:], c.header) {
			t.Errorf("AppendFrameHeader(%d) = % x, want % x", c.n, h[1:], c.header)
		}
		m := AppendMaskedFrame(nil, false, OpText, testKey, p)
		wantB1 := c.header[1] | maskBit
		if m[0] != 0x01 || m[1] != wantB1 || len(m) != len(c.header)+4+c.n {
			t.Errorf("masked %d bytes: % x..., len %d", c.n, m[:2], len(m))
		}
	}
}

func TestMaskBytesMatchesByteLoop(t *testing.T) {
	key := [4]byte{0x01, 0x80, 0x7f, 0xfe}
	for n := 0; n <= 80; n++ {
		for pos := range 4 {
			data := fill(n)
			want := bytes.Clone(data)
			for i := range want {
				want[i] ^= key[(pos+i)%4]
			}
			next := maskBytes(key, pos, data)
			if !bytes.Equal(data, want) {
				t.Fatalf("n=%d pos=%d: % x, want % x", n, pos, data, want)
			}
			if next != (pos+n)%4 {
				t.Fatalf("n=%d pos=%d: next position %d, want %d", n, pos, next, (pos+n)%4)
			}
		}
	}
	// Masking in pieces continues the key where the last piece stopped.
	data := fill(1000)
	whole := bytes.Clone(data)
	maskBytes(key, 0, whole)
	pos := 0
	for _, cut := range [][2]int{{0, 3}, {3, 14}, {14, 15}, {15, 500}, {500, 1000}} {
		pos = maskBytes(key, pos, data[cut[0]:cut[1]])
	}
	if !bytes.Equal(data, whole) {
		t.Fatal("piecewise masking differs from masking in one go")
	}
}

func TestAppendClose(t *testing.T) {
	payload := func(f []byte) (CloseCode, string) {
		t.Helper()
		if f[0] != 0x88 || int(f[1]) != len(f)-2 {
			t.Fatalf("not an unmasked close frame: % x", f[:2])
		}
		if len(f) == 2 {
			return CloseNoStatus, ""
		}
		return CloseCode(binary.BigEndian.Uint16(f[2:4])), string(f[4:])
	}
	for _, c := range []struct {
		name       string
		code       CloseCode
		reason     string
		wantCode   CloseCode
		wantReason string
	}{
		{"normal", CloseNormal, "bye", CloseNormal, "bye"},
		{"no reason", CloseGoingAway, "", CloseGoingAway, ""},
		{"no status is an empty frame", CloseNoStatus, "ignored", CloseNoStatus, ""},
		{"abnormal is never sent", CloseAbnormal, "x", CloseNoStatus, ""},
		{"123 bytes fit", CloseProtocolError, strings.Repeat("a", 123), CloseProtocolError, strings.Repeat("a", 123)},
		{"124 bytes are cut", CloseProtocolError, strings.Repeat("a", 124), CloseProtocolError, strings.Repeat("a", 123)},
		{"cut at a rune boundary", CloseTooBig, strings.Repeat("a", 122) + "é", CloseTooBig, strings.Repeat("a", 122)},
		{"cut before a 4-byte rune", CloseTooBig, strings.Repeat("a", 121) + "😀", CloseTooBig, strings.Repeat("a", 121)},
		{"all two-byte runes", CloseInternalError, strings.Repeat("é", 100), CloseInternalError, strings.Repeat("é", 61)},
		{"invalid UTF-8 is replaced", CloseNormal, "a\xffb", CloseNormal, "a\uFFFDb"},
		{"private code", 4000, "app", 4000, "app"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := AppendClose([]byte("prefix"), c.code, c.reason)
			if string(f[:6]) != "prefix" {
				t.Fatal("AppendClose did not append")
			}
			code, reason := payload(f[6:])
			if code != c.wantCode || reason != c.wantReason {
				t.Fatalf("got %d %q, want %d %q", code, reason, c.wantCode, c.wantReason)
			}
			if !utf8.ValidString(reason) || len(reason) > 123 {
				t.Fatalf("reason %q is not a valid close reason", reason)
			}
			// The peer's reader accepts what we send.
			r := &Reader{}
			ev, _, err := r.Next(f[6:])
			if err != nil || ev.Kind != EventClose || ev.CloseCode != c.wantCode || string(ev.Payload) != c.wantReason {
				t.Fatalf("reader: %v %d %q %v", ev.Kind, ev.CloseCode, ev.Payload, err)
			}
		})
	}
}

func TestCloseCodeErrors(t *testing.T) {
	if got := CloseProtocolError.Error(); got != "ws: close 1002 protocol error" {
		t.Errorf("CloseProtocolError.Error() = %q", got)
	}
	var err error = &ProtocolError{Code: CloseInvalidPayload, Reason: "text message is not valid UTF-8"}
	if got := err.Error(); got != "ws: close 1007 invalid payload data: text message is not valid UTF-8" {
		t.Errorf("ProtocolError.Error() = %q", got)
	}
	if !errors.Is(err, CloseInvalidPayload) {
		t.Error("errors.Is(ProtocolError, its code) is false")
	}
	var code CloseCode
	if !errors.As(err, &code) || code != CloseInvalidPayload {
		t.Errorf("errors.As to CloseCode gave %d", code)
	}
	if CloseCode(4321).String() != "private" || CloseCode(3001).String() != "registered" || CloseCode(2000).String() != "unknown" {
		t.Error("String of unnamed codes")
	}
	valid := map[CloseCode]bool{999: false, 1000: true, 1003: true, 1004: false, 1005: false, 1006: false, 1007: true,
		1014: true, 1015: false, 1016: false, 2999: false, 3000: true, 4999: true, 5000: false}
	for c, want := range valid {
		if c.ValidOnWire() != want {
			t.Errorf("CloseCode(%d).ValidOnWire() = %v", c, !want)
		}
	}
}

func TestOpcodeAndKindStrings(t *testing.T) {
	if OpText.String() != "text" || Opcode(0xB).String() != "op(0xb)" || !OpPing.IsControl() || OpBinary.IsControl() {
		t.Error("Opcode methods")
	}
	if EventClose.String() != "close" || EventKind(42).String() != "kind(42)" {
		t.Error("EventKind.String")
	}
}
