package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// sessionsBound bounds one sessions run (set-up of every session, its
// prompt, the RSS read) as a multiple of --timeout: a store writing a few
// hundred sessions a second needs longer than one measured run.
const sessionsBound = 3

// sessions makes --session-count sessions, each with its own owner
// connection over the Unix socket and one prompt of the demo agent (one
// chunk, no permission, no tool call), then reads the daemon's RSS while
// every owner is still connected. With --state-dir it does it again with
// the daemon persisting to a fresh directory, with the in-memory run as
// that variant's baseline (issue 10: a store should cost little more).
func (r *runner) sessions(ctx context.Context) error {
	o := &r.o
	if !slices.Contains(o.Transports, "unix") {
		r.skip("sessions: runs over the Unix socket only (add --transport unix)")
		return nil
	}
	if err := raiseNoFile(o.SessionCount + 256); err != nil {
		return err
	}
	mem, err := r.sessionsRun(ctx, "")
	if err != nil {
		return err
	}
	kase := sessionCase(o.SessionCount)
	rssTarget := &Target{Text: "≤ 100 MB daemon RSS at 10,000 sessions", Met: float64(mem.RSSAfterKB)/1024 <= 100}
	if o.SessionCount != 10_000 {
		rssTarget.Text += fmt.Sprintf(" (this run: %d)", o.SessionCount)
	}
	r.addFigure(Figure{Scenario: "sessions", Transport: "unix", Case: kase, Metric: "daemon RSS", Unit: "MB", Better: "lower",
		Value: float64(mem.RSSAfterKB) / 1024, Target: rssTarget}, nil, nil)
	r.addFigure(Figure{Scenario: "sessions", Transport: "unix", Case: kase, Metric: "set-up", Unit: "s", Better: "lower", Value: mem.Seconds}, nil, nil)
	if !o.StateDir {
		return nil
	}
	if r.external != nil {
		r.skip("sessions --state-dir: not run against a running daemon (bench cannot start it with a store)")
		return nil
	}
	dir, err := os.MkdirTemp(r.tmp, "state")
	if err != nil {
		return err
	}
	st, err := r.sessionsRun(ctx, dir)
	if err != nil {
		return fmt.Errorf("--state-dir: %v", err)
	}
	kase += ", --state-dir"
	base := []string{"memory only"}
	r.addFigure(Figure{Scenario: "sessions", Transport: "unix", Case: kase, Metric: "daemon RSS", Unit: "MB", Better: "lower",
		Value: float64(st.RSSAfterKB) / 1024}, map[string]float64{"memory only": float64(mem.RSSAfterKB) / 1024}, base)
	r.addFigure(Figure{Scenario: "sessions", Transport: "unix", Case: kase, Metric: "set-up", Unit: "s", Better: "lower",
		Value: st.Seconds}, map[string]float64{"memory only": mem.Seconds}, base)
	return nil
}

// sessionsRun starts a daemon (persisting to stateDir unless it is ""),
// sets up the sessions and measures.
func (r *runner) sessionsRun(ctx context.Context, stateDir string) (Measurement, error) {
	o := &r.o
	ctx, cancel := context.WithTimeout(ctx, sessionsBound*o.Timeout)
	defer cancel()
	spec := daemonSpec{agent: []string{r.bin, "demo-agent", "--chunks", "1", "--permission=false", "--tool-calls", "0"}}
	variant := "memory only"
	if stateDir != "" {
		spec.serve = []string{"--state-dir", stateDir}
		variant = "--state-dir"
	}
	d, err := r.startDaemon(ctx, spec)
	if err != nil {
		return Measurement{}, err
	}
	defer d.stop()
	s := d.bridge("unix")
	if d.pid == 0 {
		return Measurement{}, fmt.Errorf("the daemon's pid is unknown, so its RSS cannot be read")
	}
	before, err := rssKB(d.pid)
	if err != nil {
		return Measurement{}, err
	}
	n := o.SessionCount
	// Written by the workers, read by closeAll on the bound's goroutine.
	conns := make([]atomic.Pointer[msgConn], n)
	closeAll := func() {
		for i := range conns {
			if c := conns[i].Load(); c != nil {
				c.Close()
			}
		}
	}
	defer closeAll()
	// Past the bound, blocked reads end.
	stop := context.AfterFunc(ctx, closeAll)
	defer stop()
	var done, chunks atomic.Int64
	r.prog.set("sessions "+variant, func() string { return fmt.Sprintf("%d of %d sessions prompted", done.Load(), n) })
	gcNow()
	start := time.Now()
	err = parallel(ctx, n, 64, func(i int) error {
		c, err := dialRetry(ctx, s, connOpts{readBuf: 2048})
		if err != nil {
			return fmt.Errorf("session %d: connect: %v", i+1, err)
		}
		conns[i].Store(c)
		got, err := promptOnce(c)
		if err != nil {
			return fmt.Errorf("session %d: %v", i+1, err)
		}
		chunks.Add(int64(got))
		done.Add(1)
		return nil
	})
	setup := time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			return Measurement{}, fmt.Errorf("%d of %d sessions prompted in %v (bound: %d × --timeout): %v", done.Load(), n, setup.Round(time.Millisecond), sessionsBound, err)
		}
		return Measurement{}, err
	}
	if err := d.alive(); err != nil {
		return Measurement{}, err
	}
	after, err := rssKB(d.pid)
	if err != nil {
		return Measurement{}, err
	}
	m := Measurement{Scenario: "sessions", Transport: "unix", Case: sessionCase(n), System: sysBridge, Conns: n,
		Seconds: setup.Seconds(), Count: int64(n), Rate: float64(n) / setup.Seconds(), RSSBeforeKB: before, RSSAfterKB: after,
		PerConnKB: float64(after-before) / float64(n),
		Note:      fmt.Sprintf("%s; %d chunks seen before the prompts' answers", variant, chunks.Load())}
	if stateDir != "" {
		files, _ := countFiles(stateDir)
		m.Note += fmt.Sprintf("; %d files in the state directory", files)
	}
	r.res.Runs = append(r.res.Runs, m)
	return m, nil
}

// promptOnce makes a session on c and prompts it once, returning how many
// session/update messages arrived before the prompt's answer (the answer
// is control and may overtake the chunk, which is data).
func promptOnce(c *msgConn) (int, error) {
	m, err := call(c, 1, "session/new", map[string]any{"cwd": "/", "mcpServers": []any{}})
	if err != nil {
		return 0, err
	}
	sid := jsonrpc.ResultSessionID(m)
	if sid == nil {
		return 0, fmt.Errorf("session/new: no sessionId in %s", m)
	}
	req := jsonrpc.AppendRequest(nil, []byte("2"), "session/prompt",
		map[string]any{"sessionId": string(sid), "prompt": []any{map[string]string{"type": "text", "text": "hi"}}})
	if err := c.Send(req); err != nil {
		return 0, err
	}
	updates := 0
	for {
		msg, err := c.Next()
		if err != nil {
			return updates, fmt.Errorf("session/prompt: %v", err)
		}
		h, err := jsonrpc.Peek(msg)
		if err != nil {
			continue
		}
		if h.Kind == jsonrpc.KindNotification && string(h.Method) == "session/update" {
			updates++
			continue
		}
		if h.Kind == jsonrpc.KindResponse && string(h.ID) == "2" {
			if h.IsError {
				return updates, fmt.Errorf("session/prompt: %s", msg)
			}
			return updates, nil
		}
	}
}

// countFiles counts the files and directories under dir.
func countFiles(dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(_ string, _ os.DirEntry, err error) error {
		n++
		return err
	})
	return n - 1, err
}

// sessionCase names the sessions figure of n sessions.
func sessionCase(n int) string { return strconv.Itoa(n) + " sessions" }
