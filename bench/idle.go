package bench

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"
)

// settleTime lets a server finish what a burst of connections started
// (goroutines parking, buffers released) before its RSS is read.
const settleTime = 500 * time.Millisecond

// idle holds N connections that each did one round trip and reads the
// server's RSS growth per connection.
func (r *runner) idle(ctx context.Context) error {
	o := &r.o
	// Bench's own connections, the daemon's (it inherits the limit) and
	// some slack for pipes and listeners.
	if err := raiseNoFile(slices.Max(o.IdleConns) + 256); err != nil {
		return err
	}
	for _, t := range o.Transports {
		for _, n := range o.IdleConns {
			if err := r.idleOver(ctx, t, n); err != nil {
				return fmt.Errorf("%s %d conns: %v", t, n, err)
			}
		}
	}
	return nil
}

// idleTargetKB is issue 12's idle goal per connection.
var idleTargetKB = map[string]float64{"unix": 1.5, "ws": 2}

func (r *runner) idleOver(ctx context.Context, transport string, n int) error {
	o := &r.o
	d, err := r.startDaemon(ctx, daemonSpec{agent: r.agentArgv()})
	if err != nil {
		return err
	}
	br, err := r.measureIdle(ctx, d.bridge(transport), transport, n)
	d.stop()
	if err != nil {
		return err
	}
	r.res.Runs = append(r.res.Runs, br)
	base := map[string]float64{}
	var order []string
	if o.Baselines {
		h, err := r.startHelper(ctx, false)
		if err != nil {
			return err
		}
		s := h.echo(transport)
		bl, err := r.measureIdle(ctx, s, transport, n)
		h.p.stop()
		if err != nil {
			r.skip(fmt.Sprintf("idle %s %s baseline failed: %v", transport, s.name, err))
		} else {
			r.res.Runs = append(r.res.Runs, bl)
			base[s.name] = bl.PerConnKB
			order = append(order, s.name)
		}
		if transport == "ws" {
			r.skip("idle: websocketd not measured (one process per connection, ~150 KB PSS each by ANCHORS.md)")
		}
	}
	f := Figure{Scenario: "idle", Transport: transport, Case: fmt.Sprintf("%d conns", n), Metric: "RSS per conn", Unit: "KB", Better: "lower", Value: br.PerConnKB}
	limit := idleTargetKB[transport]
	f.Target = &Target{Text: fmt.Sprintf("≤ %g KB", limit), Met: br.PerConnKB <= limit}
	var targets []ratioTarget
	if transport == "ws" {
		targets = []ratioTarget{{system: sysGWS, atMost: true, limit: 0.2}}
	}
	r.addFigure(f, base, order, targets...)
	return nil
}

// measureIdle warms s with one round trip, then opens n connections to
// it, each doing one round trip (so the server has accepted it and set it
// up), and reads the server's RSS before and after those n.
func (r *runner) measureIdle(ctx context.Context, s system, transport string, n int) (Measurement, error) {
	if s.pid == 0 {
		return Measurement{}, fmt.Errorf("%s: its pid is unknown, so its RSS cannot be read (give --uds so bench can ask the socket)", s.name)
	}
	ctx, cancel := r.runCtx(ctx)
	defer cancel()
	// The hello is answered by the bridge itself and echoed by the echo
	// servers: either way one message each way.
	hello := []byte(`{"jsonrpc":"2.0","id":1,"method":"bridge/hello","params":{}}`)
	// Warm the server with one round trip on a connection of its own
	// before the baseline reading: its first request sets up what every
	// later one shares (sonic's JIT-compiled codecs, ~1.8 MB in the
	// daemon), which is not a cost of the connections.
	if err := idleWarm(ctx, s, hello); err != nil {
		return Measurement{}, fmt.Errorf("%s: warm-up: %v", s.name, err)
	}
	before, err := rssKB(s.pid)
	if err != nil {
		return Measurement{}, fmt.Errorf("%s RSS: %v", s.name, err)
	}
	conns := make([]*msgConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Abort()
			}
		}
	}()
	var open atomic.Int64
	r.prog.set(fmt.Sprintf("idle %s %s", transport, s.name), func() string { return fmt.Sprintf("%d connections", open.Load()) })
	err = parallel(ctx, len(conns), 64, func(i int) error {
		c, err := dialRetry(ctx, s, connOpts{readBuf: 512})
		if err != nil {
			return fmt.Errorf("connection %d: %v", i+1, err)
		}
		conns[i] = c
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		if err := c.Send(hello); err != nil {
			return fmt.Errorf("connection %d: %v", i+1, err)
		}
		if _, err := c.Next(); err != nil {
			return fmt.Errorf("connection %d: no answer: %v", i+1, err)
		}
		open.Add(1)
		return nil
	})
	if err != nil {
		return Measurement{}, fmt.Errorf("%s: %v", s.name, err)
	}
	if err := sleepCtx(ctx, settleTime); err != nil {
		return Measurement{}, err
	}
	after, err := rssKB(s.pid)
	if err != nil {
		return Measurement{}, fmt.Errorf("%s RSS: %v", s.name, err)
	}
	m := Measurement{Scenario: "idle", Transport: transport, Case: fmt.Sprintf("%d conns", n), System: s.name, Conns: n,
		Count: int64(n), RSSBeforeKB: before, RSSAfterKB: after, PerConnKB: float64(after-before) / float64(n)}
	if m.PerConnKB <= 0 {
		// RSS can shrink if the server returned memory meanwhile; a
		// non-positive growth is not a figure.
		return Measurement{}, fmt.Errorf("%s: RSS did not grow (%d KB → %d KB)", s.name, before, after)
	}
	return m, nil
}

// idleWarm does one round trip of msg on a connection it then closes, and
// lets the server settle.
func idleWarm(ctx context.Context, s system, msg []byte) error {
	c, err := dialRetry(ctx, s, connOpts{readBuf: 512})
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	err = c.Send(msg)
	if err == nil {
		if _, err = c.Next(); err != nil {
			err = fmt.Errorf("no answer: %v", err)
		}
	}
	c.Abort()
	if err != nil {
		return err
	}
	return sleepCtx(ctx, settleTime)
}

// dialRetry dials, retrying briefly when a burst of connects overflows the
// listen backlog (a Unix socket answers EAGAIN rather than waiting).
func dialRetry(ctx context.Context, s system, o connOpts) (*msgConn, error) {
	delay := time.Millisecond
	for {
		c, err := s.dial(ctx, o)
		if err == nil || !isRetryable(err) || ctx.Err() != nil {
			return c, err
		}
		if err := sleepCtx(ctx, delay); err != nil {
			return nil, err
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}
