package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// system is one thing a scenario measures: the bridge or a baseline.
type system struct {
	name string // bridge, direct, uds-echo, gws, websocketd, broadcast
	dial func(ctx context.Context, o connOpts) (*msgConn, error)
	pid  int // the server process, for RSS; 0 when there is none
}

// Names of the systems, as they appear in the table and the JSON.
const (
	sysBridge     = "bridge"
	sysDirect     = "direct"
	sysUDSEcho    = "uds-echo"
	sysGWS        = "gws"
	sysWebsocketd = "websocketd"
	sysForwarder  = "gws-forwarder"
	sysBridgeWS   = "bridge over ws"
	sysBroadcast  = "broadcast"
)

// daemon is the bridge under test: one bench started or a running one.
type daemon struct {
	p   *proc // nil when the daemon is not ours
	uds string
	ws  wsTarget
	pid int
}

// daemonSpec is how a scenario wants its daemon started.
type daemonSpec struct {
	agent []string // the agent command after --
	serve []string // extra serve flags
	pin   bool
}

const benchToken = "bench-client-token-0123456789abcdef"

// startDaemon starts `agentbridge serve` on a private socket and a free port
// with the given agent, or returns the running daemon the flags name.
func (r *runner) startDaemon(ctx context.Context, spec daemonSpec) (*daemon, error) {
	if r.external != nil {
		return r.external, nil
	}
	dir, err := os.MkdirTemp(r.tmp, "d")
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("client "+benchToken+"\n"), 0o600); err != nil {
		return nil, err
	}
	d := &daemon{uds: filepath.Join(dir, "ab.sock")}
	err = withFreePort(func(port int) error {
		addr := "127.0.0.1:" + strconv.Itoa(port)
		d.ws = wsTarget{addr: addr, host: addr, path: "/acp", token: benchToken}
		argv := []string{r.bin, "serve", "--uds", d.uds, "--listen", addr, "--tokens", tokens, "--log-level", "info"}
		argv = append(argv, spec.serve...)
		argv = append(argv, "--")
		argv = append(argv, spec.agent...)
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		p, err := startProc(sctx, "agentbridge serve", argv, spec.pin, r.o.CPU, func(line string) bool {
			return strings.Contains(line, `msg="agentbridge serving"`)
		})
		if err == nil {
			d.p, d.pid = p, p.pid()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// withFreePort runs start with a TCP port that was free a moment ago, and
// again with another (three tries in all) when something else bound it
// in between: bench may share the machine with other tests that bind
// ports (make test runs its tests beside the e2e suite's).
func withFreePort(start func(port int) error) error {
	for try := 1; ; try++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		err = start(port)
		if err == nil || try == 3 || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
	}
}

// stop stops a daemon bench started; a running one is left alone.
func (d *daemon) stop() {
	if d.p != nil {
		d.p.stop()
	}
}

// bridge returns the daemon as the system under test over transport.
func (d *daemon) bridge(transport string) system {
	s := system{name: sysBridge, pid: d.pid}
	switch transport {
	case "unix":
		s.dial = func(ctx context.Context, o connOpts) (*msgConn, error) { return dialUnix(ctx, d.uds, o) }
	case "http":
		s.dial = func(ctx context.Context, o connOpts) (*msgConn, error) { return dialHTTP(ctx, d.ws, o) }
	default:
		s.dial = func(ctx context.Context, o connOpts) (*msgConn, error) { return dialWS(ctx, d.ws, o) }
	}
	return s
}

// alive reports an error when a daemon bench started has died.
func (d *daemon) alive() error {
	if d.p == nil {
		return nil
	}
	select {
	case <-d.p.done:
		return fmt.Errorf("the daemon exited (%v): %s", d.p.err, d.p.tail)
	default:
		return nil
	}
}

// connectExternal checks that the daemon the flags name is there, so that a
// bench against a daemon that is not running fails at once with one line.
func (r *runner) connectExternal(ctx context.Context) error {
	d := &daemon{uds: r.o.UDS}
	if r.o.UDS != "" {
		c, err := dialUnix(ctx, r.o.UDS, connOpts{readBuf: 4096})
		if err != nil {
			return fmt.Errorf("no daemon at unix://%s (%v): start one with `agentbridge serve --uds %s`, or leave out --uds and bench starts its own", r.o.UDS, shortErr(err), r.o.UDS)
		}
		c.Close()
		if pid, err := peerPID(r.o.UDS); err == nil {
			d.pid = pid
		}
	}
	if r.o.WS != "" {
		t, err := parseWSURL(r.o.WS, r.o.Token)
		if err != nil {
			return err
		}
		d.ws = t
		c, err := dialWS(ctx, t, connOpts{readBuf: 4096})
		if err != nil {
			return fmt.Errorf("no daemon at %s (%v): start one with `agentbridge serve --listen %s`, or leave out --ws and bench starts its own", r.o.WS, shortErr(err), t.addr)
		}
		c.Close()
	}
	r.external = d
	return nil
}

// shortErr drops the "dial unix /x:" prefix net errors carry.
func shortErr(err error) string {
	if oe, ok := err.(*net.OpError); ok && oe.Err != nil {
		if se, ok := oe.Err.(*os.SyscallError); ok {
			return se.Syscall + ": " + se.Err.Error()
		}
		return oe.Err.Error()
	}
	return err.Error()
}

// agentArgv is the agent command for rtt and throughput.
func (r *runner) agentArgv() []string {
	if r.o.Agent == "demo" {
		return []string{r.bin, "demo-agent", "--permission=false", "--tool-calls", "0"}
	}
	return []string{r.bin, "bench", "echo-agent"}
}

// direct is the floor of one hop fewer: the same agent on the other end of
// a socketpair, one agent process per connection.
func (r *runner) direct(pin bool) system {
	argv := r.agentArgv()
	if pin {
		argv = append([]string{"taskset", "-c", strconv.Itoa(r.o.CPU)}, argv...)
	}
	return system{name: sysDirect, dial: func(ctx context.Context, o connOpts) (*msgConn, error) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		mine, theirs := os.NewFile(uintptr(fds[0]), "direct"), os.NewFile(uintptr(fds[1]), "agent")
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdin, cmd.Stdout = theirs, theirs
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		err = cmd.Start()
		theirs.Close()
		if err != nil {
			mine.Close()
			return nil, fmt.Errorf("start the direct agent: %v", err)
		}
		c, err := net.FileConn(mine)
		mine.Close()
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return nil, err
		}
		m := newMsgConn(c, nil, false, o)
		m.onClose = func() {
			// The agent ends at EOF; a wedged one is killed.
			t := time.AfterFunc(5*time.Second, func() { _ = cmd.Process.Kill() })
			_ = cmd.Wait()
			t.Stop()
		}
		return m, nil
	}}
}

// requestTransports are the transports of rtt and throughput: the chosen
// ones, and ACP Streamable HTTP (POST + SSE on /acp) after ws when --http
// is set, measured beside the same daemon over WebSocket.
func (r *runner) requestTransports() []string {
	var out []string
	for _, t := range r.o.Transports {
		out = append(out, t)
		if t == "ws" && r.o.HTTP {
			out = append(out, "http")
		}
	}
	return out
}

// baselines are the systems rtt and throughput measure beside the bridge
// over one transport, in the order the table lists them, and the
// processes serving them.
type baselines struct {
	systems []system
	order   []string
	procs   []*proc
}

func (b *baselines) add(s system) {
	b.systems = append(b.systems, s)
	b.order = append(b.order, s.name)
}

// stop ends the processes startBaselines started.
func (b *baselines) stop() {
	for _, p := range b.procs {
		p.stop()
	}
}

// startBaselines starts what rtt and throughput compare the bridge with:
// over unix the direct agent and uds-echo; over ws the gws echo, the gws
// forwarder and websocketd; over http (ACP Streamable HTTP) the same
// daemon over WebSocket. A baseline that cannot start is skipped, saying
// why; none start without --baselines.
func (r *runner) startBaselines(ctx context.Context, d *daemon, transport string, pin bool) (*baselines, error) {
	b := &baselines{}
	if !r.o.Baselines {
		return b, nil
	}
	if transport == "http" {
		s := d.bridge("ws")
		s.name = sysBridgeWS
		b.add(s)
		return b, nil
	}
	if transport == "unix" {
		b.add(r.direct(pin))
	}
	h, err := r.startHelper(ctx, pin)
	if err != nil {
		return nil, err
	}
	b.procs = append(b.procs, h.p)
	b.add(h.echo(transport))
	if transport != "ws" {
		return b, nil
	}
	b.add(h.forwarder())
	if msg := r.websocketdMissing(); msg != "" {
		r.skip(msg)
	} else if p, s, err := r.startWebsocketd(ctx, pin); err != nil {
		r.skip("websocketd baseline skipped: " + err.Error())
	} else {
		b.procs = append(b.procs, p)
		b.add(s)
	}
	return b, nil
}

// helperServer is the baseline helper process: uds-echo, gws and the
// fan-out servers.
type helperServer struct {
	p      *proc
	uds    string
	fanUDS string
	wsAddr string
}

func (r *runner) startHelper(ctx context.Context, pin bool) (*helperServer, error) {
	dir, err := os.MkdirTemp(r.tmp, "h")
	if err != nil {
		return nil, err
	}
	agent, err := json.Marshal(r.agentArgv())
	if err != nil {
		return nil, err
	}
	h := &helperServer{uds: filepath.Join(dir, "echo.sock"), fanUDS: filepath.Join(dir, "fan.sock")}
	err = withFreePort(func(port int) error {
		h.wsAddr = "127.0.0.1:" + strconv.Itoa(port)
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var err error
		h.p, err = startProc(sctx, "the baseline helper", []string{r.bin, "bench", "helper-server", "--uds", h.uds, "--fanout-uds", h.fanUDS, "--ws", h.wsAddr,
			"--forward-agent", string(agent)}, pin, r.o.CPU, func(line string) bool { return line == "ready" })
		return err
	})
	if err != nil {
		return nil, err
	}
	return h, nil
}

func (h *helperServer) echo(transport string) system {
	if transport == "unix" {
		return system{name: sysUDSEcho, pid: h.p.pid(), dial: func(ctx context.Context, o connOpts) (*msgConn, error) { return dialUnix(ctx, h.uds, o) }}
	}
	t := wsTarget{addr: h.wsAddr, host: h.wsAddr, path: "/echo"}
	return system{name: sysGWS, pid: h.p.pid(), dial: func(ctx context.Context, o connOpts) (*msgConn, error) { return dialWS(ctx, t, o) }}
}

// forwarder is gws in front of one agent process, shared by every
// connection (gwsForwarder): what a user would write by hand.
func (h *helperServer) forwarder() system {
	t := wsTarget{addr: h.wsAddr, host: h.wsAddr, path: "/forward"}
	return system{name: sysForwarder, pid: h.p.pid(), dial: func(ctx context.Context, o connOpts) (*msgConn, error) { return dialWS(ctx, t, o) }}
}

func (h *helperServer) broadcast(transport string) system {
	if transport == "unix" {
		return system{name: sysBroadcast, pid: h.p.pid(), dial: func(ctx context.Context, o connOpts) (*msgConn, error) { return dialUnix(ctx, h.fanUDS, o) }}
	}
	t := wsTarget{addr: h.wsAddr, host: h.wsAddr, path: "/fanout"}
	return system{name: sysBroadcast, pid: h.p.pid(), dial: func(ctx context.Context, o connOpts) (*msgConn, error) { return dialWS(ctx, t, o) }}
}

// startWebsocketd serves the agent with websocketd, one agent process per
// connection, as people do without a bridge.
func (r *runner) startWebsocketd(ctx context.Context, pin bool) (*proc, system, error) {
	port, err := freePort()
	if err != nil {
		return nil, system{}, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	argv := append([]string{r.o.Websocketd, "--address=127.0.0.1", "--port=" + strconv.Itoa(port), "--loglevel=error"}, r.agentArgv()...)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := startProc(sctx, "websocketd", argv, pin, r.o.CPU, nil)
	if err != nil {
		return nil, system{}, err
	}
	if err := waitListening(sctx, "tcp", addr); err != nil {
		p.stop()
		return nil, system{}, fmt.Errorf("websocketd: %v: %s", err, p.tail)
	}
	t := wsTarget{addr: addr, host: addr, path: "/"}
	return p, system{name: sysWebsocketd, pid: p.pid(), dial: func(ctx context.Context, o connOpts) (*msgConn, error) { return dialWS(ctx, t, o) }}, nil
}

// websocketdMissing says why the websocketd baseline cannot run, or "".
func (r *runner) websocketdMissing() string {
	if r.o.Websocketd == "" {
		return "websocketd baseline skipped: --websocketd is empty"
	}
	if _, err := exec.LookPath(r.o.Websocketd); err != nil {
		return fmt.Sprintf("websocketd baseline skipped: %s not found (Debian: apt-get install websocketd, or point --websocketd at it)", r.o.Websocketd)
	}
	return ""
}
