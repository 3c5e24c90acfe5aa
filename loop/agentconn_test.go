package loop

import (
	"bytes"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/agentbridge/agentbridge/agent"
)

// lineInput is an agent.Input that collects complete lines.
type lineInput struct {
	mu    sync.Mutex
	lines []string
	ended chan error
}

func (in *lineInput) Feed(buf []byte) int {
	used := 0
	for {
		i := bytes.IndexByte(buf[used:], '\n')
		if i < 0 {
			return used
		}
		in.mu.Lock()
		in.lines = append(in.lines, string(buf[used:used+i]))
		in.mu.Unlock()
		used += i + 1
	}
}

func (in *lineInput) Ended(err error) { in.ended <- err }

func (in *lineInput) got() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]string(nil), in.lines...)
}

// The agent's socket on the event loop: its output is framed across reads,
// writes from many goroutines arrive whole and in each writer's order, the
// queue bound holds, CloseWrite reaches the agent as EOF after what was
// queued, and the agent closing its end ends the stream.
func TestAgentSocketOnTheLoop(t *testing.T) {
	e := startEnv(t, HTTPConfig{})
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "agent")
	defer peer.Close()
	in := &lineInput{ended: make(chan error, 1)}
	st, err := e.srv.AttachAgent(os.NewFile(uintptr(fds[0]), "daemon"), in)
	if err != nil {
		t.Fatal(err)
	}
	// Output split mid-line across writes.
	for _, part := range []string{`{"a":1}` + "\n" + `{"b":`, `2}` + "\n"} {
		if _, err := peer.WriteString(part); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // two reads on the loop, not one
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(in.got()) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := in.got(); len(got) != 2 || got[0] != `{"a":1}` || got[1] != `{"b":2}` {
		t.Fatalf("lines %q", got)
	}
	// Writes from 4 goroutines, 500 each.
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				line := []byte{byte('a' + g), byte('0' + i%10), '\n'}
				for st.Write(line, 1<<20) == agent.ErrOverloaded {
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	if err := st.Write(make([]byte, 2<<20), 1<<20); err != agent.ErrOverloaded {
		t.Fatalf("a write over the bound: %v, want ErrOverloaded", err)
	}
	wg.Wait()
	st.CloseWrite()
	all, err := io.ReadAll(peer) // ends at the SHUT_WR
	if err != nil {
		t.Fatal(err)
	}
	next := [4]int{}
	for _, l := range bytes.Split(bytes.TrimSuffix(all, []byte("\n")), []byte("\n")) {
		g := int(l[0] - 'a')
		if len(l) != 2 || g < 0 || g > 3 || int(l[1]-'0') != next[g]%10 {
			t.Fatalf("line %q out of order or torn", l)
		}
		next[g]++
	}
	if next != [4]int{500, 500, 500, 500} {
		t.Fatalf("lines per writer %v", next)
	}
	if err := st.Write([]byte("x\n"), 1<<20); err != agent.ErrUnavailable {
		t.Fatalf("write after CloseWrite: %v", err)
	}
	peer.Close()
	select {
	case <-in.ended:
	case <-time.After(5 * time.Second):
		t.Fatal("no Ended after the agent closed its end")
	}
}
