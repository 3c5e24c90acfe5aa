package loop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/httpfront"
	"github.com/agentbridge/agentbridge/ring"
	"github.com/agentbridge/agentbridge/session"
)

// Config configures a Server. Zero values are documented per field.
type Config struct {
	// UDS is the Unix socket path; "" disables the Unix listener.
	UDS string
	// Listen is the TCP address for plain HTTP/WebSocket; "" disables it.
	// The TLS listener (package tlsserve) is not this package's: cmd
	// starts it beside this one, sharing the admission through Limit.
	Listen string
	// MaxMessage is the largest message accepted from a client. Zero means 16 MiB.
	MaxMessage int
	// Queue configures each connection's outbound queue.
	Queue ring.Config
	// Delivery tunes each connection's delivery policy (breaker, summary
	// interval, drain deadline); its Queue field is ignored for Queue above.
	// Zero fields take delivery's defaults.
	Delivery delivery.Config
	// Rate limits each connection's input; the zero Rate limits nothing.
	Rate delivery.Rate
	// OutboundHigh is how many bytes may wait in gnet's outbound buffer
	// before the loop stops draining a connection's queue into it. Zero
	// means 256 KiB.
	OutboundHigh int
	// AllowUIDs are extra peer uids accepted on the Unix socket besides the
	// daemon's own.
	AllowUIDs []uint32
	// UDSRole is the role of Unix-socket peers. Zero means client.
	UDSRole auth.Role
	// Loops is the number of event loops. Zero means one per CPU.
	Loops int
	// MaxConns is the most client connections held at once over every
	// listener; past it a new connection is refused (see refuse). Zero means
	// no limit.
	MaxConns int
	// MaxConnsPerIP is the most connections from one IP address on the TCP
	// listener. Zero means no limit.
	MaxConnsPerIP int
	// Front decides every HTTP request on the TCP listener (routes, auth,
	// Origin, Streamable HTTP, SSE); nil serves nothing on TCP but a 404.
	Front *httpfront.Front

	Hub    *session.Hub
	Logger *slog.Logger
	// Metrics receives transport counters; nil means none.
	Metrics *Metrics
}

func (c *Config) fill() {
	if c.MaxMessage == 0 {
		c.MaxMessage = 16 << 20
	}
	if c.OutboundHigh == 0 {
		c.OutboundHigh = 256 << 10
	}
	if c.UDSRole == 0 {
		c.UDSRole = auth.RoleClient
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
}

// Server serves clients on a gnet engine.
type Server struct {
	gnet.BuiltinEventEngine
	cfg Config
	log *slog.Logger
	hub *session.Hub
	uid uint32
	eng gnet.Engine
	// ready is closed on the first OnTick: gnet calls OnBoot before it makes
	// its loops, and the ticker starts after them, so from then on Register
	// finds them (and the race detector sees why).
	ready     chan struct{}
	readyOnce sync.Once
	done      chan error

	mu      sync.Mutex
	blocked map[*conn]struct{} // connections waiting for gnet's outbound buffer to drain
	wakes   wakeHeap           // their due times (conn.go)
	nconns  atomic.Int64
	stopped atomic.Bool
	ticks   []func(now time.Time)

	epc delivery.EndpointConfig // what every connection's endpoint shares; set by New

	front *front // the TCP listener's HTTP layer; nil without --listen

	adm       admission
	lns       []listener                // our own listeners, accepted by acceptLoop
	acceptors sync.WaitGroup            // one acceptLoop per listener
	stopping  chan struct{}             // closed by Stop: acceptors stop backing off
	agentc    atomic.Pointer[agentConn] // the agent's socket, with --agent-stdio socket

	// While the agent's loop routes its output (agentconn.go): connections
	// of that loop to drain before the callback returns.
	inAgent    atomic.Bool
	amu        sync.Mutex
	agentLoop  gnet.EventLoop // guarded by amu
	drainAfter []*conn        // guarded by amu
	spareDrain []*conn        // guarded by amu: drainAfter's other buffer

	engineOnce  sync.Once
	engineErr   error
	engineUp    atomic.Bool
	engineEnded chan struct{} // closed when gnet.Run returns
}

// New validates the configuration and prepares the listeners' paths; it
// fails with a clear error when the socket path is held by a live daemon or
// is not a socket.
func New(cfg Config) (*Server, error) {
	cfg.fill()
	if cfg.Hub == nil {
		return nil, errors.New("loop: no hub")
	}
	cfg.Delivery.Queue = cfg.Queue
	if err := cfg.Delivery.Validate(); err != nil {
		return nil, err
	}
	if cfg.UDS != "" {
		if err := checkSocketPath(cfg.UDS); err != nil {
			return nil, err
		}
	}
	s := &Server{cfg: cfg, log: cfg.Logger, hub: cfg.Hub, uid: uint32(os.Getuid()),
		ready: make(chan struct{}), done: make(chan error, 2), stopping: make(chan struct{}), engineEnded: make(chan struct{}),
		adm:     admission{max: int64(max(cfg.MaxConns, 0)), perIP: max(cfg.MaxConnsPerIP, 0), byIP: make(map[netip.Addr]int)},
		blocked: make(map[*conn]struct{})}
	s.epc = s.endpointConfig()
	if cfg.Listen != "" && cfg.Front != nil {
		s.front = newFront(s, cfg.Front)
	}
	return s, nil
}

// checkSocketPath refuses a path held by a live daemon or by a non-socket
// file; a stale socket file from a dead daemon is left for gnet to replace.
func checkSocketPath(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket path %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("socket path %s exists and is not a socket; refusing to replace it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("socket path %s is in use by a running daemon; stop it or choose another --uds", path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return nil // stale: nobody listens
	}
	return fmt.Errorf("socket path %s: %w", path, err)
}

// StartEngine starts the gnet engine (on a private socket nobody can
// reach; clients come from acceptLoop) and returns once its loops run. It
// runs even with no listener of its own (only TLS listens), so the agent's
// socket has a loop. Safe
// from any goroutine but a loop callback; later calls return the first
// call's result.
func (s *Server) StartEngine() error {
	s.engineOnce.Do(func() { s.engineErr = s.startEngine() })
	return s.engineErr
}

func (s *Server) startEngine() error {
	dir, err := os.MkdirTemp("", "agentbridge-engine-")
	if err != nil {
		return fmt.Errorf("engine socket: %w", err)
	}
	go func() {
		defer close(s.engineEnded)
		s.done <- gnet.Run(s, "unix://"+filepath.Join(dir, "e.sock"),
			gnet.WithNumEventLoop(s.loops()),
			gnet.WithLoadBalancing(gnet.LeastConnections),
			gnet.WithTicker(true),
			gnet.WithReusePort(false),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithReadBufferCap(64<<10),
			gnet.WithWriteBufferCap(64<<10),
			gnet.WithLogger(gnetLogger{s.log}),
		)
	}()
	select {
	case <-s.ready:
		// Nobody can connect to the engine's own socket from now on.
		_ = os.RemoveAll(dir)
		s.engineUp.Store(true)
		return nil
	case err := <-s.done:
		_ = os.RemoveAll(dir)
		if err == nil {
			err = errors.New("engine stopped before it started")
		}
		return fmt.Errorf("event loop: %w", err)
	}
}

// Start starts the engine if StartEngine has not, then binds the listeners
// and starts accepting; it returns once they are bound (or failed).
func (s *Server) Start() error {
	if err := s.StartEngine(); err != nil {
		return err
	}
	holdSpareFD()
	if err := s.listen(); err != nil {
		s.closeListeners()
		_ = s.eng.Stop(context.Background())
		return err
	}
	for _, l := range s.lns {
		s.acceptors.Add(1)
		go s.acceptLoop(l)
	}
	return nil
}

// listen binds the TCP listener, then the Unix
// socket: clients (and tests) take the socket's appearance to mean the
// daemon is ready, so it comes last.
func (s *Server) listen() error {
	if s.cfg.Listen != "" {
		// Go's net.Listen sets SO_REUSEADDR, so a restart binds at once
		// while the previous daemon's connections linger in TIME_WAIT or
		// FIN_WAIT_2.
		ln, err := net.Listen("tcp", s.cfg.Listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
		}
		s.lns = append(s.lns, listener{ln: ln, transport: "http"})
	}
	if s.cfg.UDS == "" {
		return nil
	}
	// checkSocketPath (in New) found no live daemon behind a file here.
	if fi, err := os.Lstat(s.cfg.UDS); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(s.cfg.UDS)
	}
	// The socket file is created by bind() with the umask's mode; make it
	// 0600 from its first instant rather than chmod-ing it afterwards.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", s.cfg.UDS)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on the Unix socket %s: %w", s.cfg.UDS, err)
	}
	s.lns = append(s.lns, listener{ln: ln, transport: "unix"})
	if err := os.Chmod(s.cfg.UDS, 0o600); err != nil {
		return fmt.Errorf("chmod %s: %w", s.cfg.UDS, err)
	}
	return nil
}

func (s *Server) closeListeners() {
	for _, l := range s.lns {
		_ = l.ln.Close()
	}
}

func (s *Server) loops() int {
	if s.cfg.Loops > 0 {
		return s.cfg.Loops
	}
	return 0 // gnet: one per CPU with multicore
}

// Done is closed (with the engine's error) when the engine stops.
func (s *Server) Done() <-chan error { return s.done }

// Connections is the number of open connections. Safe from any goroutine.
func (s *Server) Connections() int { return int(s.nconns.Load()) }

// Limit applies this server's admission (--max-conns, --max-conns-per-ip,
// shed on fd exhaustion) to a listener served by someone else: the TLS
// listener, so the limits count every listener. Any goroutine.
func (s *Server) Limit(ln net.Listener) net.Listener { return limitListener{Listener: ln, s: s} }

// CloseIdle ends HTTP keep-alive on the TCP listener, as net/http's
// Shutdown does: connections waiting for their next request are closed
// now, those in a request after its response. For a daemon that is
// stopping, after Hub.Shutdown (which closes the hub's own connections:
// Unix socket, WebSocket, SSE). Any goroutine.
func (s *Server) CloseIdle() {
	if s.front != nil {
		s.front.closeIdle()
	}
}

// Stop stops accepting and closes the engine; connections still open are
// closed. Call Hub.Shutdown first so clients get their answers and a reason.
func (s *Server) Stop(ctx context.Context) error {
	if !s.stopped.CompareAndSwap(false, true) {
		return nil
	}
	close(s.stopping)
	s.closeListeners()
	s.acceptors.Wait()
	if !s.engineUp.Load() {
		return nil
	}
	// gnet's Stop polls for the engine's end every 500 ms; gnet.Run
	// returns the moment it ends. So Stop only starts the shutdown (its
	// context already done) and the wait is for engineEnded.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.eng.Stop(done); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	select {
	case <-s.engineEnded:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// OnBoot records the engine.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	return gnet.None
}

// OnTick wakes connections blocked on gnet's outbound buffer and runs the
// periodic work of the protocols (heartbeats, summaries).
func (s *Server) OnTick() (time.Duration, gnet.Action) {
	s.readyOnce.Do(func() { close(s.ready) })
	now := time.Now()
	s.rewake(now)
	s.mu.Lock()
	ticks := s.ticks
	s.mu.Unlock()
	if ac := s.agentc.Load(); ac != nil && ac.needsTick() {
		_ = ac.gc.Wake(nil)
	}
	for _, f := range ticks {
		f(now)
	}
	return 5 * time.Millisecond, gnet.None
}

// OnTickFunc registers f to run on every engine tick (not on a loop
// goroutine: f must only touch connections through Wake).
func (s *Server) OnTickFunc(f func(now time.Time)) {
	s.mu.Lock()
	s.ticks = append(s.ticks, f)
	s.mu.Unlock()
}

type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "src", "gnet") }
