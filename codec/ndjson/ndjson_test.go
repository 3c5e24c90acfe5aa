package ndjson

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// result is what a framer produced from a stream: the non-blank lines, in
// order, and the error that stopped it (nil if the stream just ran out).
type result struct {
	lines []string
	err   error
}

// feed plays the event loop: the inbound buffer grows by one chunk per read,
// and after each read Next is called until it needs more. Blank lines are
// skipped as the caller is told to.
func feed(s *Splitter, stream []byte, chunks []int) result {
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
			line, n, err := s.Next(buf)
			if err != nil {
				res.err = err
				return res
			}
			if n == 0 {
				break
			}
			if len(line) > 0 {
				res.lines = append(res.lines, string(line))
			}
			buf = buf[n:]
		}
	}
	return res
}

func sameResult(a, b result) bool {
	if !errors.Is(a.err, b.err) || len(a.lines) != len(b.lines) {
		return false
	}
	for i := range a.lines {
		if a.lines[i] != b.lines[i] {
			return false
		}
	}
	return true
}

func TestSplitter(t *testing.T) {
	long := strings.Repeat("x", 10000)
	tests := []struct {
		name   string
		max    int
		stream string
		want   result
	}{
		{"several in one buffer", 0, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n", result{lines: []string{`{"a":1}`, `{"b":2}`, `{"c":3}`}}},
		{"incomplete tail stays", 0, "{\"a\":1}\n{\"b\"", result{lines: []string{`{"a":1}`}}},
		{"crlf", 0, "a\r\nb\r\n", result{lines: []string{"a", "b"}}},
		{"only the last cr is stripped", 0, "a\r\r\n", result{lines: []string{"a\r"}}},
		{"lone cr is content", 0, "a\rb\n", result{lines: []string{"a\rb"}}},
		{"blank lines", 0, "\n\r\n\na\n\n", result{lines: []string{"a"}}},
		{"long line", 0, long + "\n" + "tail\n", result{lines: []string{long, "tail"}}},
		{"exactly max", 4, "abcd\nabcd\r\n", result{lines: []string{"abcd", "abcd"}}},
		{"over max with newline", 4, "abc\nabcde\n", result{lines: []string{"abc"}, err: ErrTooLarge}},
		{"over max before newline", 4, "abcde", result{err: ErrTooLarge}},
		{"max plus cr pending is fine", 4, "abcd\r", result{}},
		{"over max plus cr", 4, "abcde\r", result{err: ErrTooLarge}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := []byte(tt.stream)
			whole := feed(&Splitter{Max: tt.max}, stream, nil)
			if !sameResult(whole, tt.want) {
				t.Fatalf("whole: got %q, %v; want %q, %v", whole.lines, whole.err, tt.want.lines, tt.want.err)
			}
			// The buffer arrives as buf[:k], then all of it: every split
			// point must give the same result.
			for k := 1; k < len(stream); k++ {
				got := feed(&Splitter{Max: tt.max}, stream, []int{k})
				if !sameResult(got, tt.want) {
					t.Fatalf("split at %d: got %q, %v; want %q, %v", k, got.lines, got.err, tt.want.lines, tt.want.err)
				}
			}
			// And one byte per read.
			ones := make([]int, len(stream))
			for i := range ones {
				ones[i] = 1
			}
			if got := feed(&Splitter{Max: tt.max}, stream, ones); !sameResult(got, tt.want) {
				t.Fatalf("byte by byte: got %q, %v; want %q, %v", got.lines, got.err, tt.want.lines, tt.want.err)
			}
		})
	}
}

func TestSplitterReturnsBorrowedLine(t *testing.T) {
	var s Splitter
	buf := []byte("abc\r\ndef")
	line, n, err := s.Next(buf)
	if err != nil || n != 5 || string(line) != "abc" || &line[0] != &buf[0] {
		t.Fatalf("got %q, %d, %v; want a view of buf", line, n, err)
	}
}

// TestSplitterScansOnce checks the point of the remembered offset: a line
// arriving in 4 KiB reads is not rescanned from its start on every read.
func TestSplitterScansOnce(t *testing.T) {
	var s Splitter
	line := bytes.Repeat([]byte("y"), 1<<20)
	var buf []byte
	for off := 0; off < len(line); off += 4096 {
		buf = append(buf, line[off:off+4096]...)
		if _, n, err := s.Next(buf); n != 0 || err != nil {
			t.Fatalf("incomplete line: n=%d err=%v", n, err)
		}
		if s.scanned != len(buf) {
			t.Fatalf("after %d bytes the splitter remembers %d scanned", len(buf), s.scanned)
		}
	}
	buf = append(buf, '\n')
	got, n, err := s.Next(buf)
	if err != nil || n != len(buf) || len(got) != len(line) || s.scanned != 0 {
		t.Fatalf("complete line: len=%d n=%d err=%v scanned=%d", len(got), n, err, s.scanned)
	}
}

func TestSplitterForeignBuffer(t *testing.T) {
	var s Splitter
	if _, n, _ := s.Next([]byte("partial line")); n != 0 {
		t.Fatal("no newline, no line")
	}
	// A caller that breaks the contract with a shorter buffer still gets
	// correct framing.
	if line, n, err := s.Next([]byte("ok\n")); err != nil || n != 3 || string(line) != "ok" {
		t.Fatalf("got %q, %d, %v", line, n, err)
	}
	s.Reset()
	if s.scanned != 0 {
		t.Fatal("Reset")
	}
}

func TestAppendLine(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"a":1}`, "{\"a\":1}\n"},
		{"{\n  \"a\": \"x\\ny\",\r\n  \"b\": 2\n}", "{   \"a\": \"x\\ny\",    \"b\": 2 }\n"},
		{"", "\n"},
	}
	for _, tt := range tests {
		got := AppendLine([]byte("p|"), []byte(tt.in))
		if string(got) != "p|"+tt.want {
			t.Errorf("AppendLine(%q) = %q, want %q", tt.in, got, "p|"+tt.want)
		}
		var s Splitter
		if line, n, err := s.Next(got[2:]); err != nil || n != len(got)-2 || string(line) != tt.want[:len(tt.want)-1] {
			t.Errorf("AppendLine(%q) is not exactly one line: %q %d %v", tt.in, line, n, err)
		}
	}
	if n := testing.AllocsPerRun(100, func() {
		var buf [64]byte
		AppendLine(buf[:0], []byte(`{"jsonrpc":"2.0"}`))
	}); n != 0 {
		t.Errorf("AppendLine with room: %v allocs", n)
	}
}

func readAll(r *Reader) result {
	var res result
	for {
		line, err := r.Read()
		if err != nil {
			if err != io.EOF {
				res.err = err
			}
			return res
		}
		res.lines = append(res.lines, string(line))
	}
}

func TestReader(t *testing.T) {
	big := strings.Repeat("z", 300<<10) // grows the buffer past shrinkAbove
	tests := []struct {
		name   string
		max    int
		stream string
		want   result
	}{
		{"lines", 0, "a\nb\r\n\n\nc\n", result{lines: []string{"a", "b", "c"}}},
		{"final line without newline", 0, "a\nlast", result{lines: []string{"a", "last"}}},
		{"final cr", 0, "a\nlast\r", result{lines: []string{"a", "last"}}},
		{"final blank", 0, "a\n\r", result{lines: []string{"a"}}},
		{"empty", 0, "", result{}},
		{"line larger than a read", 0, big + "\nafter\n", result{lines: []string{big, "after"}}},
		{"too large", 10, "ok\n0123456789ABC\nnever\n", result{lines: []string{"ok"}, err: ErrTooLarge}},
		{"too large at eof", 10, "0123456789ABC", result{err: ErrTooLarge}},
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
					t.Fatalf("got %d lines %.40q, %v; want %d lines %.40q, %v", len(got.lines), got.lines, got.err, len(tt.want.lines), tt.want.lines, tt.want.err)
				}
			})
		}
	}
}

func TestReaderErrors(t *testing.T) {
	boom := errors.New("boom")
	r := NewReader(io.MultiReader(strings.NewReader("a\nb\npart"), iotest.ErrReader(boom)), 0)
	got := readAll(r)
	if !sameResult(got, result{lines: []string{"a", "b"}, err: boom}) {
		t.Fatalf("got %q, %v", got.lines, got.err)
	}
	if _, err := r.Read(); err != boom {
		t.Fatalf("errors must be sticky, got %v", err)
	}

	r = NewReader(strings.NewReader("0123456789\nok\n"), 5)
	if _, err := r.Read(); err != ErrTooLarge {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	if _, err := r.Read(); err != ErrTooLarge {
		t.Fatalf("ErrTooLarge must be sticky, got %v", err)
	}

	r = NewReader(emptyReader{}, 0)
	if _, err := r.Read(); err != io.ErrNoProgress {
		t.Fatalf("got %v, want io.ErrNoProgress", err)
	}
}

func TestReaderShrinks(t *testing.T) {
	big := strings.Repeat("z", 1<<20)
	r := NewReader(strings.NewReader(big+"\nsmall\nsmaller\n"), 0)
	if line, err := r.Read(); err != nil || len(line) != len(big) {
		t.Fatalf("big line: %d %v", len(line), err)
	}
	for _, want := range []string{"small", "smaller"} {
		if line, err := r.Read(); err != nil || string(line) != want {
			t.Fatalf("got %q %v, want %q", line, err, want)
		}
	}
	if _, err := r.Read(); err != io.EOF {
		t.Fatalf("got %v, want EOF", err)
	}
	if len(r.buf) > shrinkAbove {
		t.Fatalf("buffer still %d bytes after the big line was consumed", len(r.buf))
	}
}

type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, nil }

var splitterSeeds = []string{
	"{\"jsonrpc\":\"2.0\",\"method\":\"a\"}\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n",
	"\n\r\n\nx\n",
	"abc\r\rdef\r\n\r",
	"0123456789abcdef\n01\n",
	"no newline at all",
}

// FuzzSplitter: feeding a stream in arbitrary chunks yields exactly what
// feeding it whole does. chunks gives the read sizes, one byte each.
func FuzzSplitter(f *testing.F) {
	for _, s := range splitterSeeds {
		for k := 1; k <= len(s); k++ {
			f.Add([]byte(s), []byte{byte(k)}, uint8(8))
		}
		f.Add([]byte(s), bytes.Repeat([]byte{1}, len(s)), uint8(0))
	}
	f.Fuzz(func(t *testing.T, stream, chunks []byte, max uint8) {
		sizes := make([]int, len(chunks))
		for i, c := range chunks {
			sizes[i] = int(c)
		}
		whole := feed(&Splitter{Max: int(max)}, stream, nil)
		got := feed(&Splitter{Max: int(max)}, stream, sizes)
		if !sameResult(whole, got) {
			t.Fatalf("chunked %q, %v != whole %q, %v", got.lines, got.err, whole.lines, whole.err)
		}
		// The Reader frames the same way (it also returns an unterminated
		// final line, so compare only streams that end in a newline).
		if n := len(stream); n > 0 && stream[n-1] == '\n' {
			rd := readAll(NewReader(&chunkReader{r: bytes.NewReader(stream), n: max1(sizes)}, int(max)))
			if !sameResult(whole, rd) {
				t.Fatalf("Reader %q, %v != Splitter %q, %v", rd.lines, rd.err, whole.lines, whole.err)
			}
		}
	})
}

func max1(sizes []int) int {
	if len(sizes) == 0 || sizes[0] < 1 {
		return 1
	}
	return sizes[0]
}

func BenchmarkSplitterNext(b *testing.B) {
	line := append(bytes.Repeat([]byte("x"), 350), '\n')
	var s Splitter
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		if _, n, err := s.Next(line); n != len(line) || err != nil {
			b.Fatal(n, err)
		}
	}
}

func TestReaderBuffered(t *testing.T) {
	r := NewReader(strings.NewReader("a\nbc\n\n"), 0)
	if r.Buffered() != 0 {
		t.Fatal("nothing read yet")
	}
	if line, err := r.Read(); err != nil || string(line) != "a" {
		t.Fatalf("got %q %v", line, err)
	}
	if got := r.Buffered(); got != len("bc\n\n") {
		t.Fatalf("Buffered = %d after the first line, want %d", got, len("bc\n\n"))
	}
	r.Read()
	if _, err := r.Read(); err != io.EOF || r.Buffered() != 0 {
		t.Fatalf("at EOF: %v, Buffered %d", err, r.Buffered())
	}
}
