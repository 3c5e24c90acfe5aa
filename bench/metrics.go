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

// waitBehind polls /metrics until at least k connections are fed from the
// log and least has passed, or bound passes. It polls every 100 ms in
// every run, k = 0 included: a scrape's garbage grows the daemon's heap,
// and the baseline must pay for as many as the stalled runs. It says what
// it saw, for the run's note; it fails only when ctx ends.
func (d *daemon) waitBehind(ctx context.Context, k int, least, bound time.Duration) (string, error) {
	start := time.Now()
	var (
		n     float64
		err   error
		since time.Duration // when the k were first seen behind
	)
	for {
		n, err = d.metric(ctx, behindGauge)
		if err == nil && n >= float64(k) && since == 0 {
			since = time.Since(start)
		}
		if since > 0 && time.Since(start) >= least {
			break
		}
		if time.Since(start) >= bound {
			break
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return "", err
		}
	}
	switch {
	case since > 0 && k == 0:
		return "", nil
	case since > 0:
		return fmt.Sprintf("the %d stalled clients were behind %v after the stream started", k, since.Round(time.Millisecond)), nil
	case err != nil:
		return fmt.Sprintf("could not tell when the stalled clients fell behind (%v): the warm-up began %v after the stream started", err, bound), nil
	}
	return fmt.Sprintf("only %.0f of %d stalled clients were behind %v after the stream started; measured anyway", n, k, bound), nil
}
