package lsp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// result is what a framer produced from a stream: the bodies, in order, and
// the error that stopped it (nil if the stream just ran out).
type result struct {
	bodies []string
	err    error
}

// feed plays the event loop: the inbound buffer grows by one chunk per read,
// and after each read Next is called until it needs more.
func feed(d *Decoder, stream []byte, chunks []int) result {
	var res result
	var buf []byte
	for off := 0; off < len(stream); {
		k := len(stream) - off
		if len(chunks) > 0 {
			k = min(max(chunks[0], 1), k)
			chunks = chunks[1:]
		}
		buf = append(buf, stream[off:off+k]...)
		off += k
		for {
			body, n, err := d.Next(buf)
			if err != nil {
				res.err = err
				return res
			}
			if n == 0 {
				break
			}
			res.bodies = append(res.bodies, string(body))
			buf = buf[n:]
		}
	}
	return res
}

// sameResult compares bodies and error classes (the sentinel, not the
// detail, which may name a different header depending on what arrived).
func sameResult(a, b result) bool {
	if errClass(a.err) != errClass(b.err) || len(a.bodies) != len(b.bodies) {
		return false
	}
	for i := range a.bodies {
		if a.bodies[i] != b.bodies[i] {
			return false
		}
	}
	return true
}

func errClass(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrBadHeader):
		return ErrBadHeader
	case errors.Is(err, ErrTooLarge):
		return ErrTooLarge
	}
	return err
}

func frame(body string) string { return string(AppendFrame(nil, []byte(body))) }

func TestDecoder(t *testing.T) {
	big := strings.Repeat("b", 10000)
	tests := []struct {
		name   string
		max    int
		stream string
		want   result
	}{
		{"several in one buffer", 0, frame(`{"a":1}`) + frame(`{"b":2}`) + frame(""), result{bodies: []string{`{"a":1}`, `{"b":2}`, ""}}},
		{"incomplete body", 0, frame(`{"a":1}`) + "Content-Length: 10\r\n\r\n12345", result{bodies: []string{`{"a":1}`}}},
		{"case-insensitive name, spaces", 0, "content-LENGTH:3 \r\n\r\nabc" + "CONTENT-LENGTH: \t 2\r\n\r\nde", result{bodies: []string{"abc", "de"}}},
		{"content type and other headers", 0, "Content-Type: application/vscode-jsonrpc; charset=utf-8\r\nX-Whatever: 1\r\nContent-Length: 4\r\n\r\nbody", result{bodies: []string{"body"}}},
		{"repeated equal length", 0, "Content-Length: 2\r\nContent-Length: 02\r\n\r\nok", result{bodies: []string{"ok"}}},
		{"body with CRLFs and headers inside", 0, frame("Content-Length: 99\r\n\r\nx"), result{bodies: []string{"Content-Length: 99\r\n\r\nx"}}},
		{"large body", 0, frame(big) + frame("after"), result{bodies: []string{big, "after"}}},
		{"exactly max", 5, frame("12345"), result{bodies: []string{"12345"}}},
		{"too large", 5, frame("1234") + frame("123456"), result{bodies: []string{"1234"}, err: ErrTooLarge}},
		{"too large before body", 5, "Content-Length: 6\r\n", result{err: ErrTooLarge}},
		{"huge length", 0, "Content-Length: 99999999999999999999999999\r\n\r\n", result{err: ErrTooLarge}},
		{"missing length", 0, "Content-Type: x\r\n\r\n{}", result{err: ErrBadHeader}},
		{"stray blank line", 0, frame("a") + "\r\n" + frame("b"), result{bodies: []string{"a"}, err: ErrBadHeader}},
		{"negative length", 0, "Content-Length: -1\r\n\r\n", result{err: ErrBadHeader}},
		{"non-numeric length", 0, "Content-Length: 1x\r\n\r\nab", result{err: ErrBadHeader}},
		{"empty length", 0, "Content-Length: \r\n\r\n", result{err: ErrBadHeader}},
		{"no colon", 0, "Content-Length 3\r\n\r\nabc", result{err: ErrBadHeader}},
		{"no name", 0, ": 3\r\nContent-Length: 3\r\n\r\nabc", result{err: ErrBadHeader}},
		{"bare LF", 0, "Content-Length: 3\n\nabc", result{err: ErrBadHeader}},
		{"bare LF on blank line", 0, "Content-Length: 3\r\n\nabc", result{err: ErrBadHeader}},
		{"conflicting lengths", 0, "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", result{err: ErrBadHeader}},
		{"header block too long", 0, "Content-Length: 1\r\nX: " + strings.Repeat("h", MaxHeader) + "\r\n\r\nz", result{err: ErrBadHeader}},
		{"header block too long, unterminated", 0, "Content-Length: 1\r\nX: " + strings.Repeat("h", MaxHeader), result{err: ErrBadHeader}},
		{"header block at the limit", 0, "X: " + strings.Repeat("h", MaxHeader-3-2-21-2) + "\r\nContent-Length: 1\r\n\r\nz", result{bodies: []string{"z"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := []byte(tt.stream)
			whole := feed(&Decoder{Max: tt.max}, stream, nil)
			if !sameResult(whole, tt.want) {
				t.Fatalf("whole: got %.60q, %v; want %.60q, %v", whole.bodies, whole.err, tt.want.bodies, tt.want.err)
			}
			for k := 1; k < len(stream); k++ {
				if got := feed(&Decoder{Max: tt.max}, stream, []int{k}); !sameResult(got, tt.want) {
					t.Fatalf("split at %d: got %.60q, %v; want %.60q, %v", k, got.bodies, got.err, tt.want.bodies, tt.want.err)
				}
			}
			ones := make([]int, len(stream))
			for i := range ones {
				ones[i] = 1
			}
			if got := feed(&Decoder{Max: tt.max}, stream, ones); !sameResult(got, tt.want) {
				t.Fatalf("byte by byte: got %.60q, %v; want %.60q, %v", got.bodies, got.err, tt.want.bodies, tt.want.err)
			}
		})
	}
}

func TestDecoderBorrowsAndResets(t *testing.T) {
	var d Decoder
	buf := []byte(frame("hello") + "Content-Len")
	body, n, err := d.Next(buf)
	if err != nil || string(body) != "hello" || n != len(frame("hello")) || &body[0] != &buf[n-5] {
		t.Fatalf("got %q, %d, %v; want a view of buf", body, n, err)
	}
	if cap(body) != len(body) {
		t.Fatal("the body must not let an append overwrite the next frame")
	}
	if _, n, err := d.Next(buf[n:]); n != 0 || err != nil {
		t.Fatalf("partial header: %d %v", n, err)
	}
	d.Reset()
	if d.scanned != 0 || d.haveLength || d.bodyAt != 0 {
		t.Fatalf("Reset left state %+v", d)
	}
	_, _, err = d.Next([]byte("Content-Length: x\r\n"))
	if !errors.Is(err, ErrBadHeader) || !strings.Contains(err.Error(), `"x"`) {
		t.Fatalf("error %v should wrap ErrBadHeader and name the value", err)
	}
}

func TestAppendFrame(t *testing.T) {
	got := AppendFrame([]byte("p"), []byte(`{"jsonrpc":"2.0"}`))
	if string(got) != "pContent-Length: 17\r\n\r\n{\"jsonrpc\":\"2.0\"}" {
		t.Fatalf("got %q", got)
	}
}

func readAll(r *Reader) result {
	var res result
	for {
		body, err := r.Read()
		if err != nil {
			if err != io.EOF {
				res.err = err
			}
			return res
		}
		res.bodies = append(res.bodies, string(body))
	}
}

type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, nil }

func TestReader(t *testing.T) {
	big := strings.Repeat("q", 300<<10)
	tests := []struct {
		name   string
		max    int
		stream string
		want   result
	}{
		{"frames", 0, frame("a") + frame("") + frame("ccc"), result{bodies: []string{"a", "", "ccc"}}},
		{"body larger than a read", 0, frame(big) + frame("after"), result{bodies: []string{big, "after"}}},
		{"empty", 0, "", result{}},
		{"truncated body", 0, frame("a") + "Content-Length: 5\r\n\r\nab", result{bodies: []string{"a"}, err: io.ErrUnexpectedEOF}},
		{"truncated header", 0, frame("a") + "Content-Le", result{bodies: []string{"a"}, err: io.ErrUnexpectedEOF}},
		{"too large", 3, frame("abc") + frame("abcd"), result{bodies: []string{"abc"}, err: ErrTooLarge}},
		{"bad header", 0, frame("a") + "junk\r\n\r\n", result{bodies: []string{"a"}, err: ErrBadHeader}},
	}
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"4k reads": func(r io.Reader) io.Reader { return &chunkReader{r: r, n: 4096} },
		"one byte": iotest.OneByteReader,
		"data+err": iotest.DataErrReader,
	}
	for _, tt := range tests {
		for rname, wrap := range readers {
			t.Run(tt.name+"/"+rname, func(t *testing.T) {
				got := readAll(NewReader(wrap(strings.NewReader(tt.stream)), tt.max))
				if !sameResult(got, tt.want) {
					t.Fatalf("got %d bodies, %v; want %d bodies, %v", len(got.bodies), got.err, len(tt.want.bodies), tt.want.err)
				}
			})
		}
	}
}

func TestReaderErrors(t *testing.T) {
	boom := errors.New("boom")
	r := NewReader(io.MultiReader(strings.NewReader(frame("a")+frame("b")+"Content"), iotest.ErrReader(boom)), 0)
	if got := readAll(r); !sameResult(got, result{bodies: []string{"a", "b"}, err: boom}) {
		t.Fatalf("got %q, %v", got.bodies, got.err)
	}
	if _, err := r.Read(); err != boom {
		t.Fatalf("errors must be sticky, got %v", err)
	}

	r = NewReader(strings.NewReader("Content-Length: 9\r\n\r\n123456789"+frame("x")), 4)
	for range 2 {
		if _, err := r.Read(); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("got %v, want sticky ErrTooLarge", err)
		}
	}

	if _, err := NewReader(emptyReader{}, 0).Read(); err != io.ErrNoProgress {
		t.Fatalf("got %v, want io.ErrNoProgress", err)
	}
}

func TestReaderShrinks(t *testing.T) {
	big := strings.Repeat("z", 1<<20)
	r := NewReader(strings.NewReader(frame(big)+frame("small")+frame("smaller")), 0)
	if body, err := r.Read(); err != nil || len(body) != len(big) {
		t.Fatalf("big frame: %d %v", len(body), err)
	}
	for _, want := range []string{"small", "smaller"} {
		if body, err := r.Read(); err != nil || string(body) != want {
			t.Fatalf("got %q %v, want %q", body, err, want)
		}
	}
	if _, err := r.Read(); err != io.EOF {
		t.Fatalf("got %v, want EOF", err)
	}
	if len(r.buf) > shrinkAbove {
		t.Fatalf("buffer still %d bytes after the big frame was consumed", len(r.buf))
	}
}

var decoderSeeds = []string{
	frame(`{"jsonrpc":"2.0","method":"initialized","params":{}}`) + frame(`{"jsonrpc":"2.0","id":1,"result":null}`),
	"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\ncontent-length: 2\r\n\r\n{}",
	"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
	"Content-Length: 3\n\nabc",
	"Content-Length: 300\r\n\r\nshort",
	"\r\n\r\n",
}

// FuzzLSPDecoder: feeding a stream in arbitrary chunks yields exactly what
// feeding it whole does, and the Reader agrees with the Decoder.
func FuzzLSPDecoder(f *testing.F) {
	for _, s := range decoderSeeds {
		for k := 1; k <= len(s); k++ {
			f.Add([]byte(s), []byte{byte(k)}, uint16(64))
		}
		f.Add([]byte(s), bytes.Repeat([]byte{1}, len(s)), uint16(0))
	}
	f.Fuzz(func(t *testing.T, stream, chunks []byte, max uint16) {
		sizes := make([]int, len(chunks))
		for i, c := range chunks {
			sizes[i] = int(c)
		}
		whole := feed(&Decoder{Max: int(max)}, stream, nil)
		got := feed(&Decoder{Max: int(max)}, stream, sizes)
		if !sameResult(whole, got) {
			t.Fatalf("chunked %q, %v != whole %q, %v", got.bodies, got.err, whole.bodies, whole.err)
		}
		rd := readAll(NewReader(&chunkReader{r: bytes.NewReader(stream), n: max1(sizes)}, int(max)))
		if rd.err == io.ErrUnexpectedEOF && whole.err == nil {
			rd.err = nil // the Decoder just waits for more
		}
		if !sameResult(whole, rd) {
			t.Fatalf("Reader %q, %v != Decoder %q, %v", rd.bodies, rd.err, whole.bodies, whole.err)
		}
	})
}

func max1(sizes []int) int {
	if len(sizes) == 0 || sizes[0] < 1 {
		return 1
	}
	return sizes[0]
}

func BenchmarkDecoderNext(b *testing.B) {
	buf := AppendFrame(nil, bytes.Repeat([]byte("x"), 350))
	var d Decoder
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if _, n, err := d.Next(buf); n != len(buf) || err != nil {
			b.Fatal(n, err)
		}
	}
}

func TestReaderBuffered(t *testing.T) {
	r := NewReader(strings.NewReader(frame("a")+frame("bc")), 0)
	if r.Buffered() != 0 {
		t.Fatal("nothing read yet")
	}
	if body, err := r.Read(); err != nil || string(body) != "a" {
		t.Fatalf("got %q %v", body, err)
	}
	if got := r.Buffered(); got != len(frame("bc")) {
		t.Fatalf("Buffered = %d after the first frame, want %d", got, len(frame("bc")))
	}
	r.Read()
	if _, err := r.Read(); err != io.EOF || r.Buffered() != 0 {
		t.Fatalf("at EOF: %v, Buffered %d", err, r.Buffered())
	}
}
