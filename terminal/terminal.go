package terminal

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/charmbracelet/x/vt"
	"github.com/creack/pty"

	"github.com/agentbridge/agentbridge/audit"
	"github.com/agentbridge/agentbridge/auth"
)

// Config configures a Manager. Zero values are documented per field.
type Config struct {
	// Command is the program and its arguments run in each terminal;
	// required.
	Command []string
	// Dir is the terminal's working directory (the agent's). Empty means
	// the daemon's own.
	Dir string
	// Env is the terminal's environment (the agent's). Nil means the
	// daemon's own. TERM is set to xterm-256color, what the browser's
	// xterm.js understands.
	Env []string
	// Linger is how long a terminal whose writer left keeps running,
	// waiting for the same token to re-attach. Zero means 5 minutes.
	Linger time.Duration
	// Scrollback is how many bytes of recent output are kept and replayed
	// to a peer that attaches. Zero means 256 KiB.
	Scrollback int
	// Cols and Rows are the size a terminal starts with, until its writer
	// sends one. Zero means 80x24.
	Cols, Rows int
	// High is the backlog, in bytes, above which the writer's terminal
	// stops reading its PTY and a watcher is degraded. Zero means 256 KiB.
	High int
	// SnapshotEvery is the most often a degraded watcher gets a screen
	// snapshot. Zero means 1s.
	SnapshotEvery time.Duration
	// MaxInput caps the keystrokes (and pastes) queued for the PTY; a
	// writer over it is closed. Zero means 1 MiB.
	MaxInput int
	// Audit receives open, watch, close and refusal records; nil means
	// none.
	Audit func(audit.Record)
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

func (c *Config) fill() {
	if c.Linger == 0 {
		c.Linger = 5 * time.Minute
	}
	if c.Scrollback == 0 {
		c.Scrollback = 256 << 10
	}
	if c.Cols == 0 {
		c.Cols = 80
	}
	if c.Rows == 0 {
		c.Rows = 24
	}
	if c.High == 0 {
		c.High = 256 << 10
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = time.Second
	}
	if c.MaxInput == 0 {
		c.MaxInput = 1 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Peer is one browser connection, implemented by a transport. Every method
// must be safe from any goroutine and must not block.
type Peer interface {
	// Send queues b as one binary message. b is shared with other peers
	// and must not be modified.
	Send(b []byte)
	// SendText queues a small JSON notice as one text message.
	SendText(b []byte)
	// Backlog is how many bytes given to Send are not yet written to the
	// kernel.
	Backlog() int
	// Close ends the connection after what is queued, with reason.
	Close(reason string)
}

// Info describes who attaches.
type Info struct {
	Role      auth.Role
	Token     string // hashed at once; never kept, never logged
	Peer      string // remote address, for the audit log
	Transport string // ws or wss
	Watch     string // for an operator: the terminal id to watch; "" for the newest
}

// Manager owns every terminal of the daemon. Safe from any goroutine.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	byOwner map[[32]byte]*Term
	byID    map[string]*Term
	newest  *Term
	nextID  int
	closed  bool
	conns   atomic.Uint64
	running sync.WaitGroup
}

// New checks cfg and returns a Manager; terminals start on first Attach.
func New(cfg Config) (*Manager, error) {
	cfg.fill()
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return nil, ErrNoCommand
	}
	if _, err := exec.LookPath(cfg.Command[0]); err != nil {
		return nil, fmt.Errorf("--terminal %q: %w", cfg.Command[0], err)
	}
	if cfg.Linger < 0 {
		return nil, fmt.Errorf("%w: %s", ErrBadLinger, cfg.Linger)
	}
	return &Manager{cfg: cfg, log: cfg.Logger, byOwner: make(map[[32]byte]*Term), byID: make(map[string]*Term)}, nil
}

// Check decides, before a transport upgrades, whether info may attach: nil,
// ErrForbidden (a viewer, or no role) or ErrNothingToWatch (an operator and
// no terminal running). A refusal is audited.
func (m *Manager) Check(info Info) error {
	var err error
	switch info.Role {
	case auth.RoleClient:
	case auth.RoleOperator:
		if m.find(info.Watch) == nil {
			err = ErrNothingToWatch
		}
	default:
		err = ErrForbidden
	}
	if err != nil {
		m.audit(info, "", "terminal/open", "denied", err.Error())
	}
	return err
}

// find returns the terminal an operator would watch.
func (m *Manager) find(id string) *Term {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id != "" {
		return m.byID[id]
	}
	return m.newest
}

// Attach connects p: a client token becomes the writer of its terminal
// (started now, or re-attached), an operator a watcher of a running one.
// The peer gets a hello notice, then the screen (the scrollback replayed),
// then live output.
func (m *Manager) Attach(info Info, p Peer) (*Attachment, error) {
	if err := m.Check(info); err != nil {
		return nil, err
	}
	a := &Attachment{info: info, p: p, id: m.conns.Add(1), opened: time.Now()}
	if info.Role == auth.RoleOperator {
		t := m.find(info.Watch)
		if t == nil || !t.addWatcher(a) {
			m.audit(info, "", "terminal/watch", "denied", ErrNothingToWatch.Error())
			return nil, ErrNothingToWatch
		}
		return a, nil
	}
	a.writer = true
	key := sha256.Sum256([]byte(info.Token))
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	t := m.byOwner[key]
	if t == nil {
		var err error
		if t, err = m.start(key); err != nil {
			m.mu.Unlock()
			m.audit(info, "", "terminal/open", "failed", err.Error())
			return nil, err
		}
	}
	m.mu.Unlock()
	if !t.setWriter(a) {
		return nil, ErrClosed // exited meanwhile
	}
	return a, nil
}

// start runs the command on a new PTY. Precondition: m.mu held.
func (m *Manager) start(key [32]byte) (*Term, error) {
	cmd := exec.Command(m.cfg.Command[0], m.cfg.Command[1:]...)
	cmd.Dir = m.cfg.Dir
	env := m.cfg.Env
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = append(withoutVar(env, "TERM"), "TERM=xterm-256color")
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: uint16(m.cfg.Cols), Rows: uint16(m.cfg.Rows)})
	if err != nil {
		return nil, fmt.Errorf("start --terminal %q: %w", strings.Join(m.cfg.Command, " "), err)
	}
	m.nextID++
	t := &Term{
		m: m, id: "t" + strconv.Itoa(m.nextID), key: key, cmd: cmd, pty: f, started: time.Now(),
		cols:     m.cfg.Cols,
		rows:     m.cfg.Rows,
		watchers: make(map[*Attachment]struct{}),
		drained:  make(chan struct{}, 1),
		inWake:   make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	m.byOwner[key] = t
	m.byID[t.id] = t
	m.newest = t
	m.running.Add(3)
	go func() { defer m.running.Done(); t.readLoop() }()
	go func() { defer m.running.Done(); t.writeLoop() }()
	go func() { defer m.running.Done(); t.waitLoop() }()
	m.log.Info("terminal started", "terminal", t.id, "pid", cmd.Process.Pid, "command", strings.Join(m.cfg.Command, " "))
	return t, nil
}

func withoutVar(env []string, name string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// forget removes t from the maps once it ended.
func (m *Manager) forget(t *Term) {
	m.mu.Lock()
	if m.byOwner[t.key] == t {
		delete(m.byOwner, t.key)
	}
	delete(m.byID, t.id)
	if m.newest == t {
		m.newest = nil
		for _, o := range m.byID {
			if m.newest == nil || o.started.After(m.newest.started) {
				m.newest = o
			}
		}
	}
	m.mu.Unlock()
}

// Running is the number of live terminals. Safe from any goroutine.
func (m *Manager) Running() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byID)
}

// Close ends every terminal (SIGHUP to its process group, SIGKILL after a
// second) and waits for their goroutines. Later Attach calls fail.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	ts := make([]*Term, 0, len(m.byID))
	for _, t := range m.byID {
		ts = append(ts, t)
	}
	m.mu.Unlock()
	for _, t := range ts {
		t.kill("daemon shutting down")
	}
	done := make(chan struct{})
	go func() { m.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		// A process outside the group still holds a PTY open: its reader
		// goroutine ends when that process does.
		m.log.Warn("terminal: goroutines still running 5s after close")
	}
}

func (m *Manager) audit(info Info, term, method, outcome, detail string) {
	if m.cfg.Audit == nil {
		return
	}
	role := "bridge"
	if info.Role.Valid() {
		role = info.Role.String()
	}
	m.cfg.Audit(audit.Record{Time: time.Now(), Role: role, Peer: info.Peer, Transport: info.Transport,
		Session: term, Method: method, Outcome: outcome, Detail: detail})
}

// Term is one PTY and the process on it.
type Term struct {
	m       *Manager
	id      string
	key     [32]byte
	cmd     *exec.Cmd
	pty     *os.File
	started time.Time

	mu       sync.Mutex // guards the fields below
	writer   *Attachment
	watchers map[*Attachment]struct{}
	scroll   []byte // the last Config.Scrollback bytes of output
	total    int64  // bytes of output ever
	cols     int
	rows     int
	linger   *time.Timer
	ended    bool
	input    []byte // queued for the PTY

	drained chan struct{} // the writer's transport drained (cap 1)
	inWake  chan struct{} // input was queued (cap 1)
	done    chan struct{} // closed when the process is gone
}

// ID is the terminal's name in notices and the audit log.
func (t *Term) ID() string { return t.id }

// notice is a text message to a peer.
type notice struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
	Mode string `json:"mode,omitempty"` // hello: write or watch
	Cols int    `json:"cols,omitempty"`
	Rows int    `json:"rows,omitempty"`
	Why  string `json:"why,omitempty"`
}

func (n notice) bytes() []byte { b, _ := json.Marshal(n); return b }

// screenLocked is what a peer that attaches gets: a reset, then the
// scrollback. Precondition: t.mu held.
func (t *Term) screenLocked() []byte {
	b := make([]byte, 0, 2+len(t.scroll))
	b = append(b, "\x1bc"...)
	return append(b, t.scroll...)
}

// setWriter makes a the writer, taking over from a previous tab. False if
// the terminal already ended.
func (t *Term) setWriter(a *Attachment) bool {
	t.mu.Lock()
	if t.ended {
		t.mu.Unlock()
		return false
	}
	a.t = t
	old := t.writer
	t.writer = a
	reattach := old != nil || t.linger != nil
	if t.linger != nil {
		t.linger.Stop()
		t.linger = nil
	}
	a.p.SendText(notice{Type: "hello", ID: t.id, Mode: "write", Cols: t.cols, Rows: t.rows}.bytes())
	if len(t.scroll) > 0 {
		a.p.Send(t.screenLocked())
	}
	t.mu.Unlock()
	if old != nil {
		old.p.Close("another tab with the same token took this terminal over")
	}
	outcome := "opened"
	if reattach {
		outcome = "re-attached"
	}
	t.m.audit(a.info, t.id, "terminal/open", outcome, "")
	t.m.log.Info("terminal writer attached", "terminal", t.id, "peer", a.info.Peer, "outcome", outcome)
	select { // wake a reader paused for the previous writer
	case t.drained <- struct{}{}:
	default:
	}
	return true
}

func (t *Term) addWatcher(a *Attachment) bool {
	t.mu.Lock()
	if t.ended {
		t.mu.Unlock()
		return false
	}
	a.t = t
	t.watchers[a] = struct{}{}
	a.p.SendText(notice{Type: "hello", ID: t.id, Mode: "watch", Cols: t.cols, Rows: t.rows}.bytes())
	if len(t.scroll) > 0 {
		a.p.Send(t.screenLocked())
	}
	t.mu.Unlock()
	t.m.audit(a.info, t.id, "terminal/watch", "opened", "")
	t.m.log.Info("terminal watcher attached", "terminal", t.id, "peer", a.info.Peer)
	return true
}

// readLoop reads the PTY until the process is gone.
func (t *Term) readLoop() {
	buf := make([]byte, 32<<10)
	for {
		n, err := t.pty.Read(buf)
		if n > 0 {
			t.output(buf[:n])
			t.waitWriter()
		}
		if err != nil {
			return // EIO once the last process holding the tty exits
		}
	}
}

// output records b and fans it out. One copy is shared by every peer.
func (t *Term) output(b []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.total += int64(len(b))
	t.appendScroll(b)
	if t.writer == nil && len(t.watchers) == 0 {
		return
	}
	c := append([]byte(nil), b...)
	if w := t.writer; w != nil {
		w.p.Send(c)
		w.out.Add(int64(len(c)))
	}
	for a := range t.watchers {
		if a.degraded {
			continue
		}
		if a.p.Backlog() > t.m.cfg.High {
			a.degraded = true
			a.degrades.Add(1)
			a.p.SendText(notice{Type: "degraded", Why: "this watcher fell behind: screen snapshots until it catches up"}.bytes())
			t.m.log.Info("terminal watcher degraded to snapshots", "terminal", t.id, "peer", a.info.Peer, "backlog", a.p.Backlog())
			continue
		}
		a.p.Send(c)
		a.out.Add(int64(len(c)))
	}
}

// appendScroll keeps the last Scrollback bytes, cut so they start at a
// line boundary (never inside an escape sequence or a UTF-8 character).
// Precondition: t.mu held.
func (t *Term) appendScroll(b []byte) {
	limit := t.m.cfg.Scrollback
	t.scroll = append(t.scroll, b...)
	if len(t.scroll) <= limit {
		return
	}
	cut := len(t.scroll) - limit
	if i := indexByteFrom(t.scroll, '\n', cut); i >= 0 {
		cut = i + 1
	}
	// Keep the capacity bounded: copy down rather than re-slice forever.
	n := copy(t.scroll, t.scroll[cut:])
	t.scroll = t.scroll[:n]
}

func indexByteFrom(b []byte, c byte, from int) int {
	for i := from; i < len(b); i++ {
		if b[i] == c {
			return i
		}
	}
	return -1
}

// waitWriter pauses the reader while the writer's backlog is over High:
// the PTY fills and the shell blocks. It resumes when the writer's
// transport drains, the writer leaves, or the terminal ends.
func (t *Term) waitWriter() {
	for {
		t.mu.Lock()
		w := t.writer
		t.mu.Unlock()
		if w == nil || w.p.Backlog() <= t.m.cfg.High {
			return
		}
		select {
		case <-t.drained:
		case <-t.done:
			return
		}
	}
}

// writeLoop writes queued input to the PTY; it is the only goroutine that
// may block on the PTY's input side.
func (t *Term) writeLoop() {
	for {
		select {
		case <-t.inWake:
		case <-t.done:
			return
		}
		for {
			t.mu.Lock()
			b := t.input
			t.input = nil
			t.mu.Unlock()
			if len(b) == 0 {
				break
			}
			if _, err := t.pty.Write(b); err != nil {
				return
			}
		}
	}
}

// waitLoop reaps the process, then ends the terminal; it also runs the
// snapshot ticker for degraded watchers.
func (t *Term) waitLoop() {
	exit := make(chan error, 1)
	go func() { exit <- t.cmd.Wait() }()
	tick := time.NewTicker(t.m.cfg.SnapshotEvery)
	defer tick.Stop()
	for {
		select {
		case err := <-exit:
			t.end(exitReason(err))
			return
		case <-tick.C:
			t.snapshots()
		}
	}
}

func exitReason(err error) string {
	if err == nil {
		return "the terminal's shell exited"
	}
	return "the terminal's shell exited: " + err.Error()
}

// snapshots sends each degraded watcher whose backlog has room a snapshot
// of the screen; one left nearly drained, with no output since the
// snapshot was taken, is live again. The screen is rebuilt outside the
// lock, so the PTY reader never waits for the emulator.
func (t *Term) snapshots() {
	high := t.m.cfg.High
	t.mu.Lock()
	due := false
	for a := range t.watchers {
		if a.degraded && a.p.Backlog() <= high/2 {
			due = true
			break
		}
	}
	if !due {
		t.mu.Unlock()
		return
	}
	tail, cols, rows, at := t.tailLocked(), t.cols, t.rows, t.total
	t.mu.Unlock()
	snap := render(tail, cols, rows)
	t.mu.Lock()
	defer t.mu.Unlock()
	for a := range t.watchers {
		if !a.degraded || a.p.Backlog() > high/2 {
			continue
		}
		a.p.Send(snap)
		a.out.Add(int64(len(snap)))
		a.snapshots.Add(1)
		if t.total == at && a.p.Backlog() <= high/8 {
			a.degraded = false
			a.p.SendText(notice{Type: "live"}.bytes())
		}
	}
}

// snapshotTail is how much recent output rebuilds a screen: a full 80x24
// screen of styled text is a few KiB, and the emulator is slow (about
// 0.3 MB/s while scrolling), so it is fed only this much, only for a
// snapshot, never on the output path.
const snapshotTail = 24 << 10

// tailLocked is the end of the scrollback a snapshot is rebuilt from, cut
// at a line boundary. Precondition: t.mu held.
func (t *Term) tailLocked() []byte {
	b := t.scroll
	if len(b) > snapshotTail {
		cut := len(b) - snapshotTail
		if i := indexByteFrom(b, '\n', cut); i >= 0 {
			cut = i + 1
		}
		b = b[cut:]
	}
	return append([]byte(nil), b...)
}

// render replays out on a fresh VT emulator (charmbracelet/x/vt) of the
// terminal's size and returns bytes that redraw its screen on a fresh
// xterm: clear, the styled lines, the cursor.
func render(out []byte, cols, rows int) []byte {
	emu := vt.NewEmulator(cols, rows)
	emu.SetScrollbackSize(0)
	// The emulator answers terminal queries into a pipe; read and drop
	// them (the browser's xterm answers), then close it.
	done := make(chan struct{})
	go func() { defer close(done); _, _ = io.Copy(io.Discard, emu) }()
	_, _ = emu.Write(out)
	var b strings.Builder
	b.WriteString("\x1b[?25l\x1b[0m\x1b[H\x1b[2J")
	b.WriteString(strings.ReplaceAll(emu.Render(), "\n", "\x1b[0m\r\n"))
	pos := emu.CursorPosition()
	fmt.Fprintf(&b, "\x1b[0m\x1b[%d;%dH\x1b[?25h", pos.Y+1, pos.X+1)
	if pw, ok := emu.InputPipe().(*io.PipeWriter); ok {
		_ = pw.Close()
	}
	<-done
	return []byte(b.String())
}

// Screen is the terminal's screen as plain text (rebuilt from the recent
// output), trailing spaces trimmed. For tests and diagnostics; safe from
// any goroutine.
func (t *Term) Screen() string {
	t.mu.Lock()
	tail, cols, rows := t.tailLocked(), t.cols, t.rows
	t.mu.Unlock()
	emu := vt.NewEmulator(cols, rows)
	emu.SetScrollbackSize(0)
	done := make(chan struct{})
	go func() { defer close(done); _, _ = io.Copy(io.Discard, emu) }()
	_, _ = emu.Write(tail)
	s := emu.String()
	if pw, ok := emu.InputPipe().(*io.PipeWriter); ok {
		_ = pw.Close()
	}
	<-done
	return s
}

// Size is the PTY's size as the terminal last set it.
func (t *Term) Size() (cols, rows int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cols, t.rows
}

// end tells every peer the terminal ended and closes them. Runs once, from
// waitLoop.
func (t *Term) end(why string) {
	t.mu.Lock()
	t.ended = true
	if t.linger != nil {
		t.linger.Stop()
		t.linger = nil
	}
	peers := make([]*Attachment, 0, len(t.watchers)+1)
	if t.writer != nil {
		peers = append(peers, t.writer)
	}
	for a := range t.watchers {
		peers = append(peers, a)
	}
	t.mu.Unlock()
	t.m.forget(t)
	close(t.done)
	_ = t.pty.Close()
	for _, a := range peers {
		a.p.SendText(notice{Type: "exit", Why: why}.bytes())
		a.p.Close(why)
	}
	t.m.audit(Info{}, t.id, "terminal/exit", "exited", why)
	t.m.log.Info("terminal ended", "terminal", t.id, "reason", why)
}

// kill ends the process group (SIGHUP, as a closing terminal does; SIGKILL
// a second later if it is still there).
func (t *Term) kill(why string) {
	t.m.log.Info("terminal closing", "terminal", t.id, "reason", why)
	pid := t.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGHUP)
	select {
	case <-t.done:
	case <-time.After(time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// Attachment is one peer's place on a terminal, handed to its transport.
// Safe from any goroutine.
type Attachment struct {
	t      *Term
	info   Info
	p      Peer
	id     uint64
	writer bool
	opened time.Time

	in, out    atomic.Int64 // bytes moved: keystrokes to the PTY, output to the peer
	refused    atomic.Int64 // input bytes from a watcher, dropped
	degrades   atomic.Int64
	snapshots  atomic.Int64
	detachOnce sync.Once

	degraded bool // guarded by t.mu
}

// Writer reports whether this peer may type.
func (a *Attachment) Writer() bool { return a.writer }

// Term is the terminal this peer is attached to.
func (a *Attachment) Term() *Term { return a.t }

// Stats are the attachment's counters.
type Stats struct {
	In, Out, Refused, Degrades, Snapshots int64
}

// Stats returns the attachment's counters.
func (a *Attachment) Stats() Stats {
	return Stats{In: a.in.Load(), Out: a.out.Load(), Refused: a.refused.Load(), Degrades: a.degrades.Load(), Snapshots: a.snapshots.Load()}
}

// Input queues keystrokes (b is copied). A watcher's are dropped and
// counted (ErrReadOnly); a writer whose queue is over MaxInput gets
// ErrInputFull and should be closed. Never blocks.
func (a *Attachment) Input(b []byte) error {
	if !a.writer {
		a.refused.Add(int64(len(b)))
		return ErrReadOnly
	}
	t := a.t
	t.mu.Lock()
	if t.writer != a {
		t.mu.Unlock()
		return ErrReadOnly // taken over by another tab
	}
	if len(t.input)+len(b) > t.m.cfg.MaxInput {
		t.mu.Unlock()
		return ErrInputFull
	}
	t.input = append(t.input, b...)
	t.mu.Unlock()
	a.in.Add(int64(len(b)))
	select {
	case t.inWake <- struct{}{}:
	default:
	}
	return nil
}

// Resize sets the PTY's size (the writer's only; a watcher's is ignored).
func (a *Attachment) Resize(cols, rows int) error {
	if cols < 1 || rows < 1 || cols > 1000 || rows > 1000 {
		return fmt.Errorf("%w: %dx%d", ErrBadSize, cols, rows)
	}
	if !a.writer {
		return nil
	}
	t := a.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.writer != a || t.ended || (cols == t.cols && rows == t.rows) {
		return nil
	}
	if err := pty.Setsize(t.pty, &pty.Winsize{Cols: uint16(cols), Rows: uint16(rows)}); err != nil {
		return err
	}
	t.cols, t.rows = cols, rows
	return nil
}

// Drained is called by the transport after it wrote to the socket, with
// the peer's backlog: the writer's reader may resume.
func (a *Attachment) Drained(backlog int) {
	if !a.writer || backlog > a.t.m.cfg.High/2 {
		return
	}
	select {
	case a.t.drained <- struct{}{}:
	default:
	}
}

// Detach is called by the transport once its connection closed. The
// writer leaving starts the linger; the close is audited with the bytes
// moved. Idempotent.
func (a *Attachment) Detach() {
	a.detachOnce.Do(a.detach)
}

func (a *Attachment) detach() {
	t := a.t
	t.mu.Lock()
	if a.writer {
		if t.writer == a {
			t.writer = nil
			if !t.ended {
				t.linger = time.AfterFunc(t.m.cfg.Linger, func() { t.lingerExpired() })
			}
		}
	} else {
		delete(t.watchers, a)
	}
	t.mu.Unlock()
	select { // a reader paused for this writer resumes
	case t.drained <- struct{}{}:
	default:
	}
	s := a.Stats()
	detail := fmt.Sprintf("bytes in %d, out %d, %s", s.In, s.Out, time.Since(a.opened).Round(time.Millisecond))
	if !a.writer {
		detail = fmt.Sprintf("bytes out %d, refused input %d, degraded %d times, snapshots %d, %s", s.Out, s.Refused, s.Degrades, s.Snapshots, time.Since(a.opened).Round(time.Millisecond))
	}
	t.m.audit(a.info, t.id, "terminal/close", "closed", detail)
	t.m.log.Info("terminal peer detached", "terminal", t.id, "peer", a.info.Peer, "writer", a.writer, "detail", detail)
}

func (t *Term) lingerExpired() {
	t.mu.Lock()
	expired := t.writer == nil && t.linger != nil && !t.ended
	t.linger = nil
	t.mu.Unlock()
	if expired {
		go t.kill(fmt.Sprintf("no writer re-attached within --terminal-linger %s", t.m.cfg.Linger))
	}
}

// Errors of this package.
var (
	ErrNoCommand      = errors.New("terminal: no command")
	ErrBadLinger      = errors.New("terminal: negative --terminal-linger")
	ErrForbidden      = errors.New("terminal: only a client token may open the terminal and an operator token watch it")
	ErrNothingToWatch = errors.New("terminal: no terminal is running to watch")
	ErrClosed         = errors.New("terminal: ended")
	ErrReadOnly       = errors.New("terminal: read-only (watching)")
	ErrInputFull      = errors.New("terminal: over 1 MiB of keystrokes waiting for the shell")
	ErrBadSize        = errors.New("terminal: bad size")
)
