package connect

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/codec/ndjson"
	"github.com/agentbridge/agentbridge/wire"
)

// Relay tuning.
const (
	// Reconnect backoff: exponential from backoffMin to backoffMax with
	// jitter (half of it random), so shims that dropped together do not
	// come back in lockstep.
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
	// handshakeTimeout bounds the wait for the answer to our bridge/hello.
	handshakeTimeout = 10 * time.Second
	// Messages sent are kept until the daemon is known to have read them
	// (an answer to a later request proves it), so they can be sent again
	// after a drop. Past ackEvery messages or ackBytes bytes without such
	// proof (a client that sends only notifications), a bridge/hello {}
	// probe asks for one.
	ackEvery = 256
	ackBytes = 1 << 20
	// maxKeptBytes pauses reading stdin while that much is kept unproven
	// (while reconnecting, or until the probe's answer).
	maxKeptBytes = 16 << 20
	// maxAsked bounds the agent requests remembered as already written to
	// stdout (to recognise the daemon's re-delivery after a resume).
	maxAsked = 4096
	// ownPrefix starts the ids of the shim's own requests. The stdio
	// client may not use it (its requests with such ids are refused), so
	// the two id spaces never meet.
	ownPrefix = "agentbridge-connect-"
	// poisonAfter is how many drops in a row right before the same message
	// make the shim stop sending it.
	poisonAfter = 3
)

// shim is one Run. Every field is owned by the run goroutine unless noted.
type shim struct {
	o   Options
	tr  transport
	log *slog.Logger
	key string // the resume key, random per process

	stdin    chan []byte // stdin's messages (copies); closed at its end
	stdinErr error       // why stdin ended; written before stdin is closed
	out      chan []byte // lines for stdout
	outErr   chan error  // the stdout writer's failure
	outDone  chan struct{}
	dialed   chan dialResult

	ln      *link  // the connection; nil while reconnecting
	gen     int    // how many connections were made
	written uint64 // messages written on ln, ours included (the daemon's "received" counts the same)
	acked   uint64 // of those, how many the daemon is known to have read
	wait    time.Duration
	nextOwn uint64
	own     map[string]*ownCall // our requests on ln awaiting an answer
	probing bool
	// barrier holds back writing until our bridge/sessions before a
	// session/load is answered (that session's cursor).
	barrier bool

	// kept holds the stdio client's messages the daemon may not have read:
	// kept[:nsent] written on ln, in order; the rest not yet written.
	kept      []*outMsg
	nsent     int
	keptBytes int

	calls    map[string][]*call // the stdio client's requests awaiting answers, by id
	ncalls   int
	callSeq  uint64
	sessions map[string]*sess
	asked    map[string]struct{} // agent requests already written to stdout
	askOrder []string
	envelope bool   // the stdio client asked for bridge/event as is
	onSlow   string // the stdio client's onSlow, said again on every hello
	eof      bool
	dups     uint64 // events dropped as already written
}

// outMsg is a message of the stdio client kept for sending again.
type outMsg struct {
	b    []byte
	idx  uint64 // position on ln (1-based); 0: not written on ln
	call *call  // the request it is, if any
	ans  string // for an answer to an agent request: that request's id key
	// stuck counts the drops in a row at which it was the next message
	// the daemon would have read.
	stuck int
}

// call is a request of the stdio client awaiting its answer.
type call struct {
	id     []byte // raw JSON, as the client wrote it
	key    string
	seq    uint64 // in the order the client sent them
	method string
	sid    string
	idx    uint64 // position on the connection gen it was last written on
	gen    int
	got    bool // the daemon is known to have read it
	since  *uint64
	last   bool
	hello  *helloWish
	// A session/load or session/resume attaches the caller when the
	// daemon forwards it and detaches it again on an error (unless it was
	// attached before). armed: the shim marked the session attached when
	// it first wrote the request; prior: whether it was attached then;
	// epoch: the session's epoch then (a bridge/attach or bridge/detach of
	// the client's answered meanwhile decides instead).
	armed  bool
	prior  bool
	epoch  uint64
	armGen int // the connection it was first written on
}

type helloWish struct {
	envelope *bool
	onSlow   string
}

// ownCall is one of the shim's own requests.
type ownCall struct {
	kind ownKind
	sid  string
	idx  uint64
}

type ownKind uint8

const (
	ownAttach   ownKind = iota + 1 // re-attach after a reconnect
	ownProbe                       // bridge/hello {}: proves the daemon read what came before
	ownSessions                    // bridge/sessions before a session/load or session/resume: the session's seq then
	ownDetach                      // undoes a re-attach for a load or resume the agent refused
)

// sess is what the shim knows of a session the stdio client uses.
type sess struct {
	seq      uint64 // the last event written to stdout (or gap passed on)
	known    bool   // seq is a valid cursor
	attached bool   // re-attach it after a reconnect
	status   string // the last bridge/status the client saw ("" = none yet)
	epoch    uint64 // counts the client's answered bridge/attach and bridge/detach
}

func newShim(o Options, tr transport) *shim {
	var k [32]byte
	_, _ = crand.Read(k[:])
	return &shim{
		o: o, tr: tr, log: o.Logger, key: base64.RawURLEncoding.EncodeToString(k[:]),
		stdin: make(chan []byte, 64), out: make(chan []byte, 256), outErr: make(chan error, 1), outDone: make(chan struct{}),
		dialed: make(chan dialResult, 1), wait: backoffMin,
		own: map[string]*ownCall{}, calls: map[string][]*call{}, sessions: map[string]*sess{}, asked: map[string]struct{}{},
	}
}

// run is Run after the options are checked.
func (s *shim) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The first connection must succeed: a shim that cannot reach its
	// daemon at start says why at once rather than retrying in silence.
	id, hello := s.helloMsg()
	r := s.connectOnce(ctx, id, hello)
	if r.err != nil {
		// What the daemon said before it hung up (a refusal) is the
		// client's to see.
		for _, b := range r.early {
			_, _ = s.o.Stdout.Write(append(b, '\n'))
		}
		return r.err
	}
	go s.readStdin()
	go s.writeStdout()
	defer func() {
		close(s.out)
		<-s.outDone
	}()
	if err := s.connected(ctx, r); err != nil {
		return s.stopped(ctx, err)
	}
	for {
		var stdin chan []byte
		if !s.eof && s.keptBytes < maxKeptBytes {
			stdin = s.stdin
		}
		var in chan []byte
		if s.ln != nil {
			in = s.ln.in
		}
		select {
		case b, ok := <-stdin:
			if !ok {
				if s.stdinErr != nil {
					s.hangUp(false)
					return &Error{Msg: "reading stdin: " + s.stdinErr.Error(), Err: s.stdinErr}
				}
				s.eof = true
				break
			}
			if err := s.fromClient(ctx, b); err != nil {
				return s.stopped(ctx, err)
			}
		case b, ok := <-in:
			if !ok {
				s.lost(ctx)
				break
			}
			if err := s.fromDaemon(ctx, b); err != nil {
				return s.stopped(ctx, err)
			}
		case r := <-s.dialed:
			if r.err != nil {
				for _, b := range r.early {
					if s.toStdout(ctx, b) != nil {
						break
					}
				}
				s.failAll(ctx, "the connection to the agentbridge daemon was lost and could not be restored; the request may or may not have been carried out")
				return r.err
			}
			if err := s.connected(ctx, r); err != nil {
				return s.stopped(ctx, err)
			}
		case err := <-s.outErr:
			s.hangUp(false)
			return &Error{Msg: "writing stdout: " + err.Error(), Err: err}
		case <-ctx.Done():
			s.hangUp(false)
			return nil
		}
		if s.eof && s.ncalls == 0 && s.nsent == len(s.kept) {
			// Every request has its answer and everything the client
			// sent is on its way: it is flushed, then goodbye.
			s.hangUp(true)
			return nil
		}
	}
}

// stopped ends the run after err; a cancelled ctx (SIGINT) is no error.
func (s *shim) stopped(ctx context.Context, err error) error {
	s.hangUp(false)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// hangUp ends the connection, if any.
func (s *shim) hangUp(graceful bool) {
	if s.ln == nil {
		return
	}
	if graceful {
		s.ln.finish()
	} else {
		s.ln.close()
	}
	s.ln = nil
}

// helloMsg builds our bridge/hello: enveloped delivery, our resume key, and
// the onSlow the stdio client chose.
func (s *shim) helloMsg() (string, []byte) {
	id := s.ownID()
	p := map[string]any{"envelope": true, "resume": s.key}
	if s.onSlow != "" {
		p["onSlow"] = s.onSlow
	}
	return id, jsonrpc.AppendRequest(nil, []byte(id), "bridge/hello", p)
}

func (s *shim) ownID() string {
	s.nextOwn++
	return strconv.Quote(ownPrefix + strconv.FormatUint(s.nextOwn, 10))
}

// resumeInfo is the resume member of the answer to our bridge/hello.
type resumeInfo struct {
	Resumed  bool              `json:"resumed"`
	Received uint64            `json:"received"`
	Pending  []json.RawMessage `json:"pending"`
}

// dialResult is a connection that said hello, or why there is none.
type dialResult struct {
	st     stream
	resume resumeInfo
	early  [][]byte // what the daemon sent before the hello answer
	err    error
}

// connectOnce dials and says hello. Safe from any goroutine: it touches
// no shim state but the transport, which only one dialer uses at a time.
func (s *shim) connectOnce(ctx context.Context, helloID string, hello []byte) dialResult {
	st, err := s.tr.dial(ctx)
	if err != nil {
		return dialResult{err: err}
	}
	r, err := s.handshake(st, helloID, hello)
	if err != nil {
		st.close(false)
		return dialResult{early: r.early, err: err}
	}
	return r
}

func (s *shim) handshake(st stream, helloID string, hello []byte) (dialResult, error) {
	r := dialResult{st: st}
	expired := make(chan struct{})
	timer := time.AfterFunc(handshakeTimeout, func() { close(expired); st.close(false) })
	defer timer.Stop()
	fail := func(err error) (dialResult, error) {
		select {
		case <-expired:
			return r, &Error{Msg: fmt.Sprintf("the daemon at %s did not answer bridge/hello within %s", s.tr, handshakeTimeout), Err: ErrHandshake}
		default:
		}
		// A daemon that refuses a peer (a foreign uid, say) says why in
		// an error without an id, then closes.
		for _, b := range r.early {
			var m struct {
				ID    json.RawMessage `json:"id"`
				Error *jsonrpc.Error  `json:"error"`
			}
			if jsonrpc.Unmarshal(b, &m) == nil && m.Error != nil && (len(m.ID) == 0 || string(m.ID) == "null") {
				return r, refused(&Error{Msg: fmt.Sprintf("the daemon at %s refused the connection: %s (code %d)", s.tr, m.Error.Message, m.Error.Code), Err: m.Error})
			}
		}
		return r, &Error{Msg: fmt.Sprintf("connection to %s lost during bridge/hello: %v", s.tr, err), Err: err}
	}
	// Even if the hello cannot be written, what the daemon sent is read:
	// a refusal is written and the connection closed at once.
	werr := st.write(hello)
	if werr == nil {
		werr = st.flush()
	}
	for {
		b, err := st.read()
		if err != nil {
			if werr != nil {
				err = werr
			}
			return fail(err)
		}
		hd, perr := jsonrpc.Peek(b)
		if perr != nil || hd.Kind != jsonrpc.KindResponse || string(hd.ID) != helloID {
			r.early = append(r.early, bytes.Clone(b))
			continue
		}
		var ans struct {
			Result *struct {
				Resume *resumeInfo `json:"resume"`
			} `json:"result"`
			Error *jsonrpc.Error `json:"error"`
		}
		if err := jsonrpc.Unmarshal(b, &ans); err != nil {
			return r, &Error{Msg: fmt.Sprintf("the daemon at %s answered bridge/hello with %q: %v", s.tr, b, err), Err: err}
		}
		if ans.Error != nil {
			// A key bound to another role, or refused: reconnecting
			// with it cannot work.
			return r, refused(&Error{Msg: fmt.Sprintf("the daemon at %s refused bridge/hello: %s (code %d)", s.tr, ans.Error.Message, ans.Error.Code), Err: ans.Error})
		}
		if ans.Result != nil && ans.Result.Resume != nil {
			r.resume = *ans.Result.Resume
		}
		return r, nil
	}
}

// dialer reconnects with exponential backoff and jitter for at most
// RetryFor, handing its result to the run goroutine. It reads no shim
// state but what run gave it.
func (s *shim) dialer(ctx context.Context, wait time.Duration, helloID string, hello []byte) {
	start := time.Now()
	var r dialResult
	for attempt := 1; ; attempt++ {
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		r = s.connectOnce(ctx, helloID, hello)
		if r.err == nil || isRefusal(r.err) {
			break
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > s.o.RetryFor {
			r.err = &Error{Msg: fmt.Sprintf("lost the connection to %s and could not reconnect for %s: %v", s.tr, s.o.RetryFor, r.err), Err: errors.Join(ErrGaveUp, r.err)}
			break
		}
		s.log.Info("reconnect failed", "attempt", attempt, "err", r.err)
		wait = min(2*wait, backoffMax)
	}
	select {
	case s.dialed <- r:
	case <-ctx.Done():
		if r.st != nil {
			r.st.close(false)
		}
	}
}

// lost handles the end of the connection: reconnect.
func (s *shim) lost(ctx context.Context) {
	s.log.Warn("connection to the daemon lost; reconnecting", "daemon", s.tr.String(), "err", s.ln.cause(), "inflight", s.ncalls)
	s.ln.close()
	s.ln = nil
	clear(s.own)
	s.probing, s.barrier = false, false
	id, hello := s.helloMsg()
	go s.dialer(ctx, s.wait, id, hello)
	s.wait = min(2*s.wait, backoffMax)
}

// connected takes over a connection that said hello: it settles what was
// in flight on the previous one, re-attaches the sessions from their
// cursors and sends what is owed.
func (s *shim) connected(ctx context.Context, r dialResult) error {
	s.gen++
	s.ln = startLink(r.st)
	s.written, s.acked = 1, 1 // our hello, answered
	if s.gen > 1 {
		s.log.Info("reconnected", "daemon", s.tr.String(), "resumed", r.resume.Resumed, "received", r.resume.Received, "pending", len(r.resume.Pending), "duplicates_dropped", s.dups)
		s.wait = backoffMin
	}
	for _, b := range r.early {
		if err := s.fromDaemon(ctx, b); err != nil {
			return err
		}
	}
	if err := s.settle(ctx, r.resume); err != nil {
		return err
	}
	// Attaches first: a request sent again may name a session this
	// connection must be attached to.
	sids := make([]string, 0, len(s.sessions))
	for sid, ss := range s.sessions {
		if ss.attached {
			sids = append(sids, sid)
		}
	}
	slices.Sort(sids)
	for _, sid := range sids {
		ss := s.sessions[sid]
		p := map[string]any{"sessionId": sid}
		if ss.known {
			p["since"] = ss.seq
		}
		s.ownCall(&ownCall{kind: ownAttach, sid: sid}, "bridge/attach", p)
	}
	s.pump()
	return nil
}

// settle decides the fate of what the previous connection left in flight,
// from the daemon's resume answer (docs/protocol.md, "Resume keys"):
// requests it still holds are awaited, requests it never read are sent
// again, and requests it read and answered on the lost connection, or
// that a daemon which forgot us read, are failed with -32003.
func (s *shim) settle(ctx context.Context, ri resumeInfo) error {
	// Messages: drop those the daemon read; the rest go out again.
	kept := s.kept[:0]
	s.keptBytes = 0
	var poison *outMsg
	for _, m := range s.kept {
		if m.idx > 0 && ri.Resumed && m.idx == ri.Received+1 {
			// The daemon stopped reading right before it. Three times in
			// a row is no accident: it closes the connection on this
			// message (larger than its --max-message, say), and sending
			// it again would loop forever.
			if m.stuck++; m.stuck >= poisonAfter {
				poison = m
				continue
			}
		} else if m.idx > 0 {
			m.stuck = 0
		}
		switch {
		case m.idx > 0 && ri.Resumed && m.idx <= ri.Received:
			if m.ans != "" {
				delete(s.asked, m.ans)
			}
			if m.call != nil {
				m.call.got = true
			}
			continue
		case m.idx > 0 && !ri.Resumed:
			if m.call == nil {
				s.log.Warn("a message to the daemon was lost with the connection and is not sent again (the daemon no longer knows this client, so it may have arrived)", "bytes", len(m.b))
			}
			continue
		}
		m.idx = 0
		kept = append(kept, m)
		s.keptBytes += len(m.b)
	}
	clear(s.kept[len(kept):])
	s.kept, s.nsent = kept, 0
	if !ri.Resumed {
		// A new daemon (or one past its resume window) reuses nothing:
		// the agent request ids it sends are new ones.
		clear(s.asked)
		s.askOrder = s.askOrder[:0]
	}
	pending := map[string]int{}
	for _, id := range ri.Pending {
		pending[idKey(id)]++
	}
	var failed []*call
	for key, cs := range s.calls {
		keep := cs[:0]
		for _, c := range cs {
			if poison != nil && c == poison.call {
				continue
			}
			switch {
			case c.idx == 0:
				// Never written: it goes out now.
			case !ri.Resumed:
				failed = append(failed, c)
				continue
			case c.got || (c.gen == s.gen-1 && c.idx <= ri.Received):
				c.got = true
				// Read by the daemon: its answer is coming if it still
				// holds it; else it was answered on the lost connection.
				if pending[key] == 0 {
					failed = append(failed, c)
					continue
				}
				pending[key]--
			default:
				// Written and never read: it goes out again with the kept
				// messages.
				c.idx = 0
			}
			keep = append(keep, c)
		}
		if len(keep) == 0 {
			delete(s.calls, key)
		} else {
			s.calls[key] = keep
		}
	}
	slices.SortFunc(failed, func(a, b *call) int { return cmp.Compare(a.seq, b.seq) })
	why := "the connection to the agentbridge daemon dropped after the daemon answered this request, and the answer was lost with it; the request may have been carried out: check before retrying"
	if !ri.Resumed {
		why = "the connection to the agentbridge daemon dropped and the daemon no longer holds this request (it restarted, or the client was away longer than its resume window); the request may have been carried out: check before retrying"
	}
	for _, c := range failed {
		s.ncalls--
		if err := s.fail(ctx, c, why); err != nil {
			return err
		}
	}
	if poison != nil {
		s.log.Warn("the daemon dropped the connection each time this message was next; it is not sent again", "times", poisonAfter, "bytes", len(poison.b))
		if c := poison.call; c != nil {
			s.ncalls--
			err := s.toStdout(ctx, jsonrpc.AppendError(nil, c.id, &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest,
				Message: fmt.Sprintf("the daemon closed the connection each of the %d times this request was sent (is it larger than the daemon's --max-message?); it was not carried out", poisonAfter)}))
			if err != nil {
				return err
			}
		}
	}
	if len(failed) > 0 {
		s.log.Warn("requests in flight could not be resumed; answered with -32003", "count", len(failed), "resumed", ri.Resumed)
	}
	return nil
}

// failAll answers every request in flight with -32003: the shim is giving
// up, and no request is silently forgotten.
func (s *shim) failAll(ctx context.Context, why string) {
	var all []*call
	for _, cs := range s.calls {
		all = append(all, cs...)
	}
	slices.SortFunc(all, func(a, b *call) int { return cmp.Compare(a.seq, b.seq) })
	clear(s.calls)
	s.ncalls = 0
	for _, c := range all {
		if s.fail(ctx, c, why) != nil {
			return
		}
	}
}

func (s *shim) fail(ctx context.Context, c *call, why string) error {
	return s.toStdout(ctx, jsonrpc.AppendError(nil, c.id, &jsonrpc.Error{Code: jsonrpc.CodeAgentUnavailable, Message: why}))
}

// pump writes the kept messages not yet written, in order, unless there
// is no connection or a barrier holds them back.
func (s *shim) pump() {
	for s.ln != nil && !s.barrier && s.nsent < len(s.kept) {
		m := s.kept[s.nsent]
		if c := m.call; c != nil && attachesOnForward(c.method) && c.sid != "" {
			ss := s.session(c.sid)
			if !ss.known {
				// Learn the session's seq before the daemon attaches us by
				// forwarding the load or resume: a cursor that loses
				// nothing if the connection drops before the first event.
				s.barrier = true
				s.ownCall(&ownCall{kind: ownSessions, sid: c.sid}, "bridge/sessions", map[string]any{"sessionId": c.sid})
				return
			}
			// The daemon attaches us as it forwards the request, so a drop
			// before its answer re-attaches the session too; an error
			// answer undoes it (answered).
			if !c.armed {
				c.armed, c.prior, c.epoch, c.armGen = true, ss.attached, ss.epoch, s.gen
			}
			ss.attached = true
		}
		s.written++
		m.idx = s.written
		if c := m.call; c != nil {
			c.idx, c.gen = m.idx, s.gen
		}
		s.nsent++
		s.ln.send(m.b)
		if !s.probing && (s.written-s.acked >= ackEvery || s.keptBytes >= ackBytes) {
			s.probing = true
			s.ownCall(&ownCall{kind: ownProbe}, "bridge/hello", map[string]any{})
		}
	}
}

// ownCall sends one of our requests.
func (s *shim) ownCall(oc *ownCall, method string, params any) {
	if s.ln == nil {
		return
	}
	id := s.ownID()
	s.written++
	oc.idx = s.written
	s.own[id] = oc
	s.ln.send(jsonrpc.AppendRequest(nil, []byte(id), method, params))
}

// confirm records that the daemon read the messages up to idx on ln: they
// are not kept any longer.
func (s *shim) confirm(idx uint64) {
	if idx <= s.acked {
		return
	}
	s.acked = idx
	n := 0
	for _, m := range s.kept[:s.nsent] {
		if m.idx > idx {
			break
		}
		if m.ans != "" {
			delete(s.asked, m.ans)
		}
		if m.call != nil {
			m.call.got = true
		}
		s.keptBytes -= len(m.b)
		n++
	}
	if n > 0 {
		clear(s.kept[:n])
		s.kept, s.nsent = s.kept[n:], s.nsent-n
	}
}

// fromClient handles one message from stdin (an owned copy).
func (s *shim) fromClient(ctx context.Context, b []byte) error {
	m := &outMsg{b: b}
	hd, err := jsonrpc.Peek(b)
	if err == nil {
		switch hd.Kind {
		case jsonrpc.KindRequest:
			if id, ok := stringID(hd.ID); ok && len(id) >= len(ownPrefix) && id[:len(ownPrefix)] == ownPrefix {
				return s.toStdout(ctx, jsonrpc.AppendError(nil, hd.ID, &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest,
					Message: fmt.Sprintf("request ids starting with %q are reserved by agentbridge connect; use another id", ownPrefix)}))
			}
			s.callSeq++
			c := &call{id: bytes.Clone(hd.ID), key: idKey(hd.ID), seq: s.callSeq, method: string(hd.Method), sid: string(hd.SessionID)}
			switch c.method {
			case "bridge/hello":
				m.b, c.hello = clientHello(b, hd)
			case "bridge/attach":
				c.since, c.last = attachCursor(b)
			}
			m.call = c
			s.calls[c.key] = append(s.calls[c.key], c)
			s.ncalls++
		case jsonrpc.KindResponse:
			m.ans = idKey(hd.ID)
		}
	}
	s.kept = append(s.kept, m)
	s.keptBytes += len(m.b)
	s.pump()
	return nil
}

// fromDaemon handles one message from the daemon (an owned copy).
func (s *shim) fromDaemon(ctx context.Context, b []byte) error {
	hd, err := jsonrpc.Peek(b)
	if err != nil {
		return s.toStdout(ctx, b)
	}
	switch hd.Kind {
	case jsonrpc.KindResponse:
		key := idKey(hd.ID)
		if oc := s.own[string(hd.ID)]; oc != nil {
			delete(s.own, string(hd.ID))
			return s.ownAnswer(ctx, oc, b, hd)
		}
		cs := s.calls[key]
		if len(cs) == 0 {
			// Not an answer to a request: the daemon refusing the
			// client's answer to an agent request, say. The client sees
			// it as it would without the shim.
			delete(s.asked, key)
			return s.toStdout(ctx, b)
		}
		c := cs[0]
		if len(cs) == 1 {
			delete(s.calls, key)
		} else {
			s.calls[key] = cs[1:]
		}
		s.ncalls--
		if c.gen == s.gen && c.idx > 0 {
			s.confirm(c.idx)
		}
		return s.toStdout(ctx, s.answered(c, b, hd))
	case jsonrpc.KindRequest:
		key := idKey(hd.ID)
		if _, seen := s.asked[key]; seen {
			// Re-delivered after a resume: the client has it already, and
			// its answer is on the way or goes out again.
			s.log.Debug("agent request delivered again after a resume; the client has it", "id", string(hd.ID))
			return nil
		}
		s.remember(key)
		return s.toStdout(ctx, b)
	}
	switch string(hd.Method) {
	case "bridge/event":
		return s.event(ctx, b)
	case "bridge/gap":
		return s.gap(ctx, b)
	case "bridge/status":
		var p struct {
			Params struct {
				SessionID string `json:"sessionId"`
				Status    string `json:"status"`
			} `json:"params"`
		}
		if jsonrpc.Unmarshal(b, &p) == nil {
			if ss := s.sessions[p.Params.SessionID]; ss != nil {
				ss.status = p.Params.Status
			}
		}
	case "bridge/resolved":
		var p struct {
			Params struct {
				ID json.RawMessage `json:"id"`
			} `json:"params"`
		}
		if jsonrpc.Unmarshal(b, &p) == nil && len(p.Params.ID) > 0 {
			delete(s.asked, idKey(p.Params.ID))
		}
	}
	return s.toStdout(ctx, b)
}

// remember notes an agent request written to stdout.
func (s *shim) remember(key string) {
	s.asked[key] = struct{}{}
	s.askOrder = append(s.askOrder, key)
	for len(s.asked) > maxAsked && len(s.askOrder) > 0 {
		delete(s.asked, s.askOrder[0])
		s.askOrder = s.askOrder[1:]
	}
	if len(s.askOrder) > 4*maxAsked {
		live := s.askOrder[:0]
		for _, k := range s.askOrder {
			if _, ok := s.asked[k]; ok {
				live = append(live, k)
			}
		}
		s.askOrder = live
	}
}

// answered learns from the answer to a client request and returns what
// the client gets.
func (s *shim) answered(c *call, b []byte, hd jsonrpc.Header) []byte {
	if hd.IsError {
		if attachesOnForward(c.method) && c.armed {
			// The daemon detached us again, unless we were attached
			// before; an attach or detach of the client's answered
			// meanwhile says where the session stands instead.
			if ss := s.sessions[c.sid]; ss != nil && ss.epoch == c.epoch && !c.prior {
				ss.attached = false
				// A reconnect since the request was first written attached
				// this connection with bridge/attach, which the daemon
				// does not undo for the refused request: the shim does,
				// unless the client is attaching the session again.
				if s.gen > c.armGen && !s.attaching(c) {
					s.ownCall(&ownCall{kind: ownDetach, sid: c.sid}, "bridge/detach", map[string]any{"sessionId": c.sid})
				}
			}
		}
		return b
	}
	switch c.method {
	case "session/new", "session/fork":
		// The daemon attached the creator (a fork's caller from the fork's
		// first event: events before the answer are replayed right after
		// it, so the cursor starts at 0); if the answer was kept for us
		// while we were away, it attached us with the whole log.
		if sid := jsonrpc.ResultSessionID(b); len(sid) > 0 {
			ss := s.session(string(sid))
			ss.attached, ss.known = true, true
		}
	case "session/close":
		// Closed for this client: it expects no more of its messages, so
		// a reconnect does not attach it again. The daemon keeps the
		// session and its seq (a resume brings it back), so the cursor
		// stays.
		if ss := s.sessions[c.sid]; ss != nil {
			ss.attached = false
		}
	case "session/delete", "session/archive":
		// Gone from the daemon's sessions: one brought back by a later
		// load or resume may count its seq anew, so the cursor goes too.
		delete(s.sessions, c.sid)
	case "bridge/attach":
		var res struct {
			Result struct {
				Seq      uint64 `json:"seq"`
				Status   string `json:"status"`
				Replayed uint64 `json:"replayed"`
			} `json:"result"`
		}
		if c.sid == "" || jsonrpc.Unmarshal(b, &res) != nil {
			return b
		}
		// What the client asked for follows, in order, from this cursor.
		ss := s.session(c.sid)
		ss.attached, ss.known = true, true
		ss.epoch++
		switch {
		case c.since != nil:
			ss.seq = *c.since
		case c.last:
			ss.seq = res.Result.Seq - min(res.Result.Seq, res.Result.Replayed)
		default:
			ss.seq = res.Result.Seq
		}
		ss.status = res.Result.Status
	case "bridge/detach":
		if ss := s.sessions[c.sid]; ss != nil {
			ss.attached = false
			ss.epoch++
		}
	case "bridge/hello":
		if c.hello != nil {
			if c.hello.envelope != nil {
				s.envelope = *c.hello.envelope
			}
			if c.hello.onSlow != "" {
				s.onSlow = c.hello.onSlow
			}
		}
		return rewriteResult(b, hd, func(r map[string]json.RawMessage) {
			r["envelope"] = json.RawMessage(strconv.FormatBool(s.envelope))
		})
	case "bridge/snapshot":
		if s.envelope {
			return b
		}
		return rewriteResult(b, hd, func(r map[string]json.RawMessage) {
			var recent []json.RawMessage
			if json.Unmarshal(r["recent"], &recent) != nil {
				return
			}
			for i, e := range recent {
				if _, _, msg, ok := parseEvent(e); ok {
					recent[i] = msg
				}
			}
			if nb, err := json.Marshal(recent); err == nil {
				r["recent"] = nb
			}
		})
	}
	return b
}

// attaching says whether a request of the client sent after c and not
// answered yet attaches c's session.
func (s *shim) attaching(c *call) bool {
	for _, cs := range s.calls {
		for _, o := range cs {
			if o.seq > c.seq && o.sid == c.sid && (o.method == "bridge/attach" || attachesOnForward(o.method)) {
				return true
			}
		}
	}
	return false
}

// attachesOnForward says whether the daemon attaches the caller to the
// request's session as it forwards it (docs/protocol.md, "Session
// lifecycle").
func attachesOnForward(method string) bool {
	return method == "session/load" || method == "session/resume"
}

// ownAnswer handles the answer to one of our requests; the client never
// sees it.
func (s *shim) ownAnswer(ctx context.Context, oc *ownCall, b []byte, hd jsonrpc.Header) error {
	s.confirm(oc.idx)
	switch oc.kind {
	case ownProbe:
		s.probing = false
	case ownSessions:
		var res struct {
			Result struct {
				Sessions []struct {
					SessionID string `json:"sessionId"`
					Seq       uint64 `json:"seq"`
				} `json:"sessions"`
			} `json:"result"`
		}
		s.barrier = false
		ss := s.session(oc.sid)
		if !ss.known {
			ss.known, ss.seq = true, 0 // a session the daemon does not know yet starts at 0
			if jsonrpc.Unmarshal(b, &res) == nil {
				for _, e := range res.Result.Sessions {
					if e.SessionID == oc.sid {
						ss.seq = e.Seq
					}
				}
			}
		}
		s.pump()
	case ownAttach:
		ss := s.sessions[oc.sid]
		var res struct {
			Result struct {
				Status string `json:"status"`
			} `json:"result"`
			Error *jsonrpc.Error `json:"error"`
		}
		if ss == nil || jsonrpc.Unmarshal(b, &res) != nil {
			break
		}
		if res.Error != nil {
			s.log.Warn("cannot re-attach a session after reconnecting", "session", oc.sid, "code", res.Error.Code, "err", res.Error.Message)
			if res.Error.Code != jsonrpc.CodeUnknownSession && res.Error.Code != jsonrpc.CodeInvalidParams {
				break
			}
			// The daemon no longer has the session (or has another one by
			// that name): for the client it is closed.
			ss.attached = false
			res.Result.Status = "closed"
		}
		// Status changes while we were away are not replayed: tell the
		// client where the session stands now.
		was := ss.status
		if was == "" {
			was = "idle"
		}
		if res.Result.Status != "" && res.Result.Status != was {
			ss.status = res.Result.Status
			return s.toStdout(ctx, wire.StatusMsg(oc.sid, ss.status).Body())
		}
	}
	return nil
}

func (s *shim) session(sid string) *sess {
	ss := s.sessions[sid]
	if ss == nil {
		ss = &sess{}
		s.sessions[sid] = ss
	}
	return ss
}

// event writes a data-plane event once: the message itself, unless the
// client asked for envelopes.
func (s *shim) event(ctx context.Context, b []byte) error {
	sid, seq, msg, ok := parseEvent(b)
	if !ok {
		return s.toStdout(ctx, b)
	}
	ss := s.session(sid)
	ss.attached = true
	if ss.known && seq <= ss.seq {
		s.dups++
		return nil
	}
	if ss.known && seq != ss.seq+1 {
		s.log.Warn("the daemon skipped events without a bridge/gap", "session", sid, "after", ss.seq, "seq", seq)
	}
	ss.seq, ss.known = seq, true
	if s.envelope {
		return s.toStdout(ctx, b)
	}
	return s.toStdout(ctx, msg)
}

// gap passes a bridge/gap on once, trimmed to what the client has not
// seen, and moves the session's cursor past it.
func (s *shim) gap(ctx context.Context, b []byte) error {
	var g struct {
		Params gapParams `json:"params"`
	}
	if jsonrpc.Unmarshal(b, &g) != nil || g.Params.SessionID == "" {
		return s.toStdout(ctx, b)
	}
	p := g.Params
	ss := s.session(p.SessionID)
	if ss.known && p.ToSeq <= ss.seq {
		return nil
	}
	if ss.known && p.FromSeq <= ss.seq {
		p.FromSeq = ss.seq + 1
		b = jsonrpc.AppendNotification(nil, "bridge/gap", p)
	}
	ss.seq, ss.known = p.ToSeq, true
	return s.toStdout(ctx, b)
}

// gapParams is how the shim reads the daemon's bridge/gap (wire.GapMsg).
type gapParams struct {
	SessionID string `json:"sessionId"`
	FromSeq   uint64 `json:"fromSeq"`
	ToSeq     uint64 `json:"toSeq"`
	Reason    string `json:"reason"`
}

// toStdout queues one message for stdout.
func (s *shim) toStdout(ctx context.Context, b []byte) error {
	line := make([]byte, len(b)+1)
	copy(line, b)
	line[len(b)] = '\n'
	select {
	case s.out <- line:
		return nil
	case err := <-s.outErr:
		return &Error{Msg: "writing stdout: " + err.Error(), Err: err}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readStdin feeds s.stdin with copies of stdin's messages.
func (s *shim) readStdin() {
	defer close(s.stdin)
	in := ndjson.NewReader(s.o.Stdin, s.o.MaxMessage)
	for {
		line, err := in.Read()
		if err != nil {
			if errors.Is(err, ndjson.ErrTooLarge) {
				s.stdinErr = fmt.Errorf("a line is longer than --max-message (%d bytes)", s.o.MaxMessage)
			} else if !errors.Is(err, io.EOF) {
				s.stdinErr = err
			}
			return
		}
		s.stdin <- bytes.Clone(line)
	}
}

// writeStdout writes lines, flushing whenever no more are waiting, until
// s.out is closed. After a write error it reports it once and discards
// the rest, so that run never blocks on it.
func (s *shim) writeStdout() {
	defer close(s.outDone)
	w := bufio.NewWriterSize(s.o.Stdout, 64<<10)
	var err error
	for line := range s.out {
		if err != nil {
			continue
		}
		if _, err = w.Write(line); err == nil && len(s.out) == 0 {
			err = w.Flush()
		}
		if err != nil {
			s.outErr <- err
		}
	}
	if err == nil {
		_ = w.Flush()
	}
}

// idKey is a request id as a map key: its raw JSON, with string escapes
// resolved so that the daemon's re-encoding of an id still matches.
func idKey(raw []byte) string {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw)
	}
	if s, ok := stringID(raw); ok {
		return strconv.Quote(s)
	}
	return string(raw)
}

// stringID decodes a string id.
func stringID(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// clientHello takes the stdio client's bridge/hello apart: envelope is the
// shim's business (its connection is always enveloped; it unwraps events
// unless the client asked for envelopes), the rest goes to the daemon.
func clientHello(b []byte, hd jsonrpc.Header) ([]byte, *helloWish) {
	var m struct {
		Params map[string]json.RawMessage `json:"params"`
	}
	if jsonrpc.Unmarshal(b, &m) != nil || m.Params == nil {
		return b, nil
	}
	w := &helloWish{}
	if raw, ok := m.Params["envelope"]; ok {
		var v bool
		if json.Unmarshal(raw, &v) != nil {
			return b, nil // invalid: the daemon says so
		}
		w.envelope = &v
		delete(m.Params, "envelope")
	}
	if raw, ok := m.Params["onSlow"]; ok {
		_ = json.Unmarshal(raw, &w.onSlow)
	}
	return jsonrpc.AppendRequest(nil, hd.ID, "bridge/hello", m.Params), w
}

// attachCursor reads bridge/attach's since and whether it says last.
func attachCursor(b []byte) (*uint64, bool) {
	var m struct {
		Params struct {
			Since *uint64          `json:"since"`
			Last  *json.RawMessage `json:"last"`
		} `json:"params"`
	}
	if jsonrpc.Unmarshal(b, &m) != nil {
		return nil, false
	}
	return m.Params.Since, m.Params.Last != nil
}

// rewriteResult returns the response b with its result object edited.
func rewriteResult(b []byte, hd jsonrpc.Header, edit func(map[string]json.RawMessage)) []byte {
	var m struct {
		Result map[string]json.RawMessage `json:"result"`
	}
	if jsonrpc.Unmarshal(b, &m) != nil || m.Result == nil {
		return b
	}
	edit(m.Result)
	res, err := json.Marshal(m.Result)
	if err != nil {
		return b
	}
	return jsonrpc.AppendRawResponse(nil, hd.ID, res)
}

var (
	eventPrefix  = []byte(`{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":"`)
	eventSeq     = []byte(`,"seq":`)
	eventMessage = []byte(`,"message":`)
)

// parseEvent reads a bridge/event: its session, seq and message, the
// latter borrowed from b. The daemon's own layout is read without
// decoding; any other (a reordered or escaped one) is decoded.
func parseEvent(b []byte) (sid string, seq uint64, msg []byte, ok bool) {
	b = bytes.TrimRight(b, " \t\r\n")
	if rest, found := bytes.CutPrefix(b, eventPrefix); found {
		if i := bytes.IndexByte(rest, '"'); i > 0 && bytes.IndexByte(rest[:i], '\\') < 0 {
			sid = string(rest[:i])
			if r, found := bytes.CutPrefix(rest[i+1:], eventSeq); found {
				j := 0
				for j < len(r) && r[j] >= '0' && r[j] <= '9' {
					j++
				}
				if n, err := strconv.ParseUint(string(r[:j]), 10, 64); err == nil {
					if body, found := bytes.CutPrefix(r[j:], eventMessage); found && bytes.HasSuffix(body, []byte("}}")) {
						body = bytes.TrimSpace(body[:len(body)-2])
						// One JSON-RPC message and nothing after it.
						if _, err := jsonrpc.Peek(body); err == nil {
							return sid, n, body, true
						}
					}
				}
			}
		}
	}
	var v struct {
		Method string `json:"method"`
		Params struct {
			SessionID string          `json:"sessionId"`
			Seq       uint64          `json:"seq"`
			Message   json.RawMessage `json:"message"`
		} `json:"params"`
	}
	if json.Unmarshal(b, &v) != nil || v.Method != "bridge/event" || v.Params.SessionID == "" || len(v.Params.Message) == 0 {
		return "", 0, nil, false
	}
	return v.Params.SessionID, v.Params.Seq, v.Params.Message, true
}
