package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/agentbridge/agentbridge/agent"
	"github.com/agentbridge/agentbridge/audit"
	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/httpfront"
	"github.com/agentbridge/agentbridge/internal/config"
	"github.com/agentbridge/agentbridge/loop"
	"github.com/agentbridge/agentbridge/ring"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/store"
	"github.com/agentbridge/agentbridge/terminal"
)

// daemon is what serve builds from its configuration: the hub, its journal
// and audit log, the agent's supervisor, the listeners. build makes it, run
// starts it, wait blocks until a signal or a listener's failure, stop
// takes it down in order, close releases what build opened.
type daemon struct {
	c   *serveConfig
	log *slog.Logger

	hub  *session.Hub
	sup  *agent.Supervisor
	lis  *listeners
	term *terminal.Manager // nil without --terminal

	tokenFile, token  string // the generated token and its file; "" with --tokens
	maxConns, fdLimit int

	closers []func() // run in reverse by close
}

// build makes everything serve runs; nothing is served and the agent is
// not started yet. On error what was opened is closed.
func build(c *serveConfig) (_ *daemon, err error) {
	d := &daemon{c: c, log: c.log}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	tokens, err := d.tokens()
	if err != nil {
		return nil, err
	}
	if err := socketDirs(c.uds, d.tokenFile); err != nil {
		return nil, err
	}
	origins, err := auth.NewOriginPolicy(c.allowOrigin)
	if err != nil {
		return nil, err
	}
	hcfg := session.Config{Replay: c.replay, ReplayBytes: c.replayBytes, ReplayMemory: c.replayMemory, RequestTimeout: c.requestTimeout, Version: version, Logger: d.log,
		MaxInflight: c.maxInflight, MaxSessions: c.maxSessions, CallTimeout: c.callTimeout}
	auditLog, err := d.openAudit()
	if err != nil {
		return nil, err
	}
	if auditLog != nil {
		hcfg.Audit = auditHook(auditLog)
	}
	st, recovered, err := d.openStore()
	if err != nil {
		return nil, err
	}
	if st != nil {
		hcfg.Journal = st
	}
	fl, err := joinFleet(c.serveFlags, &hcfg, d.log)
	if err != nil {
		return nil, err
	}
	loops := c.loops
	if loops <= 0 {
		loops = max(1, runtime.NumCPU()/2)
	}
	if n := procsFor(c, loops); runtime.GOMAXPROCS(0) < n {
		runtime.GOMAXPROCS(n)
	}
	if err := d.servePprof(); err != nil {
		return nil, err
	}
	d.fdLimit = raiseFDLimit(d.log)
	d.maxConns = c.maxConns
	if d.maxConns == 0 {
		d.maxConns = defaultMaxConns(d.fdLimit)
	} else if d.fdLimit > 0 && d.maxConns > d.fdLimit-64 {
		d.log.Warn("--max-conns is above what the fd limit allows; accept will fail first (and back off)", "max_conns", d.maxConns, "fd_limit", d.fdLimit)
	}
	d.hub = session.New(hcfg)
	if st != nil {
		d.hub.Restore(restored(recovered))
		logRecovery(d.log, c.stateDir, st.Recovery())
	}
	if fl != nil {
		if err := fl.Start(d.hub); err != nil {
			return nil, err
		}
		// Closed before the store: the fleet publishes the agent's last
		// events, then the store closes.
		d.closers = append(d.closers, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := fl.Close(ctx); err != nil {
				d.log.Warn("fleet", "err", err)
			}
		})
	}
	if d.term, err = newTerminal(c.serveFlags, auditLog, d.log); err != nil {
		return nil, err
	}
	if d.term != nil {
		d.closers = append(d.closers, d.term.Close)
	}
	metrics := loop.NewMetrics(nil)
	exportStats(metrics, st, auditLog)
	d.lis, err = newListeners(listenConfig{
		Loop: loop.Config{
			UDS: c.uds, Listen: c.listen, MaxMessage: c.maxMessage,
			Queue:    ring.Config{MaxItems: c.queueItems, MaxDataBytes: c.queueBytes, MaxControlBytes: c.controlBytes},
			Loops:    loops,
			MaxConns: d.maxConns, MaxConnsPerIP: c.maxConnsPerIP,
			Delivery:  delivery.Config{SummaryInterval: c.summaryInterval, StallTimeout: c.stallTimeout},
			Rate:      c.rate,
			AllowUIDs: c.uids, Hub: d.hub, Logger: d.log, Metrics: metrics,
		},
		Front:   httpfront.Config{Tokens: tokens, Origins: origins, Heartbeat: c.heartbeat, HTTPIdle: c.httpIdle, Terminal: d.term},
		TLSCert: c.tlsCert, TLSKey: c.tlsKey,
	})
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, d.lis.front.Close)
	acfg := agent.Config{Command: c.cmd, Framing: c.framing, Stdio: c.stdio, MaxMessage: c.maxMessage, Grace: c.grace, Logger: d.log.With("src", "agent")}
	if acfg.Stdio == agent.StdioSocket {
		acfg.Attach = d.lis.loop // the agent's stdio is a connection of the event loop
	}
	if d.sup, err = agent.New(acfg, d.hub); err != nil {
		return nil, err
	}
	d.hub.SetAgent(hubAgent{d.sup})
	return d, nil
}

// tokens loads --tokens, or generates a client token to be written next to
// the socket once it is bound (run).
func (d *daemon) tokens() (*auth.Tokens, error) {
	c := d.c
	if c.serveFlags.tokens != "" {
		tokens, err := auth.LoadTokens(c.serveFlags.tokens)
		if err != nil {
			return nil, err
		}
		if w := auth.TokensFileWarning(c.serveFlags.tokens); w != "" {
			d.log.Warn(w)
		}
		return tokens, nil
	}
	token, err := auth.GenerateToken()
	if err != nil {
		return nil, fmt.Errorf("generate token: %w", err)
	}
	d.token = token
	d.tokenFile = config.TokenFileFor(config.DefaultSocket())
	if c.uds != "" {
		d.tokenFile = config.TokenFileFor(c.uds)
	}
	return auth.NewTokens([]auth.Grant{{Role: auth.RoleClient, Token: token}})
}

// openAudit opens --audit (nil without it); close closes it last.
func (d *daemon) openAudit() (*audit.Log, error) {
	if d.c.auditFile == "" {
		return nil, nil
	}
	l, err := audit.Open(d.c.auditFile, audit.Options{})
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, func() {
		if err := l.Close(); err != nil {
			d.log.Warn("audit log close", "err", err)
		}
	})
	return l, nil
}

// openStore opens --state-dir (nil without it) and what it recovered; close
// closes it after the agent stopped, so its last events are persisted too.
func (d *daemon) openStore() (*store.Store, []store.Session, error) {
	c := d.c
	if c.stateDir == "" {
		return nil, nil, nil
	}
	syncEvery := c.stateSync
	if syncEvery == 0 {
		syncEvery = -1 // store: negative fsyncs after every batch
	}
	st, recovered, err := store.Open(c.stateDir, store.Options{MaxEvents: storeEvents(c.replay), MaxBytes: c.replayBytes, SyncInterval: syncEvery, Logger: d.log.With("src", "store")})
	if err != nil {
		return nil, nil, err
	}
	d.closers = append(d.closers, func() { closeStore(d.log, st) })
	return st, recovered, nil
}

// servePprof serves net/http/pprof on --pprof, on a mux of its own (not
// http.DefaultServeMux, which any imported package may register on).
func (d *daemon) servePprof() error {
	if d.c.pprof == "" {
		return nil
	}
	ln, err := net.Listen("tcp", d.c.pprof)
	if err != nil {
		return fmt.Errorf("invalid --pprof %q: %w", d.c.pprof, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	d.closers = append(d.closers, func() { _ = srv.Close() })
	d.log.Info("pprof serving", "addr", ln.Addr().String())
	return nil
}

// run starts the agent, writes the generated token file, then starts the
// listeners; it returns once they serve.
func (d *daemon) run() error {
	c := d.c
	// The agent starts first, so a client connecting the moment the socket
	// appears finds it running (not "restarting").
	if err := d.sup.Start(); err != nil {
		return fmt.Errorf("cannot start the agent %q: %w", strings.Join(c.cmd, " "), err)
	}
	// The token file is written once loop.New found the socket path free
	// (a daemon that finds it in use must not replace the token file of the
	// one holding it) and before the socket appears (a client that waits
	// for the socket then reads the token must find it).
	if d.tokenFile != "" {
		if err := auth.WriteTokenFile(d.tokenFile, d.token); err != nil {
			d.log.Error("cannot write the token file; WebSocket clients need --tokens", "file", d.tokenFile, "err", err)
			d.tokenFile = ""
		}
	}
	if err := d.lis.Start(); err != nil {
		actx, acancel := context.WithTimeout(context.Background(), c.grace)
		_ = d.sup.Stop(actx)
		acancel()
		d.removeTokenFile()
		return err
	}
	attrs := []any{"agent", strings.Join(c.cmd, " "), "pid", os.Getpid()}
	if c.uds != "" {
		attrs = append(attrs, "socket", c.uds)
	}
	if c.listen != "" {
		scheme := "ws"
		if c.tlsCert != "" {
			scheme = "wss"
		}
		attrs = append(attrs, "websocket", scheme+"://"+c.listen+"/acp")
	}
	if d.tokenFile != "" {
		attrs = append(attrs, "token_file", d.tokenFile)
	}
	attrs = append(attrs, "max_conns", d.maxConns, "fd_limit", d.fdLimit)
	d.log.Info("agentbridge serving", attrs...)
	return nil
}

// wait blocks until a signal or a listener's failure and says which.
func (d *daemon) wait(sig <-chan os.Signal) string {
	select {
	case s := <-sig:
		return "received " + s.String()
	case err := <-d.lis.Done():
		return fmt.Sprintf("engine stopped: %v", err)
	}
}

// stop takes the daemon down: every pending request answered or failed and
// clients told why, queues flushed, the agent given its grace period, then
// the listeners. A second signal exits at once.
func (d *daemon) stop(reason string, sig <-chan os.Signal) {
	d.log.Info("shutting down", "reason", reason)
	go func() { <-sig; d.log.Warn("second signal: exiting now"); os.Exit(1) }()
	// HTTP keep-alive connections are nobody's in the hub: idle ones close
	// now, those in a request after their answer. First, so that an answer
	// the shutdown itself gives (a parked POST initialize) carries
	// Connection: close.
	d.lis.CloseIdle()
	d.hub.Shutdown(reason)
	if d.term != nil {
		d.term.Close() // shells get SIGHUP; their browsers a close frame
	}
	// What remains gets up to 2 s to flush its farewell or its answer.
	deadline := time.Now().Add(2 * time.Second)
	for d.lis.Connections() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// The agent stops before the engine: with --agent-stdio socket its
	// stdio is a connection of the engine, and what it writes while it
	// stops is still read.
	actx, acancel := context.WithTimeout(context.Background(), 3*d.c.grace)
	defer acancel()
	if err := d.sup.Stop(actx); err != nil {
		d.log.Warn("agent stop", "err", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := d.lis.Stop(ctx); err != nil && !errors.Is(err, context.Canceled) {
		d.log.Warn("engine stop", "err", err)
	}
	d.removeTokenFile()
	d.log.Info("stopped")
}

func (d *daemon) removeTokenFile() {
	if d.tokenFile == "" {
		return
	}
	if err := auth.RemoveTokenFile(d.tokenFile, d.token); err != nil {
		d.log.Warn("token file", "err", err)
	}
	d.tokenFile = ""
}

// close releases what build opened, in reverse: the terminal, the fleet,
// the store (after the agent stopped, so its last events are persisted),
// the audit log last.
func (d *daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
}

// procsFor is the fewest Ps serve runs with. Each gnet loop's thread keeps
// its P while it waits in epoll_wait, so a goroutine that Go's netpoller
// wakes (the agent's reader with --agent-stdio pipe, TLS connections, the
// terminal's PTY, the fleet's NATS client) can wait for the scheduler to
// take a P back: up to milliseconds when pinned to one CPU (measured in
// pipe mode: pinned p50 196 µs → 52 µs with two spare Ps). So with any of
// those there are two Ps beyond the loops. Without them (the agent on a
// socket, clients on the Unix socket and plain WebSocket: everything on
// the loops) a spare P costs the round trip: after every wake-up gnet's
// loop polls epoll_wait(0) and calls runtime.Gosched, which wakes an idle
// P's thread that finds nothing to do (a futex wake and two context
// switches on the loop's CPU per wake-up, two wake-ups per round trip);
// pinned to one CPU, the WebSocket round trip was 2.79–2.85× gws's with
// the spare Ps and 2.33–2.37× without (bench rtt --pin, same run). Then
// the runtime's own count (the CPUs it may use) stands, raised to the
// loop count.
func procsFor(c *serveConfig, loops int) int {
	if c.stdio != agent.StdioSocket || c.tlsCert != "" || strings.TrimSpace(c.terminal) != "" || c.nats != "" {
		return loops + 2
	}
	return loops
}
