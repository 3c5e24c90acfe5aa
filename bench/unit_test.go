package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

func TestEchoAnswer(t *testing.T) {
	q := request{size: 100}
	req := q.build(42)
	if len(req) != 100 {
		t.Fatalf("request is %d bytes, want 100: %s", len(req), req)
	}
	resp := echoAnswer(nil, req)
	if len(resp) != len(req)+1 || resp[len(resp)-1] != '\n' {
		t.Errorf("answer is %d bytes, want %d plus a newline: %s", len(resp), len(req), resp)
	}
	h, err := jsonrpc.Peek(bytes.TrimSpace(resp))
	if err != nil || h.Kind != jsonrpc.KindResponse || string(h.ID) != "42" || h.IsError {
		t.Errorf("answer %s: header %+v err %v", resp, h, err)
	}
	if got := echoAnswer(nil, []byte(`{"jsonrpc":"2.0","method":"note"}`)); len(got) != 0 {
		t.Errorf("a notification was answered: %s", got)
	}
	if got := echoAnswer(nil, []byte(`{"jsonrpc":"2.0","id":1,"result":{}}`)); len(got) != 0 {
		t.Errorf("a response was answered: %s", got)
	}
	bad := echoAnswer(nil, []byte(`{"jsonrpc":`))
	if !bytes.Contains(bad, []byte(`"code":-32700`)) || !bytes.Contains(bad, []byte(`"id":null`)) {
		t.Errorf("broken JSON: %s", bad)
	}
}

// TestEchoAgentBatches: a pipelined burst is answered in order, each
// request once, and EOF ends the agent cleanly.
func TestEchoAgentBatches(t *testing.T) {
	var in bytes.Buffer
	q := request{size: 80}
	for id := int64(1); id <= 1000; id++ {
		in.Write(q.build(id))
		in.WriteByte('\n')
	}
	in.WriteString(`{"jsonrpc":"2.0","method":"ignored"}` + "\n")
	var out bytes.Buffer
	if err := RunEchoAgent(&in, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1000 {
		t.Fatalf("%d answers, want 1000", len(lines))
	}
	for i, l := range lines {
		if id := responseID([]byte(l)); id != int64(i+1) {
			t.Fatalf("answer %d has id %d", i+1, id)
		}
	}
}

func TestStampAndSeq(t *testing.T) {
	chunk := appendChunk(nil, "s1", "abc", 1234567890123)
	if got := stampOf(chunk); got != 1234567890123 {
		t.Errorf("stampOf = %d", got)
	}
	if got := stampOf([]byte(`{"jsonrpc":"2.0","method":"bridge/status","params":{}}`)); got != 0 {
		t.Errorf("stampOf without a stamp = %d", got)
	}
	var v any
	if err := json.Unmarshal(chunk, &v); err != nil {
		t.Errorf("appendChunk wrote invalid JSON: %v: %s", err, chunk)
	}
	ev := []byte(`{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":"s","seq":77,"message":{"jsonrpc":"2.0","method":"session/update","params":{"seq":5}}}}`)
	if got := eventSeq(ev); got != 77 {
		t.Errorf("eventSeq = %d, want 77", got)
	}
	if got := eventSeq(chunk); got != 0 {
		t.Errorf("eventSeq of a plain update = %d", got)
	}
}

func event(seq uint64) []byte {
	return []byte(`{"jsonrpc":"2.0","method":"bridge/event","params":{"sessionId":"s","seq":` + jsonNum(seq) + `,"message":{}}}`)
}

func jsonNum(v uint64) string { b, _ := json.Marshal(v); return string(b) }

// TestReconnectAccounting: the reconnect scenario's lost and duplicated
// counts see holes, repeats and announced gaps.
func TestReconnectAccounting(t *testing.T) {
	rc := &rclient{caught: make(chan struct{})}
	rc.target.Store(math.MaxUint64)
	rc.last.Store(10)
	for _, seq := range []uint64{11, 12, 12, 15, 14, 16} {
		rc.handle(event(seq))
	}
	rc.handle([]byte(`{"jsonrpc":"2.0","method":"bridge/gap","params":{"sessionId":"s","fromSeq":17,"toSeq":20,"reason":"x"}}`))
	rc.handle(event(21))
	if rc.dups != 2 || rc.lost != 2+4 || rc.last.Load() != 21 || rc.events != 7 {
		t.Errorf("dups %d lost %d last %d events %d; want 2, 6, 21, 7", rc.dups, rc.lost, rc.last.Load(), rc.events)
	}
	rc.target.Store(21)
	rc.checkCaught()
	select {
	case <-rc.caught:
	default:
		t.Error("a client at the final seq is not caught up")
	}
}

func TestAddFigureAndTable(t *testing.T) {
	r := &runner{res: &Result{}}
	r.addFigure(Figure{Scenario: "rtt", Transport: "unix", Case: "closed loop", Metric: "p50", Unit: "µs", Better: "lower", Value: 30},
		map[string]float64{sysDirect: 10, sysUDSEcho: 0}, []string{sysDirect, sysUDSEcho},
		ratioTarget{system: sysDirect, atMost: true, limit: 2.2})
	r.addFigure(Figure{Scenario: "throughput", Transport: "ws", Case: "1 conn", Metric: "answered", Unit: "msgs/s", Better: "higher", Value: 500e3},
		map[string]float64{sysGWS: 200e3}, []string{sysGWS}, ratioTarget{system: sysGWS, limit: 2})
	f := r.res.Figures[0]
	if len(f.Baselines) != 1 || f.Baselines[0].Ratio != 3 || f.Baselines[0].Target == nil || f.Baselines[0].Target.Met {
		t.Errorf("rtt figure: %+v (a baseline without a value must be left out; 3× misses ≤ 2.2×)", f.Baselines)
	}
	g := r.res.Figures[1].Baselines[0]
	if g.Ratio != 2.5 || !g.Target.Met {
		t.Errorf("throughput baseline %+v: 2.5× meets ≥ 2×", g)
	}
	var out bytes.Buffer
	r.res.WriteTable(&out)
	for _, want := range []string{"3.00×", "≤ 2.2× ✗", "2.50×", "≥ 2× ✓", "500.0k/s", "30.0 µs"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

// TestOutputs: history comparison, report and both chart formats from one
// synthetic result.
func TestOutputs(t *testing.T) {
	dir := t.TempDir()
	res := &Result{Started: time.Now().UTC(), Command: "agentbridge bench rtt", Machine: Machine{CPU: "cpu", Cores: 2, Commit: "abc"}}
	res.Runs = []Measurement{
		{Scenario: "rtt", Transport: "unix", Case: "closed loop", System: sysBridge, Conns: 1, Latency: &Latency{P50: 20, P99: 40}},
		{Scenario: "rtt", Transport: "unix", Case: "closed loop", System: sysDirect, Conns: 1, Latency: &Latency{P50: 10, P99: 20}},
		{Scenario: "throughput", Transport: "ws", Case: "1 conn", System: sysBridge, Conns: 1, Rate: 5e5},
		{Scenario: "throughput", Transport: "ws", Case: "1 conn", System: sysGWS, Conns: 1, Rate: 2e5},
		{Scenario: "stall", Transport: "unix", Case: "0 stalled", System: sysBridge, Conns: 10, Latency: &Latency{P50: 100, P99: 300}},
		{Scenario: "stall", Transport: "unix", Case: "1 stalled", System: sysBridge, Conns: 11, Latency: &Latency{P50: 110, P99: 320}},
	}
	r := &runner{res: res}
	r.addFigure(Figure{Scenario: "rtt", Transport: "unix", Case: "closed loop", Metric: "p50", Unit: "µs", Better: "lower", Value: 20}, map[string]float64{sysDirect: 10}, []string{sysDirect})
	hist := filepath.Join(dir, "history.json")
	prev, err := appendHistory(hist, res)
	if err != nil || prev != nil {
		t.Fatalf("first append: prev %v err %v", prev, err)
	}
	res.Figures[0].Value = 30 // 50% slower than last time, relative to direct too
	res.Figures[0].Baselines[0].Ratio = 3
	prev, err = appendHistory(hist, res)
	if err != nil || prev == nil || prev.Figures["rtt/unix/closed loop/p50"] != 20 || prev.Ratios["rtt/unix/closed loop/p50 ÷ direct"] != 2 {
		t.Fatalf("second append: prev %+v err %v", prev, err)
	}
	var entries []HistoryEntry
	b, _ := os.ReadFile(hist)
	if err := json.Unmarshal(b, &entries); err != nil || len(entries) != 2 {
		t.Fatalf("history holds %d entries (%v)", len(entries), err)
	}
	for _, ext := range []string{".svg", ".png"} {
		chart := filepath.Join(dir, "chart"+ext)
		if err := writePlot(res, chart); err != nil {
			t.Fatalf("%s: %v", ext, err)
		}
		if st, err := os.Stat(chart); err != nil || st.Size() < 1000 {
			t.Errorf("%s chart: %v %v", ext, st, err)
		}
	}
	micro := filepath.Join(dir, "micro.txt")
	os.WriteFile(micro, []byte("goos: linux\nBenchmarkX  1  2 ns/op\n"), 0o644)
	report := filepath.Join(dir, "benchmarks.md")
	if err := writeReport(report, res, prev, filepath.Join(dir, "chart.svg"), micro); err != nil {
		t.Fatal(err)
	}
	md, _ := os.ReadFile(report)
	for _, want := range []string{"ratio +50% ⚠ worse", "![", "(chart.svg)", "BenchmarkX", "agentbridge bench rtt", "| rtt | unix | closed loop | p50 | 30.0 µs | direct | 10.0 µs | 3.00× |"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if err := writePlot(&Result{}, filepath.Join(dir, "empty.svg")); err != errNothingToPlot {
		t.Errorf("plotting nothing: %v", err)
	}
}

// TestWSClientAgainstGWS checks the hand-written WebSocket client against
// an implementation nobody here wrote: the helper's gws echo server, with
// messages around the 125/126 and 65535/65536 length boundaries.
func TestWSClientAgainstGWS(t *testing.T) {
	r := &runner{o: DefaultOptions(), bin: binPath, tmp: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h, err := r.startHelper(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer h.p.stop()
	c, err := h.echo("ws").dial(ctx, connOpts{readBuf: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var sizes []int
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 200000} {
		sizes = append(sizes, n)
		c.Queue(bytes.Repeat([]byte{'a' + byte(n%26)}, n))
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, n := range sizes {
		m, err := c.Next()
		if err != nil {
			t.Fatalf("echo of %d bytes: %v", n, err)
		}
		if len(m) != n || (n > 0 && m[0] != 'a'+byte(n%26)) {
			t.Fatalf("echo of %d bytes came back as %d bytes", n, len(m))
		}
	}
}

// TestPeerPID finds the process behind a Unix socket.
func TestPeerPID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	if pid, err := peerPID(path); err != nil || pid != os.Getpid() {
		t.Errorf("peerPID = %d, %v; want %d", pid, err, os.Getpid())
	}
}

// TestRoundsMedian: a figure of several rounds is the median of the
// bridge's rounds, and its ratio the median of the rounds' paired ratios,
// not the ratio of the medians; a round a baseline missed has no ratio.
func TestRoundsMedian(t *testing.T) {
	r := &runner{res: &Result{}}
	rs := newRounds()
	for round, v := range []float64{10, 30, 20} {
		rs.add(round, sysBridge, v)
	}
	for round, v := range []float64{5, 10, 0} { // round 3: the baseline failed
		rs.add(round, sysDirect, v)
	}
	r.addRounds(Figure{Metric: "p50", Better: "lower"}, rs, []string{sysDirect, sysGWS}, ratioTarget{system: sysDirect, atMost: true, limit: 2.5})
	f := r.res.Figures[0]
	if f.Value != 20 {
		t.Errorf("value %v, want the median 20", f.Value)
	}
	if len(f.Baselines) != 1 {
		t.Fatalf("baselines %+v, want direct only (gws never ran)", f.Baselines)
	}
	b := f.Baselines[0]
	// Rounds 1 and 2: ratios 2 and 3; their median is 2.5.
	if b.Value != 7.5 || b.Ratio != 2.5 || len(b.RoundRatios) != 2 || b.Target == nil || !b.Target.Met {
		t.Errorf("baseline %+v, want value 7.5, ratio 2.5 from [2 3], target met", b)
	}
	if m := median([]float64{3, 1, 2, 10}); m != 2.5 {
		t.Errorf("median of 1,2,3,10 = %v", m)
	}
}

// fleetModel is a fleet that takes at most capacity deliveries a second,
// fed by an agent that sends at most agentMax, for calibrate's tests.
type fleetModel struct {
	capacity, agentMax float64
	asked              []float64
}

func (m *fleetModel) probe(rate float64) (stallProbe, error) {
	m.asked = append(m.asked, rate)
	sent := min(rate, m.agentMax)
	got := min(sent, m.capacity)
	return stallProbe{offered: sent, delivered: got, kept: got == sent}, nil
}

// TestCalibrate: the search ends at the highest rate the fleet took in
// full as the agent sent it, within 25% of the capacity, in a few probes,
// whether the first probe (half the burst) is over or under it.
func TestCalibrate(t *testing.T) {
	for _, tc := range []struct{ burst, capacity float64 }{
		{1.5e6, 221e3}, // the paced capacity far below the burst
		{1.0e6, 450e3}, // half the burst just over it
		{1.0e6, 900e3}, // half the burst under it: search upwards
	} {
		m := &fleetModel{capacity: tc.capacity, agentMax: math.Inf(1)}
		got, probes, err := calibrate(tc.burst, m.probe)
		if err != nil {
			t.Fatalf("burst %v capacity %v: %v", tc.burst, tc.capacity, err)
		}
		if got > tc.capacity || got < tc.capacity/1.25/1.25 || len(probes) > maxProbes {
			t.Errorf("burst %v capacity %v: calibrated %v after %v", tc.burst, tc.capacity, got, m.asked)
		}
		if m.asked[0] != tc.burst/2 {
			t.Errorf("first probe asked %v, want half the burst", m.asked[0])
		}
	}
}

// TestCalibrateJudgesWhatWasSent: an agent that falls short of the rate it
// was asked for is judged on what it sent (everything arrived, so the
// fleet kept up), and the capacity is what it sent, not what was asked.
func TestCalibrateJudgesWhatWasSent(t *testing.T) {
	m := &fleetModel{capacity: 500e3, agentMax: 300e3}
	got, probes, err := calibrate(1e6, m.probe)
	if err != nil {
		t.Fatal(err)
	}
	if got != 300e3 || !probes[0].sustained() {
		t.Errorf("calibrated %v (probes %+v), want the 300k/s the agent sent", got, probes)
	}
	// A fleet that never takes what is sent has no paced capacity.
	m = &fleetModel{capacity: 0, agentMax: math.Inf(1)}
	if _, probes, err := calibrate(1e6, m.probe); err == nil || len(probes) != maxProbes {
		t.Errorf("a fleet that takes nothing calibrated (%d probes, err %v)", len(probes), err)
	}
	if _, _, err := calibrate(0, m.probe); err == nil {
		t.Error("a burst of 0 calibrated")
	}
}

// TestProbeSustained: a probe is sustained only when everything sent
// arrived and the window received at least 95% of what it sent.
func TestProbeSustained(t *testing.T) {
	for _, tc := range []struct {
		p    stallProbe
		want bool
	}{
		{stallProbe{offered: 100, delivered: 96, kept: true}, true},
		{stallProbe{offered: 100, delivered: 94, kept: true}, false},
		{stallProbe{offered: 100, delivered: 100, kept: false}, false},
		{stallProbe{offered: 0, delivered: 0, kept: true}, false},
	} {
		if got := tc.p.sustained(); got != tc.want {
			t.Errorf("%+v sustained %v, want %v", tc.p, got, tc.want)
		}
	}
}

// TestPerStalledKB: the per-client figure is the growth beyond the
// baseline's, per stalled client, and only where there are enough of them.
func TestPerStalledKB(t *testing.T) {
	if _, ok := perStalledKB(1, 6.6, 6.2); ok {
		t.Error("a per-client figure from one stalled client")
	}
	if _, ok := perStalledKB(100, 6.6, 6.2); ok {
		t.Error("a per-client figure from 100 stalled clients (RSS moves by more than 400 KB on its own)")
	}
	if per, ok := perStalledKB(1000, 5, 3); !ok || per != 2.048 {
		t.Errorf("1000 stalled, 5 MB vs 3 MB: %v KB (ok %v), want 2.048", per, ok)
	}
}

func TestSampleOf(t *testing.T) {
	text := "# HELP agentbridge_connections_catching_up x\n# TYPE agentbridge_connections_catching_up gauge\nagentbridge_connections_catching_up_total 9\nagentbridge_connections_catching_up 1000\n"
	if v, err := sampleOf(bufio.NewScanner(strings.NewReader(text)), behindGauge); err != nil || v != 1000 {
		t.Errorf("got %v, %v; want 1000", v, err)
	}
	if _, err := sampleOf(bufio.NewScanner(strings.NewReader("other 1\n")), behindGauge); err == nil || !strings.Contains(err.Error(), behindGauge) {
		t.Errorf("a missing metric: %v", err)
	}
}

// TestWithFreePort: a start that finds its port taken (another process
// bound it between the pick and the bind) is tried again on another pick,
// three times at most; any other error is returned at once.
func TestWithFreePort(t *testing.T) {
	var tries []int
	taken := func(port int) error {
		tries = append(tries, port)
		return fmt.Errorf("agentbridge serve exited before it was ready: listen on 127.0.0.1:%d: bind: address already in use", port)
	}
	if err := withFreePort(taken); err == nil || len(tries) != 3 {
		t.Fatalf("always taken: %d tries, err %v; want 3 tries and the error", len(tries), err)
	}
	tries = nil
	if err := withFreePort(func(port int) error {
		if len(tries) == 0 {
			return taken(port)
		}
		tries = append(tries, port)
		return nil
	}); err != nil || len(tries) != 2 {
		t.Fatalf("taken once: %d tries, err %v; want 2 tries and no error", len(tries), err)
	}
	tries = nil
	other := errors.New("no such file")
	if err := withFreePort(func(port int) error { tries = append(tries, port); return other }); err != other || len(tries) != 1 {
		t.Fatalf("another error: %d tries, err %v; want it returned after 1 try", len(tries), err)
	}
}
