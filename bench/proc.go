package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is a child process bench started: the daemon, a baseline server,
// websocketd or a direct agent. Its stderr is drained continuously (a full
// pipe would block the child) and its last lines kept for error messages.
type proc struct {
	name  string
	cmd   *exec.Cmd
	tail  *tail
	done  chan struct{} // closed when the process has exited
	err   error         // Wait's result, set before done closes
	group bool          // it leads its own process group; stop ends the group
}

// tail keeps the last lines written to it. Safe from any goroutine.
type tail struct {
	mu    sync.Mutex
	lines []string
}

func (t *tail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 8 {
		t.lines = t.lines[1:]
	}
	t.lines = append(t.lines, line)
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, " | ")
}

// startProc starts argv (under taskset when pin is set) and waits until
// ready sees a line on its stdout or stderr that says so, the process dies,
// or ctx ends. A nil ready returns as soon as the process started.
func startProc(ctx context.Context, name string, argv []string, pin bool, cpu int, ready func(string) bool) (*proc, error) {
	if pin {
		argv = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, argv...)
	}
	return startProcWith(ctx, name, argv, ready, false)
}

// startProcGroup starts argv in a process group of its own, which stop
// ends as a whole: for a server that spawns children of its own and may
// leave them behind (supergateway). It returns once the process started.
func startProcGroup(ctx context.Context, name string, argv []string) (*proc, error) {
	return startProcWith(ctx, name, argv, nil, true)
}

func startProcWith(ctx context.Context, name string, argv []string, ready func(string) bool, group bool) (*proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: group}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	// The helper exits when its stdin closes, so it cannot outlive bench.
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdin = stdinR
	if err := cmd.Start(); err != nil {
		stdinR.Close()
		stdinW.Close()
		if errors.Is(err, exec.ErrNotFound) && argv[0] == "taskset" {
			return nil, fmt.Errorf("--pin needs taskset (util-linux): %v", err)
		}
		return nil, fmt.Errorf("start %s: %v", name, err)
	}
	stdinR.Close()
	p := &proc{name: name, cmd: cmd, tail: &tail{}, done: make(chan struct{}), group: group}
	readyc := make(chan struct{})
	var once sync.Once
	scan := func(r io.Reader) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 4096), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.tail.add(line)
			if ready != nil && ready(line) {
				once.Do(func() { close(readyc) })
			}
		}
	}
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); scan(stdout) }()
	go func() { defer pipes.Done(); scan(stderr) }()
	go func() {
		pipes.Wait() // Wait must follow the last read of the pipes
		p.err = cmd.Wait()
		stdinW.Close()
		close(p.done)
	}()
	if ready == nil {
		return p, nil
	}
	select {
	case <-readyc:
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s exited before it was ready (%v): %s", name, p.err, p.tail)
	case <-ctx.Done():
		p.stop()
		return nil, fmt.Errorf("%s was not ready in time: %s", name, p.tail)
	}
}

// pid is the process id (taskset execs its command, so it is the target's).
func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop asks the process to end (SIGTERM), then kills it after a grace
// period. Safe to call twice.
func (p *proc) stop() {
	if p.group {
		// Whatever the leader left behind goes with it, even once the
		// leader itself is gone.
		defer func() { _ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) }()
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// rssKB reads VmRSS of pid from /proc.
func rssKB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitListening polls addr until it accepts a connection or ctx ends; for
// servers (websocketd) that announce themselves before they listen.
func waitListening(ctx context.Context, network, addr string) error {
	delay := time.Millisecond
	for {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("nothing listening at %s: %v", addr, err)
		case <-t.C:
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}

// peerPID is the pid of the process at the other end of a Unix socket
// (SO_PEERCRED): how bench finds a running daemon's RSS.
func peerPID(path string) (int, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}
