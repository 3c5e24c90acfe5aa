package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/agentbridge/agentbridge/codec/lsp"
)

// newSup builds a supervisor running the helper in mode, logging to a sink.
func newSup(t *testing.T, mode string, tweak func(*Config)) (*Supervisor, *recorder, *logSink) {
	t.Helper()
	argv, env := helperCmd(mode)
	sink := newLogSink()
	cfg := Config{Command: argv, Env: env, Logger: slog.New(sink), Grace: 5 * time.Second}
	if mode == "echo-lsp" {
		cfg.Framing = FramingLSP
	}
	if os.Getenv(socketEnv) != "" {
		cfg.Stdio, cfg.Attach = StdioSocket, goAttacher{}
	}
	if tweak != nil {
		tweak(&cfg)
	}
	rec := newRecorder()
	s, err := New(cfg, rec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		s.Stop(ctx)
	})
	return s, rec, sink
}

func stop(t *testing.T, s *Supervisor) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

func mustSend(t *testing.T, s *Supervisor, msg string) {
	t.Helper()
	if err := s.Send([]byte(msg)); err != nil {
		t.Fatalf("Send(%.40s): %v", msg, err)
	}
}

func signalOf(err error) syscall.Signal {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return ws.Signal()
		}
	}
	return 0
}

func TestParseFraming(t *testing.T) {
	for in, want := range map[string]Framing{"ndjson": FramingNDJSON, "": FramingNDJSON, "lsp": FramingLSP} {
		got, err := ParseFraming(in)
		if err != nil || got != want {
			t.Errorf("ParseFraming(%q) = %v, %v; want %v", in, got, err, want)
		}
		if in != "" && got.String() != in {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
	if _, err := ParseFraming("xml"); !errors.Is(err, ErrBadFraming) {
		t.Errorf("ParseFraming(xml) err = %v", err)
	}
}

func TestNewRejectsEmptyCommand(t *testing.T) {
	if _, err := New(Config{}, newRecorder()); !errors.Is(err, ErrNoCommand) {
		t.Fatalf("err = %v, want ErrNoCommand", err)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, mode := range []string{"echo", "echo-lsp"} {
		t.Run(mode, func(t *testing.T) {
			s, rec, _ := newSup(t, mode, nil)
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			rec.expect(t, "started", 1)
			if !s.Running() || s.Pid() == 0 || s.Generation() != 1 {
				t.Fatalf("Running %v Pid %d Generation %d", s.Running(), s.Pid(), s.Generation())
			}
			in, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/0", s.Pid()))
			out, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/1", s.Pid()))
			want0 := "pipe:"
			if os.Getenv(socketEnv) != "" {
				want0 = "socket:"
			}
			if !strings.HasPrefix(in, want0) || !strings.HasPrefix(out, want0) || (want0 == "socket:" && in != out) {
				t.Fatalf("agent stdin %q stdout %q, want %s", in, out, want0)
			}
			var want []string
			for i := range 200 {
				msg := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"m","params":{"pad":"%s"}}`, i, strings.Repeat("é", i*7))
				mustSend(t, s, msg)
				want = append(want, msg)
			}
			// A pretty-printed message: NDJSON must blank its newlines to keep
			// the framing; LSP carries it as is.
			pretty := "{\n  \"jsonrpc\": \"2.0\",\r\n  \"method\": \"x\\ny\"\n}"
			mustSend(t, s, pretty)
			if mode == "echo" {
				want = append(want, "{   \"jsonrpc\": \"2.0\",    \"method\": \"x\\ny\" }")
			} else {
				want = append(want, pretty)
			}
			for _, w := range want {
				e := rec.expect(t, "message", 1)
				if string(e.msg) != w {
					t.Fatalf("got %q\nwant %q", e.msg, w)
				}
			}
			stop(t, s)
			e := rec.expect(t, "exited", 1)
			if e.err != nil || e.restartIn >= 0 {
				t.Fatalf("exit err %v restartIn %v; want clean exit on stdin EOF, no restart", e.err, e.restartIn)
			}
			if s.Running() || s.Pid() != 0 {
				t.Fatal("still running after Stop")
			}
			if err := s.Send([]byte(`{}`)); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("Send after Stop: %v", err)
			}
		})
	}
}

// The agent echoes while we keep sending: 4 MiB each way in flight at once
// must not wedge, because reading and writing are separate goroutines.
func TestPipelinedBurst(t *testing.T) {
	for _, mode := range []string{"echo", "echo-lsp"} {
		t.Run(mode, func(t *testing.T) {
			s, rec, _ := newSup(t, mode, nil)
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			rec.expect(t, "started", 1)
			const n, size = 1024, 4 << 10
			pad := strings.Repeat("p", size-40)
			sendErr := make(chan error, 1)
			go func() {
				for i := range n {
					if err := s.Send(fmt.Appendf(nil, `{"seq":%d,"pad":"%s"}`, i, pad)); err != nil {
						sendErr <- err
						return
					}
				}
				sendErr <- nil
			}()
			for i := range n {
				e := rec.expect(t, "message", 1)
				if !bytes.HasPrefix(e.msg, fmt.Appendf(nil, `{"seq":%d,`, i)) {
					t.Fatalf("message %d out of order: %.30s", i, e.msg)
				}
			}
			if err := <-sendErr; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestLargeMessages(t *testing.T) {
	s, rec, _ := newSup(t, "echo", nil)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, "started", 1)
	for range 3 {
		mustSend(t, s, `{"big":1048576}`)
	}
	for range 3 {
		e := rec.expect(t, "message", 1)
		if len(e.msg) != 1<<20+len(`{"big":""}`) {
			t.Fatalf("got %d bytes", len(e.msg))
		}
	}
}

func TestMessageOverLimitDropped(t *testing.T) {
	for _, mode := range []string{"echo", "echo-lsp"} {
		t.Run(mode, func(t *testing.T) {
			s, rec, sink := newSup(t, mode, func(c *Config) {
				c.MaxMessage = 512 << 10
				c.MinBackoff = time.Millisecond
			})
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			rec.expect(t, "started", 1)
			mustSend(t, s, `{"before":1}`)
			mustSend(t, s, `{"big":1048576,"bigid":7}`)
			mustSend(t, s, `{"big":1048576}`)
			mustSend(t, s, `{"after":1}`)
			rec.expect(t, "message", 1)
			want := len(`{"jsonrpc":"2.0","id":7,"result":{"big":""}}`) + 1<<20
			if e := rec.expect(t, "dropped", 1); string(e.msg) != "7" || e.size != want {
				t.Fatalf("first drop: id %q size %d, want id 7 size %d", e.msg, e.size, want)
			}
			if e := rec.expect(t, "dropped", 1); e.msg != nil || e.size != 1<<20+len(`{"big":""}`) {
				t.Fatalf("second drop: id %q size %d", e.msg, e.size)
			}
			// The agent is not killed: the stream stays in step.
			if e := rec.expect(t, "message", 1); string(e.msg) != `{"after":1}` {
				t.Fatalf("after the drops got %q", e.msg)
			}
			if s.Oversize() != 2 {
				t.Fatalf("Oversize() = %d, want 2", s.Oversize())
			}
			// Two drops within a second: one line, the second held back.
			if n := len(sink.find(func(r slog.Record) bool {
				return r.Level == slog.LevelWarn && strings.Contains(r.Message, "over the limit")
			})); n != 1 {
				t.Fatalf("%d WARN lines for two drops in a second, want 1", n)
			}
		})
	}
}

func TestResponseID(t *testing.T) {
	for _, c := range []struct{ in, id string }{
		{`{"jsonrpc":"2.0","id":7,"result":{"x":"`, "7"},
		{`{"id":"a\"b","error":{"code":1`, `"a\"b"`},
		{`{"result":{"id":9,"method":"x"},"id":-3}`, "-3"},
		{`{"jsonrpc":"2.0","id":7,"method":"fs/read","params":{"x":"`, ""},
		{`{"jsonrpc":"2.0","id":7`, ""},      // the number may go on
		{`{"jsonrpc":"2.0","id":7,"par`, ""}, // no result seen
		{`{"params":{"id":1,"result":2}`, ""},
	} {
		id, ok := ResponseID([]byte(c.in))
		if string(id) != c.id || ok != (c.id != "") {
			t.Errorf("ResponseID(%s) = %q %v, want %q", c.in, id, ok, c.id)
		}
	}
}

func TestBadLSPHeaderRestarts(t *testing.T) {
	s, rec, _ := newSup(t, "echo-lsp", func(c *Config) { c.MinBackoff = time.Millisecond })
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, "started", 1)
	mustSend(t, s, `{"raw":"Content-Length: x\r\n\r\n{}"}`)
	e := rec.expect(t, "exited", 1)
	if !errors.Is(e.err, lsp.ErrBadHeader) || e.restartIn < 0 {
		t.Fatalf("exit err %v restartIn %v, want a bad header kill and a restart", e.err, e.restartIn)
	}
	rec.expect(t, "started", 2)
}

func TestCrashRestartBackoff(t *testing.T) {
	var skew atomic.Int64
	s, rec, _ := newSup(t, "echo", func(c *Config) {
		c.MinBackoff = 20 * time.Millisecond
		c.MaxBackoff = 5 * time.Second
		c.ResetAfter = time.Hour
		c.CrashLoopRestarts = 100
	})
	s.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	min := 20 * time.Millisecond
	// Each consecutive crash doubles the nominal delay; jitter takes off at
	// most a fifth, so the ranges do not overlap.
	wantNominal := []time.Duration{min, 2 * min, 4 * min, min}
	pids := map[int]bool{}
	for i, nominal := range wantNominal {
		gen := uint64(i + 1)
		rec.expect(t, "started", gen)
		pids[s.Pid()] = true
		mustSend(t, s, fmt.Sprintf(`{"hello":%d}`, gen))
		if e := rec.expect(t, "message", gen); string(e.msg) != fmt.Sprintf(`{"hello":%d}`, gen) {
			t.Fatalf("gen %d echoed %q", gen, e.msg)
		}
		if i == 3 {
			// This generation has been up longer than ResetAfter.
			skew.Add(int64(2 * time.Hour))
		}
		mustSend(t, s, `{"exit":3}`)
		e := rec.expect(t, "exited", gen)
		var ee *exec.ExitError
		if !errors.As(e.err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("gen %d exit err %v, want exit status 3", gen, e.err)
		}
		if e.restartIn > nominal || e.restartIn <= nominal*4/5 {
			t.Fatalf("gen %d restartIn %v, want (%v, %v]", gen, e.restartIn, nominal*4/5, nominal)
		}
	}
	rec.expect(t, "started", 5)
	if got := s.Restarts(); got != 4 {
		t.Fatalf("Restarts = %d, want 4", got)
	}
	if len(pids) != 4 {
		t.Fatalf("pids %v: each generation should be a new process", pids)
	}
}

func TestCrashLoopReported(t *testing.T) {
	s, rec, sink := newSup(t, "exit", func(c *Config) {
		c.MinBackoff = time.Millisecond
		c.MaxBackoff = 40 * time.Millisecond
		c.CrashLoopRestarts = 4
	})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	for gen := uint64(1); gen <= 7; gen++ {
		rec.expect(t, "started", gen)
		e := rec.expect(t, "exited", gen)
		if gen >= 4 && (e.restartIn > 40*time.Millisecond || e.restartIn <= 32*time.Millisecond) {
			t.Fatalf("gen %d restartIn %v: a crash loop should retry at MaxBackoff", gen, e.restartIn)
		}
		if gen < 4 && e.restartIn > 4*time.Millisecond {
			t.Fatalf("gen %d restartIn %v: too early for the crash loop", gen, e.restartIn)
		}
	}
	loops := sink.find(func(r slog.Record) bool {
		return r.Level == slog.LevelError && strings.Contains(r.Message, "crash loop")
	})
	if len(loops) != 1 {
		t.Fatalf("%d crash loop ERROR lines, want exactly 1", len(loops))
	}
	cmd, _ := attr(loops[0], "cmd")
	status, _ := attr(loops[0], "last_status")
	if !strings.Contains(cmd.String(), os.Args[0]) || status.String() != "exit status 3" {
		t.Fatalf("crash loop line names cmd %q status %q", cmd, status)
	}
	stop(t, s)
	if s.Running() {
		t.Fatal("running after Stop")
	}
}

func TestStopEscalation(t *testing.T) {
	for _, tc := range []struct {
		mode string
		want syscall.Signal
	}{
		{"deaf", syscall.SIGTERM},
		{"deaf-noterm", syscall.SIGKILL},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			s, rec, _ := newSup(t, tc.mode, func(c *Config) { c.Grace = 100 * time.Millisecond })
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			rec.expect(t, "started", 1)
			rec.expect(t, "message", 1) // ready: signal disposition is set
			stop(t, s)
			e := rec.expect(t, "exited", 1)
			if got := signalOf(e.err); got != tc.want || e.restartIn >= 0 {
				t.Fatalf("exit %v (signal %v) restartIn %v; want %v, no restart", e.err, got, e.restartIn, tc.want)
			}
		})
	}
}

func TestStopKillsProcessGroup(t *testing.T) {
	s, rec, _ := newSup(t, "spawn", nil)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, "started", 1)
	e := rec.expect(t, "message", 1)
	var child int
	if _, err := fmt.Sscanf(string(e.msg), `{"child":%d}`, &child); err != nil || child <= 0 {
		t.Fatalf("bad child message %q", e.msg)
	}
	stop(t, s)
	if e := rec.expect(t, "exited", 1); e.err != nil {
		t.Fatalf("agent exit %v, want clean exit on stdin EOF", e.err)
	}
	// The grandchild never reads stdin and would live for an hour; the
	// group kill must have ended it. A pidfd turns readable when it exits.
	fd, err := unix.PidfdOpen(child, 0)
	if err == unix.ESRCH {
		return // already gone and reaped
	}
	if err != nil {
		t.Fatalf("pidfd_open: %v", err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(waitLimit/time.Millisecond))
		if err == unix.EINTR {
			continue
		}
		if err != nil || n != 1 {
			t.Fatalf("grandchild %d survived Stop (poll %d, %v)", child, n, err)
		}
		return
	}
}

func TestSendUnavailable(t *testing.T) {
	s, rec, _ := newSup(t, "echo", func(c *Config) { c.MinBackoff = time.Hour })
	if err := s.Send([]byte(`{}`)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("before Start: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); !errors.Is(err, ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	rec.expect(t, "started", 1)
	if err := s.SendTo(2, []byte(`{}`)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("SendTo wrong gen: %v", err)
	}
	if err := s.SendTo(1, []byte(`{"exit":1}`)); err != nil {
		t.Fatalf("SendTo live gen: %v", err)
	}
	e := rec.expect(t, "exited", 1)
	if e.restartIn < 45*time.Minute {
		t.Fatalf("restartIn %v", e.restartIn)
	}
	if err := s.Send([]byte(`{}`)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("during backoff: %v", err)
	}
	if s.Running() || s.Pid() != 0 || s.Generation() != 1 {
		t.Fatalf("during backoff: Running %v Pid %d Generation %d", s.Running(), s.Pid(), s.Generation())
	}
	stop(t, s) // cancels the pending restart
	if err := s.Start(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Start after Stop: %v", err)
	}
	select {
	case e := <-rec.ch:
		t.Fatalf("unexpected %s gen %d after Stop", e.kind, e.gen)
	default:
	}
}

func TestQueueBytesBound(t *testing.T) {
	const bound = 256 << 10
	s, rec, _ := newSup(t, "deaf", func(c *Config) {
		c.QueueBytes = bound
		c.Grace = 50 * time.Millisecond
	})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, "started", 1)
	rec.expect(t, "message", 1)
	msg := []byte(`{"pad":"` + strings.Repeat("q", 16<<10) + `"}`)
	sent := 0
	for {
		err := s.Send(msg)
		if errors.Is(err, ErrOverloaded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sent += len(msg)
		// The pipe and the write buffer hold at most a few hundred KiB
		// beyond the queue; far past that, the bound is not enforced.
		if sent > 8*bound {
			t.Fatalf("sent %d bytes to an agent that never reads without ErrOverloaded", sent)
		}
	}
	if sent < bound-len(msg) {
		t.Fatalf("overloaded after only %d bytes, bound %d", sent, bound)
	}
	stop(t, s)
	rec.expect(t, "exited", 1)
}

func TestStartBadPath(t *testing.T) {
	rec := newRecorder()
	s, err := New(Config{Command: []string{"/nonexistent/agentbridge-agent"}, Logger: slog.New(newLogSink())}, rec)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start()
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/agentbridge-agent") {
		t.Fatalf("Start err = %v, want one naming the command", err)
	}
	if s.Running() || s.Generation() != 0 {
		t.Fatal("running after a failed Start")
	}
	select {
	case e := <-rec.ch:
		t.Fatalf("handler called: %s", e.kind)
	default:
	}
}

func TestStderrLogged(t *testing.T) {
	s, rec, sink := newSup(t, "echo", nil)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, "started", 1)
	mustSend(t, s, `{"stderr":"something odd happened"}`)
	r := sink.wait(t, func(r slog.Record) bool {
		line, _ := attr(r, "line")
		return r.Message == "agent stderr" && line.String() == "something odd happened"
	})
	pid, _ := attr(r, "pid")
	if r.Level != slog.LevelWarn || pid.Int64() != int64(s.Pid()) {
		t.Fatalf("stderr record level %v pid %v, want WARN pid %d", r.Level, pid, s.Pid())
	}
}

// BenchmarkEchoRoundTrip pushes 256-byte messages through an echo agent and
// back, pipelined: throughput of the stdin writer and stdout reader together.
func BenchmarkEchoRoundTrip(b *testing.B) {
	for _, mode := range []string{"echo", "echo-lsp"} {
		b.Run(mode, func(b *testing.B) {
			argv, env := helperCmd(mode)
			cfg := Config{Command: argv, Env: env, Logger: slog.New(newLogSink())}
			if mode == "echo-lsp" {
				cfg.Framing = FramingLSP
			}
			var got atomic.Int64
			all := make(chan struct{})
			want := int64(b.N)
			h := &countHandler{n: &got, want: want, all: all}
			s, err := New(cfg, h)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Start(); err != nil {
				b.Fatal(err)
			}
			defer s.Stop(context.Background())
			msg := []byte(`{"jsonrpc":"2.0","method":"bench","params":{"pad":"` + strings.Repeat("b", 200) + `"}}`)
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for s.Send(msg) == ErrOverloaded {
					runtime.Gosched()
				}
			}
			select {
			case <-all:
			case <-time.After(time.Minute):
				b.Fatalf("echoed %d of %d", got.Load(), want)
			}
		})
	}
}

type countHandler struct {
	n    *atomic.Int64
	want int64
	all  chan struct{}
}

func (h *countHandler) AgentStarted(uint64) {}
func (h *countHandler) AgentMessage(uint64, []byte) {
	if h.n.Add(1) == h.want {
		close(h.all)
	}
}
func (h *countHandler) AgentExited(uint64, error, time.Duration) {}

// TestQueueMessagesBound: tiny messages to an agent that never reads are
// refused past QueueMessages, long before QueueBytes (issue 10 finding 5:
// ~1.55M requests queued before the first -32004).
func TestQueueMessagesBound(t *testing.T) {
	const bound = 1000
	s, rec, _ := newSup(t, "deaf", func(c *Config) {
		c.QueueMessages = bound
		c.Grace = 50 * time.Millisecond
	})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	rec.expect(t, "started", 1)
	rec.expect(t, "message", 1)
	msg := []byte(`{"id":1}`)
	sent := 0
	for {
		err := s.Send(msg)
		if errors.Is(err, ErrOverloaded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		// The pipe (64 KiB, ~7,000 of these) and the writer's buffer hold
		// some beyond the queue; far past that the bound is not enforced.
		if sent++; sent > 20*bound+20000 {
			t.Fatalf("sent %d messages to an agent that never reads without ErrOverloaded", sent)
		}
	}
	if sent < bound {
		t.Fatalf("overloaded after only %d messages, bound %d", sent, bound)
	}
	stop(t, s)
	rec.expect(t, "exited", 1)
}
