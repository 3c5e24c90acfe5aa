package agent

import (
	"errors"

	"github.com/agentbridge/agentbridge/codec/lsp"
	"github.com/agentbridge/agentbridge/codec/ndjson"
)

// appendFrame appends msg framed for the agent's stdin. NDJSON turns raw
// newlines (whitespace between tokens) into spaces so a pretty-printed
// message stays one line.
func appendFrame(f Framing, dst, msg []byte) []byte {
	if f == FramingLSP {
		return lsp.AppendFrame(dst, msg)
	}
	return ndjson.AppendLine(dst, msg)
}

// appendFrameSplice appends msg framed for the agent's stdin with
// msg[start:end] replaced by repl (a request's id by the bridge's): the
// splice and the framing are one copy, with no spliced message in
// between. As appendFrame, NDJSON turns raw newlines into spaces.
func appendFrameSplice(f Framing, dst, msg []byte, start, end int, repl []byte) []byte {
	if f == FramingLSP {
		dst = lsp.AppendHeader(dst, len(msg)-(end-start)+len(repl))
		dst = append(dst, msg[:start]...)
		dst = append(dst, repl...)
		return append(dst, msg[end:]...)
	}
	from := len(dst)
	dst = append(dst, msg[:start]...)
	dst = append(dst, repl...)
	dst = append(dst, msg[end:]...)
	ndjson.Flatten(dst[from:])
	return append(dst, '\n')
}

// isTooLarge recognises the framers' over-the-limit errors.
func isTooLarge(err error) bool {
	return errors.Is(err, ndjson.ErrTooLarge) || errors.Is(err, lsp.ErrTooLarge)
}
