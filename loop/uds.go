package loop

import (
	"errors"
	"fmt"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/codec/ndjson"
	"github.com/agentbridge/agentbridge/wire"
)

// ndjsonProto is the Unix socket's protocol: one JSON-RPC message per line.
type ndjsonProto struct {
	split ndjson.Splitter
}

func (p *ndjsonProto) name() string { return "unix" }

func (p *ndjsonProto) read(c *conn, buf []byte) (int, error) {
	if p.split.Max == 0 {
		p.split.Max = c.srv.cfg.MaxMessage
	}
	used := 0
	now := time.Now()
	for used < len(buf) {
		if c.holdInput(len(buf) - used) {
			break
		}
		line, n, err := p.split.Next(buf[used:])
		if err != nil {
			if errors.Is(err, ndjson.ErrTooLarge) {
				why := fmt.Sprintf("message exceeds the limit of %d bytes (--max-message); closing", c.srv.cfg.MaxMessage)
				c.ep.Send(wire.Own(append(jsonrpc.AppendError(nil, []byte("null"), &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest, Message: why}), '\n')), wire.Control)
				return len(buf), &closeError{code: wire.CloseTooBig, reason: why}
			}
			return used, err
		}
		if n == 0 {
			break
		}
		used += n
		if len(line) == 0 {
			continue
		}
		c.srv.cfg.Metrics.in("unix", len(line))
		c.ep.Input(line, now)
		if c.closing() {
			return len(buf), nil
		}
	}
	return used, nil
}

func (p *ndjsonProto) frame(m *wire.Msg) []byte { return m.Line() }

func (p *ndjsonProto) farewell(wire.CloseReason, string) []byte { return nil }
