package session

import (
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/internal/lograte"
	"github.com/agentbridge/agentbridge/wire"
)

// Config configures a Hub. Every field's zero value is usable.
type Config struct {
	// Replay caps how many events each session keeps for replay and
	// catch-up. Zero means no count limit (bytes bound the logs); negative
	// keeps none.
	Replay int
	// ReplayBytes caps the bytes kept per session (each event costs its
	// bytes and about 100 more). Zero means 64 MiB.
	ReplayBytes int
	// ReplayMemory caps the bytes all session logs keep together; past it
	// the oldest events of the largest logs go first. Zero means 64 MiB:
	// one session holds a flood of 200,000 events of 200 bytes.
	ReplayMemory int
	// Recent is how many events bridge/snapshot returns. Zero means 50.
	Recent int
	// RequestTimeout bounds how long an agent request waits for a client's
	// answer (including while no eligible client is connected); then the
	// agent gets error -32005. Zero means 10 minutes.
	RequestTimeout time.Duration
	// Version is reported by bridge/hello.
	Version string
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Audit receives every control-plane decision; nil means none. It is
	// called under the hub lock and must not block (audit.Log.Record only
	// enqueues).
	Audit func(AuditRecord)
	// Journal persists events and sessions (--state-dir); nil means
	// memory only.
	Journal Journal
	// ResumeWindow is how long the calls of a connection that said
	// bridge/hello {resume} are kept after it drops. Zero means 2 minutes.
	ResumeWindow time.Duration
	// ResumeBytes caps the answers buffered for one dropped connection;
	// past it an answer is replaced by a -32004 error. Zero means 4 MiB.
	ResumeBytes int
	// ResumeTotalBytes caps the answers buffered for all dropped
	// connections together. Zero means 64 MiB.
	ResumeTotalBytes int
	// ResumeKeys caps how many dropped connections are kept for resuming;
	// past it the oldest is forgotten. Zero means 4096.
	ResumeKeys int
	// MaxInflight caps one connection's requests awaiting the agent; past
	// it requests get -32004 (--max-inflight). Zero means 1024.
	MaxInflight int
	// MaxSessions caps the sessions that exist only because the agent
	// named them (no client created, loaded, attached or owned them); past
	// it the oldest idle one is forgotten (--max-sessions). Zero means 10,000.
	MaxSessions int
	// CallTimeout answers a client request the agent has not answered in
	// time with -32005, freeing its --max-inflight slot (--call-timeout).
	// Zero means no timeout.
	CallTimeout time.Duration
	// Node names this daemon in a fleet (--node); "" outside fleet mode.
	// bridge/sessions reports it for the sessions of the local agent.
	Node string
	// Remote carries client messages for sessions of other fleet nodes to
	// them (remote.go); nil refuses them with -32003.
	Remote Remote
}

// Journal persists sessions and their events (cmd wires store.Store, and in
// a fleet fleet.Fleet). Both methods
// are called under the hub lock, in seq order per session: they must only
// enqueue, never block on I/O.
type Journal interface {
	// Create records that a session exists.
	Create(sessionID string)
	// Append records one event; body is immutable and may be kept without
	// a copy.
	Append(sessionID string, seq uint64, body []byte)
}

func (c *Config) fill() {
	if c.ReplayBytes == 0 {
		c.ReplayBytes = 64 << 20
	}
	if c.ReplayMemory == 0 {
		c.ReplayMemory = 64 << 20
	}
	if c.Recent == 0 {
		c.Recent = 50
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 10 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ResumeWindow <= 0 {
		c.ResumeWindow = 2 * time.Minute
	}
	if c.ResumeBytes <= 0 {
		c.ResumeBytes = 4 << 20
	}
	if c.ResumeTotalBytes <= 0 {
		c.ResumeTotalBytes = 64 << 20
	}
	if c.ResumeKeys <= 0 {
		c.ResumeKeys = 4096
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 1024
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = 10000
	}
}

// AuditRecord is one control-plane decision, as the Audit hook gets it.
// Its fields are those of audit.Record (cmd converts one into the other;
// session does not import audit).
type AuditRecord struct {
	Time       time.Time `json:"time"`
	Connection uint64    `json:"connection"`          // 0: the agent or the bridge itself
	Role       string    `json:"role"`                // viewer, operator, client; "agent" or "bridge" for their own decisions
	Peer       string    `json:"peer,omitempty"`      // remote address or uid/pid
	Transport  string    `json:"transport,omitempty"` // unix, ws, wss, sse
	Session    string    `json:"session,omitempty"`
	Method     string    `json:"method"`
	Outcome    string    `json:"outcome"`             // answered, denied, forwarded, cancelled, timed-out, ...
	RequestID  int64     `json:"requestId,omitempty"` // the agent request's id as clients saw it
	ToolCall   string    `json:"toolCall,omitempty"`  // what a permission request was about
	Option     string    `json:"option,omitempty"`    // the permission outcome chosen
	Detail     string    `json:"detail,omitempty"`
}

// Stats are the hub's counters; read with Hub.Stats.
type Stats struct {
	ClientMessages  uint64 // messages received from clients
	AgentMessages   uint64 // messages received from the agent
	Deliveries      uint64 // messages queued to connections (per recipient)
	Lagged          uint64 // times a connection fell behind and was fed from the log instead
	CatchingUp      int    // connections being fed from the log now (behind, stalled, or replaying)
	ReplayBytes     int    // what all session logs hold (--replay-memory bounds it)
	Errors          uint64 // error responses the bridge produced itself
	Denied          uint64 // role denials
	AgentRestarts   uint64
	AgentUp         bool // the agent process is running and accepting messages
	Sessions        int
	Connections     int
	PendingCalls    int    // client requests awaiting the agent
	PendingRequests int    // agent requests awaiting a client
	Resumable       int    // dropped connections kept for bridge/hello {resume}
	SessionsEvicted uint64 // unclaimed sessions forgotten past MaxSessions
	CallsTimedOut   uint64 // client requests answered -32005 by CallTimeout
}

// Hub routes JSON-RPC messages between clients and one agent.
//
// Its state is grouped by what guards it (docs/architecture.md, "The hub
// and its locks"):
//
//   - cfg and log are set by New and read-only after.
//   - The routing lock mu guards which sessions, connections, calls and
//     agent requests exist and how they relate (the fields under it below,
//     and Client and Session fields not said otherwise). Methods whose
//     comment says "Precondition: h.mu held" need it exclusively.
//   - The pending-call table has its own sharded locks and atomic ids
//     (calls.go); the replay-memory budget is atomic (log.go).
//   - The counters Stats reads are atomics, written where they change and
//     read without any lock: a /metrics or /healthz scrape never waits for
//     routing, and routing never waits for a scrape.
type Hub struct {
	cfg Config // read-only after New
	log *slog.Logger

	// mu is the routing lock. Held exclusively (Lock) by everything that
	// changes the fields below up to calls, or Client and Session fields
	// documented as guarded by it; held shared (RLock) by the hot paths
	// (fastpath.go), which only read those and change state under the
	// finer locks: a session's (Session.mu), a client's catch-up cursors
	// (Client.cmu), the call table's shards, atomics. So a client's request
	// going out, the agent's answers and events coming in, and the events
	// of different sessions, do not wait for one another.
	mu sync.RWMutex
	// the agent
	agent   Agent
	splicer SplicingAgent // agent, when it can splice (nil otherwise)
	gen     uint64        // current agent generation
	init    initState
	// agent requests awaiting a client answer, keyed by the id clients see
	nextReqID int64
	requests  map[int64]*agentRequest
	orphans   []*agentRequest  // agent requests without a session, waiting for a client
	resolved  map[int64]string // recently answered request id -> session, for late answers
	resolvedQ []int64
	// connections and sessions
	conns      map[uint64]*Client
	sessions   map[string]*Session
	nextConnID uint64
	stopping   bool
	// resumable connections: the live holder of each key, and the calls
	// of dropped ones awaiting a new connection with the same key
	resumeKeys  map[string]*Client
	parked      map[string]*park
	parkedBytes int
	// protocol: learnt from the agent's initialize answer (remap.go)
	dialect    dialect
	acpVersion int                      // ACP protocolVersion; 2 means state_update drives status
	progress   map[string]progressRoute // bridge progress token -> the client's
	nextToken  int64
	lim        limits // limits.go

	calls  callTable  // own sharded locks (calls.go)
	logs   logBudget  // what all session logs hold together; atomic (log.go)
	trimMu sync.Mutex // serialises trimLogs (log.go)

	st         counters            // atomics: what Stats reports
	invalidLog lograte.EverySecond // at most one log line a second for invalid agent output
}

// counters are the hub's figures for Stats, each written where it changes
// (under whatever lock that place holds) and read by Stats with no lock.
type counters struct {
	agentUp                                      atomic.Bool // the agent process is running (also read by routing)
	clientMessages, agentMessages, agentInvalid  atomic.Uint64
	deliveries, lagged, errors, denied, restarts atomic.Uint64
	evicted, timedOut                            atomic.Uint64
	sessions, conns, requests, parked            atomic.Int64 // len of the maps of the same names
	catching                                     atomic.Int64 // clients with Client.catching set
}

// Client is a registered connection.
type Client struct {
	ID   uint64   // read-only after Open
	info ConnInfo // read-only after Open
	conn Conn     // read-only after Open

	// Guarded by h.mu: written with it held exclusively, so the shared
	// paths (fastpath.go) may read them.
	opts Options
	// attached sessions
	attached map[string]*Session
	// owned sessions (attached or not)
	owns map[string]*Session
	// res is made by bridge/hello {resume}: most connections never say it.
	res *resumption

	received atomic.Uint64 // messages handled, reported to a resuming successor
	inflight atomic.Int64  // requests awaiting the agent (limits.go)

	// cmu guards catchup: the fan-outs of different sessions (each under
	// its session's lock) and the pump may change it at once.
	cmu sync.Mutex
	// catchup holds, per session still being replayed to this client, the
	// last seq queued. Live events of such a session are not pushed: the
	// pump reads them from the log in order once the replay reaches them.
	// An entry for session s changes only with s's lock (or h.mu
	// exclusively) held as well, so s's fan-out and pump agree on it.
	catchup  map[*Session]uint64
	catching atomic.Bool            // len(catchup) > 0, readable without any lock
	closed   bool                   // guarded by h.mu; beside catching, so the two share a word
	disk     map[*Session]*diskRead // chunks of catchup read from disk (disklog.go); guarded by cmu
}

// resumption is a connection's resume key and, once it closed, its park.
// Guarded by h.mu.
type resumption struct {
	key  string
	park *park // set once closed, until resumed or expired
}

// resumeKey is the key cl said in bridge/hello {resume}, "" for none.
// Precondition: h.mu held.
func (c *Client) resumeKey() string {
	if c.res == nil {
		return ""
	}
	return c.res.key
}

// parking is cl's park while it is parked, nil otherwise. Precondition:
// h.mu held.
func (c *Client) parking() *park {
	if c.res == nil {
		return nil
	}
	return c.res.park
}

// Catching reports whether a replay is still being paced out to this
// client; its transport then calls Hub.Pump whenever its queue has drained.
// Safe from any goroutine.
func (c *Client) Catching() bool { return c.catching.Load() }

// Role is the connection's role.
func (c *Client) Role() auth.Role { return c.info.Role }

// call is a client request forwarded to the agent, keyed by the bridge id.
type call struct {
	cl        *Client // nil: the bridge's own request
	id        []byte  // the client's id, raw JSON
	method    string
	sessionID string
	gen       uint64
	internal  func(h *Hub, body []byte) // for the bridge's own requests; under h.mu
	// lifecycle (lifecycle.go): what forwarding this call did, undone if
	// the agent refuses it
	attachedNow, ownedNow, loading bool
	tokens                         []string // bridge progress tokens minted for it (remap.go)
	loadRequest                    []byte   // session/new, load, resume: kept for a LoadRecorder (remote.go)
	lim                            callLimits
	idBuf                          [24]byte // holds id when it fits (calls.go, newCall)
	bidBuf                         [20]byte // the bridge id as JSON, while it is sent (an array on the stack would escape)
	// sent: sendCall is done with the call (it read bidBuf while framing
	// the request). Stored after the send and loaded before answerShared
	// recycles the call, it orders the two for the race detector and the
	// memory model: with pipes the request goes out with a plain write
	// and its answer comes back on the reader's goroutine, with no lock
	// between them.
	sent atomic.Bool
}

// agentRequest is a request from the agent awaiting a client's answer.
type agentRequest struct {
	id        int64  // the id clients see
	agentID   []byte // the agent's id, raw JSON
	gen       uint64
	method    string
	sessionID string
	toolCall  string    // what a permission request is about, for the audit log
	msg       *wire.Msg // the request as clients see it
	sentTo    map[*Client]struct{}
	timer     *time.Timer
	created   time.Time
}

type initState struct {
	request   []byte // the first client initialize, for re-initialising a restarted agent
	response  []byte // the agent's response to it (id spliced per client)
	inflight  bool
	waiters   []waiter
	notified  []byte // the client's "initialized" notification (LSP), replayed after re-init
	sentNotif bool   // "initialized" already reached the current generation
	// held are client messages that arrived while a restarted agent was
	// being initialised again: forwarding them earlier would reach an agent
	// that refuses anything before initialize.
	held []heldMsg
}

type heldMsg struct {
	cl  *Client
	msg []byte
}

// maxHeld bounds the messages held during a re-initialisation; past it
// requests get -32004.
const maxHeld = 1024

type waiter struct {
	cl *Client
	id []byte
}

// New returns a Hub. Call SetAgent before AgentStarted.
func New(cfg Config) *Hub {
	cfg.fill()
	h := &Hub{
		cfg:        cfg,
		log:        cfg.Logger,
		requests:   make(map[int64]*agentRequest),
		resolved:   make(map[int64]string),
		conns:      make(map[uint64]*Client),
		sessions:   make(map[string]*Session),
		resumeKeys: make(map[string]*Client),
		parked:     make(map[string]*park),
	}
	h.logs.max = int64(cfg.ReplayMemory)
	return h
}

// SetAgent sets the agent the hub forwards to. Safe from any goroutine.
func (h *Hub) SetAgent(a Agent) {
	h.mu.Lock()
	h.agent = a
	h.splicer, _ = a.(SplicingAgent)
	h.mu.Unlock()
}

// Open registers a connection and returns its handle. Safe from any goroutine.
func (h *Hub) Open(c Conn, info ConnInfo) *Client {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextConnID++
	// attached and owns are made on first use: idle connections stay small.
	cl := &Client{ID: h.nextConnID, info: info, conn: c}
	cl.opts.OnSlow = DefaultOnSlow(info.Role)
	h.conns[cl.ID] = cl
	h.st.conns.Add(1)
	if h.stopping {
		c.Close(CloseGoingAway, "daemon is stopping")
		return cl
	}
	if !h.st.agentUp.Load() && h.gen > 0 {
		h.send(cl, h.statusMsg("", StatusBlocked), wire.Control)
	}
	if cl.info.Role == auth.RoleClient {
		for _, ar := range h.orphans {
			h.deliverRequest(ar, cl)
		}
	}
	return cl
}

// Closed unregisters a connection after its transport closed it. A
// connection that said bridge/hello {resume} leaves its calls behind for
// the next connection with the same key. Safe from any goroutine;
// idempotent.
func (h *Hub) Closed(cl *Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cl.closed {
		return
	}
	h.closeLocked(cl)
}

// closeLocked forgets a connection: it detaches it, gives up its
// ownerships and, with a resume key, parks it. Precondition: h.mu held.
func (h *Hub) closeLocked(cl *Client) {
	cl.closed = true
	h.dropCursors(cl)
	if h.cfg.Remote != nil {
		h.cfg.Remote.Closed(cl.ID)
	}
	delete(h.conns, cl.ID)
	h.st.conns.Add(-1)
	for _, s := range cl.attached {
		s.detach(cl)
	}
	cl.attached = nil
	owned := make([]string, 0, len(cl.owns))
	for id, s := range cl.owns {
		if s.owner == cl {
			s.owner = nil
			owned = append(owned, id)
		}
	}
	cl.owns = nil
	for _, ar := range h.requests {
		delete(ar.sentTo, cl)
	}
	if k := cl.resumeKey(); k != "" && h.resumeKeys[k] == cl {
		delete(h.resumeKeys, k)
		if !h.stopping {
			h.parkClient(cl, owned)
		}
	}
}

// setOwner makes cl the owner of s. Precondition: h.mu held.
func (h *Hub) setOwner(s *Session, cl *Client) {
	if s.owner != nil && s.owner.owns != nil {
		delete(s.owner.owns, s.ID)
	}
	s.owner = cl
	if cl != nil {
		h.claim(s)
	}
	if cl != nil && !cl.closed {
		if cl.owns == nil {
			cl.owns = make(map[string]*Session)
		}
		cl.owns[s.ID] = s
	}
}

// Stats returns the hub's counters. It takes no lock (they are atomics),
// so the figures are each exact but not one snapshot: a scrape during a
// burst may see a call counted in PendingCalls whose message is not yet in
// ClientMessages. Safe from any goroutine.
func (h *Hub) Stats() Stats {
	c := &h.st
	return Stats{
		ClientMessages:  c.clientMessages.Load(),
		AgentMessages:   c.agentMessages.Load(),
		Deliveries:      c.deliveries.Load(),
		Lagged:          c.lagged.Load(),
		CatchingUp:      int(c.catching.Load()),
		ReplayBytes:     int(h.logs.used.Load()),
		Errors:          c.errors.Load(),
		Denied:          c.denied.Load(),
		AgentRestarts:   c.restarts.Load(),
		AgentUp:         c.agentUp.Load(),
		Sessions:        int(c.sessions.Load()),
		Connections:     int(c.conns.Load()),
		PendingCalls:    h.calls.len(),
		PendingRequests: int(c.requests.Load()),
		Resumable:       int(c.parked.Load()),
		SessionsEvicted: c.evicted.Load(),
		CallsTimedOut:   c.timedOut.Load(),
	}
}

// SessionInfo is one row of bridge/sessions.
type SessionInfo struct {
	SessionID string `json:"sessionId"`
	Status    Status `json:"status"`
	Seq       uint64 `json:"seq"`
	Clients   int    `json:"clients"`
	// OwnerConnected: the client that owns the session is connected (the
	// dashboard shows it; bridge/snapshot says the same).
	OwnerConnected bool `json:"ownerConnected"`
	// Node is the fleet node whose agent runs the session (fleet mode
	// only; remote.go).
	Node string `json:"node,omitempty"`
}

// Sessions lists the sessions, ordered by id. Safe from any goroutine.
func (h *Hub) Sessions() []SessionInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessionsLocked()
}

func (h *Hub) sessionsLocked() []SessionInfo {
	out := make([]SessionInfo, 0, len(h.sessions))
	for _, s := range h.sessions {
		out = append(out, h.info(s))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SessionID < out[j].SessionID })
	return out
}

// Shutdown fails every pending client request with -32003 (the daemon is
// stopping), answers the agent's pending requests with an error, and closes
// every connection with CloseGoingAway. Safe from any goroutine.
func (h *Hub) Shutdown(reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopping = true
	h.failCalls(func(*call) bool { return true }, "agentbridge is shutting down ("+reason+"); the request was not completed")
	for _, ar := range h.requests {
		h.answerAgentError(ar, codeAgentUnavailable, "agentbridge is shutting down")
		h.retireRequest(ar, nil)
	}
	for _, p := range h.parked {
		h.discardPark(p)
	}
	for _, cl := range h.conns {
		cl.conn.Close(CloseGoingAway, reason)
	}
}

func (h *Hub) send(cl *Client, m *wire.Msg, c wire.Class) {
	if cl.closed {
		return
	}
	h.st.deliveries.Add(1)
	cl.conn.Send(m, c)
}

// reply queues a response to one of cl's requests. A connection that
// dropped with a resume key gets it buffered for its successor.
// Precondition: h.mu held.
func (h *Hub) reply(cl *Client, id []byte, m *wire.Msg) {
	if !cl.closed {
		h.send(cl, m, wire.Control)
		return
	}
	if p := cl.parking(); p != nil && h.parked[p.key] == p {
		h.buffer(p, id, m)
	}
}

// audit records a decision taken by cl (nil: by the agent or the bridge,
// as r.Role says; "agent" when unset). Precondition: h.mu held.
func (h *Hub) audit(cl *Client, r AuditRecord) {
	if h.cfg.Audit == nil {
		return
	}
	r.Time = time.Now().UTC()
	if cl != nil {
		r.Connection, r.Role, r.Peer, r.Transport = cl.ID, cl.info.Role.String(), cl.info.Peer, cl.info.Transport
	} else if r.Role == "" {
		r.Role = "agent"
	}
	h.cfg.Audit(r)
}

// AuditAuthFailure records a connection refused before it reached the hub
// (bad or missing token, Origin not allowed, uid refused). reason must say
// what was wrong without quoting the credential. Safe from any goroutine;
// never blocks.
func (h *Hub) AuditAuthFailure(peer, transport, reason string) {
	if h.cfg.Audit == nil {
		return
	}
	h.cfg.Audit(AuditRecord{Time: time.Now().UTC(), Role: "none", Peer: peer, Transport: transport, Method: "auth", Outcome: "denied", Detail: reason})
}
