package bench

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// request builds the probe request: a method no agent knows of the
// bridge's (so it is forwarded), padded to the requested size.
type request struct {
	size int
	buf  []byte
}

const (
	reqHead = `{"jsonrpc":"2.0","id":`
	reqMid  = `,"method":"bench/echo","params":{"pad":"`
	reqTail = `"}}`
)

// build returns request id, exactly size bytes when size leaves room. The
// result is valid until the next call.
func (q *request) build(id int64) []byte {
	b := append(q.buf[:0], reqHead...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, reqMid...)
	for pad := q.size - len(b) - len(reqTail); pad > 0; pad-- {
		b = append(b, 'x')
	}
	b = append(b, reqTail...)
	q.buf = b
	return b
}

// responseID is the numeric id of a response (or of an echoed request), or
// -1 for anything else.
func responseID(msg []byte) int64 {
	h, err := jsonrpc.Peek(msg)
	if err != nil || h.ID == nil || h.Kind == jsonrpc.KindNotification {
		return -1
	}
	id, err := strconv.ParseInt(string(h.ID), 10, 64)
	if err != nil {
		return -1
	}
	return id
}

// rtt measures round trips with one request in flight (closed loop) and,
// with --rate, at a fixed rate (open loop); with --pin, the closed loop
// again with everything on one CPU.
func (r *runner) rtt(ctx context.Context) error {
	o := &r.o
	for _, t := range r.requestTransports() {
		if err := r.rttOver(ctx, t, false); err != nil {
			return fmt.Errorf("%s: %v", t, err)
		}
		if !o.Pin {
			continue
		}
		restore, err := pinSelf(o.CPU)
		if err != nil {
			return err
		}
		err = r.rttOver(ctx, t, true)
		restore()
		if err != nil {
			return fmt.Errorf("%s pinned: %v", t, err)
		}
	}
	return nil
}

func (r *runner) rttOver(ctx context.Context, transport string, pin bool) error {
	o := &r.o
	d, err := r.startDaemon(ctx, daemonSpec{agent: r.agentArgv(), pin: pin})
	if err != nil {
		return err
	}
	defer d.stop()
	bs, err := r.startBaselines(ctx, d, transport, pin)
	if err != nil {
		return err
	}
	defer bs.stop()
	systems := append([]system{d.bridge(transport)}, bs.systems...)
	order := bs.order
	type rttCase struct {
		name string
		rate int
	}
	cases := []rttCase{{"closed loop", 0}}
	pinNote := ""
	switch {
	case pin:
		// A fixed-rate sender sharing the one CPU would measure itself.
		cases = []rttCase{{"closed loop pinned", 0}}
		pinNote = fmt.Sprintf("daemon, agent, baselines and load generator on CPU %d", o.CPU)
	case o.Rate > 0:
		cases = append(cases, rttCase{fmt.Sprintf("open loop %d/s", o.Rate), o.Rate})
	}
	for _, c := range cases {
		// Every round measures every system, the bridge first in even
		// rounds and last in odd ones, so that drift on a shared machine
		// falls on both sides of each ratio.
		p50, p99 := newRounds(), newRounds()
		rounds := r.rounds(c.rate == 0)
		for round := range rounds {
			order := systems
			if round%2 == 1 {
				order = slices.Clone(systems)
				slices.Reverse(order)
			}
			for _, s := range order {
				run, err := r.measureRTT(ctx, s, transport, c.name, c.rate)
				if err != nil {
					if s.name == sysBridge {
						return err
					}
					r.skip(fmt.Sprintf("rtt %s %s baseline failed: %v", transport, s.name, err))
					continue
				}
				run.Note = pinNote
				run.Round = round + 1
				r.res.Runs = append(r.res.Runs, run)
				p50.add(round, s.name, run.Latency.P50)
				p99.add(round, s.name, run.Latency.P99)
				if err := d.alive(); err != nil {
					return err
				}
			}
		}
		if len(p50.bridge) == 0 {
			return fmt.Errorf("the bridge answered no request")
		}
		var targets []ratioTarget
		if c.rate == 0 {
			targets = rttTargets(transport, pin)
		}
		r.addRounds(Figure{Scenario: "rtt", Transport: transport, Case: c.name, Metric: "p50", Unit: "µs", Better: "lower"}, p50, order, targets...)
		r.addRounds(Figure{Scenario: "rtt", Transport: transport, Case: c.name, Metric: "p99", Unit: "µs", Better: "lower"}, p99, order)
	}
	return nil
}

// rttTargets are issue 12's goals on the closed-loop p50: the floor is
// 2× direct (one extra hop), and the pinned run is the one they name.
func rttTargets(transport string, pin bool) []ratioTarget {
	switch {
	case transport == "unix" && pin:
		return []ratioTarget{{system: sysDirect, atMost: true, limit: 2.5}}
	case transport == "unix":
		return []ratioTarget{{system: sysDirect, atMost: true, limit: 2.2}}
	case pin:
		return []ratioTarget{{system: sysGWS, atMost: true, limit: 2.5}}
	}
	return nil
}

// measureRTT runs one system for warm-up + duration (or --count requests).
func (r *runner) measureRTT(ctx context.Context, s system, transport, kase string, rate int) (Measurement, error) {
	o := &r.o
	ctx, cancel := r.runCtx(ctx)
	defer cancel()
	c, err := s.dial(ctx, connOpts{})
	if err != nil {
		return Measurement{}, fmt.Errorf("connect to %s: %v", s.name, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, c.Close)
	defer stop()
	gcNow()
	var done atomic.Int64
	r.prog.set(fmt.Sprintf("rtt %s %s %s", transport, s.name, kase), func() string { return fmt.Sprintf("%d requests", done.Load()) })
	h := newHist()
	start := time.Now()
	warmEnd := start.Add(o.Warmup)
	end := warmEnd.Add(o.Duration)
	q := request{size: o.Size}
	if rate == 0 {
		for id := int64(1); ; id++ {
			t0 := time.Now()
			if !t0.Before(end) || h.TotalCount() >= int64(o.Count) {
				break
			}
			if err := c.Send(q.build(id)); err != nil {
				return Measurement{}, fmt.Errorf("%s: send: %v", s.name, err)
			}
			for {
				m, err := c.Next()
				if err != nil {
					return Measurement{}, fmt.Errorf("%s: after %d round trips: %v", s.name, id-1, err)
				}
				if responseID(m) == id {
					break
				}
			}
			if t0.After(warmEnd) {
				record(h, time.Since(t0))
			}
			done.Add(1)
		}
	} else {
		if err := openLoop(ctx, c, &q, rate, start, warmEnd, end, o.Count, h, &done); err != nil {
			return Measurement{}, fmt.Errorf("%s: %v", s.name, err)
		}
	}
	run := Measurement{Scenario: "rtt", Transport: transport, Case: kase, System: s.name, Conns: 1,
		Seconds: o.Duration.Seconds(), Count: h.TotalCount(), Latency: summary(h)}
	if run.Latency == nil {
		return Measurement{}, fmt.Errorf("%s: no round trip completed after the warm-up", s.name)
	}
	run.Rate = float64(run.Count) / run.Seconds
	return run, nil
}

// openLoop sends at a fixed rate whatever the answers do, and counts each
// round trip from the request's scheduled send time, so a stall delays the
// measurement of every request scheduled during it (no coordinated
// omission).
func openLoop(ctx context.Context, c *msgConn, q *request, rate int, start, warmEnd, end time.Time, limit int, h *hdrhistogram.Histogram, done *atomic.Int64) error {
	interval := time.Second / time.Duration(rate)
	total := int(end.Sub(start) / interval)
	warmN := int(warmEnd.Sub(start) / interval)
	total = min(total, warmN+limit)
	sched := make([]atomic.Int64, total+1) // scheduled send time of id, ns since start
	var sendErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sl := newPreciseSleeper()
		defer sl.close()
		for id := 1; id <= total; id++ {
			at := time.Duration(id-1) * interval
			if ctx.Err() != nil {
				return
			}
			sl.until(start.Add(at))
			sched[id].Store(int64(at))
			if err := c.Send(q.build(int64(id))); err != nil {
				sendErr = err
				return
			}
		}
	}()
	got := 0
	var readErr error
	for got < total {
		m, err := c.Next()
		if err != nil {
			readErr = fmt.Errorf("after %d of %d answers: %v", got, total, err)
			break
		}
		id := responseID(m)
		if id < 1 || id > int64(total) {
			continue
		}
		lat := time.Since(start) - time.Duration(sched[id].Load())
		if id > int64(warmN) {
			record(h, lat)
		}
		got++
		done.Add(1)
	}
	c.Close() // unblocks the sender if it is still going
	wg.Wait()
	if readErr != nil {
		return readErr
	}
	if sendErr != nil {
		return fmt.Errorf("send: %v", sendErr)
	}
	return nil
}

// preciseSleeper sleeps with microsecond precision. Go's timers wake up to
// a millisecond late when the process is otherwise idle (the netpoller
// waits in whole milliseconds), which would add a millisecond to every
// open-loop latency; a nanosleep on a locked thread with minimal timer
// slack is late by ~10-30 µs, for every system alike. It belongs to the
// goroutine that made it, which must call close before it returns.
type preciseSleeper struct{}

func newPreciseSleeper() preciseSleeper {
	runtime.LockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	return preciseSleeper{}
}

func (preciseSleeper) until(t time.Time) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		ts := unix.NsecToTimespec(int64(d))
		if err := unix.Nanosleep(&ts, nil); err == nil {
			return
		}
	}
}

// close restores the thread's default timer slack and unlocks it. Exiting
// while locked would make the runtime destroy the thread, and children it
// once started (the daemon) die with it by their parent-death signal.
func (preciseSleeper) close() {
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0)
	runtime.UnlockOSThread()
}
