package connect

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/agentbridge/agentbridge/codec/ndjson"
)

// fakeUnix is a scripted stand-in for the daemon's Unix socket: each test
// accepts the shim's connections and plays the daemon's side by hand.
type fakeUnix struct {
	t     testing.TB
	path  string
	ln    net.Listener
	conns chan *fakeConn
}

func newFakeUnix(t testing.TB) *fakeUnix {
	t.Helper()
	dir, err := os.MkdirTemp("", "abc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeUnix{t: t, path: filepath.Join(dir, "d.sock"), conns: make(chan *fakeConn, 8)}
	if f.ln, err = net.Listen("unix", f.path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.ln.Close() })
	go func() {
		for {
			c, err := f.ln.Accept()
			if err != nil {
				return
			}
			fc := &fakeConn{t: t, c: c, msgs: make(chan []byte, 1024)}
			go fc.read()
			t.Cleanup(func() { c.Close() })
			f.conns <- fc
		}
	}()
	return f
}

func (f *fakeUnix) url() string { return "unix://" + f.path }

// accept waits for the shim's next connection.
func (f *fakeUnix) accept() *fakeConn {
	f.t.Helper()
	select {
	case c := <-f.conns:
		return c
	case <-time.After(wait):
		f.t.Fatal("the shim did not connect")
	}
	return nil
}

type fakeConn struct {
	t    testing.TB
	c    net.Conn
	msgs chan []byte
}

func (c *fakeConn) read() {
	defer close(c.msgs)
	r := bufio.NewReader(c.c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		c.msgs <- bytes.TrimSuffix(line, []byte("\n"))
	}
}

// fmsg is a message as the fake reads it.
type fmsg struct {
	raw    []byte
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params map[string]any  `json:"params"`
	Result json.RawMessage `json:"result"`
}

func (c *fakeConn) next() fmsg {
	c.t.Helper()
	select {
	case b, ok := <-c.msgs:
		if !ok {
			c.t.Fatal("the shim closed the connection")
		}
		m := fmsg{raw: b}
		if err := json.Unmarshal(b, &m); err != nil {
			c.t.Fatalf("the shim sent %q: %v", b, err)
		}
		return m
	case <-time.After(wait):
		c.t.Fatal("nothing from the shim")
	}
	return fmsg{}
}

func (c *fakeConn) send(lines ...string) {
	c.t.Helper()
	for _, l := range lines {
		if _, err := io.WriteString(c.c, l+"\n"); err != nil {
			c.t.Fatal(err)
		}
	}
}

// hello reads the shim's bridge/hello and answers it with resume; it
// returns the resume key.
func (c *fakeConn) hello(resume string) string {
	c.t.Helper()
	m := c.next()
	if m.Method != "bridge/hello" || m.Params["envelope"] != true || !strings.HasPrefix(string(m.ID), `"`+ownPrefix) {
		c.t.Fatalf("want our bridge/hello first, got %s", m.raw)
	}
	key, _ := m.Params["resume"].(string)
	if len(key) != 43 {
		c.t.Fatalf("resume key %q: want 32 random bytes, base64url", key)
	}
	c.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{"version":"fake","connectionId":1,"role":"client","envelope":true,"onSlow":"disconnect","resume":%s}}`, m.ID, resume))
	return key
}

func (c *fakeConn) cut() { c.c.Close() }

// stdio runs Run with piped stdio, keeping stdout's raw lines.
type stdio struct {
	t      *testing.T
	in     *io.PipeWriter
	lines  chan []byte
	result chan error
}

func startStdio(t *testing.T, o Options) *stdio {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &stdio{t: t, in: inW, lines: make(chan []byte, 1024), result: make(chan error, 1)}
	o.Stdin, o.Stdout = inR, outW
	o.Logger = slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		s.result <- Run(ctx, o)
		outW.Close()
	}()
	go func() {
		defer close(s.lines)
		r := bufio.NewReader(outR)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			s.lines <- bytes.TrimSuffix(line, []byte("\n"))
		}
	}()
	return s
}

func (s *stdio) send(lines ...string) {
	s.t.Helper()
	for _, l := range lines {
		if _, err := io.WriteString(s.in, l+"\n"); err != nil {
			s.t.Fatal(err)
		}
	}
}

func (s *stdio) next() []byte {
	s.t.Helper()
	select {
	case b, ok := <-s.lines:
		if !ok {
			s.t.Fatalf("stdout ended: %v", <-s.result)
		}
		return b
	case <-time.After(wait):
		s.t.Fatal("nothing on stdout")
	}
	return nil
}

// expect reads the next stdout line and checks it is want, byte for byte.
func (s *stdio) expect(want string) {
	s.t.Helper()
	if got := s.next(); string(got) != want {
		s.t.Fatalf("stdout:\n got %s\nwant %s", got, want)
	}
}

// expectError reads the next stdout line: an error with id and code.
func (s *stdio) expectError(id string, code int) {
	s.t.Helper()
	b := s.next()
	var m struct {
		ID    json.RawMessage `json:"id"`
		Error *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &m) != nil || string(m.ID) != id || m.Error == nil || m.Error.Code != code || m.Error.Message == "" {
		s.t.Fatalf("stdout %s: want error %d for id %s", b, code, id)
	}
}

func (s *stdio) done() error {
	s.t.Helper()
	select {
	case err := <-s.result:
		return err
	case <-time.After(wait):
		s.t.Fatal("Run did not return")
	}
	return nil
}

const fresh = `{"resumed":false,"received":0,"pending":[]}`

func req(id, method string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":"%s","params":{}}`, id, method)
}

func answer(id json.RawMessage, result string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":%s}`, id, result)
}

// TestResumeSettlesRequestsInFlight: of three requests in flight at the
// drop, the daemon still holds one (its answer comes), answered one on the
// lost connection (-32003), and never read the third (sent again).
func TestResumeSettlesRequestsInFlight(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	key := c1.hello(fresh)
	s.send(req("1", "a"), req(`"two"`, "b"), req("3", "c"))
	for _, want := range []string{"a", "b", "c"} {
		if m := c1.next(); m.Method != want {
			t.Fatalf("got %s, want %s", m.raw, want)
		}
	}
	c1.cut()
	c2 := d.accept()
	if k := c2.hello(`{"resumed":true,"received":3,"pending":["two"]}`); k != key {
		t.Fatalf("the key changed across reconnects: %q then %q", key, k)
	}
	s.expectError("1", -32003)
	if m := c2.next(); m.Method != "c" || string(m.ID) != "3" {
		t.Fatalf("want request 3 sent again, got %s", m.raw)
	}
	c2.send(answer(json.RawMessage(`"two"`), `"b"`), answer(json.RawMessage("3"), `"c"`))
	s.expect(`{"jsonrpc":"2.0","id":"two","result":"b"}`)
	s.expect(`{"jsonrpc":"2.0","id":3,"result":"c"}`)
	s.in.Close()
	if err := s.done(); err != nil {
		t.Fatal(err)
	}
}

// TestResumeForgottenFailsWrittenRequests: a daemon that does not know the
// key any more (restarted) gets nothing sent again; every request written
// on the lost connection fails, and one the client sent while the shim was
// reconnecting goes out.
func TestResumeForgottenFailsWrittenRequests(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(req("1", "a"), `{"jsonrpc":"2.0","method":"note"}`, req("2", "b"))
	for range 3 {
		c1.next()
	}
	c1.cut()
	c2 := d.accept()
	// The shim is waiting for our hello answer: this one is queued.
	s.send(req("3", "c"))
	c2.hello(fresh)
	s.expectError("1", -32003)
	s.expectError("2", -32003)
	if m := c2.next(); string(m.ID) != "3" {
		t.Fatalf("want request 3, got %s", m.raw)
	}
	c2.send(answer(json.RawMessage("3"), `"c"`))
	s.expect(`{"jsonrpc":"2.0","id":3,"result":"c"}`)
	s.in.Close()
	if err := s.done(); err != nil {
		t.Fatal(err)
	}
}

// event is the daemon's envelope of an agent notification.
func event(sid string, seq int) (env, body string) {
	body = fmt.Sprintf(`{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":%q,"update":{"text":"%d é中 \"q\" \\u2028"}}}`, sid, seq)
	return fmt.Sprintf(`{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":%q,"seq":%d,"message":%s}}`, sid, seq, body), body
}

// TestResumeReattachesWithoutDuplicates: events arrive unwrapped, byte for
// byte; after a drop the shim re-attaches from the last seq it wrote, and
// what the daemon sends again (events, an overlapping gap) is dropped or
// trimmed, so stdout carries each seq once. The status the session reached
// meanwhile is announced.
func TestResumeReattachesWithoutDuplicates(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(req("1", "session/new"))
	m := c1.next()
	c1.send(answer(m.ID, `{"sessionId":"S"}`))
	s.expect(`{"jsonrpc":"2.0","id":1,"result":{"sessionId":"S"}}`)
	for seq := 1; seq <= 3; seq++ {
		env, body := event("S", seq)
		c1.send(env)
		s.expect(body)
	}
	c1.send(`{"jsonrpc":"2.0","method":"bridge/status","params":{"sessionId":"S","status":"running"}}`)
	s.expect(`{"jsonrpc":"2.0","method":"bridge/status","params":{"sessionId":"S","status":"running"}}`)
	c1.cut()

	c2 := d.accept()
	c2.hello(`{"resumed":true,"received":2,"pending":[]}`)
	at := c2.next()
	if at.Method != "bridge/attach" || at.Params["sessionId"] != "S" || at.Params["since"] != float64(3) || !strings.HasPrefix(string(at.ID), `"`+ownPrefix) {
		t.Fatalf("want bridge/attach S since 3, got %s", at.raw)
	}
	c2.send(answer(at.ID, `{"sessionId":"S","seq":6,"status":"awaiting_hitl","replayed":3}`))
	for _, seq := range []int{2, 3} {
		env, _ := event("S", seq)
		c2.send(env)
	}
	c2.send(`{"jsonrpc":"2.0","method":"bridge/gap","params":{"sessionId":"S","fromSeq":2,"toSeq":4,"reason":"evicted from the replay log"}}`)
	env5, body5 := event("S", 5)
	env6, body6 := event("S", 6)
	c2.send(env5, env5, env6)
	s.expect(`{"jsonrpc":"2.0","method":"bridge/status","params":{"sessionId":"S","status":"awaiting_hitl"}}`)
	gap := s.next()
	var g struct {
		Method string
		Params struct {
			SessionID      string `json:"sessionId"`
			FromSeq, ToSeq uint64
			Reason         string
		}
	}
	if json.Unmarshal(gap, &g) != nil || g.Method != "bridge/gap" || g.Params.SessionID != "S" || g.Params.FromSeq != 4 || g.Params.ToSeq != 4 || g.Params.Reason != "evicted from the replay log" {
		t.Fatalf("want the gap trimmed to 4..4, got %s", gap)
	}
	s.expect(body5)
	s.expect(body6)
	s.in.Close()
	if err := s.done(); err != nil {
		t.Fatal(err)
	}
}

// TestResumeAgentRequestAnsweredOnce: the client answered a permission
// request, the answer was lost in the drop; after the resume the daemon
// delivers the request again. The client does not see it twice: the shim
// sends its answer again instead.
func TestResumeAgentRequestAnsweredOnce(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(req("1", "session/new"))
	c1.send(answer(c1.next().ID, `{"sessionId":"S"}`))
	s.next()
	perm := `{"jsonrpc":"2.0","id":7,"method":"session/request_permission","params":{"sessionId":"S","options":[]}}`
	c1.send(perm)
	s.expect(perm)
	reply := `{"jsonrpc":"2.0","id":7,"result":{"outcome":{"outcome":"selected","optionId":"allow"}}}`
	s.send(reply)
	if m := c1.next(); string(m.raw) != reply {
		t.Fatalf("got %s", m.raw)
	}
	c1.cut()

	c2 := d.accept()
	c2.hello(`{"resumed":true,"received":2,"pending":[]}`) // the answer (3rd) was not read
	c2.send(perm)                                          // delivered again to the new owner
	at := c2.next()
	if at.Method != "bridge/attach" {
		t.Fatalf("want bridge/attach, got %s", at.raw)
	}
	c2.send(answer(at.ID, `{"sessionId":"S","seq":0,"status":"awaiting_hitl","replayed":0}`))
	if m := c2.next(); string(m.raw) != reply {
		t.Fatalf("want the answer sent again, got %s", m.raw)
	}
	c2.send(`{"jsonrpc":"2.0","method":"marker"}`)
	s.expect(`{"jsonrpc":"2.0","method":"bridge/status","params":{"sessionId":"S","status":"awaiting_hitl"}}`)
	s.expect(`{"jsonrpc":"2.0","method":"marker"}`)
	s.in.Close()
	if err := s.done(); err != nil {
		t.Fatal(err)
	}
}

// TestReattachUnknownSession: a session the daemon no longer has is
// reported closed, and not attached again.
func TestReattachUnknownSession(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(req("1", "session/new"))
	c1.send(answer(c1.next().ID, `{"sessionId":"S"}`))
	s.next()
	c1.cut()
	c2 := d.accept()
	c2.hello(fresh)
	at := c2.next()
	c2.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"error":{"code":-32002,"message":"unknown session \"S\""}}`, at.ID))
	s.expect(`{"jsonrpc":"2.0","method":"bridge/status","params":{"sessionId":"S","status":"closed"}}`)
	c2.cut()
	c3 := d.accept()
	c3.hello(fresh)
	s.send(req("2", "x"))
	if m := c3.next(); m.Method != "x" {
		t.Fatalf("want no attach of the closed session, got %s", m.raw)
	}
}

// TestStdinEOFWaitsAcrossReconnect: stdin ends with a request in flight;
// the connection drops; the answer arrives on the resumed connection and
// only then does the shim exit.
func TestStdinEOFWaitsAcrossReconnect(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(req("1", "slow"))
	s.in.Close()
	c1.next()
	c1.cut()
	c2 := d.accept()
	c2.hello(`{"resumed":true,"received":2,"pending":[1]}`)
	c2.send(answer(json.RawMessage("1"), `"done"`))
	s.expect(`{"jsonrpc":"2.0","id":1,"result":"done"}`)
	if err := s.done(); err != nil {
		t.Fatal(err)
	}
}

// TestRetryForGivesUp: the daemon is gone for longer than RetryFor: Run
// fails with ErrGaveUp, and the request in flight is failed, not forgotten.
func TestRetryForGivesUp(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url(), RetryFor: 300 * time.Millisecond})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(req("1", "slow"))
	c1.next()
	d.ln.Close()
	c1.cut()
	s.expectError("1", -32003)
	err := s.done()
	var e *Error
	if !errors.Is(err, ErrGaveUp) || !errors.As(err, &e) || !strings.Contains(e.Msg, "could not reconnect for 300ms") {
		t.Fatalf("Run: %v", err)
	}
}

// TestReservedIDs: the shim's id space is its own.
func TestReservedIDs(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(req(`"agentbridge-connect-1"`, "x"), req("2", "y"))
	s.expectError(`"agentbridge-connect-1"`, -32600)
	if m := c1.next(); m.Method != "y" {
		t.Fatalf("the reserved id reached the daemon: %s", m.raw)
	}
}

// TestClientHelloAndSnapshot: the stdio client's own bridge/hello decides
// whether it gets envelopes (the shim's connection always has them), and a
// snapshot's recent events come as the client would get them.
func TestClientHelloAndSnapshot(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	env, body := event("S", 1)
	s.send(req("1", "bridge/snapshot"))
	c1.send(answer(c1.next().ID, `{"sessionId":"S","status":"idle","seq":1,"pending":[],"recent":[`+env+`]}`))
	var snap struct {
		Result struct {
			Recent []json.RawMessage `json:"recent"`
		} `json:"result"`
	}
	if b := s.next(); json.Unmarshal(b, &snap) != nil || len(snap.Result.Recent) != 1 || string(snap.Result.Recent[0]) != body {
		t.Fatalf("snapshot %s: want the recent event unwrapped", b)
	}
	c1.send(env)
	s.expect(body)

	s.send(`{"jsonrpc":"2.0","id":2,"method":"bridge/hello","params":{"envelope":true,"onSlow":"degrade"}}`)
	h := c1.next()
	if _, has := h.Params["envelope"]; has || h.Params["onSlow"] != "degrade" {
		t.Fatalf("forwarded hello %s: want onSlow without envelope", h.raw)
	}
	c1.send(answer(h.ID, `{"version":"fake","connectionId":1,"role":"client","envelope":true,"onSlow":"degrade"}`))
	var hr struct {
		Result map[string]any `json:"result"`
	}
	if b := s.next(); json.Unmarshal(b, &hr) != nil || hr.Result["envelope"] != true || hr.Result["onSlow"] != "degrade" {
		t.Fatalf("hello answer %s", b)
	}
	env2, _ := event("S", 2)
	c1.send(env2)
	s.expect(env2)
	// The next hello says onSlow again.
	c1.cut()
	c2 := d.accept()
	m := c2.next()
	if m.Method != "bridge/hello" || m.Params["onSlow"] != "degrade" || m.Params["envelope"] != true {
		t.Fatalf("hello after reconnect %s", m.raw)
	}
}

// TestSessionLoadCursor: before forwarding session/load the shim learns
// the session's seq, so a drop before the first event re-attaches from
// there.
func TestSessionLoadCursor(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(`{"jsonrpc":"2.0","id":1,"method":"session/load","params":{"sessionId":"L","cwd":"/"}}`)
	q := c1.next()
	if q.Method != "bridge/sessions" {
		t.Fatalf("want bridge/sessions before the load, got %s", q.raw)
	}
	c1.send(answer(q.ID, `{"sessions":[{"sessionId":"L","status":"closed","seq":40,"clients":0}]}`))
	if m := c1.next(); m.Method != "session/load" {
		t.Fatalf("want the load, got %s", m.raw)
	}
	c1.cut()
	c2 := d.accept()
	c2.hello(`{"resumed":true,"received":3,"pending":[1]}`)
	at := c2.next()
	if at.Method != "bridge/attach" || at.Params["sessionId"] != "L" || at.Params["since"] != float64(40) {
		t.Fatalf("want bridge/attach L since 40, got %s", at.raw)
	}
}

// TestProbeConfirmsWhatWasRead: a client that sends only notifications
// gets a bridge/hello {} probe after every ackEvery of them; its answer
// frees the copies kept for sending again, and after a drop only what the
// daemon did not read goes out again.
func TestProbeConfirmsWhatWasRead(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	const n = 300
	for i := range n {
		s.send(fmt.Sprintf(`{"jsonrpc":"2.0","method":"note","params":{"i":%d}}`, i))
	}
	// Positions on the connection: our hello is 1, note i is i+2 until
	// the probe.
	probeAt, pos := -1, 2
	var probe json.RawMessage
	for i := 0; i < n; pos++ {
		m := c1.next()
		if m.Method == "bridge/hello" {
			if probe != nil || len(m.Params) != 0 {
				t.Fatalf("unexpected hello %s", m.raw)
			}
			probe, probeAt = m.ID, pos
			continue
		}
		if m.Params["i"] != float64(i) {
			t.Fatalf("got %s, want note %d", m.raw, i)
		}
		i++
	}
	if probeAt != ackEvery+2 {
		t.Fatalf("probe was message %d, want %d", probeAt, ackEvery+2)
	}
	c1.send(answer(probe, `{"version":"fake"}`))
	// Proof that the probe's answer was handled: the next request goes out.
	s.send(req("1", "x"))
	c1.next()
	c1.cut()
	c2 := d.accept()
	// The daemon read up to the probe: the notes after it and request 1 go
	// out again, in order.
	c2.hello(fmt.Sprintf(`{"resumed":true,"received":%d,"pending":[]}`, probeAt))
	for i := probeAt - 2; i < n; i++ {
		if m := c2.next(); m.Params["i"] != float64(i) {
			t.Fatalf("got %s, want note %d", m.raw, i)
		}
	}
	if m := c2.next(); m.Method != "x" {
		t.Fatalf("got %s", m.raw)
	}
}

func TestParseEvent(t *testing.T) {
	env, body := event("S", 42)
	for _, tc := range []struct {
		name string
		in   string
	}{
		{"daemon layout", env},
		{"trailing newline", env + "\n"},
		{"reordered", `{"method":"bridge/event","jsonrpc":"2.0","params":{"seq":42,"message":` + body + `,"sessionId":"S"}}`},
		{"escaped session", `{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":"\u0053","seq":42,"message":` + body + `}}`},
		{"spaces", `{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":"S","seq":42,"message": ` + body + ` }}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sid, seq, msg, ok := parseEvent([]byte(tc.in))
			if !ok || sid != "S" || seq != 42 || string(msg) != body {
				t.Fatalf("got %q %d %q %v", sid, seq, msg, ok)
			}
		})
	}
	for _, bad := range []string{
		`{"jsonrpc":"2.0","method":"bridge/gap","params":{"sessionId":"S","seq":1,"message":{}}}`,
		`{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":"S","seq":1}}`,
		`{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":"S","seq":1,"message":{"a":1},"x":2}`,
		`not json`,
	} {
		if _, _, _, ok := parseEvent([]byte(bad)); ok {
			t.Errorf("parseEvent(%s) ok", bad)
		}
	}
}

// FuzzParseEvent: for any agent message, the daemon's envelope unwraps to
// the message's exact bytes, by the fast path and by decoding alike.
func FuzzParseEvent(f *testing.F) {
	_, body := event("S", 1)
	f.Add("S", uint64(1), body)
	f.Add("s-\u00e9", uint64(1<<63), `{"jsonrpc":"2.0","method":"x","params":{"sessionId":"a\"}}"}}`)
	f.Add("", uint64(0), `{}`)
	f.Fuzz(func(t *testing.T, sid string, seq uint64, msg string) {
		if !json.Valid([]byte(msg)) || !utf8.ValidString(msg) || !utf8.ValidString(sid) || sid == "" {
			t.Skip()
		}
		sidJSON, _ := json.Marshal(sid)
		var compact bytes.Buffer
		_ = json.Compact(&compact, []byte(msg))
		env := fmt.Sprintf(`{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":%s,"seq":%d,"message":%s}}`, sidJSON, seq, compact.Bytes())
		gs, gq, gm, ok := parseEvent([]byte(env))
		if !ok || gs != sid || gq != seq || !bytes.Equal(gm, compact.Bytes()) {
			t.Fatalf("parseEvent(%s) = %q %d %q %v", env, gs, gq, gm, ok)
		}
	})
}

func TestIDKey(t *testing.T) {
	if idKey([]byte(`"a\u0062"`)) != idKey([]byte(`"ab"`)) {
		t.Fatal("escaped and plain string ids differ")
	}
	if idKey([]byte(`1`)) == idKey([]byte(`"1"`)) {
		t.Fatal("number and string ids are the same key")
	}
}

// TestRefusedAtHello: a daemon that refuses the peer says why and closes;
// the shim shows the refusal on stdout and stops.
func TestRefusedAtHello(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.next()
	refusal := `{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"uid 5 is not allowed on this socket"}}`
	c1.send(refusal)
	c1.cut()
	s.expect(refusal)
	if err := s.done(); err == nil || !isRefusal(err) || !strings.Contains(err.Error(), "uid 5 is not allowed") {
		t.Fatalf("Run: %v", err)
	}
}

// TestPoisonMessage: a request at which the daemon drops the connection
// every time is failed after poisonAfter tries instead of looping.
func TestPoisonMessage(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c := d.accept()
	c.hello(fresh)
	s.send(req("1", "huge"))
	for try := 1; try <= poisonAfter; try++ {
		if m := c.next(); m.Method != "huge" {
			t.Fatalf("try %d: got %s", try, m.raw)
		}
		c.cut()
		c = d.accept()
		c.hello(`{"resumed":true,"received":1,"pending":[]}`)
	}
	s.expectError("1", -32600)
	s.send(req("2", "next"))
	if m := c.next(); m.Method != "next" {
		t.Fatalf("got %s", m.raw)
	}
}

// TestConfirmFreesKept: the probe's answer proves the daemon read what
// came before it; those copies are freed, the bytes accounted.
func TestConfirmFreesKept(t *testing.T) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	go io.Copy(io.Discard, b)
	s := newShim(Options{Logger: slog.New(slog.DiscardHandler)}, nil)
	s.ln = startLink(&unixStream{c: a, r: ndjson.NewReader(a, 1<<20), w: bufio.NewWriter(a), max: 1 << 20})
	s.gen, s.written, s.acked = 1, 1, 1
	ctx := context.Background()
	note := func(i int) []byte {
		return []byte(fmt.Sprintf(`{"jsonrpc":"2.0","method":"note","params":{"i":%d}}`, i))
	}
	for i := range 300 {
		if err := s.fromClient(ctx, note(i)); err != nil {
			t.Fatal(err)
		}
	}
	if len(s.own) != 1 || len(s.kept) != 300 {
		t.Fatalf("%d own calls, %d kept", len(s.own), len(s.kept))
	}
	var probe string
	for id, oc := range s.own {
		if oc.kind != ownProbe || oc.idx != ackEvery+2 {
			t.Fatalf("own call %+v", oc)
		}
		probe = id
	}
	if err := s.fromDaemon(ctx, []byte(answer(json.RawMessage(probe), `{}`))); err != nil {
		t.Fatal(err)
	}
	want := 0
	for i := ackEvery; i < 300; i++ {
		want += len(note(i))
	}
	if len(s.kept) != 300-ackEvery || s.nsent != len(s.kept) || s.keptBytes != want || s.probing {
		t.Fatalf("after the probe's answer: %d kept (%d sent), %d bytes (want %d), probing %v", len(s.kept), s.nsent, s.keptBytes, want, s.probing)
	}
	s.ln.close()
}

// BenchmarkRelayEvents: enveloped events from the daemon to stdout,
// unwrapped and checked for duplicates, over a Unix socket.
func BenchmarkRelayEvents(b *testing.B) {
	d := newFakeUnix(b)
	outR, outW := io.Pipe()
	inR, inW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Run(ctx, Options{URL: d.url(), Stdin: inR, Stdout: outW})
	defer inW.Close()
	c := <-d.conns
	hello := <-c.msgs
	var h fmsg
	json.Unmarshal(hello, &h)
	io.WriteString(c.c, answer(h.ID, `{"resume":`+fresh+`}`)+"\n")
	env, body := event("S", 1)
	prefix, suffix, _ := strings.Cut(env, `"seq":1,`)
	var batch bytes.Buffer
	b.SetBytes(int64(len(body) + 1))
	b.ResetTimer()
	go func() {
		for i := 1; i <= b.N; i++ {
			batch.WriteString(prefix)
			fmt.Fprintf(&batch, `"seq":%d,`, i)
			batch.WriteString(suffix)
			batch.WriteByte('\n')
			if batch.Len() > 32<<10 || i == b.N {
				c.c.Write(batch.Bytes())
				batch.Reset()
			}
		}
	}()
	r := bufio.NewReaderSize(outR, 1<<20)
	for i := 0; i < b.N; i++ {
		if _, err := r.ReadSlice('\n'); err != nil {
			b.Fatal(err)
		}
	}
}

// TestForkReattachedFromItsStart: a session/fork answer names a new
// session that is the client's from its first event. Cut before any event
// of it, the shim re-attaches it from the start (since 0), so the fork's
// copied history and live events are not lost.
func TestForkReattachedFromItsStart(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(`{"jsonrpc":"2.0","id":1,"method":"session/fork","params":{"sessionId":"S","cwd":"/"}}`)
	m := c1.next()
	if m.Method != "session/fork" {
		t.Fatalf("want the fork forwarded at once, got %s", m.raw)
	}
	c1.send(answer(m.ID, `{"sessionId":"F"}`))
	s.expect(`{"jsonrpc":"2.0","id":1,"result":{"sessionId":"F"}}`)
	c1.cut()
	c2 := d.accept()
	c2.hello(`{"resumed":true,"received":2,"pending":[]}`)
	at := c2.next()
	if at.Method != "bridge/attach" || at.Params["sessionId"] != "F" || at.Params["since"] != float64(0) {
		t.Fatalf("want bridge/attach F since 0, got %s", at.raw)
	}
	c2.send(answer(at.ID, `{"sessionId":"F","seq":2,"status":"idle","replayed":2}`))
	for seq := 1; seq <= 2; seq++ {
		env, body := event("F", seq)
		c2.send(env)
		s.expect(body)
	}
	s.send(req("2", "x"))
	if m := c2.next(); m.Method != "x" {
		t.Fatalf("want x, got %s (the source session S was never attached)", m.raw)
	}
}

// TestResumeRequestReattached: a session/resume attaches the caller. The
// shim learns the session's seq before forwarding it, so a drop after the
// answer and before the first event re-attaches from there; a resume the
// agent refused leaves the session unattached.
func TestResumeRequestReattached(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(`{"jsonrpc":"2.0","id":1,"method":"session/resume","params":{"sessionId":"R","cwd":"/"}}`)
	q := c1.next()
	if q.Method != "bridge/sessions" || q.Params["sessionId"] != "R" {
		t.Fatalf("want bridge/sessions R before the resume, got %s", q.raw)
	}
	c1.send(answer(q.ID, `{"sessions":[{"sessionId":"R","status":"idle","seq":7,"clients":0}]}`))
	m := c1.next()
	if m.Method != "session/resume" {
		t.Fatalf("want the resume, got %s", m.raw)
	}
	c1.send(answer(m.ID, `{}`))
	s.expect(`{"jsonrpc":"2.0","id":1,"result":{}}`)
	// A resume the agent refuses: not attached after a reconnect.
	s.send(`{"jsonrpc":"2.0","id":2,"method":"session/resume","params":{"sessionId":"Q","cwd":"/"}}`)
	q = c1.next()
	c1.send(answer(q.ID, `{"sessions":[]}`))
	m = c1.next()
	if m.Method != "session/resume" || m.Params["sessionId"] != "Q" {
		t.Fatalf("want the resume of Q, got %s", m.raw)
	}
	c1.send(`{"jsonrpc":"2.0","id":2,"error":{"code":-32002,"message":"unknown session Q"}}`)
	s.expectError("2", -32002)
	c1.cut()

	c2 := d.accept()
	c2.hello(`{"resumed":true,"received":5,"pending":[]}`)
	at := c2.next()
	if at.Method != "bridge/attach" || at.Params["sessionId"] != "R" || at.Params["since"] != float64(7) {
		t.Fatalf("want bridge/attach R since 7, got %s", at.raw)
	}
	c2.send(answer(at.ID, `{"sessionId":"R","seq":8,"status":"running","replayed":1}`))
	s.expect(`{"jsonrpc":"2.0","method":"bridge/status","params":{"sessionId":"R","status":"running"}}`)
	env, body := event("R", 8)
	c2.send(env)
	s.expect(body)
	s.send(req("3", "x"))
	if m := c2.next(); m.Method != "x" {
		t.Fatalf("want x, got %s (Q's resume failed: no attach)", m.raw)
	}
}

// TestResumeRefusedKeepsEarlierAttach: a session the client attached
// before a resume the agent refused stays attached (the daemon does not
// detach it either).
func TestResumeRefusedKeepsEarlierAttach(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(`{"jsonrpc":"2.0","id":1,"method":"bridge/attach","params":{"sessionId":"A","since":3}}`)
	m := c1.next()
	c1.send(answer(m.ID, `{"sessionId":"A","seq":3,"status":"idle","replayed":0}`))
	s.next()
	s.send(`{"jsonrpc":"2.0","id":2,"method":"session/resume","params":{"sessionId":"A","cwd":"/"}}`)
	if m := c1.next(); m.Method != "session/resume" {
		t.Fatalf("want the resume forwarded (the cursor is known), got %s", m.raw)
	}
	c1.send(`{"jsonrpc":"2.0","id":2,"error":{"code":-32603,"message":"no"}}`)
	s.expectError("2", -32603)
	c1.cut()
	c2 := d.accept()
	c2.hello(`{"resumed":true,"received":3,"pending":[]}`)
	if at := c2.next(); at.Method != "bridge/attach" || at.Params["sessionId"] != "A" || at.Params["since"] != float64(3) {
		t.Fatalf("want bridge/attach A since 3, got %s", at.raw)
	}
}

// TestClosedSessionsNotReattached: sessions the client closed, deleted or
// archived (the agent said yes) are not attached again after a reconnect;
// one whose close failed is.
func TestClosedSessionsNotReattached(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	for i, sid := range []string{"S1", "S2", "S3", "S4"} {
		s.send(req(fmt.Sprint(i+1), "session/new"))
		c1.send(answer(c1.next().ID, fmt.Sprintf(`{"sessionId":%q}`, sid)))
		s.next()
	}
	for i, m := range []string{"session/close", "session/delete", "session/archive", "session/close"} {
		sid := fmt.Sprintf("S%d", i+1)
		s.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":{"sessionId":%q}}`, 10+i, m, sid))
		got := c1.next()
		if got.Method != m || got.Params["sessionId"] != sid {
			t.Fatalf("want %s %s, got %s", m, sid, got.raw)
		}
		if sid == "S4" {
			c1.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"error":{"code":-32603,"message":"cannot close"}}`, got.ID))
			s.expectError("13", -32603)
			continue
		}
		c1.send(answer(got.ID, `{}`))
		s.expect(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"result":{}}`, 10+i))
	}
	c1.cut()
	c2 := d.accept()
	c2.hello(`{"resumed":true,"received":9,"pending":[]}`)
	at := c2.next()
	if at.Method != "bridge/attach" || at.Params["sessionId"] != "S4" {
		t.Fatalf("want bridge/attach S4 only, got %s", at.raw)
	}
	s.send(req("20", "x"))
	if m := c2.next(); m.Method != "x" {
		t.Fatalf("want x, got %s (closed sessions attached again)", m.raw)
	}
}

// TestRefusedLoadAfterReconnectDetaches: a session/load in flight at a
// drop is re-attached on the new connection (the daemon attached the
// caller when it forwarded the load); when the agent then refuses the
// load, the shim detaches the session again, as the daemon would have
// without the drop, and does not attach it after the next reconnect.
func TestRefusedLoadAfterReconnectDetaches(t *testing.T) {
	d := newFakeUnix(t)
	s := startStdio(t, Options{URL: d.url()})
	c1 := d.accept()
	c1.hello(fresh)
	s.send(`{"jsonrpc":"2.0","id":1,"method":"session/load","params":{"sessionId":"L","cwd":"/"}}`)
	q := c1.next()
	c1.send(answer(q.ID, `{"sessions":[{"sessionId":"L","status":"closed","seq":5,"clients":0}]}`))
	if m := c1.next(); m.Method != "session/load" {
		t.Fatalf("want the load, got %s", m.raw)
	}
	c1.cut()
	c2 := d.accept()
	c2.hello(`{"resumed":true,"received":3,"pending":[1]}`)
	at := c2.next()
	if at.Method != "bridge/attach" || at.Params["sessionId"] != "L" || at.Params["since"] != float64(5) {
		t.Fatalf("want bridge/attach L since 5, got %s", at.raw)
	}
	c2.send(answer(at.ID, `{"sessionId":"L","seq":5,"status":"closed","replayed":0}`))
	s.expect(`{"jsonrpc":"2.0","method":"bridge/status","params":{"sessionId":"L","status":"closed"}}`)
	c2.send(`{"jsonrpc":"2.0","id":1,"error":{"code":-32002,"message":"unknown session L"}}`)
	s.expectError("1", -32002)
	de := c2.next()
	if de.Method != "bridge/detach" || de.Params["sessionId"] != "L" || !strings.HasPrefix(string(de.ID), `"`+ownPrefix) {
		t.Fatalf("want our bridge/detach L, got %s", de.raw)
	}
	c2.send(answer(de.ID, `{}`))
	c2.cut()
	c3 := d.accept()
	c3.hello(`{"resumed":true,"received":3,"pending":[]}`)
	s.send(req("2", "x"))
	if m := c3.next(); m.Method != "x" {
		t.Fatalf("want x, got %s (the refused load's session attached again)", m.raw)
	}
}
