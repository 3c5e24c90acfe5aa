package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cutProxy forwards every connection from its listener to the daemon and
// can sever all of them at once: what either side had written and the
// other had not read is lost, as in a real drop.
type cutProxy struct {
	ln       net.Listener
	network  string
	target   string
	mu       sync.Mutex
	live     []net.Conn
	accepted atomic.Int32
}

func newCutProxy(t *testing.T, network, addr, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, network: network, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial(network, target)
			if err != nil {
				down.Close()
				continue
			}
			p.accepted.Add(1)
			p.mu.Lock()
			p.live = append(p.live, down, up)
			p.mu.Unlock()
			go p.pipe(down, up)
			go p.pipe(up, down)
		}
	}()
	return p
}

func (p *cutProxy) pipe(src, dst net.Conn) {
	_, _ = io.Copy(dst, src)
	src.Close()
	dst.Close()
}

// cut closes every connection the proxy carries and says how many pairs.
func (p *cutProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.live {
		c.Close()
	}
	n := len(p.live) / 2
	p.live = nil
	return n
}

// shimProc is `agentbridge connect` run as an editor runs it: a child
// process with pipes for stdin and stdout.
type shimProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan []byte // stdout, one message per line; closed at its end
	stderr bytes.Buffer
	mu     sync.Mutex
	exited chan error
}

func startShim(t *testing.T, env []string, args ...string) *shimProc {
	t.Helper()
	s := &shimProc{t: t, lines: make(chan []byte, 1<<16), exited: make(chan error, 1)}
	s.cmd = exec.Command(binPath, append([]string{"connect", "--log-level", "info"}, args...)...)
	s.cmd.Env = append(os.Environ(), env...)
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stderr = lockedWriter{&s.mu, &s.stderr}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(s.lines)
		r := bufio.NewReaderSize(out, 1<<20)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			s.lines <- line[:len(line)-1]
		}
	}()
	go func() { s.exited <- s.cmd.Wait() }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("connect stderr:\n%s", s.logs())
		}
	})
	return s
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (s *shimProc) logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

func (s *shimProc) send(v any) {
	s.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.stdin.Write(append(b, '\n')); err != nil {
		s.t.Fatalf("write to connect's stdin: %v", err)
	}
}

// next returns connect's next stdout line.
func (s *shimProc) next() []byte {
	s.t.Helper()
	select {
	case b, ok := <-s.lines:
		if !ok {
			s.t.Fatalf("connect's stdout ended: %v", <-s.exited)
		}
		return b
	case <-time.After(wait):
		s.t.Fatalf("nothing on connect's stdout within %s", wait)
	}
	return nil
}

// call sends a request and returns its answer; nothing else may come
// before it.
func (s *shimProc) call(id any, method string, params any) frame {
	s.t.Helper()
	s.send(req(id, method, params))
	b := s.next()
	f := parseFrame(s.t, b)
	if want, _ := json.Marshal(id); string(f.ID) != string(want) || f.Error != nil {
		s.t.Fatalf("%s: got %s", method, b)
	}
	return f
}

// shimTransport starts a daemon and a cut proxy in front of it, and says
// how connect reaches the proxy.
type shimTransport struct {
	name  string
	start func(t *testing.T) (p *cutProxy, env []string, args []string)
}

var shimTransports = []shimTransport{
	{name: "unix", start: func(t *testing.T) (*cutProxy, []string, []string) {
		d := startDaemon(t, fakeAgentCmd()...)
		p := newCutProxy(t, "unix", filepath.Join(d.dir, "proxy.sock"), d.sock)
		return p, nil, []string{"unix://" + p.ln.Addr().String()}
	}},
	{name: "ws", start: func(t *testing.T) (*cutProxy, []string, []string) {
		d := netDaemon(t, fakeAgentCmd()...)
		p := newCutProxy(t, "tcp", "127.0.0.1:0", d.listen)
		return p, []string{"AGENTBRIDGE_TOKEN=" + e2eClientToken}, []string{"ws://" + p.ln.Addr().String() + "/acp"}
	}},
}

// TestConnectResumesAcrossCuts runs `agentbridge connect` as an editor
// would and severs its connection to the daemon about ten times while the
// agent streams 5,000 events and slow requests are in flight. Its stdout
// must carry every event exactly once, in order, byte for byte as the
// agent wrote it, and every request must be answered (none failed).
func TestConnectResumesAcrossCuts(t *testing.T) {
	t.Parallel()
	const n, size, cuts = 5000, 80, 10
	for _, tr := range shimTransports {
		t.Run(tr.name, func(t *testing.T) {
			proxy, env, args := tr.start(t)
			sh := startShim(t, env, args...)
			sh.call(1, "initialize", map[string]any{"protocolVersion": 1})
			var nr struct {
				SessionID string `json:"sessionId"`
			}
			json.Unmarshal(sh.call(2, "session/new", map[string]any{"cwd": "/", "mcpServers": []any{}}).Result, &nr)
			sid := nr.SessionID
			if sid == "" {
				t.Fatal("session/new without a sessionId")
			}
			rnd := rand.New(rand.NewSource(time.Now().UnixNano()))
			// Cut points, as counts of events seen on stdout: one at a
			// random place in each tenth of the first 90% of the stream,
			// so that the stream's own answer is not on the wire at the
			// last cut (an answer lost in a drop is failed with -32003,
			// by design). The stream lasts at least 5s (1,000 pauses of
			// 5ms): room for a cut, a reconnect and a slow answer in each
			// stretch.
			var points []int
			for k := range cuts {
				points = append(points, k*n*9/10/cuts+1+rnd.Intn(n*9/10/cuts))
			}
			sh.send(req(3, "stream", map[string]any{"sessionId": sid, "n": n, "size": size, "every": 5, "pauseUs": 5000}))

			seen, cut, severed := 0, 0, 0
			answers := map[string]frame{}
			outstanding := map[string]bool{"3": true}
			slowID := func(k int) string { return fmt.Sprintf(`"slow-%d"`, k) }
			deadline := time.Now().Add(3 * time.Minute)
			for seen < n || len(outstanding) > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("after %d events and %d cuts, still waiting for %v", seen, cut, outstanding)
				}
				// The next cut, once the stream is past its point and the
				// slow request of the previous cut has its answer (an
				// answer on the wire at a cut would be lost, by design).
				if cut < len(points) && seen >= points[cut] && !outstanding[slowID(cut-1)] {
					sh.send(req(fmt.Sprintf("slow-%d", cut), "slow", map[string]any{"ms": 300, "cut": cut}))
					outstanding[slowID(cut)] = true
					// Sometimes before the daemon read it (it is sent
					// again), sometimes while the agent works on it (its
					// answer waits for the resumed connection). The agent
					// takes 300 ms, so that a loaded machine's late
					// wake-up from this sleep does not put its answer on
					// the wire before the cut (with 100 ms a CI run lost
					// one, as designed); ten of them still fit in the
					// stream's first 5 s.
					time.Sleep(time.Duration(rnd.Intn(20)) * time.Millisecond)
					severed += proxy.cut()
					cut++
				}
				b := sh.next()
				f := parseFrame(t, b)
				switch {
				case f.Method == "session/update":
					if want := streamEvent(sid, seen, size); !bytes.Equal(b, want) {
						t.Fatalf("event %d (after %d cuts) differs:\n got %s\nwant %s", seen, cut, b, want)
					}
					seen++
				case f.Method == "bridge/status":
				case f.Method != "":
					t.Fatalf("unexpected %s", b)
				default:
					id := string(f.ID)
					if !outstanding[id] || f.Error != nil {
						t.Fatalf("answer %s (outstanding %v)", b, outstanding)
					}
					delete(outstanding, id)
					answers[id] = f
				}
			}
			var sr struct{ Sent int }
			json.Unmarshal(answers["3"].Result, &sr)
			if sr.Sent != n {
				t.Fatalf("stream answer %s", answers["3"].Result)
			}
			for k := range cut {
				var r struct{ Cut int }
				if json.Unmarshal(answers[slowID(k)].Result, &r); r.Cut != k {
					t.Fatalf("slow-%d answered %s", k, answers[slowID(k)].Result)
				}
			}
			sh.stdin.Close()
			select {
			case err := <-sh.exited:
				if err != nil {
					t.Fatalf("connect exited with %v", err)
				}
			case <-time.After(wait):
				t.Fatal("connect did not exit after stdin closed")
			}
			if cut != cuts || severed < cuts || int(proxy.accepted.Load()) < cuts+1 {
				t.Fatalf("%d cuts severed %d connections; %d connections made", cut, severed, proxy.accepted.Load())
			}
			if got := strings.Count(sh.logs(), "reconnected"); got < cuts {
				t.Fatalf("connect logged %d reconnections, want %d", got, cuts)
			}
			t.Logf("%d events, %d cuts, %d connections", n, cut, proxy.accepted.Load())
		})
	}
}

// TestConnectGivesUp: with the daemon gone for longer than --retry-for,
// connect fails the request in flight with -32003 and exits 1 saying why.
func TestConnectGivesUp(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, fakeAgentCmd()...)
	proxy := newCutProxy(t, "unix", filepath.Join(d.dir, "proxy.sock"), d.sock)
	sh := startShim(t, nil, "--retry-for", "500ms", "unix://"+proxy.ln.Addr().String())
	sh.call(1, "initialize", map[string]any{"protocolVersion": 1})
	sh.send(req(2, "slow", map[string]any{"ms": 5000}))
	proxy.ln.Close() // removes the socket: nothing to reconnect to
	proxy.cut()
	f := parseFrame(t, sh.next())
	if string(f.ID) != "2" || f.Error == nil || f.Error.Code != -32003 {
		t.Fatalf("want -32003 for request 2, got %+v", f)
	}
	select {
	case err := <-sh.exited:
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 || !strings.Contains(sh.logs(), "could not reconnect for 500ms") {
			t.Fatalf("connect exited with %v; stderr:\n%s", err, sh.logs())
		}
	case <-time.After(wait):
		t.Fatal("connect did not give up")
	}
}
