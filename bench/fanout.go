package bench

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// streamAgent is the demo agent streaming stamped chunks "forever" (the
// bench stops it with session/cancel), every pace (0: full speed).
func (r *runner) streamAgent(chunkSize int, pace time.Duration) []string {
	return []string{r.bin, "demo-agent", "--chunks", strconv.Itoa(math.MaxInt32), "--chunk-size", strconv.Itoa(chunkSize),
		"--pace", pace.String(), "--permission=false", "--tool-calls", "0", "--stamp"}
}

// drainTime bounds how long a fleet may take to deliver what was sent
// after its streams stop; fanoutDrain is shorter because a full-speed
// stream can queue more than any drain would deliver.
const (
	drainTime   = 10 * time.Second
	fanoutDrain = 5 * time.Second
)

// fanout streams S sessions to C attached clients each.
func (r *runner) fanout(ctx context.Context) error {
	for _, t := range r.o.Transports {
		if err := r.fanoutOver(ctx, t); err != nil {
			return fmt.Errorf("%s: %v", t, err)
		}
	}
	return nil
}

func (r *runner) fanoutOver(ctx context.Context, transport string) error {
	o := &r.o
	kase := fmt.Sprintf("%d×%d", o.Sessions, o.Clients)
	if o.FanoutPace > 0 {
		kase += " every " + o.FanoutPace.String()
	}
	d, err := r.startDaemon(ctx, daemonSpec{agent: r.streamAgent(o.ChunkSize, o.FanoutPace)})
	if err != nil {
		return err
	}
	br, err := r.fanoutRun(ctx, d.bridge(transport), bridgeProto{s: d.bridge(transport)}, transport, kase)
	d.stop()
	if err != nil {
		return err
	}
	base := map[string]map[string]float64{}
	if o.Baselines {
		h, err := r.startHelper(ctx, false)
		if err != nil {
			return err
		}
		bl, err := r.fanoutRun(ctx, h.broadcast(transport), broadcastProto{size: o.ChunkSize, pace: o.FanoutPace}, transport, kase)
		h.p.stop()
		if err != nil {
			r.skip(fmt.Sprintf("fanout %s broadcast baseline failed: %v", transport, err))
		} else {
			base[sysBroadcast] = map[string]float64{"rate": bl.Rate, "p50": bl.Latency.P50, "p99": bl.Latency.P99}
		}
	}
	pick := func(k string) map[string]float64 {
		m := map[string]float64{}
		for sys, v := range base {
			m[sys] = v[k]
		}
		return m
	}
	order := []string{sysBroadcast}
	clients := o.Sessions * o.Clients
	target := &Target{Text: "≥ 1,000,000/s across 1,000 clients", Met: br.Rate >= 1e6}
	if clients != 1000 {
		target.Text += fmt.Sprintf(" (this run: %d clients)", clients)
	}
	f := Figure{Scenario: "fanout", Transport: transport, Case: kase, Metric: "delivered", Unit: "msgs/s", Better: "higher", Value: br.Rate, Target: target}
	r.addFigure(f, pick("rate"), order)
	r.addFigure(Figure{Scenario: "fanout", Transport: transport, Case: kase, Metric: "p50", Unit: "µs", Better: "lower", Value: br.Latency.P50}, pick("p50"), order)
	r.addFigure(Figure{Scenario: "fanout", Transport: transport, Case: kase, Metric: "p99", Unit: "µs", Better: "lower", Value: br.Latency.P99}, pick("p99"), order)
	return nil
}

// fanoutRun builds a fleet on s, streams, and records the measurement.
func (r *runner) fanoutRun(ctx context.Context, s system, proto streamProto, transport, kase string) (Measurement, error) {
	o := &r.o
	ctx, cancel := context.WithTimeout(ctx, o.Warmup+o.Duration+o.Timeout+drainTime)
	defer cancel()
	var joined atomic.Int64
	label := fmt.Sprintf("fanout %s %s %s", transport, kase, s.name)
	r.prog.set(label+" connecting", func() string { return fmt.Sprintf("%d clients", joined.Load()) })
	f, err := buildFleet(ctx, s, proto, o.Sessions, o.Clients, &joined)
	if err != nil {
		return Measurement{}, fmt.Errorf("%s: %v", s.name, err)
	}
	defer f.close()
	stop := context.AfterFunc(ctx, f.close)
	defer stop()
	gcNow()
	r.prog.set(label, func() string {
		var n int64
		for _, fc := range f.clients {
			n += fc.recv.Load()
		}
		return fmt.Sprintf("%d delivered", n)
	})
	st, err := f.stream(ctx, o.Warmup, o.Duration, fanoutDrain)
	if err != nil {
		return Measurement{}, fmt.Errorf("%s: %v", s.name, err)
	}
	m := Measurement{Scenario: "fanout", Transport: transport, Case: kase, System: s.name, Conns: len(f.clients),
		Seconds: st.seconds, Count: st.delivered, Rate: float64(st.delivered) / st.seconds, Latency: st.lat,
		Delivered: st.delivered, Dropped: st.dropped, Missing: st.missing}
	m.ServerDrops = int64(st.closed)
	var notes []string
	if !st.drained {
		notes = append(notes, fmt.Sprintf("the streams had not drained %v after they were stopped (the agent outpaced delivery), so drops are not accounted", fanoutDrain))
	}
	if st.dropped > 0 || st.missing > 0 {
		notes = append(notes, fmt.Sprintf("%d chunks dropped by degrade (bridge/gap), %d missing", st.dropped, st.missing))
	}
	if st.closed > 0 {
		notes = append(notes, fmt.Sprintf("the server disconnected %d clients (%v)", st.closed, st.closeErr))
	}
	m.Note = strings.Join(notes, "; ")
	r.res.Runs = append(r.res.Runs, m)
	return m, nil
}
