package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the agent: with helperEnv set, TestMain runs one
// of the helper modes below instead of the tests.
const helperEnv = "AGENTTEST_MODE"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}

// helperCmd is the argv and env that run the test binary as the given agent.
func helperCmd(mode string) ([]string, []string) {
	// Without atexit_sleep_ms=0 a -race build lingers a second at exit.
	return []string{os.Args[0], "-test.run=^$"}, append(os.Environ(), helperEnv+"="+mode, "GORACE=atexit_sleep_ms=0")
}

// control is what the echo helpers obey when a message carries it.
type control struct {
	Exit   *int   `json:"exit"`
	Stderr string `json:"stderr"`
	Big    int    `json:"big"`
	BigID  int    `json:"bigid"` // with big: a response to this id
	Raw    string `json:"raw"`
}

func runHelper(mode string) int {
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	switch mode {
	case "echo", "echo-lsp":
		lsp := mode == "echo-lsp"
		in := bufio.NewReaderSize(os.Stdin, 64<<10)
		for {
			msg, err := helperRead(in, lsp)
			if err != nil {
				out.Flush()
				if err == io.EOF {
					return 0
				}
				fmt.Fprintln(os.Stderr, "helper read:", err)
				return 2
			}
			var c control
			if len(msg) < 64 { // control messages are short; skip parsing bulk traffic
				_ = json.Unmarshal(msg, &c)
			}
			switch {
			case c.Exit != nil:
				out.Flush()
				return *c.Exit
			case c.Stderr != "":
				fmt.Fprintln(os.Stderr, c.Stderr)
			case c.Raw != "":
				out.WriteString(c.Raw)
			case c.Big > 0 && c.BigID > 0:
				big := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"result":{"big":"%s"}}`, c.BigID, strings.Repeat("x", c.Big))
				helperWrite(out, big, lsp)
			case c.Big > 0:
				big := fmt.Appendf(nil, `{"big":"%s"}`, strings.Repeat("x", c.Big))
				helperWrite(out, big, lsp)
			default:
				helperWrite(out, msg, lsp)
			}
			if in.Buffered() == 0 {
				out.Flush()
			}
		}
	case "exit":
		return 3
	case "deaf", "deaf-noterm":
		// Never reads stdin, so neither EOF nor a full pipe reaches it.
		if mode == "deaf-noterm" {
			signal.Ignore(syscall.SIGTERM)
		}
		helperWrite(out, []byte(`{"ready":true}`), false)
		out.Flush()
		time.Sleep(time.Hour)
		return 0
	case "spawn":
		argv, env := helperCmd("deaf")
		c := exec.Command(argv[0], argv[1:]...)
		c.Env = env
		if err := c.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "spawn:", err)
			return 2
		}
		helperWrite(out, fmt.Appendf(nil, `{"child":%d}`, c.Process.Pid), false)
		out.Flush()
		io.Copy(io.Discard, os.Stdin)
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

func helperRead(in *bufio.Reader, lsp bool) ([]byte, error) {
	if !lsp {
		return in.ReadBytes('\n')
	}
	n := -1
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return nil, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		if v, ok := strings.CutPrefix(line, "Content-Length: "); ok {
			n, _ = strconv.Atoi(v)
		}
	}
	buf := make([]byte, n)
	_, err := io.ReadFull(in, buf)
	return buf, err
}

func helperWrite(w *bufio.Writer, msg []byte, lsp bool) {
	if lsp {
		fmt.Fprintf(w, "Content-Length: %d\r\n\r\n", len(msg))
		w.Write(msg)
		return
	}
	w.Write(msg)
	if len(msg) == 0 || msg[len(msg)-1] != '\n' {
		w.WriteByte('\n')
	}
}

// event is one Handler call.
type event struct {
	kind      string // started, message, exited, dropped
	size      int    // dropped: the message's size
	gen       uint64
	msg       []byte
	err       error
	restartIn time.Duration
}

// recorder is a Handler that never blocks: events go to a deep buffer and an
// overflow fails the test instead of stalling the supervisor.
type recorder struct {
	ch       chan event
	overflow chan struct{}
	once     sync.Once
}

func newRecorder() *recorder {
	return &recorder{ch: make(chan event, 1<<16), overflow: make(chan struct{})}
}

func (r *recorder) put(e event) {
	select {
	case r.ch <- e:
	default:
		r.once.Do(func() { close(r.overflow) })
	}
}

func (r *recorder) AgentStarted(gen uint64) { r.put(event{kind: "started", gen: gen}) }
func (r *recorder) AgentMessage(gen uint64, msg []byte) {
	r.put(event{kind: "message", gen: gen, msg: bytes.Clone(msg)}) // msg is lent
}
func (r *recorder) AgentDropped(gen uint64, id []byte, size int) {
	r.put(event{kind: "dropped", gen: gen, msg: id, size: size})
}
func (r *recorder) AgentExited(gen uint64, err error, restartIn time.Duration) {
	r.put(event{kind: "exited", gen: gen, err: err, restartIn: restartIn})
}

const waitLimit = 20 * time.Second

func (r *recorder) next(t *testing.T) event {
	t.Helper()
	select {
	case e := <-r.ch:
		return e
	case <-r.overflow:
		t.Fatal("recorder overflowed")
	case <-time.After(waitLimit):
		t.Fatal("timed out waiting for a handler call")
	}
	panic("unreachable")
}

func (r *recorder) expect(t *testing.T, kind string, gen uint64) event {
	t.Helper()
	e := r.next(t)
	if e.kind != kind || e.gen != gen {
		t.Fatalf("got %s gen %d (%q, err %v), want %s gen %d", e.kind, e.gen, e.msg, e.err, kind, gen)
	}
	return e
}

// logSink is a slog.Handler that keeps every record for the test to inspect.
type logSink struct {
	mu   sync.Mutex
	recs []slog.Record
	more chan struct{}
}

func newLogSink() *logSink { return &logSink{more: make(chan struct{}, 1)} }

func (l *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (l *logSink) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logSink) WithGroup(string) slog.Handler            { return l }
func (l *logSink) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	l.mu.Unlock()
	select {
	case l.more <- struct{}{}:
	default:
	}
	return nil
}

// find returns the records matching pred so far.
func (l *logSink) find(pred func(slog.Record) bool) []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []slog.Record
	for _, r := range l.recs {
		if pred(r) {
			out = append(out, r)
		}
	}
	return out
}

// wait blocks until a record matches pred.
func (l *logSink) wait(t *testing.T, pred func(slog.Record) bool) slog.Record {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		if rs := l.find(pred); len(rs) > 0 {
			return rs[0]
		}
		select {
		case <-l.more:
		case <-deadline:
			t.Fatal("timed out waiting for a log record")
		}
	}
}

func attr(r slog.Record, key string) (slog.Value, bool) {
	var v slog.Value
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v, found = a.Value, true
			return false
		}
		return true
	})
	return v, found
}
