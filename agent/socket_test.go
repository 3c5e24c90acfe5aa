package agent

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// socketEnv makes newSup run the agent with StdioSocket through goAttacher
// (TestSocketStdio re-runs the lifecycle tests in that mode).
const socketEnv = "AGENTTEST_STDIO_SOCKET"

// goAttacher serves the daemon's end of the socket with two goroutines, the
// way the event loop serves it with callbacks: bytes read go to Feed, Write
// queues and a writer drains, CloseWrite shuts the write side after what is
// queued, Close closes it. It exercises the supervisor's socket mode without
// a gnet engine (loop/agentconn_test.go covers the loop's side).
type goAttacher struct{}

type goStream struct {
	f    *os.File
	mu   sync.Mutex
	cond *sync.Cond
	q    [][]byte
	n    int
	shut bool
	dead bool
}

func (goAttacher) AttachAgent(f *os.File, in Input) (Stream, error) {
	st := &goStream{f: f}
	st.cond = sync.NewCond(&st.mu)
	go func() {
		var buf []byte
		tmp := make([]byte, 64<<10)
		for {
			n, err := f.Read(tmp)
			buf = append(buf, tmp[:n]...)
			used := in.Feed(buf)
			buf = buf[:copy(buf, buf[used:])]
			if err != nil {
				in.Ended(err)
				return
			}
		}
	}()
	go func() {
		for {
			st.mu.Lock()
			for len(st.q) == 0 && !st.shut && !st.dead {
				st.cond.Wait()
			}
			q, shut, dead := st.q, st.shut, st.dead
			st.q, st.n = nil, 0
			st.mu.Unlock()
			if dead {
				return
			}
			for _, b := range q {
				if _, err := f.Write(b); err != nil {
					return
				}
			}
			if shut && len(q) == 0 {
				if rc, err := f.SyscallConn(); err == nil {
					_ = rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_WR) })
				}
				return
			}
		}
	}()
	return st, nil
}

func (st *goStream) Write(b []byte, limit int) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.shut || st.dead {
		return ErrUnavailable
	}
	if st.n+len(b) > limit {
		return ErrOverloaded
	}
	st.q = append(st.q, b)
	st.n += len(b)
	st.cond.Signal()
	return nil
}

func (st *goStream) CloseWrite() {
	st.mu.Lock()
	st.shut = true
	st.cond.Signal()
	st.mu.Unlock()
}

func (st *goStream) Close() {
	st.mu.Lock()
	already := st.dead
	st.dead = true
	st.cond.Signal()
	st.mu.Unlock()
	if !already {
		st.f.Close()
	}
}

// TestSocketStdio runs the lifecycle tests again with the agent's stdin and
// stdout on a socketpair: start, round trips, bursts, large and oversize
// messages, a bad LSP header, crashes and backoff, stop escalation, process
// groups, stderr.
func TestSocketStdio(t *testing.T) {
	if os.Getenv(socketEnv) != "" {
		t.Skip("already in socket mode")
	}
	tests := []string{"RoundTrip", "PipelinedBurst", "LargeMessages", "MessageOverLimitDropped", "BadLSPHeaderRestarts",
		"CrashRestartBackoff", "StopEscalation", "StopKillsProcessGroup", "SendUnavailable", "StderrLogged"}
	cmd := exec.Command(os.Args[0], "-test.run=^Test("+strings.Join(tests, "|")+")$", "-test.v")
	cmd.Env = append(os.Environ(), socketEnv+"=1")
	out, err := cmd.CombinedOutput()
	for _, name := range tests {
		if !strings.Contains(string(out), "--- PASS: Test"+name) {
			t.Errorf("Test%s did not pass in socket mode", name)
		}
	}
	if err != nil || t.Failed() {
		t.Fatalf("socket mode: %v\n%s", err, out)
	}
}
