package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// reconnect drops every client at once while the agent streams and lets
// each re-attach with since = the last seq it saw: how long until all are
// live again, and whether any event was lost or duplicated on the way.
func (r *runner) reconnect(ctx context.Context) error {
	for _, t := range r.o.Transports {
		if err := r.reconnectOver(ctx, t); err != nil {
			return fmt.Errorf("%s: %v", t, err)
		}
	}
	return nil
}

// rclient is one storm client. Its reader goroutine owns the connection
// and the seq accounting; the driver reads the atomics.
type rclient struct {
	s    system
	sess string

	cmu     sync.Mutex
	c       *msgConn      // guarded by cmu; replaced by the reader goroutine
	planned atomic.Bool   // the storm has dropped this client
	relive  chan struct{} // closed when the storm's re-attach is answered
	reOnce  sync.Once
	liveNS  atomic.Int64 // when it was, unix ns

	last   atomic.Uint64 // last seq seen
	target atomic.Uint64 // the session's final seq once known; MaxUint64 before
	caught chan struct{} // closed when last reaches target
	once   sync.Once

	// Written by the reader goroutine, read after done.
	events, lost, dups, serverDrops int64
	err                             error
	done                            chan struct{}
}

var (
	eventMethod = []byte(`"method":"bridge/event"`)
	seqKey      = []byte(`"seq":`)
)

// eventSeq is the seq of an enveloped event, or 0. The envelope's seq
// precedes the wrapped message, so the first "seq" is the envelope's.
func eventSeq(m []byte) uint64 {
	if !bytes.Contains(m[:min(len(m), 64)], eventMethod) {
		return 0
	}
	i := bytes.Index(m, seqKey)
	if i < 0 {
		return 0
	}
	var v uint64
	for _, c := range m[i+len(seqKey):] {
		if c < '0' || c > '9' {
			break
		}
		v = v*10 + uint64(c-'0')
	}
	return v
}

// handle accounts one message: an event extends the seq stream, a gap
// announces a hole.
func (rc *rclient) handle(m []byte) {
	if seq := eventSeq(m); seq > 0 {
		rc.events++
		last := rc.last.Load()
		switch {
		case seq <= last:
			rc.dups++
		default:
			rc.lost += int64(seq - last - 1)
			rc.last.Store(seq)
		}
		rc.checkCaught()
		return
	}
	if bytes.Contains(m, gapMethod) {
		var g struct {
			Params struct {
				From uint64 `json:"fromSeq"`
				To   uint64 `json:"toSeq"`
			} `json:"params"`
		}
		if json.Unmarshal(m, &g) == nil && g.Params.To > rc.last.Load() {
			rc.lost += int64(g.Params.To - max(g.Params.From, rc.last.Load()+1) + 1)
			rc.last.Store(g.Params.To)
			rc.checkCaught()
		}
	}
}

func (rc *rclient) checkCaught() {
	if rc.last.Load() >= rc.target.Load() {
		rc.once.Do(func() { close(rc.caught) })
	}
}

// attach opens an enveloped connection and attaches, from since when
// resuming; events and gaps that precede the answer are accounted.
func (rc *rclient) attach(ctx context.Context, resume bool) error {
	c, err := dialRetry(ctx, rc.s, connOpts{readBuf: 16 << 10})
	if err != nil {
		return fmt.Errorf("connect: %v", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	rc.cmu.Lock()
	rc.c = c
	rc.cmu.Unlock()
	if _, err := call(c, 1, "bridge/hello", map[string]any{"envelope": true}); err != nil {
		return err
	}
	params := map[string]any{"sessionId": rc.sess}
	if resume {
		params["since"] = rc.last.Load()
	}
	if err := c.Send(jsonrpc.AppendRequest(nil, []byte("2"), "bridge/attach", params)); err != nil {
		return err
	}
	for {
		m, err := c.Next()
		if err != nil {
			return fmt.Errorf("bridge/attach: %v", err)
		}
		if responseID(m) != 2 {
			rc.handle(m)
			continue
		}
		var resp struct {
			Result struct {
				Seq uint64 `json:"seq"`
			} `json:"result"`
			Error *jsonrpc.Error `json:"error"`
		}
		if err := json.Unmarshal(m, &resp); err != nil || resp.Error != nil {
			return fmt.Errorf("bridge/attach failed: %s", m)
		}
		if !resume {
			rc.last.Store(resp.Result.Seq) // live from here
		}
		return nil
	}
}

// conn is the current connection. Any goroutine.
func (rc *rclient) conn() *msgConn {
	rc.cmu.Lock()
	defer rc.cmu.Unlock()
	return rc.c
}

// run reads until ctx ends, re-attaching whenever the connection drops.
func (rc *rclient) run(ctx context.Context) {
	defer close(rc.done)
	for {
		if ctx.Err() != nil {
			return
		}
		c := rc.conn()
		m, err := c.Next()
		if err == nil {
			rc.handle(m)
			continue
		}
		c.Close()
		if ctx.Err() != nil {
			return
		}
		planned := rc.planned.Swap(false)
		if !planned {
			rc.serverDrops++
		}
		if err := rc.attach(ctx, true); err != nil {
			if ctx.Err() == nil {
				rc.err = err
			}
			return
		}
		// The storm may have struck while a server-initiated reconnect was
		// under way; then this re-attach is the storm's.
		if planned || rc.planned.Swap(false) {
			rc.reOnce.Do(func() {
				rc.liveNS.Store(time.Now().UnixNano())
				close(rc.relive)
			})
		}
	}
}

func (r *runner) reconnectOver(ctx context.Context, transport string) error {
	o := &r.o
	d, err := r.startDaemon(ctx, daemonSpec{agent: r.streamAgent(o.ChunkSize, o.ReconnectPace)})
	if err != nil {
		return err
	}
	defer d.stop()
	ctx, cancel := context.WithTimeout(ctx, o.Warmup+o.Duration+o.Timeout+drainTime)
	defer cancel()
	s := d.bridge(transport)
	label := fmt.Sprintf("reconnect %s %d clients", transport, o.ReconnectClients)

	// Drivers own the sessions and keep reading; they never drop.
	var joined atomic.Int64
	r.prog.set(label+" connecting", func() string { return fmt.Sprintf("%d clients", joined.Load()) })
	drivers, err := buildFleet(ctx, s, bridgeProto{s: s}, o.ReconnectSessions, 1, &joined)
	if err != nil {
		return err
	}
	defer drivers.close()

	clients := make([]*rclient, o.ReconnectClients)
	rctx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	defer func() {
		stopClients()
		for _, rc := range clients {
			if rc != nil {
				if c := rc.conn(); c != nil {
					c.Close()
				}
			}
		}
	}()
	err = parallel(ctx, len(clients), 32, func(i int) error {
		rc := &rclient{s: s, sess: drivers.ids[i%len(drivers.ids)], relive: make(chan struct{}), caught: make(chan struct{}), done: make(chan struct{})}
		rc.target.Store(math.MaxUint64)
		if err := rc.attach(ctx, false); err != nil {
			return err
		}
		clients[i] = rc
		joined.Add(1)
		return nil
	})
	if err != nil {
		return err
	}
	for _, rc := range clients {
		go rc.run(rctx)
	}
	for i, fc := range drivers.clients {
		if err := drivers.proto.start(fc.c, drivers.ids[i]); err != nil {
			return err
		}
	}
	r.prog.set(label+" streaming", nil)
	if err := sleepCtx(ctx, o.Warmup); err != nil {
		return err
	}

	// The storm: every client loses its connection at once.
	r.prog.set(label+" storm", nil)
	storm := time.Now()
	for _, rc := range clients {
		rc.planned.Store(true)
	}
	for _, rc := range clients {
		rc.conn().Abort()
	}
	h := newHist()
	var last int64
	for _, rc := range clients {
		select {
		case <-rc.relive:
			at := rc.liveNS.Load()
			record(h, time.Duration(at-storm.UnixNano()))
			last = max(last, at)
		case <-rc.done:
			return fmt.Errorf("a client could not re-attach: %v", rc.err)
		case <-ctx.Done():
			return fmt.Errorf("clients were not all live again within the run's bound")
		}
	}
	stormMs := float64(last-storm.UnixNano()) / 1e6

	// Keep streaming, then stop and check every client has every event.
	r.prog.set(label+" streaming after the storm", nil)
	if err := sleepCtx(ctx, o.Duration); err != nil {
		return err
	}
	for i, fc := range drivers.clients {
		if err := drivers.proto.stop(fc.c, drivers.ids[i]); err != nil {
			return err
		}
	}
	for _, fc := range drivers.clients {
		select {
		case <-fc.ended:
		case <-ctx.Done():
			return fmt.Errorf("a stream did not end after session/cancel")
		}
	}
	final, err := finalSeqs(ctx, s)
	if err != nil {
		return err
	}
	for _, rc := range clients {
		rc.target.Store(final[rc.sess])
		rc.checkCaught()
	}
	dctx, dcancel := context.WithTimeout(ctx, drainTime)
	defer dcancel()
	for _, rc := range clients {
		select {
		case <-rc.caught:
		case <-rc.done:
		case <-dctx.Done():
		}
	}
	stopClients()
	m := Measurement{Scenario: "reconnect", Transport: transport, Case: fmt.Sprintf("%d clients", len(clients)), System: sysBridge,
		Conns: len(clients), Seconds: stormMs / 1e3, Count: int64(len(clients)), Latency: summary(h), StormMs: stormMs}
	var failed error
	for _, rc := range clients {
		rc.conn().Close()
		<-rc.done
		if rc.err != nil && failed == nil {
			failed = rc.err
		}
		m.Delivered += rc.events
		m.Duplicated += rc.dups
		m.Lost += rc.lost
		if t := final[rc.sess]; rc.last.Load() < t {
			m.Lost += int64(t - rc.last.Load())
		}
		m.ServerDrops += rc.serverDrops
	}
	if failed != nil {
		return fmt.Errorf("a client failed after the storm: %v", failed)
	}
	if err := d.alive(); err != nil {
		return err
	}
	m.Note = fmt.Sprintf("%d sessions, a chunk every %v; %d events delivered", len(drivers.ids), o.ReconnectPace, m.Delivered)
	if m.ServerDrops > 0 {
		m.Note += fmt.Sprintf("; the daemon closed %d slow connections, which resumed too", m.ServerDrops)
	}
	r.res.Runs = append(r.res.Runs, m)
	kase := m.Case
	r.addFigure(Figure{Scenario: "reconnect", Transport: transport, Case: kase, Metric: "all live again", Unit: "ms", Better: "lower", Value: stormMs}, nil, nil)
	r.addFigure(Figure{Scenario: "reconnect", Transport: transport, Case: kase, Metric: "p50 re-attach", Unit: "ms", Better: "lower", Value: m.Latency.P50 / 1e3}, nil, nil)
	r.addFigure(Figure{Scenario: "reconnect", Transport: transport, Case: kase, Metric: "lost", Unit: "events", Better: "lower", Value: float64(m.Lost),
		Target: &Target{Text: "0", Met: m.Lost == 0}}, nil, nil)
	r.addFigure(Figure{Scenario: "reconnect", Transport: transport, Case: kase, Metric: "duplicated", Unit: "events", Better: "lower", Value: float64(m.Duplicated),
		Target: &Target{Text: "0", Met: m.Duplicated == 0}}, nil, nil)
	return nil
}

// finalSeqs asks the daemon for every session's last seq.
func finalSeqs(ctx context.Context, s system) (map[string]uint64, error) {
	c, err := s.dial(ctx, connOpts{})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	out := map[string]uint64{}
	params := map[string]any{"limit": 1000}
	for id := int64(1); ; id++ {
		m, err := call(c, id, "bridge/sessions", params)
		if err != nil {
			return nil, err
		}
		var resp struct {
			Result struct {
				Sessions []struct {
					ID  string `json:"sessionId"`
					Seq uint64 `json:"seq"`
				} `json:"sessions"`
				NextCursor string `json:"nextCursor"`
			} `json:"result"`
		}
		if err := json.Unmarshal(m, &resp); err != nil {
			return nil, fmt.Errorf("bridge/sessions: %v", err)
		}
		for _, s := range resp.Result.Sessions {
			out[s.ID] = s.Seq
		}
		if resp.Result.NextCursor == "" {
			break
		}
		params["cursor"] = resp.Result.NextCursor // the daemon pages its answer
	}
	return out, nil
}
