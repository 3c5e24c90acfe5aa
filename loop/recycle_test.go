package loop

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/agentbridge/agentbridge/wire"
)

// unixClient starts a server with a Unix socket (in a short temporary
// directory: a socket path has a small limit) and connects to it; dir is
// the directory, removed at the end.
func unixClient(t *testing.T) (*env, *net.UnixConn, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "abuc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	e := startEnv(t, HTTPConfig{}, func(c *Config) { c.UDS = sock })
	c, err := net.DialTimeout("unix", sock, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return e, c.(*net.UnixConn), dir
}

// TestRecycledAnswersIntact: a client's answers are recycled by its
// connection's endpoint once written (wire.SingleUse, delivery.Copier), so
// a pooled answer's bytes are reused by the next one. A Unix-socket client
// pipelines thousands of requests of every pooled size and reads nothing
// until its answers are far more than the kernel's socket buffer holds:
// the daemon's writes are refused in part (a frame's tail handed to gnet,
// the rest held by the endpoint, input held back), then the client reads
// everything. Every answer must come back whole, once, with its own id
// and its own params (the agent's in the order it was asked): an answer
// recycled before its bytes (or its tail) were written would carry a
// later answer's bytes.
func TestRecycledAnswersIntact(t *testing.T) {
	e, c, _ := unixClient(t)

	// Params of every inline size of wire.Spliced (64 to 928 bytes) and
	// past it, each request's pad its own letter.
	const n = 4000
	params := func(i int) string {
		pad := strings.Repeat(string(rune('a'+i%26)), 10+(i*37)%1000)
		return fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, pad)
	}
	sent := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(c, 64<<10)
		for i := 1; i <= n; i++ {
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%d,"method":"echo","params":%s}`+"\n", i, params(i))
		}
		sent <- w.Flush()
	}()

	// Read nothing until the daemon has queued more answers than any
	// socket buffer takes (over 1 MB), so that it wrote some in part and
	// holds the rest.
	base := e.hub.Stats().Deliveries
	deadline := time.Now().Add(30 * time.Second)
	for e.hub.Stats().Deliveries-base < 2000 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d answers queued within 30 s", e.hub.Stats().Deliveries-base)
		}
		time.Sleep(5 * time.Millisecond) // polling a counter, not synchronising
	}

	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReaderSize(c, 64<<10)
	// The bridge's own refusals (past --max-inflight) overtake the agent's
	// answers; the agent's come in the order it was asked.
	seen := make([]bool, n+1)
	results, last := 0, 0
	for answered := 0; answered < n; {
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("reading after %d answers: %v (%d bytes read of the line)", answered, err, len(line))
		}
		var m struct {
			ID     *int            `json:"id"`
			Method string          `json:"method"`
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(line, &m); err != nil || !bytes.HasPrefix(line, []byte(`{"jsonrpc":"2.0",`)) {
			t.Fatalf("after %d answers, not a JSON-RPC message (%v): %.200q", answered, err, line)
		}
		if m.ID == nil {
			if m.Method == "" {
				t.Fatalf("a message with neither id nor method: %.200q", line)
			}
			continue // a notification (bridge/status)
		}
		id := *m.ID
		if id < 1 || id > n || seen[id] {
			t.Fatalf("id %d unknown or answered twice: %.200q", id, line)
		}
		seen[id] = true
		answered++
		switch {
		case m.Result != nil:
			if got := string(m.Result); got != params(id) {
				t.Fatalf("answer %d carries another's result: got %.120q..., want %.120q...", id, got, params(id))
			}
			if id < last {
				t.Fatalf("the agent's answer %d came after its answer %d", id, last)
			}
			last = id
			results++
		case m.Error == nil:
			t.Fatalf("answer %d has neither result nor error: %.200q", id, line)
		}
	}
	if err := <-sent; err != nil {
		t.Fatalf("writing the requests: %v", err)
	}
	if results < n/2 {
		t.Fatalf("only %d of %d answers were the agent's (the rest errors): the fast path was not exercised", results, n)
	}
}

// TestCloseAfterGnetClosed: a close the endpoint asked for (Shut, from any
// goroutine) that reaches the loop after gnet closed the connection itself
// (the peer hung up, or a write failed: gnet handles I/O before queued
// tasks, so a hang-up and a close requested meanwhile come in that order)
// must do nothing. gnet runs a Wake callback even for a connection it
// closed, with a nil error, and the descriptor number it closed may by
// then be another connection's or file's: the final flush must not write
// there what the endpoint still held for the gone peer (here: answers its
// stalled peer refused).
func TestCloseAfterGnetClosed(t *testing.T) {
	e, cc, dir := unixClient(t)

	// A stalled peer: answers far past what the socket holds, so the
	// endpoint holds the ones the kernel refused.
	go func() {
		w := bufio.NewWriterSize(cc, 64<<10)
		for i := 1; i <= 3000; i++ {
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%d,"method":"echo","params":{"pad":"%s"}}`+"\n", i, strings.Repeat("x", 800))
		}
		_ = w.Flush() // fails once the connection is gone
	}()
	base := e.hub.Stats().Deliveries
	var c *conn
	deadline := time.Now().Add(30 * time.Second)
	for c == nil || e.hub.Stats().Deliveries-base < 1500 {
		if time.Now().After(deadline) {
			t.Fatalf("the peer did not stall within 30 s (%d answers queued)", e.hub.Stats().Deliveries-base)
		}
		time.Sleep(5 * time.Millisecond) // polling, not synchronising
		e.srv.mu.Lock()
		for b := range e.srv.blocked {
			c = b
		}
		e.srv.mu.Unlock()
	}

	// On the loop: the peer hangs up, the daemon asks for a close (Shut
	// queues finish), then gnet closes the connection on a failed write
	// before it runs the queued task; the process then opens a file that
	// gets the closed descriptor's number.
	fd := c.gc.Fd()
	var reused *os.File
	steps := make(chan error, 1)
	entered, start := make(chan struct{}), make(chan struct{})
	if err := c.gc.Wake(func(gc gnet.Conn, err error) error {
		close(entered)
		<-start
		c.ep.Close(wire.ClosePolicy, "closed by the test")
		// The peer is gone: gnet's write fails and gnet closes the
		// connection here, on the loop (OnClose releases the endpoint).
		if gc.OutboundBuffered() > 0 {
			_ = gc.Flush()
		} else {
			_, _ = gc.Write([]byte("\n"))
		}
		if gc.Context() != nil {
			steps <- fmt.Errorf("gnet did not close the connection on a write to a peer that hung up")
			return nil
		}
		var spare []*os.File
		defer func() {
			for _, f := range spare {
				f.Close()
			}
		}()
		for range 64 {
			f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("other%d", len(spare))), os.O_CREATE|os.O_WRONLY, 0o600)
			if err != nil {
				steps <- err
				return nil
			}
			if int(f.Fd()) == fd {
				reused = f
				steps <- nil
				return nil
			}
			spare = append(spare, f)
		}
		steps <- fmt.Errorf("descriptor %d was not reused by 64 opens", fd)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The peer hangs up while the loop runs the task (before, gnet would
	// see it first and close the connection itself).
	<-entered
	rc, err := cc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(s uintptr) { serr = unix.Shutdown(int(s), unix.SHUT_RDWR) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	close(start)
	if err := <-steps; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reused.Close() })
	// Runs after the close's task on the same loop (its queue is FIFO).
	done := make(chan struct{})
	if err := c.gc.Wake(func(gnet.Conn, error) error { close(done); return nil }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("the loop did not run the close's task")
	}
	st, err := reused.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 0 {
		b, _ := os.ReadFile(reused.Name())
		t.Fatalf("the close of a connection gnet had already closed wrote %d bytes to its descriptor, now another file's: %.160q", st.Size(), b)
	}
}

// closingGC is a gnet connection whose every writev fails as a peer's
// reset would, and which gnet then closes on the spot (a closed gnet
// connection has no context). It records what is written after that.
type closingGC struct {
	gnet.Conn // anything else is not expected (nil: it panics)
	ctx       any
	closed    bool
	after     [][]byte
}

func (g *closingGC) Context() any          { return g.ctx }
func (g *closingGC) OutboundBuffered() int { return 0 }
func (g *closingGC) Fd() int               { return -1 }
func (g *closingGC) Wake(gnet.AsyncCallback) error {
	return nil
}
func (g *closingGC) Close() error { return nil }

func (g *closingGC) Writev([][]byte) (int, error) {
	g.ctx, g.closed = nil, true
	return 0, unix.ECONNRESET
}

func (g *closingGC) Write(b []byte) (int, error) {
	if g.closed {
		g.after = append(g.after, b)
	}
	return len(b), nil
}

// TestFinishAfterFailedFinalWrite: when the final flush of a close fails
// (the peer reset) gnet closes the connection there and then, and its
// descriptor number is free for the next accept or open: the farewell (a
// WebSocket close frame) must not be written to it, nor the descriptor
// shut down.
func TestFinishAfterFailedFinalWrite(t *testing.T) {
	e := startEnv(t, HTTPConfig{})
	g := &closingGC{}
	c := &conn{srv: e.srv, gc: g}
	g.ctx = c
	w := &watch{c: c}
	w.halfOpen.Store(true) // no close handshake to wait for
	c.proto = &wsProto{w: w}
	e.srv.newEndpoint(c, "ws", "test")
	if !c.ep.Send(wire.New([]byte(`{"jsonrpc":"2.0","id":1,"result":"owed"}`)), wire.Control) {
		t.Fatal("the answer was not queued")
	}
	c.ep.Close(wire.ClosePolicy, "closed by the test")
	_ = c.finish() // what Shut runs on the loop
	if !g.closed {
		t.Fatal("the final flush wrote nothing: the test did not exercise the failed write")
	}
	if len(g.after) > 0 {
		t.Fatalf("after gnet closed the connection, finish wrote %d more buffer(s) to its descriptor: %q", len(g.after), g.after)
	}
}
