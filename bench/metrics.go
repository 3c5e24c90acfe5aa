package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// metric reads one unlabelled sample from the daemon's GET /metrics (on
// its HTTP listener, with the bench token).
func (d *daemon) metric(ctx context.Context, name string) (float64, error) {
	if d.ws.addr == "" {
		return 0, fmt.Errorf("the daemon has no HTTP listener to read /metrics from")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.ws.addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	if d.ws.token != "" {
		req.Header.Set("Authorization", "Bearer "+d.ws.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return sampleOf(bufio.NewScanner(resp.Body), name)
}

// sampleOf finds the sample of the unlabelled metric name in a Prometheus
// text exposition.
func sampleOf(sc *bufio.Scanner, name string) (float64, error) {
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: %v", name, err)
		}
		return v, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no metric %s in /metrics (a daemon older than this bench?)", name)
}

// behindGauge is the daemon's count of connections fed from the session
// log rather than live delivery: a stalled client counts once its queue
// and socket buffer are full and it refused an event.
const behindGauge = "agentbridge_connections_catching_up"

// waitBehind waits, polling /metrics, until at least k connections are
// fed from the log, or bound passes. It says what it saw, for the run's
// note; it fails only when ctx ends.
func (d *daemon) waitBehind(ctx context.Context, k int, bound time.Duration) (string, error) {
	start := time.Now()
	deadline := start.Add(bound)
	var (
		n   float64
		err error
	)
	for {
		n, err = d.metric(ctx, behindGauge)
		if err == nil && n >= float64(k) {
			return fmt.Sprintf("the %d stalled clients were behind %v after the stream started", k, time.Since(start).Round(time.Millisecond)), nil
		}
		if time.Now().After(deadline) {
			break
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return "", err
		}
	}
	if err != nil {
		return fmt.Sprintf("could not tell when the stalled clients fell behind (%v): the warm-up began %v after the stream started", err, bound), nil
	}
	return fmt.Sprintf("only %.0f of %d stalled clients were behind %v after the stream started; measured anyway", n, k, bound), nil
}
