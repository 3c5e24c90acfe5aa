package agent

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/internal/lograte"
)

// Handler receives the agent's lifecycle and output. Its methods must not
// block (see the package doc); they may call any Supervisor method.
type Handler interface {
	// AgentStarted reports that process generation gen (1, 2, ...) is up and
	// accepts Send. Called on Start's goroutine for generation 1 and on the
	// restart timer's goroutine after that.
	AgentStarted(gen uint64)
	// AgentMessage delivers one complete JSON message from the agent's
	// stdout. msg is borrowed: it aliases the reader's buffer and is valid
	// only until AgentMessage returns, so the callee copies whatever it
	// keeps (an answer is copied anyway, its id spliced in: lending it
	// saves a copy and an allocation per answer). Its capacity is its
	// length, so an append reallocates instead of writing over the next
	// message. Called on the generation's stdout reader (the event loop,
	// with --agent-stdio socket), one message at a time.
	AgentMessage(gen uint64, msg []byte)
	// AgentExited reports that generation gen has exited and every message it
	// wrote has been delivered; whatever was still queued for its stdin was
	// discarded, so requests sent to it will get no answer. err is the Wait
	// error (nil for exit status 0, an *exec.ExitError otherwise), or, when
	// the supervisor killed a process whose output it could not frame (an
	// LSP header it cannot parse), an error wrapping the codec's framing
	// error.
	// restartIn is the delay before the next generation; negative means none
	// follows (Stop). Called on the generation's wait goroutine.
	AgentExited(gen uint64, err error, restartIn time.Duration)
}

// Supervisor runs one agent process at a time and restarts it when it exits.
type Supervisor struct {
	cfg  Config
	h    Handler
	log  *slog.Logger
	desc string // the command line, for logs

	// now is the clock for uptime and the crash-loop window; tests replace it.
	now func() time.Time

	// cur is the live generation; Send reads it without taking mu.
	cur      atomic.Pointer[proc]
	gen      atomic.Uint64
	restarts atomic.Uint64
	oversize atomic.Uint64 // messages dropped for their size

	oversizeLog lograte.EverySecond

	// spawns counts spawns in progress, so Stop can wait for them to land in
	// cur before terminating. Add only under mu with stopping false.
	spawns sync.WaitGroup

	mu sync.Mutex
	// Guarded by mu.
	started  bool
	stopping bool
	last     *proc       // the newest generation, live or exiting
	timer    *time.Timer // pending restart
	backoff  time.Duration
	exits    []time.Time // exit times inside CrashLoopWindow
	looping  bool        // the crash loop has been reported
}

// New validates cfg and fills its defaults. Nothing runs until Start.
func New(cfg Config, h Handler) (*Supervisor, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, fmt.Errorf("agent: nil Handler")
	}
	return &Supervisor{
		cfg:  cfg,
		h:    h,
		log:  cfg.Logger,
		desc: strings.Join(cfg.Command, " "),
		now:  time.Now,
	}, nil
}

// Start spawns the first generation. It fails when the command cannot be
// spawned at all (not found, not executable, bad Dir), so `serve` can exit
// with one clear line; later spawn failures are retried with backoff.
// Call it once, from any goroutine.
func (s *Supervisor) Start() error {
	s.mu.Lock()
	switch {
	case s.stopping:
		s.mu.Unlock()
		return ErrStopped
	case s.started:
		s.mu.Unlock()
		return ErrStarted
	}
	s.started = true
	s.spawns.Add(1)
	s.mu.Unlock()
	defer s.spawns.Done()

	p, err := s.spawn(1)
	if err != nil {
		s.mu.Lock()
		s.started = false
		s.mu.Unlock()
		return fmt.Errorf("agent: start %q: %w", s.desc, err)
	}
	s.launch(p)
	return nil
}

// Send queues one JSON message for the agent's stdin and returns at once; it
// copies msg, so the caller may reuse it. It fails with ErrUnavailable when no
// process is running and ErrOverloaded past QueueBytes. Safe from any
// goroutine.
func (s *Supervisor) Send(msg []byte) error {
	p := s.cur.Load()
	if p == nil {
		return ErrUnavailable
	}
	return p.enqueue(msg)
}

// SendSplice is Send for msg with msg[start:end] replaced by repl, as a
// router replaces a request's id by its own: the replacement and the
// framing are one copy. Safe from any goroutine.
func (s *Supervisor) SendSplice(msg []byte, start, end int, repl []byte) error {
	if start < 0 || end < start || end > len(msg) {
		return fmt.Errorf("agent: splice [%d:%d] outside a message of %d bytes", start, end, len(msg))
	}
	p := s.cur.Load()
	if p == nil {
		return ErrUnavailable
	}
	return p.enqueueSplice(msg, start, end, repl)
}

// SendTo is Send for callers that track generations: it fails with
// ErrUnavailable unless gen is the live generation, so a request meant for a
// process that has died is never delivered to its successor. Safe from any
// goroutine.
func (s *Supervisor) SendTo(gen uint64, msg []byte) error {
	p := s.cur.Load()
	if p == nil || p.gen != gen {
		return ErrUnavailable
	}
	return p.enqueue(msg)
}

// Stop ends supervision: no restart follows. It closes the agent's stdin
// (after what was already queued), waits Grace, sends SIGTERM to the process
// group, waits Grace again, then sends SIGKILL. It returns once AgentExited
// has been delivered for the last generation. If ctx ends first the group is
// killed at once and Stop returns ctx.Err() without waiting for the report.
// Safe from any goroutine but a Handler callback (it waits for them), more
// than once.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.mu.Lock()
	s.stopping = true
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.mu.Unlock()

	s.spawns.Wait()

	s.mu.Lock()
	p := s.last
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.terminate(ctx, s.cfg.Grace)
}

// Generation returns the newest generation started, 0 before the first.
// Safe from any goroutine.
func (s *Supervisor) Generation() uint64 { return s.gen.Load() }

// Running reports whether a process is up and accepting Send. Safe from any
// goroutine.
func (s *Supervisor) Running() bool { return s.cur.Load() != nil }

// Restarts returns how many generations were started after the first. Safe
// from any goroutine.
func (s *Supervisor) Restarts() uint64 { return s.restarts.Load() }

// Oversize returns how many messages from the agent were dropped for being
// over MaxMessage. Safe from any goroutine.
func (s *Supervisor) Oversize() uint64 { return s.oversize.Load() }

// Pid returns the live process's pid (also its process group), 0 when none.
// Safe from any goroutine.
func (s *Supervisor) Pid() int {
	if p := s.cur.Load(); p != nil {
		return p.pid
	}
	return 0
}

// launch publishes a freshly spawned generation and starts its goroutines.
// AgentStarted goes first so it precedes every message of the generation.
func (s *Supervisor) launch(p *proc) {
	s.mu.Lock()
	s.last = p
	s.mu.Unlock()
	s.gen.Store(p.gen)
	s.cur.Store(p)
	s.log.Info("agent started", "cmd", s.desc, "pid", p.pid, "gen", p.gen, "stdio", s.cfg.Stdio.String())
	s.h.AgentStarted(p.gen)
	p.run()
}

// restart runs on the restart timer's goroutine.
func (s *Supervisor) restart() {
	s.mu.Lock()
	if s.stopping || s.cur.Load() != nil {
		s.mu.Unlock()
		return
	}
	s.timer = nil
	s.spawns.Add(1)
	s.mu.Unlock()
	defer s.spawns.Done()

	p, err := s.spawn(s.gen.Load() + 1)
	if err != nil {
		// Nothing started, so the handler hears nothing; the log says why and
		// the retry backs off like a crash would.
		delay, _ := s.schedule(s.now(), 0)
		s.log.Error("agent spawn failed", "cmd", s.desc, "err", err, "retry_in", delay)
		s.arm(delay)
		return
	}
	s.restarts.Add(1)
	s.launch(p)
}

// exited runs on p's wait goroutine once the process is gone and its output
// delivered.
func (s *Supervisor) exited(p *proc, err error) {
	now := s.now()
	s.cur.CompareAndSwap(p, nil)
	restartIn, loop := s.schedule(now, now.Sub(p.start))
	lvl := slog.LevelWarn
	if restartIn < 0 {
		lvl = slog.LevelInfo
	}
	s.log.Log(context.Background(), lvl, "agent exited", "cmd", s.desc, "pid", p.pid, "gen", p.gen,
		"status", exitStatus(err), "uptime", now.Sub(p.start).Round(time.Millisecond), "restart_in", restartIn)
	if loop {
		s.log.Error("agent crash loop: restarting every max backoff until it stays up",
			"cmd", s.desc, "exits", s.cfg.CrashLoopRestarts, "within", s.cfg.CrashLoopWindow,
			"last_status", exitStatus(err), "max_backoff", s.cfg.MaxBackoff)
	}
	s.h.AgentExited(p.gen, err, restartIn)
	if restartIn >= 0 {
		s.arm(restartIn)
	}
}

// schedule records an exit after uptime and returns the restart delay (-1
// when stopping) and whether this exit made a crash loop that has not been
// reported yet.
func (s *Supervisor) schedule(now time.Time, uptime time.Duration) (delay time.Duration, loop bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return -1, false
	}
	if uptime >= s.cfg.ResetAfter {
		s.backoff = 0
		s.exits = s.exits[:0]
		s.looping = false
	}
	cut := 0
	for cut < len(s.exits) && now.Sub(s.exits[cut]) > s.cfg.CrashLoopWindow {
		cut++
	}
	s.exits = append(s.exits[:0], s.exits[cut:]...)
	s.exits = append(s.exits, now)

	next := s.cfg.MinBackoff
	if s.backoff > 0 {
		next = min(2*s.backoff, s.cfg.MaxBackoff)
	}
	if len(s.exits) >= s.cfg.CrashLoopRestarts {
		next = s.cfg.MaxBackoff
		loop = !s.looping
		s.looping = true
	}
	s.backoff = next
	// Jitter only shortens the delay, so it never exceeds MaxBackoff and the
	// sequence still grows while doubling.
	if j := int64(next / 5); j > 0 {
		next -= time.Duration(rand.Int64N(j))
	}
	return next, loop
}

func (s *Supervisor) arm(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return
	}
	s.timer = time.AfterFunc(d, s.restart)
}
