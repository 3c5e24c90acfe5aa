package demoagent

import (
	"flag"
	"strconv"
	"time"
)

// Options are the demo agent's knobs. Fields are used as given (zero chunks
// means a prompt streams no text), so start from DefaultOptions or
// RegisterFlags rather than a bare literal.
type Options struct {
	// Chunks is how many agent_message_chunk updates a prompt streams.
	// Default 20.
	Chunks int
	// ChunkSize is the bytes of text per chunk. Default 64; zero or less
	// means the default.
	ChunkSize int
	// Pace is the time between chunks, kept on average: chunk i is due
	// (i-1)·Pace after the first, and one that is late goes at once.
	// Default 0: as fast as the output takes them.
	Pace time.Duration
	// Permission makes each tool call ask session/request_permission first.
	// Default true.
	Permission bool
	// ToolCalls is how many tool calls a prompt makes after its chunks.
	// Default 1.
	ToolCalls int
	// Stamp puts the send time in each chunk's _meta.sentAt (unix
	// nanoseconds). Default false.
	Stamp bool
	// SessionsDir, when set, keeps one file per session (its cwd) in this
	// directory, so that an agent started again can session/load a
	// session an earlier process created, as agents that keep sessions on
	// disk do (with no history: the bridge holds that). Default "": the
	// sessions live and die with the process.
	SessionsDir string
	// Protocol is the ACP protocol version spoken: 1 (default) or 2 (prompt
	// answered at once with a messageId, the turn reported by state_update;
	// no session/load). Zero means 1.
	Protocol int

	// exit ends the process for a "crash" prompt; nil means os.Exit. Tests
	// replace it.
	exit func(code int)
}

// DefaultOptions returns the documented defaults.
func DefaultOptions() Options {
	return Options{Chunks: 20, ChunkSize: 64, Permission: true, ToolCalls: 1, Protocol: 1}
}

// RegisterFlags binds --chunks, --chunk-size, --pace, --permission,
// --tool-calls and --stamp to o, with DefaultOptions as their defaults (so o
// holds the defaults until fs is parsed). Call before fs.Parse, from the
// goroutine that owns o.
func (o *Options) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultOptions()
	fs.IntVar(&o.Chunks, "chunks", d.Chunks, "agent_message_chunk updates per prompt")
	fs.IntVar(&o.ChunkSize, "chunk-size", d.ChunkSize, "bytes of text per chunk")
	fs.DurationVar(&o.Pace, "pace", d.Pace, "delay between chunks (0: as fast as possible)")
	fs.BoolVar(&o.Permission, "permission", d.Permission, "ask session/request_permission before each tool call")
	fs.IntVar(&o.ToolCalls, "tool-calls", d.ToolCalls, "tool calls per prompt")
	fs.BoolVar(&o.Stamp, "stamp", d.Stamp, "put the send time (unix ns) in each chunk's _meta.sentAt")
	fs.StringVar(&o.SessionsDir, "sessions-dir", d.SessionsDir, "keep each session's cwd in a file here, so a new process can session/load it")
	fs.IntVar(&o.Protocol, "protocol", d.Protocol, "ACP protocol version: 1, or 2 (prompt acknowledged at once, turn reported by state_update)")
}

// normalized returns o with unusable values replaced.
func (o Options) normalized() Options {
	if o.ChunkSize <= 0 {
		o.ChunkSize = DefaultOptions().ChunkSize
	}
	o.Chunks = max(o.Chunks, 0)
	o.ToolCalls = max(o.ToolCalls, 0)
	o.Pace = max(o.Pace, 0)
	if o.Protocol != 2 {
		o.Protocol = 1
	}
	return o
}

// ChunkText is the text of chunk i (1-based) of n: "chunk i of n: " followed
// by a repeating a-z pattern, exactly size bytes (the prefix is cut when size
// is smaller). Tests of other packages use it to check what they received.
func ChunkText(i, n, size int) string {
	b := make([]byte, 0, max(size, 32))
	b = append(b, "chunk "...)
	b = strconv.AppendInt(b, int64(i), 10)
	b = append(b, " of "...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, ": "...)
	if len(b) >= size {
		return string(b[:max(size, 0)])
	}
	for j := 0; len(b) < size; j++ {
		b = append(b, byte('a'+j%26))
	}
	return string(b)
}
