package session

import (
	"slices"
	"sync"
	"sync/atomic"
)

// Calls of the shared forward path come from a pool and go back to it when
// their answer has been routed (answerShared): a request and its answer
// then allocate no call. Only that path recycles, since there nothing
// keeps the call or its id (the answer is a copy); elsewhere a call may
// outlive its answer (an id buffered for a resuming client, a timer).
var callPool = sync.Pool{New: func() any { return new(call) }}

// newCall returns a zeroed call from the pool for cl's request id, the id
// copied into the call itself when it fits.
func newCall(cl *Client, id []byte, method string, gen uint64) *call {
	c := callPool.Get().(*call)
	c.cl, c.method, c.gen = cl, method, gen
	c.id = append(c.idBuf[:0], id...)
	return c
}

// recycleCall returns a call nothing refers to any more to the pool.
func recycleCall(c *call) {
	*c = call{}
	callPool.Put(c)
}

// Method names as strings without an allocation per message: the methods
// of the protocols the bridge routes, and up to maxLearnt others as they
// are first seen (an agent's own methods, a benchmark's).
var knownMethods = func() map[string]string {
	m := make(map[string]string)
	for _, name := range []string{
		"initialize", "initialized", "shutdown", "exit", "authenticate", "logout",
		"session/new", "session/load", "session/resume", "session/fork", "session/prompt", "session/cancel",
		"session/close", "session/delete", "session/archive", "session/unarchive", "session/list", "session/status",
		"session/set_title", "session/set_mode", "session/set_model", "session/set_config_option",
		"tool_call/cancel", "terminal/cancel", "mcp/message",
		"tools/list", "tools/call", "resources/list", "resources/read", "resources/subscribe", "prompts/list",
		"prompts/get", "completion/complete", "logging/setLevel", "ping",
		"textDocument/didOpen", "textDocument/didChange", "textDocument/didClose", "textDocument/completion",
		"textDocument/hover", "textDocument/definition", "textDocument/references", "workspace/symbol",
		"bridge/hello", "bridge/sessions", "bridge/attach", "bridge/detach", "bridge/snapshot",
	} {
		m[name] = name
	}
	return m
}()

const maxLearnt = 256

var learnt struct {
	mu sync.RWMutex
	m  map[string]string // guarded by mu
}

// methodName returns b as a string, interned when it is a known method.
// Any goroutine.
func methodName(b []byte) string {
	if s, ok := knownMethods[string(b)]; ok {
		return s
	}
	learnt.mu.RLock()
	s, ok := learnt.m[string(b)]
	learnt.mu.RUnlock()
	if ok {
		return s
	}
	s = string(b)
	learnt.mu.Lock()
	if learnt.m == nil {
		learnt.m = make(map[string]string)
	}
	if len(learnt.m) < maxLearnt {
		learnt.m[s] = s
	}
	learnt.mu.Unlock()
	return s
}

// callTable is the pending-call table: requests forwarded to the agent
// (a client's, or the bridge's own) and not answered yet, keyed by the
// bridge id the agent saw. It is not guarded by the routing lock but by
// its own, sharded by bridge id, and ids come from an atomic counter: a
// client's request going out (on its connection's goroutine) and the
// agent's answers coming in (on the agent's) meet only on one shard's
// lock, for a map operation.
//
// A call is put in the table before it is sent, so an answer can never
// arrive for an id the table does not know yet. Once in the table, a
// call's fields change only under the exclusive routing lock (resume moves
// calls to a successor); put, get and take are safe from any goroutine.
type callTable struct {
	next   atomic.Int64 // the last bridge id handed out
	n      atomic.Int64 // calls in the table (Stats.PendingCalls)
	shards [callShards]callShard
}

// callShards spreads the table over this many locks (a power of two):
// consecutive ids, and so concurrent clients, fall on different shards.
const callShards = 16

type callShard struct {
	mu sync.Mutex
	m  map[int64]*call // guarded by mu
	_  [48]byte        // one shard per cache line
}

// newID returns a fresh bridge id (1, 2, ...). Any goroutine.
func (t *callTable) newID() int64 { return t.next.Add(1) }

func (t *callTable) shard(bid int64) *callShard { return &t.shards[bid&(callShards-1)] }

// put records c under bid. Any goroutine.
func (t *callTable) put(bid int64, c *call) {
	sh := t.shard(bid)
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = make(map[int64]*call)
	}
	sh.m[bid] = c
	sh.mu.Unlock()
	t.n.Add(1)
}

// get returns the call under bid, nil if none. Any goroutine.
func (t *callTable) get(bid int64) *call {
	sh := t.shard(bid)
	sh.mu.Lock()
	c := sh.m[bid]
	sh.mu.Unlock()
	return c
}

// take removes and returns the call under bid when it is want (nil: any
// call); nil when bid holds no call, or another one. Any goroutine.
func (t *callTable) take(bid int64, want *call) *call {
	return t.takeWhen(bid, func(c *call) bool { return want == nil || c == want })
}

// takeWhen removes and returns the call under bid when ok accepts it: one
// look at the shard for what get then take would do in two (an answer's
// hot path). ok runs under the shard's lock: it must only read the call.
// Any goroutine.
func (t *callTable) takeWhen(bid int64, ok func(*call) bool) *call {
	sh := t.shard(bid)
	sh.mu.Lock()
	c := sh.m[bid]
	if c == nil || !ok(c) {
		sh.mu.Unlock()
		return nil
	}
	delete(sh.m, bid)
	sh.mu.Unlock()
	t.n.Add(-1)
	return c
}

// ids returns the bridge ids of the calls match accepts, ascending: the
// order they were sent in (per client, since one client's requests are
// forwarded one after the other). Precondition: the routing lock held
// exclusively, so no call is put or taken meanwhile.
func (t *callTable) ids(match func(*call) bool) []int64 {
	var ids []int64
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for id, c := range sh.m {
			if match(c) {
				ids = append(ids, id)
			}
		}
		sh.mu.Unlock()
	}
	slices.Sort(ids)
	return ids
}

// len is how many calls await the agent. Any goroutine.
func (t *callTable) len() int { return int(t.n.Load()) }
