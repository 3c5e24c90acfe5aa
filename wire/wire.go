// Package wire owns the message value that travels from the router to every
// connection: one immutable JSON-RPC message, encoded once per transport
// framing and shared by all its recipients.
//
// A *Msg is created by the router (from the agent's output or from a bridge
// answer) and is never mutated afterwards except for its lazily built
// encodings, which are published with atomic pointers so any goroutine may
// read them. Recipients never copy the body: the same bytes are handed to
// every socket.
package wire

import (
	"strconv"
	"sync/atomic"
	"unicode/utf8"

	"github.com/agentbridge/agentbridge/codec/ws"
	"github.com/agentbridge/agentbridge/ring"
)

// Class says how a message may be treated under backpressure. It is the
// ring's class: one type from the router to the queue.
type Class = ring.Class

const (
	// Control messages (responses, agent requests, bridge answers, errors,
	// bridge/status, bridge/gap, bridge/resolved) are never dropped: a
	// connection that cannot take them is closed.
	Control = ring.Control
	// Data messages (agent notifications of the data plane) may be evicted,
	// summarised, or read from the session log later by a lagging
	// connection.
	Data = ring.Data
)

// Msg is one JSON-RPC message shared by all its recipients.
type Msg struct {
	// line is the JSON text followed by '\n'; Body is line without it.
	line []byte
	// SessionID is the session the message belongs to ("" for none).
	SessionID string
	// Seq is the message's sequence number in its session's event log
	// (0 when it is not a logged data-plane event).
	Seq uint64

	// pool is 1 + the index of the pool a Spliced message came from (0:
	// none), single that SingleUse marked it (spliced.go).
	pool   uint8
	single bool

	frame     atomic.Pointer[[]byte]
	enveloped atomic.Pointer[Msg]
	text      atomic.Pointer[string]
	encoded   [numEncodings]atomic.Pointer[[]byte]
}

// Encoding names a transport encoding of a message that Encoded caches
// (the WebSocket frame has its own, Frame).
type Encoding uint8

const (
	// SSEEvent is one server-sent event: its seq as id or its bridge
	// method as event name, then the data lines (package httpfront).
	SSEEvent Encoding = iota
	// SSEData is one server-sent event of data lines only (MCP streams).
	SSEData
	numEncodings
)

// New wraps an encoded JSON message. body is copied once, with room for the
// newline of NDJSON framing, so that every later encoding is allocation-free
// for recipients.
func New(body []byte) *Msg {
	line := make([]byte, len(body)+1)
	copy(line, body)
	line[len(body)] = '\n'
	return &Msg{line: line}
}

// Own wraps line, which must end in '\n' and must not be modified afterwards
// by the caller. It is New without the copy, for buffers built to be handed
// over (e.g. by jsonrpc.Append* followed by '\n').
func Own(line []byte) *Msg {
	if len(line) == 0 || line[len(line)-1] != '\n' {
		line = append(line, '\n')
	}
	return &Msg{line: line}
}

// Body returns the JSON text without framing. Safe from any goroutine.
func (m *Msg) Body() []byte { return m.line[:len(m.line)-1] }

// Line returns the NDJSON encoding (body + '\n'). Safe from any goroutine.
func (m *Msg) Line() []byte { return m.line }

// Size is the number of bytes the message costs a queue.
func (m *Msg) Size() int { return len(m.line) }

// Frame returns the message as one unmasked WebSocket text frame, built on
// first use and shared by every WebSocket recipient. Safe from any goroutine.
func (m *Msg) Frame() []byte {
	if p := m.frame.Load(); p != nil {
		return *p
	}
	body := m.Body()
	f := ws.AppendFrame(make([]byte, 0, ws.FrameHeaderLen(len(body))+len(body)), true, ws.OpText, body)
	m.frame.CompareAndSwap(nil, &f)
	return *m.frame.Load()
}

// Encoded returns the message in encoding e, built with enc on first use
// and shared by every recipient that asks for it, so that a broadcast is
// encoded once per encoding rather than once per recipient (as Frame is
// for WebSocket). enc must give the same bytes for the same message; the
// result must not be modified. Safe from any goroutine.
func (m *Msg) Encoded(e Encoding, enc func(*Msg) []byte) []byte {
	slot := &m.encoded[e]
	if p := slot.Load(); p != nil {
		return *p
	}
	b := enc(m)
	slot.CompareAndSwap(nil, &b)
	return *slot.Load()
}

// Enveloped returns the message wrapped as a bridge/event notification
// {sessionId, seq, message}, built once and shared. A message with no
// session is its own envelope. Safe from any goroutine.
func (m *Msg) Enveloped() *Msg {
	if m.SessionID == "" {
		return m
	}
	if e := m.enveloped.Load(); e != nil {
		return e
	}
	body := m.Body()
	b := make([]byte, 0, len(body)+len(m.SessionID)+96)
	b = append(b, `{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":`...)
	b = AppendString(b, m.SessionID)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, m.Seq, 10)
	b = append(b, `,"message":`...)
	b = append(b, body...)
	b = append(b, "}}\n"...)
	m.enveloped.CompareAndSwap(nil, &Msg{line: b, SessionID: m.SessionID, Seq: m.Seq})
	return m.enveloped.Load()
}

// Text returns a cached derived string (the streamed text of an
// agent_message_chunk), computing it with fn on first use. Degraded
// connections use it for bridge/summary; computing it once per message
// rather than once per degraded recipient keeps summaries cheap.
func (m *Msg) Text(fn func(body []byte) string) string {
	if p := m.text.Load(); p != nil {
		return *p
	}
	s := fn(m.Body())
	m.text.CompareAndSwap(nil, &s)
	return *m.text.Load()
}

// AppendString appends s as a JSON string literal. Invalid UTF-8 is replaced
// by U+FFFD so the output is always valid JSON.
func AppendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, "\\ufffd"...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
