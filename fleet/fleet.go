// Package fleet joins a daemon to a fleet of agentbridge daemons through
// NATS JetStream (serve --nats URL --node NAME --fleet NAME). It owns the
// NATS connection, the fleet's session-log stream and its session KV
// bucket; the session core knows nothing of NATS and sees this package
// only through its own interfaces:
//
//   - Fleet is a session.Journal (and session.JournalDeleter): every event
//     of a session of the local agent is appended to the stream subject
//     agentbridge.<fleet>.s.<encoded id>, alone or in a run of consecutive
//     events (see maxRun), its first bridge seq in the header
//     Agentbridge-Seq and the message id <node>.<encoded id>.<seq>[-<last>]
//     (Nats-Msg-Id), so a republished message is dropped by the stream's
//     duplicate window.
//   - Every Refresh the node puts one KV entry per local session
//     ({sessionId, node, status, ownerConnected, seq, clients}) into the
//     bucket agentbridge-<fleet>-sessions, whose TTL is three Refreshes: the
//     entries of a node that stopped refreshing expire.
//   - A KV watcher mirrors every other node's session into the local hub
//     (Hub.Mirror) and feeds it the session's events from an ordered
//     JetStream consumer (Hub.MirrorEvent), so bridge/attach, snapshot and
//     sessions work on it locally. A mirror not refreshed for the TTL is
//     marked blocked.
//   - Fleet is a session.Remote: what a client sends for another node's
//     session is forwarded to that node, which treats the client as its
//     own (forward.go).
//   - Fleet is a session.LoadRecorder: what re-loads each session into a
//     restarted node's agent is kept in a second KV bucket, and a node
//     that starts again loads its sessions (reload.go).
//
// Goroutines: Create, Append, Delete, the Remote and the LoadRecorder
// methods are called by the hub under its mutex and only enqueue; one
// writer goroutine publishes; one goroutine refreshes the KV entries (and
// reaps stand-ins of vanished nodes); one watches the bucket; one re-loads
// at start; forward.go's senders, one per destination node; nats.go runs
// the consumers' and subscriptions' callbacks. Close stops them all.
package fleet

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentbridge/agentbridge/session"
)

// SeqHeader carries an event's bridge seq on the stream.
const SeqHeader = "Agentbridge-Seq"

// Config configures Join. Zero values are the documented defaults.
type Config struct {
	URL   string // NATS server(s), comma-separated (--nats)
	Node  string // this daemon's name in the fleet (--node)
	Fleet string // the fleet's name (--fleet); default "default"
	// Refresh is how often the node re-puts its KV entries; the bucket's
	// TTL is three of them. Zero means 2 s.
	Refresh time.Duration
	// MaxAge and MaxBytes bound the session-log stream. Zero means 24 h
	// and 1 GiB.
	MaxAge   time.Duration
	MaxBytes int64
	// MaxQueue bounds the bytes of events waiting to be published (NATS
	// unreachable); past it events are dropped (mirrors see a bridge/gap).
	// Zero means 64 MiB.
	MaxQueue int
	Logger   *slog.Logger
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// CheckName validates a node or fleet name: it becomes part of NATS
// subjects, stream and bucket names.
func CheckName(flag, v string) error {
	if !nameRE.MatchString(v) {
		return fmt.Errorf("invalid %s %q: use 1 to 64 letters, digits, '-' or '_'", flag, v)
	}
	return nil
}

// Encode makes a session id safe as one NATS subject token and KV key:
// base64url without padding ([A-Za-z0-9_-]), reversible with Decode.
func Encode(sessionID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(sessionID))
}

// Decode reverses Encode.
func Decode(token string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	return string(b), err
}

// Hub is what the fleet needs of the session hub (session.Hub).
type Hub interface {
	Sessions() []session.SessionInfo
	Mirror(sessionID, node string, st session.Status) bool
	MirrorEvent(sessionID string, seq uint64, body []byte) bool
}

// Entry is a session's KV value.
type Entry struct {
	SessionID      string         `json:"sessionId"`
	Node           string         `json:"node"`
	Status         session.Status `json:"status"`
	OwnerConnected bool           `json:"ownerConnected"`
	Seq            uint64         `json:"seq"`
	Clients        int            `json:"clients"`
}

type op struct {
	kind byte // 'c' create, 'a' append, 'd' delete
	sid  string
	seq  uint64
	body []byte
}

// Fleet is one node's membership of a fleet.
type Fleet struct {
	cfg    Config
	log    *slog.Logger
	nc     *nats.Conn
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	loads  jetstream.KeyValue // reload.go
	stream string
	prefix string // agentbridge.<fleet>.s.

	mu       sync.Mutex // guards queue, queued, dropped, closing
	queue    []op
	queued   int
	dropped  uint64
	closing  bool
	wake     chan struct{}
	hub      Hub
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	writerWG sync.WaitGroup

	mmu     sync.Mutex // guards mirrors
	mirrors map[string]*mirror

	fw forwarding // forward.go
	// tick is closed (and replaced) at each mirrored event, for deliveries
	// waiting for their mirror (forward.go).
	tickMu sync.Mutex
	tick   chan struct{}
}

type mirror struct {
	node    string
	status  session.Status
	seen    time.Time
	stale   bool
	consume jetstream.ConsumeContext
}

// Join connects to NATS and creates (or updates) the fleet's stream and KV
// bucket. ctx bounds the setup.
func Join(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.Fleet == "" {
		cfg.Fleet = "default"
	}
	if err := CheckName("--node", cfg.Node); err != nil {
		return nil, err
	}
	if err := CheckName("--fleet", cfg.Fleet); err != nil {
		return nil, err
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 2 * time.Second
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = 24 * time.Hour
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 1 << 30
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = 64 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	f := &Fleet{cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1), mirrors: map[string]*mirror{},
		stream: "AGENTBRIDGE_" + cfg.Fleet, prefix: "agentbridge." + cfg.Fleet + ".s."}
	nc, err := nats.Connect(cfg.URL, nats.Name("agentbridge "+cfg.Node), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { f.log.Warn("fleet: NATS disconnected", "err", err) }),
		nats.ReconnectHandler(func(c *nats.Conn) { f.log.Info("fleet: NATS reconnected", "url", c.ConnectedUrl()) }))
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %q: %v", cfg.URL, err)
	}
	f.nc = nc
	fail := func(err error) (*Fleet, error) { nc.Close(); return nil, err }
	if f.js, err = jetstream.New(nc); err != nil {
		return fail(fmt.Errorf("JetStream at %q: %v", cfg.URL, err))
	}
	if _, err = f.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: f.stream, Subjects: []string{f.prefix + ">"}, Storage: jetstream.FileStorage,
		MaxAge: cfg.MaxAge, MaxBytes: cfg.MaxBytes, Duplicates: 2 * time.Minute,
		Description: "agentbridge session logs of fleet " + cfg.Fleet,
	}); err != nil {
		return fail(fmt.Errorf("JetStream stream %s at %q (is JetStream enabled?): %v", f.stream, cfg.URL, err))
	}
	if f.kv, err = f.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: "agentbridge-" + cfg.Fleet + "-sessions", TTL: 3 * cfg.Refresh, Storage: jetstream.FileStorage,
		Description: "agentbridge sessions of fleet " + cfg.Fleet + ": session -> node, status",
	}); err != nil {
		return fail(fmt.Errorf("JetStream KV bucket at %q: %v", cfg.URL, err))
	}
	if f.loads, err = f.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: "agentbridge-" + cfg.Fleet + "-loads", Storage: jetstream.FileStorage,
		Description: "agentbridge fleet " + cfg.Fleet + ": what re-loads each session into a restarted node's agent",
	}); err != nil {
		return fail(fmt.Errorf("JetStream KV bucket at %q: %v", cfg.URL, err))
	}
	return f, nil
}

// Subject is the stream subject of a session's events.
func (f *Fleet) Subject(sessionID string) string { return f.prefix + Encode(sessionID) }

// Start serves the fleet for hub: publishing, refreshing, mirroring.
func (f *Fleet) Start(h Hub) error {
	f.hub = h
	f.ctx, f.cancel = context.WithCancel(context.Background())
	w, err := f.kv.WatchAll(f.ctx)
	if err != nil {
		return fmt.Errorf("fleet: watch the session bucket: %v", err)
	}
	if fh, ok := h.(ForwardHub); ok {
		if err := f.startForwarding(fh); err != nil {
			f.cancel()
			_ = w.Stop()
			return err
		}
		f.wg.Add(1)
		go f.reload(fh) // reload.go
	}
	f.writerWG.Add(1)
	go f.writer()
	f.wg.Add(2)
	go f.refresher()
	go f.watch(w)
	return nil
}

// Create implements session.Journal: the session's KV entry is put now
// rather than at the next refresh. Called under the hub mutex: enqueues.
func (f *Fleet) Create(sessionID string) { f.enqueue(op{kind: 'c', sid: sessionID}) }

// Append implements session.Journal. body is immutable (kept without a
// copy). Called under the hub mutex: enqueues.
func (f *Fleet) Append(sessionID string, seq uint64, body []byte) {
	f.enqueue(op{kind: 'a', sid: sessionID, seq: seq, body: body})
}

// Delete implements session.JournalDeleter: the KV entry and the stream's
// events of the session are removed. Called under the hub mutex: enqueues.
func (f *Fleet) Delete(sessionID string) { f.enqueue(op{kind: 'd', sid: sessionID}) }

func (f *Fleet) enqueue(o op) {
	f.mu.Lock()
	if f.closing {
		f.mu.Unlock()
		return
	}
	if o.kind == 'a' && f.queued+len(o.body) > f.cfg.MaxQueue {
		f.dropped++
		n := f.dropped
		f.mu.Unlock()
		if n&(n-1) == 0 { // 1, 2, 4, 8...: logged, not flooded
			f.log.Warn("fleet: publish queue full (NATS unreachable?); event dropped from the fleet log", "session", o.sid, "seq", o.seq, "dropped", n)
		}
		return
	}
	f.queue = append(f.queue, o)
	f.queued += len(o.body)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// writer publishes queued ops in order, each acknowledged before the next
// is sent (publishSync): a pipelined publish lost in a disconnect would
// be stored after its successors, and a mirror, which takes events in seq
// order, would drop it as a duplicate (a hole). The message id makes the
// retry of an event that was stored but not acknowledged a no-op.
func (f *Fleet) writer() {
	defer f.writerWG.Done()
	for {
		f.mu.Lock()
		batch := f.queue
		f.queue, f.queued = nil, 0
		closing := f.closing
		f.mu.Unlock()
		if len(batch) == 0 {
			if closing {
				return
			}
			<-f.wake
			continue
		}
		f.publish(batch)
	}
}

// Batching: a run of consecutive events of one session waiting in the
// queue is published as one stream message (at most maxRun events and
// maxRunBytes), so a flood costs one JetStream round trip per run, not
// per event. A run's message carries its first seq (SeqHeader) and, past
// one event, CountHeader, with the bodies each prefixed by its length
// (uvarint); its message id names the first and last seq, and a retry
// sends the very same message, so the stream's duplicate window drops it.
const (
	maxRun      = 256
	maxRunBytes = 256 << 10
)

// CountHeader is the number of events a stream message carries (absent:
// one).
const CountHeader = "Agentbridge-Count"

func (f *Fleet) eventMsg(run []op) *nats.Msg {
	o := run[0]
	m := nats.NewMsg(f.Subject(o.sid))
	seq := strconv.FormatUint(o.seq, 10)
	m.Header.Set(SeqHeader, seq)
	id := f.cfg.Node + "." + Encode(o.sid) + "." + seq
	if len(run) == 1 {
		m.Data = o.body
	} else {
		for _, e := range run {
			m.Data = binary.AppendUvarint(m.Data, uint64(len(e.body)))
			m.Data = append(m.Data, e.body...)
		}
		m.Header.Set(CountHeader, strconv.Itoa(len(run)))
		id += "-" + strconv.FormatUint(run[len(run)-1].seq, 10)
	}
	m.Header.Set(jetstream.MsgIDHeader, id)
	return m
}

// splitRun returns the bodies a stream message carries: one, or count
// length-prefixed ones.
func splitRun(data []byte, count int) ([][]byte, error) {
	if count <= 1 {
		return [][]byte{data}, nil
	}
	bodies := make([][]byte, 0, count)
	for len(data) > 0 {
		n, k := binary.Uvarint(data)
		if k <= 0 || uint64(len(data)-k) < n {
			return nil, errors.New("truncated run")
		}
		bodies = append(bodies, data[k:k+int(n)])
		data = data[k+int(n):]
	}
	if len(bodies) != count {
		return nil, fmt.Errorf("run of %d events, %s says %d", len(bodies), CountHeader, count)
	}
	return bodies, nil
}

func (f *Fleet) publish(batch []op) {
	for i := 0; i < len(batch); {
		o := batch[i]
		i++
		switch o.kind {
		case 'a':
			j, size := i, len(o.body)
			for j < len(batch) && j-i < maxRun-1 && batch[j].kind == 'a' && batch[j].sid == o.sid &&
				batch[j].seq == batch[j-1].seq+1 && size+len(batch[j].body) <= maxRunBytes {
				size += len(batch[j].body)
				j++
			}
			f.publishSync(batch[i-1 : j])
			i = j
		case 'i', 'l':
			f.putLoad(o) // reload.go
		case 'c':
			f.putEntry(Entry{SessionID: o.sid, Node: f.cfg.Node, Status: session.StatusIdle})
		case 'd':
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := f.kv.Delete(ctx, Encode(o.sid)); err != nil {
				f.log.Warn("fleet: cannot delete the session's KV entry", "session", o.sid, "err", err)
			}
			if err := f.loads.Delete(ctx, Encode(o.sid)); err != nil {
				f.log.Warn("fleet: cannot delete the session's load record", "session", o.sid, "err", err)
			}
			if s, err := f.js.Stream(ctx, f.stream); err == nil {
				if err := s.Purge(ctx, jetstream.WithPurgeSubject(f.Subject(o.sid))); err != nil {
					f.log.Warn("fleet: cannot purge the session's events", "session", o.sid, "err", err)
				}
			}
			cancel()
		}
	}
}

// publishSync publishes a run of events and retries the same message
// until JetStream acknowledges it.
func (f *Fleet) publishSync(run []op) {
	o, msg := run[0], f.eventMsg(run)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := f.js.PublishMsg(ctx, msg)
		cancel()
		if err == nil {
			return
		}
		f.mu.Lock()
		closing := f.closing
		f.mu.Unlock()
		if closing {
			f.log.Warn("fleet: events not published before shutdown", "session", o.sid, "seq", o.seq, "events", len(run), "err", err)
			return
		}
		f.log.Warn("fleet: publish failed; retrying", "session", o.sid, "seq", o.seq, "events", len(run), "err", err)
		time.Sleep(wait)
	}
}

func (f *Fleet) putEntry(e Entry) {
	b, _ := json.Marshal(e)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.kv.Put(ctx, Encode(e.SessionID), b); err != nil {
		f.log.Debug("fleet: KV put failed", "session", e.SessionID, "err", err)
	}
}

// refresher re-puts the local sessions' entries every Refresh (their TTL
// is three) and marks mirrors not refreshed for a TTL blocked.
func (f *Fleet) refresher() {
	defer f.wg.Done()
	t := time.NewTicker(f.cfg.Refresh)
	defer t.Stop()
	for {
		f.refresh()
		f.expire()
		f.reapStandins()
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (f *Fleet) refresh() {
	for _, in := range f.hub.Sessions() {
		if in.Node != f.cfg.Node {
			continue // mirrors: their node refreshes them
		}
		f.putEntry(Entry{SessionID: in.SessionID, Node: f.cfg.Node, Status: in.Status, OwnerConnected: in.OwnerConnected, Seq: in.Seq, Clients: in.Clients})
	}
}

func (f *Fleet) expire() {
	ttl := 3 * f.cfg.Refresh
	now := time.Now()
	gone := map[string]bool{}
	f.mmu.Lock()
	for sid, m := range f.mirrors {
		if !m.stale && now.Sub(m.seen) > ttl {
			m.stale = true
			f.log.Warn("fleet: a remote session's node stopped refreshing it; marked blocked", "session", sid, "node", m.node)
			f.hub.Mirror(sid, m.node, session.StatusBlocked)
			gone[m.node] = true
		}
	}
	f.mmu.Unlock()
	for node := range gone {
		f.failPending(node) // forward.go
	}
}

// watch mirrors every other node's sessions from the KV bucket.
func (f *Fleet) watch(w jetstream.KeyWatcher) {
	defer f.wg.Done()
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-f.ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				f.update(e)
			}
		}
	}
}

func (f *Fleet) update(kve jetstream.KeyValueEntry) {
	sid, err := Decode(kve.Key())
	if err != nil {
		f.log.Warn("fleet: KV key is not an encoded session id; ignored", "key", kve.Key())
		return
	}
	f.mmu.Lock()
	defer f.mmu.Unlock()
	m := f.mirrors[sid]
	if kve.Operation() != jetstream.KeyValuePut {
		if m != nil {
			// Deleted by its node (session/delete): closed fleet-wide.
			f.hub.Mirror(sid, m.node, session.StatusClosed)
			m.consume.Stop()
			delete(f.mirrors, sid)
		}
		return
	}
	var e Entry
	if err := json.Unmarshal(kve.Value(), &e); err != nil || e.Node == "" {
		f.log.Warn("fleet: KV entry is not a session entry; ignored", "key", kve.Key(), "err", err)
		return
	}
	if e.Node == f.cfg.Node {
		return
	}
	if !f.hub.Mirror(sid, e.Node, e.Status) {
		return // the local agent has a session with this id
	}
	if m != nil {
		m.node, m.status, m.seen, m.stale = e.Node, e.Status, time.Now(), false
		return
	}
	m = &mirror{node: e.Node, status: e.Status, seen: time.Now()}
	cons, err := f.js.OrderedConsumer(f.ctx, f.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{f.Subject(sid)}, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err == nil {
		m.consume, err = cons.Consume(func(msg jetstream.Msg) { f.event(sid, msg) })
	}
	if err != nil {
		f.log.Warn("fleet: cannot follow a remote session's events", "session", sid, "node", e.Node, "err", err)
		return // retried at the entry's next refresh
	}
	f.mirrors[sid] = m
}

func (f *Fleet) event(sid string, msg jetstream.Msg) {
	seq, err := strconv.ParseUint(msg.Headers().Get(SeqHeader), 10, 64)
	if err != nil || seq == 0 {
		f.log.Warn("fleet: stream message without a valid "+SeqHeader+"; ignored", "session", sid, "subject", msg.Subject())
		return
	}
	count := 1
	if c := msg.Headers().Get(CountHeader); c != "" {
		if count, err = strconv.Atoi(c); err != nil || count < 1 {
			f.log.Warn("fleet: stream message with an invalid "+CountHeader+"; ignored", "session", sid, "value", c)
			return
		}
	}
	bodies, err := splitRun(msg.Data(), count)
	if err != nil {
		f.log.Warn("fleet: stream message not a valid run of events; ignored", "session", sid, "seq", seq, "err", err)
		return
	}
	for k, body := range bodies {
		f.hub.MirrorEvent(sid, seq+uint64(k), body)
	}
	f.mirrored()
}

// Close publishes what is queued (bounded by ctx), marks the local
// sessions blocked in the bucket so other nodes need not wait for the TTL,
// and leaves the fleet.
func (f *Fleet) Close(ctx context.Context) error {
	f.mu.Lock()
	f.closing = true
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
	done := make(chan struct{})
	go func() { f.writerWG.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = errors.New("fleet: events still queued at shutdown were not published")
	}
	if f.cancel != nil {
		f.cancel()
		f.wg.Wait()
		f.mmu.Lock()
		for _, m := range f.mirrors {
			m.consume.Stop()
		}
		f.mmu.Unlock()
		for _, in := range f.hub.Sessions() {
			if in.Node == f.cfg.Node {
				f.putEntry(Entry{SessionID: in.SessionID, Node: f.cfg.Node, Status: session.StatusBlocked, Seq: in.Seq})
			}
		}
	}
	f.nc.Close()
	return err
}

// Tee is a session.Journal writing to both a and b (the --state-dir store
// and the fleet), in order; Delete and the LoadRecorder methods reach
// those that implement them.
func Tee(a, b session.Journal) session.Journal { return tee{a, b} }

type tee struct{ a, b session.Journal }

func (t tee) Create(sid string) { t.a.Create(sid); t.b.Create(sid) }
func (t tee) Append(sid string, seq uint64, body []byte) {
	t.a.Append(sid, seq, body)
	t.b.Append(sid, seq, body)
}
func (t tee) Delete(sid string) {
	for _, j := range []session.Journal{t.a, t.b} {
		if d, ok := j.(session.JournalDeleter); ok {
			d.Delete(sid)
		}
	}
}

func (t tee) RecordInitialize(request []byte) {
	for _, j := range []session.Journal{t.a, t.b} {
		if r, ok := j.(session.LoadRecorder); ok {
			r.RecordInitialize(request)
		}
	}
}

func (t tee) RecordLoad(sid string, request []byte) {
	for _, j := range []session.Journal{t.a, t.b} {
		if r, ok := j.(session.LoadRecorder); ok {
			r.RecordLoad(sid, request)
		}
	}
}

var (
	_ session.Journal        = (*Fleet)(nil)
	_ session.JournalDeleter = (*Fleet)(nil)
	_ session.JournalDeleter = tee{}
	_ session.LoadRecorder   = tee{}
)
