// Package connect is the stdio shim behind `agentbridge connect`: a client
// that only speaks JSON-RPC over stdin/stdout (an IDE configured to run an
// agent command) talks to the shared agent through the daemon, over the
// Unix socket (NDJSON) or WebSocket (ws://, wss://), and survives the
// connection dropping: the shim reconnects, resumes with its bridge/hello
// key, re-attaches its sessions from the last seq it wrote to stdout, and
// settles every request that was in flight (answered, sent again, or failed
// with -32003), so the stdio client sees one uninterrupted stream.
//
// One code path serves both transports (shim.go); a transport only dials and
// moves whole messages (transport, stream). Concurrency: Run owns all relay
// state on its own goroutine; stdin, stdout and each connection's read and
// write sides have a goroutine of their own that only moves bytes.
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
	"syscall"
	"time"

	"github.com/agentbridge/agentbridge/codec/ndjson"
)

// Options configure Run.
type Options struct {
	// URL is unix:///path.sock, ws://host:port/acp or wss://host:port/acp.
	URL string
	// Token for ws/wss. Empty means $AGENTBRIDGE_TOKEN, or a ?token= in URL.
	Token string
	// CA is a PEM file of a CA to trust for wss, in addition to the system's.
	CA string
	// MaxMessage is the largest message on stdin. Zero means 16 MiB.
	MaxMessage int
	// RetryFor bounds how long reconnecting may fail, counted from the
	// drop, before Run gives up (ErrGaveUp). Zero means 2 minutes, the
	// daemon's resume window: past it the daemon has forgotten the
	// requests in flight anyway.
	RetryFor time.Duration
	// Stdin and Stdout carry the stdio client's NDJSON.
	Stdin  io.Reader
	Stdout io.Writer
	// Logger receives progress and warnings. Nil discards them.
	Logger *slog.Logger
	// AllowUIDs are uids besides the shim's own that may serve a unix://
	// URL. The shim checks the server's uid (SO_PEERCRED) before it sends
	// anything: a socket another user listens on (squatting the path) would
	// otherwise receive the resume key and every prompt.
	AllowUIDs []uint32
}

// Run relays stdin to the daemon and the daemon's messages to stdout until
// stdin closes and every request sent has its answer (nil), ctx ends (nil),
// or the shim cannot go on (an *Error). Call it once per Options; it blocks.
func Run(ctx context.Context, o Options) error {
	if o.MaxMessage <= 0 {
		o.MaxMessage = 16 << 20
	}
	if o.RetryFor <= 0 {
		o.RetryFor = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	u, err := url.Parse(o.URL)
	if err != nil {
		return &Error{Msg: fmt.Sprintf("invalid URL %q: %v", o.URL, err), Err: err}
	}
	var tr transport
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			path = u.Opaque
		}
		if path == "" {
			return &Error{Msg: fmt.Sprintf("invalid URL %q: want unix:///path/to.sock", o.URL)}
		}
		tr = &unixTransport{path: path, max: o.MaxMessage + envelopeRoom, allow: o.AllowUIDs}
	case "ws", "wss":
		if tr, err = newWSTransport(u, o); err != nil {
			return err
		}
	default:
		return &Error{Msg: fmt.Sprintf("unsupported URL scheme %q in %q (want unix, ws or wss)", u.Scheme, o.URL)}
	}
	return newShim(o, tr).run(ctx)
}

// envelopeRoom is what bridge/event adds around a message of MaxMessage.
const envelopeRoom = 1024

// transport opens connections to one daemon. dial is called from one
// goroutine at a time.
type transport interface {
	// dial opens one connection. Its errors are *Error, wrapped by
	// refused when retrying cannot help.
	dial(ctx context.Context) (stream, error)
	// String names the daemon for logs and errors, never with a token.
	String() string
}

// stream is one connection to the daemon carrying whole JSON-RPC messages.
// read is called from one goroutine, write and flush from one other;
// close is safe from any goroutine and unblocks both.
type stream interface {
	// read returns the next message, borrowed until the next read.
	read() ([]byte, error)
	// write sends one message; it may stay buffered until flush.
	write(msg []byte) error
	flush() error
	// close ends the connection; graceful says goodbye first (a WebSocket
	// close 1000) rather than just dropping it.
	close(graceful bool)
}

// writeTimeout bounds one write: a daemon that stops reading must not hang
// the shim; the connection is taken for dead and the shim reconnects.
const writeTimeout = 60 * time.Second

// unixTransport dials the daemon's Unix socket.
type unixTransport struct {
	path  string
	max   int
	allow []uint32
}

func (t *unixTransport) String() string { return "unix://" + t.path }

func (t *unixTransport) dial(ctx context.Context) (stream, error) {
	c, err := DialUnix(t.path)
	if err != nil {
		return nil, err
	}
	if err := CheckPeer(c, t.path, t.allow); err != nil {
		c.Close()
		return nil, err
	}
	return &unixStream{c: c, r: ndjson.NewReader(c, t.max), w: bufio.NewWriterSize(c, 64<<10), max: t.max}, nil
}

// DialUnix connects to the daemon's socket with errors a person can act on.
// A socket that belongs to another user is a refusal (retrying cannot help).
// Safe from any goroutine.
func DialUnix(path string) (net.Conn, error) {
	c, err := net.Dial("unix", path)
	if err == nil {
		return c, nil
	}
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return nil, &Error{Msg: fmt.Sprintf("no agentbridge daemon is listening on %s (start one with `agentbridge serve`)", path), Err: err}
	case errors.Is(err, os.ErrPermission):
		return nil, refused(&Error{Msg: fmt.Sprintf("permission denied on %s (the socket belongs to another user)", path), Err: err})
	}
	return nil, &Error{Msg: fmt.Sprintf("cannot connect to %s: %v", path, err), Err: err}
}

// CheckPeer refuses (a refusal: retrying cannot help) a Unix-socket
// server whose uid, read with SO_PEERCRED, is neither this process's nor
// in allow. Call it before writing anything to c. Safe from any goroutine.
func CheckPeer(c net.Conn, path string, allow []uint32) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return &Error{Msg: fmt.Sprintf("cannot check who serves %s: %v", path, err), Err: err}
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		cerr = err
	}
	if cerr != nil {
		return refused(&Error{Msg: fmt.Sprintf("cannot check who serves %s (SO_PEERCRED: %v); nothing was sent", path, cerr), Err: cerr})
	}
	self := uint32(os.Getuid())
	if cred.Uid == self {
		return nil
	}
	for _, u := range allow {
		if u == cred.Uid {
			return nil
		}
	}
	return refused(&Error{Msg: fmt.Sprintf("%s is served by uid %d (pid %d), not by this user (uid %d); nothing was sent. Another user may be squatting the socket path; if that daemon is trusted, pass --allow-uid %d", path, cred.Uid, cred.Pid, self, cred.Uid), Err: ErrForeignServer})
}

var (
	_ transport = (*unixTransport)(nil)
	_ transport = (*wsTransport)(nil)
	_ stream    = (*unixStream)(nil)
	_ stream    = (*wsStream)(nil)
)

// unixStream is NDJSON over a Unix socket: one message per line.
type unixStream struct {
	c   net.Conn
	r   *ndjson.Reader
	w   *bufio.Writer
	max int
}

func (s *unixStream) read() ([]byte, error) {
	msg, err := s.r.Read()
	switch {
	case err == nil:
		return msg, nil
	case errors.Is(err, io.EOF):
		return nil, ErrDaemonClosed
	case errors.Is(err, ndjson.ErrTooLarge):
		return nil, fmt.Errorf("the daemon sent a message larger than %d bytes (raise --max-message)", s.max)
	}
	return nil, err
}

func (s *unixStream) write(msg []byte) error {
	_ = s.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := s.w.Write(msg); err != nil {
		return err
	}
	return s.w.WriteByte('\n')
}

func (s *unixStream) flush() error {
	_ = s.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	return s.w.Flush()
}

func (s *unixStream) close(bool) { _ = s.c.Close() }
