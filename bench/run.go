package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Build is the bench binary's own version stamp.
type Build struct {
	Version string
	Commit  string
}

// runner carries one run's state. Scenarios run one after another on the
// goroutine that called Run; the fields are owned by it.
type runner struct {
	o        Options
	bin      string
	tmp      string
	external *daemon // the running daemon --uds/--ws name, or nil
	prog     *progress
	res      *Result
}

// Run is `agentbridge bench`: it parses args, runs the scenarios, prints
// the table on stdout and writes the files the flags ask for. It returns
// the process exit status: 0, 1 when a scenario failed or the daemon named
// by --uds/--ws is not there (one line on stderr), 2 on bad flags. The
// helper subcommands echo-agent and helper-server are dispatched here too.
// Call it from main; it installs a SIGINT/SIGTERM handler for its duration.
func Run(args []string, stdout, stderr io.Writer, b Build) int {
	if len(args) > 0 {
		switch args[0] {
		case "echo-agent":
			if err := RunEchoAgent(os.Stdin, os.Stdout); err != nil {
				fmt.Fprintf(stderr, "agentbridge bench echo-agent: %v\n", err)
				return 1
			}
			return 0
		case "helper-server":
			return runHelperServer(args[1:], stdout, stderr)
		}
	}
	o, err := parseArgs(args, stderr)
	if errors.Is(err, errHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "agentbridge bench: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return run(ctx, o, args, stdout, stderr, b)
}

func run(ctx context.Context, o Options, args []string, stdout, stderr io.Writer, b Build) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "agentbridge bench: "+format+"\n", a...)
		return 1
	}
	bin := o.Bin
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			return fail("cannot find own executable (give --bin): %v", err)
		}
		bin = self
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return fail("--bin: %v", err)
	}
	// The daemon and helpers may run elsewhere: relative paths are the
	// caller's.
	for _, p := range []*string{&o.MCPServer, &o.Supergateway} {
		if *p != "" {
			if abs, err := filepath.Abs(*p); err == nil {
				*p = abs
			}
		}
	}
	if _, err := os.Stat(bin); err != nil {
		return fail("--bin %s: %v", bin, err)
	}
	tmp, err := os.MkdirTemp("", "abbench")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(tmp)
	r := &runner{o: o, bin: bin, tmp: tmp, prog: newProgress(stderr)}
	defer r.prog.close()
	r.res = &Result{Schema: 1, Started: time.Now().UTC(), Options: o,
		Command: reproduce(args), Runs: []Measurement{}, Figures: []Figure{}, ScenarioSeconds: map[string]float64{}}
	if o.UDS != "" || o.WS != "" {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := r.connectExternal(cctx)
		cancel()
		if err != nil {
			return fail("%v", err)
		}
	}
	r.res.Machine = machineFacts(bin, b)

	scenarios := map[string]func(context.Context) error{
		"rtt": r.rtt, "throughput": r.throughput, "fanout": r.fanout,
		"idle": r.idle, "sessions": r.sessions, "stall": r.stall, "reconnect": r.reconnect,
		"mcp": r.mcp, "fleet": r.fleetNATS,
	}
	for _, name := range o.Scenarios {
		if ctx.Err() != nil {
			break
		}
		began := time.Now()
		err := scenarios[name](ctx)
		r.res.ScenarioSeconds[name] = time.Since(began).Seconds()
		if err != nil {
			msg := fmt.Sprintf("%s: %v", name, err)
			r.res.Failed = append(r.res.Failed, msg)
			r.prog.printf("agentbridge bench: %s", msg)
		}
	}
	r.prog.close()
	if ctx.Err() != nil {
		r.res.Failed = append(r.res.Failed, "interrupted")
	}
	r.res.Seconds = time.Since(r.res.Started).Seconds()
	r.res.WriteTable(stdout)

	code := 0
	if len(r.res.Failed) > 0 {
		code = 1
	}
	if err := r.writeOutputs(); err != nil {
		fmt.Fprintf(stderr, "agentbridge bench: %v\n", err)
		code = 1
	}
	return code
}

// writeOutputs writes --json, --plot, --history and --report.
func (r *runner) writeOutputs() error {
	o := &r.o
	if o.JSON != "" {
		b, err := json.MarshalIndent(r.res, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.JSON, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("--json: %v", err)
		}
	}
	if o.Plot != "" {
		if err := writePlot(r.res, o.Plot); err != nil {
			return fmt.Errorf("--plot: %v", err)
		}
	}
	var prev *HistoryEntry
	if o.History != "" {
		var err error
		if prev, err = appendHistory(o.History, r.res); err != nil {
			return fmt.Errorf("--history: %v", err)
		}
	}
	if o.Report != "" {
		if err := writeReport(o.Report, r.res, prev, o.Plot, o.Micro); err != nil {
			return fmt.Errorf("--report: %v", err)
		}
	}
	return nil
}

// skip records a baseline or case that cannot run, and says so.
func (r *runner) skip(msg string) {
	for _, s := range r.res.Skipped {
		if s == msg {
			return
		}
	}
	r.res.Skipped = append(r.res.Skipped, msg)
	r.prog.printf("agentbridge bench: %s", msg)
}

// runCtx bounds one measured run: warm-up + duration + timeout.
func (r *runner) runCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.o.Warmup+r.o.Duration+r.o.Timeout)
}

// pinSelf moves every thread of this process onto cpu and returns a
// function that restores the previous affinity. Threads the runtime starts
// later inherit the mask of the thread that starts them.
func pinSelf(cpu int) (restore func(), err error) {
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return nil, err
	}
	set.Set(cpu)
	if err := forEachThread(func(tid int) error { return unix.SchedSetaffinity(tid, &set) }); err != nil {
		return nil, fmt.Errorf("pin to CPU %d: %v", cpu, err)
	}
	return func() { _ = forEachThread(func(tid int) error { return unix.SchedSetaffinity(tid, &old) }) }, nil
}

func forEachThread(f func(tid int) error) error {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := f(tid); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
	}
	return nil
}

// raiseNoFile lifts RLIMIT_NOFILE to its hard limit (children inherit it)
// and reports an error when that is still below need.
func raiseNoFile(need int) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return err
		}
	}
	if lim.Cur < uint64(need) {
		return fmt.Errorf("needs %d file descriptors but the hard limit is %d: raise it (ulimit -Hn, or LimitNOFILE) or lower --idle-conns", need, lim.Cur)
	}
	return nil
}

// gcNow lets the load generator start a run with its own garbage collected,
// so a collection is less likely to land inside a latency measurement.
func gcNow() { runtime.GC() }

// reproduce is the command line that repeats this measurement: the
// arguments minus --micro, which only feeds the report.
func reproduce(args []string) string {
	out := []string{"agentbridge", "bench"}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--micro" || a == "-micro":
			i++
			continue
		case strings.HasPrefix(a, "--micro=") || strings.HasPrefix(a, "-micro="):
			continue
		}
		out = append(out, a)
	}
	return strings.Join(out, " ")
}
