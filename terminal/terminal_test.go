package terminal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/audit"
	"github.com/agentbridge/agentbridge/auth"
)

// fakePeer records what a terminal sends; its backlog is set by the test
// (a stalled browser is one whose backlog never falls).
type fakePeer struct {
	mu      sync.Mutex
	bin     bytes.Buffer
	texts   []string
	closed  string
	backlog atomic.Int64
	notify  chan struct{}
}

func newPeer() *fakePeer { return &fakePeer{notify: make(chan struct{}, 1)} }

func (p *fakePeer) poke() {
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

func (p *fakePeer) Send(b []byte) {
	p.mu.Lock()
	p.bin.Write(b)
	p.mu.Unlock()
	p.poke()
}

func (p *fakePeer) SendText(b []byte) {
	p.mu.Lock()
	p.texts = append(p.texts, string(b))
	p.mu.Unlock()
	p.poke()
}

func (p *fakePeer) Backlog() int { return int(p.backlog.Load()) }

func (p *fakePeer) Close(reason string) {
	p.mu.Lock()
	if p.closed == "" {
		p.closed = reason
	}
	p.mu.Unlock()
	p.poke()
}

func (p *fakePeer) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bin.String()
}

func (p *fakePeer) notices() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.texts, "\n")
}

// waitFor waits (bounded) until cond holds, re-checking whenever the peer
// is sent something.
func (p *fakePeer) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	// A condition on something the peer is not told of (the audit sink)
	// is looked at again every 10 ms as well: the peer's last event may
	// have come before it became true.
	recheck := time.NewTicker(10 * time.Millisecond)
	defer recheck.Stop()
	for !cond() {
		select {
		case <-p.notify:
		case <-recheck.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; output so far (%d bytes): %q; notices: %s", what, len(p.output()), tail(p.output()), p.notices())
		}
	}
}

func tail(s string) string {
	if len(s) > 400 {
		return "…" + s[len(s)-400:]
	}
	return s
}

type auditSink struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (s *auditSink) record(r audit.Record) {
	s.mu.Lock()
	s.recs = append(s.recs, r)
	s.mu.Unlock()
}

func (s *auditSink) find(method, outcome string) []audit.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []audit.Record
	for _, r := range s.recs {
		if r.Method == method && (outcome == "" || r.Outcome == outcome) {
			out = append(out, r)
		}
	}
	return out
}

func newManager(t *testing.T, cfg Config) (*Manager, *auditSink) {
	t.Helper()
	sink := &auditSink{}
	if cfg.Command == nil {
		cfg.Command = []string{"/bin/sh"}
	}
	cfg.Audit = sink.record
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	cfg.Env = append(os.Environ(), "PS1=$ ", "ENV=")
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m, sink
}

const clientToken = "client-token-0123456789"

func client(tok string) Info {
	return Info{Role: auth.RoleClient, Token: tok, Peer: "test", Transport: "ws"}
}

func TestEchoResizeAndAudit(t *testing.T) {
	m, sink := newManager(t, Config{})
	p := newPeer()
	a, err := m.Attach(client(clientToken), p)
	if err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "the hello notice", func() bool { return strings.Contains(p.notices(), `"mode":"write"`) })
	if err := a.Input([]byte("echo h''i-there\n")); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "the echo's output", func() bool { return strings.Contains(p.output(), "hi-there\r\n") })
	if err := a.Resize(101, 33); err != nil {
		t.Fatal(err)
	}
	if err := a.Input([]byte("stty size\n")); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "stty size to print 33 101", func() bool { return strings.Contains(p.output(), "33 101\r\n") })
	if !strings.Contains(a.Term().Screen(), "33 101") {
		t.Errorf("the server-side screen misses the output:\n%s", a.Term().Screen())
	}
	if err := a.Resize(0, 10); !errors.Is(err, ErrBadSize) {
		t.Errorf("Resize(0, 10) = %v, want ErrBadSize", err)
	}
	a.Detach()
	a.Detach() // idempotent
	if got := sink.find("terminal/open", "opened"); len(got) != 1 || got[0].Role != "client" {
		t.Errorf("open records: %+v", got)
	}
	closes := sink.find("terminal/close", "closed")
	if len(closes) != 1 || !strings.Contains(closes[0].Detail, "bytes in 26,") {
		t.Errorf("close records: %+v (want one, with the 26 bytes typed)", closes)
	}
	for _, r := range sink.recs {
		if strings.Contains(r.Detail, clientToken) || strings.Contains(r.Peer, clientToken) {
			t.Errorf("the token leaked into the audit log: %+v", r)
		}
	}
}

func TestRoles(t *testing.T) {
	m, sink := newManager(t, Config{})
	if _, err := m.Attach(Info{Role: auth.RoleViewer, Token: "v"}, newPeer()); !errors.Is(err, ErrForbidden) {
		t.Fatalf("viewer: %v, want ErrForbidden", err)
	}
	if err := m.Check(Info{Role: auth.RoleOperator}); !errors.Is(err, ErrNothingToWatch) {
		t.Fatalf("operator with no terminal: %v, want ErrNothingToWatch", err)
	}
	w := newPeer()
	wa, err := m.Attach(client(clientToken), w)
	if err != nil {
		t.Fatal(err)
	}
	o := newPeer()
	oa, err := m.Attach(Info{Role: auth.RoleOperator, Token: "op"}, o)
	if err != nil {
		t.Fatal(err)
	}
	o.waitFor(t, "the watch hello", func() bool { return strings.Contains(o.notices(), `"mode":"watch"`) })
	if err := oa.Input([]byte("touch forged\n")); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("watcher input: %v, want ErrReadOnly", err)
	}
	if err := oa.Resize(10, 10); err != nil {
		t.Fatal(err)
	}
	if c, r := wa.Term().Size(); c != 80 || r != 24 {
		t.Errorf("a watcher resized the PTY to %dx%d", c, r)
	}
	if err := wa.Input([]byte("echo wr''ote\n")); err != nil {
		t.Fatal(err)
	}
	o.waitFor(t, "the writer's output at the watcher", func() bool { return strings.Contains(o.output(), "wrote\r\n") })
	if _, err := os.Stat(filepath.Join(m.cfg.Dir, "forged")); err == nil {
		t.Error("a watcher's keystrokes reached the shell")
	}
	oa.Detach()
	if len(sink.find("terminal/open", "denied")) != 2 {
		t.Errorf("denials audited: %+v", sink.find("terminal/open", "denied"))
	}
	if r := sink.find("terminal/watch", "opened"); len(r) != 1 || r[0].Role != "operator" {
		t.Errorf("watch records: %+v", r)
	}
	if r := sink.find("terminal/close", ""); len(r) != 1 || !strings.Contains(r[0].Detail, "refused input 13") {
		t.Errorf("watcher close records: %+v", r)
	}
}

func TestWriterStallPausesTheShell(t *testing.T) {
	m, _ := newManager(t, Config{High: 4 << 10})
	p := newPeer()
	a, err := m.Attach(client(clientToken), p)
	if err != nil {
		t.Fatal(err)
	}
	p.backlog.Store(1 << 30) // the browser reads nothing
	done := filepath.Join(m.cfg.Dir, "DONE")
	if err := a.Input([]byte("seq 1 200000; touch DONE\n")); err != nil {
		t.Fatal(err)
	}
	// The reader pauses after its first chunk; the PTY's buffer fills and
	// seq blocks. Watch for a while: the output must stop short of the end.
	p.waitFor(t, "some output", func() bool { return len(p.output()) > 0 })
	time.Sleep(500 * time.Millisecond) // a window in which nothing may happen, not a synchronisation
	got := len(p.output())
	if got > 256<<10 {
		t.Fatalf("the reader went on past a stalled writer: %d bytes", got)
	}
	if _, err := os.Stat(done); err == nil {
		t.Fatal("the shell finished while its writer was stalled")
	}
	p.backlog.Store(0)
	a.Drained(0)
	p.waitFor(t, "the rest of the output", func() bool { return strings.Contains(p.output(), "\r\n200000\r\n") })
	deadline := time.Now().Add(10 * time.Second)
	for { // the touch follows the last line by microseconds
		if _, err := os.Stat(done); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("DONE never appeared after the writer drained")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStalledWatcherDoesNotSlowTheWriter(t *testing.T) {
	m, sink := newManager(t, Config{High: 16 << 10, SnapshotEvery: 50 * time.Millisecond})
	w := newPeer()
	wa, err := m.Attach(client(clientToken), w)
	if err != nil {
		t.Fatal(err)
	}
	o := newPeer()
	oa, err := m.Attach(Info{Role: auth.RoleOperator, Token: "op"}, o)
	if err != nil {
		t.Fatal(err)
	}
	o.backlog.Store(1 << 30) // stalled
	if err := wa.Input([]byte("seq 1 100000; echo EN''D\n")); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "the writer to get everything", func() bool { return strings.Contains(w.output(), "\r\n100000\r\nEND\r\n") })
	if s := oa.Stats(); s.Degrades != 1 || s.Out > 64<<10 {
		t.Fatalf("stalled watcher: %+v (want degraded once, little output)", s)
	}
	if !strings.Contains(o.notices(), `"type":"degraded"`) {
		t.Errorf("no degraded notice: %s", o.notices())
	}
	o.backlog.Store(0) // it reads again: a snapshot of the screen brings it up to date
	o.waitFor(t, "a snapshot with END", func() bool {
		out := o.output()
		i := strings.LastIndex(out, "\x1b[H\x1b[2J")
		return i >= 0 && strings.Contains(out[i:], "END") && strings.Contains(o.notices(), `"type":"live"`)
	})
	if err := wa.Input([]byte("echo af''ter\n")); err != nil {
		t.Fatal(err)
	}
	o.waitFor(t, "live bytes again", func() bool { return strings.HasSuffix(strings.TrimRight(o.output(), "$ "), "after\r\n") })
	oa.Detach()
	if r := sink.find("terminal/close", ""); len(r) != 1 || !strings.Contains(r[0].Detail, "degraded 1 times") {
		t.Errorf("close record: %+v", r)
	}
}

func TestReattachWithinLingerAndExpiry(t *testing.T) {
	m, sink := newManager(t, Config{Linger: 300 * time.Millisecond})
	p := newPeer()
	a, err := m.Attach(client(clientToken), p)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Input([]byte("echo mark''er-1\n")); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "the marker", func() bool { return strings.Contains(p.output(), "marker-1\r\n") })
	term := a.Term()
	a.Detach()

	p2 := newPeer()
	a2, err := m.Attach(client(clientToken), p2)
	if err != nil {
		t.Fatal(err)
	}
	if a2.Term() != term {
		t.Fatal("the same token got another terminal within the linger")
	}
	p2.waitFor(t, "the screen back", func() bool {
		return strings.HasPrefix(p2.output(), "\x1bc") && strings.Contains(p2.output(), "marker-1\r\n")
	})
	other := newPeer()
	oa, err := m.Attach(client("another-token-0123456789"), other)
	if err != nil {
		t.Fatal(err)
	}
	if oa.Term() == term {
		t.Fatal("another token got this token's terminal")
	}
	if n := len(sink.find("terminal/open", "re-attached")); n != 1 {
		t.Errorf("re-attach records: %d", n)
	}

	// A third tab takes over from the second.
	p3 := newPeer()
	a3, err := m.Attach(client(clientToken), p3)
	if err != nil {
		t.Fatal(err)
	}
	p2.waitFor(t, "the old tab to be closed", func() bool { p2.mu.Lock(); defer p2.mu.Unlock(); return p2.closed != "" })
	if err := a2.Input([]byte("x")); !errors.Is(err, ErrReadOnly) {
		t.Errorf("the old tab may still type: %v", err)
	}
	a2.Detach()

	a3.Detach()
	select {
	case <-term.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the terminal outlived its linger")
	}
	if m.Running() != 1 {
		t.Errorf("running terminals: %d, want the other token's 1", m.Running())
	}
	p4 := newPeer()
	a4, err := m.Attach(client(clientToken), p4)
	if err != nil {
		t.Fatal(err)
	}
	if a4.Term() == term {
		t.Fatal("re-attached to an expired terminal")
	}
}

func TestScrollbackIsBoundedAndCutAtALine(t *testing.T) {
	m, _ := newManager(t, Config{Scrollback: 1000})
	tm := &Term{m: m}
	for i := 0; i < 100; i++ {
		tm.appendScroll([]byte("line of twenty bytes\n"))
	}
	if len(tm.scroll) > 1000 || len(tm.scroll) < 900 {
		t.Fatalf("scrollback %d bytes", len(tm.scroll))
	}
	if !strings.HasPrefix(string(tm.scroll), "line of") {
		t.Fatalf("scrollback not cut at a line: %q", tm.scroll[:30])
	}
}

func TestShellExitClosesPeers(t *testing.T) {
	m, sink := newManager(t, Config{})
	p := newPeer()
	a, err := m.Attach(client(clientToken), p)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Input([]byte("exit 3\n")); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "the close", func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.closed != "" })
	if !strings.Contains(p.notices(), `"type":"exit"`) || !strings.Contains(p.notices(), "exit status 3") {
		t.Errorf("notices: %s", p.notices())
	}
	a.Detach()
	// The process waiter closes the peers, then records the exit.
	p.waitFor(t, "the exit record", func() bool { return len(sink.find("terminal/exit", "exited")) >= 1 })
	if n := len(sink.find("terminal/exit", "exited")); n != 1 {
		t.Errorf("%d exit records, want 1", n)
	}
	if m.Running() != 0 {
		t.Errorf("running: %d", m.Running())
	}
}

func TestNewRefusesABadCommand(t *testing.T) {
	if _, err := New(Config{Command: []string{"/no/such/shell"}}); err == nil || !strings.Contains(err.Error(), "/no/such/shell") {
		t.Fatalf("err = %v", err)
	}
	if _, err := New(Config{}); !errors.Is(err, ErrNoCommand) {
		t.Fatalf("err = %v", err)
	}
}
