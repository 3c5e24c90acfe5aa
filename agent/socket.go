package agent

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Stdio is how the agent's stdin and stdout are connected.
type Stdio int

const (
	// StdioPipe gives the agent two pipes, read and written by goroutines of
	// this package.
	StdioPipe Stdio = iota
	// StdioSocket gives the agent one end of a Unix socketpair as both stdin
	// and stdout; the daemon's end is handed to Config.Attach (the event
	// loop), so the agent's output is read where clients are written and
	// requests are written where clients are read, with no goroutine between.
	StdioSocket
)

// String returns the name ParseStdio accepts.
func (s Stdio) String() string {
	if s == StdioSocket {
		return "socket"
	}
	return "pipe"
}

// ParseStdio maps "socket" or "pipe" (the --agent-stdio flag) to a Stdio.
func ParseStdio(s string) (Stdio, error) {
	switch s {
	case "socket", "":
		return StdioSocket, nil
	case "pipe":
		return StdioPipe, nil
	}
	return 0, fmt.Errorf("invalid agent stdio %q (want socket or pipe)", s)
}

// Attacher takes the daemon's end of an agent's stdin/stdout socket and
// serves it: bytes read go to in.Feed, the end of the stream to in.Ended.
// Implemented by the event loop (package loop). Called on the goroutine that
// spawns the agent (Start's or the restart timer's), never from a Handler
// callback.
type Attacher interface {
	AttachAgent(f *os.File, in Input) (Stream, error)
}

// Input is what an attached stream feeds. Its methods are called on the one
// goroutine that reads the stream (an event loop), in order.
type Input interface {
	// Feed frames the bytes read so far (borrowed for the call) and hands
	// every complete message to the Handler; it returns how many bytes it
	// consumed. The rest must be presented again, with more, next time.
	Feed(buf []byte) int
	// Ended reports the end of the stream (EOF, an error, or Close), once,
	// after the last Feed.
	Ended(err error)
}

// Stream is the writing side of an attached socket.
type Stream interface {
	// Write queues framed bytes for the agent and returns at once; the
	// stream owns b from now on. It fails with ErrOverloaded when more than
	// limit bytes are waiting and ErrUnavailable once closed. Safe from any
	// goroutine.
	Write(b []byte, limit int) error
	// CloseWrite shuts the socket's write side (the agent reads EOF on
	// stdin) once what was queued is written. Safe from any goroutine.
	CloseWrite()
	// Close drops what is queued and closes the socket; Ended follows.
	// Safe from any goroutine.
	Close()
}

// FrameAppender is a Stream that copies what it is given into a buffer of
// its own (the event loop's agent connection writes its queued requests
// back to back from one buffer). The supervisor then frames a request with
// its id spliced in straight into that buffer: one copy from the router's
// bytes to the bytes written, and no buffer of the request's own.
type FrameAppender interface {
	// AppendFrame appends msg with msg[start:end] replaced by repl,
	// framed by f (AppendFrameSplice), to what is queued, and fails as
	// Stream.Write does. Safe from any goroutine.
	AppendFrame(f Framing, msg []byte, start, end int, repl []byte, limit int) error
}

// AppendFrameSplice appends msg framed for the agent's stdin with
// msg[start:end] replaced by repl, in one copy (for FrameAppender
// implementations). Safe from any goroutine.
func AppendFrameSplice(f Framing, dst, msg []byte, start, end int, repl []byte) []byte {
	return appendFrameSplice(f, dst, msg, start, end, repl)
}

// spawnSocket starts the process of generation gen with a socketpair as
// its stdin and stdout and attaches the daemon's end.
func (s *Supervisor) spawnSocket(gen uint64) (*proc, error) {
	if s.cfg.Attach == nil {
		return nil, fmt.Errorf("agent: socket stdio without an Attach")
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "agent-stdio"), os.NewFile(uintptr(fds[1]), "agent-stdio")
	errR, errW, err := os.Pipe()
	if err != nil {
		closeAll(ours, theirs)
		return nil, err
	}
	cmd := s.command()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = theirs, theirs, errW
	err = cmd.Start()
	closeAll(theirs, errW)
	if err != nil {
		closeAll(ours, errR)
		return nil, err
	}
	p := s.newProc(gen, cmd, nil, nil, errR)
	close(p.writerDone) // no writer goroutine: the stream writes
	in := &sockInput{p: p, fr: newFramer(s.cfg.Framing, s.cfg.MaxMessage)}
	st, err := s.cfg.Attach.AttachAgent(ours, in)
	if err != nil {
		ours.Close()
		syscall.Kill(-p.pid, syscall.SIGKILL)
		_ = cmd.Wait()
		errR.Close()
		return nil, fmt.Errorf("attach the agent's socket to the event loop: %w", err)
	}
	p.stream = st
	return p, nil
}

// sockInput frames what the event loop read from a generation's socket.
type sockInput struct {
	p  *proc
	fr *framer
}

func (in *sockInput) Feed(buf []byte) int {
	used := 0
	for used < len(buf) {
		msg, n, err := in.fr.next(buf[used:])
		used += n
		switch {
		case err == nil && msg != nil:
			// Lent straight from the loop's input buffer (Handler).
			in.p.s.h.AgentMessage(in.p.gen, msg[:len(msg):len(msg)])
		case err == nil && n == 0:
			return used
		case err != nil:
			if o, ok := err.(*oversize); ok {
				in.p.dropped(o)
				continue
			}
			// The frame boundaries are lost: nothing after this is trusted.
			in.p.s.log.Error("agent stdout unreadable: killing the agent", "cmd", in.p.s.desc, "pid", in.p.pid, "gen", in.p.gen, "err", err)
			in.p.kill(fmt.Errorf("agent: stdout: %w", err))
			return len(buf)
		}
	}
	return used
}

func (in *sockInput) Ended(err error) {
	in.p.readerOnce.Do(func() { close(in.p.readerDone) })
}

// awaitStderr waits for the stderr logger, closing the pipe under it if a
// helper outside the group holds it.
func (p *proc) awaitStderr() {
	t := time.NewTimer(drainTimeout)
	defer t.Stop()
	select {
	case <-p.stderrDone:
	case <-t.C:
		p.stderr.Close()
		<-p.stderrDone
	}
	p.stderr.Close()
}

// awaitStreamEnd bounds the wait for the stream's end after the process
// exited: a helper outside the group may hold the socket.
func (p *proc) awaitStreamEnd() {
	t := time.NewTimer(drainTimeout)
	defer t.Stop()
	select {
	case <-p.readerDone:
	case <-t.C:
		p.stream.Close()
		<-p.readerDone
	}
}
