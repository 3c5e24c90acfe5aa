package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// drainTimeout bounds how long an exited generation's stdout and stderr may
// stay open (held by a process that left the group) before they are closed
// under the reader.
const drainTimeout = 2 * time.Second

// writeBuffer is the stdin bufio.Writer size: large enough to coalesce a burst
// of small messages into one pipe write.
const writeBuffer = 64 << 10

// proc is one generation of the agent process.
type proc struct {
	s     *Supervisor
	gen   uint64
	cmd   *exec.Cmd
	pid   int
	start time.Time

	// Our ends of the pipes. os.Pipe files sit in the runtime poller, so
	// closing one unblocks a goroutine parked in Read or Write on it.
	// Nil in socket mode, where stream carries both stdin and stdout.
	stdin, stdout, stderr *os.File
	stream                Stream    // socket mode: the event loop's side of the socket
	readerOnce            sync.Once // socket mode: readerDone is closed by the stream's end

	qmu sync.Mutex
	// Guarded by qmu.
	q       [][]byte // framed messages waiting for the writer
	qbytes  int      // framed bytes in q plus the message being written
	qmsgs   int      // messages counted in qbytes
	closing bool     // no more enqueue: Stop closed the input or the process is gone
	abort   bool     // drop q and return: the process is gone
	busy    bool     // the writer holds a batch (or unflushed bytes): no write-through
	direct  int64    // monotonic ns of the last write-through

	wake chan struct{} // cap 1: the writer has work or should re-check closing

	sigmu  sync.Mutex
	reaped bool // guarded by sigmu: the pid may be reused, never signal it again

	causeMu sync.Mutex
	cause   error // guarded by causeMu: why the supervisor killed the process

	readerDone, stderrDone, writerDone chan struct{}
	done                               chan struct{} // AgentExited has returned
}

// spawn starts the process of generation gen without starting its goroutines.
func (s *Supervisor) spawn(gen uint64) (*proc, error) {
	if s.cfg.Stdio == StdioSocket {
		return s.spawnSocket(gen)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		closeAll(inR, inW)
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		closeAll(inR, inW, outR, outW)
		return nil, err
	}
	cmd := s.command()
	// *os.File std streams are handed to the child as they are, so Wait does
	// not wait on copying goroutines and reading stays entirely ours.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	err = cmd.Start()
	closeAll(inR, outW, errW) // the child's ends
	if err != nil {
		closeAll(inW, outR, errR)
		return nil, err
	}
	return s.newProc(gen, cmd, inW, outR, errR), nil
}

// command is the agent's command, not yet started.
func (s *Supervisor) command() *exec.Cmd {
	cmd := exec.Command(s.cfg.Command[0], s.cfg.Command[1:]...)
	cmd.Env = s.cfg.Env
	cmd.Dir = s.cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

func (s *Supervisor) newProc(gen uint64, cmd *exec.Cmd, stdin, stdout, stderr *os.File) *proc {
	return &proc{
		s:          s,
		gen:        gen,
		cmd:        cmd,
		pid:        cmd.Process.Pid,
		start:      s.now(),
		stdin:      stdin,
		stdout:     stdout,
		stderr:     stderr,
		wake:       make(chan struct{}, 1),
		readerDone: make(chan struct{}),
		stderrDone: make(chan struct{}),
		writerDone: make(chan struct{}),
		done:       make(chan struct{}),
	}
}

func closeAll(fs ...*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func (p *proc) run() {
	if p.stream == nil {
		go p.readLoop()
		go p.writeLoop()
	}
	go p.stderrLoop()
	go p.waitLoop()
}

// enqueue frames msg onto the stdin queue. Safe from any goroutine.
func (p *proc) enqueue(msg []byte) error {
	return p.enqueueFramed(appendFrame(p.s.cfg.Framing, make([]byte, 0, len(msg)+frameSlack), msg))
}

// enqueueSplice frames msg with msg[start:end] replaced by repl onto the
// stdin queue: one copy, into the stream's own buffer when it has one
// (FrameAppender). Safe from any goroutine.
func (p *proc) enqueueSplice(msg []byte, start, end int, repl []byte) error {
	if fa, ok := p.stream.(FrameAppender); ok {
		return fa.AppendFrame(p.s.cfg.Framing, msg, start, end, repl, p.s.cfg.QueueBytes)
	}
	n := len(msg) - (end - start) + len(repl)
	return p.enqueueFramed(appendFrameSplice(p.s.cfg.Framing, make([]byte, 0, n+frameSlack), msg, start, end, repl))
}

// frameSlack is room for the framing: a newline, or an LSP header.
const frameSlack = 32

// enqueueFramed queues a framed message, which it owns from now on.
func (p *proc) enqueueFramed(framed []byte) error {
	if p.stream != nil {
		return p.stream.Write(framed, p.s.cfg.QueueBytes)
	}
	cfg := &p.s.cfg
	p.qmu.Lock()
	if p.closing {
		p.qmu.Unlock()
		return ErrUnavailable
	}
	if p.qbytes+len(framed) > cfg.QueueBytes || p.qmsgs >= cfg.QueueMessages {
		p.qmu.Unlock()
		return ErrOverloaded
	}
	if now := monotime(); !p.busy && len(p.q) == 0 && now-p.direct > burstGap {
		// Write-through: with nothing queued and the writer idle, a lone
		// message goes straight into the pipe with one non-blocking write,
		// sparing a goroutine wake-up per request. Within a burst (another
		// message less than burstGap ago) messages go to the writer, which
		// coalesces them into one write. Whatever the pipe does not take is
		// queued for the writer, in order.
		p.direct = now
		n := p.writeNow(framed)
		if n == len(framed) {
			p.qmu.Unlock()
			return nil
		}
		framed = framed[n:]
	}
	p.q = append(p.q, framed)
	p.qbytes += len(framed)
	p.qmsgs++
	p.qmu.Unlock()
	p.poke()
	return nil
}

// burstGap separates lone messages (written through) from bursts (batched
// by the writer goroutine).
const burstGap = int64(50 * time.Microsecond)

var epoch = time.Now()

func monotime() int64 { return int64(time.Since(epoch)) }

// writeNow writes b to stdin without blocking and returns how much the
// pipe took. Precondition: p.qmu held, the writer idle, the queue empty.
func (p *proc) writeNow(b []byte) int {
	rc, err := p.stdin.SyscallConn()
	if err != nil {
		return 0
	}
	written := 0
	_ = rc.Control(func(fd uintptr) {
		for written < len(b) {
			n, err := unix.Write(int(fd), b[written:])
			if n > 0 {
				written += n
			}
			if err != nil || n <= 0 {
				return // EAGAIN (pipe full) or a failure the writer will report
			}
		}
	})
	return written
}

func (p *proc) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// writeLoop owns the stdin bufio.Writer. It writes batches swapped out of the
// queue and flushes whenever the queue is empty, so a burst is coalesced and a
// lone message goes out at once.
func (p *proc) writeLoop() {
	defer close(p.writerDone)
	bw := bufio.NewWriterSize(p.stdin, writeBuffer)
	var spare [][]byte
	for {
		p.qmu.Lock()
		if p.abort {
			p.qmu.Unlock()
			return
		}
		var batch [][]byte
		if len(p.q) > 0 {
			// Double buffering: enqueue appends to spare while the writer
			// owns batch.
			batch, p.q = p.q, spare[:0]
			p.busy = true
		}
		closing := p.closing
		p.qmu.Unlock()

		if len(batch) == 0 {
			if closing {
				// Stop asked for EOF once the queue is out.
				bw.Flush()
				p.stdin.Close()
				return
			}
			<-p.wake
			continue
		}
		for i, m := range batch {
			_, err := bw.Write(m)
			p.qmu.Lock()
			if !p.abort { // abort already zeroed the count
				p.qbytes -= len(m)
				p.qmsgs--
			}
			p.qmu.Unlock()
			batch[i] = nil
			if err != nil {
				p.writeFailed(err)
				return
			}
		}
		spare = batch[:0]
		if cap(spare) > 4096 {
			spare = nil // a flood's backing array is not kept for ever
		}

		p.qmu.Lock()
		empty := len(p.q) == 0
		p.qmu.Unlock()
		if empty {
			if err := bw.Flush(); err != nil {
				p.writeFailed(err)
				return
			}
			p.qmu.Lock()
			if len(p.q) == 0 {
				p.busy = false // flushed and nothing new: write-through may resume
			}
			p.qmu.Unlock()
		}
	}
}

// writeFailed stops taking messages: the agent closed stdin or died. The exit
// report follows from waitLoop; until then Send fails fast.
func (p *proc) writeFailed(err error) {
	p.qmu.Lock()
	p.closing = true
	p.q = nil
	p.qbytes, p.qmsgs = 0, 0
	p.qmu.Unlock()
	if !errors.Is(err, os.ErrClosed) && !errors.Is(err, syscall.EPIPE) {
		p.s.log.Warn("agent stdin write failed", "pid", p.pid, "gen", p.gen, "err", err)
	}
}

// closeInput makes the writer close stdin after what is queued.
func (p *proc) closeInput() {
	if p.stream != nil {
		p.stream.CloseWrite()
		return
	}
	p.qmu.Lock()
	p.closing = true
	p.qmu.Unlock()
	p.poke()
}

// abortInput drops the queue and closes stdin under a writer that may be
// blocked on a full pipe.
func (p *proc) abortInput() {
	if p.stream != nil {
		p.stream.Close()
		return
	}
	p.qmu.Lock()
	p.closing = true
	p.abort = true
	p.q = nil
	p.qbytes, p.qmsgs = 0, 0
	p.qmu.Unlock()
	p.poke()
	p.stdin.Close()
}

// readLoop drains stdout for as long as it is open and hands each message
// to the handler.
func (p *proc) readLoop() {
	defer close(p.readerDone)
	fr := newOutReader(p.s.cfg.Framing, p.stdout, p.s.cfg.MaxMessage)
	for {
		msg, err := fr.Read()
		if o, ok := err.(*oversize); ok {
			p.dropped(o)
			continue
		}
		if err != nil {
			p.readFailed(err)
			return
		}
		// Lent from the reader's buffer until the next Read (Handler).
		p.s.h.AgentMessage(p.gen, msg[:len(msg):len(msg)])
	}
}

// dropped counts and reports a message skipped for its size; the agent
// keeps running. If it answered a call, the handler fails that call.
func (p *proc) dropped(o *oversize) {
	p.s.oversize.Add(1)
	id, _ := ResponseID(o.head)
	if ok, held := p.s.oversizeLog.Allow(time.Now()); ok {
		p.s.log.Warn("agent message over the limit: dropped (raise --max-message if this is legitimate)",
			"pid", p.pid, "gen", p.gen, "bytes", o.size, "max", p.s.cfg.MaxMessage, "answer_to", string(id),
			"also_dropped_since_last_line", held, "dropped_total", p.s.oversize.Load())
	}
	if dh, ok := p.s.h.(DropHandler); ok {
		dh.AgentDropped(p.gen, id, o.size)
	}
}

func (p *proc) readFailed(err error) {
	log := p.s.log
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, os.ErrClosed):
		return
	case errors.Is(err, io.ErrUnexpectedEOF):
		log.Warn("agent stdout ended inside a message", "pid", p.pid, "gen", p.gen)
		return
	default:
		// The stream is out of step (say a bad LSP header); nothing after
		// this can be trusted to be a message boundary.
		log.Error("agent stdout unreadable: killing the agent", "cmd", p.s.desc, "pid", p.pid, "gen", p.gen, "err", err)
		p.kill(fmt.Errorf("agent: stdout: %w", err))
	}
}

// kill records why the supervisor ends the process and SIGKILLs its group.
func (p *proc) kill(cause error) {
	p.causeMu.Lock()
	if p.cause == nil {
		p.cause = cause
	}
	p.causeMu.Unlock()
	p.signal(syscall.SIGKILL)
}

// signal sends sig to the process group unless the leader has been reaped.
func (p *proc) signal(sig syscall.Signal) {
	p.sigmu.Lock()
	defer p.sigmu.Unlock()
	if !p.reaped {
		syscall.Kill(-p.pid, sig)
	}
}

// stderrLoop logs the agent's stderr line by line. Lines are cut at the
// buffer size so one endless line cannot grow memory.
func (p *proc) stderrLoop() {
	defer close(p.stderrDone)
	br := bufio.NewReaderSize(p.stderr, 16<<10)
	skipping := false
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 && !skipping {
			if text := strings.TrimRight(string(line), "\r\n"); text != "" {
				if err == bufio.ErrBufferFull {
					p.s.log.Warn("agent stderr", "pid", p.pid, "gen", p.gen, "line", text, "truncated", true)
				} else {
					p.s.log.Warn("agent stderr", "pid", p.pid, "gen", p.gen, "line", text)
				}
			}
		}
		if err == bufio.ErrBufferFull {
			skipping = true
			continue
		}
		skipping = false
		if err != nil {
			return
		}
	}
}

// waitLoop waits for the process, cleans up the generation and reports it.
func (p *proc) waitLoop() {
	// Wait for the exit without reaping: while the leader is a zombie its
	// pid cannot be reused, so killing its group is safe.
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	p.sigmu.Lock()
	// Helpers the agent left behind would outlive it and could hold its
	// pipes open; the next generation starts its own.
	syscall.Kill(-p.pid, syscall.SIGKILL)
	p.reaped = true
	p.sigmu.Unlock()
	err := p.cmd.Wait()

	if p.stream != nil {
		p.awaitStreamEnd()
		p.awaitStderr()
		p.stream.Close()
	} else {
		t := time.NewTimer(drainTimeout)
		for _, ch := range []chan struct{}{p.readerDone, p.stderrDone} {
			select {
			case <-ch:
			case <-t.C:
				// Someone outside the group still holds the pipes.
				p.stdout.Close()
				p.stderr.Close()
				<-ch
			}
		}
		t.Stop()
		p.stdout.Close()
		p.stderr.Close()
		p.abortInput()
		<-p.writerDone
	}

	p.causeMu.Lock()
	if p.cause != nil {
		err = p.cause
	}
	p.causeMu.Unlock()
	p.s.exited(p, err)
	close(p.done)
}

// terminate runs Stop's escalation for this generation.
func (p *proc) terminate(ctx context.Context, grace time.Duration) error {
	p.closeInput()
	if p.awaitDone(ctx, grace) {
		return nil
	}
	if ctx.Err() == nil {
		p.s.log.Info("agent ignored stdin close: sending SIGTERM", "pid", p.pid, "gen", p.gen, "grace", grace)
		p.signal(syscall.SIGTERM)
		p.abortInput()
		if p.awaitDone(ctx, grace) {
			return nil
		}
	}
	if ctx.Err() == nil {
		p.s.log.Warn("agent ignored SIGTERM: sending SIGKILL", "pid", p.pid, "gen", p.gen, "grace", grace)
	}
	p.signal(syscall.SIGKILL)
	p.abortInput()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// awaitDone reports whether the generation finished within d; it gives up
// early when ctx ends.
func (p *proc) awaitDone(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// exitStatus renders a Wait error for logs.
func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
