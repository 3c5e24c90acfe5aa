package agent

import (
	"fmt"
	"log/slog"
	"time"
)

// Framing is how JSON messages are delimited on the agent's stdio.
type Framing int

const (
	// FramingNDJSON is one JSON message per line (ACP, MCP).
	FramingNDJSON Framing = iota
	// FramingLSP is a Content-Length header block before each body (LSP).
	FramingLSP
)

// String returns the name ParseFraming accepts.
func (f Framing) String() string {
	switch f {
	case FramingNDJSON:
		return "ndjson"
	case FramingLSP:
		return "lsp"
	}
	return fmt.Sprintf("Framing(%d)", int(f))
}

// ParseFraming maps "ndjson" or "lsp" (the --framing flag) to a Framing.
func ParseFraming(s string) (Framing, error) {
	switch s {
	case "ndjson", "":
		return FramingNDJSON, nil
	case "lsp":
		return FramingLSP, nil
	}
	return 0, fmt.Errorf("%w %q (want ndjson or lsp)", ErrBadFraming, s)
}

// Defaults for zero Config fields.
const (
	DefaultMaxMessage        = 16 << 20
	DefaultQueueBytes        = 64 << 20
	DefaultQueueMessages     = 65536
	DefaultMinBackoff        = 100 * time.Millisecond
	DefaultMaxBackoff        = 10 * time.Second
	DefaultResetAfter        = 30 * time.Second
	DefaultCrashLoopRestarts = 5
	DefaultCrashLoopWindow   = 60 * time.Second
	DefaultGrace             = 5 * time.Second
)

// Config describes the agent process and how it is supervised.
type Config struct {
	// Command is the argv of the agent; Command[0] is looked up in PATH.
	// Required.
	Command []string
	// Env is the agent's environment. Nil means the daemon's own.
	Env []string
	// Dir is the agent's working directory. Empty means the daemon's own.
	Dir string
	// Framing is the agent's stdio framing. Zero means NDJSON.
	Framing Framing
	// Stdio is how stdin and stdout are connected. Zero means pipes, read
	// and written by this package's goroutines; StdioSocket needs Attach.
	Stdio Stdio
	// Attach serves the daemon's end of the socket in StdioSocket mode.
	Attach Attacher
	// MaxMessage bounds one message from the agent, in bytes. Zero means
	// 16 MiB. A larger message is skipped to its end (the stream stays in
	// step) and counted; a Handler that implements DropHandler hears of it,
	// with the id when the message's head shows an answer, so the client
	// waiting on that call gets an error naming the size rather than waiting
	// for ever. The agent keeps running. (An LSP header that cannot be parsed
	// is different: the frame boundaries are lost, and the process is killed
	// and restarted.)
	MaxMessage int
	// QueueBytes bounds the framed bytes waiting for the agent's stdin. Zero
	// means 64 MiB. Send returns ErrOverloaded past it.
	QueueBytes int
	// QueueMessages bounds the messages waiting for the agent's stdin, so a
	// flood of tiny requests to an agent that does not read is refused
	// early, not after millions of small allocations. Zero means 65,536.
	// Send returns ErrOverloaded past it.
	QueueMessages int
	// MinBackoff is the first restart delay. Zero means 100ms.
	MinBackoff time.Duration
	// MaxBackoff caps the restart delay, which doubles per consecutive crash
	// (less up to 20% jitter). Zero means 10s.
	MaxBackoff time.Duration
	// ResetAfter is the uptime after which a process counts as healthy and
	// the backoff starts over from MinBackoff. Zero means 30s.
	ResetAfter time.Duration
	// CrashLoopRestarts exits within CrashLoopWindow make a crash loop: it is
	// logged once at ERROR with the command and the last exit status, and the
	// supervisor keeps retrying every MaxBackoff rather than giving up.
	// Zero means 5.
	CrashLoopRestarts int
	// CrashLoopWindow is the window for CrashLoopRestarts. Zero means 60s.
	CrashLoopWindow time.Duration
	// Grace is how long Stop waits after closing stdin before SIGTERM, and
	// again after SIGTERM before SIGKILL. Zero means 5s.
	Grace time.Duration
	// Logger receives lifecycle events and the agent's stderr. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// normalize fills defaults and rejects what cannot work.
func (c *Config) normalize() error {
	if len(c.Command) == 0 || c.Command[0] == "" {
		return ErrNoCommand
	}
	if c.Framing != FramingNDJSON && c.Framing != FramingLSP {
		return fmt.Errorf("%w %v", ErrBadFraming, c.Framing)
	}
	if c.Stdio == StdioSocket && c.Attach == nil {
		return fmt.Errorf("agent: socket stdio needs an Attach")
	}
	c.Command = append([]string(nil), c.Command...)
	if c.MaxMessage <= 0 {
		c.MaxMessage = DefaultMaxMessage
	}
	if c.QueueBytes <= 0 {
		c.QueueBytes = DefaultQueueBytes
	}
	if c.QueueMessages <= 0 {
		c.QueueMessages = DefaultQueueMessages
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.ResetAfter <= 0 {
		c.ResetAfter = DefaultResetAfter
	}
	if c.CrashLoopRestarts <= 0 {
		c.CrashLoopRestarts = DefaultCrashLoopRestarts
	}
	if c.CrashLoopWindow <= 0 {
		c.CrashLoopWindow = DefaultCrashLoopWindow
	}
	if c.Grace <= 0 {
		c.Grace = DefaultGrace
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}
