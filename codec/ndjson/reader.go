package ndjson

import (
	"io"
)

const (
	// initialBuf is the Reader's starting buffer, enough for thousands of
	// typical messages per read.
	initialBuf = 64 << 10
	// shrinkAbove: a buffer grown past this for one huge line is given back
	// once it no longer holds much, so one 16 MiB message does not pin
	// 16 MiB for the life of the stream.
	shrinkAbove = 4 * initialBuf
	// maxEmptyReads bounds an io.Reader that keeps returning 0, nil.
	maxEmptyReads = 100
)

// Reader reads lines from a blocking io.Reader (an agent's stdout, the
// connect shim's socket). It is used by one goroutine at a time.
type Reader struct {
	r     io.Reader
	split Splitter
	buf   []byte
	start int   // buf[start:end] is read but not yet returned
	end   int   //
	err   error // sticky: the read error or ErrTooLarge
}

// NewReader returns a Reader of r whose lines may be at most max bytes (zero
// or negative means DefaultMax).
func NewReader(r io.Reader, max int) *Reader {
	return &Reader{r: r, split: Splitter{Max: max}}
}

// Read returns the next non-blank line, without its line ending. The slice
// is valid only until the next call to Read: copy what must outlive it.
//
// At the end of the input a final line without '\n' is still returned, then
// io.EOF. A line longer than the maximum yields ErrTooLarge; read errors are
// returned once the lines read before them are consumed. Errors are sticky.
func (r *Reader) Read() ([]byte, error) {
	for {
		if r.start < r.end && r.err != ErrTooLarge {
			line, n, err := r.split.Next(r.buf[r.start:r.end])
			if err != nil {
				r.err = err
				return nil, err
			}
			if n > 0 {
				r.start += n
				if len(line) == 0 {
					continue
				}
				return line, nil
			}
		}
		if r.err != nil {
			if r.err == io.EOF && r.start < r.end {
				line := r.buf[r.start:r.end]
				r.start = r.end
				r.split.Reset()
				if n := len(line); line[n-1] == '\r' {
					line = line[:n-1]
				}
				if len(line) == 0 {
					continue
				}
				return line, nil
			}
			return nil, r.err
		}
		r.fill()
	}
}

// fill makes room and reads once, recording any error.
func (r *Reader) fill() {
	if r.start == r.end {
		r.start, r.end = 0, 0
	}
	if len(r.buf) > shrinkAbove && r.end-r.start <= initialBuf/2 {
		nb := make([]byte, initialBuf)
		r.end = copy(nb, r.buf[r.start:r.end])
		r.start, r.buf = 0, nb
	}
	if r.buf == nil {
		r.buf = make([]byte, min(initialBuf, r.split.max()+2))
	}
	if r.end == len(r.buf) {
		if r.start > 0 {
			// The Splitter's progress is relative to the unread bytes, so
			// moving them to the front keeps it valid.
			r.end = copy(r.buf, r.buf[r.start:r.end])
			r.start = 0
		} else {
			// Full of one incomplete line the Splitter has not refused:
			// it fits within max plus "\r\n".
			nb := make([]byte, min(2*len(r.buf), r.split.max()+2))
			copy(nb, r.buf[:r.end])
			r.buf = nb
		}
	}
	for range maxEmptyReads {
		n, err := r.r.Read(r.buf[r.end:])
		r.end += n
		if err != nil {
			r.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	r.err = io.ErrNoProgress
}
