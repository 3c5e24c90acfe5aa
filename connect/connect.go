// Package connect is the stdio shim behind `agentbridge connect`: a client
// that only speaks JSON-RPC over stdin/stdout (an IDE configured to run an
// agent command) talks to the shared agent through the daemon.
package connect

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
	"syscall"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/codec/ndjson"
)

// Options configure Run.
type Options struct {
	URL        string // unix:///path.sock, ws://host:port/acp, wss://host:port/acp
	Token      string // for ws/wss
	CA         string // PEM file of a CA to trust for wss
	MaxMessage int    // 0 -> 16 MiB
	Stdin      io.Reader
	Stdout     io.Writer
	Logger     *slog.Logger
}

// Error is a failure the user can act on; Run returns it with a message
// naming what went wrong.
type Error struct {
	Msg string
	Err error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// Run relays stdin to the daemon and the daemon's messages to stdout until
// stdin closes (nil) or the connection fails.
func Run(ctx context.Context, o Options) error {
	if o.MaxMessage == 0 {
		o.MaxMessage = 16 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	u, err := url.Parse(o.URL)
	if err != nil {
		return &Error{Msg: fmt.Sprintf("invalid URL %q: %v", o.URL, err), Err: err}
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			path = u.Opaque
		}
		if path == "" {
			return &Error{Msg: fmt.Sprintf("invalid URL %q: want unix:///path/to.sock", o.URL)}
		}
		c, err := DialUnix(path)
		if err != nil {
			return err
		}
		return relay(ctx, c, o)
	case "ws", "wss":
		return runWS(ctx, u, o)
	default:
		return &Error{Msg: fmt.Sprintf("unsupported URL scheme %q in %q (want unix, ws or wss)", u.Scheme, o.URL)}
	}
}

// DialUnix connects to the daemon's socket with errors a person can act on.
func DialUnix(path string) (net.Conn, error) {
	c, err := net.Dial("unix", path)
	if err == nil {
		return c, nil
	}
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return nil, &Error{Msg: fmt.Sprintf("no agentbridge daemon is listening on %s (start one with `agentbridge serve`)", path), Err: err}
	case errors.Is(err, os.ErrPermission):
		return nil, &Error{Msg: fmt.Sprintf("permission denied on %s (the socket belongs to another user)", path), Err: err}
	}
	return nil, &Error{Msg: fmt.Sprintf("cannot connect to %s: %v", path, err), Err: err}
}

// inflight tracks the requests the stdio client sent that await an answer,
// so the shim can exit once stdin has closed and every answer has arrived.
type inflight struct {
	mu      sync.Mutex
	pending map[string]int
	eof     bool
	done    chan struct{}
	closed  bool
}

func newInflight() *inflight {
	return &inflight{pending: map[string]int{}, done: make(chan struct{})}
}

// sent records a message going to the daemon.
func (f *inflight) sent(msg []byte) {
	h, err := jsonrpc.Peek(msg)
	if err != nil || h.Kind != jsonrpc.KindRequest {
		return
	}
	f.mu.Lock()
	f.pending[string(h.ID)]++
	f.mu.Unlock()
}

// received records a message coming from the daemon.
func (f *inflight) received(msg []byte) {
	h, err := jsonrpc.Peek(msg)
	if err != nil || h.Kind != jsonrpc.KindResponse {
		return
	}
	f.mu.Lock()
	if n := f.pending[string(h.ID)]; n > 1 {
		f.pending[string(h.ID)] = n - 1
	} else {
		delete(f.pending, string(h.ID))
	}
	f.check()
	f.mu.Unlock()
}

// stdinClosed records the end of the client's input.
func (f *inflight) stdinClosed() {
	f.mu.Lock()
	f.eof = true
	f.check()
	f.mu.Unlock()
}

func (f *inflight) check() {
	if f.eof && len(f.pending) == 0 && !f.closed {
		f.closed = true
		close(f.done)
	}
}

// relay copies NDJSON both ways over a stream connection. It returns nil
// once stdin has closed and every request relayed has been answered.
func relay(ctx context.Context, c net.Conn, o Options) error {
	defer c.Close()
	errc := make(chan error, 2)
	track := newInflight()
	go func() {
		r := ndjson.NewReader(o.Stdin, o.MaxMessage)
		w := bufio.NewWriter(c)
		for {
			msg, err := r.Read()
			if err != nil {
				if ferr := w.Flush(); ferr != nil {
					errc <- &Error{Msg: "connection to the daemon lost: " + ferr.Error(), Err: ferr}
					return
				}
				if errors.Is(err, io.EOF) {
					track.stdinClosed()
					return
				}
				errc <- &Error{Msg: "reading stdin: " + err.Error(), Err: err}
				return
			}
			track.sent(msg)
			w.Write(msg)
			w.WriteByte('\n')
			if r.Buffered() == 0 {
				if err := w.Flush(); err != nil {
					errc <- &Error{Msg: "connection to the daemon lost: " + err.Error(), Err: err}
					return
				}
			}
		}
	}()
	go func() {
		r := ndjson.NewReader(c, o.MaxMessage+1024)
		w := bufio.NewWriter(o.Stdout)
		for {
			msg, err := r.Read()
			if err != nil {
				_ = w.Flush()
				if errors.Is(err, io.EOF) {
					errc <- &Error{Msg: "the daemon closed the connection", Err: io.EOF}
				} else {
					errc <- &Error{Msg: "connection to the daemon lost: " + err.Error(), Err: err}
				}
				return
			}
			w.Write(msg)
			w.WriteByte('\n')
			if r.Buffered() == 0 {
				if err := w.Flush(); err != nil {
					errc <- &Error{Msg: "writing stdout: " + err.Error(), Err: err}
					return
				}
			}
			track.received(msg)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-track.done:
		return nil
	case <-ctx.Done():
		return nil
	}
}
