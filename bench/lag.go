package bench

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// lagFlood is the lag case's flood: as many events as the default
// --replay-memory is sized to hold in one session.
const lagFlood = 200000

// lagResult is one pass of the lag case.
type lagResult struct {
	events  int64         // events received, each seq exactly the next
	took    time.Duration // from the prompt to the last event
	peakKB  int64         // the daemon's peak RSS
	startKB int64
	err     error // an inconsistency or a disconnect
}

// stallLag is the stall scenario's lag case: one client (onSlow left to its
// role's default, catchup) reading at half the agent's speed through a
// 200,000-event flood of ~200-byte events. It must get every event, in
// order, without a disconnect, the daemon's RSS bounded by the log budget.
// The agent's speed is measured first by the same reader at full speed.
func (r *runner) stallLag(ctx context.Context, transport string) error {
	full, err := r.lagRun(ctx, transport, 0)
	if err != nil {
		return fmt.Errorf("lag at full speed: %v", err)
	}
	rate := float64(full.events) / full.took.Seconds()
	half, err := r.lagRun(ctx, transport, rate/2)
	if err != nil {
		return fmt.Errorf("lag at half speed: %v", err)
	}
	kase := fmt.Sprintf("lag: 1 client at half speed, %d events", lagFlood)
	r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: kase, Metric: "agent rate", Unit: "msgs/s", Better: "higher", Value: rate}, nil, nil)
	r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: kase, Metric: "lag read time", Unit: "s", Better: "lower", Value: half.took.Seconds()}, nil, nil)
	r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: kase, Metric: "events in order", Unit: "events", Better: "higher", Value: float64(half.events),
		Target: &Target{Text: fmt.Sprintf("= %d, no disconnect", lagFlood), Met: half.events == lagFlood && half.err == nil}}, nil, nil)
	growth := float64(half.peakKB-half.startKB) / 1024
	const budgetMB = 64 // --replay-memory's default
	r.addFigure(Figure{Scenario: "stall", Transport: transport, Case: kase, Metric: "lag rss growth", Unit: "MB", Better: "lower", Value: growth,
		Target: &Target{Text: fmt.Sprintf("≤ 2 × %d MB (the log budget)", budgetMB), Met: growth <= 2*budgetMB}}, nil, nil)
	if half.err != nil {
		return half.err
	}
	return nil
}

// lagRun streams lagFlood events to one client reading at most rate
// events a second (0: as fast as it can) on a fresh daemon.
func (r *runner) lagRun(ctx context.Context, transport string, rate float64) (lagResult, error) {
	agent := []string{r.bin, "demo-agent", "--chunks", strconv.Itoa(lagFlood), "--chunk-size", "100", "--pace", "0",
		"--permission=false", "--tool-calls", "0"}
	d, err := r.startDaemon(ctx, daemonSpec{agent: agent})
	if err != nil {
		return lagResult{}, err
	}
	defer d.stop()
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	c, err := dialRetry(ctx, d.bridge(transport), connOpts{})
	if err != nil {
		return lagResult{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, c.Abort)
	defer stop()
	if _, err := call(c, 1, "bridge/hello", map[string]any{"envelope": true}); err != nil {
		return lagResult{}, err
	}
	m, err := call(c, 2, "session/new", map[string]any{"cwd": "/", "mcpServers": []any{}})
	if err != nil {
		return lagResult{}, err
	}
	sid := jsonrpc.ResultSessionID(m)
	if sid == nil {
		return lagResult{}, fmt.Errorf("session/new: no sessionId in %s", m)
	}
	res := lagResult{}
	res.startKB, _ = rssKB(d.pid)
	var peak atomic.Int64
	peak.Store(res.startKB)
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if kb, err := rssKB(d.pid); err == nil && kb > peak.Load() {
					peak.Store(kb)
				}
			}
		}
	}()
	if err := c.Send(jsonrpc.AppendRequest(nil, []byte(strconv.Itoa(promptID)), "session/prompt",
		map[string]any{"sessionId": string(sid), "prompt": []any{map[string]string{"type": "text", "text": "stream"}}})); err != nil {
		return lagResult{}, err
	}
	start := time.Now()
	seqKey := []byte(`"seq":`)
	var next uint64 = 1
	for res.events < lagFlood {
		msg, err := c.Next()
		if err != nil {
			res.err = fmt.Errorf("disconnected after %d events: %v", res.events, err)
			break
		}
		if !bytes.Contains(msg[:min(len(msg), 64)], []byte(`"bridge/event"`)) {
			if bytes.Contains(msg, []byte(`"bridge/gap"`)) {
				res.err = fmt.Errorf("a gap after %d events: %s", res.events, msg)
				break
			}
			continue
		}
		i := bytes.Index(msg, seqKey)
		seq, ok := leadingDigits(msg[i+len(seqKey):])
		if i < 0 || !ok || seq != next {
			res.err = fmt.Errorf("event %d: seq %d, want %d", res.events+1, seq, next)
			break
		}
		next++
		res.events++
		if rate > 0 {
			if ahead := time.Duration(float64(res.events)/rate*float64(time.Second)) - time.Since(start); ahead > time.Millisecond {
				time.Sleep(ahead)
			}
		}
	}
	res.took = time.Since(start)
	res.peakKB = peak.Load()
	if err := d.alive(); err != nil {
		return res, err
	}
	return res, res.err
}

// leadingDigits parses the decimal number b starts with.
func leadingDigits(b []byte) (uint64, bool) {
	var n uint64
	i := 0
	for ; i < len(b) && i < 19 && b[i] >= '0' && b[i] <= '9'; i++ {
		n = n*10 + uint64(b[i]-'0')
	}
	return n, i > 0
}
