package loop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/agentbridge/agentbridge/auth"
	"github.com/agentbridge/agentbridge/delivery"
	"github.com/agentbridge/agentbridge/ring"
	"github.com/agentbridge/agentbridge/session"
	"github.com/agentbridge/agentbridge/tlsserve"
)

// Config configures a Server. Zero values are documented per field.
type Config struct {
	// UDS is the Unix socket path; "" disables the Unix listener.
	UDS string
	// Listen is the TCP address for HTTP/WebSocket; "" disables it.
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
	// HTTP configures the TCP listener's protocols (set by the WebSocket
	// layer); nil serves nothing on TCP but a 404.
	HTTP *HTTPConfig

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
	cfg  Config
	log  *slog.Logger
	hub  *session.Hub
	uid  uint32
	eng  gnet.Engine
	boot chan struct{}
	done chan error

	mu      sync.Mutex
	blocked map[*conn]struct{} // connections waiting for gnet's outbound buffer to drain
	conns   map[*conn]struct{}
	nconns  atomic.Int64
	stopped atomic.Bool
	ticks   []func(now time.Time)

	front *front           // the TCP listener's HTTP layer; nil without --listen
	tls   *tlsserve.Server // owns --listen when TLS is configured
	gnet  bool             // the gnet engine runs (false: TLS only, no Unix socket)
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
	if cfg.UDS == "" && cfg.Listen == "" {
		return nil, errors.New("loop: both --uds and --listen are disabled; nothing to serve")
	}
	if cfg.UDS != "" {
		if err := checkSocketPath(cfg.UDS); err != nil {
			return nil, err
		}
	}
	s := &Server{cfg: cfg, log: cfg.Logger, hub: cfg.Hub, uid: uint32(os.Getuid()),
		boot: make(chan struct{}), done: make(chan error, 2),
		blocked: make(map[*conn]struct{}), conns: make(map[*conn]struct{})}
	if cfg.Listen != "" && cfg.HTTP != nil {
		s.front = newFront(s, *cfg.HTTP)
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

// Start runs the engine in the background and returns once the listeners
// are bound (or failed).
func (s *Server) Start() error {
	var addrs []string
	if s.cfg.UDS != "" {
		addrs = append(addrs, "unix://"+s.cfg.UDS)
	}
	if s.cfg.Listen != "" {
		if s.cfg.HTTP.TLS() {
			if err := s.startTLS(); err != nil {
				return err
			}
		} else {
			addrs = append(addrs, "tcp://"+s.cfg.Listen)
		}
	}
	if len(addrs) == 0 {
		return nil // TLS only: no engine
	}
	s.gnet = true
	// The socket file is created by bind() with the umask's mode; make it
	// 0600 from its first instant rather than chmod-ing it afterwards.
	old := syscall.Umask(0o177)
	go func() {
		s.done <- gnet.Rotate(s, addrs,
			gnet.WithNumEventLoop(s.loops()),
			gnet.WithTicker(true),
			gnet.WithReusePort(false),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithReadBufferCap(64<<10),
			gnet.WithWriteBufferCap(64<<10),
			gnet.WithLogger(gnetLogger{s.log}),
		)
	}()
	select {
	case <-s.boot:
		syscall.Umask(old)
		if s.cfg.UDS != "" {
			if err := os.Chmod(s.cfg.UDS, 0o600); err != nil {
				return fmt.Errorf("chmod %s: %w", s.cfg.UDS, err)
			}
		}
		return nil
	case err := <-s.done:
		syscall.Umask(old)
		if err == nil {
			err = errors.New("engine stopped before it started")
		}
		_ = s.stopTLS(context.Background())
		// Name the addresses: "bind: address already in use" alone does
		// not say which flag to change.
		return fmt.Errorf("listen on %s: %w", strings.Join(addrs, " and "), err)
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
func (s *Server) Connections() int { return int(s.nconns.Load()) + s.tlsConnections() }

// Stop stops accepting and closes the engine; connections still open are
// closed. Call Hub.Shutdown first so clients get their answers and a reason.
func (s *Server) Stop(ctx context.Context) error {
	if !s.stopped.CompareAndSwap(false, true) {
		return nil
	}
	err := s.stopTLS(ctx)
	if !s.gnet {
		return err
	}
	err = errors.Join(err, s.eng.Stop(ctx))
	if s.cfg.UDS != "" {
		_ = os.Remove(s.cfg.UDS) // gnet removes it too; be sure
	}
	return err
}

// OnBoot records the engine.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	close(s.boot)
	return gnet.None
}

// OnTick wakes connections blocked on gnet's outbound buffer and runs the
// periodic work of the protocols (heartbeats, summaries).
func (s *Server) OnTick() (time.Duration, gnet.Action) {
	s.mu.Lock()
	for c := range s.blocked {
		delete(s.blocked, c)
		_ = c.gc.Wake(nil)
	}
	ticks := s.ticks
	s.mu.Unlock()
	now := time.Now()
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

func (s *Server) markBlocked(c *conn) {
	s.mu.Lock()
	s.blocked[c] = struct{}{}
	s.mu.Unlock()
}

type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "src", "gnet") }
