package agent

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/agentbridge/agentbridge/codec/lsp"
	"github.com/agentbridge/agentbridge/codec/ndjson"
)

// headKeep is how much of an oversize message is kept to find its id.
const headKeep = 64 << 10

// oversize is a message over MaxMessage that was skipped whole: the stream
// stays in step, so the agent need not be killed for it.
type oversize struct {
	size int    // the message's size in bytes (its body, for LSP)
	head []byte // its first bytes, up to headKeep
}

func (o *oversize) Error() string {
	return fmt.Sprintf("agent: message of %d bytes over the limit", o.size)
}

// outReader frames the agent's stdout like the codecs' readers, but skips a
// message over the limit to its end (reporting it as *oversize) instead of
// failing the stream. Only an LSP header it cannot parse stays fatal: the
// frame boundaries are lost. One goroutine at a time.
type outReader struct {
	r          io.Reader
	lsp        bool
	max        int
	split      ndjson.Splitter
	dec        lsp.Decoder
	buf        []byte
	start, end int
	err        error // sticky read error

	skipping bool // inside an oversize message: discard until its end
	skipLeft int  // LSP: body bytes still to discard
	skip     oversize
}

func newOutReader(f Framing, r io.Reader, max int) *outReader {
	return &outReader{r: r, lsp: f == FramingLSP, max: max,
		split: ndjson.Splitter{Max: max}, dec: lsp.Decoder{Max: max}}
}

// Read returns the next message (valid until the next call), an *oversize
// for a message skipped whole, or the stream's error.
func (o *outReader) Read() ([]byte, error) {
	for {
		if o.skipping {
			if done := o.discard(); done {
				o.skipping = false
				s := o.skip
				o.skip = oversize{}
				return nil, &s
			}
		} else if o.start < o.end {
			msg, n, err := o.next(o.buf[o.start:o.end])
			if err != nil {
				if !isTooLarge(err) {
					o.err = err
					return nil, err
				}
				if err := o.beginSkip(); err != nil {
					o.err = err
					return nil, err
				}
				continue
			}
			if n > 0 {
				o.start += n
				if len(msg) == 0 && !o.lsp {
					continue // a blank line
				}
				return msg, nil
			}
		}
		if o.err != nil {
			if o.err == io.EOF && o.start < o.end {
				if o.lsp || o.skipping {
					return nil, io.ErrUnexpectedEOF
				}
				line := bytes.TrimSuffix(o.buf[o.start:o.end], []byte("\r"))
				o.start = o.end
				o.split.Reset()
				if len(line) == 0 {
					continue
				}
				return line, nil
			}
			if o.err == io.EOF && o.skipping {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, o.err
		}
		o.fill()
	}
}

func (o *outReader) next(b []byte) ([]byte, int, error) {
	if o.lsp {
		return o.dec.Next(b)
	}
	return o.split.Next(b)
}

// beginSkip starts skipping the oversize message at o.start: it keeps its
// head and, for LSP, works out from the header how long the body is.
func (o *outReader) beginSkip() error {
	b := o.buf[o.start:o.end]
	o.skipping = true
	if !o.lsp {
		o.split.Reset()
		o.skip = oversize{head: bytes.Clone(b[:min(len(b), headKeep)])}
		return nil
	}
	o.dec.Reset()
	hdrEnd := bytes.Index(b, []byte("\r\n\r\n"))
	if hdrEnd < 0 {
		return fmt.Errorf("%w: oversize frame without a complete header", lsp.ErrBadHeader)
	}
	n := -1
	for _, line := range bytes.Split(b[:hdrEnd], []byte("\r\n")) {
		name, val, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("content-length")) {
			n, _ = strconv.Atoi(string(bytes.TrimSpace(val)))
		}
	}
	if n < 0 {
		return fmt.Errorf("%w: oversize frame without a Content-Length", lsp.ErrBadHeader)
	}
	o.start += hdrEnd + 4
	o.skip = oversize{size: n}
	o.skipLeft = n
	return nil
}

// discard drops buffered bytes of the message being skipped and reports
// whether its end was reached.
func (o *outReader) discard() bool {
	b := o.buf[o.start:o.end]
	if keep := headKeep - len(o.skip.head); keep > 0 && o.lsp {
		o.skip.head = append(o.skip.head, b[:min(len(b), keep, o.skipLeft)]...)
	}
	if o.lsp {
		k := min(len(b), o.skipLeft)
		o.start += k
		o.skipLeft -= k
		return o.skipLeft == 0
	}
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		o.skip.size += i
		if i > 0 && b[i-1] == '\r' {
			o.skip.size--
		}
		o.start += i + 1
		return true
	}
	o.skip.size += len(b)
	o.start = o.end
	return false
}

// fill makes room and reads once, recording any error. The buffer grows
// to hold one message of up to max bytes; an oversize one is discarded as it
// arrives, so it never grows past that.
func (o *outReader) fill() {
	if o.start == o.end {
		o.start, o.end = 0, 0
	}
	const initial = 64 << 10
	if len(o.buf) > 4*initial && o.end-o.start <= initial/2 {
		nb := make([]byte, initial)
		o.end = copy(nb, o.buf[o.start:o.end])
		o.start, o.buf = 0, nb
	}
	if o.buf == nil {
		o.buf = make([]byte, initial)
	}
	if o.end == len(o.buf) {
		if o.start > 0 {
			// The framers' progress is relative to the unread bytes.
			o.end = copy(o.buf, o.buf[o.start:o.end])
			o.start = 0
		} else {
			nb := make([]byte, min(2*len(o.buf), o.max+lsp.MaxHeader+2))
			copy(nb, o.buf[:o.end])
			o.buf = nb
		}
	}
	for range 100 {
		n, err := o.r.Read(o.buf[o.end:])
		o.end += n
		if err != nil {
			o.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	o.err = io.ErrNoProgress
}

// ResponseID finds, in the first bytes of a JSON-RPC message (possibly cut
// short), the raw id of a response: a top-level "id" with a "result" or
// "error" member and no "method" among the members seen. ok is false when
// the prefix does not show one.
func ResponseID(prefix []byte) (id []byte, ok bool) {
	depth, inStr, esc := 0, false, false
	keyStart, key := -1, ""
	expectKey := false
	answer, method := false, false
	for i := 0; i < len(prefix); i++ {
		c := prefix[i]
		if inStr {
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
				if depth == 1 && keyStart >= 0 {
					key = string(prefix[keyStart:i])
					keyStart = -1
				}
			}
			continue
		}
		switch c {
		case '"':
			inStr = true
			if depth == 1 && expectKey {
				keyStart = i + 1
				expectKey = false
			}
		case '{', '[':
			depth++
			if depth == 1 {
				expectKey = true
			}
		case '}', ']':
			depth--
		case ',':
			if depth == 1 {
				expectKey = true
			}
		case ':':
			if depth != 1 {
				continue
			}
			switch key {
			case "result", "error":
				answer = true
			case "method":
				method = true
			case "id":
				j := i + 1
				for j < len(prefix) && (prefix[j] == ' ' || prefix[j] == '\t' || prefix[j] == '\r' || prefix[j] == '\n') {
					j++
				}
				k := j
				if k < len(prefix) && prefix[k] == '"' {
					for k++; k < len(prefix) && prefix[k] != '"'; k++ {
						if prefix[k] == '\\' {
							k++
						}
					}
					if k >= len(prefix) {
						return nil, false
					}
					k++
				} else {
					for k < len(prefix) && (prefix[k] == '-' || (prefix[k] >= '0' && prefix[k] <= '9')) {
						k++
					}
					if k == len(prefix) {
						return nil, false // the number may go on
					}
				}
				if k > j {
					id = prefix[j:k]
				}
				i = k - 1
			}
			key = ""
		}
	}
	if id == nil || !answer || method {
		return nil, false
	}
	return id, true
}

// DropHandler is optionally implemented by a Handler that wants to hear of
// a message dropped for its size (to fail the call it answered). Called on
// the generation's stdout reader goroutine, in order with AgentMessage; id
// is the raw JSON-RPC id when the message's head shows a response, else nil.
type DropHandler interface {
	AgentDropped(gen uint64, id []byte, size int)
}

// everySecond lets through at most one log line a second and counts what
// it held back, so a flood of bad output makes one line a second, not one
// per message.
type everySecond struct {
	mu   sync.Mutex
	last time.Time
	held int
}

// allow reports whether to log now and how many were held back since the
// last line logged.
func (e *everySecond) allow(now time.Time) (bool, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if now.Sub(e.last) < time.Second {
		e.held++
		return false, 0
	}
	n := e.held
	e.last, e.held = now, 0
	return true, n
}
