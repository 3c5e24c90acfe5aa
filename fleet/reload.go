package fleet

// Re-loading a restarted node's sessions. The node records, in the KV
// bucket agentbridge-<fleet>-loads (no TTL: it outlives the node), its
// agent's first successful initialize request (key init.<node>; a dot never
// occurs in an encoded session id) and, per session, the cwd and
// mcpServers of the session/new, load or resume that created or last
// loaded it (key: the encoded id, value loadEntry). When the node starts
// again it brings those sessions back into its hub (Hub.Restore, with the
// last seq the stream holds for them, so that new events continue the
// numbering rather than repeat it) and loads them into its new agent as a
// client of its own would: initialize with the recorded request, then
// session/load (agentCapabilities.loadSession) or session/resume
// (sessionCapabilities.resume) per session. A loaded session is active
// again; the next refresh tells the fleet, and the other nodes' mirrors
// announce the status to their clients.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// loadEntry is a session's value in the loads bucket.
type loadEntry struct {
	Node       string          `json:"node"`
	Method     string          `json:"method"` // what recorded it: session/new, load or resume
	Cwd        string          `json:"cwd,omitempty"`
	MCPServers json.RawMessage `json:"mcpServers,omitempty"`
}

// reloadCallTimeout bounds each request the re-load sends the new agent;
// reloadStartWait how long it retries initialize while the agent starts.
const (
	reloadCallTimeout = 60 * time.Second
	reloadStartWait   = 60 * time.Second
)

func initKey(node string) string { return "init." + node }

// RecordInitialize implements session.LoadRecorder. Called under the hub
// mutex: enqueues.
func (f *Fleet) RecordInitialize(request []byte) { f.enqueue(op{kind: 'i', body: request}) }

// RecordLoad implements session.LoadRecorder. Called under the hub mutex:
// enqueues.
func (f *Fleet) RecordLoad(sessionID string, request []byte) {
	f.enqueue(op{kind: 'l', sid: sessionID, body: request})
}

// putLoad records a load op (writer goroutine).
func (f *Fleet) putLoad(o op) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key, val := initKey(f.cfg.Node), o.body
	if o.kind == 'l' {
		var req struct {
			Method string `json:"method"`
			Params struct {
				Cwd        string          `json:"cwd"`
				MCPServers json.RawMessage `json:"mcpServers"`
			} `json:"params"`
		}
		if err := json.Unmarshal(o.body, &req); err != nil {
			f.log.Warn("fleet: cannot read the session's load request; not recorded", "session", o.sid, "err", err)
			return
		}
		key = Encode(o.sid)
		val, _ = json.Marshal(loadEntry{Node: f.cfg.Node, Method: req.Method, Cwd: req.Params.Cwd, MCPServers: req.Params.MCPServers})
	}
	if _, err := f.loads.Put(ctx, key, val); err != nil {
		f.log.Warn("fleet: cannot record what re-loads the session after a restart", "key", key, "err", err)
	}
}

// recorded reads this node's initialize request and its sessions' load
// entries from the loads bucket.
func (f *Fleet) recorded(ctx context.Context) (init []byte, sessions map[string]loadEntry, err error) {
	keys, err := f.loads.ListKeys(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = keys.Stop() }()
	sessions = map[string]loadEntry{}
	for k := range keys.Keys() {
		if strings.Contains(k, ".") {
			if k == initKey(f.cfg.Node) {
				if e, err := f.loads.Get(ctx, k); err == nil {
					init = e.Value()
				}
			}
			continue
		}
		e, err := f.loads.Get(ctx, k)
		if err != nil {
			continue // deleted meanwhile
		}
		var le loadEntry
		if json.Unmarshal(e.Value(), &le) != nil || le.Node != f.cfg.Node {
			continue
		}
		if sid, err := Decode(k); err == nil {
			sessions[sid] = le
		}
	}
	return init, sessions, nil
}

// lastSeq is the seq of the last event the stream holds for sid (0 for
// none).
func (f *Fleet) lastSeq(ctx context.Context, sid string) uint64 {
	s, err := f.js.Stream(ctx, f.stream)
	if err != nil {
		return 0
	}
	m, err := s.GetLastMsgForSubject(ctx, f.Subject(sid))
	if err != nil {
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			f.log.Warn("fleet: cannot read a session's last event", "session", sid, "err", err)
		}
		return 0
	}
	seq, _ := strconv.ParseUint(m.Header.Get(SeqHeader), 10, 64)
	if n, err := strconv.ParseUint(m.Header.Get(CountHeader), 10, 64); err == nil && n > 1 && seq > 0 {
		seq += n - 1 // a run of events (fleet.go)
	}
	return seq
}

// reload re-loads this node's recorded sessions into its agent (see the
// file comment). Run once by Start, on its own goroutine.
func (f *Fleet) reload(h ForwardHub) {
	defer f.wg.Done()
	ctx := f.ctx
	init, recs, err := f.recorded(ctx)
	if err != nil {
		f.log.Warn("fleet: cannot read the recorded sessions; none re-loaded", "err", err)
		return
	}
	if len(recs) == 0 {
		return
	}
	if init == nil {
		f.log.Warn("fleet: sessions recorded without the agent's initialize; not re-loaded", "sessions", len(recs))
		return
	}
	known := map[string]bool{}
	for _, in := range h.Sessions() {
		known[in.SessionID] = true
	}
	var restore []session.RestoredSession
	for sid := range recs {
		if !known[sid] {
			restore = append(restore, session.RestoredSession{ID: sid, Seq: f.lastSeq(ctx, sid)})
		}
	}
	h.Restore(restore)

	r := &reloader{waiting: map[string]chan []byte{}}
	cl := h.Open(r, session.ConnInfo{Role: auth.RoleClient, Transport: "fleet", Peer: "re-load"})
	defer h.Closed(cl) // the sessions it loaded are nobody's again
	var res []byte
	for start := time.Now(); ; {
		res, err = r.call(ctx, h, cl, init)
		if err == nil && errorCode(res) != codeAgentUnavailable {
			break
		}
		if ctx.Err() != nil || time.Since(start) > reloadStartWait {
			f.log.Warn("fleet: the agent did not initialize; sessions not re-loaded", "sessions", len(recs), "err", err, "answer", string(res))
			return
		}
		time.Sleep(250 * time.Millisecond) // the agent is (re)starting: retry
	}
	if errorCode(res) != 0 {
		f.log.Warn("fleet: the agent refused the recorded initialize; sessions not re-loaded", "answer", string(res))
		return
	}
	var caps struct {
		Result struct {
			AgentCapabilities struct {
				LoadSession         bool `json:"loadSession"`
				SessionCapabilities struct {
					Resume json.RawMessage `json:"resume"`
				} `json:"sessionCapabilities"`
			} `json:"agentCapabilities"`
		} `json:"result"`
	}
	_ = json.Unmarshal(res, &caps)
	method := ""
	switch ac := caps.Result.AgentCapabilities; {
	case ac.LoadSession:
		method = "session/load"
	case len(ac.SessionCapabilities.Resume) > 0 && string(ac.SessionCapabilities.Resume) != "null":
		method = "session/resume"
	default:
		f.log.Warn("fleet: the agent can neither load nor resume sessions; they stay closed", "sessions", len(recs))
		return
	}
	loaded := 0
	for sid, le := range recs {
		mcp := le.MCPServers
		if len(mcp) == 0 || string(mcp) == "null" {
			mcp = json.RawMessage("[]")
		}
		params, _ := json.Marshal(struct {
			SessionID  string          `json:"sessionId"`
			Cwd        string          `json:"cwd"`
			MCPServers json.RawMessage `json:"mcpServers"`
		}{sid, le.Cwd, mcp})
		req := jsonrpc.AppendRequest(nil, []byte("0"), method, json.RawMessage(params))
		ans, err := r.call(ctx, h, cl, req)
		if err == nil && errorCode(ans) == 0 {
			loaded++
			continue
		}
		f.log.Warn("fleet: a recorded session was not re-loaded", "session", sid, "method", method, "err", err, "answer", string(ans))
	}
	f.log.Info("fleet: re-loaded this node's sessions into its agent", "method", method, "loaded", loaded, "recorded", len(recs))
	f.refresh()
}

// reloader is the Conn of reload's own client: it hands answers to the
// waiting call and drops the rest (a load's replay: the logs hold it).
type reloader struct {
	mu      sync.Mutex // guards waiting, next
	waiting map[string]chan []byte
	next    int
}

// call sends req (any id: replaced) as the reloader's client and waits
// for the answer.
func (r *reloader) call(ctx context.Context, h ForwardHub, cl *session.Client, req []byte) ([]byte, error) {
	hd, err := jsonrpc.Peek(req)
	if err != nil {
		return nil, fmt.Errorf("recorded request: %v", err)
	}
	ch := make(chan []byte, 1)
	r.mu.Lock()
	r.next++
	id := strconv.AppendQuote(nil, "fleet-reload-"+strconv.Itoa(r.next))
	r.waiting[string(id)] = ch
	r.mu.Unlock()
	h.Handle(cl, jsonrpc.ReplaceID(nil, req, hd, id))
	t := time.NewTimer(reloadCallTimeout)
	defer t.Stop()
	select {
	case ans := <-ch:
		return ans, nil
	case <-t.C:
		return nil, fmt.Errorf("%s not answered within %s", hd.Method, reloadCallTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Send implements session.Conn. Called under the hub mutex: no blocking.
func (r *reloader) Send(m *wire.Msg, _ wire.Class) bool {
	hd, err := jsonrpc.Peek(m.Body())
	if err != nil || hd.Kind != jsonrpc.KindResponse {
		return true
	}
	r.mu.Lock()
	ch := r.waiting[string(hd.ID)]
	delete(r.waiting, string(hd.ID))
	r.mu.Unlock()
	if ch != nil {
		ch <- append([]byte(nil), m.Body()...)
	}
	return true
}

// Close implements session.Conn: nothing to do (reload closes it).
func (r *reloader) Close(session.CloseCode, string) {}

// errorCode is a response's error code, 0 for a result.
func errorCode(res []byte) int {
	var e struct {
		Error *jsonrpc.Error `json:"error"`
	}
	if json.Unmarshal(res, &e) != nil || e.Error == nil {
		return 0
	}
	return e.Error.Code
}

var (
	_ session.LoadRecorder = (*Fleet)(nil)
	_ session.Conn         = (*reloader)(nil)
)
