package wire

// Spliced returns the message body with body[start:end] replaced by repl
// (raw JSON: an answer's id), framed as an NDJSON line. A line of up to
// 936 bytes shares one allocation with its Msg, so a one-recipient answer
// (the hot path of a request's round trip) costs one allocation rather
// than two (its bytes, then its Msg). start < 0 keeps body as it is. body
// is not retained.
func Spliced(body []byte, start, end int, repl []byte) *Msg {
	if start < 0 {
		start, end, repl = len(body), len(body), nil
	}
	n := len(body) - (end - start) + len(repl) + 1
	m, line := alloc(n)
	line = append(line, body[:start]...)
	line = append(line, repl...)
	line = append(line, body[end:]...)
	m.line = append(line, '\n')
	return m
}

// A Msg with room for its line after it, one type per size: the sizes
// fill the allocator's size classes (a Msg is 88 bytes: 88+72 = 160,
// 88+136 = 224, 88+264 = 352, 88+424 = 512, 88+936 = 1024), so what a
// message wastes is what the class rounds up anyway. The bytes are an
// array after the Msg's pointers: the collector does not scan them.
type (
	msg72 struct {
		Msg
		b [72]byte
	}
	msg136 struct {
		Msg
		b [136]byte
	}
	msg264 struct {
		Msg
		b [264]byte
	}
	msg424 struct {
		Msg
		b [424]byte
	}
	msg936 struct {
		Msg
		b [936]byte
	}
)

// alloc returns a Msg and an empty buffer of capacity n for its line: the
// two in one allocation when n fits one of the inline sizes.
func alloc(n int) (*Msg, []byte) {
	switch {
	case n <= 72:
		p := new(msg72)
		return &p.Msg, p.b[:0:n]
	case n <= 136:
		p := new(msg136)
		return &p.Msg, p.b[:0:n]
	case n <= 264:
		p := new(msg264)
		return &p.Msg, p.b[:0:n]
	case n <= 424:
		p := new(msg424)
		return &p.Msg, p.b[:0:n]
	case n <= 936:
		p := new(msg936)
		return &p.Msg, p.b[:0:n]
	}
	return new(Msg), make([]byte, 0, n)
}
