package bench

import (
	"bufio"
	"bytes"
	"errors"
	"io"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// RunEchoAgent is the agent behind the rtt and throughput scenarios
// (`agentbridge bench echo-agent`): NDJSON JSON-RPC on in and out, every
// request answered at once with a result string as long as the request, so
// a round trip moves the same bytes each way as an echo server does.
// Notifications and responses are ignored, unparsable lines get -32700.
// Answers are buffered and flushed whenever no more input is waiting, so a
// pipelined burst is answered in few writes and a lone request at once.
//
// The demo agent decodes and encodes with encoding/json, a few microseconds
// a message, which would cap the bridge's measured throughput at the
// agent's; this agent costs one scan, so the figures are the bridge's.
// It returns nil at the end of in. Call it from any goroutine; it owns in
// and out until it returns.
func RunEchoAgent(in io.Reader, out io.Writer) error {
	br := bufio.NewReaderSize(in, 64<<10)
	bw := bufio.NewWriterSize(out, 64<<10)
	var long, resp []byte
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long[:0], line...)
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil {
			if ferr := bw.Flush(); ferr != nil {
				return ferr
			}
			if err == io.EOF {
				return nil
			}
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) > 0 {
			resp = echoAnswer(resp[:0], line)
			if len(resp) > 0 {
				if _, err := bw.Write(resp); err != nil {
					return err
				}
			}
		}
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
}

// echoAnswer appends the answer to one request line (with its newline), or
// nothing when the line needs none.
func echoAnswer(dst, line []byte) []byte {
	h, err := jsonrpc.Peek(line)
	if err != nil {
		var je *jsonrpc.Error
		if !errors.As(err, &je) {
			je = &jsonrpc.Error{Code: jsonrpc.CodeParseError, Message: err.Error()}
		}
		dst = jsonrpc.AppendError(dst, h.ID, je)
		return append(dst, '\n')
	}
	if h.Kind != jsonrpc.KindRequest {
		return dst
	}
	const head, mid, tail = `{"jsonrpc":"2.0","id":`, `,"result":"`, `"}`
	pad := len(line) - len(head) - len(h.ID) - len(mid) - len(tail)
	dst = append(dst, head...)
	dst = append(dst, h.ID...)
	dst = append(dst, mid...)
	for range max(pad, 0) {
		dst = append(dst, 'x')
	}
	dst = append(dst, tail...)
	return append(dst, '\n')
}
