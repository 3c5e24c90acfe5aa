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

// isTooLarge recognises the framers' over-the-limit errors.
func isTooLarge(err error) bool {
	return errors.Is(err, ndjson.ErrTooLarge) || errors.Is(err, lsp.ErrTooLarge)
}
