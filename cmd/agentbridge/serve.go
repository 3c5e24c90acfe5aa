package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/agentbridge/agentbridge/agent"
	"github.com/agentbridge/agentbridge/audit"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/internal/config"
	"github.com/agentbridge/agentbridge/loop"
	"github.com/agentbridge/agentbridge/store"
	"github.com/agentbridge/agentbridge/terminal"
)

type serveFlags struct {
	uds, listen, tlsCert, tlsKey, tokens, config string
	stateDir, auditFile                          string
	logLevel, logFormat, framing, agentStdio     config.Choice
	allowOrigin                                  config.List
	allowUID                                     config.List
	replay, replayBytes, maxMessage, queueItems  int
	replayMemory                                 int
	loops, maxConns, maxConnsPerIP               int
	pprof                                        string
	queueBytes, controlBytes                     int
	heartbeat, requestTimeout, grace, stateSync  time.Duration
	summaryInterval, stallTimeout                time.Duration
	httpIdle                                     time.Duration // ACP/MCP Streamable HTTP
	maxInflight, maxSessions                     int           // hardening
	callTimeout                                  time.Duration // hardening
	rate                                         string
	terminal                                     string
	terminalLinger                               time.Duration
	nats, node, fleet                            string // fleet mode (fleet package)
}

func newServeFlags() (*flag.FlagSet, *serveFlags) {
	f := &serveFlags{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&f.uds, "uds", config.DefaultSocket(), "Unix socket path, in a directory only this user may write (\"\" disables); the default directory is created 0700")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8931", "TCP address for WebSocket/HTTP (\"\" disables)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "TLS certificate file (with --tls-key: serve https/wss)")
	fs.StringVar(&f.tlsKey, "tls-key", "", "TLS key file")
	fs.StringVar(&f.tokens, "tokens", "", "tokens file: one `ROLE TOKEN` per line (default: generate a client token next to the socket)")
	fs.Var(&f.allowOrigin, "allow-origin", "browser Origin allowed to open WebSockets (repeatable; * allows any)")
	fs.Var(&f.allowUID, "allow-uid", "extra peer uid allowed on the Unix socket (repeatable)")
	fs.IntVar(&f.replay, "replay", 0, "events kept per session for replay and catch-up (0: no count limit; bytes bound the logs)")
	fs.IntVar(&f.replayBytes, "replay-bytes", 64<<20, "bytes of events kept per session for replay")
	fs.IntVar(&f.replayMemory, "replay-memory", 64<<20, "bytes all session logs keep together; past it the oldest events of the largest logs go first")
	fs.StringVar(&f.stateDir, "state-dir", "", "directory persisting sessions and their events across restarts (\"\": memory only)")
	fs.DurationVar(&f.stateSync, "state-sync", time.Second, "how often persisted events are fsynced (0: after every write)")
	fs.StringVar(&f.auditFile, "audit", "", "append control-plane decisions to this file as JSON lines (mode 0600)")
	f.framing = config.Choice{Value: "ndjson", Allowed: []string{"ndjson", "lsp"}}
	fs.Var(&f.framing, "framing", "the agent's stdio framing: ndjson or lsp")
	f.agentStdio = config.Choice{Value: "socket", Allowed: []string{"socket", "pipe"}}
	fs.Var(&f.agentStdio, "agent-stdio", "the agent's stdin/stdout: socket (one socketpair end, served by the event loop) or pipe (for agents that need real pipes); stderr is always a pipe to the log")
	fs.DurationVar(&f.httpIdle, "http-idle", 5*time.Minute, "reap an ACP or MCP Streamable HTTP connection with no open GET and no request for this long")
	fs.DurationVar(&f.heartbeat, "heartbeat", 15*time.Second, "WebSocket ping interval; a peer silent for two intervals is dropped")
	fs.DurationVar(&f.summaryInterval, "summary-interval", time.Second, "a degraded (slow) connection gets at most one bridge/summary per session per interval")
	fs.DurationVar(&f.stallTimeout, "stall-timeout", 60*time.Second, "a connection that takes nothing for this long while something is due to it is closed (WebSocket 1013); its client resumes by cursor")
	fs.StringVar(&f.rate, "rate", "off", "per-connection input limit, `MSGS/s,BYTES/s` (e.g. 200/s,4MiB/s; either part may be left out): over it requests get -32004 and notifications are dropped, 10x over for 3s closes the connection; off = no limit")
	fs.StringVar(&f.terminal, "terminal", "", "serve a browser terminal at GET /terminal running this command (e.g. /bin/bash; words split on spaces) in the agent's directory and environment: client tokens type, operator tokens watch (\"\": off)")
	fs.DurationVar(&f.terminalLinger, "terminal-linger", 5*time.Minute, "how long a terminal outlives its tab, waiting for the same token to re-attach")
	fs.StringVar(&f.nats, "nats", "", "join a fleet through this NATS server or cluster with JetStream (e.g. nats://127.0.0.1:4222; comma-separated URLs); \"\": single node, no NATS")
	fs.StringVar(&f.node, "node", "", "this daemon's name in the fleet (letters, digits, - and _; default: the host name)")
	fs.StringVar(&f.fleet, "fleet", "default", "the fleet's name: daemons with the same --nats and --fleet share their sessions")
	fs.StringVar(&f.config, "config", "", "config file: one `name value` per line, names as the flags")
	f.logLevel = config.Choice{Value: "info", Allowed: []string{"debug", "info", "warn", "error"}}
	fs.Var(&f.logLevel, "log-level", "debug, info, warn or error")
	f.logFormat = config.Choice{Value: "text", Allowed: []string{"text", "json"}}
	fs.Var(&f.logFormat, "log-format", "text or json")
	fs.IntVar(&f.maxMessage, "max-message", 16<<20, "largest message accepted from a client or the agent, bytes")
	fs.IntVar(&f.queueItems, "queue-items", 4096, "per-connection outbound queue: most messages")
	fs.IntVar(&f.loops, "loops", 0, "event loops (0: half the CPUs, at least one: the agent and its reader need the rest)")
	fs.IntVar(&f.maxConns, "max-conns", 0, "most client connections at once over all listeners; past it new ones are refused (0: the fd limit less a reserve of 1024, at least half the limit)")
	fs.IntVar(&f.maxConnsPerIP, "max-conns-per-ip", 0, "most TCP connections from one IP address (0: no limit)")
	fs.StringVar(&f.pprof, "pprof", "", "debugging: serve net/http/pprof on this address (e.g. 127.0.0.1:6060; keep it on loopback)")
	fs.IntVar(&f.queueBytes, "queue-bytes", 1<<20, "per-connection outbound queue: data-plane bytes before eviction/degrade")
	fs.IntVar(&f.controlBytes, "control-bytes", 4<<20, "per-connection outbound queue: control-plane bytes before the connection is closed")
	fs.DurationVar(&f.requestTimeout, "request-timeout", 10*time.Minute, "how long an agent request waits for a client's answer")
	fs.IntVar(&f.maxInflight, "max-inflight", 1024, "requests one connection may have awaiting the agent; past it -32004")
	fs.IntVar(&f.maxSessions, "max-sessions", 10000, "sessions kept that only the agent named (no client created, loaded or attached them); past it the oldest idle one is forgotten")
	fs.DurationVar(&f.callTimeout, "call-timeout", 0, "answer a client request the agent has not answered within this with -32005 (0: wait for ever)")
	fs.DurationVar(&f.grace, "grace", 5*time.Second, "on shutdown, how long the agent gets to exit after stdin closes (then SIGTERM, then SIGKILL)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: agentbridge serve [flags] [-- AGENT_CMD ARGS...]\n\nEvery flag can also be set as AGENTBRIDGE_<NAME> (e.g. AGENTBRIDGE_LISTEN) or in --config.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs, f
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("invalid --log-level %q (want debug, info, warn or error)", s)
	}
	return l, nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	l, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("invalid --log-format %q (want text or json)", format)
}

func fail(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, "agentbridge serve: "+format+"\n", a...)
	return 1
}

// serveConfig is serve's configuration once parsed and checked.
type serveConfig struct {
	*serveFlags
	log     *slog.Logger
	framing agent.Framing
	stdio   agent.Stdio
	rate    delivery.Rate
	uids    []uint32
	cmd     []string // the agent's command
}

// configure parses serve's flags, environment and config file and checks
// every value; on failure (or -h) it returns the exit code and false.
func configure(args []string) (*serveConfig, int, bool) {
	fs, f := newServeFlags()
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if config.IsHelp(err) {
			fs.SetOutput(os.Stderr)
			fs.Usage()
			return nil, 0, false
		}
		return nil, fail("%v", err), false
	}
	fs.SetOutput(os.Stderr)
	if err := config.Apply(fs, "config"); err != nil {
		return nil, fail("%v", err), false
	}
	log, err := newLogger(os.Stderr, f.logLevel.Value, f.logFormat.Value)
	if err != nil {
		return nil, fail("%v", err), false
	}
	framing, err := agent.ParseFraming(f.framing.Value)
	if err != nil {
		return nil, fail("invalid --framing %q (want ndjson or lsp)", f.framing.Value), false
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return nil, fail("--tls-cert and --tls-key go together"), false
	}
	if f.replay < 0 {
		return nil, fail("invalid --replay %d (0 means no count limit)", f.replay), false
	}
	for name, v := range map[string]int{"--replay-memory": f.replayMemory, "--replay-bytes": f.replayBytes, "--max-message": f.maxMessage, "--queue-items": f.queueItems, "--queue-bytes": f.queueBytes, "--control-bytes": f.controlBytes, "--max-inflight": f.maxInflight, "--max-sessions": f.maxSessions} {
		if v <= 0 {
			return nil, fail("invalid %s %d (must be positive)", name, v), false
		}
	}
	if f.maxConns < 0 || f.maxConnsPerIP < 0 {
		return nil, fail("invalid --max-conns %d / --max-conns-per-ip %d (must be 0 or positive)", f.maxConns, f.maxConnsPerIP), false
	}
	if f.loops < 0 {
		return nil, fail("invalid --loops %d (0 means half the CPUs)", f.loops), false
	}
	if f.httpIdle <= 0 {
		return nil, fail("invalid --http-idle %s: must be a positive duration", f.httpIdle), false
	}
	if f.heartbeat <= 0 || f.requestTimeout <= 0 || f.grace <= 0 {
		return nil, fail("--heartbeat, --request-timeout and --grace must be positive durations"), false
	}
	if f.callTimeout < 0 {
		return nil, fail("invalid --call-timeout %s (0 disables it)", f.callTimeout), false
	}
	if f.summaryInterval <= 0 {
		return nil, fail("invalid --summary-interval %s (must be positive)", f.summaryInterval), false
	}
	if f.stallTimeout <= 0 {
		return nil, fail("invalid --stall-timeout %s (must be positive)", f.stallTimeout), false
	}
	rate, err := delivery.ParseRate(f.rate)
	if err != nil {
		return nil, fail("invalid --rate %q: %v", f.rate, err), false
	}
	if f.stateSync < 0 {
		return nil, fail("invalid --state-sync %s (must be 0 or positive)", f.stateSync), false
	}
	var uids []uint32
	for _, s := range f.allowUID {
		u, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return nil, fail("invalid --allow-uid %q (want a numeric uid)", s), false
		}
		uids = append(uids, uint32(u))
	}
	cmd := fs.Args()
	if len(cmd) == 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, fail("cannot find own executable for the demo agent: %v", err), false
		}
		cmd = []string{self, "demo-agent"}
	}
	stdio, err := agent.ParseStdio(f.agentStdio.Value)
	if err != nil {
		return nil, fail("%v", err), false
	}
	return &serveConfig{serveFlags: f, log: log, framing: framing, stdio: stdio, rate: rate, uids: uids, cmd: cmd}, 0, true
}

// runServe is the serve command: configure, build, run, wait.
func runServe(args []string) int {
	c, code, ok := configure(args)
	if !ok {
		return code
	}
	d, err := build(c)
	if err != nil {
		return fail("%v", err)
	}
	defer d.close()
	// Signals are caught before anything is served: a supervisor may stop
	// the daemon the moment its socket appears.
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	if err := d.run(); err != nil {
		return fail("%v", err)
	}
	d.stop(d.wait(sig), sig)
	return 0
}

// newTerminal builds the --terminal manager, or nil when it is off. The
// terminal runs in the agent's directory with the agent's environment
// (both the daemon's own: serve does not change them for the agent).
func newTerminal(f *serveFlags, auditLog *audit.Log, log *slog.Logger) (*terminal.Manager, error) {
	if strings.TrimSpace(f.terminal) == "" {
		return nil, nil
	}
	if f.terminalLinger <= 0 {
		return nil, fmt.Errorf("invalid --terminal-linger %s (must be positive)", f.terminalLinger)
	}
	cfg := terminal.Config{Command: strings.Fields(f.terminal), Linger: f.terminalLinger, Logger: log.With("src", "terminal")}
	if auditLog != nil {
		cfg.Audit = auditLog.Record
	}
	return terminal.New(cfg)
}

// socketDirs prepares the directories of the socket and the generated
// token file: the default directory is created 0700 and, like any other,
// refused when another uid owns it or others may write to it (anyone who
// can write there can replace the socket or the token file).
func socketDirs(uds, tokenFile string) error {
	seen := map[string]bool{}
	for _, p := range []string{uds, tokenFile} {
		if p == "" {
			continue
		}
		dir := filepath.Dir(p)
		if seen[dir] {
			continue
		}
		seen[dir] = true
		check := config.CheckPrivateDir
		if dir == config.DefaultSocketDir() {
			check = config.PrivateDir
		}
		if err := check(dir); err != nil {
			return err
		}
	}
	return nil
}

// exportStats puts the store's and the audit log's counters in /metrics:
// a write they dropped is otherwise only a log line.
func exportStats(m *loop.Metrics, st *store.Store, a *audit.Log) {
	if st != nil {
		stat := func(f func(store.Stats) uint64) func() float64 {
			return func() float64 { return float64(f(st.Stats())) }
		}
		m.CounterFunc("agentbridge_store_dropped_total", "Records the state store dropped (its queue was full: the disk is slower than the agent); each is a hole in the persisted log.", stat(func(s store.Stats) uint64 { return s.Dropped }))
		m.CounterFunc("agentbridge_store_write_errors_total", "Failed writes or fsyncs of the state store; their records are lost.", stat(func(s store.Stats) uint64 { return s.WriteErrors }))
		m.CounterFunc("agentbridge_store_written_total", "Records the state store handed to write(2).", stat(func(s store.Stats) uint64 { return s.Written }))
		m.GaugeFunc("agentbridge_store_queued", "Records waiting for the state store's writer.", func() float64 { return float64(st.Stats().Queued) })
	}
	if a != nil {
		m.CounterFunc("agentbridge_audit_dropped_total", "Audit records dropped (the audit queue was full or the log was closing).", func() float64 { return float64(a.Dropped()) })
	}
}

// raiseFDLimit raises RLIMIT_NOFILE's soft limit to its hard limit (each
// connection is a descriptor) and returns the limit in force, 0 if unknown.
func raiseFDLimit(log *slog.Logger) int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		log.Warn("cannot read the fd limit", "err", err)
		return 0
	}
	if rl.Cur < rl.Max {
		want := rl
		want.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			log.Warn("cannot raise the fd limit", "soft", rl.Cur, "hard", rl.Max, "err", err)
		} else {
			rl = want
		}
	}
	if rl.Cur > 1<<30 {
		return 1 << 30
	}
	return int(rl.Cur)
}

// defaultMaxConns leaves about 1024 descriptors of the limit for the agent,
// files, the store and gnet's transient dup of each new connection; with a
// small limit, half of it.
func defaultMaxConns(fdLimit int) int {
	if fdLimit <= 0 {
		return 0
	}
	return max(fdLimit-1024, fdLimit/2)
}

// storeEvents is the store's per-session event count for --replay: 0 (no
// count limit) leaves the bytes to bound it, as in memory.
func storeEvents(replay int) int {
	if replay == 0 {
		return math.MaxInt32
	}
	return replay
}

// storeCloseTimeout bounds how long a stop waits for the state store to
// write and fsync what it acknowledged: long enough for a slow disk, short
// enough that a hung one does not hold the stop for ever.
const storeCloseTimeout = 30 * time.Second

// closeStore flushes and fsyncs the state store with a deadline of its own
// and says what was saved or lost.
func closeStore(log *slog.Logger, st *store.Store) {
	done := make(chan error, 1)
	go func() { done <- st.Close() }()
	select {
	case err := <-done:
		s := st.Stats()
		if err != nil {
			log.Error("state dir close", "err", err, "written", s.Written, "dropped", s.Dropped)
			return
		}
		lvl := slog.LevelInfo
		if s.Dropped > 0 {
			lvl = slog.LevelWarn
		}
		log.Log(context.Background(), lvl, "state saved", "sessions", s.Sessions, "events_written", s.Written, "events_dropped", s.Dropped)
	case <-time.After(storeCloseTimeout):
		s := st.Stats()
		log.Error("state dir: not closed within the deadline; records still queued are lost and the next start treats the directory as not closed cleanly", "deadline", storeCloseTimeout, "queued", s.Queued)
	}
}

// logRecovery says what the state directory gave back and what it could not.
func logRecovery(log *slog.Logger, dir string, r store.Recovery) {
	log.Info("state restored", "dir", dir, "sessions", r.Sessions, "events", r.Events, "segments", r.Segments, "clean", r.Clean)
	if r.Corrupt > 0 {
		log.Warn("state dir: some records could not be restored (corrupt or torn); their sessions show a bridge/gap there", "dir", dir, "corrupt_records", r.Corrupt, "lost_bytes", r.LostBytes)
	}
	if r.PrevDropped > 0 {
		log.Warn("state dir: the previous run dropped events it could not write in time; they are holes in the restored logs", "dir", dir, "dropped", r.PrevDropped)
	}
}
