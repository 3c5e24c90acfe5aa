package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Scenarios are the scenario names, in the order a full run takes them.
var Scenarios = []string{"rtt", "throughput", "fanout", "idle", "sessions", "stall", "reconnect", "mcp", "fleet"}

// Transports are the transport names.
var Transports = []string{"unix", "ws"}

// Options configure a run. Fill them with RegisterFlags (which sets the
// documented defaults) or start from DefaultOptions; the zero value is not a
// usable configuration.
type Options struct {
	// Scenarios to run, from Scenarios. Empty means all.
	Scenarios []string `json:"scenarios"`
	// Transports to run them over, from Transports. Empty means both, or
	// the ones UDS and WS name when a running daemon is targeted.
	Transports []string `json:"transports"`

	// Bin is the agentbridge binary that runs the daemon, the demo agent,
	// the echo agent and the baseline helper. Empty means this executable.
	Bin string `json:"-"`
	// UDS targets a running daemon at this Unix socket instead of starting
	// one. Empty means bench starts its own daemon per scenario.
	UDS string `json:"uds,omitempty"`
	// WS targets a running daemon at this ws:// URL. Empty: see UDS.
	WS string `json:"ws,omitempty"`
	// Token authenticates WS; empty means $AGENTBRIDGE_TOKEN.
	Token string `json:"-"`

	// Duration is the measured time of each run. Default 5s.
	Duration time.Duration `json:"duration"`
	// Warmup precedes each measured run and is excluded from its figures.
	// Default 1s.
	Warmup time.Duration `json:"warmup"`
	// Timeout bounds each run beyond Warmup+Duration (setup, drain); a run
	// that exceeds it fails. Default 30s.
	Timeout time.Duration `json:"timeout"`
	// Pin runs rtt with the daemon, its agent and the baselines under
	// `taskset -c CPU` and the load generator's threads on CPU too, since a
	// wake-up across vCPUs adds ~40 µs to every hop. Default false.
	Pin bool `json:"pin"`
	// CPU is the CPU Pin uses. Default 0.
	CPU int `json:"cpu"`
	// Repeat is the rounds of rtt's closed-loop runs, of throughput, of
	// mcp's round trips and of stall's counts (the calibration and the lag
	// case run once): each round measures the bridge and every baseline
	// again, and a
	// figure is the median of its rounds, its ratio the median of the
	// rounds' ratios. Default 1; make bench uses 5.
	Repeat int `json:"repeat"`
	// HTTP adds ACP Streamable HTTP to rtt and throughput when ws runs:
	// the bridge's /acp over POST + SSE beside the same daemon over
	// WebSocket. Default true.
	HTTP bool `json:"http"`
	// Baselines runs the baselines beside the bridge. Default true.
	Baselines bool `json:"baselines"`
	// Websocketd is the websocketd binary for its baseline; empty skips
	// it. Default /usr/bin/websocketd.
	Websocketd string `json:"websocketd"`

	// Agent is what the spawned daemon runs for rtt and throughput: "echo"
	// (bench's own one-scan echo agent, so the figures are the bridge's) or
	// "demo" (the demo agent answering -32601). Default echo.
	Agent string `json:"agent"`
	// Count caps the requests measured by one rtt run. Default 1,000,000.
	Count int `json:"count"`
	// Size is the request size in bytes for rtt and throughput. Default 100.
	Size int `json:"size"`
	// Rate, when positive, adds an open-loop rtt run per system at this many
	// requests/s, latency counted from each request's scheduled send time.
	// Default 0 (closed loop only).
	Rate int `json:"rate"`
	// Conns is the connection count of the many-connection throughput run.
	// Default 64.
	Conns int `json:"conns"`
	// Window is the requests in flight per connection in throughput.
	// Default 256.
	Window int `json:"window"`
	// WebsocketdWindow caps Window for websocketd, which deadlocks once
	// about 128 KiB is in flight. Default 64.
	WebsocketdWindow int `json:"websocketdWindow"`

	// Sessions and Clients shape fanout: Sessions sessions with Clients
	// attached clients each (the owner included). Defaults 10 and 100.
	Sessions int `json:"sessions"`
	Clients  int `json:"clients"`
	// ChunkSize is the text per streamed chunk in fanout and reconnect.
	// Default 64.
	ChunkSize int `json:"chunkSize"`
	// FanoutPace is the agent's delay between chunks in fanout; zero
	// streams at full speed. Default 0.
	FanoutPace time.Duration `json:"fanoutPace"`

	// IdleConns are the connection counts idle measures, each on a fresh
	// daemon. Default 10,000 and 18,000 (issue 12's two counts; the fd
	// hard limit here is 20,000).
	IdleConns []int `json:"idleConns"`

	// SessionCount is the sessions of the sessions scenario, each with its
	// own owner connection. Default 10,000.
	SessionCount int `json:"sessionCount"`
	// StateDir runs sessions a second time with the daemon's --state-dir
	// (a fresh temporary directory). Default true.
	StateDir bool `json:"stateDir"`

	// StallFast, StallSessions, StallCounts, StallPace, StallChunkSize and
	// StallQueueBytes shape stall: StallFast reading clients over
	// StallSessions sessions streaming a StallChunkSize-byte chunk every
	// StallPace, beside each count of StallCounts clients that never read;
	// the daemon runs with --queue-bytes StallQueueBytes so a stalled
	// client reaches its ceiling within the run (0 keeps the daemon's
	// default). Stalled clients attach to every session, with their role's
	// default onSlow. StallPace 0 calibrates first, on the same fleet: the
	// fan-out capacity with the agent as fast as it can (printed; one write
	// then carries many chunks, which a paced stream never gets), then
	// paced probes for the highest rate the fleet takes in full, judged
	// against what the agent sent (printed, each probe too), and streams
	// at half of that, so the runs measure isolation, not saturation.
	// Each run's measured window starts a warm-up after every stalled
	// client has fallen behind (the daemon's
	// agentbridge_connections_catching_up), not while their socket
	// buffers still take writes like a reader's, and at least 1s after the
	// stream started in every run, so that the runs compare at the same
	// stream age (the session logs grow with it). Defaults 1000, 10,
	// [0 1 100 1000], 0 (half the paced capacity), 512, 65536.
	StallFast       int           `json:"stallFast"`
	StallSessions   int           `json:"stallSessions"`
	StallCounts     []int         `json:"stallCounts"`
	StallPace       time.Duration `json:"stallPace"`
	StallChunkSize  int           `json:"stallChunkSize"`
	StallQueueBytes int           `json:"stallQueueBytes"`

	// ReconnectClients clients over ReconnectSessions sessions streaming a
	// chunk every ReconnectPace drop at once and re-attach with since.
	// Defaults 1000, 10, 10ms.
	ReconnectClients  int           `json:"reconnectClients"`
	ReconnectSessions int           `json:"reconnectSessions"`
	ReconnectPace     time.Duration `json:"reconnectPace"`

	// MCPServer is the MCP stdio server (run with the argument "stdio")
	// the mcp scenario serves through the bridge and supergateway; empty
	// or missing skips the scenario, saying so. Default
	// test/node/node_modules/.bin/mcp-server-everything.
	MCPServer string `json:"mcpServer"`
	// Supergateway is supergateway's binary for the mcp baseline; empty
	// or missing skips the baseline, saying so. Default
	// test/node/node_modules/.bin/supergateway.
	Supergateway string `json:"supergateway"`
	// MCPClients clients each make MCPCalls echo calls in the mcp storm.
	// Defaults 100 and 5.
	MCPClients int `json:"mcpClients"`
	MCPCalls   int `json:"mcpCalls"`

	// NATS is the NATS server (with JetStream) the fleet scenario's two
	// daemons join; empty skips the scenario, saying so.
	NATS string `json:"nats,omitempty"`

	// Outputs; empty means none.
	JSON    string `json:"-"` // every figure plus machine facts
	Plot    string `json:"-"` // chart, .svg or .png
	Report  string `json:"-"` // Markdown report (docs/benchmarks.md)
	History string `json:"-"` // JSON history the report compares against
	Micro   string `json:"-"` // benchstat output to include in the report
}

// DefaultOptions returns the documented defaults. Any goroutine.
func DefaultOptions() Options {
	return Options{
		Duration: 5 * time.Second, Warmup: time.Second, Timeout: 30 * time.Second,
		Repeat: 1, HTTP: true, Baselines: true, Websocketd: "/usr/bin/websocketd", Agent: "echo",
		Count: 1_000_000, Size: 100, Conns: 64, Window: 256, WebsocketdWindow: 64,
		Sessions: 10, Clients: 100, ChunkSize: 64,
		IdleConns: []int{10_000, 18_000}, SessionCount: 10_000, StateDir: true,
		StallFast: 1000, StallSessions: 10, StallCounts: []int{0, 1, 100, 1000}, StallPace: 0,
		StallChunkSize: 512, StallQueueBytes: 64 << 10,
		ReconnectClients: 1000, ReconnectSessions: 10, ReconnectPace: 10 * time.Millisecond,
		MCPServer: "test/node/node_modules/.bin/mcp-server-everything", Supergateway: "test/node/node_modules/.bin/supergateway",
		MCPClients: 100, MCPCalls: 5,
	}
}

// intList is a comma-separated list of non-negative integers.
type intList struct{ v *[]int }

func (l intList) String() string {
	if l.v == nil {
		return ""
	}
	s := make([]string, len(*l.v))
	for i, n := range *l.v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func (l intList) Set(s string) error {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return fmt.Errorf("want comma-separated non-negative integers, got %q", s)
		}
		out = append(out, n)
	}
	*l.v = out
	return nil
}

// nameList is a comma-separated list of names from a fixed set.
type nameList struct {
	v       *[]string
	allowed []string
}

func (l nameList) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l nameList) Set(s string) error {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(l.allowed, f) {
			return fmt.Errorf("%q is not one of %s", f, strings.Join(l.allowed, ", "))
		}
		out = append(out, f)
	}
	*l.v = out
	return nil
}

// RegisterFlags binds every option to fs with DefaultOptions as defaults.
// Call before fs.Parse, from the goroutine that owns o.
func (o *Options) RegisterFlags(fs *flag.FlagSet) {
	*o = DefaultOptions()
	fs.StringVar(&o.Bin, "bin", "", "agentbridge binary for the daemon, agents and helpers (default: this executable)")
	fs.StringVar(&o.UDS, "uds", "", "bench the running daemon at this Unix socket instead of starting one")
	fs.StringVar(&o.WS, "ws", "", "bench the running daemon at this ws://HOST:PORT/acp URL instead of starting one")
	fs.StringVar(&o.Token, "token", "", "token for --ws (default $AGENTBRIDGE_TOKEN)")
	fs.Var(nameList{&o.Transports, Transports}, "transport", "transports to run: unix, ws or unix,ws (default: both, or those --uds/--ws name)")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "measured time of each run")
	fs.DurationVar(&o.Warmup, "warmup", o.Warmup, "time before each run that is excluded from its figures")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "bound on each run beyond warmup+duration (setup, drain); past it the run fails")
	fs.BoolVar(&o.Pin, "pin", o.Pin, "rtt: run the daemon, its agent and the baselines under taskset -c CPU and the load generator on CPU too")
	fs.IntVar(&o.CPU, "cpu", o.CPU, "the CPU --pin uses")
	fs.IntVar(&o.Repeat, "repeat", o.Repeat, "rtt (closed loop), throughput, mcp, stall: rounds of bridge and baselines; figures are medians, ratios the median of the rounds' ratios")
	fs.BoolVar(&o.HTTP, "http", o.HTTP, "rtt, throughput: with ws, also ACP Streamable HTTP (POST + SSE on /acp) beside the same daemon over WebSocket")
	fs.BoolVar(&o.Baselines, "baselines", o.Baselines, "run the baselines (direct socket, uds-echo, gws, websocketd) beside the bridge")
	fs.StringVar(&o.Websocketd, "websocketd", o.Websocketd, "websocketd binary for its baseline (\"\" skips it)")
	fs.StringVar(&o.Agent, "agent", o.Agent, "agent behind rtt and throughput: echo (bench's one-scan echo agent) or demo (demo agent, -32601)")
	fs.IntVar(&o.Count, "count", o.Count, "rtt: most requests measured per run")
	fs.IntVar(&o.Size, "size", o.Size, "rtt, throughput: request size in bytes")
	fs.IntVar(&o.Rate, "rate", o.Rate, "rtt: also run open-loop at this many requests/s (0: closed loop only)")
	fs.IntVar(&o.Conns, "conns", o.Conns, "throughput: connections of the many-connection run")
	fs.IntVar(&o.Window, "window", o.Window, "throughput: requests in flight per connection")
	fs.IntVar(&o.WebsocketdWindow, "websocketd-window", o.WebsocketdWindow, "throughput: cap on --window for websocketd, which deadlocks past ~128 KiB in flight")
	fs.IntVar(&o.Sessions, "sessions", o.Sessions, "fanout: sessions")
	fs.IntVar(&o.Clients, "clients", o.Clients, "fanout: clients attached to each session, the owner included")
	fs.IntVar(&o.ChunkSize, "chunk-size", o.ChunkSize, "fanout, reconnect: bytes of text per streamed chunk")
	fs.DurationVar(&o.FanoutPace, "fanout-pace", o.FanoutPace, "fanout: the agent's delay between chunks (0: full speed)")
	fs.Var(intList{&o.IdleConns}, "idle-conns", "idle: connection counts to hold open, each on a fresh daemon, e.g. 10000,18000")
	fs.IntVar(&o.SessionCount, "session-count", o.SessionCount, "sessions: sessions to make, each with its own owner connection and one prompt")
	fs.BoolVar(&o.StateDir, "state-dir", o.StateDir, "sessions: run again with the daemon persisting to a fresh --state-dir (--state-dir=false skips it)")
	fs.IntVar(&o.StallFast, "stall-fast", o.StallFast, "stall: clients that read everything")
	fs.IntVar(&o.StallSessions, "stall-sessions", o.StallSessions, "stall: sessions the clients spread over")
	fs.Var(intList{&o.StallCounts}, "stall-counts", "stall: stalled-client counts to compare, e.g. 0,1,100 (the first is the baseline)")
	fs.DurationVar(&o.StallPace, "stall-pace", o.StallPace, "stall: the agent's delay between chunks (fixed rate); 0: half the measured fan-out capacity")
	fs.IntVar(&o.StallChunkSize, "stall-chunk-size", o.StallChunkSize, "stall: bytes of text per chunk")
	fs.IntVar(&o.StallQueueBytes, "stall-queue-bytes", o.StallQueueBytes, "stall: the daemon's --queue-bytes, so stalled clients reach their ceiling within the run (0: daemon default)")
	fs.IntVar(&o.ReconnectClients, "reconnect-clients", o.ReconnectClients, "reconnect: clients that drop at once and re-attach")
	fs.IntVar(&o.ReconnectSessions, "reconnect-sessions", o.ReconnectSessions, "reconnect: sessions streaming meanwhile")
	fs.DurationVar(&o.ReconnectPace, "reconnect-pace", o.ReconnectPace, "reconnect: the agent's delay between chunks")
	fs.StringVar(&o.MCPServer, "mcp-server", o.MCPServer, "mcp: the MCP stdio server (run with \"stdio\") behind the bridge and supergateway (\"\" or missing skips mcp)")
	fs.StringVar(&o.Supergateway, "supergateway", o.Supergateway, "mcp: supergateway for the baseline (\"\" or missing skips it, saying so)")
	fs.IntVar(&o.MCPClients, "mcp-clients", o.MCPClients, "mcp: clients of the storm")
	fs.IntVar(&o.MCPCalls, "mcp-calls", o.MCPCalls, "mcp: echo calls each storm client makes")
	fs.StringVar(&o.NATS, "nats", o.NATS, "fleet: NATS server URL with JetStream for the two fleet daemons (\"\" skips fleet)")
	fs.StringVar(&o.JSON, "json", "", "write every figure and the machine facts to this JSON file")
	fs.StringVar(&o.Plot, "plot", "", "chart latency percentiles, throughput and stall isolation against the baselines (.svg or .png)")
	fs.StringVar(&o.Report, "report", "", "write a Markdown report (table, chart, machine, command) to this file")
	fs.StringVar(&o.History, "history", "", "JSON history: compare with its last run, then append this one")
	fs.StringVar(&o.Micro, "micro", "", "benchstat output of the micro-benchmarks to include in --report")
}

const helpText = `Usage: agentbridge bench [flags] [SCENARIO...]

Measures the bridge black-box over real sockets, each figure next to a
baseline measured in the same run, and prints a table (bridge, baseline,
bridge ÷ baseline, target). Unless --uds or --ws names a running daemon,
bench starts its own per scenario (agentbridge serve on a private socket
and a free port) and stops it afterwards. Every run is bounded by
--warmup + --duration (+ --timeout); warm-up is excluded from the figures;
latency goes into HdrHistograms (1 ns .. 60 s, 3 significant digits).

Scenarios (default: all, in this order):
  rtt         One request in flight, round-trip latency p50/p90/p99/p99.9.
              unix: bridge vs direct (the same agent on the other end of a
              socketpair: one hop fewer) and uds-echo (a Go net echo: the
              raw floor). ws: bridge vs gws echo server vs websocketd
              serving the same agent. With --rate, also open-loop at a fixed
              rate, latency counted from each scheduled send time (no
              coordinated omission). With --pin, pinned to --cpu.
  throughput  Pipelined requests, --window in flight per connection, on 1
              connection and on --conns: answered messages/s. Baselines as
              rtt (direct on 1 connection only; websocketd's window capped
              by --websocketd-window).
              Over ws, rtt and throughput also have the gws forwarder (gws
              in front of one shared echo agent, ids remapped: what a user
              would write by hand) and, with --http, run over ACP
              Streamable HTTP (POST + SSE on /acp) beside the same daemon
              over WebSocket.
  fanout      --sessions sessions x --clients attached clients each; the
              demo agent streams stamped chunks (full speed, or every
              --fanout-pace): delivered messages/s across all clients and
              delivery latency from the agent's send stamp. Baseline: the
              same stream from a plain Go (unix) or gws Broadcaster (ws)
              server.
  idle        --idle-conns connections (each count on a fresh daemon) that
              each did one round trip, then sit: the daemon's RSS growth per
              connection (VmRSS from /proc/PID/status before and after; the
              "before" is read after one warm-up round trip on a connection
              of its own, so one-time set-up such as sonic's JIT is not
              charged to the connections). Baseline: uds-echo (Go net,
              goroutine per connection) and gws. Raises RLIMIT_NOFILE itself.
  sessions    --session-count sessions over the Unix socket, each with its
              own owner connection and one prompt of the demo agent (one
              chunk, no permission, no tool call): the daemon's RSS once
              every prompt is answered, with every owner still connected,
              and the set-up time. With --state-dir (default) again with
              the daemon persisting to a fresh directory, against the
              memory-only run. Bounded by 3 × --timeout per run.
  stall       --stall-fast reading clients over --stall-sessions sessions
              beside 0, 1, 100, 1000 (--stall-counts) clients that attach to
              every session and never read, at a fixed rate (--stall-pace,
              or half the paced fan-out capacity, measured first and
              printed): delivery latency p50/p99 of the fast clients, from
              a warm-up after every stalled client fell behind, and the
              daemon's RSS growth from before the stream to the end of the
              window; per stalled client (from 1,000 of them) the growth
              beyond the baseline's. The baseline is the first count (no
              stalled client). Then the lag case: one client reading at
              half the agent's speed through a 200,000-event flood.
  reconnect   --reconnect-clients enveloped clients drop at once while the
              agent streams and re-attach with since=<last seq>: time until
              all are live again, events lost and duplicated (target 0, 0).
  mcp         MCP Streamable HTTP on /mcp against supergateway (stateful
              streamableHttp) serving the same MCP stdio server
              (--mcp-server, server-everything): tools/call echo round
              trips with one client, and --mcp-clients clients at once that
              each initialize, call echo --mcp-calls times and DELETE: time
              until all are done and the calls' p99.

  fleet       Two daemons of one fleet on the NATS server --nats names
              (skipped without it): delivery latency of one paced stream to a
              viewer on the other node beside one on the agent's node;
              events/s of a flood the same way; gated request round trips
              forwarded from the other node beside the agent's node.

Targets, each judged in the same run (the report's target table lists
them): unix rtt p50 <= 2.2x direct, and pinned <= 2.5x direct; ws rtt p50
pinned <= 2.5x gws; unix throughput on 1 connection >= 0.5x direct; ws
throughput on --conns >= 2x the gws forwarder (stretch: >= 1x gws) and
>= 20x websocketd; idle <= 1.5 KB (unix) and <= 2 KB (ws) per connection,
and ws <= 1/5 of gws; sessions <= 100 MB daemon RSS at 10,000 sessions;
fanout >= 1,000,000 delivered msgs/s across 1,000 clients; stall p99 <= 1.2x.
With --repeat N, rtt's closed-loop, throughput's and mcp's round trips and
stall's counts are measured in N rounds: a figure is the median of its
rounds and a ratio the median of the rounds' ratios.

Output: the table on stdout; a live progress line on stderr when it is a
terminal; --json, --plot, --report, --history as below. Exit status 1 when a
scenario failed (the others still run), 2 on bad flags.

Internal helpers (bench starts them itself):
  agentbridge bench echo-agent      the one-scan NDJSON echo agent
  agentbridge bench helper-server   the uds-echo, gws and fan-out baselines

Flags:
`

// parseArgs parses flags and scenario names, which may be interleaved.
func parseArgs(args []string, stderr io.Writer) (Options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o Options
	o.RegisterFlags(fs)
	fs.SetOutput(io.Discard)
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(stderr)
				fmt.Fprint(stderr, helpText)
				fs.PrintDefaults()
				return o, errHelp
			}
			return o, err
		}
		args = fs.Args()
		for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			if !slices.Contains(Scenarios, args[0]) {
				return o, fmt.Errorf("unknown scenario %q (want %s)", args[0], strings.Join(Scenarios, ", "))
			}
			if !slices.Contains(o.Scenarios, args[0]) {
				o.Scenarios = append(o.Scenarios, args[0])
			}
			args = args[1:]
		}
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			return o, fmt.Errorf("unexpected arguments after --: %q", args[1:])
		}
	}
	if len(o.Scenarios) == 0 {
		o.Scenarios = slices.Clone(Scenarios)
	} else {
		// Run in the documented order whatever order they were named in.
		slices.SortFunc(o.Scenarios, func(a, b string) int {
			return slices.Index(Scenarios, a) - slices.Index(Scenarios, b)
		})
	}
	if o.Token == "" {
		o.Token = os.Getenv("AGENTBRIDGE_TOKEN")
	}
	if len(o.Transports) == 0 {
		switch {
		case o.UDS != "" || o.WS != "":
			if o.UDS != "" {
				o.Transports = append(o.Transports, "unix")
			}
			if o.WS != "" {
				o.Transports = append(o.Transports, "ws")
			}
		default:
			o.Transports = slices.Clone(Transports)
		}
	}
	return o, o.validate()
}

func (o *Options) validate() error {
	external := o.UDS != "" || o.WS != ""
	if external {
		for _, t := range o.Transports {
			if t == "unix" && o.UDS == "" {
				return errors.New("--transport unix with a running daemon needs --uds")
			}
			if t == "ws" && o.WS == "" {
				return errors.New("--transport ws with a running daemon needs --ws")
			}
		}
	}
	pos := map[string]int{"--count": o.Count, "--size": o.Size, "--conns": o.Conns, "--window": o.Window,
		"--websocketd-window": o.WebsocketdWindow, "--sessions": o.Sessions, "--clients": o.Clients,
		"--chunk-size": o.ChunkSize, "--stall-fast": o.StallFast,
		"--stall-sessions": o.StallSessions, "--stall-chunk-size": o.StallChunkSize,
		"--reconnect-clients": o.ReconnectClients, "--repeat": o.Repeat, "--session-count": o.SessionCount, "--mcp-clients": o.MCPClients, "--mcp-calls": o.MCPCalls, "--reconnect-sessions": o.ReconnectSessions}
	for name, v := range pos {
		if v <= 0 {
			return fmt.Errorf("invalid %s %d (must be positive)", name, v)
		}
	}
	if o.Size < 64 {
		return fmt.Errorf("invalid --size %d (at least 64: a JSON-RPC request needs the room)", o.Size)
	}
	if o.Duration <= 0 || o.Timeout <= 0 || o.Warmup < 0 || o.FanoutPace < 0 || o.StallPace < 0 || o.ReconnectPace <= 0 {
		return errors.New("--duration, --timeout and --reconnect-pace must be positive; --warmup, --fanout-pace and --stall-pace not negative")
	}
	if o.Rate < 0 || o.CPU < 0 || o.StallQueueBytes < 0 {
		return errors.New("--rate, --cpu and --stall-queue-bytes must not be negative")
	}
	if len(o.IdleConns) == 0 || slices.Contains(o.IdleConns, 0) {
		return errors.New("--idle-conns needs positive counts")
	}
	if len(o.StallCounts) == 0 {
		return errors.New("--stall-counts needs at least one count")
	}
	if o.Agent != "echo" && o.Agent != "demo" {
		return fmt.Errorf("invalid --agent %q (want echo or demo)", o.Agent)
	}
	if o.StallFast < o.StallSessions || o.ReconnectClients < o.ReconnectSessions {
		return errors.New("--stall-fast and --reconnect-clients must be at least their session counts")
	}
	if o.Plot != "" && !strings.HasSuffix(o.Plot, ".svg") && !strings.HasSuffix(o.Plot, ".png") {
		return fmt.Errorf("invalid --plot %q (want a .svg or .png file)", o.Plot)
	}
	return nil
}
