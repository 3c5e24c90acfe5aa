package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/codec/ws"
)

// The backpressure tests run the daemon built without the race detector:
// they measure its RSS and push hundreds of megabytes through it, and the
// race runtime multiplies both memory and CPU several times over, which
// would measure the detector rather than the bounds. (The race-built
// binary runs every other e2e test.) AGENTBRIDGE_PERF_BIN names a binary
// built without -race (make test builds both once for both agent stdio
// modes); otherwise AGENTBRIDGE_BIN, when set, is used as is.
var (
	perfBinOnce sync.Once
	perfBin     string
	perfBinErr  error
)

func perfBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("AGENTBRIDGE_PERF_BIN"); p != "" {
		return p
	}
	if os.Getenv("AGENTBRIDGE_BIN") != "" {
		return binPath
	}
	perfBinOnce.Do(func() {
		perfBin = filepath.Join(filepath.Dir(binPath), "agentbridge-norace")
		out, err := exec.Command("go", "build", "-o", perfBin, "../../cmd/agentbridge").CombinedOutput()
		if err != nil {
			perfBinErr = fmt.Errorf("build agentbridge without -race: %v\n%s", err, out)
		}
	})
	if perfBinErr != nil {
		t.Fatal(perfBinErr)
	}
	return perfBin
}

// bpDaemon starts the perf binary with --listen (for /metrics) and args.
func bpDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	return startDaemonExe(t, perfBinary(t), nil, append([]string{"--listen", anyPort}, args...)...)
}

// metric scrapes /metrics with the generated client token and returns the
// value of every sample whose name and labels start with prefix, summed.
func (d *daemon) metric(t *testing.T, prefix string) float64 {
	t.Helper()
	v, err := d.scrape(prefix)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// metricNoFail is metric for goroutines other than the test's: -1 when the
// scrape fails.
func (d *daemon) metricNoFail(prefix string) float64 {
	v, err := d.scrape(prefix)
	if err != nil {
		return -1
	}
	return v
}

func (d *daemon) scrape(prefix string) (float64, error) {
	token := e2eClientToken // with --tokens (see netDaemon's file)
	tok, err := os.ReadFile(filepath.Join(d.dir, "ab.token"))
	if err != nil && !os.IsNotExist(err) {
		return 0, fmt.Errorf("token file: %v", err)
	}
	for _, line := range strings.Split(string(tok), "\n") {
		if f := strings.Fields(line); len(f) == 2 && !strings.HasPrefix(line, "#") {
			token = f[1]
		}
	}
	req, _ := http.NewRequest("GET", "http://"+d.listen+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("GET /metrics: %s: %s", resp.Status, body)
	}
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, nil
}

// rssKiB reads a process's resident set from /proc.
func rssKiB(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			n, _ := strconv.ParseInt(f[0], 10, 64)
			return n
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}

// rssWatch samples a process's RSS every 20ms until stopped and keeps the
// peak.
type rssWatch struct {
	peak atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func watchRSS(t *testing.T, pid int) *rssWatch {
	w := &rssWatch{stop: make(chan struct{}), done: make(chan struct{})}
	w.peak.Store(rssKiB(t, pid))
	go func() {
		defer close(w.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
				if err != nil {
					return
				}
				if i := bytes.Index(b, []byte("VmRSS:")); i >= 0 {
					f := strings.Fields(string(b[i+6:]))
					if n, err := strconv.ParseInt(f[0], 10, 64); err == nil && n > w.peak.Load() {
						w.peak.Store(n)
					}
				}
			}
		}
	}()
	return w
}

func (w *rssWatch) finish() int64 {
	close(w.stop)
	<-w.done
	return w.peak.Load()
}

// bpPeer is a Unix-socket client that reads its stream as it arrives and
// checks it on the fly: enveloped events of its session must come in seq
// order, and together with bridge/gap ranges cover every seq exactly once.
// Events are recognised by their fixed envelope prefix and never decoded,
// so a hundred of them keep up with a flood.
type bpPeer struct {
	t    *testing.T
	name string
	c    net.Conn
	r    *bufio.Reader
	wmu  sync.Mutex
	// prefix is `{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":"S","seq":`
	// once the session is known.
	prefix atomic.Pointer[[]byte]

	mode    atomic.Int32 // peerFast, peerPaced, peerPaused, peerRated
	rate    atomic.Int64 // peerRated: messages per second
	resume  chan struct{}
	next    atomic.Uint64 // the next seq the stream must account for
	events  atomic.Int64
	onEvent func(p *bpPeer, seq uint64) // set before start; runs on the reader
	ended   chan struct{}               // closed when the stream ends

	// WebSocket peers (bpDialWS) read frames instead of lines.
	ws             bool
	wsr            ws.Reader
	wsraw          []byte // the read buffer; [wsStart:wsEnd] is unconsumed
	wsStart, wsEnd int

	mu          sync.Mutex // guards below
	closeCode   ws.CloseCode
	closeReason string
	err         error // the first inconsistency
	responses   map[string]json.RawMessage
	gaps        []bpGap
	summaries   []bpSummary
	readErr     error
}

const (
	peerFast int32 = iota
	peerPaced
	peerPaused
	peerRated // reads at most rate messages a second
)

type bpGap struct {
	from, to   uint64
	reason     string
	afterEvent int64 // events received before it
}

type bpSummary struct {
	seq, dropped, bytes uint64
	text                string
}

// bpDial connects; start begins reading.
func bpDial(t *testing.T, path, name string, bufSize int) *bpPeer {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	p := &bpPeer{t: t, name: name, c: c, r: bufio.NewReaderSize(c, bufSize), resume: make(chan struct{}, 1),
		ended: make(chan struct{}), responses: map[string]json.RawMessage{}}
	p.next.Store(1)
	t.Cleanup(func() { c.Close() })
	return p
}

// bpDialWS upgrades a TCP connection to a WebSocket on /acp with token:
// a raw client, so that it can stop reading exactly when the test says.
func bpDialWS(t *testing.T, addr, token, name string) *bpPeer {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req := "GET /acp HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer " + token + "\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReaderSize(c, 1<<16)
	status, err := r.ReadString('\n')
	if err != nil || !strings.Contains(status, " 101 ") {
		t.Fatalf("upgrade: %q %v", status, err)
	}
	for {
		h, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("upgrade headers: %v", err)
		}
		if h == "\r\n" {
			break
		}
	}
	p := &bpPeer{t: t, name: name, c: c, r: r, ws: true, wsraw: make([]byte, 1<<16), resume: make(chan struct{}, 1),
		ended: make(chan struct{}), responses: map[string]json.RawMessage{}}
	p.wsr.MaxMessage = 32 << 20
	p.next.Store(1)
	return p
}

func (p *bpPeer) start() *bpPeer {
	go p.readLoop()
	return p
}

func (p *bpPeer) setMode(m int32) {
	p.mode.Store(m)
	select {
	case p.resume <- struct{}{}:
	default:
	}
}

func (p *bpPeer) fail(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = fmt.Errorf("%s: %s", p.name, fmt.Sprintf(format, a...))
	}
}

func (p *bpPeer) readLoop() {
	defer close(p.ended)
	var (
		rateStart time.Time
		rateRead  int64
	)
	for {
		switch p.mode.Load() {
		case peerPaused:
			<-p.resume
			continue
		case peerPaced:
			time.Sleep(100 * time.Millisecond) // a reader that takes ~10 messages/s
		case peerRated:
			if rateStart.IsZero() {
				rateStart = time.Now()
			}
			rateRead++
			// Sleep off whatever this reader is ahead of its rate.
			if ahead := time.Duration(rateRead)*time.Second/time.Duration(p.rate.Load()) - time.Since(rateStart); ahead > time.Millisecond {
				time.Sleep(ahead)
			}
		}
		line, err := p.nextMsg()
		if err != nil {
			p.mu.Lock()
			p.readErr = err
			p.mu.Unlock()
			return
		}
		if pre := p.prefix.Load(); pre != nil && bytes.HasPrefix(line, *pre) {
			seq, ok := leadingUint(line[len(*pre):])
			if !ok {
				p.fail("unreadable event %q", line)
				continue
			}
			if want := p.next.Load(); seq != want {
				p.fail("event seq %d, want %d", seq, want)
			}
			p.next.Store(seq + 1)
			p.events.Add(1)
			if p.onEvent != nil {
				p.onEvent(p, seq)
			}
			continue
		}
		p.other(line)
	}
}

// nextMsg returns the next message: a line on the Unix socket, a text
// message over WebSocket (pings answered, a close frame recorded as the
// end). The bytes are valid until the next call.
func (p *bpPeer) nextMsg() ([]byte, error) {
	if !p.ws {
		return p.r.ReadSlice('\n')
	}
	for {
		ev, n, err := p.wsr.Next(p.wsraw[p.wsStart:p.wsEnd])
		p.wsStart += n
		if err != nil {
			return nil, err
		}
		switch ev.Kind {
		case ws.EventText:
			return ev.Payload, nil
		case ws.EventPing:
			p.write(ws.AppendMaskedFrame(nil, true, ws.OpPong, [4]byte{7, 7, 7, 7}, ev.Payload))
			continue
		case ws.EventClose:
			p.mu.Lock()
			p.closeCode, p.closeReason = ev.CloseCode, string(ev.Payload)
			p.mu.Unlock()
			return nil, io.EOF
		case ws.EventNone:
		default:
			continue
		}
		// Keep the unconsumed bytes at the front, then read more behind them.
		p.wsEnd = copy(p.wsraw, p.wsraw[p.wsStart:p.wsEnd])
		p.wsStart = 0
		k, err := p.r.Read(p.wsraw[p.wsEnd:])
		p.wsEnd += k
		if err != nil && k == 0 {
			return nil, err
		}
	}
}

// leadingUint parses the decimal number b starts with, up to a comma,
// without allocating: a hundred readers parse twenty million of them.
func leadingUint(b []byte) (uint64, bool) {
	var n uint64
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9' && i < 19:
			n = n*10 + uint64(c-'0')
		case c == ',' && i > 0:
			return n, true
		default:
			return 0, false
		}
	}
	return 0, false
}

func (p *bpPeer) other(line []byte) {
	var f frame
	var sum struct {
		Params struct {
			Seq     uint64 `json:"seq"`
			Dropped uint64 `json:"dropped"`
			Bytes   uint64 `json:"bytes"`
			Text    string `json:"text"`
		} `json:"params"`
	}
	if json.Unmarshal(line, &f) != nil || json.Unmarshal(line, &sum) != nil {
		p.fail("invalid JSON %q", line)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case f.Method == "" && len(f.ID) > 0:
		if _, dup := p.responses[string(f.ID)]; dup && p.err == nil {
			p.err = fmt.Errorf("%s: a second answer to id %s", p.name, f.ID)
		}
		if f.Error != nil {
			p.responses[string(f.ID)] = json.RawMessage(fmt.Sprintf(`{"error":%d}`, f.Error.Code))
		} else {
			p.responses[string(f.ID)] = f.Result
		}
	case f.Method == "bridge/gap":
		if want := p.next.Load(); f.Params.FromSeq != want || f.Params.ToSeq < f.Params.FromSeq {
			if p.err == nil {
				p.err = fmt.Errorf("%s: gap %d-%d, want one from %d", p.name, f.Params.FromSeq, f.Params.ToSeq, want)
			}
		}
		p.next.Store(f.Params.ToSeq + 1)
		p.gaps = append(p.gaps, bpGap{from: f.Params.FromSeq, to: f.Params.ToSeq, reason: f.Params.Reason, afterEvent: p.events.Load()})
	case f.Method == "bridge/summary":
		p.summaries = append(p.summaries, bpSummary{seq: sum.Params.Seq, dropped: sum.Params.Dropped, bytes: sum.Params.Bytes, text: sum.Params.Text})
	case f.Method == "bridge/status", f.Method == "bridge/resolved":
	case f.Method == "session/update":
		p.fail("a raw (unenveloped) event: %q", line)
	default:
		p.fail("unexpected message %q", line)
	}
}

func (p *bpPeer) send(id, method string, params any) {
	p.t.Helper()
	b, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	if err != nil {
		p.t.Fatal(err)
	}
	if p.ws {
		b = ws.AppendMaskedFrame(nil, true, ws.OpText, [4]byte{1, 2, 3, 4}, b)
	} else {
		b = append(b, '\n')
	}
	if err := p.write(b); err != nil {
		p.fail("write %s: %v", method, err)
	}
}

func (p *bpPeer) write(b []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_ = p.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := p.c.Write(b)
	return err
}

func (p *bpPeer) response(id string) (json.RawMessage, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.responses[strconv.Quote(id)]
	return r, ok
}

func (p *bpPeer) call(id, method string, params any) json.RawMessage {
	p.t.Helper()
	p.send(id, method, params)
	var r json.RawMessage
	bpWait(p.t, 10*time.Second, p.name+" "+method+" answered", func() bool {
		var ok bool
		r, ok = p.response(id)
		return ok
	})
	if bytes.HasPrefix(r, []byte(`{"error"`)) {
		p.t.Fatalf("%s %s: %s", p.name, method, r)
	}
	return r
}

func (p *bpPeer) attach(sid string, onSlow string) {
	p.t.Helper()
	hello := map[string]any{"envelope": true}
	if onSlow != "" {
		hello["onSlow"] = onSlow
	}
	p.call("hello", "bridge/hello", hello)
	p.watch(sid)
	p.call("attach", "bridge/attach", map[string]any{"sessionId": sid})
}

func (p *bpPeer) watch(sid string) {
	pre := []byte(`{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":` + strconv.Quote(sid) + `,"seq":`)
	p.prefix.Store(&pre)
}

func (p *bpPeer) check() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		p.t.Fatal(p.err)
	}
}

func (p *bpPeer) snapshot() (gaps []bpGap, sums []bpSummary, readErr error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]bpGap(nil), p.gaps...), append([]bpSummary(nil), p.summaries...), p.readErr
}

// bpWait polls cond until it holds; the timeout only bounds a failure.
// floodRead bounds how long a reader that starts reading after a flood
// may take to read all of it: a liveness bound, not a measure. Quiet, it
// takes seconds; make test runs the e2e suite beside the other lanes, and
// a loaded CI machine took a stalled client over 30s to read 200,000 events.
const floodRead = 2 * time.Minute

func bpWait(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stallProxy forwards a Unix socket to the daemon until stalled: then it
// stops reading and forwarding in both directions, as a peer whose host
// vanished without closing (half-open) looks from the daemon.
type stallProxy struct {
	path    string
	ln      net.Listener
	up      net.Conn
	stalled atomic.Bool
	gate    chan struct{} // closed to release a stall
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	dir, err := os.MkdirTemp("", "abp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &stallProxy{path: filepath.Join(dir, "p.sock"), gate: make(chan struct{})}
	if p.ln, err = net.Listen("unix", p.path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.ln.Close() })
	go func() {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("unix", target)
		if err != nil {
			down.Close()
			return
		}
		p.up = up
		go p.pipe(down, up)
		go p.pipe(up, down)
	}()
	return p
}

func (p *stallProxy) pipe(src, dst net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		if p.stalled.Load() {
			<-p.gate
			return // released: the test reads the upstream itself
		}
		n, err := src.Read(buf)
		if n > 0 && !p.stalled.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestBackpressureGarbageNetwork floods one session with 200,000 events
// while 100 fast clients, a stalled one, a slow one and a half-open peer
// are attached, and checks that the bad ones cost the good ones nothing:
// every fast client gets every event in order, the stalled one holds the
// daemon's memory to its ceilings, the slow one is degraded to summaries
// and gaps and then back to full delivery, the half-open one (a
// disconnect-policy client) is closed, and every request is answered or
// its connection closed.
func TestBackpressureGarbageNetwork(t *testing.T) {
	const (
		flood = 200000
		nFast = 100
		// The fast clients' queues must absorb what the agent writes faster
		// than two shared cores can deliver it to a hundred sockets (the
		// fan-out takes about a second, the delivery several); the slot
		// watermark (3/4 of 7/8 of the items) and the byte one (3/4) stay
		// above the whole flood.
		queueItems = 1 << 19
		queueBytes = 128 << 20
		ctrlBytes  = 1 << 20
	)
	// No --replay cap: the owner and the fast clients are catch-up
	// connections (a client's default onSlow), so a fast reader that
	// momentarily takes nothing (a hundred readers share two cores) is
	// fed from the session log, not from its queue, until it is back to
	// live. The log is then its buffer: a 1,000-event log would turn any
	// such pause into a bridge/gap, contradicting "fast clients get
	// everything". The default retention holds the whole flood.
	d := bpDaemon(t, append([]string{"--summary-interval", "200ms", "--queue-items", strconv.Itoa(queueItems),
		"--queue-bytes", strconv.Itoa(queueBytes), "--control-bytes", strconv.Itoa(ctrlBytes)}, fakeAgentCmd()...)...)
	pid := d.cmd.Process.Pid

	own, sid, _ := envelopedOwner(t, d)

	fast := make([]*bpPeer, nFast)
	for i := range fast {
		p := bpDial(t, d.sock, fmt.Sprintf("fast%d", i), 1<<16)
		p.onEvent = func(p *bpPeer, seq uint64) {
			if seq == flood/2 {
				p.send("mid", "echo", map[string]any{"at": seq}) // a request in mid-flood
			}
		}
		p.start().attach(sid, "")
		fast[i] = p
	}
	stalled := bpDial(t, d.sock, "stalled", 1<<16).start()
	stalled.attach(sid, "degrade")
	stalled.setMode(peerPaused)
	stalled.send("stalled-req", "echo", map[string]any{})

	slow := bpDial(t, d.sock, "slow", 4096).start()
	slow.attach(sid, "degrade")
	// The slow client starts paused and reads at a slow pace once it has
	// been degraded: its queue is sized to the flood like every other, so
	// a reader that merely lags stays under its watermark and is (rightly)
	// not degraded; a pause past the drain deadline is what degrades it,
	// mid-flood, so the rest of the flood reaches it as summaries.
	slow.setMode(peerPaused)
	slow.send("slow-req", "echo", map[string]any{})

	proxy := newStallProxy(t, d.sock)
	half := bpDial(t, proxy.path, "half-open", 1<<16).start()
	half.attach(sid, "disconnect") // a client's default is catchup; TestStall covers that
	half.send("half-req", "echo", map[string]any{})
	bpWait(t, 10*time.Second, "half-open's echo answered", func() bool { _, ok := half.response("half-req"); return ok })
	proxy.stalled.Store(true)
	half.send("half-req2", "echo", map[string]any{}) // never forwarded: the proxy stalls

	base := rssKiB(t, pid)
	rss := watchRSS(t, pid)
	start := time.Now()
	// stream writes agent_message_chunk events (so summaries carry text),
	// flushing every 1,000: as fast as the pipe takes them.
	own.send("flood", "stream", map[string]any{"sessionId": sid, "n": flood, "size": 0, "every": 1000})
	go func() {
		// Both degrade-policy readers (stalled and slow) degraded: the slow
		// one starts reading, slowly. Bounded: the test's own deadlines
		// report a slow client that never degraded.
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if d.metricNoFail("agentbridge_degraded_connections") >= 2 {
				break
			}
		}
		slow.setMode(peerPaced)
	}()
	allFast := func() bool {
		if own.next.Load() <= flood {
			return false
		}
		for _, p := range fast {
			if p.next.Load() <= flood {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(3 * time.Minute)
	for !allFast() {
		if time.Now().After(deadline) {
			behind := []string{}
			for _, p := range append([]*bpPeer{own}, fast...) {
				if n := p.next.Load(); n <= flood {
					_, _, rerr := p.snapshot()
					behind = append(behind, fmt.Sprintf("%s at %d (read: %v)", p.name, n-1, rerr))
				}
			}
			t.Fatalf("fast clients did not get the flood within 3m: %s", strings.Join(behind, "; "))
		}
		for _, p := range append([]*bpPeer{own}, fast...) {
			p.check()
			if _, _, rerr := p.snapshot(); rerr != nil {
				t.Fatalf("%s's stream ended at seq %d: %v", p.name, p.next.Load()-1, rerr)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	floodTime := time.Since(start)
	peak := rss.finish()
	bpWait(t, 10*time.Second, "the burst answered", func() bool { _, ok := own.response("flood"); return ok })

	// Fast clients: everything, in order, no gaps, no summaries, their
	// mid-flood request answered.
	for _, p := range append([]*bpPeer{own}, fast...) {
		p.check()
		gaps, sums, rerr := p.snapshot()
		if len(gaps) > 0 || len(sums) > 0 || rerr != nil {
			t.Fatalf("%s: gaps %v, summaries %v, read error %v", p.name, gaps, sums, rerr)
		}
		if p != own {
			bpWait(t, 10*time.Second, p.name+"'s mid-flood echo", func() bool { _, ok := p.response("mid"); return ok })
		}
	}
	t.Logf("flood: %d events to %d fast clients in %v (%.0f deliveries/s), %v times a catch-up client fell behind and was fed from the log; daemon RSS %d KiB before, peak %d KiB",
		flood, nFast+1, floodTime.Round(time.Millisecond), float64(flood*(nFast+1))/floodTime.Seconds(), d.metric(t, "agentbridge_hub_lagged_total"), base, peak)

	// Memory: every connection may hold its ceilings, and the fast ones do
	// (their queues are sized to the flood). Per connection: the slot
	// array at MaxItems (32 bytes a slot) and gnet's outbound buffer (its
	// 256 KiB watermark plus one 256 KiB drain pass); shared by all, the
	// flood's messages (raw and enveloped, under 1 KiB each); twice that
	// for the collector's headroom, plus 64 MiB. A weak bound by design:
	// TestBackpressureStalledMemoryBounded is the tight one.
	conns := int64(nFast + 5)
	bound := base + 2*(conns*(queueItems*32+512<<10)+flood*1024)/1024 + 64<<10
	if peak > bound {
		t.Fatalf("daemon RSS peaked at %d KiB, over the bound %d KiB derived from the ceilings", peak, bound)
	}
	// The half-open peer chose onSlow disconnect, so it is disconnected,
	// not degraded: the daemon closed it and counted why.
	bpWait(t, 30*time.Second, "the half-open peer's close", func() bool {
		return d.metric(t, `agentbridge_backpressure_closes_total{reason="slow_consumer"}`) >= 1
	})
	// Release the stall and read what the daemon had written before it
	// closed: the stream must end (EOF), proving the close.
	proxy.up.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, proxy.up); err != nil {
		t.Fatalf("half-open upstream did not end with EOF: %v", err)
	}
	close(proxy.gate)
	if !d.waitLog("slow consumer (onSlow=disconnect)", wait) {
		t.Fatalf("no log line gives the half-open peer's close reason")
	}

	// The stalled client: its stream is still exact when it finally reads,
	// and its request was answered.
	stalled.setMode(peerFast)
	bpWait(t, floodRead, "the stalled client to account for the flood", func() bool {
		_, ok := stalled.response("stalled-req")
		return stalled.next.Load() > flood && ok
	})
	stalled.check()

	// The slow client catches up: summaries and gaps, then everything.
	slow.setMode(peerFast)
	bpWait(t, floodRead, "the slow client to account for the flood", func() bool {
		_, ok := slow.response("slow-req")
		return slow.next.Load() > flood && ok
	})
	slow.check()
	// Every queue here is sized to the whole flood, and the agent writes it
	// faster than the drain deadline: by the time the slow client's pause
	// degrades it, the flood is queued, so degrading purges it to a gap
	// (summaries need events that arrive while degraded:
	// TestBackpressureStalledMemoryBounded checks those). check() above
	// proved the accounting exact.
	gaps, sums, _ := slow.snapshot()
	if len(gaps) == 0 {
		t.Fatalf("slow client: no gap; want the purged flood reported (summaries %d)", len(sums))
	}
	var dropped uint64
	for _, s := range sums {
		dropped += s.dropped
		if s.seq == 0 || s.seq > flood || s.bytes == 0 || !strings.Contains(s.text, "é中") {
			t.Fatalf("summary %+v", s)
		}
	}
	t.Logf("slow client: %d events, %d gaps, %d summaries accounting for %d dropped", slow.events.Load(), len(gaps), len(sums), dropped)
	// What the slow client was sent is counted too (checked once it has
	// read it).
	if d.metric(t, "agentbridge_gaps_sent_total") == 0 || d.metric(t, "agentbridge_evictions_total") == 0 {
		t.Fatalf("no gaps or evictions counted: gaps %v, evictions %v",
			d.metric(t, "agentbridge_gaps_sent_total"), d.metric(t, "agentbridge_evictions_total"))
	}

	// Full delivery again once it has caught up: the stalled client leaves,
	// no connection stays degraded, and a new burst reaches the slow client
	// whole.
	stalled.c.Close()
	bpWait(t, 30*time.Second, "no degraded connection left", func() bool {
		return d.metric(t, "agentbridge_degraded_connections") == 0
	})
	const more = 2000
	eventsBefore, gapsBefore := slow.events.Load(), len(gaps)
	own.send("more", "stream", map[string]any{"sessionId": sid, "n": more, "size": 0, "every": 100})
	bpWait(t, 30*time.Second, "the slow client to get the last burst", func() bool { return slow.next.Load() > flood+more })
	slow.check()
	gaps, _, _ = slow.snapshot()
	if got := slow.events.Load() - eventsBefore; got != more || len(gaps) != gapsBefore {
		t.Fatalf("after catching up the slow client got %d of %d events and %d new gaps", got, more, len(gaps)-gapsBefore)
	}
	for _, p := range fast {
		if p.next.Load() != flood+more+1 {
			bpWait(t, 30*time.Second, p.name+" to get the last burst", func() bool { return p.next.Load() == flood+more+1 })
		}
		p.check()
	}
}

// TestBackpressureStalledMemoryBounded: stalled readers cost the daemon
// their ceilings and nothing more, however much the agent writes. Three
// degrade-policy readers and one disconnect-policy reader never read while
// the agent writes 200,000 events of 1 KiB (about 240 MB each would have
// to hold); the daemon's RSS must stay within what their ceilings allow.
func TestBackpressureStalledMemoryBounded(t *testing.T) {
	const (
		flood      = 200000
		queueItems = 1024
		queueBytes = 256 << 10
		ctrlBytes  = 256 << 10
	)
	d := bpDaemon(t, append([]string{"--summary-interval", "100ms", "--replay", "100", "--queue-items", strconv.Itoa(queueItems),
		"--queue-bytes", strconv.Itoa(queueBytes), "--control-bytes", strconv.Itoa(ctrlBytes)}, fakeAgentCmd()...)...)
	pid := d.cmd.Process.Pid
	own := bpDial(t, d.sock, "owner", 1<<16).start()
	own.call("init", "initialize", map[string]any{})
	var nw struct {
		SessionID string `json:"sessionId"`
	}
	if err := json.Unmarshal(own.call("new", "session/new", map[string]any{}), &nw); err != nil || nw.SessionID == "" {
		t.Fatalf("session/new: %v", err)
	}
	sid := nw.SessionID
	// The owner only starts the flood; it does not follow the session.
	own.call("detach", "bridge/detach", map[string]any{"sessionId": sid})

	var stalled []*bpPeer
	for i := range 3 {
		p := bpDial(t, d.sock, fmt.Sprintf("stalled%d", i), 1<<16).start()
		p.attach(sid, "degrade")
		p.send("req", "echo", map[string]any{})
		bpWait(t, 10*time.Second, p.name+"'s echo", func() bool { _, ok := p.response("req"); return ok })
		p.setMode(peerPaused)
		stalled = append(stalled, p)
	}
	strict := bpDial(t, d.sock, "strict", 1<<16).start()
	strict.attach(sid, "disconnect")
	strict.setMode(peerPaused)

	base := rssKiB(t, pid)
	rss := watchRSS(t, pid)
	start := time.Now()
	own.send("flood", "stream", map[string]any{"sessionId": sid, "n": flood, "size": 1000, "every": 100})
	bpWait(t, 2*time.Minute, "the agent's flood to end", func() bool { _, ok := own.response("flood"); return ok })
	floodTime := time.Since(start)
	// Let the summary timers run a few intervals past the flood.
	bpWait(t, 10*time.Second, "the summaries of the flood's end", func() bool {
		return d.metric(t, "agentbridge_summaries_sent_total") >= 3
	})
	peak := rss.finish()

	perConn := int64(queueBytes + ctrlBytes + queueItems*32 + 512<<10)
	live := 4*perConn + 100*4096 // plus the replay log
	bound := base + 2*live/1024 + 48<<10
	t.Logf("flood of %d MB in %v; daemon RSS %d KiB before, peak %d KiB, bound %d KiB (a reader holding it all: %d MB each)",
		flood*1200>>20, floodTime.Round(time.Millisecond), base, peak, bound, flood*1200>>20)
	if peak > bound {
		t.Fatalf("daemon RSS peaked at %d KiB, over the bound %d KiB its ceilings allow", peak, bound)
	}
	if got := d.metric(t, "agentbridge_degraded_connections"); got != 3 {
		t.Fatalf("degraded connections = %v, want the 3 stalled degrade readers", got)
	}
	if d.metric(t, `agentbridge_backpressure_closes_total{reason="slow_consumer"}`) != 1 {
		t.Fatalf("the stalled disconnect-policy reader was not closed as a slow consumer")
	}
	// A stalled reader that wakes up finds an exact stream: the events it
	// was queued, gaps for everything else, summaries.
	p := stalled[0]
	p.setMode(peerFast)
	bpWait(t, 30*time.Second, p.name+" to account for the flood", func() bool { return p.next.Load() > flood })
	p.check()
	gaps, sums, _ := p.snapshot()
	if len(gaps) == 0 || len(sums) == 0 {
		t.Fatalf("%s: %d gaps and %d summaries", p.name, len(gaps), len(sums))
	}
	// And the disconnect-policy one finds its connection closed.
	strict.setMode(peerFast)
	select {
	case <-strict.ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the stalled disconnect-policy reader's connection did not end")
	}
}

// TestRateLimit: over --rate, requests are answered -32004 with their own
// id and never reach the agent, notifications are dropped with a log line,
// answers are not refused, and a connection that keeps sending ten times
// its rate is closed.
func TestRateLimit(t *testing.T) {
	d := bpDaemon(t, append([]string{"--rate", "20/s,1MiB/s"}, fakeAgentCmd()...)...)
	c := bpDial(t, d.sock, "client", 1<<16).start()
	const n = 60
	for i := range n {
		c.send("r"+strconv.Itoa(i), "echo", map[string]any{"i": i})
	}
	ok, limited := 0, 0
	for i := range n {
		id := "r" + strconv.Itoa(i)
		var r json.RawMessage
		bpWait(t, 10*time.Second, "an answer to "+id, func() bool {
			var got bool
			r, got = c.response(id)
			return got
		})
		if string(r) == `{"error":-32004}` {
			limited++
		} else {
			ok++
		}
	}
	if ok < 20 || ok > 30 || limited+ok != n {
		t.Fatalf("%d answered, %d rate limited of %d sent at once with a burst of 20", ok, limited, n)
	}
	if got := d.metric(t, `agentbridge_rate_limited_total{kind="request"}`); int(got) != limited {
		t.Fatalf("metric counts %v refused requests, clients saw %d", got, limited)
	}
	if !d.waitLog("rate limited: refusing input", wait) {
		t.Fatal("no log line about refused input")
	}
	// Flooding: ~400 notifications/s, 20 times the rate, for up to 10s.
	b := []byte(`{"jsonrpc":"2.0","method":"$/noise","params":{}}` + "\n")
	start := time.Now()
	for time.Since(start) < 10*time.Second {
		select {
		case <-c.ended:
		default:
			c.wmu.Lock()
			c.c.Write(bytes.Repeat(b, 4))
			c.wmu.Unlock()
			time.Sleep(10 * time.Millisecond)
			continue
		}
		break
	}
	select {
	case <-c.ended:
	case <-time.After(5 * time.Second):
		t.Fatal("a connection sending 20 times its rate was not closed")
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("closed after %v; flooding is judged over 3 one-second windows", took)
	}
	if d.metric(t, `agentbridge_backpressure_closes_total{reason="flood"}`) != 1 || !d.waitLog("input flood", wait) {
		t.Fatal("the flood close was not counted and logged")
	}
}

// TestBackpressureWebSocket: over WebSocket a stalled client (role client:
// onSlow disconnect) is closed with 1013 and the reason, and a stalled
// viewer (degrade) finds an exact stream of events, gaps and summaries when
// it reads again.
func TestBackpressureWebSocket(t *testing.T) {
	const flood = 50000
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("client "+e2eClientToken+"\nviewer "+e2eViewerToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := bpDaemon(t, append([]string{"--tokens", tokens, "--summary-interval", "100ms"}, fakeAgentCmd()...)...)
	own := bpDial(t, d.sock, "owner", 1<<16).start()
	own.call("init", "initialize", map[string]any{})
	var nw struct {
		SessionID string `json:"sessionId"`
	}
	if err := json.Unmarshal(own.call("new", "session/new", map[string]any{}), &nw); err != nil || nw.SessionID == "" {
		t.Fatalf("session/new: %v", err)
	}
	sid := nw.SessionID
	own.call("detach", "bridge/detach", map[string]any{"sessionId": sid})

	cl := bpDialWS(t, d.listen, e2eClientToken, "ws-client").start()
	cl.attach(sid, "disconnect")
	cl.setMode(peerPaused)
	vw := bpDialWS(t, d.listen, e2eViewerToken, "ws-viewer").start()
	vw.attach(sid, "")
	vw.setMode(peerPaused)

	// In 100 bursts: the breaker that degrades the viewer counts drain
	// attempts (three unhealthy in a row), and one burst the loop drains in
	// a couple of attempts (it did so under load, in either agent stdio
	// mode) would leave the viewer only evicted from, never degraded.
	own.send("flood", "stream", map[string]any{"sessionId": sid, "n": flood, "size": 100, "every": 500, "pauseUs": 2000})
	bpWait(t, 30*time.Second, "the client's close", func() bool {
		return d.metric(t, `agentbridge_backpressure_closes_total{reason="slow_consumer"}`) == 1
	})
	// The close frame waits behind what the client's socket and gnet's
	// buffer already hold; a peer that reads again within the close
	// timeout gets it, one that never does is cut off at its end.
	cl.setMode(peerFast)
	select {
	case <-cl.ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the stalled WebSocket client's stream did not end")
	}
	cl.mu.Lock()
	code, reason := cl.closeCode, cl.closeReason
	cl.mu.Unlock()
	if code != ws.CloseTryAgainLater || !strings.Contains(reason, "slow consumer") {
		t.Fatalf("close %d %q, want 1013 with the reason", code, reason)
	}
	cl.check()

	bpWait(t, time.Minute, "the flood to end", func() bool { _, ok := own.response("flood"); return ok })
	if got := d.metric(t, "agentbridge_degraded_connections"); got != 1 {
		t.Fatalf("degraded connections = %v, want the viewer", got)
	}
	vw.setMode(peerFast)
	deadline := time.Now().Add(30 * time.Second)
	for vw.next.Load() <= flood {
		if time.Now().After(deadline) {
			gaps, sums, rerr := vw.snapshot()
			t.Fatalf("the viewer accounted for the flood up to %d only (%d events, %d gaps, %d summaries, read error %v, degraded %v)",
				vw.next.Load()-1, vw.events.Load(), len(gaps), len(sums), rerr, d.metric(t, "agentbridge_degraded_connections"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	vw.check()
	gaps, sums, _ := vw.snapshot()
	if len(gaps) == 0 || len(sums) == 0 {
		t.Fatalf("viewer: %d gaps, %d summaries", len(gaps), len(sums))
	}
}

// TestCatchupHalfSpeedOwner: an owner (a client, onSlow left to its
// default, catchup) that reads at half the speed the agent writes gets all
// of a 200,000-event flood of ~200-byte events, in order, with no gap, no
// summary and no disconnect: once behind it is fed from the session log at
// its own pace, and the default --replay-memory holds the whole flood.
func TestCatchupHalfSpeedOwner(t *testing.T) {
	const (
		calib = 20000
		flood = 200000
	)
	d := bpDaemon(t, fakeAgentCmd()...)
	own, sid, hello := halfSpeedOwner(t, d, calib)
	if !bytes.Contains(hello, []byte(`"onSlow":"catchup"`)) {
		t.Fatalf("hello: %s; a client's default onSlow must be catchup", hello)
	}
	start := time.Now()
	own.send("flood", "stream", map[string]any{"sessionId": sid, "n": flood, "size": 0, "every": 1000})
	readThrough(t, own, calib+flood)
	own.check()
	gaps, sums, rerr := own.snapshot()
	if len(gaps) > 0 || len(sums) > 0 || rerr != nil {
		t.Fatalf("owner: gaps %v, summaries %v, read error %v", gaps, sums, rerr)
	}
	if got := own.events.Load(); got != calib+flood {
		t.Fatalf("owner got %d events, want %d", got, calib+flood)
	}
	if n := d.metric(t, "agentbridge_hub_lagged_total"); n < 1 {
		t.Fatalf("the owner never fell behind (agentbridge_hub_lagged_total %v): the test proves nothing", n)
	}
	t.Logf("flood read in %v at half speed; fell behind %v times", time.Since(start).Round(time.Millisecond), d.metric(t, "agentbridge_hub_lagged_total"))
	// Still connected and live: a request is answered.
	own.setMode(peerFast)
	own.call("after", "echo", map[string]any{})
	if n := d.metric(t, "agentbridge_closes_total"); n != 0 {
		t.Fatalf("the daemon closed %v connections", n)
	}
}

// TestStallTimeout: a peer that stops reading entirely while the agent
// streams is closed after --stall-timeout (1013, reason stalled), on the
// Unix socket and over WebSocket, whatever its onSlow (here the client's
// default, catchup, which would otherwise wait on it forever at the cost
// of a cursor). A WebSocket peer that reads again gets the close frame
// after whole frames.
func TestStallTimeout(t *testing.T) {
	const stall = 2 * time.Second
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("client "+e2eClientToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := bpDaemon(t, append([]string{"--tokens", tokens, "--stall-timeout", stall.String()}, fakeAgentCmd()...)...)
	own := bpDial(t, d.sock, "owner", 1<<16).start()
	own.call("init", "initialize", map[string]any{})
	var nw struct {
		SessionID string `json:"sessionId"`
	}
	if err := json.Unmarshal(own.call("new", "session/new", map[string]any{}), &nw); err != nil || nw.SessionID == "" {
		t.Fatalf("session/new: %v", err)
	}
	sid := nw.SessionID
	own.call("detach", "bridge/detach", map[string]any{"sessionId": sid})

	ux := bpDial(t, d.sock, "unix-stalled", 1<<12).start()
	ux.attach(sid, "")
	ux.setMode(peerPaused)
	wsc := bpDialWS(t, d.listen, e2eClientToken, "ws-stalled").start()
	wsc.attach(sid, "")
	wsc.setMode(peerPaused)

	start := time.Now()
	// Enough to fill both sockets' kernel buffers many times over.
	own.send("flood", "stream", map[string]any{"sessionId": sid, "n": 100000, "size": 200, "every": 500})
	bpWait(t, 30*time.Second, "both stalled peers closed", func() bool {
		return d.metric(t, `agentbridge_backpressure_closes_total{reason="stalled"}`) == 2
	})
	if took := time.Since(start); took < stall {
		t.Fatalf("closed after %v, before the stall timeout %v", took, stall)
	}
	if !d.waitLog("reason=stalled", wait) {
		t.Fatal("no log line names the stall")
	}
	if n := d.metric(t, `agentbridge_closes_total{reason="stalled",transport="unix"}`); n != 1 {
		t.Fatalf("unix stall closes %v", n)
	}
	if n := d.metric(t, `agentbridge_closes_total{reason="stalled",transport="ws"}`); n != 1 {
		t.Fatalf("ws stall closes %v", n)
	}
	wsc.setMode(peerFast)
	select {
	case <-wsc.ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the stalled WebSocket client's stream did not end")
	}
	wsc.check()
	wsc.mu.Lock()
	code, reason := wsc.closeCode, wsc.closeReason
	wsc.mu.Unlock()
	if code != ws.CloseTryAgainLater || !strings.Contains(reason, "stalled") {
		t.Fatalf("close %d %q, want 1013 naming the stall", code, reason)
	}
	// The agent and the owner were never held up.
	bpWait(t, time.Minute, "the flood to end", func() bool { _, ok := own.response("flood"); return ok })
}

// TestWSRequestsBeforeReading: a WebSocket client that writes 10,000
// requests before reading any answer gets every answer, each once, in
// whole frames: while its answers pile up unread its requests wait in its
// input instead of overflowing its queue. With --max-inflight below that,
// each request is answered, a result or -32004.
func TestWSRequestsBeforeReading(t *testing.T) {
	const n = 10000
	for _, inflight := range []int{n, 100} {
		t.Run(fmt.Sprintf("max-inflight=%d", inflight), func(t *testing.T) {
			tokens := filepath.Join(t.TempDir(), "tokens")
			if err := os.WriteFile(tokens, []byte("client "+e2eClientToken+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"--tokens", tokens, "--max-inflight", strconv.Itoa(inflight)}
			d := bpDaemon(t, append(args, fakeAgentCmd()...)...)
			p := bpDialWS(t, d.listen, e2eClientToken, "ws-writer")
			p.setMode(peerPaused)
			p.start()
			var batch []byte
			for i := 0; i < n; i++ {
				b := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":"r%d","method":"echo","params":{"i":%d,"pad":"%s"}}`, i, i, strings.Repeat("x", 1000))
				batch = ws.AppendMaskedFrame(batch, true, ws.OpText, [4]byte{1, 2, 3, 4}, b)
				if len(batch) > 64<<10 || i == n-1 {
					if err := p.write(batch); err != nil {
						t.Fatalf("write request %d: %v", i, err)
					}
					batch = batch[:0]
				}
			}
			time.Sleep(500 * time.Millisecond) // not synchronisation: give the daemon time to pile answers up unread
			p.setMode(peerFast)
			bpWait(t, time.Minute, "every answer", func() bool {
				p.mu.Lock()
				defer p.mu.Unlock()
				return len(p.responses) == n || p.readErr != nil || p.err != nil
			})
			p.check()
			_, _, rerr := p.snapshot()
			if rerr != nil {
				t.Fatalf("stream ended: %v", rerr)
			}
			refused := 0
			for i := 0; i < n; i++ {
				r, ok := p.response(fmt.Sprintf("r%d", i))
				switch {
				case !ok:
					t.Fatalf("request r%d not answered", i)
				case bytes.Equal(r, []byte(`{"error":-32004}`)) && inflight < n:
					refused++
				case bytes.HasPrefix(r, []byte(`{"error"`)):
					t.Fatalf("request r%d: %s", i, r)
				}
			}
			if n := d.metric(t, "agentbridge_closes_total"); n != 0 {
				t.Fatalf("the daemon closed %v connections", n)
			}
			t.Logf("%d answers, %d of them -32004", n, refused)
		})
	}
}

// TestStalledBesideReaders: 1,000 clients that never read cost the
// readers beside them nothing they can see: 100 readers get a flood
// whole, in order; the stalled ones cost the daemon a bounded amount each
// (one write pass handed to gnet, a cursor), measured and bounded here.
func TestStalledBesideReaders(t *testing.T) {
	const (
		nStalled = 1000
		nReaders = 100
		flood    = 20000
	)
	d := bpDaemon(t, fakeAgentCmd()...)
	own, sid, _ := envelopedOwner(t, d)
	readers := make([]*bpPeer, nReaders)
	for i := range readers {
		readers[i] = bpDial(t, d.sock, fmt.Sprintf("reader%d", i), 1<<16).start()
		readers[i].attach(sid, "")
	}
	pid := d.cmd.Process.Pid
	base := rssKiB(t, pid)
	stalled := make([]*bpPeer, nStalled)
	for i := range stalled {
		stalled[i] = bpDial(t, d.sock, fmt.Sprintf("stalled%d", i), 1<<12).start()
		stalled[i].attach(sid, "")
		stalled[i].setMode(peerPaused)
	}
	idle := rssKiB(t, pid)
	rss := watchRSS(t, pid)
	start := time.Now()
	own.send("flood", "stream", map[string]any{"sessionId": sid, "n": flood, "size": 200, "every": 500})
	deadline := time.Now().Add(3 * time.Minute)
	for _, p := range append([]*bpPeer{own}, readers...) {
		for p.next.Load() <= flood {
			p.check()
			if time.Now().After(deadline) {
				t.Fatalf("%s read only up to seq %d of %d", p.name, p.next.Load()-1, flood)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	took := time.Since(start)
	peak := rss.finish()
	for _, p := range append([]*bpPeer{own}, readers...) {
		p.check()
		gaps, sums, rerr := p.snapshot()
		if len(gaps) > 0 || len(sums) > 0 || rerr != nil {
			t.Fatalf("%s: gaps %v, summaries %v, read error %v", p.name, gaps, sums, rerr)
		}
	}
	idlePer := float64(idle-base) / nStalled
	floodPer := float64(peak-idle) / nStalled
	t.Logf("flood of %d events to %d readers beside %d stalled clients in %v; RSS %d KiB with the readers, %d with the stalled ones idle (%.1f KiB each), peak %d (%.1f KiB more each during the flood)",
		flood, nReaders+1, nStalled, took.Round(time.Millisecond), base, idle, idlePer, peak, floodPer)
	// Each stalled client may hold one 64 KiB write pass in gnet's buffer
	// and a few queued events (what its kernel buffer takes is not the
	// daemon's); the flood's events are shared (~0.5 KiB each, raw and
	// enveloped, in the log); twice that for the collector.
	bound := idle + 2*(nStalled*(64+16)+flood/2) + 32<<10
	if peak > bound {
		t.Fatalf("RSS peaked at %d KiB, over the bound %d KiB", peak, bound)
	}
	if n := d.metric(t, "agentbridge_closes_total"); n != 0 {
		t.Fatalf("the daemon closed %v connections", n)
	}
	// Every stalled client is fed from the log (a cursor), the readers
	// are live again: the gauge operators (and bench stall) read.
	bpWait(t, 10*time.Second, "agentbridge_connections_catching_up to count the stalled clients", func() bool {
		return d.metric(t, "agentbridge_connections_catching_up") == nStalled
	})
}

// envelopedOwner connects an owner with envelopes on, opens a session for
// it and watches it. It returns the owner, the session and the answer to
// its bridge/hello.
func envelopedOwner(t *testing.T, d *daemon) (*bpPeer, string, []byte) {
	t.Helper()
	own := bpDial(t, d.sock, "owner", 1<<16).start()
	hello := own.call("hello", "bridge/hello", map[string]any{"envelope": true})
	own.call("init", "initialize", map[string]any{})
	var nw struct {
		SessionID string `json:"sessionId"`
	}
	if err := json.Unmarshal(own.call("new", "session/new", map[string]any{}), &nw); err != nil || nw.SessionID == "" {
		t.Fatalf("session/new: %v", err)
	}
	own.watch(nw.SessionID)
	return own, nw.SessionID, hello
}

// halfSpeedOwner opens a session on d for a new owner (envelopes on),
// measures the agent's speed with a calib-event flood read at full speed,
// then sets the owner to read at half that. It returns the owner, the
// session and the answer to its bridge/hello.
func halfSpeedOwner(t *testing.T, d *daemon, calib int) (*bpPeer, string, []byte) {
	t.Helper()
	own, sid, hello := envelopedOwner(t, d)
	start := time.Now()
	own.send("calib", "stream", map[string]any{"sessionId": sid, "n": calib, "size": 0, "every": 1000})
	bpWait(t, time.Minute, "the calibration flood", func() bool { return own.next.Load() > uint64(calib) })
	rate := int64(float64(calib) / time.Since(start).Seconds())
	bpWait(t, 10*time.Second, "the calibration answered", func() bool { _, ok := own.response("calib"); return ok })
	own.rate.Store(max(rate/2, 1000))
	own.setMode(peerRated)
	t.Logf("agent and reader at full speed: %d events/s; the owner now reads %d events/s", rate, own.rate.Load())
	return own, sid, hello
}

// readThrough waits (at most 4 minutes) until p has read every seq up to
// total, checking its stream as it goes.
func readThrough(t *testing.T, p *bpPeer, total int) {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	for p.next.Load() <= uint64(total) {
		p.check()
		if _, _, rerr := p.snapshot(); rerr != nil {
			t.Fatalf("%s's stream ended at seq %d: %v", p.name, p.next.Load()-1, rerr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s read only up to seq %d of %d", p.name, p.next.Load()-1, total)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
