package fleet

// Request forwarding between nodes. A client of node B that sends
// something for a session whose agent runs on node A (a mirror on B) is
// carried to A by NATS request/reply on A's subject
// agentbridge.<fleet>.n.A.in; A replies at once with an acknowledgement
// ("" or why it could not take it) and treats the client as a bridge
// client of its own: one session.Client per (B, connection), the
// stand-in, that A's hub gates, remaps and makes owner exactly as it would
// a local one. Whatever A's hub sends the stand-in, except the session's
// logged events and bridge/status (B's mirror delivers those, from the
// stream and the KV bucket), is published to agentbridge.<fleet>.n.B.out
// with the connection's id, and B's hub delivers it (Hub.Deliver).
//
// Ids: a client's request ids are remapped on A, like any client's. An
// agent request A sends the stand-in carries A's hub id N, which could
// collide with an id B's own hub uses for that connection, so A rewrites
// it to the string "fleet/A/N" (and the same in bridge/resolved and the
// protocol's cancel); B recognises an answer with such an id and carries
// it back to A, which rewrites it to N. B remembers, per connection, which
// node each forwarded request went to until it is answered, so that the
// client's cancel of it ($/cancel_request) follows it.
//
// Failures: B's acknowledgement wait is bounded (forwardTimeout); a node
// that does not answer (NATS says no responders at once when it is gone)
// makes B answer a forwarded request with -32003 naming the node. A pings
// the nodes its stand-ins belong to every Refresh and closes the stand-ins
// of a node that is gone, so the ownerships they held move on.
//
// Goroutines: Forward, Attached and Closed are called under B's hub mutex
// and only enqueue; one sender goroutine per destination node sends B's
// messages in order; A's stand-ins' Send is called under A's hub mutex and
// only enqueues, and one publisher goroutine per destination node
// publishes; nats.go runs the two subscriptions' handlers, each in order.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/wire"
)

// ForwardHub is what forwarding and re-loading (reload.go) need of the
// session hub beyond Hub; the session hub implements it (Start serves
// both only for a hub that does).
type ForwardHub interface {
	Hub
	Open(c session.Conn, info session.ConnInfo) *session.Client
	Handle(cl *session.Client, msg []byte)
	Closed(cl *session.Client)
	AttachRemote(cl *session.Client, sessionID string) bool
	DetachRemote(cl *session.Client, sessionID string)
	Deliver(conn uint64, body []byte) bool
	MirrorSeq(sessionID string) uint64
	Restore(sessions []session.RestoredSession)
}

// Headers of the forwarding messages.
const (
	hdrFrom     = "Agentbridge-From"     // the sending node
	hdrConn     = "Agentbridge-Conn"     // the client connection's id on the client's node
	hdrRole     = "Agentbridge-Role"     // its role
	hdrOp       = "Agentbridge-Op"       // opMsg, opAttach, opDetach, opClose, opPing
	hdrSession  = "Agentbridge-Session"  // the session the message names
	hdrAttached = "Agentbridge-Attached" // "1": the client is attached to its node's mirror of it
	// hdrAfter, on a delivery, lists "<encoded session>:<seq>" (comma
	// separated): the events the stand-in had been sent when the delivery
	// was made, which the client's mirrors must hold before it is
	// delivered (an ACP prompt's answer comes after its updates).
	hdrAfter = "Agentbridge-After"
)

// afterWait bounds how long a delivery waits for the client's mirror to
// catch up with the events that preceded it on the owning node.
const afterWait = 5 * time.Second

const (
	opMsg    = "m"
	opAttach = "a"
	opDetach = "x"
	opClose  = "c"
	opPing   = "p"
)

// forwardTimeout bounds the wait for the owning node's acknowledgement of
// one forwarded message; pingTimeout the liveness check of a node whose
// clients have stand-ins here.
const (
	forwardTimeout = 5 * time.Second
	pingTimeout    = time.Second
)

// codeAgentUnavailable is the bridge's -32003 (CONTRACT), for a node that
// cannot be reached.
const codeAgentUnavailable = -32003

// remoteIDPrefix starts the id of an agent request of another node.
const remoteIDPrefix = "fleet/"

func (f *Fleet) inSubject(node string) string {
	return "agentbridge." + f.cfg.Fleet + ".n." + node + ".in"
}
func (f *Fleet) outSubject(node string) string {
	return "agentbridge." + f.cfg.Fleet + ".n." + node + ".out"
}

// outItem is one queued message; conn and id are what a failed forward
// needs to answer the client.
type outItem struct {
	msg  *nats.Msg
	node string // the destination
	conn uint64
	id   []byte // a forwarded request's id; nil otherwise
}

// outbox queues messages for one goroutine that sends them in order.
type outbox struct {
	mu     sync.Mutex // guards q, bytes
	q      []outItem
	bytes  int
	wake   chan struct{}
	closed chan struct{}
}

// forwarding is the forwarding state of a Fleet.
type forwarding struct {
	hub  ForwardHub
	subs []*nats.Subscription

	mu sync.Mutex // guards everything below; never held while calling the hub
	// boxes are the outboxes by destination: "in."+node (this node's
	// clients' messages to node) and "out."+node (stand-ins' deliveries).
	boxes map[string]*outbox
	// pending: per local connection, the request ids it forwarded, to the
	// node they went to, until answered (cancels follow them).
	pending map[uint64]map[string]string
	// peers: per local connection, the nodes holding a stand-in of it.
	peers map[uint64]map[string]bool
	// standins: the stand-ins of other nodes' clients, by node and conn.
	standins map[string]map[uint64]*standin
	dropped  uint64
}

// startForwarding subscribes this node's two forwarding subjects.
func (f *Fleet) startForwarding(h ForwardHub) error {
	fw := &f.fw
	fw.hub = h
	fw.boxes = map[string]*outbox{}
	fw.pending = map[uint64]map[string]string{}
	fw.peers = map[uint64]map[string]bool{}
	fw.standins = map[string]map[uint64]*standin{}
	in, err := f.nc.Subscribe(f.inSubject(f.cfg.Node), f.inbound)
	if err != nil {
		return fmt.Errorf("fleet: subscribe %s: %v", f.inSubject(f.cfg.Node), err)
	}
	out, err := f.nc.Subscribe(f.outSubject(f.cfg.Node), f.outbound)
	if err != nil {
		_ = in.Unsubscribe()
		return fmt.Errorf("fleet: subscribe %s: %v", f.outSubject(f.cfg.Node), err)
	}
	for _, s := range []*nats.Subscription{in, out} {
		// A busy hub must not make NATS drop forwarded messages: the
		// pending limits are the outboxes' (MaxQueue), not nats.go's.
		_ = s.SetPendingLimits(-1, -1)
	}
	fw.subs = []*nats.Subscription{in, out}
	return nil
}

// Forward implements session.Remote. Called under the hub mutex: enqueues.
func (f *Fleet) Forward(m session.RemoteMsg) bool {
	hd := m.Header
	fw := &f.fw
	fw.mu.Lock()
	defer fw.mu.Unlock()
	node := m.Node
	if node == "" {
		switch hd.Kind {
		case jsonrpc.KindResponse: // an answer to another node's agent request?
			n, _, ok := parseRemoteID(hd.ID)
			if !ok {
				return false
			}
			node = n
		case jsonrpc.KindNotification: // a cancel of a forwarded request?
			param := session.CancelParam(string(hd.Method))
			s, e, _ := jsonrpc.Member(m.Msg, "params", param)
			if param == "" || s < 0 {
				return false
			}
			if node = fw.pending[m.Conn][string(m.Msg[s:e])]; node == "" {
				return false
			}
		default:
			return false
		}
	}
	if node == f.cfg.Node {
		return false
	}
	msg := f.opMsg(node, opMsg, m.Conn, m.Role, m.SessionID)
	if m.Attached {
		msg.Header.Set(hdrAttached, "1")
	}
	msg.Data = append([]byte(nil), m.Msg...)
	it := outItem{msg: msg, node: node, conn: m.Conn}
	if hd.Kind == jsonrpc.KindRequest {
		it.id = append([]byte(nil), hd.ID...)
		p := fw.pending[m.Conn]
		if p == nil {
			p = map[string]string{}
			fw.pending[m.Conn] = p
		}
		p[string(it.id)] = node
	}
	f.notePeer(m.Conn, node)
	f.put("in."+node, it)
	return true
}

// Attached implements session.Remote. Called under the hub mutex: enqueues.
func (f *Fleet) Attached(m session.RemoteMsg) {
	f.fw.mu.Lock()
	defer f.fw.mu.Unlock()
	f.notePeer(m.Conn, m.Node)
	f.put("in."+m.Node, outItem{msg: f.opMsg(m.Node, opAttach, m.Conn, m.Role, m.SessionID), node: m.Node, conn: m.Conn})
}

// Detached implements session.Remote. Called under the hub mutex:
// enqueues.
func (f *Fleet) Detached(m session.RemoteMsg) {
	f.fw.mu.Lock()
	defer f.fw.mu.Unlock()
	if f.fw.peers[m.Conn][m.Node] {
		f.put("in."+m.Node, outItem{msg: f.opMsg(m.Node, opDetach, m.Conn, m.Role, m.SessionID), node: m.Node, conn: m.Conn})
	}
}

// Closed implements session.Remote: every node holding a stand-in of conn
// is told. Called under the hub mutex: enqueues.
func (f *Fleet) Closed(conn uint64) {
	fw := &f.fw
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for node := range fw.peers[conn] {
		f.put("in."+node, outItem{msg: f.opMsg(node, opClose, conn, auth.RoleViewer, ""), node: node, conn: conn})
	}
	delete(fw.peers, conn)
	delete(fw.pending, conn)
}

// notePeer records that node holds (or will) a stand-in of conn.
// Precondition: f.fw.mu held.
func (f *Fleet) notePeer(conn uint64, node string) {
	p := f.fw.peers[conn]
	if p == nil {
		p = map[string]bool{}
		f.fw.peers[conn] = p
	}
	p[node] = true
}

func (f *Fleet) opMsg(node, op string, conn uint64, role auth.Role, sid string) *nats.Msg {
	msg := nats.NewMsg(f.inSubject(node))
	msg.Header.Set(hdrFrom, f.cfg.Node)
	msg.Header.Set(hdrOp, op)
	msg.Header.Set(hdrConn, strconv.FormatUint(conn, 10))
	msg.Header.Set(hdrRole, role.String())
	if sid != "" {
		msg.Header.Set(hdrSession, sid)
	}
	return msg
}

// put queues it on the outbox key, starting its goroutine on first use; a
// full outbox (MaxQueue bytes) drops it, counted and logged, and answers a
// dropped request -32003. Precondition: f.fw.mu held.
func (f *Fleet) put(key string, it outItem) {
	fw := &f.fw
	b := fw.boxes[key]
	if b == nil {
		if f.ctx.Err() != nil {
			return // closing
		}
		b = &outbox{wake: make(chan struct{}, 1), closed: make(chan struct{})}
		fw.boxes[key] = b
		send := f.publishOut
		if key[:3] == "in." {
			send = f.sendIn
		}
		f.wg.Add(1)
		go f.drain(b, send)
	}
	b.mu.Lock()
	if b.bytes+len(it.msg.Data) > f.cfg.MaxQueue {
		b.mu.Unlock()
		fw.dropped++
		if n := fw.dropped; n&(n-1) == 0 {
			f.log.Warn("fleet: forwarding queue full (NATS unreachable?); message dropped", "to", key, "dropped", n)
		}
		if it.id != nil {
			go f.failForward(it, errors.New("the forwarding queue is full"))
		}
		return
	}
	b.q = append(b.q, it)
	b.bytes += len(it.msg.Data)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// drain sends b's messages in order until the fleet closes.
func (f *Fleet) drain(b *outbox, send func(outItem)) {
	defer f.wg.Done()
	for {
		b.mu.Lock()
		q := b.q
		b.q, b.bytes = nil, 0
		b.mu.Unlock()
		for _, it := range q {
			send(it)
		}
		if len(q) > 0 {
			continue
		}
		select {
		case <-b.wake:
		case <-f.ctx.Done():
			return
		}
	}
}

// sendIn carries one message to its node and waits for the node's
// acknowledgement; a request the node did not take is answered -32003.
func (f *Fleet) sendIn(it outItem) {
	ctx, cancel := context.WithTimeout(f.ctx, forwardTimeout)
	rep, err := f.nc.RequestMsgWithContext(ctx, it.msg)
	cancel()
	if err == nil && len(rep.Data) > 0 {
		err = errors.New(string(rep.Data))
	}
	if err != nil {
		f.failForward(it, err)
	}
}

// failForward answers a forwarded request that did not reach its node
// with -32003 naming the node (other messages are logged).
func (f *Fleet) failForward(it outItem, err error) {
	node := it.node
	if errors.Is(err, nats.ErrNoResponders) {
		err = errors.New("the node is not in the fleet (stopped, or cut off from NATS)")
	}
	if it.id == nil {
		f.log.Info("fleet: message for another node not delivered", "node", node, "op", it.msg.Header.Get(hdrOp), "conn", it.conn, "err", err)
		return
	}
	f.fw.mu.Lock()
	if p := f.fw.pending[it.conn]; p != nil {
		delete(p, string(it.id))
	}
	f.fw.mu.Unlock()
	why := fmt.Sprintf("session %q runs on fleet node %q, which did not take the request: %v", it.msg.Header.Get(hdrSession), node, err)
	f.fw.hub.Deliver(it.conn, jsonrpc.AppendError(nil, it.id, &jsonrpc.Error{Code: codeAgentUnavailable, Message: why}))
}

// failPending answers -32003 to every request forwarded to node and not
// answered yet: the node stopped refreshing its sessions (it died or lost
// NATS), so no answer is coming; one that still arrives is dropped
// (outbound), so the client never gets two.
func (f *Fleet) failPending(node string) {
	if f.fw.hub == nil {
		return
	}
	type req struct {
		conn uint64
		id   []byte
	}
	var failed []req
	f.fw.mu.Lock()
	for conn, p := range f.fw.pending {
		for id, n := range p {
			if n == node {
				failed = append(failed, req{conn, []byte(id)})
				delete(p, id)
			}
		}
	}
	f.fw.mu.Unlock()
	for _, r := range failed {
		why := fmt.Sprintf("fleet node %q stopped refreshing its sessions (gone, or cut off from NATS); the request's outcome is unknown", node)
		f.fw.hub.Deliver(r.conn, jsonrpc.AppendError(nil, r.id, &jsonrpc.Error{Code: codeAgentUnavailable, Message: why}))
	}
}

// publishOut publishes a stand-in's delivery (no acknowledgement: the
// client's node drops what is for a connection it no longer has).
func (f *Fleet) publishOut(it outItem) {
	if err := f.nc.PublishMsg(it.msg); err != nil {
		f.log.Info("fleet: delivery to another node's client not published", "subject", it.msg.Subject, "conn", it.conn, "err", err)
	}
}

// outbound delivers what another node's hub sent one of this node's
// clients (through its stand-in there).
func (f *Fleet) outbound(msg *nats.Msg) {
	conn, err := strconv.ParseUint(msg.Header.Get(hdrConn), 10, 64)
	if err != nil {
		f.log.Warn("fleet: delivery without a valid "+hdrConn+"; dropped", "from", msg.Header.Get(hdrFrom))
		return
	}
	if hd, err := jsonrpc.Peek(msg.Data); err == nil && hd.Kind == jsonrpc.KindResponse && string(hd.ID) != "null" {
		f.fw.mu.Lock()
		_, tracked := f.fw.pending[conn][string(hd.ID)]
		delete(f.fw.pending[conn], string(hd.ID))
		f.fw.mu.Unlock()
		if !tracked {
			// Already answered: -32003 when its node was taken for
			// gone (failPending), or the connection closed.
			f.log.Info("fleet: an answer for a request already answered or of a closed connection; dropped", "conn", conn, "id", string(hd.ID), "from", msg.Header.Get(hdrFrom))
			return
		}
	}
	if after := msg.Header.Get(hdrAfter); after != "" {
		f.waitMirrors(after)
	}
	f.fw.hub.Deliver(conn, msg.Data)
}

// waitMirrors waits (bounded by afterWait) until the local mirrors hold
// the events listed in after (hdrAfter): they come by the stream, the
// delivery by core NATS, and the owning node sent the events first.
func (f *Fleet) waitMirrors(after string) {
	deadline := time.NewTimer(afterWait)
	defer deadline.Stop()
	for _, item := range strings.Split(after, ",") {
		enc, seqs, _ := strings.Cut(item, ":")
		sid, err1 := Decode(enc)
		seq, err2 := strconv.ParseUint(seqs, 10, 64)
		if err1 != nil || err2 != nil {
			f.log.Warn("fleet: invalid "+hdrAfter+" on a delivery; not waited for", "value", after)
			return
		}
		for {
			tick := f.mirrorTick()
			if f.fw.hub.MirrorSeq(sid) >= seq {
				break
			}
			select {
			case <-tick:
			case <-deadline.C:
				f.log.Warn("fleet: a mirror did not reach the events before a delivery in time; delivered anyway", "session", sid, "seq", seq, "have", f.fw.hub.MirrorSeq(sid))
				return
			case <-f.ctx.Done():
				return
			}
		}
	}
}

// mirrorTick returns a channel closed at the next mirrored event.
func (f *Fleet) mirrorTick() <-chan struct{} {
	f.tickMu.Lock()
	defer f.tickMu.Unlock()
	if f.tick == nil {
		f.tick = make(chan struct{})
	}
	return f.tick
}

// mirrored wakes mirrorTick's waiters.
func (f *Fleet) mirrored() {
	f.tickMu.Lock()
	if f.tick != nil {
		close(f.tick)
		f.tick = nil
	}
	f.tickMu.Unlock()
}

// inbound takes what another node's client sent for a session of this
// node's agent, through the client's stand-in, and acknowledges it.
func (f *Fleet) inbound(msg *nats.Msg) {
	h := msg.Header
	from, op := h.Get(hdrFrom), h.Get(hdrOp)
	conn, err := strconv.ParseUint(h.Get(hdrConn), 10, 64)
	if err != nil || CheckName("from", from) != nil {
		_ = msg.Respond([]byte(fmt.Sprintf("invalid forwarding headers (from %q, conn %q)", from, h.Get(hdrConn))))
		return
	}
	var why string
	switch op {
	case opPing:
	case opClose:
		f.dropStandin(from, conn)
	case opDetach:
		f.fw.mu.Lock()
		st := f.fw.standins[from][conn]
		f.fw.mu.Unlock()
		if st != nil {
			f.fw.hub.DetachRemote(st.cl, h.Get(hdrSession))
		}
	case opMsg, opAttach:
		role, err := auth.ParseRole(h.Get(hdrRole))
		if err != nil {
			why = err.Error()
			break
		}
		st := f.standinFor(from, conn, role)
		sid := h.Get(hdrSession)
		if sid != "" && (op == opAttach || h.Get(hdrAttached) == "1") {
			f.fw.hub.AttachRemote(st.cl, sid)
		}
		if op == opMsg {
			f.fw.hub.Handle(st.cl, f.fromRemote(msg.Data))
		}
	default:
		why = fmt.Sprintf("unknown forwarding op %q", op)
	}
	_ = msg.Respond([]byte(why))
}

// standin is the Conn of another node's client in this node's hub.
type standin struct {
	f    *Fleet
	node string // the client's node
	conn uint64 // the client's connection id there
	cl   *session.Client
	out  string // f.outSubject(node)
	// seen is the last event seq sent per session. Guarded by the hub
	// mutex (Send's caller).
	seen map[string]uint64
}

// standinFor returns the stand-in of (node, conn), opening it on first use.
// Called from the inbound handler only.
func (f *Fleet) standinFor(node string, conn uint64, role auth.Role) *standin {
	fw := &f.fw
	fw.mu.Lock()
	st := fw.standins[node][conn]
	fw.mu.Unlock()
	if st != nil && st.cl.Role() == role {
		return st
	}
	if st != nil {
		f.dropStandin(node, conn)
	}
	st = &standin{f: f, node: node, conn: conn, out: f.outSubject(node)}
	st.cl = fw.hub.Open(st, session.ConnInfo{Role: role, Transport: "fleet", Peer: node + "/" + strconv.FormatUint(conn, 10)})
	fw.mu.Lock()
	if fw.standins[node] == nil {
		fw.standins[node] = map[uint64]*standin{}
	}
	fw.standins[node][conn] = st
	fw.mu.Unlock()
	return st
}

// dropStandin closes the stand-in of (node, conn) in the hub, if any.
func (f *Fleet) dropStandin(node string, conn uint64) {
	fw := &f.fw
	fw.mu.Lock()
	st := fw.standins[node][conn]
	delete(fw.standins[node], conn)
	if len(fw.standins[node]) == 0 {
		delete(fw.standins, node)
	}
	fw.mu.Unlock()
	if st != nil {
		fw.hub.Closed(st.cl)
	}
}

// reapStandins closes the stand-ins of nodes that are gone: each node
// holding clients with stand-ins here is pinged; no responders means it
// left the fleet (a stopped node's clients are gone with it).
func (f *Fleet) reapStandins() {
	if f.fw.hub == nil {
		return
	}
	f.fw.mu.Lock()
	nodes := make([]string, 0, len(f.fw.standins))
	for n := range f.fw.standins {
		nodes = append(nodes, n)
	}
	f.fw.mu.Unlock()
	for _, n := range nodes {
		ctx, cancel := context.WithTimeout(f.ctx, pingTimeout)
		_, err := f.nc.RequestMsgWithContext(ctx, f.opMsg(n, opPing, 0, auth.RoleViewer, ""))
		cancel()
		if !errors.Is(err, nats.ErrNoResponders) {
			continue // alive, or not known to be gone (a timeout under load)
		}
		f.fw.mu.Lock()
		var conns []uint64
		for c := range f.fw.standins[n] {
			conns = append(conns, c)
		}
		f.fw.mu.Unlock()
		f.log.Info("fleet: a node left; its clients' stand-ins are closed", "node", n, "clients", len(conns))
		for _, c := range conns {
			f.dropStandin(n, c)
		}
	}
}

// Send implements session.Conn. Called under the hub mutex: enqueues.
// The session's logged events and status are not sent: the client's node
// delivers them from its mirror.
func (st *standin) Send(m *wire.Msg, _ wire.Class) bool {
	if m.Seq > 0 {
		if st.seen == nil {
			st.seen = map[string]uint64{}
		}
		st.seen[m.SessionID] = m.Seq
		return true
	}
	if bytes.HasPrefix(m.Body(), statusPrefix) {
		return true
	}
	msg := nats.NewMsg(st.out)
	msg.Header.Set(hdrFrom, st.f.cfg.Node)
	msg.Header.Set(hdrConn, strconv.FormatUint(st.conn, 10))
	if len(st.seen) > 0 {
		var after []byte
		for sid, seq := range st.seen {
			if len(after) > 0 {
				after = append(after, ',')
			}
			after = strconv.AppendUint(append(append(after, Encode(sid)...), ':'), seq, 10)
		}
		msg.Header.Set(hdrAfter, string(after))
	}
	msg.Data = st.f.toRemote(m.Body())
	st.f.fw.mu.Lock()
	st.f.put("out."+st.node, outItem{msg: msg, node: st.node, conn: st.conn})
	st.f.fw.mu.Unlock()
	return true
}

// statusPrefix starts every bridge/status (wire.StatusMsg).
var statusPrefix = []byte(`{"jsonrpc":"2.0","method":"bridge/status"`)

// Close implements session.Conn: the hub closes a stand-in (a policy
// breach, shutdown); it is forgotten, and the client's next message opens
// a new one. Never calls the hub synchronously.
func (st *standin) Close(session.CloseCode, string) {
	go st.f.dropStandin(st.node, st.conn)
}

// toRemote rewrites the ids of this node's agent requests in body (a
// message for another node's client) to "fleet/<node>/<id>": the request's
// own id, or params' id in bridge/resolved and the cancels.
func (f *Fleet) toRemote(body []byte) []byte {
	hd, err := jsonrpc.Peek(body)
	if err != nil {
		return append([]byte(nil), body...)
	}
	switch {
	case hd.Kind == jsonrpc.KindRequest:
		return jsonrpc.ReplaceID(nil, body, hd, f.remoteID(hd.ID))
	case hd.Kind == jsonrpc.KindNotification:
		param := session.CancelParam(string(hd.Method))
		if string(hd.Method) == "bridge/resolved" {
			param = "id"
		}
		if param != "" {
			if s, e, _ := jsonrpc.Member(body, "params", param); s >= 0 {
				return jsonrpc.Splice(nil, body, s, e, f.remoteID(body[s:e]))
			}
		}
	}
	return append([]byte(nil), body...)
}

func (f *Fleet) remoteID(id []byte) []byte {
	return strconv.AppendQuote(nil, remoteIDPrefix+f.cfg.Node+"/"+string(id))
}

// parseRemoteID reads "fleet/<node>/<id>" (raw JSON, quoted).
func parseRemoteID(raw []byte) (node string, id []byte, ok bool) {
	s, err := strconv.Unquote(string(raw))
	if err != nil || len(s) <= len(remoteIDPrefix) || s[:len(remoteIDPrefix)] != remoteIDPrefix {
		return "", nil, false
	}
	rest := s[len(remoteIDPrefix):]
	i := bytes.IndexByte([]byte(rest), '/')
	if i <= 0 || CheckName("node", rest[:i]) != nil || i == len(rest)-1 {
		return "", nil, false
	}
	return rest[:i], []byte(rest[i+1:]), true
}

// fromRemote rewrites an answer of another node's client to one of this
// node's agent requests back to the hub's id.
func (f *Fleet) fromRemote(body []byte) []byte {
	hd, err := jsonrpc.Peek(body)
	if err != nil || hd.Kind != jsonrpc.KindResponse {
		return body
	}
	if node, id, ok := parseRemoteID(hd.ID); ok && node == f.cfg.Node {
		return jsonrpc.ReplaceID(nil, body, hd, id)
	}
	return body
}

var (
	_ session.Remote = (*Fleet)(nil)
	_ session.Conn   = (*standin)(nil)
)
