package agent

import (
	"bytes"
	"fmt"
	"io"
	"strconv"

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

// framer splits the agent's output into messages in place, like the
// codecs' Splitter and Decoder, but skips a message over the limit to its
// end (reporting it as *oversize) instead of failing the stream. Only an
// LSP header it cannot parse stays fatal: the frame boundaries are lost.
// One goroutine at a time.
type framer struct {
	lsp   bool
	split ndjson.Splitter
	dec   lsp.Decoder

	skipping bool // inside an oversize message: discard until its end
	skipLeft int  // LSP: body bytes still to discard
	skip     oversize
}

func newFramer(f Framing, max int) *framer {
	return &framer{lsp: f == FramingLSP, split: ndjson.Splitter{Max: max}, dec: lsp.Decoder{Max: max}}
}

// next looks at the unconsumed bytes b (borrowed) and returns the next
// message (aliasing b; empty for a blank NDJSON line) with n, the bytes
// consumed. n == 0 with no error: b holds no complete message yet; present
// it again with more. An *oversize error reports a message skipped whole;
// n > 0 with neither a message nor an error is part of one being skipped.
// Any other error is fatal to the stream.
func (f *framer) next(b []byte) ([]byte, int, error) {
	if f.skipping {
		return f.discard(b, 0)
	}
	var msg []byte
	var n int
	var err error
	if f.lsp {
		msg, n, err = f.dec.Next(b)
	} else {
		msg, n, err = f.split.Next(b)
	}
	if err == nil || !isTooLarge(err) {
		return msg, n, err
	}
	if !f.lsp {
		f.split.Reset()
		f.skipping = true
		f.skip = oversize{head: bytes.Clone(b[:min(len(b), headKeep)])}
		return f.discard(b, 0)
	}
	f.dec.Reset()
	hdrEnd := bytes.Index(b, []byte("\r\n\r\n"))
	if hdrEnd < 0 {
		if len(b) < lsp.MaxHeader {
			return nil, 0, nil // the header's end is still to come
		}
		return nil, 0, fmt.Errorf("%w: header block longer than %d bytes", lsp.ErrBadHeader, lsp.MaxHeader)
	}
	size := -1
	for _, line := range bytes.Split(b[:hdrEnd], []byte("\r\n")) {
		name, val, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("content-length")) {
			size, _ = strconv.Atoi(string(bytes.TrimSpace(val)))
		}
	}
	if size <= 0 {
		return nil, 0, fmt.Errorf("%w: oversize frame without a usable Content-Length", lsp.ErrBadHeader)
	}
	f.skipping, f.skipLeft, f.skip = true, size, oversize{size: size}
	return f.discard(b[hdrEnd+4:], hdrEnd+4)
}

// discard drops the bytes of the message being skipped (after already
// consumed ones) and reports its end with an *oversize.
func (f *framer) discard(b []byte, already int) ([]byte, int, error) {
	if f.lsp {
		k := min(len(b), f.skipLeft)
		if keep := headKeep - len(f.skip.head); keep > 0 {
			f.skip.head = append(f.skip.head, b[:min(k, keep)]...)
		}
		f.skipLeft -= k
		if f.skipLeft > 0 {
			return nil, already + k, nil
		}
		return nil, already + k, f.done()
	}
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		f.skip.size += len(b)
		return nil, already + len(b), nil
	}
	f.skip.size += i
	if i > 0 && b[i-1] == '\r' {
		f.skip.size--
	}
	return nil, already + i + 1, f.done()
}

func (f *framer) done() error {
	o := f.skip
	f.skipping, f.skip = false, oversize{}
	return &o
}

// outReader frames a blocking reader (the agent's stdout pipe) with a
// framer. One goroutine at a time.
type outReader struct {
	r          io.Reader
	fr         *framer
	max        int
	buf        []byte
	start, end int
	err        error // sticky: a read error or a fatal framing error
}

func newOutReader(f Framing, r io.Reader, max int) *outReader {
	return &outReader{r: r, fr: newFramer(f, max), max: max}
}

// Read returns the next message (valid until the next call), an *oversize
// for a message skipped whole, or the stream's error.
func (o *outReader) Read() ([]byte, error) {
	for {
		if o.start < o.end && (o.err == nil || o.err == io.EOF) {
			msg, n, err := o.fr.next(o.buf[o.start:o.end])
			o.start += n
			if _, ok := err.(*oversize); ok {
				return nil, err
			}
			if err != nil {
				o.err = err
				return nil, err
			}
			if n > 0 {
				if msg != nil && (len(msg) > 0 || o.fr.lsp) {
					return msg, nil
				}
				continue
			}
		}
		if o.err != nil {
			if o.err == io.EOF && o.start < o.end {
				if o.fr.lsp || o.fr.skipping {
					o.err = io.ErrUnexpectedEOF
					return nil, o.err
				}
				// A last line without its newline.
				line := bytes.TrimSuffix(o.buf[o.start:o.end], []byte("\r"))
				o.start = o.end
				if len(line) == 0 {
					continue
				}
				return line, nil
			}
			if o.err == io.EOF && o.fr.skipping {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, o.err
		}
		o.fill()
	}
}

// fill makes room and reads once, recording any error. The buffer grows
// to hold one message of up to max bytes; an oversize one is discarded as
// it arrives, so it never grows past that.
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
			nb := make([]byte, max(len(o.buf), min(2*len(o.buf), o.max+lsp.MaxHeader+2)))
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
