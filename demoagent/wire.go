package demoagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
)

// JSON-RPC 2.0 error codes.
const (
	codeParseError     = -32700
	codeInvalidRequest = -32600
	codeMethodNotFound = -32601
	codeInvalidParams  = -32602
	codeInternal       = -32603
)

// maxLine bounds one incoming message.
const maxLine = 16 << 20

// inMsg is any incoming JSON-RPC message; which fields are set tells a
// request from a notification from a response.
type inMsg struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
	Result  json.RawMessage `json:"result"`
	Error   *rpcError       `json:"error"`
}

type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

type response struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *rpcError       `json:"error,omitempty"`
}

type outRequest struct {
	JSONRPC string `json:"jsonrpc"`
	ID      int64  `json:"id,omitempty"`
	Method  string `json:"method"`
	Params  any    `json:"params"`
}

var nullID = json.RawMessage("null")

// lineReader yields one trimmed, non-empty line at a time. A line over max
// is skipped and reported as errLineTooLong so the caller can answer it.
type lineReader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

var errLineTooLong = errors.New("demoagent: message too long")

func (l *lineReader) next() ([]byte, error) {
	for {
		l.buf = l.buf[:0]
		over := false
		for {
			chunk, err := l.r.ReadSlice('\n')
			if !over {
				if len(l.buf)+len(chunk) > l.max+1 {
					over = true
					l.buf = l.buf[:0]
				} else {
					l.buf = append(l.buf, chunk...)
				}
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil && (err != io.EOF || len(l.buf) == 0 || over) {
				return nil, err
			}
			break
		}
		if over {
			return nil, errLineTooLong
		}
		if line := bytes.TrimSpace(l.buf); len(line) > 0 {
			return line, nil
		}
	}
}

// writer serialises every outgoing message through one goroutine that
// flushes whenever it has nothing more queued.
type writer struct {
	out  io.Writer
	ch   chan outItem
	stop chan struct{} // closed: drain what is queued and return
	done chan struct{} // closed when the goroutine has returned
	hard context.Context
	fail func(error) // called once with the write error that ended the writer
}

type outItem struct {
	msg   []byte
	flush chan struct{} // non-nil: a barrier, closed once everything before it is written
}

func newWriter(hard context.Context, out io.Writer, fail func(error)) *writer {
	w := &writer{
		out:  out,
		ch:   make(chan outItem, 256),
		stop: make(chan struct{}),
		done: make(chan struct{}),
		hard: hard,
		fail: fail,
	}
	go w.run()
	return w
}

func (w *writer) run() {
	defer close(w.done)
	bw := bufio.NewWriterSize(w.out, 64<<10)
	handle := func(it outItem) error {
		if it.flush != nil {
			err := bw.Flush()
			close(it.flush)
			return err
		}
		if _, err := bw.Write(it.msg); err != nil {
			return err
		}
		if err := bw.WriteByte('\n'); err != nil {
			return err
		}
		if len(w.ch) == 0 {
			return bw.Flush()
		}
		return nil
	}
	for {
		select {
		case it := <-w.ch:
			if err := handle(it); err != nil {
				w.fail(err)
				return
			}
		case <-w.stop:
			for {
				select {
				case it := <-w.ch:
					if err := handle(it); err != nil {
						w.fail(err)
						return
					}
				default:
					if err := bw.Flush(); err != nil {
						w.fail(err)
					}
					return
				}
			}
		case <-w.hard.Done():
			return
		}
	}
}

// send queues one encoded message. It blocks while the output is backed up,
// as a real agent on a full stdout pipe would. Safe from any goroutine.
func (w *writer) send(msg []byte) error {
	select {
	case w.ch <- outItem{msg: msg}:
		return nil
	case <-w.done:
		return errClosed
	case <-w.hard.Done():
		return errClosed
	}
}

// sync returns once everything sent before it has been written and flushed.
func (w *writer) sync() error {
	ch := make(chan struct{})
	select {
	case w.ch <- outItem{flush: ch}:
	case <-w.done:
		return errClosed
	case <-w.hard.Done():
		return errClosed
	}
	select {
	case <-ch:
		return nil
	case <-w.done:
		return errClosed
	case <-w.hard.Done():
		return errClosed
	}
}
