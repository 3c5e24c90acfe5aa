// Package ws owns the RFC 6455 wire format for the server side of a
// WebSocket: the opening handshake checks and response, an incremental frame
// Reader, and the functions that append frames to an outgoing buffer.
//
// Concurrency contract: the package has no goroutines and no locks. A Reader
// belongs to one connection and is driven by whichever goroutine owns that
// connection (the gnet event loop in production); it never blocks and never
// asks for more bytes than it has been given, so it is safe to call from
// OnTraffic. The Append functions, the handshake helpers and the methods of
// the value types (CloseCode, ProtocolError, Opcode, EventKind) are pure and
// may be called from any goroutine.
//
// Typical use from an event loop, with buf the connection's buffered bytes:
//
//	for {
//		ev, n, err := r.Next(buf)
//		buf = buf[n:]
//		conn.Discard(n)
//		if err != nil {
//			var pe *ws.ProtocolError
//			errors.As(err, &pe)
//			// write ws.AppendClose(nil, pe.Code, pe.Reason), then close
//		}
//		if ev.Kind == ws.EventNone {
//			break // wait for more bytes
//		}
//		// handle ev; copy ev.Payload if it must outlive the next call to Next
//	}
//
// Decisions the RFC leaves to the receiver, and what this package does:
//
//   - Non-minimal payload length encodings (a length below 126 in the 16-bit
//     form, or below 65536 in the 64-bit form) are accepted. RFC 6455 §5.2
//     says the sender MUST use the minimal form but prescribes no receiver
//     behaviour; the Autobahn suite has no case that requires failing them
//     (autobahn-testsuite issue #108 is open), many implementations
//     (tungstenite among them) accept them, and the decoded length is identical either way. A 64-bit length
//     with the most significant bit set is rejected (1002), because the RFC
//     gives that bit a MUST on the value itself.
//   - With Reader.RequireMask false, masked and unmasked frames are both
//     accepted; the project's server always sets it.
//   - Text is validated incrementally and fails as soon as the bytes received
//     so far cannot be the prefix of valid UTF-8 (Autobahn 6.4.x "fail fast"),
//     including inside a frame whose tail has not arrived yet.
package ws
