package wire

import "sync"

// Spliced returns the message body with body[start:end] replaced by repl
// (raw JSON: an answer's id), framed as an NDJSON line. A line of up to
// 928 bytes shares one allocation with its Msg, taken from a pool, so a
// one-recipient answer (the hot path of a request's round trip) costs at
// most one allocation, and none once its connection's writer recycles it
// (SingleUse, Recycle). start < 0 keeps body as it is. body is not
// retained.
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

// SingleUse marks m, which Spliced built, as going to one connection and
// kept by nothing else: the connection's writer may Recycle it once its
// transport has taken (copied) its bytes. The caller must not keep m, nor
// hand it to more than one connection, after SingleUse. Call it before m
// is shared.
func (m *Msg) SingleUse() {
	if m.pool != 0 {
		m.single = true
	}
}

// Recycle returns m to its pool when SingleUse marked it; otherwise it does
// nothing (the collector frees m). The caller must be the one holder of m
// and must not touch m afterwards. Any goroutine.
func Recycle(m *Msg) {
	if !m.single {
		return
	}
	p := &pools[m.pool-1]
	*m = Msg{line: m.line[:0], pool: m.pool}
	p.Put(m)
}

// A Msg with room for its line after it, one type per size: the sizes fill
// the allocator's size classes (a Msg is 96 bytes: 96+64 = 160, 96+128 =
// 224, 96+256 = 352, 96+416 = 512, 96+928 = 1024), so what a message
// wastes is what the class rounds up anyway. The bytes are an array after
// the Msg's pointers: the collector does not scan them.
type (
	msg64 struct {
		Msg
		b [64]byte
	}
	msg128 struct {
		Msg
		b [128]byte
	}
	msg256 struct {
		Msg
		b [256]byte
	}
	msg416 struct {
		Msg
		b [416]byte
	}
	msg928 struct {
		Msg
		b [928]byte
	}
)

// inline are the line capacities of the pooled sizes, smallest first.
var inline = [...]int{64, 128, 256, 416, 928}

// pools hold recycled messages of each inline size; a message's pool field
// is its index + 1. A new one has its line's whole array as capacity.
var pools = [len(inline)]sync.Pool{
	{New: func() any { p := new(msg64); p.line, p.pool = p.b[:0], 1; return &p.Msg }},
	{New: func() any { p := new(msg128); p.line, p.pool = p.b[:0], 2; return &p.Msg }},
	{New: func() any { p := new(msg256); p.line, p.pool = p.b[:0], 3; return &p.Msg }},
	{New: func() any { p := new(msg416); p.line, p.pool = p.b[:0], 4; return &p.Msg }},
	{New: func() any { p := new(msg928); p.line, p.pool = p.b[:0], 5; return &p.Msg }},
}

// alloc returns a Msg and an empty buffer of capacity at least n for its
// line: pooled, the two in one allocation, when n fits an inline size.
func alloc(n int) (*Msg, []byte) {
	for i, size := range inline {
		if n <= size {
			m := pools[i].Get().(*Msg)
			return m, m.line[:0]
		}
	}
	return new(Msg), make([]byte, 0, n)
}
