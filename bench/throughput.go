package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// throughput measures pipelined requests answered per second on one
// connection and on --conns connections.
func (r *runner) throughput(ctx context.Context) error {
	for _, t := range r.requestTransports() {
		if err := r.throughputOver(ctx, t); err != nil {
			return fmt.Errorf("%s: %v", t, err)
		}
	}
	return nil
}

func (r *runner) throughputOver(ctx context.Context, transport string) error {
	o := &r.o
	d, err := r.startDaemon(ctx, daemonSpec{agent: r.agentArgv()})
	if err != nil {
		return err
	}
	defer d.stop()
	bs, err := r.startBaselines(ctx, d, transport, false)
	if err != nil {
		return err
	}
	defer bs.stop()
	bridge, baselines, order := d.bridge(transport), bs.systems, bs.order
	for _, conns := range []int{1, o.Conns} {
		kase := fmt.Sprintf("%d conn", conns)
		if conns > 1 {
			kase += "s"
		}
		rs := newRounds()
		for round := range r.rounds(true) {
			// The bridge first in even rounds, last in odd ones (see rtt).
			systems := append([]system{bridge}, baselines...)
			if round%2 == 1 {
				slices.Reverse(systems)
			}
			for _, s := range systems {
				window := o.Window
				switch {
				case s.name == sysDirect && conns > 1:
					// One agent process per connection would parallelise
					// the agent itself; uds-echo is the many-connection floor.
					continue
				case s.name == sysWebsocketd:
					window = min(window, o.WebsocketdWindow)
				}
				run, err := r.measureThroughput(ctx, s, transport, kase, conns, window)
				if err != nil {
					if s.name == sysBridge {
						return err
					}
					r.skip(fmt.Sprintf("throughput %s %s %s baseline failed: %v", transport, kase, s.name, err))
					continue
				}
				if s.name == sysWebsocketd && window < o.Window {
					run.Note = fmt.Sprintf("window capped at %d in flight (websocketd deadlocks past ~128 KiB)", window)
				}
				run.Round = round + 1
				r.res.Runs = append(r.res.Runs, run)
				rs.add(round, s.name, run.Rate)
				if err := d.alive(); err != nil {
					return err
				}
			}
		}
		r.addRounds(Figure{Scenario: "throughput", Transport: transport, Case: kase, Metric: "answered", Unit: "msgs/s", Better: "higher"}, rs, order, throughputTargets(transport, conns)...)
	}
	return nil
}

// throughputTargets: issue 12 wants one pipelined Unix connection at half
// the direct path at least, and 64 WebSocket connections at twice the
// hand-written gws forwarder (stretch: a gws echo with no agent at all);
// issue 6's 20× websocketd stands.
func throughputTargets(transport string, conns int) []ratioTarget {
	switch {
	case transport == "unix" && conns == 1:
		return []ratioTarget{{system: sysDirect, limit: 0.5}}
	case transport == "ws" && conns > 1:
		return []ratioTarget{{system: sysForwarder, limit: 2}, {system: sysGWS, limit: 1}, {system: sysWebsocketd, limit: 20}}
	case transport == "ws":
		return []ratioTarget{{system: sysWebsocketd, limit: 20}}
	}
	return nil
}

// tpConn is one pipelining connection: a writer keeps up to window
// requests in flight, a reader counts the answers.
type tpConn struct {
	c          *msgConn
	sent, recv atomic.Int64
	wake       chan struct{} // the reader freed half the window
	err        error         // the reader's error; read after it is done
	done       chan struct{}
}

// measureThroughput keeps window requests in flight on each of conns
// connections and counts answers during the measured window; then it
// stops sending and checks every request was answered.
func (r *runner) measureThroughput(ctx context.Context, s system, transport, kase string, conns, window int) (Measurement, error) {
	o := &r.o
	ctx, cancel := r.runCtx(ctx)
	defer cancel()
	cs := make([]*tpConn, conns)
	defer func() {
		for _, tc := range cs {
			if tc != nil {
				tc.c.Close()
			}
		}
	}()
	for i := range cs {
		c, err := s.dial(ctx, connOpts{})
		if err != nil {
			return Measurement{}, fmt.Errorf("connect to %s: %v", s.name, err)
		}
		cs[i] = &tpConn{c: c, wake: make(chan struct{}, 1), done: make(chan struct{})}
	}
	stop := context.AfterFunc(ctx, func() {
		for _, tc := range cs {
			tc.c.Close()
		}
	})
	defer stop()
	gcNow()
	stopSend := make(chan struct{})
	var writers sync.WaitGroup
	writeErrs := make([]error, conns)
	for i, tc := range cs {
		go func() {
			defer close(tc.done)
			for {
				_, err := tc.c.Next()
				if err != nil {
					tc.err = err
					return
				}
				n := tc.recv.Add(1)
				if tc.sent.Load()-n <= int64(window/2) {
					select {
					case tc.wake <- struct{}{}:
					default:
					}
				}
			}
		}()
		writers.Add(1)
		go func() {
			defer writers.Done()
			q := request{size: o.Size}
			id := int64(0)
			for {
				select {
				case <-stopSend:
					return
				default:
				}
				free := int64(window) - (tc.sent.Load() - tc.recv.Load())
				if free <= 0 {
					select {
					case <-tc.wake:
					case <-stopSend:
						return
					}
					continue
				}
				n := min(free, 64)
				for range n {
					id++
					tc.c.Queue(q.build(id))
				}
				tc.sent.Add(n)
				if err := tc.c.Flush(); err != nil {
					writeErrs[i] = err
					return
				}
			}
		}()
	}
	total := func() (sent, recv int64) {
		for _, tc := range cs {
			recv += tc.recv.Load()
			sent += tc.sent.Load()
		}
		return
	}
	label := fmt.Sprintf("throughput %s %s %s", transport, kase, s.name)
	r.prog.set(label, func() string { _, n := total(); return fmt.Sprintf("%d answers", n) })
	if err := sleepCtx(ctx, o.Warmup); err != nil {
		return Measurement{}, err
	}
	_, r0 := total()
	t0 := time.Now()
	if err := sleepCtx(ctx, o.Duration); err != nil {
		return Measurement{}, err
	}
	_, r1 := total()
	elapsed := time.Since(t0)
	close(stopSend)
	// A writer blocked on a server that stopped reading gives up in time.
	for _, tc := range cs {
		_ = tc.c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	}
	writers.Wait()
	for _, err := range writeErrs {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return Measurement{}, fmt.Errorf("%s stopped reading: a write was blocked for 5s with %d requests in flight", s.name, window)
		}
		if err != nil {
			return Measurement{}, fmt.Errorf("%s: send: %v", s.name, err)
		}
	}
	// Every request must be answered; a server that wedges under
	// pipelining (websocketd does past ~128 KiB) fails here.
	drain, cancelDrain := context.WithTimeout(ctx, 5*time.Second)
	defer cancelDrain()
	for _, tc := range cs {
		for tc.recv.Load() < tc.sent.Load() {
			select {
			case <-tc.done:
			case <-tc.wake:
				continue
			case <-drain.Done():
			}
			break
		}
	}
	sent, recv := total()
	if recv < sent {
		for _, tc := range cs {
			select {
			case <-tc.done:
				if tc.err != nil && !isClosedErr(tc.err) {
					return Measurement{}, fmt.Errorf("%s: %v", s.name, tc.err)
				}
			default:
			}
		}
		return Measurement{}, fmt.Errorf("%s stopped answering: %d of %d requests unanswered %v after the last was sent", s.name, sent-recv, sent, 5*time.Second)
	}
	run := Measurement{Scenario: "throughput", Transport: transport, Case: kase, System: s.name, Conns: conns,
		Seconds: elapsed.Seconds(), Count: r1 - r0, Rate: float64(r1-r0) / elapsed.Seconds()}
	if run.Count <= 0 {
		return Measurement{}, fmt.Errorf("%s: no answers in the measured window", s.name)
	}
	return run, nil
}

// sleepCtx waits d unless ctx ends first. The measured window of a
// throughput run is wall time, so waiting is the measurement.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return errors.Join(errors.New("run timed out"), context.Cause(ctx))
	}
}
