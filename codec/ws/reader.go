package ws

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"
)

// DefaultMaxMessage is the message size limit of a Reader whose MaxMessage
// is zero.
const DefaultMaxMessage = 16 << 20

// retainCap bounds the message buffer a Reader keeps between messages, so
// one large message does not pin its buffer for the connection's lifetime.
const retainCap = 64 << 10

// EventKind says what Next found.
type EventKind uint8

// Event kinds. EventNone means Next needs more bytes to go on.
const (
	EventNone EventKind = iota
	EventText
	EventBinary
	EventPing
	EventPong
	EventClose
)

// String names the kind for logs: "text".
func (k EventKind) String() string {
	switch k {
	case EventNone:
		return "none"
	case EventText:
		return "text"
	case EventBinary:
		return "binary"
	case EventPing:
		return "ping"
	case EventPong:
		return "pong"
	case EventClose:
		return "close"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Event is one complete message or control frame.
type Event struct {
	Kind EventKind
	// Payload is the unmasked message (text or binary, reassembled from its
	// fragments), the ping or pong application data, or the close reason.
	// It belongs to the Reader and stays valid only until the next call to
	// Next: copy it to keep it.
	Payload []byte
	// CloseCode is the peer's status code for EventClose: CloseNoStatus
	// when the close frame was empty.
	CloseCode CloseCode
}

// Reader parses frames sent by a peer, incrementally. It keeps its place
// across calls, so it can be handed whatever bytes have arrived: a header
// cut in two, half a payload, or many frames at once. Data frame payloads
// are consumed as they arrive, each byte once, so a large message fed one
// byte at a time costs linear time and the caller's input buffer never holds
// more than a frame header or one control frame.
//
// A Reader belongs to one connection and must be used by one goroutine at a
// time (the connection's event loop); its zero value, with the options set,
// is ready. It must not be copied after first use.
type Reader struct {
	// MaxMessage caps the size of a reassembled message in bytes; a frame
	// that would take a message past it fails with CloseTooBig as soon as
	// its header arrives. Zero (or negative) means DefaultMaxMessage, 16 MiB.
	MaxMessage int
	// RequireMask fails unmasked frames with CloseProtocolError, as a
	// server must (RFC 6455 §5.1). False accepts masked and unmasked frames.
	RequireMask bool
	// InPlace lets Next unmask a frame that is whole in buf (a control
	// frame, or a data frame that is a message by itself) in buf and
	// return its payload there, instead of copying it into the Reader's
	// own buffer: no copy, and a connection that only ever gets such
	// messages keeps no buffer between them. Next then modifies the bytes
	// it consumes, and such a payload is valid until the caller discards
	// them; the caller must not parse them again.
	InPlace bool
	// The small fields are grouped so that they share words: a Reader is
	// part of every idle WebSocket connection (80 bytes, not 96).
	closed bool // a close frame was delivered; later bytes are discarded

	// The message being assembled. msgOp is OpText or OpBinary while a
	// message is open and OpContinuation between messages.
	msgOp     Opcode
	text      utf8Validator
	delivered bool // msg was returned by the last call and is reset next
	msg       []byte

	// The data frame whose payload is arriving, once its header is consumed.
	inFrame bool
	fin     bool
	masked  bool
	key     [4]byte
	keyPos  int
	remain  uint64

	err error // first protocol error, returned by every later call
}

// Next parses from buf and returns at most one event and the number of
// bytes of buf it consumed, which the caller discards before the next call.
// buf is borrowed: Next does not keep it, never looks past len(buf), and
// modifies it only with InPlace (the bytes it consumed). Call Next again with the remaining bytes until it returns
// EventNone; n may be positive even then, when it consumed a frame header,
// a non-final fragment or part of a payload.
//
// A protocol violation returns a *ProtocolError whose Code belongs in the
// close frame sent back; the Reader is then dead and returns the same error
// from every later call. After an EventClose the peer may send nothing more,
// so later calls consume and ignore all of buf.
//
// Next must be called from the goroutine that owns the connection.
func (r *Reader) Next(buf []byte) (ev Event, n int, err error) {
	if r.err != nil {
		return Event{}, 0, r.err
	}
	if r.closed {
		return Event{}, len(buf), nil
	}
	if r.delivered {
		r.delivered = false
		if cap(r.msg) > retainCap {
			r.msg = nil
		} else {
			r.msg = r.msg[:0]
		}
	}
	for {
		if !r.inFrame {
			ev, used, err := r.header(buf[n:])
			n += used
			if err != nil || ev.Kind != EventNone || used == 0 {
				return ev, n, err
			}
			continue
		}
		k := len(buf) - n
		if uint64(k) > r.remain {
			k = int(r.remain)
		}
		if r.InPlace && r.fin && len(r.msg) == 0 && uint64(k) == r.remain {
			// A message whole in buf: unmasked and returned where it lies.
			p := buf[n : n+k]
			if r.masked {
				maskBytes(r.key, r.keyPos, p)
			}
			n += k
			r.remain, r.inFrame = 0, false
			return r.deliver(p, n, true)
		}
		if k > 0 {
			start := len(r.msg)
			r.msg = append(r.msg, buf[n:n+k]...)
			chunk := r.msg[start:]
			if r.masked {
				r.keyPos = maskBytes(r.key, r.keyPos, chunk)
			}
			n += k
			r.remain -= uint64(k)
			if r.msgOp == OpText && !r.text.write(chunk) {
				return Event{}, n, r.fail(CloseInvalidPayload, "text message is not valid UTF-8")
			}
		}
		if r.remain > 0 {
			return Event{}, n, nil
		}
		r.inFrame = false
		if !r.fin {
			continue
		}
		r.delivered = true
		return r.deliver(r.msg, n, false)
	}
}

// deliver returns the message that just ended, payload p, having consumed
// n bytes; unchecked says p has not been through the UTF-8 check yet (it
// was unmasked in place rather than written chunk by chunk).
func (r *Reader) deliver(p []byte, n int, unchecked bool) (Event, int, error) {
	ev := Event{Kind: EventBinary, Payload: p}
	if r.msgOp == OpText {
		if unchecked && !r.text.write(p) {
			return Event{}, n, r.fail(CloseInvalidPayload, "text message is not valid UTF-8")
		}
		if !r.text.complete() {
			return Event{}, n, r.fail(CloseInvalidPayload, "text message ends inside a UTF-8 sequence")
		}
		ev.Kind = EventText
	}
	r.msgOp = OpContinuation
	return ev, n, nil
}

// Buffered is the size of the message being assembled (or, right after
// Next returned it, of the message just delivered): the memory this
// connection holds for the peer's input beyond the caller's own buffer.
// Call it from the goroutine that owns the connection.
func (r *Reader) Buffered() int { return len(r.msg) }

// header parses the frame at the start of b. It consumes a whole control
// frame and returns its event, or consumes a data frame's header and leaves
// the payload to Next. It consumes nothing until all it needs is in b.
func (r *Reader) header(b []byte) (Event, int, error) {
	if len(b) < 2 {
		return Event{}, 0, nil
	}
	b0, b1 := b[0], b[1]
	// Everything decidable from the first two bytes is checked before
	// waiting for the rest of the header, so a bad peer fails fast.
	if b0&rsvBits != 0 {
		return Event{}, 0, r.fail(CloseProtocolError, "reserved bits set without a negotiated extension")
	}
	fin := b0&finBit != 0
	op := Opcode(b0 & 0x0F)
	masked := b1&maskBit != 0
	l7 := b1 &^ maskBit
	switch op {
	case OpContinuation:
		if r.msgOp == OpContinuation {
			return Event{}, 0, r.fail(CloseProtocolError, "continuation frame outside a fragmented message")
		}
	case OpText, OpBinary:
		if r.msgOp != OpContinuation {
			return Event{}, 0, r.fail(CloseProtocolError, "new data frame inside a fragmented message")
		}
	case OpClose, OpPing, OpPong:
		if !fin {
			return Event{}, 0, r.fail(CloseProtocolError, "fragmented control frame")
		}
		if l7 > MaxControlPayload {
			return Event{}, 0, r.fail(CloseProtocolError, "control frame payload longer than 125 bytes")
		}
	default:
		return Event{}, 0, r.fail(CloseProtocolError, "reserved opcode "+op.String())
	}
	if r.RequireMask && !masked {
		return Event{}, 0, r.fail(CloseProtocolError, "unmasked client frame")
	}

	hlen := 2
	switch l7 {
	case 126:
		hlen = 4
	case 127:
		hlen = 10
	}
	if masked {
		hlen += 4
	}
	if len(b) < hlen {
		return Event{}, 0, nil
	}
	length := uint64(l7)
	switch l7 {
	case 126:
		length = uint64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		length = binary.BigEndian.Uint64(b[2:10])
		if length>>63 != 0 {
			return Event{}, 0, r.fail(CloseProtocolError, "64-bit payload length with the most significant bit set")
		}
	}
	var key [4]byte
	if masked {
		copy(key[:], b[hlen-4:hlen])
	}

	if op.IsControl() {
		total := hlen + int(length)
		if len(b) < total {
			return Event{}, 0, nil
		}
		// A control payload is unmasked in msg's spare capacity, past the
		// message being assembled, and msg keeps its length: no buffer of
		// its own on every idle connection, and no allocation once msg has
		// grown past a control frame.
		p := b[hlen:total]
		if !r.InPlace {
			start := len(r.msg)
			r.msg = append(r.msg, p...)
			p = r.msg[start:]
			r.msg = r.msg[:start]
		}
		if masked {
			maskBytes(key, 0, p)
		}
		ev, err := r.control(op, p)
		return ev, total, err
	}

	if op != OpContinuation {
		r.msgOp = op
		r.msg = r.msg[:0]
		r.text = utf8Validator{}
	}
	limit := r.MaxMessage
	if limit <= 0 {
		limit = DefaultMaxMessage
	}
	if length > uint64(limit-len(r.msg)) {
		return Event{}, 0, r.fail(CloseTooBig, "message longer than "+strconv.Itoa(limit)+" bytes")
	}
	r.inFrame = true
	r.fin = fin
	r.masked = masked
	r.key = key
	r.keyPos = 0
	r.remain = length
	return Event{}, hlen, nil
}

func (r *Reader) control(op Opcode, p []byte) (Event, error) {
	switch op {
	case OpPing:
		return Event{Kind: EventPing, Payload: p}, nil
	case OpPong:
		return Event{Kind: EventPong, Payload: p}, nil
	}
	if len(p) == 0 {
		r.closed = true
		return Event{Kind: EventClose, CloseCode: CloseNoStatus}, nil
	}
	if len(p) == 1 {
		return Event{}, r.fail(CloseProtocolError, "close frame with a 1-byte payload")
	}
	code := CloseCode(binary.BigEndian.Uint16(p))
	if !code.ValidOnWire() {
		return Event{}, r.fail(CloseProtocolError, "close code "+strconv.Itoa(int(code))+" is not allowed on the wire")
	}
	reason := p[2:]
	if !utf8.Valid(reason) {
		return Event{}, r.fail(CloseInvalidPayload, "close reason is not valid UTF-8")
	}
	r.closed = true
	return Event{Kind: EventClose, Payload: reason, CloseCode: code}, nil
}

func (r *Reader) fail(code CloseCode, reason string) error {
	r.err = &ProtocolError{Code: code, Reason: reason}
	return r.err
}
