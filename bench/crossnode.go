package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// The fleet scenario: two daemons of one fleet (serve --nats --node A|B)
// through the NATS server --nats names. Each figure is a cross-node path
// measured beside its same-node path in the same run, on the same
// session and the same stream:
//
//   - delivery latency: A's agent streams stamped chunks at a fixed pace;
//     one viewer on A and one on B are attached to the session; latency is
//     each chunk's receive time minus the agent's send stamp (A's events
//     reach B through the JetStream stream and B's mirror);
//   - throughput: B's agent floods its session; a viewer on B and one on A
//     read it; events/s from the first to the last event;
//   - request round trip: a gated request (session/set_mode, which the
//     demo agent refuses at once) to A's session, sequentially, from a
//     client on A and from one on B (forwarded by NATS request/reply).
//
// bench does not start NATS itself: linking nats-server into agentbridge
// would grow the binary by about 15 MB for a benchmark, so the server is
// the caller's (scripts/bench.sh runs test/natsd). Without --nats the
// scenario is skipped, saying so.

const (
	crossLatencyPace = time.Millisecond // A's paced stream: --duration of it, at least 200 chunks
	crossFloodChunks = 5000             // B's flood
	crossRTTCount    = 300              // sequential requests per side
	crossSession     = 3                // call ids of the set-up
	crossAttach      = 4
	crossRTTBase     = 1000
)

// fleetNATS is the fleet scenario.
func (r *runner) fleetNATS(ctx context.Context) error {
	if r.o.NATS == "" {
		r.skip("fleet: needs --nats URL, a NATS server with JetStream (scripts/bench.sh starts one)")
		return nil
	}
	if r.external != nil {
		r.skip("fleet: starts its own two daemons; not run against --uds/--ws")
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	fleet := fmt.Sprintf("bench%d", time.Now().UnixNano())
	node := func(name string, agentFlags ...string) (*daemon, error) {
		agent := append([]string{r.bin, "demo-agent", "--chunk-size", "100", "--permission=false", "--tool-calls", "0", "--stamp"}, agentFlags...)
		return r.startDaemon(ctx, daemonSpec{agent: agent, serve: []string{"--nats", r.o.NATS, "--node", name, "--fleet", fleet}})
	}
	chunks := max(200, int(r.o.Duration/crossLatencyPace))
	a, err := node("A", "--chunks", strconv.Itoa(chunks), "--pace", crossLatencyPace.String())
	if err != nil {
		return err
	}
	defer a.stop()
	b, err := node("B", "--chunks", strconv.Itoa(crossFloodChunks), "--pace", "0")
	if err != nil {
		return err
	}
	defer b.stop()

	// Latency: A's session, viewers on A (same node) and B (cross-node).
	lat, rtt, err := r.crossLatency(ctx, a, b, chunks)
	if err != nil {
		return fmt.Errorf("latency: %v", err)
	}
	r.addPercentiles(fmt.Sprintf("agent on A, %d chunks every %s; viewer on B vs on A", chunks, crossLatencyPace), "delivery", lat)
	r.addPercentiles(fmt.Sprintf("%d sequential gated requests to A's session; client on B (forwarded) vs on A", crossRTTCount), "rtt", rtt)

	// Throughput: B's session flooded, viewers on B (same) and A (cross).
	rate, err := r.crossFlood(ctx, b, a)
	if err != nil {
		return fmt.Errorf("throughput: %v", err)
	}
	kase := fmt.Sprintf("agent on B floods %d chunks; viewer on A vs on B", crossFloodChunks)
	r.addFigure(Figure{Scenario: "fleet", Transport: "unix", Case: kase, Metric: "events/s", Unit: "msgs/s", Better: "higher", Value: rate[1]},
		map[string]float64{"same node": rate[0]}, []string{"same node"})
	for _, d := range []*daemon{a, b} {
		if err := d.alive(); err != nil {
			return err
		}
	}
	return nil
}

// addPercentiles records the p50 and p99 of pair[1] (cross-node) with
// pair[0] (same node) as the baseline.
func (r *runner) addPercentiles(kase, metric string, pair [2]*Latency) {
	for _, q := range []struct {
		name string
		v    func(*Latency) float64
	}{{"p50", func(l *Latency) float64 { return l.P50 }}, {"p99", func(l *Latency) float64 { return l.P99 }}} {
		r.addFigure(Figure{Scenario: "fleet", Transport: "unix", Case: kase, Metric: metric + " " + q.name, Unit: "µs", Better: "lower", Value: q.v(pair[1])},
			map[string]float64{"same node": q.v(pair[0])}, []string{"same node"})
	}
}

// closeAll closes the connections set up (nil ones skipped) and aborts
// their reads when ctx ends first.
func closeAll(ctx context.Context, conns ...*msgConn) func() {
	var stops []func() bool
	for _, c := range conns {
		if c != nil {
			stops = append(stops, context.AfterFunc(ctx, c.Abort))
		}
	}
	return func() {
		for _, stop := range stops {
			stop()
		}
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
}

// bothViewers runs read on each viewer at once and joins their errors.
func bothViewers(viewers [2]*msgConn, read func(i int, v *msgConn) error) error {
	errs := make(chan error, len(viewers))
	for i, v := range viewers {
		go func() { errs <- read(i, v) }()
	}
	var err error
	for range viewers {
		err = errors.Join(err, <-errs)
	}
	return err
}

// crossSetup makes a session on owner's daemon (owner: hello, initialize,
// session/new) and attaches one enveloped viewer on each of same and
// other, once other lists it. It returns the session id and the viewers.
func crossSetup(ctx context.Context, own, other *daemon) (sid string, owner *msgConn, viewers [2]*msgConn, err error) {
	if owner, err = dialRetry(ctx, own.bridge("unix"), connOpts{}); err != nil {
		return
	}
	if _, err = call(owner, 1, "bridge/hello", map[string]any{"envelope": true}); err != nil {
		return
	}
	if _, err = call(owner, 2, "initialize", map[string]any{"protocolVersion": 1, "clientCapabilities": map[string]any{}}); err != nil {
		return
	}
	m, err := call(owner, crossSession, "session/new", map[string]any{"cwd": "/", "mcpServers": []any{}})
	if err != nil {
		return
	}
	if sid = string(jsonrpc.ResultSessionID(m)); sid == "" {
		err = fmt.Errorf("session/new: no sessionId in %s", m)
		return
	}
	for i, d := range []*daemon{own, other} {
		if viewers[i], err = dialRetry(ctx, d.bridge("unix"), connOpts{}); err != nil {
			return
		}
		if _, err = call(viewers[i], 1, "bridge/hello", map[string]any{"envelope": true}); err != nil {
			return
		}
		if i == 1 { // the other node learns the session from the fleet's KV bucket
			if err = waitListedOn(ctx, viewers[i], sid); err != nil {
				return
			}
		}
		if _, err = call(viewers[i], crossAttach, "bridge/attach", map[string]any{"sessionId": sid}); err != nil {
			return
		}
	}
	return
}

// waitListedOn polls bridge/sessions on c until sid is listed.
func waitListedOn(ctx context.Context, c *msgConn, sid string) error {
	want := []byte(strconv.Quote(sid))
	for id := int64(100); ; id++ {
		m, err := call(c, id, "bridge/sessions", map[string]any{"limit": 1000})
		if err != nil {
			return err
		}
		if bytes.Contains(m, want) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("session %s not listed on the other node: %v", sid, ctx.Err())
		case <-time.After(20 * time.Millisecond): // polling the fleet's KV bucket, bounded by ctx
		}
	}
}

// readEvents reads bridge/event messages from c until n of them are the
// prompt's chunks, calling each(msg, now) for those; it fails on a gap or
// a seq out of order.
func readEvents(c *msgConn, n int, each func(msg []byte, now time.Time)) error {
	seqKey := []byte(`"seq":`)
	var next uint64
	for got := 0; got < n; {
		msg, err := c.Next()
		if err != nil {
			return fmt.Errorf("after %d of %d events: %v", got, n, err)
		}
		if bytes.Contains(msg, []byte(`"bridge/gap"`)) {
			return fmt.Errorf("a gap after %d events: %s", got, msg)
		}
		if !bytes.Contains(msg[:min(len(msg), 64)], []byte(`"bridge/event"`)) {
			continue
		}
		i := bytes.Index(msg, seqKey)
		seq, ok := leadingDigits(msg[i+len(seqKey):])
		if i < 0 || !ok || (next != 0 && seq != next) {
			return fmt.Errorf("event %d: seq %d, want %d", got+1, seq, next)
		}
		next = seq + 1
		if !bytes.Contains(msg, []byte(`"agent_message_chunk"`)) {
			continue // not one of the prompt's chunks
		}
		each(msg, time.Now())
		got++
	}
	return nil
}

// prompt sends one session/prompt on c.
func prompt(c *msgConn, sid string) error {
	return c.Send(jsonrpc.AppendRequest(nil, []byte(strconv.Itoa(promptID)), "session/prompt",
		map[string]any{"sessionId": sid, "prompt": []any{map[string]string{"type": "text", "text": "stream"}}}))
}

// crossLatency measures delivery latency on both viewers of one paced
// stream of chunks from a's agent, then the request round trip from each (index 0:
// same node, 1: cross-node).
func (r *runner) crossLatency(ctx context.Context, a, b *daemon, chunks int) (lat, rtt [2]*Latency, err error) {
	sid, owner, viewers, err := crossSetup(ctx, a, b)
	defer closeAll(ctx, owner, viewers[0], viewers[1])()
	if err != nil {
		return lat, rtt, err
	}
	gcNow()
	if err := prompt(owner, sid); err != nil {
		return lat, rtt, err
	}
	hists := [2]*hdrhistogram.Histogram{newHist(), newHist()}
	if err := bothViewers(viewers, func(i int, v *msgConn) error {
		return readEvents(v, chunks, func(msg []byte, now time.Time) {
			if at := stampOf(msg); at > 0 {
				record(hists[i], now.Sub(time.Unix(0, at)))
			}
		})
	}); err != nil {
		return lat, rtt, err
	}
	if _, err := waitResponse(owner, promptID); err != nil {
		return lat, rtt, err
	}
	for i := range hists {
		if lat[i] = summary(hists[i]); lat[i] == nil {
			return lat, rtt, errors.New("no stamped chunk received")
		}
	}
	// Round trips: the viewers are attached, so the gate lets them ask;
	// the demo agent answers set_mode -32601 at once.
	for i, v := range viewers {
		h := newHist()
		for k := 0; k < crossRTTCount; k++ {
			id := int64(crossRTTBase + k)
			start := time.Now()
			if err := v.Send(jsonrpc.AppendRequest(nil, strconv.AppendInt(nil, id, 10), "session/set_mode", map[string]any{"sessionId": sid, "modeId": "x"})); err != nil {
				return lat, rtt, err
			}
			if _, err := waitResponse(v, id); err != nil {
				return lat, rtt, err
			}
			record(h, time.Since(start))
		}
		rtt[i] = summary(h)
	}
	return lat, rtt, nil
}

// waitResponse reads c until the response with id.
func waitResponse(c *msgConn, id int64) ([]byte, error) {
	for {
		m, err := c.Next()
		if err != nil {
			return nil, fmt.Errorf("waiting for response %d: %v", id, err)
		}
		if responseID(m) == id {
			return m, nil
		}
	}
}

// crossFlood measures events/s on both viewers of b's flood (index 0: the
// viewer on b, 1: on a).
func (r *runner) crossFlood(ctx context.Context, b, a *daemon) (rate [2]float64, err error) {
	sid, owner, viewers, err := crossSetup(ctx, b, a)
	defer closeAll(ctx, owner, viewers[0], viewers[1])()
	if err != nil {
		return rate, err
	}
	gcNow()
	if err := prompt(owner, sid); err != nil {
		return rate, err
	}
	err = bothViewers(viewers, func(i int, v *msgConn) error {
		var first, last time.Time
		e := readEvents(v, crossFloodChunks, func(_ []byte, now time.Time) {
			if first.IsZero() {
				first = now
			}
			last = now
		})
		if e == nil && last.After(first) {
			rate[i] = float64(crossFloodChunks-1) / last.Sub(first).Seconds()
		}
		return e
	})
	return rate, err
}
