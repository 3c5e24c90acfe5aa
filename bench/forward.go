package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"github.com/lxzan/gws"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// gwsForwarder is the baseline "gws in front of the same echo agent": the
// forwarder a user would write by hand with gws to share one stdio agent
// among WebSocket clients, as the helper server's GET /forward. Each text
// message is a JSON-RPC request whose id is replaced by a forwarder-wide
// one (two clients both sending id 1 must not collide at the agent), queued
// to a writer goroutine that batches what is waiting into one write to the
// agent's stdin; a reader goroutine splits the agent's stdout into lines,
// looks the id up, restores the client's id and hands the answer to gws's
// per-connection write queue (WriteAsync). No routing of notifications,
// no replay, no auth: the floor of a useful forwarder, not a bridge.
//
// The agent starts with the first connection and lives as long as the
// helper. gws calls OnMessage and OnClose from each connection's read
// goroutine; mu guards the pending table.
type gwsForwarder struct {
	gws.BuiltinEventHandler
	argv []string

	once    sync.Once
	startEr error
	in      chan []byte // requests for the agent, already framed

	mu      sync.Mutex
	next    int64                    // guarded by mu
	pending map[int64]forwardPending // guarded by mu
}

// forwardPending is a request the agent has not answered yet.
type forwardPending struct {
	sock *gws.Conn
	id   []byte // the client's own id, raw JSON
}

func newGWSForwarder(argv []string) *gwsForwarder {
	return &gwsForwarder{argv: argv, in: make(chan []byte, 4096), pending: make(map[int64]forwardPending)}
}

// start spawns the agent and its two pipe goroutines, once.
func (f *gwsForwarder) start() error {
	f.once.Do(func() {
		if len(f.argv) == 0 {
			f.startEr = fmt.Errorf("no agent command (--forward-agent)")
			return
		}
		cmd := exec.Command(f.argv[0], f.argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			f.startEr = err
			return
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			f.startEr = err
			return
		}
		if err := cmd.Start(); err != nil {
			f.startEr = fmt.Errorf("start the forwarded agent: %v", err)
			return
		}
		go f.writeLoop(stdin)
		go f.readLoop(stdout)
	})
	return f.startEr
}

// writeLoop owns the agent's stdin: it writes what is queued, coalescing
// whatever else is waiting into the same write.
func (f *gwsForwarder) writeLoop(w io.WriteCloser) {
	defer w.Close()
	bw := bufio.NewWriterSize(w, 64<<10)
	for msg := range f.in {
		if writeCoalesced(bw, msg, f.in) != nil {
			return
		}
	}
}

// readLoop owns the agent's stdout: every answer goes back to the client
// that asked, with its own id.
func (f *gwsForwarder) readLoop(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		h, err := jsonrpc.Peek(line)
		if err != nil || h.Kind != jsonrpc.KindResponse {
			continue
		}
		id, err := strconv.ParseInt(string(h.ID), 10, 64)
		if err != nil {
			continue
		}
		f.mu.Lock()
		p, ok := f.pending[id]
		delete(f.pending, id)
		f.mu.Unlock()
		if !ok {
			continue
		}
		// WriteAsync keeps the buffer until it is written: a fresh one.
		p.sock.WriteAsync(gws.OpcodeText, jsonrpc.ReplaceID(nil, line, h, p.id), nil)
	}
}

func (f *gwsForwarder) OnOpen(sock *gws.Conn) {
	if err := f.start(); err != nil {
		_ = sock.WriteClose(1011, []byte(err.Error()))
	}
}

func (f *gwsForwarder) OnMessage(sock *gws.Conn, m *gws.Message) {
	defer m.Close()
	msg := m.Bytes()
	h, err := jsonrpc.Peek(msg)
	if err != nil || h.Kind != jsonrpc.KindRequest {
		return // a hand-written forwarder passes requests only
	}
	f.mu.Lock()
	f.next++
	id := f.next
	f.pending[id] = forwardPending{sock: sock, id: bytes.Clone(h.ID)}
	f.mu.Unlock()
	out := jsonrpc.ReplaceID(make([]byte, 0, len(msg)+24), msg, h, strconv.AppendInt(nil, id, 10))
	f.in <- append(out, '\n')
}

// OnClose forgets the connection's pending requests; their answers are
// dropped when they come.
func (f *gwsForwarder) OnClose(sock *gws.Conn, _ error) {
	f.mu.Lock()
	for id, p := range f.pending {
		if p.sock == sock {
			delete(f.pending, id)
		}
	}
	f.mu.Unlock()
}
