package ws

import (
	"encoding/binary"
	"math/bits"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Opcode is the 4-bit frame type (RFC 6455 §5.2).
type Opcode byte

// Opcodes defined by RFC 6455; 0x3-0x7 and 0xB-0xF are reserved.
const (
	OpContinuation Opcode = 0x0
	OpText         Opcode = 0x1
	OpBinary       Opcode = 0x2
	OpClose        Opcode = 0x8
	OpPing         Opcode = 0x9
	OpPong         Opcode = 0xA
)

// IsControl reports whether op is a control opcode (close, ping, pong or a
// reserved control opcode).
func (op Opcode) IsControl() bool { return op&0x8 != 0 }

// String names the opcode: "text", "op(0x3)".
func (op Opcode) String() string {
	switch op {
	case OpContinuation:
		return "continuation"
	case OpText:
		return "text"
	case OpBinary:
		return "binary"
	case OpClose:
		return "close"
	case OpPing:
		return "ping"
	case OpPong:
		return "pong"
	}
	return "op(0x" + strconv.FormatUint(uint64(op), 16) + ")"
}

// MaxControlPayload is the largest payload a control frame may carry.
const MaxControlPayload = 125

const (
	finBit  = 0x80
	rsvBits = 0x70
	maskBit = 0x80

	// maxCloseReason leaves room for the 2-byte status code.
	maxCloseReason = MaxControlPayload - 2
)

// FrameHeaderLen is the size of an unmasked (server) frame header for a
// payload of payloadLen bytes: 2, 4 or 10.
func FrameHeaderLen(payloadLen int) int {
	switch {
	case payloadLen <= 125:
		return 2
	case payloadLen <= 0xFFFF:
		return 4
	}
	return 10
}

// AppendFrameHeader appends an unmasked frame header for a payload of
// payloadLen bytes, always in the minimal length encoding. It lets a writer
// send a shared payload after a per-connection header without copying it.
func AppendFrameHeader(dst []byte, fin bool, op Opcode, payloadLen int) []byte {
	return appendHeader(dst, fin, op, 0, payloadLen)
}

// AppendFrame appends one unmasked frame, as a server sends it.
func AppendFrame(dst []byte, fin bool, op Opcode, payload []byte) []byte {
	dst = appendHeader(dst, fin, op, 0, len(payload))
	return append(dst, payload...)
}

// AppendMaskedFrame appends one frame masked with key, as a client sends it.
// The server never needs it; tests, benchmarks and the load generator do.
func AppendMaskedFrame(dst []byte, fin bool, op Opcode, key [4]byte, payload []byte) []byte {
	dst = appendHeader(dst, fin, op, maskBit, len(payload))
	dst = append(dst, key[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	maskBytes(key, 0, dst[start:])
	return dst
}

// AppendClose appends an unmasked close frame. CloseNoStatus (and any code
// that may not appear on the wire, such as CloseAbnormal) produces an empty
// close frame, which RFC 6455 §7.1.5 reads as "no status". The reason is made
// valid UTF-8 and cut at a character boundary to fit the 123 bytes a control
// frame leaves for it.
func AppendClose(dst []byte, code CloseCode, reason string) []byte {
	if !code.ValidOnWire() {
		return appendHeader(dst, true, OpClose, 0, 0)
	}
	if !utf8.ValidString(reason) {
		reason = strings.ToValidUTF8(reason, "\uFFFD")
	}
	if len(reason) > maxCloseReason {
		cut := maxCloseReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	dst = appendHeader(dst, true, OpClose, 0, 2+len(reason))
	dst = binary.BigEndian.AppendUint16(dst, uint16(code))
	return append(dst, reason...)
}

func appendHeader(dst []byte, fin bool, op Opcode, mask byte, n int) []byte {
	b0 := byte(op) & 0x0F
	if fin {
		b0 |= finBit
	}
	switch {
	case n <= 125:
		return append(dst, b0, mask|byte(n))
	case n <= 0xFFFF:
		return append(dst, b0, mask|126, byte(n>>8), byte(n))
	}
	dst = append(dst, b0, mask|127)
	return binary.BigEndian.AppendUint64(dst, uint64(n))
}

// maskBytes XORs b in place with key, starting at key byte pos (0-3), and
// returns the key position for the byte after b. Masking is its own
// inverse, so it both masks and unmasks. It works eight bytes at a time: on
// a 4 KiB frame that is several times faster than a byte loop.
func maskBytes(key [4]byte, pos int, b []byte) int {
	if len(b) >= 8 {
		k32 := bits.RotateLeft32(binary.LittleEndian.Uint32(key[:]), -8*(pos&3))
		k64 := uint64(k32)<<32 | uint64(k32)
		for len(b) >= 32 {
			v0 := binary.LittleEndian.Uint64(b[0:8])
			v1 := binary.LittleEndian.Uint64(b[8:16])
			v2 := binary.LittleEndian.Uint64(b[16:24])
			v3 := binary.LittleEndian.Uint64(b[24:32])
			binary.LittleEndian.PutUint64(b[0:8], v0^k64)
			binary.LittleEndian.PutUint64(b[8:16], v1^k64)
			binary.LittleEndian.PutUint64(b[16:24], v2^k64)
			binary.LittleEndian.PutUint64(b[24:32], v3^k64)
			b = b[32:]
		}
		for len(b) >= 8 {
			binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^k64)
			b = b[8:]
		}
	}
	for i := range b {
		b[i] ^= key[pos&3]
		pos++
	}
	return pos & 3
}
