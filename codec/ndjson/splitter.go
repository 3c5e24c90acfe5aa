// Package ndjson owns newline-delimited JSON framing: one message per line,
// '\n' terminated, an optional '\r' before it tolerated. Splitter frames bytes
// an event loop has already buffered, without copying; Reader frames a
// blocking io.Reader for goroutines that own a pipe or socket.
//
// Splitting knows nothing about JSON; a line is whatever lies between two
// newlines. Blank lines carry no message.
package ndjson

import "bytes"

// DefaultMax is the line limit used when Max is zero: 16 MiB.
const DefaultMax = 16 << 20

// Splitter finds complete lines at the front of a growing buffer, the way a
// gnet connection's inbound buffer grows between reads. It remembers how far
// it has already looked, so a long line arriving in many small reads is
// scanned once, not once per read.
//
// A Splitter belongs to one connection: call it only from the goroutine that
// owns that connection (its event loop). The zero value is ready to use.
type Splitter struct {
	// Max is the largest line accepted, in bytes, not counting its line
	// ending. Zero or negative means DefaultMax.
	Max int

	// scanned is how many bytes at the front of the buffer are known to hold
	// no '\n'. It is only valid while the caller keeps presenting the same
	// unconsumed bytes, which is the contract of Next.
	scanned int
}

func (s *Splitter) max() int {
	if s.Max <= 0 {
		return DefaultMax
	}
	return s.Max
}

// Next looks for one complete line at the front of buf, which it only
// borrows. It returns the line without its '\n' and without a '\r' before it,
// and n, the number of bytes the caller must discard from the front of its
// buffer (line and line ending). The line aliases buf.
//
// n == 0 with a nil error means buf holds no complete line yet: call again,
// with the same bytes at the front, when more have arrived. A blank line comes
// back as an empty line with n > 0; skip it. ErrTooLarge is returned as soon
// as the line is known to exceed Max, before its newline arrives if need be;
// the stream is then unusable.
//
// Between a call that returns n == 0 and the next one, the caller must not
// discard or change the bytes it passed; after n > 0 (or Reset) any buffer
// may follow.
func (s *Splitter) Next(buf []byte) (line []byte, n int, err error) {
	from := s.scanned
	if from > len(buf) { // the caller broke the contract; stay correct
		from = 0
	}
	if i := bytes.IndexByte(buf[from:], '\n'); i >= 0 {
		end := from + i
		s.scanned = 0
		line = buf[:end]
		if end > 0 && line[end-1] == '\r' {
			line = line[:end-1]
		}
		if len(line) > s.max() {
			return nil, 0, ErrTooLarge
		}
		return line, end + 1, nil
	}
	// The line is at least this long: a trailing '\r' may yet turn out to
	// be part of its line ending.
	pending := len(buf)
	if pending > 0 && buf[pending-1] == '\r' {
		pending--
	}
	if pending > s.max() {
		s.scanned = 0
		return nil, 0, ErrTooLarge
	}
	s.scanned = len(buf)
	return nil, 0, nil
}

// Reset forgets a partly scanned line, for when the caller drops its buffer.
// Same goroutine rule as Next.
func (s *Splitter) Reset() { s.scanned = 0 }

// AppendLine appends msg and a '\n' to dst. msg must be one JSON value; any
// raw CR or LF in it can only be whitespace between tokens (JSON strings
// escape them), so they are written as spaces: a pretty-printed message from
// a WebSocket client must not become several NDJSON lines. Safe from any
// goroutine.
func AppendLine(dst, msg []byte) []byte {
	start := len(dst)
	dst = append(dst, msg...)
	Flatten(dst[start:])
	return append(dst, '\n')
}

// Flatten turns the raw CRs and LFs of msg, one JSON value, into spaces in
// place (in JSON they can only be whitespace between tokens), so it can be
// written as one NDJSON line. Safe from any goroutine.
func Flatten(msg []byte) {
	if bytes.IndexByte(msg, '\n') < 0 && bytes.IndexByte(msg, '\r') < 0 {
		return
	}
	for i, c := range msg {
		if c == '\n' || c == '\r' {
			msg[i] = ' '
		}
	}
}
