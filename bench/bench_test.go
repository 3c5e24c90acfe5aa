package bench

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// binPath is the agentbridge binary TestMain builds: the daemon, agents and
// helpers every scenario test runs against.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "benchtest")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "agentbridge")
	out, err := exec.Command("go", "build", "-o", binPath, "github.com/agentbridge/agentbridge/cmd/agentbridge").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building agentbridge: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tiny is a configuration every scenario finishes quickly with.
var tiny = []string{
	"--duration", "300ms", "--warmup", "100ms", "--timeout", "20s",
	"--conns", "2", "--window", "16",
	"--sessions", "2", "--clients", "3",
	"--idle-conns", "300,500", "--session-count", "200", "--repeat", "2",
	"--stall-fast", "6", "--stall-sessions", "2", "--stall-counts", "0,2", "--stall-pace", "2ms",
	"--reconnect-clients", "6", "--reconnect-sessions", "2", "--reconnect-pace", "2ms",
}

// mcpArgs point the mcp scenario at test/node's server-everything and
// supergateway (scripts/test-deps.sh installs both); $BENCH_SUPERGATEWAY
// names another supergateway.
func mcpArgs() []string {
	sg := os.Getenv("BENCH_SUPERGATEWAY")
	if sg == "" {
		sg = "../test/node/node_modules/.bin/supergateway"
	}
	return []string{"--mcp-server", "../test/node/node_modules/.bin/mcp-server-everything", "--supergateway", sg,
		"--mcp-clients", "3", "--mcp-calls", "2"}
}

// runBench runs `agentbridge bench` in this process (so the race detector
// sees it) and returns its exit status, output and the --json result.
func runBench(t *testing.T, args ...string) (int, string, string, *Result) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "out.json")
	args = append([]string{"--bin", binPath, "--json", file}, args...)
	var stdout, stderr bytes.Buffer
	code := Run(args, &stdout, &stderr, Build{Version: "test"})
	var res *Result
	if b, err := os.ReadFile(file); err == nil {
		res = &Result{}
		if err := json.Unmarshal(b, res); err != nil {
			t.Fatalf("--json wrote something that is not a Result: %v\n%s", err, b)
		}
	}
	return code, stdout.String(), stderr.String(), res
}

func websocketdInstalled() bool {
	_, err := exec.LookPath(DefaultOptions().Websocketd)
	return err == nil
}

// TestScenarios runs every scenario over both transports in a tiny
// configuration against the real binary and validates the JSON.
func TestScenarios(t *testing.T) {
	type want struct {
		metrics    []string            // every transport has these figures
		baselines  map[string][]string // transport → baselines every figure has
		transports []string            // default: unix and ws
	}
	wants := map[string]want{
		"rtt": {metrics: []string{"p50", "p99"}, transports: []string{"unix", "ws", "http"},
			baselines: map[string][]string{"unix": {sysDirect, sysUDSEcho}, "ws": {sysGWS, sysForwarder, sysWebsocketd}, "http": {sysBridgeWS}}},
		"throughput": {metrics: []string{"answered"}, transports: []string{"unix", "ws", "http"},
			baselines: map[string][]string{"unix": {sysUDSEcho}, "ws": {sysGWS, sysForwarder, sysWebsocketd}, "http": {sysBridgeWS}}},
		"fanout":    {metrics: []string{"delivered", "p50", "p99"}, baselines: map[string][]string{"unix": {sysBroadcast}, "ws": {sysBroadcast}}},
		"idle":      {metrics: []string{"RSS per conn"}, baselines: map[string][]string{"unix": {sysUDSEcho}, "ws": {sysGWS}}},
		"stall":     {metrics: []string{"p50", "p99", "rss growth"}, baselines: map[string][]string{"unix": {"0 stalled"}, "ws": {"0 stalled"}}},
		"reconnect": {metrics: []string{"all live again", "p50 re-attach", "lost", "duplicated"}},
		"sessions":  {metrics: []string{"daemon RSS", "set-up"}, transports: []string{"unix"}},
		"mcp": {metrics: []string{"p50", "p99", "all done", "call p99"}, transports: []string{"http"},
			baselines: map[string][]string{"http": {sysSupergateway}}},
		"fleet": {metrics: []string{"delivery p50", "delivery p99", "rtt p50", "events/s"},
			baselines: map[string][]string{"unix": {"same node"}}, transports: []string{"unix"}},
	}
	for _, scenario := range Scenarios {
		t.Run(scenario, func(t *testing.T) {
			args := append(append(slices.Clone(tiny), mcpArgs()...), scenario)
			switch scenario {
			case "rtt":
				args = append(args, "--rate", "400", "--pin")
			case "fleet":
				args = append(args, "--nats", startNATS(t))
			}
			code, stdout, stderr, res := runBench(t, args...)
			if code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
			if res == nil {
				t.Fatal("no --json written")
			}
			checkMachine(t, res)
			w := wants[scenario]
			transports := w.transports
			if transports == nil {
				transports = Transports
			}
			for _, transport := range transports {
				for _, metric := range w.metrics {
					figs := figures(res, scenario, transport, metric)
					if len(figs) == 0 {
						t.Errorf("%s %s: no %q figure in %+v", scenario, transport, metric, res.Figures)
					}
					for _, f := range figs {
						checkFigure(t, f, w.baselines[transport])
					}
				}
			}
			if scenario == "rtt" {
				for _, kase := range []string{"closed loop", "open loop 400/s", "closed loop pinned"} {
					for _, transport := range Transports {
						if n := len(caseFigures(res, transport, kase)); n != 2 {
							t.Errorf("rtt %s %q: %d figures, want p50 and p99", transport, kase, n)
						}
					}
				}
			}
			switch scenario {
			case "rtt", "throughput", "mcp":
				checkRounds(t, res, scenario, 2)
			case "idle":
				for _, transport := range Transports {
					for _, kase := range []string{"300 conns", "500 conns"} {
						if f := caseFigures(res, transport, kase); len(f) != 1 || f[0].Target == nil {
							t.Errorf("idle %s %s: want one figure with its target, got %+v", transport, kase, f)
						}
					}
				}
			case "sessions":
				checkSessions(t, res)
			}
			if !strings.Contains(stdout, "BRIDGE ÷ BASELINE") || !strings.Contains(stdout, scenario) {
				t.Errorf("the table is missing:\n%s", stdout)
			}
			// stderr carries nothing but the skips the JSON lists.
			for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
				if line != "" && !slices.Contains(res.Skipped, strings.TrimPrefix(line, "agentbridge bench: ")) {
					t.Errorf("unexpected stderr line %q (skipped: %q)", line, res.Skipped)
				}
			}
			if len(res.Failed) > 0 {
				t.Errorf("failed: %q", res.Failed)
			}
			for _, m := range res.Runs {
				if m.Scenario != scenario {
					t.Errorf("a %s run in a %s-only result", m.Scenario, scenario)
				}
				if m.Conns <= 0 {
					t.Errorf("%+v: no connection count", m)
				}
			}
		})
	}
}

// checkRounds: the closed-loop and throughput figures were measured in
// n rounds of every system, and the figure is the median of the bridge's.
func checkRounds(t *testing.T, res *Result, scenario string, n int) {
	t.Helper()
	for _, f := range res.Figures {
		if f.Scenario != scenario || strings.HasPrefix(f.Case, "open loop") || strings.HasPrefix(f.Case, "storm") {
			continue
		}
		var vals []float64
		for _, m := range res.Runs {
			if m.Transport == f.Transport && m.Case == f.Case && m.System == sysBridge {
				if m.Round < 1 || m.Round > n {
					t.Errorf("%s: run in round %d of %d", f.Key(), m.Round, n)
				}
				switch {
				case scenario == "throughput":
					vals = append(vals, m.Rate)
				case f.Metric == "p50":
					vals = append(vals, m.Latency.P50)
				default:
					vals = append(vals, m.Latency.P99)
				}
			}
		}
		if len(vals) != n || f.Value != median(vals) {
			t.Errorf("%s: value %v is not the median of the bridge's %d rounds %v", f.Key(), f.Value, n, vals)
		}
		for _, b := range f.Baselines {
			if b.System == sysWebsocketd || len(b.RoundRatios) == n {
				continue
			}
			// A baseline that failed in a round is left out of that round's
			// ratio and named in Skipped (on a loaded machine a baseline can
			// miss its deadline); a round lost without a word is a bug.
			if note := skippedNote(res, b.System); note != "" {
				t.Logf("%s: %d round ratios against %s of %d: %s", f.Key(), len(b.RoundRatios), b.System, n, note)
				continue
			}
			t.Errorf("%s: %d round ratios against %s, want %d (skipped: %q)", f.Key(), len(b.RoundRatios), b.System, n, res.Skipped)
		}
	}
}

// checkSessions: every session was made and prompted, the RSS was read
// with its target, and the --state-dir run has the memory-only run as its
// baseline.
func checkSessions(t *testing.T, res *Result) {
	t.Helper()
	if len(res.Runs) != 2 {
		t.Fatalf("want the memory-only and the --state-dir run, got %+v", res.Runs)
	}
	for _, m := range res.Runs {
		if m.Count != 200 || m.Conns != 200 || !(m.Seconds > 0) || m.RSSAfterKB <= 0 || m.RSSBeforeKB <= 0 {
			t.Errorf("run %+v: want 200 sessions on 200 connections, a set-up time and the RSS", m)
		}
	}
	for _, f := range figures(res, "sessions", "unix", "daemon RSS") {
		if strings.HasSuffix(f.Case, "--state-dir") {
			if baselineOf(f, "memory only") == nil {
				t.Errorf("%s: no memory-only baseline: %+v", f.Key(), f.Baselines)
			}
		} else if f.Target == nil || f.Target.Met != (f.Value <= 100) {
			t.Errorf("%s: the 100 MB target is missing or misjudged: %+v", f.Key(), f.Target)
		}
	}
	if n := len(figures(res, "sessions", "unix", "set-up")); n != 2 {
		t.Errorf("%d set-up figures, want 2", n)
	}
}

func figures(res *Result, scenario, transport, metric string) []Figure {
	var out []Figure
	for _, f := range res.Figures {
		if f.Scenario == scenario && f.Transport == transport && f.Metric == metric {
			out = append(out, f)
		}
	}
	return out
}

func caseFigures(res *Result, transport, kase string) []Figure {
	var out []Figure
	for _, f := range res.Figures {
		if f.Transport == transport && f.Case == kase {
			out = append(out, f)
		}
	}
	return out
}

func checkMachine(t *testing.T, res *Result) {
	t.Helper()
	m := res.Machine
	if m.CPU == "" || m.Cores <= 0 || !strings.HasPrefix(m.GoVersion, "go1") || m.Commit == "" || m.Kernel == "" {
		t.Errorf("machine facts incomplete: %+v", m)
	}
	if res.Started.IsZero() || res.Seconds <= 0 || !strings.HasPrefix(res.Command, "agentbridge bench ") {
		t.Errorf("run facts incomplete: started %v seconds %v command %q", res.Started, res.Seconds, res.Command)
	}
}

// checkFigure: the value is a real measurement, every expected baseline
// ran, and each ratio is the bridge's value over the baseline's.
func checkFigure(t *testing.T, f Figure, wantBase []string) {
	t.Helper()
	zeroOK := f.Scenario == "reconnect" && (f.Metric == "lost" || f.Metric == "duplicated")
	switch {
	case math.IsNaN(f.Value) || math.IsInf(f.Value, 0) || f.Value < 0:
		t.Errorf("%s: value %v", f.Key(), f.Value)
	case f.Value == 0 && !zeroOK:
		t.Errorf("%s: value 0", f.Key())
	case zeroOK && f.Value != 0:
		t.Errorf("%s: %v events (the target is 0)", f.Key(), f.Value)
	}
	if f.Unit == "" || (f.Better != "lower" && f.Better != "higher") {
		t.Errorf("%s: unit %q better %q", f.Key(), f.Unit, f.Better)
	}
	for _, name := range wantBase {
		if name == sysWebsocketd && !websocketdInstalled() {
			continue
		}
		found := false
		for _, b := range f.Baselines {
			if b.System == name {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no %s baseline in %+v", f.Key(), name, f.Baselines)
		}
	}
	for _, b := range f.Baselines {
		if !(b.Value > 0) || math.IsInf(b.Value, 0) {
			t.Errorf("%s: baseline %s value %v", f.Key(), b.System, b.Value)
			continue
		}
		want := f.Value / b.Value
		if len(b.RoundRatios) > 0 {
			want = median(b.RoundRatios)
		}
		if math.Abs(b.Ratio-want) > 1e-9*want || !(b.Ratio > 0) {
			t.Errorf("%s: ratio vs %s is %v, want %v", f.Key(), b.System, b.Ratio, want)
		}
	}
	if f.Scenario == "rtt" && f.Transport == "unix" && f.Metric == "p50" && strings.HasPrefix(f.Case, "closed loop") {
		limit := 2.2
		if strings.HasSuffix(f.Case, "pinned") {
			limit = 2.5
		}
		if b := baselineOf(f, sysDirect); b == nil || b.Target == nil || b.Target.Met != (b.Ratio <= limit) {
			t.Errorf("%s: the %g× target vs direct is missing or misjudged: %+v", f.Key(), limit, b)
		}
	}
}

func baselineOf(f Figure, sys string) *Baseline {
	for i := range f.Baselines {
		if f.Baselines[i].System == sys {
			return &f.Baselines[i]
		}
	}
	return nil
}

// TestNoDaemon: a bench against a daemon that is not running fails with
// one clear line.
func TestNoDaemon(t *testing.T) {
	dir := t.TempDir()
	cases := map[string][]string{
		"unix": {"--uds", filepath.Join(dir, "none.sock"), "rtt"},
		"ws":   {"--ws", "ws://127.0.0.1:1/acp", "--token", "x", "rtt"},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			code, stdout, stderr, _ := runBench(t, args...)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], "no daemon at ") || !strings.Contains(lines[0], "agentbridge serve") {
				t.Errorf("stderr should be one line naming the missing daemon, got %q", stderr)
			}
			if stdout != "" {
				t.Errorf("stdout should be empty, got %q", stdout)
			}
		})
	}
}

// TestMissingWebsocketd: a baseline that cannot run is skipped with a
// message saying why, and the bridge is still measured.
func TestMissingWebsocketd(t *testing.T) {
	code, _, stderr, res := runBench(t, append(slices.Clone(tiny), "--websocketd", "/nonexistent/websocketd", "--transport", "ws", "rtt")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	msg := "websocketd baseline skipped: /nonexistent/websocketd not found"
	if !strings.Contains(stderr, msg) || len(res.Skipped) != 1 || !strings.HasPrefix(res.Skipped[0], msg) {
		t.Errorf("want the skip %q in stderr and the JSON, got %q and %q", msg, stderr, res.Skipped)
	}
	for _, f := range res.Figures {
		if baselineOf(f, sysWebsocketd) != nil {
			t.Errorf("%s has a websocketd baseline that did not run", f.Key())
		}
		if f.Transport == "ws" && baselineOf(f, sysGWS) == nil {
			t.Errorf("%s lost its gws baseline", f.Key())
		}
	}
}

// TestMCPWithoutSupergateway: with no supergateway the mcp scenario still
// measures the bridge and says clearly why the baseline is missing.
func TestMCPWithoutSupergateway(t *testing.T) {
	args := append(append(slices.Clone(tiny), mcpArgs()...), "--supergateway", "/nonexistent/supergateway", "--repeat", "1", "mcp")
	code, _, stderr, res := runBench(t, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	msg := "mcp supergateway baseline skipped: --supergateway /nonexistent/supergateway not found (npm supergateway: run scripts/test-deps.sh"
	if !strings.Contains(stderr, msg) || len(res.Skipped) != 1 || !strings.HasPrefix(res.Skipped[0], msg) {
		t.Errorf("want the skip %q in stderr and the JSON, got %q and %q", msg, stderr, res.Skipped)
	}
	if len(res.Figures) != 4 {
		t.Errorf("want the bridge's 4 mcp figures, got %+v", res.Figures)
	}
	for _, f := range res.Figures {
		if len(f.Baselines) != 0 || !(f.Value > 0) {
			t.Errorf("%s: value %v, baselines %+v (supergateway never ran)", f.Key(), f.Value, f.Baselines)
		}
	}
}

// TestHelp documents every scenario and every flag.
func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Run([]string{"--help"}, &stdout, &stderr, Build{}); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	help := stderr.String()
	for _, s := range Scenarios {
		if !strings.Contains(help, "\n  "+s+" ") {
			t.Errorf("--help does not document scenario %s", s)
		}
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var o Options
	o.RegisterFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(help, "  -"+f.Name+" ") && !strings.Contains(help, "  -"+f.Name+"\n") {
			t.Errorf("--help does not document -%s", f.Name)
		}
		if f.Usage == "" {
			t.Errorf("-%s has no usage text", f.Name)
		}
	})
}

func TestBadArgs(t *testing.T) {
	for _, args := range [][]string{{"nosuch"}, {"--transport", "tcp"}, {"--size", "10"}, {"--agent", "gpt"}, {"--plot", "x.pdf"}, {"--stall-counts", "a"}, {"--repeat", "0"}, {"--idle-conns", "0"}, {"--session-count", "-1"}} {
		var stdout, stderr bytes.Buffer
		if code := Run(args, &stdout, &stderr, Build{}); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
		if lines := strings.Split(strings.TrimSpace(stderr.String()), "\n"); len(lines) != 1 {
			t.Errorf("%q: want one line on stderr, got %q", args, stderr.String())
		}
	}
}

func TestParseArgsInterleaved(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parseArgs([]string{"stall", "--duration", "2s", "rtt", "--transport", "ws"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.Scenarios, []string{"rtt", "stall"}) || o.Duration.String() != "2s" || !slices.Equal(o.Transports, []string{"ws"}) {
		t.Errorf("got scenarios %v duration %v transports %v", o.Scenarios, o.Duration, o.Transports)
	}
	o, err = parseArgs([]string{"--uds", "/x.sock"}, &stderr)
	if err != nil || !slices.Equal(o.Transports, []string{"unix"}) || len(o.Scenarios) != len(Scenarios) {
		t.Errorf("--uds alone: transports %v scenarios %v err %v", o.Transports, o.Scenarios, err)
	}
	if _, err := parseArgs([]string{"--uds", "/x.sock", "--transport", "ws"}, &stderr); err == nil {
		t.Error("--transport ws against a running daemon without --ws was accepted")
	}
}

// startNATS runs a NATS server with JetStream in this test process on
// loopback (the fleet scenario's), stopped at the test's end.
func startNATS(t *testing.T) string {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 4 << 30})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready within 10s")
	}
	t.Cleanup(ns.Shutdown)
	return ns.ClientURL()
}

// skippedNote is the Skipped line that says system's baseline failed, if any.
func skippedNote(res *Result, system string) string {
	for _, s := range res.Skipped {
		if strings.Contains(s, " "+system+" baseline failed") {
			return s
		}
	}
	return ""
}
