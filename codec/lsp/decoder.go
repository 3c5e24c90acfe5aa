// Package lsp owns the LSP base protocol framing that some agents speak on
// stdio: a header block of `Name: value` lines ended by CRLF, an empty line,
// then exactly Content-Length bytes of body. Content-Length is required (its
// name is matched case-insensitively); Content-Type and any other header are
// accepted and ignored.
//
// Decoder frames bytes an event loop has already buffered, without copying;
// Reader frames a blocking io.Reader for the goroutine that owns the agent's
// stdout. AppendFrame writes a frame.
package lsp

import (
	"bytes"
	"fmt"
	"strconv"
)

const (
	// DefaultMax is the body limit used when Max is zero: 16 MiB.
	DefaultMax = 16 << 20
	// MaxHeader bounds the header block, blank line included. Real headers
	// are a few dozen bytes; the bound keeps garbage from being buffered.
	MaxHeader = 8 << 10
)

// Decoder finds complete frames at the front of a growing buffer. It
// remembers how far it has parsed the header and, once the header is
// complete, how long the body is, so nothing is parsed twice however the
// bytes arrive.
//
// A Decoder belongs to one stream: call it only from the goroutine that owns
// that stream. The zero value is ready to use.
type Decoder struct {
	// Max is the largest body accepted, in bytes. Zero or negative means
	// DefaultMax.
	Max int

	// Progress through the frame at the front of the buffer, as offsets
	// into it; valid while the caller presents the same unconsumed bytes.
	scanned    int  // header bytes already searched for '\n'
	lineStart  int  // start of the header line being read
	length     int  // Content-Length, once haveLength
	haveLength bool //
	bodyAt     int  // offset of the body once the header block is complete; 0 before
}

func (d *Decoder) max() int {
	if d.Max <= 0 {
		return DefaultMax
	}
	return d.Max
}

// Next looks for one complete frame at the front of buf, which it only
// borrows. It returns the body (aliasing buf) and n, the number of bytes the
// caller must discard from the front of its buffer (header and body).
//
// n == 0 with a nil error means buf holds no complete frame yet: call again,
// with the same bytes at the front, when more have arrived. Errors wrap
// ErrBadHeader or ErrTooLarge and are reported as soon as the header shows
// them, before the body arrives; the stream is then unusable.
func (d *Decoder) Next(buf []byte) (body []byte, n int, err error) {
	if d.bodyAt == 0 {
		if err := d.header(buf); err != nil {
			d.Reset()
			return nil, 0, err
		}
		if d.bodyAt == 0 {
			return nil, 0, nil
		}
	}
	end := d.bodyAt + d.length
	if len(buf) < end {
		return nil, 0, nil
	}
	body = buf[d.bodyAt:end:end]
	d.Reset()
	return body, end, nil
}

// Reset forgets a partly parsed frame, for when the caller drops its buffer.
// Same goroutine rule as Next.
func (d *Decoder) Reset() {
	*d = Decoder{Max: d.Max}
}

// header parses the complete header lines in buf it has not seen yet and
// sets bodyAt when it meets the empty line.
func (d *Decoder) header(buf []byte) error {
	if d.scanned > len(buf) { // the caller broke the contract; stay correct
		*d = Decoder{Max: d.Max}
	}
	for {
		i := bytes.IndexByte(buf[d.scanned:], '\n')
		if i < 0 {
			d.scanned = len(buf)
			if len(buf) >= MaxHeader {
				return fmt.Errorf("%w: header block longer than %d bytes", ErrBadHeader, MaxHeader)
			}
			return nil
		}
		nl := d.scanned + i
		if nl+1 > MaxHeader {
			return fmt.Errorf("%w: header block longer than %d bytes", ErrBadHeader, MaxHeader)
		}
		if nl == d.lineStart || buf[nl-1] != '\r' {
			return fmt.Errorf("%w: header line not ended by CRLF", ErrBadHeader)
		}
		line := buf[d.lineStart : nl-1]
		d.scanned, d.lineStart = nl+1, nl+1
		if len(line) == 0 {
			if !d.haveLength {
				return fmt.Errorf("%w: no Content-Length", ErrBadHeader)
			}
			d.bodyAt = nl + 1
			return nil
		}
		if err := d.field(line); err != nil {
			return err
		}
	}
}

// field handles one header line.
func (d *Decoder) field(line []byte) error {
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		return fmt.Errorf("%w: header line %s has no colon", ErrBadHeader, quote(line))
	}
	name := bytes.TrimSpace(line[:colon])
	if len(name) == 0 {
		return fmt.Errorf("%w: header line %s has no name", ErrBadHeader, quote(line))
	}
	if !equalFold(name, "content-length") {
		return nil
	}
	v := bytes.Trim(line[colon+1:], " \t")
	if len(v) == 0 {
		return fmt.Errorf("%w: empty Content-Length", ErrBadHeader)
	}
	limit := d.max()
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			return fmt.Errorf("%w: Content-Length %s is not a non-negative integer", ErrBadHeader, quote(v))
		}
		digit := int(c - '0')
		if n > limit/10 || n*10 > limit-digit { // checked before it could overflow
			return fmt.Errorf("%w: Content-Length %s exceeds the limit of %d bytes", ErrTooLarge, quote(v), limit)
		}
		n = n*10 + digit
	}
	if d.haveLength && d.length != n {
		return fmt.Errorf("%w: conflicting Content-Length headers %d and %d", ErrBadHeader, d.length, n)
	}
	d.length, d.haveLength = n, true
	return nil
}

// equalFold compares b with lower, an ASCII lower-case name.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// quote shows at most 64 bytes of a header in an error.
func quote(b []byte) string {
	if len(b) > 64 {
		return strconv.Quote(string(b[:64])) + "..."
	}
	return strconv.Quote(string(b))
}

// AppendFrame appends "Content-Length: N\r\n\r\n" and body to dst. Safe from
// any goroutine.
func AppendFrame(dst, body []byte) []byte {
	return append(AppendHeader(dst, len(body)), body...)
}

// AppendHeader appends the header block of a body of n bytes
// ("Content-Length: N\r\n\r\n"), for a caller that appends the body itself
// in pieces. Safe from any goroutine.
func AppendHeader(dst []byte, n int) []byte {
	dst = append(dst, "Content-Length: "...)
	dst = strconv.AppendInt(dst, int64(n), 10)
	return append(dst, "\r\n\r\n"...)
}
