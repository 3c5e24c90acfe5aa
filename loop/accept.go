package loop

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
)

// The daemon accepts its own connections. gnet v2.9.4's acceptor treats
// any accept error but EAGAIN/EINTR as fatal ("main reactor is exiting"),
// so running out of file descriptors would stop the engine and the daemon
// with it. Instead the engine listens only on a private Unix socket whose
// path is unlinked as soon as it is bound (nobody can ever connect to it),
// and one goroutine per real listener (acceptLoop) accepts with Go's net
// package, applies --max-conns and the per-IP limit, and hands each
// admitted connection to the engine with Engine.Register (gnet dups the fd
// onto a loop; the engine uses LeastConnections, since round-robin's
// counter is not safe beside its own acceptor). An EMFILE/ENFILE from
// accept backs off (5 ms doubling to 1 s) and sheds the connection at the
// head of the backlog with a spare descriptor, so the peer is told no
// rather than left hanging and the listener does not spin.

// admission counts the connections held by every listener (the gnet
// engine's and the TLS server's) against --max-conns and the per-IP limit.
// Safe from any goroutine.
type admission struct {
	max   int64 // most connections at once; 0: no limit
	perIP int   // most connections from one IP address; 0: no limit

	live atomic.Int64

	mu   sync.Mutex
	byIP map[netip.Addr]int // guarded by mu; used only when perIP > 0
}

// Refusal reasons, also the metric label.
const (
	refuseMaxConns = "max-conns"
	refusePerIP    = "per-ip"
)

// admit takes a slot for a connection from ip (the zero Addr for Unix
// peers); on refusal it returns the reason and takes nothing.
func (a *admission) admit(ip netip.Addr) (string, bool) {
	if n := a.live.Add(1); a.max > 0 && n > a.max {
		a.live.Add(-1)
		return refuseMaxConns, false
	}
	if a.perIP > 0 && ip.IsValid() {
		a.mu.Lock()
		if a.byIP[ip] >= a.perIP {
			a.mu.Unlock()
			a.live.Add(-1)
			return refusePerIP, false
		}
		a.byIP[ip]++
		a.mu.Unlock()
	}
	return "", true
}

// release gives back a slot taken by admit.
func (a *admission) release(ip netip.Addr) {
	a.live.Add(-1)
	if a.perIP > 0 && ip.IsValid() {
		a.mu.Lock()
		if n := a.byIP[ip] - 1; n > 0 {
			a.byIP[ip] = n
		} else {
			delete(a.byIP, ip)
		}
		a.mu.Unlock()
	}
}

// addrIP is the IP of a TCP address (unmapped, so ::ffff:1.2.3.4 and
// 1.2.3.4 count together); the zero Addr for anything else.
func addrIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// unixPeer is a Unix peer's label, "uid:U pid:P", in one allocation (it
// stays with the connection; the pieces concatenated were two more).
func unixPeer(uid uint32, pid int32) string {
	var b [48]byte
	l := strconv.AppendUint(append(b[:0], "uid:"...), uint64(uid), 10)
	l = strconv.AppendInt(append(l, " pid:"...), int64(pid), 10)
	return string(l)
}

// tcpPeer is a TCP peer's label, as net.TCPAddr.String writes it ("1.2.3.4:5",
// "[::1]:5"), in one allocation rather than the three String makes.
func tcpPeer(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	ap := ta.AddrPort()
	if !ap.Addr().IsValid() {
		return ta.String()
	}
	var b [64]byte
	return string(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).AppendTo(b[:0]))
}

// isFDExhausted recognises accept failing for want of a descriptor.
func isFDExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// spareFD is a descriptor held open so that, when the process is out of
// them, one can be freed to accept and close the connection at the head of
// the backlog. One per process: acceptors take turns under its lock.
var spareFD = struct {
	sync.Mutex
	f *os.File
}{}

func holdSpareFD() {
	spareFD.Lock()
	if spareFD.f == nil {
		spareFD.f, _ = os.Open(os.DevNull)
	}
	spareFD.Unlock()
}

// shed frees the spare descriptor, accepts one pending connection without
// blocking and closes it (the peer sees the connection closed, not a hang),
// then takes the spare back.
func shed(ln net.Listener) bool {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	spareFD.Lock()
	defer spareFD.Unlock()
	if spareFD.f != nil {
		spareFD.f.Close()
		spareFD.f = nil
	}
	shed := false
	_ = rc.Control(func(fd uintptr) {
		nfd, _, err := unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err == nil {
			unix.Close(nfd)
			shed = true
		}
	})
	spareFD.f, _ = os.Open(os.DevNull)
	return shed
}

// listener is one of the daemon's own listening sockets.
type listener struct {
	ln        net.Listener
	transport string // metric label: "unix" or "http"
}

// acceptLoop accepts on l until it is closed, admitting or refusing each
// connection; it never gives up on an accept error.
func (s *Server) acceptLoop(l listener) {
	defer s.acceptors.Done()
	var st exhaustion
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.stopped.Load() {
				return
			}
			shedNow := isFDExhausted(err) && shed(l.ln)
			if !s.backOff(l, &st, err, shedNow) {
				return
			}
			continue
		}
		ip := addrIP(c.RemoteAddr())
		if why, ok := s.adm.admit(ip); !ok {
			st.backoff = 0
			s.cfg.Metrics.refused(l.transport, why)
			s.refuse(c, l.transport, why)
			continue
		}
		ch, err := s.eng.Register(gnet.NewNetConnContext(context.Background(), c))
		if err != nil {
			s.adm.release(ip)
			c.Close()
			continue
		}
		// gnet dups the descriptor on a worker, registers it with a loop
		// (OnOpen) and closes c. A failure there never reaches OnClose, so
		// the slot is given back here; success releases it in OnClose.
		// Waiting here (not in a goroutine per connection, whose stack would
		// stay in the daemon's RSS) paces accept to what the loops take.
		r := <-ch
		if r.Err == nil {
			st.backoff = 0
			continue
		}
		s.adm.release(ip)
		// Out of descriptors, the dup fails rather than accept (accept took
		// the last one): gnet has closed c, so its peer was shed.
		if !s.backOff(l, &st, r.Err, isFDExhausted(r.Err)) {
			return
		}
	}
}

// exhaustion is an acceptor's state across failures.
type exhaustion struct {
	backoff time.Duration
	lastLog time.Time
	shed    int
}

// backOff counts a failed accept (or hand-over), logs at most one line a
// second however long the storm lasts, and waits 5 ms doubling to 1 s. It
// returns false when the server stops meanwhile.
func (s *Server) backOff(l listener, st *exhaustion, err error, shed bool) bool {
	st.backoff = min(max(2*st.backoff, 5*time.Millisecond), time.Second)
	if shed {
		st.shed++
		s.cfg.Metrics.refused(l.transport, "fd-exhausted")
	}
	if now := time.Now(); now.Sub(st.lastLog) >= time.Second {
		s.log.Error("accept failed; backing off (raise the fd limit or lower --max-conns)",
			"listener", l.ln.Addr().String(), "err", err, "backoff", st.backoff, "shed", st.shed,
			"connections", s.adm.live.Load())
		st.lastLog, st.shed = now, 0
	}
	select {
	case <-time.After(st.backoff):
		return true
	case <-s.stopping:
		return false
	}
}

// refuse tells a peer over a limit why and closes its connection, without
// reading what it sent: an HTTP 503 on the plain listener, one JSON-RPC
// error line on the Unix socket.
func (s *Server) refuse(c net.Conn, transport, why string) {
	msg := "the daemon is at its connection limit (--max-conns " + strconv.FormatInt(s.adm.max, 10) + "); try again later"
	if why == refusePerIP {
		msg = "too many connections from this address (--max-conns-per-ip " + strconv.Itoa(s.adm.perIP) + ")"
	}
	var b []byte
	if transport == "unix" {
		b = jsonrpc.AppendError(nil, []byte("null"), &jsonrpc.Error{Code: jsonrpc.CodeOverloaded, Message: msg})
		b = append(b, '\n')
	} else {
		b = []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: " +
			strconv.Itoa(len(msg)+1) + "\r\n\r\n" + msg + "\n")
	}
	// A fresh socket's send buffer takes this at once; the deadline only
	// keeps a pathological peer from holding the acceptor.
	_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	_, _ = c.Write(b)
	drainPending(c)
	_ = c.Close()
}

// drainPending reads, without blocking, what the peer already sent, so the
// close is a FIN after our answer rather than a reset that could destroy it.
func drainPending(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	var buf [4096]byte
	_ = rc.Control(func(fd uintptr) {
		for range 16 {
			if n, err := unix.Read(int(fd), buf[:]); err != nil || n <= 0 {
				return
			}
		}
	})
}

// limitListener applies the admission to a listener served by someone else
// (the TLS server): over the limit a connection is closed right after
// accept; accept errors back off and shed like acceptLoop.
type limitListener struct {
	net.Listener
	s *Server
}

func (l limitListener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || !isFDExhausted(err) {
				return nil, err
			}
			if shed(l.Listener) {
				l.s.cfg.Metrics.refused("tls", "fd-exhausted")
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff) // the TLS server's own accept goroutine; nothing else waits on it
			continue
		}
		ip := addrIP(c.RemoteAddr())
		if why, ok := l.s.adm.admit(ip); !ok {
			l.s.cfg.Metrics.refused("tls", why)
			_ = c.Close()
			continue
		}
		return &admittedConn{Conn: c, adm: &l.s.adm, ip: ip}, nil
	}
}

// admittedConn gives its slot back on its first Close.
type admittedConn struct {
	net.Conn
	adm  *admission
	ip   netip.Addr
	once atomic.Bool
}

func (c *admittedConn) Close() error {
	if c.once.CompareAndSwap(false, true) {
		c.adm.release(c.ip)
	}
	return c.Conn.Close()
}
