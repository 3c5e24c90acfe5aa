package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// otherUID is the uid the squatter and the second user run as (nobody).
const otherUID = 65534

// squatter is the test binary re-executed as another uid with
// AB_SQUATTER=PATH: it listens on PATH (as a user who got there first
// would), accepts one connection, and prints how many bytes it received
// before the peer closed or a second passed.
func squatter(path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	_ = os.Chmod(path, 0o777)
	fmt.Println("listening")
	c, err := ln.Accept()
	if err != nil {
		fmt.Println("accept:", err)
		os.Exit(1)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _ := io.Copy(io.Discard, c)
	fmt.Println("received", n)
	os.Exit(0)
}

func init() {
	if p := os.Getenv("AB_SQUATTER"); p != "" {
		squatter(p)
	}
}

// proc is a process of the binary under test, with its output collected.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer
	exited chan struct{}
	err    error
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// startProc runs exe args with env (added to the environment, an entry
// "NAME=" with an empty value removes NAME) as uid (0: as the test).
func startProc(t *testing.T, exe string, env []string, uid int, stdin io.Reader, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(exe, args...), exited: make(chan struct{})}
	drop := map[string]bool{}
	for _, e := range env {
		if k, v, _ := strings.Cut(e, "="); v == "" {
			drop[k] = true
		}
	}
	for _, e := range os.Environ() {
		k, _, _ := strings.Cut(e, "=")
		if !drop[k] {
			p.cmd.Env = append(p.cmd.Env, e)
		}
	}
	for _, e := range env {
		if _, v, _ := strings.Cut(e, "="); v != "" {
			p.cmd.Env = append(p.cmd.Env, e)
		}
	}
	p.cmd.Stdout, p.cmd.Stderr, p.cmd.Stdin = p, p, stdin
	if uid != 0 {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(10 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.exited
			}
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(exe), p.output())
		}
	})
	return p
}

// exitCode waits for the process to exit and returns its status.
func (p *proc) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		t.Fatalf("still running after %s:\n%s", timeout, p.output())
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("wait: %v", p.err)
	return -1
}

// waitFor waits until the output contains s (or the process exits).
func (p *proc) waitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.output(), s) {
		select {
		case <-p.exited:
			if strings.Contains(p.output(), s) {
				return
			}
			t.Fatalf("exited (%v) without printing %q:\n%s", p.err, s, p.output())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %s:\n%s", s, timeout, p.output())
		}
	}
}

// waitSocket waits until path accepts a connection.
func waitSocket(t *testing.T, p *proc, path string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("exited (%v) before listening on %s:\n%s", p.err, path, p.output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s after 15s:\n%s", path, p.output())
		}
	}
}

// sharedDir is a directory every uid may write (mode 1777, like /tmp),
// for tests that put two users side by side.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "abshared")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// publicBinary copies a binary where another uid may execute it.
func publicBinary(t *testing.T, src string) string {
	t.Helper()
	dir := sharedDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatalf("this test runs processes as uid %d and needs root (the e2e suite runs as root in CI)", otherUID)
	}
}

// TestConnectRefusesSquatter: a socket another uid listens on receives
// nothing from `agentbridge connect` (issue 10 finding 3: it used to get
// bridge/hello with the resume key and the prompt); with --allow-uid for
// that uid the same shim does talk to it, so the refusal is the uid check.
func TestConnectRefusesSquatter(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe := publicBinary(t, self)
	dir := sharedDir(t)
	path := filepath.Join(dir, "agentbridge.sock")
	for _, tc := range []struct {
		name  string
		args  []string
		check func(t *testing.T, shim *proc, received int)
	}{
		{"refused", nil, func(t *testing.T, shim *proc, received int) {
			if code := shim.exitCode(t, 10*time.Second); code != 1 {
				t.Fatalf("connect exit code %d, want 1", code)
			}
			want := fmt.Sprintf("served by uid %d", otherUID)
			if out := shim.output(); !strings.Contains(out, want) || !strings.Contains(out, "nothing was sent") || !strings.Contains(out, "--allow-uid") {
				t.Fatalf("connect's error does not say who serves the socket and what to do:\n%s", out)
			}
			if received != 0 {
				t.Fatalf("the squatter received %d bytes", received)
			}
		}},
		{"allowed", []string{"--allow-uid", strconv.Itoa(otherUID)}, func(t *testing.T, shim *proc, received int) {
			if received == 0 {
				t.Fatalf("with --allow-uid the shim sent nothing; the test cannot tell the uid check from a broken shim:\n%s", shim.output())
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(path)
			sq := startProc(t, exe, []string{"AB_SQUATTER=" + path}, otherUID, nil)
			sq.waitFor(t, "listening", 10*time.Second)
			stdin := strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"session/prompt","params":{"sessionId":"s","prompt":[{"type":"text","text":"secret"}]}}` + "\n")
			args := append([]string{"connect", "--retry-for", "1s"}, tc.args...)
			shim := startProc(t, binPath, nil, 0, stdin, append(args, "unix://"+path)...)
			if sq.exitCode(t, 15*time.Second) != 0 {
				t.Fatalf("squatter failed:\n%s", sq.output())
			}
			_, n, _ := strings.Cut(strings.TrimSpace(sq.output()), "received ")
			received, err := strconv.Atoi(n)
			if err != nil {
				t.Fatalf("squatter output: %q", sq.output())
			}
			tc.check(t, shim, received)
		})
	}
}

// TestDefaultSocketDir: with no --uds the socket and its token live in a
// private directory per user, created 0700: $XDG_RUNTIME_DIR/agentbridge,
// else $TMPDIR/agentbridge-$UID (finding 3: /tmp/agentbridge-$UID.sock and
// a shared /tmp/agentbridge.token).
func TestDefaultSocketDir(t *testing.T) {
	t.Parallel()
	xdg := t.TempDir()
	tmp := sharedDir(t)
	for _, tc := range []struct {
		name string
		env  []string
		dir  string
	}{
		{"xdg", []string{"XDG_RUNTIME_DIR=" + xdg}, filepath.Join(xdg, "agentbridge")},
		{"tmp", []string{"XDG_RUNTIME_DIR=", "TMPDIR=" + tmp}, filepath.Join(tmp, "agentbridge-0")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProc(t, binPath, tc.env, 0, nil, "serve", "--listen", "")
			sock := filepath.Join(tc.dir, "agentbridge.sock")
			waitSocket(t, p, sock)
			fi, err := os.Stat(tc.dir)
			if err != nil || fi.Mode().Perm() != 0o700 {
				t.Fatalf("socket dir %s: %v %v, want mode 0700", tc.dir, fi.Mode(), err)
			}
			p.waitFor(t, "token_file="+filepath.Join(tc.dir, "agentbridge.token"), 5*time.Second)
			if fi, err := os.Stat(filepath.Join(tc.dir, "agentbridge.token")); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("token file: %v %v", fi, err)
			}
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			if code := p.exitCode(t, 15*time.Second); code != 0 {
				t.Fatalf("exit %d", code)
			}
			if _, err := os.Stat(filepath.Join(tc.dir, "agentbridge.token")); !os.IsNotExist(err) {
				t.Fatalf("token file left behind after a clean stop: %v", err)
			}
		})
	}
}

// TestSocketDirRefused: a default directory that another uid owns, or that
// others may write, is refused with one line naming it and what to do.
func TestSocketDirRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(dir string) error
		want  string
	}{
		{"other owner", func(dir string) error {
			if err := os.Mkdir(dir, 0o700); err != nil {
				return err
			}
			return os.Chown(dir, otherUID, otherUID)
		}, fmt.Sprintf("belongs to uid %d", otherUID)},
		{"world writable", func(dir string) error {
			if err := os.Mkdir(dir, 0o777); err != nil {
				return err
			}
			return os.Chmod(dir, 0o777)
		}, "has mode 0777"},
		{"symlink", func(dir string) error { return os.Symlink(os.TempDir(), dir) }, "is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireRoot(t)
			xdg := t.TempDir()
			dir := filepath.Join(xdg, "agentbridge")
			if err := tc.setup(dir); err != nil {
				t.Fatal(err)
			}
			p := startProc(t, binPath, []string{"XDG_RUNTIME_DIR=" + xdg}, 0, nil, "serve", "--listen", "")
			if code := p.exitCode(t, 15*time.Second); code == 0 {
				t.Fatalf("serve accepted %s", tc.name)
			}
			out := p.output()
			if !strings.Contains(out, tc.want) || !strings.Contains(out, dir) {
				t.Fatalf("error lacks %q and the directory:\n%s", tc.want, out)
			}
			if _, err := os.Lstat(filepath.Join(dir, "agentbridge.sock")); err == nil {
				t.Fatalf("a socket was created in the refused directory")
			}
		})
	}
}

// TestTwoUsersDefaultSocket: two users on one machine, both with
// XDG_RUNTIME_DIR unset, each run a daemon with the defaults: both start
// (finding 3: the second failed on the shared /tmp/agentbridge.token), each
// with its own directory, socket and token file.
func TestTwoUsersDefaultSocket(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	exe := publicBinary(t, binPath)
	tmp := sharedDir(t)
	env := []string{"XDG_RUNTIME_DIR=", "TMPDIR=" + tmp, "HOME=" + tmp}
	other := startProc(t, exe, env, otherUID, nil, "serve", "--listen", "")
	otherDir := filepath.Join(tmp, fmt.Sprintf("agentbridge-%d", otherUID))
	waitSocket(t, other, filepath.Join(otherDir, "agentbridge.sock"))
	other.waitFor(t, "token_file=", 5*time.Second)
	root := startProc(t, exe, env, 0, nil, "serve", "--listen", "")
	rootDir := filepath.Join(tmp, "agentbridge-0")
	waitSocket(t, root, filepath.Join(rootDir, "agentbridge.sock"))
	root.waitFor(t, "token_file=", 5*time.Second)
	for dir, uid := range map[string]uint32{otherDir: otherUID, rootDir: 0} {
		for _, name := range []string{"", "agentbridge.sock", "agentbridge.token"} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid {
				t.Fatalf("%s/%s owned by %d, want %d", dir, name, st.Uid, uid)
			}
		}
	}
	// The other user's daemon refuses root's connection by uid... root is
	// refused like anyone else not allowed.
	c, err := net.Dial("unix", filepath.Join(otherDir, "agentbridge.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	if !strings.Contains(string(b), "uid 0 is not allowed") {
		t.Fatalf("the other user's daemon answered root with %q", b)
	}
}

// TestTwoDaemonsOneDir: two daemons whose sockets share a directory each
// get their own token file (NAME.sock → NAME.token); one stopping leaves
// the other's alone; a third that cannot bind a socket in use writes no
// token file over the first's (finding 3: they overwrote and deleted each
// other's agentbridge.token).
func TestTwoDaemonsOneDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	start := func(name string) *proc {
		p := startProc(t, binPath, nil, 0, nil, "serve", "--listen", "", "--uds", filepath.Join(dir, name+".sock"))
		return p
	}
	a := start("a")
	waitSocket(t, a, filepath.Join(dir, "a.sock"))
	a.waitFor(t, "token_file=", 5*time.Second)
	b := start("b")
	waitSocket(t, b, filepath.Join(dir, "b.sock"))
	b.waitFor(t, "token_file=", 5*time.Second)
	tokA, err := os.ReadFile(filepath.Join(dir, "a.token"))
	if err != nil {
		t.Fatal(err)
	}
	tokB, err := os.ReadFile(filepath.Join(dir, "b.token"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(tokA, tokB) {
		t.Fatal("both daemons wrote the same token")
	}
	// A second daemon on a.sock fails and leaves a.token as it was.
	a2 := start("a")
	if code := a2.exitCode(t, 15*time.Second); code == 0 {
		t.Fatal("a second daemon on a socket in use started")
	}
	if !strings.Contains(a2.output(), "in use") {
		t.Fatalf("second daemon's error: %s", a2.output())
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	if code := b.exitCode(t, 15*time.Second); code != 0 {
		t.Fatalf("b exit %d", code)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "a.token")); err != nil || !bytes.Equal(got, tokA) {
		t.Fatalf("a.token after b stopped and a2 failed: %q %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "b.token")); !os.IsNotExist(err) {
		t.Fatalf("b.token left after b stopped: %v", err)
	}
}

// TestTokensFileReadableWarns: a tokens file others may read is served but
// warned about, naming the file, its mode and the fix (finding 8).
func TestTokensFileReadableWarns(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("client "+e2eClientToken+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tokens, 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--tokens", tokens)
	if !d.waitLog("has mode 0644", 5*time.Second) || !strings.Contains(d.logs(), "chmod 600 "+tokens) {
		t.Fatalf("no warning about the tokens file's mode:\n%s", d.logs())
	}
	if err := os.Chmod(tokens, 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := startDaemon(t, "--tokens", tokens)
	d2.waitLog("agentbridge serving", 5*time.Second)
	if strings.Contains(d2.logs(), "has mode") {
		t.Fatalf("warned about a 0600 tokens file:\n%s", d2.logs())
	}
}
