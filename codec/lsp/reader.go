package lsp

import (
	"io"
)

const (
	// initialBuf is the Reader's starting buffer.
	initialBuf = 64 << 10
	// shrinkAbove: a buffer grown past this for one huge frame is given back
	// once it no longer holds much.
	shrinkAbove = 4 * initialBuf
	// maxEmptyReads bounds an io.Reader that keeps returning 0, nil.
	maxEmptyReads = 100
)

// Reader reads frames from a blocking io.Reader (an agent's stdout). It is
// used by one goroutine at a time.
type Reader struct {
	r   io.Reader
	dec Decoder
	buf []byte
	// buf[start:end] is read but not yet returned.
	start, end int
	err        error // sticky: a read or framing error
	broken     bool  // err is a framing error: buffered bytes mean nothing
}

// NewReader returns a Reader of r whose bodies may be at most max bytes
// (zero or negative means DefaultMax).
func NewReader(r io.Reader, max int) *Reader {
	return &Reader{r: r, dec: Decoder{Max: max}}
}

// Read returns the next frame's body. The slice is valid only until the next
// call to Read: copy what must outlive it.
//
// The input ending between frames gives io.EOF; ending inside one gives
// io.ErrUnexpectedEOF. Framing errors wrap ErrBadHeader or ErrTooLarge; read
// errors are returned once the frames read before them are consumed. Errors
// are sticky.
func (r *Reader) Read() ([]byte, error) {
	for {
		if r.start < r.end && !r.broken {
			body, n, err := r.dec.Next(r.buf[r.start:r.end])
			if err != nil {
				r.err, r.broken = err, true
				return nil, err
			}
			if n > 0 {
				r.start += n
				return body, nil
			}
		}
		if r.err != nil {
			if r.err == io.EOF && r.start < r.end {
				r.err = io.ErrUnexpectedEOF
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
		r.buf = make([]byte, min(initialBuf, MaxHeader+r.dec.max()))
	}
	if r.end == len(r.buf) {
		if r.start > 0 {
			// The Decoder's progress is relative to the unread bytes, so
			// moving them to the front keeps it valid.
			r.end = copy(r.buf, r.buf[r.start:r.end])
			r.start = 0
		} else {
			// Full of one incomplete frame the Decoder has not refused: it
			// fits within MaxHeader plus max.
			nb := make([]byte, min(2*len(r.buf), MaxHeader+r.dec.max()))
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

// Buffered reports how many bytes were read from the underlying reader but
// not yet returned as frames. A relay flushes its writer when it is zero, so
// a burst is written in one go and a lone message without delay.
func (r *Reader) Buffered() int { return r.end - r.start }
