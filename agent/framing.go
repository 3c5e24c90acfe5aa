package agent

import (
	"errors"
	"io"

	"github.com/agentbridge/agentbridge/codec/lsp"
	"github.com/agentbridge/agentbridge/codec/ndjson"
)

// frameReader yields one message per Read; the slice is valid until the next
// Read. Both codec readers are sticky on error.
type frameReader interface {
	Read() ([]byte, error)
}

func newFrameReader(f Framing, r io.Reader, max int) frameReader {
	if f == FramingLSP {
		return lsp.NewReader(r, max)
	}
	return ndjson.NewReader(r, max)
}

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
