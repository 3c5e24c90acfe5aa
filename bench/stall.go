package bench

import (
	"context"
	"fmt"
	"math"
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
		var err error
		if pace, err = r.stallCalibrate(ctx, transport); err != nil {
			return err
		}
	}
	// --repeat rounds, each every count in turn on fresh daemons: a
	// figure is the median of its rounds and a ratio the median of the
	// rounds' ratios, each round's runs paired (drift on a shared machine
	// moves a round's runs together).
	rounds := max(o.Repeat, 1)
	runs := make([][]stallResult, rounds)
	for round := range rounds {
		for _, k := range o.StallCounts {
			res, err := r.stallRun(ctx, transport, k, pace, true)
			if err != nil {
				return fmt.Errorf("%d stalled: %v", k, err)
			}
			if rounds > 1 {
				r.res.Runs[len(r.res.Runs)-1].Round = round + 1
			}
			runs[round] = append(runs[round], res)
		}
	}
	baseName := stallCase(o.StallCounts[0])
	growthMB := func(m Measurement) float64 { return float64(m.RSSAfterKB-m.RSSBeforeKB) / 1024 }
	for i := 1; i < len(o.StallCounts); i++ {
		kase := stallCase(o.StallCounts[i])
		k := o.StallCounts[i] - o.StallCounts[0]
		p50, p99 := newRounds(), newRounds()
		var growth, baseGrowth, per []float64
		for round, rr := range runs {
			m, base := rr[i].m, rr[0].m
			p50.add(round, sysBridge, m.Latency.P50)
			p50.add(round, baseName, base.Latency.P50)
			p99.add(round, sysBridge, m.Latency.P99)
			p99.add(round, baseName, base.Latency.P99)
			growth = append(growth, growthMB(m))
			baseGrowth = append(baseGrowth, growthMB(base))
			if v, ok := perStalledKB(k, growthMB(m), growthMB(base)); ok {
				per = append(per, v)
			}
		}
		order := []string{baseName}
		r.addRounds(Figure{Scenario: "stall", Transport: transport, Case: kase, Metric: "p50", Unit: "µs", Better: "lower"}, p50, order)
		r.addRounds(Figure{Scenario: "stall", Transport: transport, Case: kase, Metric: "p99", Unit: "µs", Better: "lower"}, p99, order,
			ratioTarget{system: baseName, atMost: true, limit: 1.2})
		r.stallGrowth(transport, kase, k, median(growth), median(baseGrowth), baseName)
		if len(per) > 0 {
			v := median(per)
			r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: kase, Metric: "rss per stalled client", Unit: "KB", Better: "lower", Value: v,
				Target: &Target{Text: "≤ 4 KB beyond its idle cost", Met: v <= 4}}, nil, nil)
		}
	}
	if len(o.StallCounts) == 1 {
		r.skip("stall: only one --stall-counts value, so no isolation ratio")
	}
	if r.external == nil {
		return r.stallLag(ctx, transport)
	}
	r.skip("stall: the lag case needs a daemon bench starts (its agent floods a fixed count)")
	return nil
}

// minPerStalled is the fewest stalled clients the per-client RSS figure
// is given for: the daemon's RSS moves by pages and by the heap's growth
// steps (hundreds of KB), so growth divided by one client says nothing.
const minPerStalled = 1000

// perStalledKB is what one stalled client costs beyond its idle
// connection: the run's RSS growth with k more stalled clients than the
// baseline, less the baseline's growth (the stream's own cost), per
// client. Each growth is read from just before the stream starts (every
// client connected and attached, idle) to the end of the measured window
// (the stalled clients behind, the stream still running), both runs on
// fresh daemons. ok is false when k is too few to measure.
func perStalledKB(k int, growthMB, baseGrowthMB float64) (float64, bool) {
	if k < minPerStalled {
		return 0, false
	}
	return (growthMB - baseGrowthMB) * 1024 / float64(k), true
}

// stallProbe is one paced run of the calibration: the fleet's deliveries
// a second the agent sent (each chunk stamped in the measured window,
// times its recipients) and those received in the window.
type stallProbe struct {
	rate      float64 // asked for
	offered   float64 // sent, as the stamps say
	delivered float64 // received
	kept      bool    // every stream drained, nothing degraded or missing
}

// sustained reports whether the fleet took the stream as the agent sent
// it: everything arrived (kept) and the window received what the window
// sent, within 5% (a backlog that grows through the window falls short).
// It judges against what the agent sent, not what it was asked to send.
func (p stallProbe) sustained() bool { return p.kept && p.offered > 0 && p.delivered >= 0.95*p.offered }

// maxProbes bounds the calibration's paced runs.
const maxProbes = 5

// calibrate finds the paced fan-out capacity: the highest rate the fleet
// takes in full (stallProbe.sustained) as the agent sent it. burst (the
// capacity at full speed, where one write carries many chunks) bounds it
// from above. The first probe asks for half of burst; one that falls
// short is followed by 80% of what it delivered (the most the fleet took
// under that load); once one rate is sustained and one is not, the next
// asks for their geometric mean, until the two are within 25% or
// maxProbes ran. It returns the highest sustained rate sent.
func calibrate(burst float64, probe func(rate float64) (stallProbe, error)) (float64, []stallProbe, error) {
	if burst <= 0 {
		return 0, nil, fmt.Errorf("nothing delivered at full speed")
	}
	var (
		probes []stallProbe
		lo     float64 // the highest sustained rate sent
		hi     = burst // the lowest rate asked for that was not sustained
	)
	rate := burst / 2
	for len(probes) < maxProbes {
		p, err := probe(rate)
		if err != nil {
			return 0, probes, err
		}
		p.rate = rate
		probes = append(probes, p)
		if p.sustained() {
			lo = max(lo, p.offered)
		} else {
			hi = min(hi, rate)
		}
		switch {
		case lo > 0 && hi <= 1.25*lo:
			return lo, probes, nil
		case lo > 0:
			rate = math.Sqrt(lo * hi)
		default:
			rate = max(0.8*p.delivered, rate/4)
		}
	}
	if lo == 0 {
		return 0, probes, fmt.Errorf("no paced rate was delivered in full (%d probes, the last at %.0f/s)", len(probes), probes[len(probes)-1].rate)
	}
	return lo, probes, nil
}

// stallCalibrate measures the fan-out capacity of a paced stream on this
// machine and returns the agent's pace for half of it. At full speed one
// write carries many chunks, a batching a paced stream never gets, so
// half the full-speed figure saturates a paced fleet: that figure only
// starts the search (calibrate).
func (r *runner) stallCalibrate(ctx context.Context, transport string) (time.Duration, error) {
	full, err := r.stallRun(ctx, transport, 0, 0, false)
	if err != nil {
		return 0, fmt.Errorf("measuring the fan-out capacity at full speed: %v", err)
	}
	conns := float64(full.m.Conns)
	// Every session's chunk reaches its clients: the fleet takes conns
	// deliveries per round of chunks, one round every pace.
	paceFor := func(rate float64) time.Duration {
		return max(time.Duration(float64(time.Second)*conns/rate), 10*time.Microsecond)
	}
	r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: "no stalled, agent at full speed", Metric: "fan-out capacity", Unit: "msgs/s", Better: "higher", Value: full.m.Rate}, nil, nil)
	capacity, probes, err := calibrate(full.m.Rate, func(rate float64) (stallProbe, error) {
		res, err := r.stallRun(ctx, transport, 0, paceFor(rate), false)
		if err != nil {
			return stallProbe{}, err
		}
		st := res.st
		return stallProbe{offered: float64(st.offered) / st.seconds, delivered: float64(st.delivered) / st.seconds,
			kept: st.drained && st.dropped == 0 && st.missing == 0 && st.closed == 0}, nil
	})
	for i, p := range probes {
		verdict := "delivered in full"
		if !p.sustained() {
			verdict = "fell short"
		}
		r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: fmt.Sprintf("calibration probe %d: paced, %s sent, %s", i+1, formatValue(p.offered, "msgs/s"), verdict),
			Metric: "delivered", Unit: "msgs/s", Better: "higher", Value: p.delivered}, nil, nil)
	}
	if err != nil {
		return 0, fmt.Errorf("measuring the paced fan-out capacity: %v", err)
	}
	pace := paceFor(capacity / 2)
	r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: "no stalled, paced: the highest rate delivered in full", Metric: "paced capacity", Unit: "msgs/s", Better: "higher", Value: capacity}, nil, nil)
	r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: fmt.Sprintf("half the paced capacity: a chunk every %v per session", pace.Round(time.Microsecond)),
		Metric: "fixed rate", Unit: "msgs/s", Better: "higher", Value: conns * float64(time.Second) / float64(pace)}, nil, nil)
	return pace, nil
}

// stallGrowth adds the RSS growth figure of k stalled clients, v MB (the
// median of the rounds), against the baseline's bv, with the bound their
// ceilings allow.
func (r *runner) stallGrowth(transport, kase string, k int, v, bv float64, baseName string) {
	f := Figure{Scenario: "stall", Transport: transport, Case: kase, Metric: "rss growth", Unit: "MB", Better: "lower", Value: v}
	// Each stalled client may hold at most its queue ceilings; with
	// GOGC=100 the heap may grow to twice what is live.
	if bound := r.stallBoundMB(k); bound > 0 {
		f.Target = &Target{Text: fmt.Sprintf("≤ %.1f MB (2 × stalled × ceilings)", bv+2*bound), Met: v <= bv+2*bound}
	}
	r.addFigure(f, map[string]float64{baseName: bv}, []string{baseName})
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

// stallResult is one stallRun: its measurement and the fleet's counts.
type stallResult struct {
	m  Measurement
	st fleetStats
}

// settleBound bounds how long stallRun waits for the stalled clients to
// fall behind before it starts the warm-up anyway (and says so).
// settleMin is how long every recorded run streams before its warm-up,
// stalled clients or not, so that the runs compare at the same stream
// age: the session logs, and the heap they make the daemon keep, grow
// with it, and the RSS figures would otherwise charge that growth to the
// stalled clients.
const (
	settleBound = 15 * time.Second
	settleMin   = time.Second
)

// stallRun streams at pace (0: as fast as the agent can) to the fast
// clients beside k stalled ones; record adds the run to the results.
// The measured window starts a warm-up after every stalled client has
// fallen behind (the daemon's agentbridge_connections_catching_up reaches
// k; a recorded run also streams settleMin first): until its socket
// buffer fills, a client that stopped reading is written to like a
// reader, which is not what the figures are about. The daemon's RSS is
// read before the stream (every client connected and attached, idle) and
// as the window ends.
func (r *runner) stallRun(ctx context.Context, transport string, k int, pace time.Duration, record bool) (stallResult, error) {
	o := &r.o
	spec := daemonSpec{agent: r.streamAgent(o.StallChunkSize, pace)}
	if o.StallQueueBytes > 0 {
		spec.serve = []string{"--queue-bytes", strconv.Itoa(o.StallQueueBytes)}
	}
	d, err := r.startDaemon(ctx, spec)
	if err != nil {
		return stallResult{}, err
	}
	defer d.stop()
	ctx, cancel := context.WithTimeout(ctx, settleBound+settleMin+o.Warmup+o.Duration+o.Timeout+drainTime)
	defer cancel()
	s := d.bridge(transport)
	kase := stallCase(k)
	label := fmt.Sprintf("stall %s %s", transport, kase)
	var joined atomic.Int64
	r.prog.set(label+" connecting", func() string { return fmt.Sprintf("%d clients", joined.Load()) })
	perStream := (o.StallFast + o.StallSessions - 1) / o.StallSessions
	f, err := buildFleet(ctx, s, bridgeProto{s: s}, o.StallSessions, perStream, &joined)
	if err != nil {
		return stallResult{}, err
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
	// backlog reach the daemon's ceilings soon after the stream starts.
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
		return stallResult{}, err
	}
	stop := context.AfterFunc(ctx, f.close)
	defer stop()
	if k > 0 || record {
		// One scrape of /metrics before the idle reading, in every run:
		// the first one sets up the daemon's HTTP path and its registry's
		// output (a few MB of RSS, once), which the stalled runs' waits
		// on the gauge would otherwise charge to the stalled clients.
		_, _ = d.metric(ctx, behindGauge)
	}
	before, err := rssKB(d.pid)
	if err != nil && d.pid != 0 {
		return stallResult{}, fmt.Errorf("daemon RSS: %v", err)
	}
	var (
		after   int64
		settled string
	)
	if k > 0 || record {
		// Every recorded run waits the same way, stalled clients or not
		// (see waitBehind), at least settleMin.
		least := time.Duration(0)
		if record {
			least = settleMin
		}
		f.settle = func(ctx context.Context) error {
			r.prog.set(label+" waiting for the stalled clients to fall behind", func() string { return fmt.Sprintf("%d clients", joined.Load()) })
			var err error
			settled, err = d.waitBehind(ctx, k, least, settleBound)
			return err
		}
	}
	f.atEnd = func() { after, _ = rssKB(d.pid) }
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
		return stallResult{}, err
	}
	if err := d.alive(); err != nil {
		return stallResult{}, err
	}
	m := Measurement{Scenario: "stall", Transport: transport, Case: kase, System: sysBridge, Conns: len(f.clients) + k,
		Seconds: st.seconds, Count: st.delivered, Rate: float64(st.delivered) / st.seconds, Latency: st.lat,
		Delivered: st.delivered, Dropped: st.dropped, Missing: st.missing, RSSBeforeKB: before, RSSAfterKB: after}
	m.Note = fmt.Sprintf("%d fast clients over %d sessions, a %d-byte chunk every %v; the agent sent %.0f deliveries/s in the window", len(f.clients), o.StallSessions, o.StallChunkSize, pace,
		float64(st.offered)/st.seconds)
	if settled != "" {
		m.Note += "; " + settled
	}
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
	return stallResult{m: m, st: st}, nil
}
