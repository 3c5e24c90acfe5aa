package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/lxzan/gws"
)

// The baseline server (`agentbridge bench helper-server`) runs in its own
// process so its memory and CPU are measured apart from the load generator:
//
//   - --uds PATH: an NDJSON echo over a Unix socket, Go net, one goroutine
//     and a 4 KiB buffer per connection (the raw floor of a local hop);
//   - --ws ADDR: a gws server, GET /echo echoes every message (gws's own
//     write path: one write syscall per message) and GET /fanout serves the
//     fan-out protocol below with gws's Broadcaster; GET /forward is gws in
//     front of one agent process (--forward-agent, a JSON array argv),
//     the forwarder a user would write by hand (gwsForwarder);
//   - --fanout-uds PATH: the fan-out protocol over a Unix socket, Go net,
//     each message encoded once and queued to a writer goroutine per
//     member that batches what is waiting into one write.
//
// The fan-out protocol, one JSON object per message: {"join":G} makes the
// connection a member of group G (answered {"joined":G}); {"stream":G,"n":N,"size":B,"pace":NS}
// sends N stamped session/update chunks (the demo agent's shape, B bytes of
// text, NS nanoseconds apart) to every member of G and then {"done":G,"n":K}
// to the sender; {"stop":G} ends a stream early.
//
// It prints "ready" on stdout once every listener is up and exits when its
// stdin closes, so it never outlives the bench that started it.

func runHelperServer(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("helper-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	uds := fs.String("uds", "", "Unix socket for the NDJSON echo")
	fanUDS := fs.String("fanout-uds", "", "Unix socket for the fan-out protocol")
	wsAddr := fs.String("ws", "", "TCP address for the gws server (/echo, /fanout, /forward)")
	fwdAgent := fs.String("forward-agent", "", "the agent /forward shares, as a JSON array argv")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	h := &helper{groups: make(map[string]*group)}
	var fwdArgv []string
	if *fwdAgent != "" {
		if err := json.Unmarshal([]byte(*fwdAgent), &fwdArgv); err != nil {
			fmt.Fprintf(stderr, "helper-server: --forward-agent %q is not a JSON array of strings: %v\n", *fwdAgent, err)
			return 2
		}
	}
	if *uds != "" {
		ln, err := listenUnix(*uds)
		if err != nil {
			fmt.Fprintf(stderr, "helper-server: %v\n", err)
			return 1
		}
		go acceptLoop(ln, serveEcho)
	}
	if *fanUDS != "" {
		ln, err := listenUnix(*fanUDS)
		if err != nil {
			fmt.Fprintf(stderr, "helper-server: %v\n", err)
			return 1
		}
		go acceptLoop(ln, h.serveFanoutUDS)
	}
	if *wsAddr != "" {
		ln, err := net.Listen("tcp", *wsAddr)
		if err != nil {
			fmt.Fprintf(stderr, "helper-server: %v\n", err)
			return 1
		}
		echo := gws.NewUpgrader(gwsEcho{}, &gws.ServerOption{})
		fan := gws.NewUpgrader(&gwsFanout{h: h}, &gws.ServerOption{})
		fwd := gws.NewUpgrader(newGWSForwarder(fwdArgv), &gws.ServerOption{})
		mux := http.NewServeMux()
		mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
			if sock, err := echo.Upgrade(w, r); err == nil {
				go sock.ReadLoop()
			}
		})
		mux.HandleFunc("/fanout", func(w http.ResponseWriter, r *http.Request) {
			if sock, err := fan.Upgrade(w, r); err == nil {
				go sock.ReadLoop()
			}
		})
		mux.HandleFunc("/forward", func(w http.ResponseWriter, r *http.Request) {
			if sock, err := fwd.Upgrade(w, r); err == nil {
				go sock.ReadLoop()
			}
		})
		go func() { _ = http.Serve(ln, mux) }()
	}
	fmt.Fprintln(stdout, "ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, p := range []string{*uds, *fanUDS} {
		if p != "" {
			_ = os.Remove(p)
		}
	}
	return 0
}

func listenUnix(path string) (net.Listener, error) {
	_ = os.Remove(path)
	return net.Listen("unix", path)
}

func acceptLoop(ln net.Listener, serve func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go serve(c)
	}
}

// serveEcho writes back whatever arrives: for NDJSON, every message.
func serveEcho(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

type gwsEcho struct{ gws.BuiltinEventHandler }

func (gwsEcho) OnMessage(sock *gws.Conn, m *gws.Message) {
	_ = sock.WriteMessage(m.Opcode, m.Bytes())
	_ = m.Close()
}

// helper holds the fan-out groups of both transports.
type helper struct {
	mu     sync.Mutex
	groups map[string]*group // guarded by mu
}

// group is one fan-out audience. Its fields are guarded by helper.mu.
type group struct {
	uds  []*udsMember
	ws   []*gws.Conn
	stop chan struct{} // closed by {"stop"}; nil when no stream runs
}

func (h *helper) group(name string) *group {
	g := h.groups[name]
	if g == nil {
		g = &group{}
		h.groups[name] = g
	}
	return g
}

// fanMsg is a client's fan-out command.
type fanMsg struct {
	Join   string `json:"join"`
	Stream string `json:"stream"`
	Stop   string `json:"stop"`
	N      int    `json:"n"`
	Size   int    `json:"size"`
	Pace   int64  `json:"pace"`
}

// udsMember is a fan-out connection on the Unix socket; a writer goroutine
// drains its queue, coalescing what is waiting into one write.
type udsMember struct {
	c    net.Conn
	q    chan []byte
	gone chan struct{} // closed when the connection ends
}

// send queues msg unless the member is gone. Any goroutine.
func (m *udsMember) send(msg []byte) {
	select {
	case m.q <- msg:
	case <-m.gone:
	}
}

func (m *udsMember) writeLoop() {
	bw := bufio.NewWriterSize(m.c, 64<<10)
	for {
		var msg []byte
		select {
		case msg = <-m.q:
		case <-m.gone:
			return
		}
		if err := writeCoalesced(bw, msg, m.q); err != nil {
			_ = m.c.Close()
			return
		}
	}
}

// writeCoalesced writes msg and whatever else q already holds, then flushes
// once: one write(2) for a burst, as a real forwarder batches.
func writeCoalesced(bw *bufio.Writer, msg []byte, q <-chan []byte) error {
	_, err := bw.Write(msg)
	for more := true; more && err == nil; {
		select {
		case next, ok := <-q:
			if !ok {
				more = false
				break
			}
			_, err = bw.Write(next)
		default:
			more = false
		}
	}
	if err != nil {
		return err
	}
	return bw.Flush()
}

func (h *helper) serveFanoutUDS(c net.Conn) {
	m := &udsMember{c: c, q: make(chan []byte, 1<<16), gone: make(chan struct{})}
	go m.writeLoop()
	defer func() {
		h.mu.Lock()
		for _, g := range h.groups {
			for i, x := range g.uds {
				if x == m {
					g.uds = append(g.uds[:i], g.uds[i+1:]...)
					break
				}
			}
		}
		h.mu.Unlock()
		close(m.gone)
		_ = c.Close()
	}()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		var f fanMsg
		if json.Unmarshal(sc.Bytes(), &f) != nil {
			continue
		}
		switch {
		case f.Join != "":
			h.mu.Lock()
			g := h.group(f.Join)
			g.uds = append(g.uds, m)
			h.mu.Unlock()
			m.send(joinedMsg(f.Join, '\n'))
		case f.Stream != "":
			go h.stream(f, func(b []byte) { m.send(append(b, '\n')) })
		case f.Stop != "":
			h.stopStream(f.Stop)
		}
	}
}

func (h *helper) stopStream(name string) {
	h.mu.Lock()
	if g := h.groups[name]; g != nil && g.stop != nil {
		close(g.stop)
		g.stop = nil
	}
	h.mu.Unlock()
}

// stream sends f.N chunks to every member of the group, each encoded once,
// then tells the requester how many went out.
func (h *helper) stream(f fanMsg, reply func([]byte)) {
	stop := make(chan struct{})
	h.mu.Lock()
	g := h.group(f.Stream)
	if g.stop != nil {
		close(g.stop)
	}
	g.stop = stop
	h.mu.Unlock()

	var pace *time.Timer
	if f.Pace > 0 {
		pace = time.NewTimer(time.Duration(f.Pace))
		defer pace.Stop()
	}
	text := chunkText(f.Size)
	sent := 0
	var (
		uds []*udsMember
		wss []*gws.Conn
	)
loop:
	for i := 0; i < f.N; i++ {
		if pace != nil && i > 0 {
			select {
			case <-pace.C:
				pace.Reset(time.Duration(f.Pace))
			case <-stop:
				break loop
			}
		} else {
			select {
			case <-stop:
				break loop
			default:
			}
		}
		msg := appendChunk(nil, f.Stream, text, time.Now().UnixNano())
		h.mu.Lock()
		// Copies: members may leave while this message goes out.
		uds, wss = append(uds[:0], g.uds...), append(wss[:0], g.ws...)
		h.mu.Unlock()
		if len(uds) > 0 {
			line := append(msg[:len(msg):len(msg)], '\n')
			for _, m := range uds {
				m.send(line)
			}
		}
		if len(wss) > 0 {
			b := gws.NewBroadcaster(gws.OpcodeText, msg)
			for _, s := range wss {
				_ = b.Broadcast(s)
			}
			_ = b.Close()
		}
		sent++
	}
	h.mu.Lock()
	if g.stop == stop {
		g.stop = nil
	}
	h.mu.Unlock()
	done := []byte(`{"done":` + strconv.Quote(f.Stream) + `,"n":` + strconv.Itoa(sent) + `}`)
	reply(done)
}

type gwsFanout struct {
	gws.BuiltinEventHandler
	h *helper
}

func (x *gwsFanout) OnClose(sock *gws.Conn, _ error) {
	x.h.mu.Lock()
	for _, g := range x.h.groups {
		for i, s := range g.ws {
			if s == sock {
				g.ws = append(g.ws[:i], g.ws[i+1:]...)
				break
			}
		}
	}
	x.h.mu.Unlock()
}

func (x *gwsFanout) OnMessage(sock *gws.Conn, m *gws.Message) {
	var f fanMsg
	err := json.Unmarshal(m.Bytes(), &f)
	_ = m.Close()
	if err != nil {
		return
	}
	switch {
	case f.Join != "":
		x.h.mu.Lock()
		g := x.h.group(f.Join)
		g.ws = append(g.ws, sock)
		x.h.mu.Unlock()
		sock.WriteAsync(gws.OpcodeText, joinedMsg(f.Join), nil)
	case f.Stream != "":
		go x.h.stream(f, func(b []byte) { sock.WriteAsync(gws.OpcodeText, b, nil) })
	case f.Stop != "":
		x.h.stopStream(f.Stop)
	}
}

// joinedMsg acknowledges a join, so the driver knows every member is in
// before it starts the stream.
func joinedMsg(name string, suffix ...byte) []byte {
	return append([]byte(`{"joined":`+strconv.Quote(name)+`}`), suffix...)
}

// chunkText is size bytes of a-z.
func chunkText(size int) string {
	b := make([]byte, max(size, 1))
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return string(b)
}

// appendChunk appends a stamped agent_message_chunk session/update, the
// shape the demo agent streams with --stamp.
func appendChunk(dst []byte, sessionID, text string, sentAt int64) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":`...)
	dst = strconv.AppendQuote(dst, sessionID)
	dst = append(dst, `,"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":`...)
	dst = strconv.AppendQuote(dst, text)
	dst = append(dst, `},"_meta":{"sentAt":`...)
	dst = strconv.AppendInt(dst, sentAt, 10)
	return append(dst, "}}}}"...)
}

// sentAtKey marks the stamp in a chunk.
var sentAtKey = []byte(`"sentAt":`)

// stampOf returns the sentAt stamp of a chunk, or 0 when it has none. It
// scans from the end, where the stamp sits, rather than decoding.
func stampOf(msg []byte) int64 {
	i := bytes.LastIndex(msg, sentAtKey)
	if i < 0 {
		return 0
	}
	var v int64
	for _, c := range msg[i+len(sentAtKey):] {
		if c < '0' || c > '9' {
			break
		}
		v = v*10 + int64(c-'0')
	}
	return v
}
