package ws

import (
	"bytes"
	"errors"
	"testing"
	"unicode/utf8"
)

// testKey is the masking key of the RFC 6455 §5.7 examples.
var testKey = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// got is an event with its payload copied out of the Reader's buffers.
type got struct {
	Kind    EventKind
	Payload string
	Code    CloseCode
}

func record(ev Event) got {
	return got{Kind: ev.Kind, Payload: string(ev.Payload), Code: ev.CloseCode}
}

func evText(s string) got   { return got{Kind: EventText, Payload: s} }
func evBinary(s string) got { return got{Kind: EventBinary, Payload: s} }
func evPing(s string) got   { return got{Kind: EventPing, Payload: s} }
func evPong(s string) got   { return got{Kind: EventPong, Payload: s} }
func evClose(code CloseCode, reason string) got {
	return got{Kind: EventClose, Payload: reason, Code: code}
}

// mf is a masked client frame.
func mf(fin bool, op Opcode, payload string) []byte {
	return AppendMaskedFrame(nil, fin, op, testKey, []byte(payload))
}

// uf is an unmasked frame.
func uf(fin bool, op Opcode, payload string) []byte {
	return AppendFrame(nil, fin, op, []byte(payload))
}

// rawFrame builds a masked frame with a hand-made first byte and length
// field, for encodings AppendMaskedFrame refuses to produce.
func rawFrame(b0 byte, lenField []byte, payload string) []byte {
	out := []byte{b0}
	lenField = bytes.Clone(lenField)
	lenField[0] |= maskBit
	out = append(out, lenField...)
	out = append(out, testKey[:]...)
	start := len(out)
	out = append(out, payload...)
	maskBytes(testKey, 0, out[start:])
	return out
}

func closePayload(code uint16, reason string) string {
	return string([]byte{byte(code >> 8), byte(code)}) + reason
}

func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

func errCode(err error) CloseCode {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return 0
}

// feedWhole hands the Reader all of in at once, as when a whole burst is
// buffered, and collects events until it needs more bytes or fails.
func feedWhole(tb testing.TB, r *Reader, in []byte) ([]got, error) {
	tb.Helper()
	orig := bytes.Clone(in)
	defer func() {
		if !bytes.Equal(in, orig) {
			tb.Fatalf("Next modified its input")
		}
	}()
	var out []got
	buf := in
	for {
		ev, n, err := r.Next(buf)
		if n < 0 || n > len(buf) {
			tb.Fatalf("Next consumed %d of %d bytes", n, len(buf))
		}
		buf = buf[n:]
		if err != nil {
			return out, err
		}
		if ev.Kind == EventNone {
			if !r.closed {
				// EventNone promises that nothing more can be done with
				// these bytes: what is left is an incomplete header or
				// control frame.
				if ev2, m, err2 := r.Next(buf); m != 0 || err2 != nil || ev2.Kind != EventNone {
					tb.Fatalf("Next after EventNone made progress: kind=%v n=%d err=%v", ev2.Kind, m, err2)
				}
			}
			return out, nil
		}
		out = append(out, record(ev))
	}
}

// feedChunked simulates the event loop's inbound buffer: chunk bytes arrive
// at a time, the Reader is driven until EventNone, and consumed bytes are
// discarded. It returns the largest number of bytes left pending in the
// buffer between arrivals, which shows the Reader consumes payload as it
// comes instead of waiting for whole frames.
func feedChunked(tb testing.TB, r *Reader, in []byte, chunk int) (events []got, err error, maxPending int) {
	tb.Helper()
	var pending []byte
	for off := 0; off < len(in); off += chunk {
		end := min(off+chunk, len(in))
		pending = append(pending, in[off:end]...)
		for {
			view := pending[:len(pending):len(pending)]
			ev, n, err := r.Next(view)
			if n < 0 || n > len(view) {
				tb.Fatalf("Next consumed %d of %d bytes", n, len(view))
			}
			if err == nil && ev.Kind != EventNone {
				// Before the consumed bytes are discarded: an InPlace
				// payload lies in them.
				events = append(events, record(ev))
			}
			pending = append(pending[:0], pending[n:]...)
			if err != nil {
				return events, err, maxPending
			}
			if ev.Kind == EventNone {
				break
			}
		}
		maxPending = max(maxPending, len(pending))
	}
	return events, nil, maxPending
}

// validPrefix is the reference for fail-fast UTF-8 checks: whether p is the
// beginning of some valid UTF-8 string.
func validPrefix(p []byte) bool {
	if utf8.Valid(p) {
		return true
	}
	// Find a lead byte in the last three bytes whose sequence runs past the
	// end; everything before it must be valid, and the sequence must be
	// completable. Only the second byte of a sequence has a narrowed range,
	// so trying every second byte and padding with 0x80 is exhaustive.
	for k := 1; k <= 3 && k <= len(p); k++ {
		head, tail := p[:len(p)-k], p[len(p)-k:]
		if !utf8.RuneStart(tail[0]) || !utf8.Valid(head) {
			continue
		}
		for c := 0x80; c <= 0xBF; c++ {
			cand := bytes.Clone(tail)
			if len(cand) == 1 {
				cand = append(cand, byte(c))
			} else if cand[1] != byte(c) {
				continue
			}
			for len(cand) < 4 && !utf8.FullRune(cand) {
				cand = append(cand, 0x80)
			}
			if utf8.Valid(cand) && len(cand) > len(tail) {
				return true
			}
		}
	}
	return false
}
