package demoagent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// codeResourceNotFound is ACP's error for a session the agent does not
// have (session/resume, session/fork, session/close, session/delete).
const codeResourceNotFound = -32002

// codeUnsupportedVersion is what a v2 agent answers an initialize asking
// for an older version (the SDK's AgentProtocolRouter does the same).
const codeUnsupportedVersion = -32022

// historyBytes bounds the text a session keeps for session/load.
const historyBytes = 64 << 10

// Run serves one client over in and out until in ends (then it cancels the
// running prompts, lets them answer, flushes and returns nil), ctx ends (it
// returns at once with ctx's error, abandoning a Read blocked in in), or out
// fails. Run owns in and out for its duration; call it from any goroutine.
func Run(ctx context.Context, in io.Reader, out io.Writer, opts Options) error {
	hard, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a := &agent{
		opts:     opts.normalized(),
		hard:     hard,
		sessions: make(map[string]*session),
		pending:  make(map[string]chan *inMsg),
	}
	a.exit = opts.exit
	if a.exit == nil {
		a.exit = os.Exit
	}
	a.crash = func() { cancel(ErrCrashed) }
	a.w = newWriter(hard, out, func(err error) { cancel(fmt.Errorf("demoagent: write: %w", err)) })

	readDone := make(chan error, 1)
	go func() { readDone <- a.readLoop(in) }()

	select {
	case err := <-readDone:
		a.cancelAll()
		a.prompts.Wait()
		close(a.w.stop)
		select {
		case <-a.w.done:
		case <-hard.Done():
		}
		if c := context.Cause(hard); c != nil {
			return c
		}
		if err == io.EOF {
			return nil
		}
		return fmt.Errorf("demoagent: read: %w", err)
	case <-hard.Done():
		a.cancelAll()
		a.prompts.Wait()
		return context.Cause(hard)
	}
}

type agent struct {
	opts  Options
	hard  context.Context
	w     *writer
	exit  func(int)
	crash func()

	prompts sync.WaitGroup

	mu sync.Mutex
	// Guarded by mu.
	sessions map[string]*session
	pending  map[string]chan *inMsg // our requests awaiting the client, by id
	nextID   int64                  // last id of a request we sent
	nextCall int64                  // last tool call number
	closed   bool                   // Run is finishing: no new prompts
}

type session struct {
	id  string
	cwd string
	// Guarded by agent.mu.
	cancel   context.CancelFunc // non-nil while a prompt runs
	promptID string             // idKey of the running prompt's request id
	history  []turn
	hbytes   int
	closed   bool // session/close: resume it before prompting again
	updated  time.Time
	title    string
}

type turn struct{ user, agent string }

// readLoop dispatches incoming messages until in fails.
func (a *agent) readLoop(in io.Reader) error {
	lr := &lineReader{r: bufio.NewReaderSize(in, 64<<10), max: maxLine}
	for {
		line, err := lr.next()
		if err == errLineTooLong {
			a.replyErr(nullID, codeInvalidRequest, fmt.Sprintf("message over %d bytes", maxLine))
			continue
		}
		if err != nil {
			return err
		}
		if a.hard.Err() != nil {
			return a.hard.Err()
		}
		a.dispatch(line)
	}
}

func (a *agent) dispatch(line []byte) {
	if line[0] == '[' {
		a.replyErr(nullID, codeInvalidRequest, "batches are not supported: send one message per line")
		return
	}
	var m inMsg
	if err := json.Unmarshal(line, &m); err != nil {
		a.replyErr(nullID, codeParseError, "parse error: "+err.Error())
		return
	}
	hasID := len(m.ID) > 0
	switch {
	case m.JSONRPC != "2.0":
		a.replyErr(idOrNull(m.ID), codeInvalidRequest, `jsonrpc must be "2.0"`)
	case m.Method != "" && hasID:
		a.request(&m)
	case m.Method != "":
		a.notification(&m)
	case hasID && (m.Result != nil || m.Error != nil):
		a.response(&m)
	default:
		a.replyErr(idOrNull(m.ID), codeInvalidRequest, "neither a request, a notification nor a response")
	}
}

func idOrNull(id json.RawMessage) json.RawMessage {
	if len(id) == 0 {
		return nullID
	}
	return id
}

// rpcErr is a handler's failure, answered as a JSON-RPC error.
type rpcErr struct {
	code int
	msg  string
}

func (e *rpcErr) Error() string { return e.msg }

func invalidParams(format string, args ...any) error {
	return &rpcErr{codeInvalidParams, fmt.Sprintf(format, args...)}
}

func (a *agent) request(m *inMsg) {
	var (
		result any
		err    error
	)
	switch m.Method {
	case "initialize":
		result, err = a.initialize(m.Params)
	case "session/new":
		result, err = a.newSession(m.Params)
	case "session/load":
		if a.opts.Protocol == 2 {
			err = &rpcErr{codeMethodNotFound, "method \"session/load\" not found (ACP v2: use session/resume with replayFrom)"}
			break
		}
		result, err = a.loadSession(m.Params)
	case "session/resume":
		result, err = a.resumeSession(m.Params)
	case "session/fork":
		result, err = a.forkSession(m.Params)
	case "session/close":
		result, err = a.closeSession(m.Params)
	case "session/delete":
		result, err = a.deleteSession(m.Params)
	case "session/list":
		result, err = a.listSessions(m.Params)
	case "session/prompt":
		// The prompt answers from its own goroutine.
		if err = a.prompt(m.ID, m.Params); err == nil {
			return
		}
	case "session/cancel":
		// A notification in ACP; answer it anyway when sent as a request.
		if err = a.cancelSession(m.Params); err == nil {
			result = struct{}{}
		}
	default:
		err = &rpcErr{codeMethodNotFound, fmt.Sprintf("method %q not found", m.Method)}
	}
	if err != nil {
		var re *rpcErr
		if !errors.As(err, &re) {
			re = &rpcErr{codeInternal, err.Error()}
		}
		a.replyErr(m.ID, re.code, re.msg)
		return
	}
	a.reply(m.ID, result)
}

func (a *agent) notification(m *inMsg) {
	switch m.Method {
	case "session/cancel":
		_ = a.cancelSession(m.Params) // nobody to tell about bad params
	case "$/cancel_request":
		a.cancelRequest(m.Params)
	}
}

// response routes the client's answer to one of our requests.
func (a *agent) response(m *inMsg) {
	key := idKey(m.ID)
	a.mu.Lock()
	ch := a.pending[key]
	delete(a.pending, key)
	a.mu.Unlock()
	if ch != nil {
		ch <- m // buffered; the waiter may have gone
	}
}

// idKey canonicalises an id so 7 and 7.0 match; strings keep their quotes
// so "7" and 7 do not.
func idKey(id json.RawMessage) string {
	id = bytes.TrimSpace(id)
	if len(id) > 0 && id[0] != '"' {
		if f, err := strconv.ParseFloat(string(id), 64); err == nil {
			return strconv.FormatFloat(f, 'g', -1, 64)
		}
	}
	return string(id)
}

func (a *agent) initialize(raw json.RawMessage) (any, error) {
	var p struct {
		ProtocolVersion json.RawMessage `json:"protocolVersion"`
	}
	if err := decodeParams(raw, &p, false); err != nil {
		return nil, err
	}
	if p.ProtocolVersion != nil {
		if _, err := strconv.ParseUint(string(p.ProtocolVersion), 10, 16); err != nil {
			return nil, invalidParams("protocolVersion must be a small non-negative integer, got %s", p.ProtocolVersion)
		}
	}
	info := map[string]string{"name": "agentbridge-demo", "title": "agentbridge demo agent", "version": "1"}
	if a.opts.Protocol == 2 {
		// The highest version at or below the one asked for, as the SDK's
		// router does; this agent speaks only 2.
		if p.ProtocolVersion != nil && string(p.ProtocolVersion) < "2" && len(p.ProtocolVersion) == 1 {
			return nil, &rpcErr{codeUnsupportedVersion, fmt.Sprintf("protocol version %s is not supported; this agent speaks version 2", p.ProtocolVersion)}
		}
		return map[string]any{
			"protocolVersion": 2,
			"info":            info,
			"capabilities": map[string]any{
				"session": map[string]any{"fork": map[string]any{}, "delete": map[string]any{}},
			},
			"authMethods": []any{},
		}, nil
	}
	// Version negotiation: answer with the one version spoken here; a client
	// that cannot speak it disconnects.
	return map[string]any{
		"protocolVersion": 1,
		"agentCapabilities": map[string]any{
			"loadSession":        true,
			"promptCapabilities": map[string]bool{"image": false, "audio": false, "embeddedContext": false},
			"mcpCapabilities":    map[string]bool{"http": false, "sse": false},
			"sessionCapabilities": map[string]any{
				"list": map[string]any{}, "resume": map[string]any{}, "close": map[string]any{},
				"fork": map[string]any{}, "delete": map[string]any{},
			},
		},
		"agentInfo":   info,
		"authMethods": []any{},
	}, nil
}

// sessionParams are the fields of session/new and session/load this agent
// reads; it runs no MCP servers, so mcpServers is only type-checked.
type sessionParams struct {
	SessionID  *string          `json:"sessionId"`
	Cwd        *string          `json:"cwd"`
	MCPServers *json.RawMessage `json:"mcpServers"`
}

func (p *sessionParams) check() error {
	if p.MCPServers != nil && len(*p.MCPServers) > 0 && (*p.MCPServers)[0] != '[' && string(*p.MCPServers) != "null" {
		return invalidParams("mcpServers must be an array")
	}
	return nil
}

func (a *agent) newSession(raw json.RawMessage) (any, error) {
	var p sessionParams
	if err := decodeParams(raw, &p, false); err != nil {
		return nil, err
	}
	if err := p.check(); err != nil {
		return nil, err
	}
	s := a.addSession(p.Cwd, nil)
	if a.opts.SessionsDir != "" {
		if err := os.WriteFile(filepath.Join(a.opts.SessionsDir, s.id), []byte(s.cwd), 0o600); err != nil {
			return nil, &rpcErr{codeInternal, "cannot keep the session: " + err.Error()}
		}
	}
	return map[string]string{"sessionId": s.id}, nil
}

var keptID = regexp.MustCompile(`^sess_[0-9a-f]{16}$`)

// keptSession brings back a session an earlier process kept in
// SessionsDir (nil if none), with no history.
func (a *agent) keptSession(id string) *session {
	if a.opts.SessionsDir == "" || !keptID.MatchString(id) {
		return nil
	}
	cwd, err := os.ReadFile(filepath.Join(a.opts.SessionsDir, id))
	if err != nil {
		return nil
	}
	s := &session{id: id, cwd: string(cwd), updated: time.Now()}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.sessions[id]; old != nil {
		return old
	}
	a.sessions[id] = s
	return s
}

// addSession makes a session with a fresh id and the given history.
func (a *agent) addSession(cwd *string, history []turn) *session {
	var b [8]byte
	rand.Read(b[:])
	s := &session{id: "sess_" + hex.EncodeToString(b[:]), updated: time.Now()}
	if cwd != nil {
		s.cwd = *cwd
	}
	for _, t := range history {
		s.remember(t)
	}
	a.mu.Lock()
	a.sessions[s.id] = s
	a.mu.Unlock()
	return s
}

func (a *agent) loadSession(raw json.RawMessage) (any, error) {
	var p sessionParams
	if err := decodeParams(raw, &p, true); err != nil {
		return nil, err
	}
	if err := p.check(); err != nil {
		return nil, err
	}
	if p.SessionID == nil {
		return nil, invalidParams("sessionId is required")
	}
	a.mu.Lock()
	s := a.sessions[*p.SessionID]
	var history []turn
	if s != nil {
		history = append(history, s.history...)
	}
	a.mu.Unlock()
	if s == nil {
		s = a.keptSession(*p.SessionID)
	}
	if s == nil {
		return nil, invalidParams("unknown session %s", *p.SessionID)
	}
	a.mu.Lock()
	s.closed = false
	a.mu.Unlock()
	a.replay(s.id, history)
	return nil, nil
}

// replay sends a session's history as message chunks (v2: with message ids).
func (a *agent) replay(sid string, history []turn) {
	for i, t := range history {
		u := map[string]any{"sessionUpdate": "user_message_chunk", "content": textBlock(t.user)}
		if a.opts.Protocol == 2 {
			u["messageId"] = fmt.Sprintf("%s-u%d", sid, i+1)
		}
		a.update(sid, u)
		if t.agent != "" {
			u := map[string]any{"sessionUpdate": "agent_message_chunk", "content": textBlock(t.agent)}
			if a.opts.Protocol == 2 {
				u["messageId"] = fmt.Sprintf("%s-a%d", sid, i+1)
			}
			a.update(sid, u)
		}
	}
}

// lifecycleParams are the fields of session/resume, fork, close and delete.
type lifecycleParams struct {
	SessionID  *string          `json:"sessionId"`
	Cwd        *string          `json:"cwd"`
	ReplayFrom *json.RawMessage `json:"replayFrom"`
}

// known decodes params and finds the session they name: -32602 for bad
// params, -32002 for a session this agent does not have.
func (a *agent) known(raw json.RawMessage, p *lifecycleParams) (*session, error) {
	if err := decodeParams(raw, p, true); err != nil {
		return nil, err
	}
	if p.SessionID == nil {
		return nil, invalidParams("sessionId is required")
	}
	a.mu.Lock()
	s := a.sessions[*p.SessionID]
	a.mu.Unlock()
	if s == nil {
		return nil, &rpcErr{codeResourceNotFound, "unknown session " + *p.SessionID}
	}
	return s, nil
}

// resumeSession reopens a session (after session/close or on a new
// connection). v2: replayFrom {type: "start"} replays the history first,
// and a state_update snapshot precedes the answer, as the schema asks.
func (a *agent) resumeSession(raw json.RawMessage) (any, error) {
	var p lifecycleParams
	s, err := a.known(raw, &p)
	if err != nil {
		return nil, err
	}
	if p.Cwd == nil {
		return nil, invalidParams("cwd is required")
	}
	replay := false
	if p.ReplayFrom != nil && string(*p.ReplayFrom) != "null" {
		var rf struct {
			Type string `json:"type"`
		}
		if a.opts.Protocol != 2 {
			return nil, invalidParams("replayFrom is a protocol version 2 parameter")
		}
		if json.Unmarshal(*p.ReplayFrom, &rf) != nil || rf.Type != "start" {
			return nil, invalidParams("replayFrom %s is not supported (only {\"type\":\"start\"})", *p.ReplayFrom)
		}
		replay = true
	}
	a.mu.Lock()
	s.closed = false
	history := append([]turn(nil), s.history...)
	running := s.cancel != nil
	a.mu.Unlock()
	if replay {
		a.replay(s.id, history)
	}
	if a.opts.Protocol == 2 {
		state := "idle"
		if running {
			state = "running"
		}
		a.update(s.id, map[string]any{"sessionUpdate": "state_update", "state": state})
	}
	return struct{}{}, nil
}

// forkSession copies a session's history into a new session.
func (a *agent) forkSession(raw json.RawMessage) (any, error) {
	var p lifecycleParams
	src, err := a.known(raw, &p)
	if err != nil {
		return nil, err
	}
	if p.Cwd == nil {
		return nil, invalidParams("cwd is required")
	}
	a.mu.Lock()
	history := append([]turn(nil), src.history...)
	a.mu.Unlock()
	s := a.addSession(p.Cwd, history)
	return map[string]string{"sessionId": s.id}, nil
}

// closeSession cancels the session's prompt, as session/cancel would, and
// closes it until it is resumed.
func (a *agent) closeSession(raw json.RawMessage) (any, error) {
	var p lifecycleParams
	s, err := a.known(raw, &p)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	if s.cancel != nil {
		s.cancel()
	}
	s.closed = true
	a.mu.Unlock()
	return struct{}{}, nil
}

// deleteSession forgets a session.
func (a *agent) deleteSession(raw json.RawMessage) (any, error) {
	var p lifecycleParams
	s, err := a.known(raw, &p)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	if s.cancel != nil {
		s.cancel()
	}
	delete(a.sessions, s.id)
	a.mu.Unlock()
	return struct{}{}, nil
}

// listSessions lists the sessions, optionally those of one cwd, oldest
// first; no pagination (no nextCursor).
func (a *agent) listSessions(raw json.RawMessage) (any, error) {
	var p struct {
		Cwd *string `json:"cwd"`
	}
	if err := decodeParams(raw, &p, false); err != nil {
		return nil, err
	}
	a.mu.Lock()
	list := make([]*session, 0, len(a.sessions))
	for _, s := range a.sessions {
		if p.Cwd == nil || *p.Cwd == s.cwd {
			list = append(list, s)
		}
	}
	out := make([]map[string]any, 0, len(list))
	slices.SortFunc(list, func(x, y *session) int { return x.updated.Compare(y.updated) })
	for _, s := range list {
		e := map[string]any{"sessionId": s.id, "cwd": s.cwd, "updatedAt": s.updated.UTC().Format(time.RFC3339Nano)}
		if len(s.history) > 0 {
			e["title"] = firstLine(s.history[0].user)
		}
		out = append(out, e)
	}
	a.mu.Unlock()
	return map[string]any{"sessions": out}, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// cancelRequest handles $/cancel_request for a running prompt: it cancels
// the turn whose session/prompt had that id.
func (a *agent) cancelRequest(raw json.RawMessage) {
	var p struct {
		RequestID json.RawMessage `json:"requestId"`
	}
	if decodeParams(raw, &p, true) != nil || len(p.RequestID) == 0 {
		return
	}
	key := idKey(p.RequestID)
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.sessions {
		if s.cancel != nil && s.promptID == key {
			s.cancel()
		}
	}
}

func (a *agent) cancelSession(raw json.RawMessage) error {
	var p struct {
		SessionID *string `json:"sessionId"`
	}
	if err := decodeParams(raw, &p, true); err != nil {
		return err
	}
	if p.SessionID == nil {
		return invalidParams("sessionId is required")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.sessions[*p.SessionID]
	if s == nil {
		return invalidParams("unknown session %s", *p.SessionID)
	}
	if s.cancel != nil {
		s.cancel()
	}
	return nil
}

// cancelAll stops every running prompt and refuses new ones, so that
// prompts.Wait can follow.
func (a *agent) cancelAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	for _, s := range a.sessions {
		if s.cancel != nil {
			s.cancel()
		}
	}
}

func decodeParams(raw json.RawMessage, v any, required bool) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		if required {
			return invalidParams("params are required")
		}
		return nil
	}
	if raw[0] != '{' {
		return invalidParams("params must be an object")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return invalidParams("bad params: %v", err)
	}
	return nil
}

func textBlock(text string) map[string]string {
	return map[string]string{"type": "text", "text": text}
}

// reply answers a request; result nil is JSON null.
func (a *agent) reply(id json.RawMessage, result any) {
	raw, err := json.Marshal(result)
	if err != nil {
		a.replyErr(id, codeInternal, "encoding the result: "+err.Error())
		return
	}
	a.write(response{JSONRPC: "2.0", ID: id, Result: raw})
}

func (a *agent) replyErr(id json.RawMessage, code int, msg string) {
	a.write(response{JSONRPC: "2.0", ID: id, Error: &rpcError{Code: code, Message: msg}})
}

// update sends a session/update notification.
func (a *agent) update(sessionID string, update any) error {
	return a.write(outRequest{JSONRPC: "2.0", Method: "session/update",
		Params: map[string]any{"sessionId": sessionID, "update": update}})
}

func (a *agent) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return a.w.send(b)
}

// prompt validates a session/prompt and starts its goroutine.
func (a *agent) prompt(id json.RawMessage, raw json.RawMessage) error {
	var p struct {
		SessionID *string           `json:"sessionId"`
		Prompt    []json.RawMessage `json:"prompt"`
	}
	if err := decodeParams(raw, &p, true); err != nil {
		return err
	}
	if p.SessionID == nil {
		return invalidParams("sessionId is required")
	}
	if p.Prompt == nil {
		return invalidParams("prompt must be an array of content blocks")
	}
	var text strings.Builder
	for i, blk := range p.Prompt {
		var b struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(blk, &b); err != nil || b.Type == "" {
			return invalidParams("prompt[%d] is not a content block", i)
		}
		if b.Type == "text" {
			text.WriteString(b.Text)
		}
	}

	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return &rpcErr{codeInternal, "the agent is shutting down"}
	}
	s := a.sessions[*p.SessionID]
	if s == nil {
		a.mu.Unlock()
		return invalidParams("unknown session %s", *p.SessionID)
	}
	if s.cancel != nil {
		a.mu.Unlock()
		return invalidParams("session %s is busy: a prompt is already running (send session/cancel first)", s.id)
	}
	if s.closed {
		a.mu.Unlock()
		return &rpcErr{codeResourceNotFound, "session " + s.id + " is closed; send session/resume first"}
	}
	ctx, cancel := context.WithCancel(a.hard)
	s.cancel, s.promptID, s.updated = cancel, idKey(id), time.Now()
	turnNo := len(s.history) + 1
	a.prompts.Add(1)
	a.mu.Unlock()

	if a.opts.Protocol == 2 {
		// v2: the answer acknowledges the prompt's insertion; the turn is
		// reported by state_update.
		a.reply(id, map[string]string{"messageId": fmt.Sprintf("%s-u%d", s.id, turnNo)})
	}
	go a.runPrompt(ctx, s, id, text.String(), turnNo)
	return nil
}

// runPrompt streams one prompt's turn and answers the request.
func (a *agent) runPrompt(ctx context.Context, s *session, id json.RawMessage, text string, turnNo int) {
	defer a.prompts.Done()
	v2 := a.opts.Protocol == 2
	msgID := ""
	if v2 {
		msgID = fmt.Sprintf("%s-a%d", s.id, turnNo)
		a.update(s.id, map[string]any{"sessionUpdate": "user_message_chunk", "messageId": fmt.Sprintf("%s-u%d", s.id, turnNo), "content": textBlock(text)})
		a.state(s.id, "running", "")
	}
	var said strings.Builder
	stop := "end_turn"
	if !a.stream(ctx, s, text, &said, msgID) {
		stop = "cancelled"
	}
	if a.hard.Err() != nil {
		return // crashed or shut down hard: nothing more goes out
	}
	a.mu.Lock()
	s.cancel()
	s.cancel, s.promptID = nil, ""
	s.remember(turn{user: text, agent: said.String()})
	a.mu.Unlock()
	if v2 {
		a.state(s.id, "idle", stop)
		return
	}
	a.reply(id, map[string]string{"stopReason": stop})
}

// state sends a v2 state_update.
func (a *agent) state(sid, state, stopReason string) error {
	u := map[string]any{"sessionUpdate": "state_update", "state": state}
	if stopReason != "" {
		u["stopReason"] = stopReason
	}
	return a.update(sid, u)
}

// stream sends the turn's updates; it reports false when the turn was
// cancelled.
func (a *agent) stream(ctx context.Context, s *session, text string, said *strings.Builder, msgID string) bool {
	if echo, ok := strings.CutPrefix(text, "echo:"); ok {
		said.WriteString(echo)
		return a.chunk(s.id, echo, msgID) == nil
	}
	o := &a.opts
	crashAt := -1
	if strings.Contains(text, "crash") {
		crashAt = o.Chunks / 2
	}
	// Chunk i is due (i-1)·Pace after the first was sent: paced against
	// that schedule, not by a delay after each send, so the rate is
	// Pace's whatever a send and the timer's wake-up cost (a delay per
	// chunk falls behind by both, every chunk). A late chunk goes at once.
	var (
		pace  *time.Timer
		start time.Time // when the first chunk was sent
	)
	for i := 1; i <= o.Chunks; i++ {
		if i-1 == crashAt {
			a.crashNow()
			return false
		}
		if wait := time.Until(start.Add(time.Duration(i-1) * o.Pace)); i > 1 && o.Pace > 0 && wait > 0 {
			if pace == nil {
				pace = time.NewTimer(wait)
				defer pace.Stop()
			} else {
				pace.Reset(wait)
			}
			select {
			case <-pace.C:
			case <-ctx.Done():
				return false
			}
		}
		if ctx.Err() != nil {
			return false
		}
		t := ChunkText(i, o.Chunks, o.ChunkSize)
		if said.Len() < historyBytes {
			said.WriteString(t)
		}
		if a.chunk(s.id, t, msgID) != nil {
			return false
		}
		if i == 1 {
			start = time.Now()
		}
	}
	if crashAt >= 0 {
		a.crashNow() // no chunks to crash in the middle of
		return false
	}
	for k := 1; k <= o.ToolCalls; k++ {
		if ctx.Err() != nil || !a.toolCall(ctx, s, k) {
			return false
		}
	}
	return ctx.Err() == nil
}

// chunk sends one agent_message_chunk. It is the hot path of every
// benchmark, so it is encoded by hand rather than through reflection.
func (a *agent) chunk(sessionID, text, msgID string) error {
	b := make([]byte, 0, 160+len(sessionID)+len(text)+len(msgID))
	b = append(b, `{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":`...)
	b = appendString(b, sessionID)
	b = append(b, `,"update":{"sessionUpdate":"agent_message_chunk",`...)
	if msgID != "" { // v2: chunks name their message
		b = append(b, `"messageId":`...)
		b = appendString(b, msgID)
		b = append(b, ',')
	}
	b = append(b, `"content":{"type":"text","text":`...)
	b = appendString(b, text)
	b = append(b, '}')
	if a.opts.Stamp {
		b = append(b, `,"_meta":{"sentAt":`...)
		b = strconv.AppendInt(b, time.Now().UnixNano(), 10)
		b = append(b, '}')
	}
	b = append(b, "}}}"...)
	return a.w.send(b)
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// toolCall runs tool call k of the turn; it reports false when the turn was
// cancelled meanwhile.
func (a *agent) toolCall(ctx context.Context, s *session, k int) bool {
	a.mu.Lock()
	a.nextCall++
	callID := "call_" + strconv.FormatInt(a.nextCall, 10)
	a.mu.Unlock()
	title := fmt.Sprintf("Read demo/file%d.txt", k)
	call := map[string]any{
		"toolCallId": callID,
		"title":      title,
		"kind":       "read",
		"status":     "pending",
	}
	announce := map[string]any{"sessionUpdate": "tool_call", "rawInput": map[string]string{"path": fmt.Sprintf("demo/file%d.txt", k)}}
	if a.opts.Protocol == 2 {
		announce["sessionUpdate"] = "tool_call_update" // v2: an upsert, no separate tool_call
	}
	for k, v := range call {
		announce[k] = v
	}
	if a.update(s.id, announce) != nil {
		return false
	}

	allowed, cancelled := true, false
	if a.opts.Permission {
		allowed, cancelled = a.askPermission(ctx, s, call)
	}
	upd := map[string]any{"sessionUpdate": "tool_call_update", "toolCallId": callID, "status": "failed"}
	if allowed && !cancelled {
		upd["status"] = "completed"
		upd["content"] = []any{map[string]any{"type": "content", "content": textBlock(fmt.Sprintf("contents of demo/file%d.txt", k))}}
	}
	if a.update(s.id, upd) != nil {
		return false
	}
	return !cancelled
}

// askPermission sends session/request_permission and waits for the client's
// answer or the turn's cancellation. An error answer or an option that is not
// an allow option counts as a rejection.
func (a *agent) askPermission(ctx context.Context, s *session, call map[string]any) (allowed, cancelled bool) {
	ch := make(chan *inMsg, 1)
	a.mu.Lock()
	a.nextID++
	id := a.nextID
	key := strconv.FormatInt(id, 10)
	a.pending[key] = ch
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.pending, key)
		a.mu.Unlock()
	}()

	params := map[string]any{
		"sessionId": s.id,
		"toolCall":  call,
		"options": []map[string]string{
			{"optionId": "allow", "name": "Allow", "kind": "allow_once"},
			{"optionId": "reject", "name": "Reject", "kind": "reject_once"},
		},
	}
	v2 := a.opts.Protocol == 2
	if v2 {
		// v2 asks with a title; the tool call is named in _meta.
		delete(params, "toolCall")
		params["title"] = call["title"]
		params["_meta"] = map[string]any{"toolCallId": call["toolCallId"]}
		if a.state(s.id, "requires_action", "") != nil {
			return false, true
		}
	}
	if err := a.write(outRequest{JSONRPC: "2.0", ID: id, Method: "session/request_permission", Params: params}); err != nil {
		return false, true
	}
	var m *inMsg
	select {
	case m = <-ch:
	case <-ctx.Done():
		return false, true
	}
	if v2 {
		a.state(s.id, "running", "")
	}
	if m.Error != nil {
		return false, false
	}
	var r struct {
		Outcome struct {
			Outcome  string `json:"outcome"`
			OptionID string `json:"optionId"`
		} `json:"outcome"`
	}
	if json.Unmarshal(m.Result, &r) != nil {
		return false, false
	}
	switch r.Outcome.Outcome {
	case "cancelled":
		return false, true
	case "selected":
		return strings.HasPrefix(r.Outcome.OptionID, "allow"), false
	}
	return false, false
}

// crashNow flushes what was streamed and exits with status 3.
func (a *agent) crashNow() {
	a.w.sync()
	a.exit(3)
	a.crash() // only reached when exit is a test hook
}

// remember appends t to the history, dropping the oldest turns past
// historyBytes. Caller holds agent.mu.
func (s *session) remember(t turn) {
	s.history = append(s.history, t)
	s.hbytes += len(t.user) + len(t.agent)
	drop := 0
	for s.hbytes > historyBytes && drop < len(s.history)-1 {
		s.hbytes -= len(s.history[drop].user) + len(s.history[drop].agent)
		drop++
	}
	s.history = append(s.history[:0], s.history[drop:]...)
}
