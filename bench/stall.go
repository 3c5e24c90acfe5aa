package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"
)

// stall measures what clients that never read cost the ones that do: the
// fast clients' delivery latency with 0, 1, 100 stalled clients beside them,
// each count on a fresh daemon, and the daemon's RSS growth meanwhile.
func (r *runner) stall(ctx context.Context) error {
	for _, t := range r.o.Transports {
		if err := r.stallOver(ctx, t); err != nil {
			return fmt.Errorf("%s: %v", t, err)
		}
	}
	return nil
}

func (r *runner) stallOver(ctx context.Context, transport string) error {
	o := &r.o
	pace := o.StallPace
	if pace == 0 {
		// The agent's pace that makes the fleet's deliveries half of what
		// it can take at most: measured, not guessed, on this machine.
		cal, err := r.stallRun(ctx, transport, 0, 0, false)
		if err != nil {
			return fmt.Errorf("measuring the fan-out capacity: %v", err)
		}
		if cal.Rate <= 0 {
			return fmt.Errorf("measuring the fan-out capacity: nothing delivered")
		}
		// Every session's chunk reaches cal.Conns/StallSessions clients:
		// the fleet takes cal.Conns deliveries per round of chunks.
		pace = time.Duration(float64(time.Second) * float64(cal.Conns) / (cal.Rate / 2))
		pace = max(pace, 10*time.Microsecond)
		r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: "no stalled, agent at full speed", Metric: "fan-out capacity", Unit: "msgs/s", Better: "higher", Value: cal.Rate}, nil, nil)
		r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: fmt.Sprintf("half the capacity: a chunk every %v per session", pace.Round(time.Microsecond)),
			Metric: "fixed rate", Unit: "msgs/s", Better: "higher", Value: float64(cal.Conns) * float64(time.Second) / float64(pace)}, nil, nil)
	}
	runs := make([]Measurement, 0, len(o.StallCounts))
	for _, k := range o.StallCounts {
		m, err := r.stallRun(ctx, transport, k, pace, true)
		if err != nil {
			return fmt.Errorf("%d stalled: %v", k, err)
		}
		runs = append(runs, m)
	}
	base := runs[0]
	baseName := stallCase(o.StallCounts[0])
	for i, m := range runs {
		if i == 0 {
			continue
		}
		for _, metric := range []string{"p50", "p99"} {
			v, bv := m.Latency.P50, base.Latency.P50
			var targets []ratioTarget
			if metric == "p99" {
				v, bv = m.Latency.P99, base.Latency.P99
				targets = []ratioTarget{{system: baseName, atMost: true, limit: 1.2}}
			}
			r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: m.Case, Metric: metric, Unit: "µs", Better: "lower", Value: v},
				map[string]float64{baseName: bv}, []string{baseName}, targets...)
		}
		growth := float64(m.RSSAfterKB-m.RSSBeforeKB) / 1024
		baseGrowth := float64(base.RSSAfterKB-base.RSSBeforeKB) / 1024
		f := Figure{Scenario: "stall", Transport: transport, Case: m.Case, Metric: "rss growth", Unit: "MB", Better: "lower", Value: growth}
		// Each stalled client may hold at most its queue ceilings; with
		// GOGC=100 the heap may grow to twice what is live.
		if bound := r.stallBoundMB(o.StallCounts[i] - o.StallCounts[0]); bound > 0 {
			f.Target = &Target{Text: fmt.Sprintf("≤ %.1f MB (2 × stalled × ceilings)", baseGrowth+2*bound), Met: growth <= baseGrowth+2*bound}
		}
		r.addFigure(f, map[string]float64{baseName: baseGrowth}, []string{baseName})
		if k := o.StallCounts[i] - o.StallCounts[0]; k > 0 {
			// What one more stalled client costs during the run, beyond
			// its idle connection (measured before the stream starts).
			per := (growth - baseGrowth) * 1024 / float64(k)
			r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: m.Case, Metric: "rss per stalled client", Unit: "KB", Better: "lower", Value: per,
				Target: &Target{Text: "≤ 4 KB beyond its idle cost", Met: per <= 4}}, nil, nil)
		}
	}
	if len(runs) == 1 {
		r.skip("stall: only one --stall-counts value, so no isolation ratio")
	}
	if r.external == nil {
		return r.stallLag(ctx, transport)
	}
	r.skip("stall: the lag case needs a daemon bench starts (its agent floods a fixed count)")
	return nil
}

func stallCase(k int) string { return strconv.Itoa(k) + " stalled" }

// stallBoundMB is what n stalled clients may make the daemon hold: each
// connection's data and control ceilings, with the daemon's defaults for
// the ceilings bench does not set.
func (r *runner) stallBoundMB(n int) float64 {
	if n <= 0 || r.external != nil {
		return 0
	}
	data := r.o.StallQueueBytes
	if data == 0 {
		data = 1 << 20
	}
	const control = 4 << 20
	return float64(n) * float64(data+control) / (1 << 20)
}

// stallRun streams at pace (0: as fast as the agent can) to the fast
// clients beside k stalled ones; record adds the run to the results.
func (r *runner) stallRun(ctx context.Context, transport string, k int, pace time.Duration, record bool) (Measurement, error) {
	o := &r.o
	spec := daemonSpec{agent: r.streamAgent(o.StallChunkSize, pace)}
	if o.StallQueueBytes > 0 {
		spec.serve = []string{"--queue-bytes", strconv.Itoa(o.StallQueueBytes)}
	}
	d, err := r.startDaemon(ctx, spec)
	if err != nil {
		return Measurement{}, err
	}
	defer d.stop()
	ctx, cancel := context.WithTimeout(ctx, o.Warmup+o.Duration+o.Timeout+drainTime)
	defer cancel()
	s := d.bridge(transport)
	kase := stallCase(k)
	label := fmt.Sprintf("stall %s %s", transport, kase)
	var joined atomic.Int64
	r.prog.set(label+" connecting", func() string { return fmt.Sprintf("%d clients", joined.Load()) })
	perStream := (o.StallFast + o.StallSessions - 1) / o.StallSessions
	f, err := buildFleet(ctx, s, bridgeProto{s: s}, o.StallSessions, perStream, &joined)
	if err != nil {
		return Measurement{}, err
	}
	defer f.close()
	stalled := make([]*msgConn, k)
	defer func() {
		for _, c := range stalled {
			if c != nil {
				c.Abort()
			}
		}
	}()
	// Stalled clients attach to every session (a dashboard that froze),
	// then never read again; that and a tiny receive buffer make their
	// backlog reach the daemon's ceilings within the warm-up.
	err = parallel(ctx, k, 32, func(i int) error {
		c, err := dialRetry(ctx, s, connOpts{readBuf: 4096, rcvBuf: 4096})
		if err != nil {
			return fmt.Errorf("connect: %v", err)
		}
		stalled[i] = c
		// The role's default onSlow: a client's is catchup, which costs a
		// stalled reader a cursor.
		if _, err := call(c, 1, "bridge/hello", map[string]any{}); err != nil {
			return err
		}
		for j, id := range f.ids {
			if _, err := call(c, int64(2+j), "bridge/attach", map[string]any{"sessionId": id}); err != nil {
				return err
			}
		}
		joined.Add(1)
		return nil
	})
	if err != nil {
		return Measurement{}, err
	}
	stop := context.AfterFunc(ctx, f.close)
	defer stop()
	before, err := rssKB(d.pid)
	if err != nil && d.pid != 0 {
		return Measurement{}, fmt.Errorf("daemon RSS: %v", err)
	}
	gcNow()
	r.prog.set(label, func() string {
		var n int64
		for _, fc := range f.clients {
			n += fc.recv.Load()
		}
		return fmt.Sprintf("%d delivered", n)
	})
	st, err := f.stream(ctx, o.Warmup, o.Duration, drainTime)
	if err != nil {
		return Measurement{}, err
	}
	after, _ := rssKB(d.pid)
	if err := d.alive(); err != nil {
		return Measurement{}, err
	}
	m := Measurement{Scenario: "stall", Transport: transport, Case: kase, System: sysBridge, Conns: len(f.clients) + k,
		Seconds: st.seconds, Count: st.delivered, Rate: float64(st.delivered) / st.seconds, Latency: st.lat,
		Delivered: st.delivered, Dropped: st.dropped, Missing: st.missing, RSSBeforeKB: before, RSSAfterKB: after}
	m.Note = fmt.Sprintf("%d fast clients over %d sessions, a %d-byte chunk every %v", len(f.clients), o.StallSessions, o.StallChunkSize, pace)
	m.ServerDrops = int64(st.closed)
	if !st.drained {
		m.Note += fmt.Sprintf("; the streams had not drained %v after they were stopped (the agent outpaced delivery), so drops are not accounted", drainTime)
	}
	if st.dropped > 0 || st.missing > 0 {
		m.Note += fmt.Sprintf("; fast clients lost %d chunks to degrade and miss %d", st.dropped, st.missing)
	}
	if st.closed > 0 {
		m.Note += fmt.Sprintf("; the server disconnected %d fast clients (%v)", st.closed, st.closeErr)
	}
	if record {
		r.res.Runs = append(r.res.Runs, m)
	}
	return m, nil
}
