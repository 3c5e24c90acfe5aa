package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/agentbridge/agentbridge/codec/ws"
)

// msgConn is one client connection that speaks whole JSON-RPC messages:
// newline-delimited over a Unix socket (or a socketpair to an agent), one
// text frame per message over WebSocket, or ACP Streamable HTTP: each
// message a POST on one keep-alive connection (pipelined), the answers
// events of the connection's SSE stream on another (acphttp.go).
//
// Writes are buffered so a pipelining writer can put many messages in one
// syscall, which a load generator needs to not be the bottleneck (gws's own
// client issues one write per message). Queue and Flush belong to one
// writer goroutine, Next to one reader goroutine; the two may run at once.
// Close is safe from any goroutine.
type msgConn struct {
	c    net.Conn
	isWS bool

	// Reader side, owned by the reader goroutine.
	br   *bufio.Reader
	long []byte // an NDJSON line longer than br's buffer, being assembled
	wr   ws.Reader
	rbuf []byte // WebSocket bytes read but not yet parsed: rbuf[rpos:]
	rpos int
	sse  *sseScanner // ACP HTTP: the SSE stream the answers come on
	http *acpHTTP    // ACP HTTP: the POST side; nil on other transports

	// Writer side. wbuf is owned by the writer goroutine; wmu serialises
	// its writes with the pongs the reader sends.
	wmu  sync.Mutex
	wbuf []byte
	mask uint32

	closeOnce sync.Once
	onClose   func() // runs once after the socket is closed (reaps a direct agent)
}

// connOpts tune a connection for its scenario.
type connOpts struct {
	// readBuf is the read buffer size; zero means 64 KiB. Idle connections
	// use a small one so 10,000 of them do not bloat the load generator.
	readBuf int
	// rcvBuf, when positive, sets SO_RCVBUF before connecting: stalled
	// clients use a tiny one so the daemon's queue fills sooner.
	rcvBuf int
}

func (o connOpts) bufSize() int {
	if o.readBuf <= 0 {
		return 64 << 10
	}
	return o.readBuf
}

func newMsgConn(c net.Conn, br *bufio.Reader, isWS bool, o connOpts) *msgConn {
	if br == nil {
		br = bufio.NewReaderSize(c, o.bufSize())
	}
	m := &msgConn{c: c, br: br, isWS: isWS}
	if isWS {
		m.rbuf = make([]byte, 0, o.bufSize())
		var k [4]byte
		_, _ = rand.Read(k[:])
		m.mask = uint32(k[0]) | uint32(k[1])<<8 | uint32(k[2])<<16 | uint32(k[3])<<24 | 1
	}
	return m
}

// dialUnix connects to a Unix socket speaking NDJSON.
func dialUnix(ctx context.Context, path string, o connOpts) (*msgConn, error) {
	d := net.Dialer{Control: rcvBufControl(o.rcvBuf)}
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	return newMsgConn(c, nil, false, o), nil
}

// wsTarget is where and how to open a WebSocket.
type wsTarget struct {
	addr  string // host:port
	path  string // request target: path and query
	host  string // Host header
	token string // sent as Authorization: Bearer, when set
}

func parseWSURL(raw, token string) (wsTarget, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return wsTarget{}, fmt.Errorf("invalid WebSocket URL %q: %v", raw, err)
	}
	if u.Scheme != "ws" {
		return wsTarget{}, fmt.Errorf("invalid WebSocket URL %q: bench speaks ws:// only (wss would measure TLS, not the bridge)", raw)
	}
	if u.Host == "" {
		return wsTarget{}, fmt.Errorf("invalid WebSocket URL %q: no host", raw)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	path := u.RequestURI()
	if path == "" {
		path = "/"
	}
	if token == "" {
		token = u.Query().Get("token")
	}
	return wsTarget{addr: addr, path: path, host: u.Host, token: token}, nil
}

// dialWS opens a WebSocket with a hand-written RFC 6455 client handshake.
func dialWS(ctx context.Context, t wsTarget, o connOpts) (*msgConn, error) {
	d := net.Dialer{Control: rcvBufControl(o.rcvBuf)}
	c, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	var kb [16]byte
	_, _ = rand.Read(kb[:])
	key := base64.StdEncoding.EncodeToString(kb[:])
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", t.path, t.host, key)
	if t.token != "" {
		fmt.Fprintf(&req, "Authorization: Bearer %s\r\n", t.token)
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(c, req.String()); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, o.bufSize())
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("WebSocket handshake: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		c.Close()
		return nil, fmt.Errorf("WebSocket handshake refused: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != ws.AcceptKey(key) {
		c.Close()
		return nil, fmt.Errorf("WebSocket handshake: wrong Sec-WebSocket-Accept %q", got)
	}
	_ = c.SetDeadline(time.Time{})
	return newMsgConn(c, br, true, o), nil
}

// rcvBufControl sets SO_RCVBUF on the socket before it connects.
func rcvBufControl(size int) func(network, address string, rc syscall.RawConn) error {
	if size <= 0 {
		return nil
	}
	return func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// Queue appends msg to the write buffer without sending it. Writer
// goroutine only.
func (m *msgConn) Queue(msg []byte) {
	if m.http != nil {
		m.wbuf = m.http.appendPost(m.wbuf, msg)
		return
	}
	if !m.isWS {
		m.wbuf = append(m.wbuf, msg...)
		m.wbuf = append(m.wbuf, '\n')
		return
	}
	// A cheap per-frame mask: a load generator needs masking to be legal,
	// not unpredictable to an attacker.
	m.mask ^= m.mask << 13
	m.mask ^= m.mask >> 17
	m.mask ^= m.mask << 5
	k := [4]byte{byte(m.mask), byte(m.mask >> 8), byte(m.mask >> 16), byte(m.mask >> 24)}
	m.wbuf = ws.AppendMaskedFrame(m.wbuf, true, ws.OpText, k, msg)
}

// Pending is the number of queued bytes not yet flushed. Writer goroutine
// only.
func (m *msgConn) Pending() int { return len(m.wbuf) }

// Flush writes everything queued in one write. Writer goroutine only.
func (m *msgConn) Flush() error {
	if len(m.wbuf) == 0 {
		return nil
	}
	m.wmu.Lock()
	_, err := m.c.Write(m.wbuf)
	m.wmu.Unlock()
	m.wbuf = m.wbuf[:0]
	return err
}

// Send queues msg and flushes. Writer goroutine only.
func (m *msgConn) Send(msg []byte) error {
	m.Queue(msg)
	return m.Flush()
}

// Next returns the next message; it is borrowed until the next call. Pings
// are answered on the way. Reader goroutine only.
func (m *msgConn) Next() ([]byte, error) {
	if m.isWS {
		return m.nextWS()
	}
	if m.sse != nil {
		return m.nextSSE()
	}
	for {
		line, err := m.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			m.long = append(m.long[:0], line...)
			for err == bufio.ErrBufferFull {
				line, err = m.br.ReadSlice('\n')
				m.long = append(m.long, line...)
			}
			line = m.long
		}
		if err != nil {
			return nil, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) > 0 {
			return line, nil
		}
	}
}

func (m *msgConn) nextWS() ([]byte, error) {
	for {
		if m.rpos < len(m.rbuf) {
			ev, n, err := m.wr.Next(m.rbuf[m.rpos:])
			m.rpos += n
			if err != nil {
				return nil, err
			}
			switch ev.Kind {
			case ws.EventText, ws.EventBinary:
				return ev.Payload, nil
			case ws.EventPing:
				m.wmu.Lock()
				_, err := m.c.Write(ws.AppendMaskedFrame(nil, true, ws.OpPong, [4]byte{1, 2, 3, 4}, ev.Payload))
				m.wmu.Unlock()
				if err != nil {
					return nil, err
				}
				continue
			case ws.EventPong:
				continue
			case ws.EventClose:
				return nil, &closedError{code: ev.CloseCode, reason: string(ev.Payload)}
			}
			if n > 0 {
				continue
			}
		}
		// Need more bytes: keep the unparsed tail at the front.
		rest := copy(m.rbuf[:cap(m.rbuf)], m.rbuf[m.rpos:])
		m.rbuf, m.rpos = m.rbuf[:rest], 0
		if rest == cap(m.rbuf) {
			m.rbuf = append(m.rbuf, make([]byte, cap(m.rbuf))...)[:rest]
		}
		n, err := m.br.Read(m.rbuf[rest:cap(m.rbuf)])
		m.rbuf = m.rbuf[:rest+n]
		if n == 0 && err != nil {
			return nil, err
		}
	}
}

// closedError is a WebSocket close frame from the server.
type closedError struct {
	code   ws.CloseCode
	reason string
}

func (e *closedError) Error() string {
	return fmt.Sprintf("server closed the WebSocket: %d %s", uint16(e.code), e.reason)
}

// SetDeadline bounds every blocked read and write. Any goroutine.
func (m *msgConn) SetDeadline(t time.Time) {
	_ = m.c.SetDeadline(t)
	if m.http != nil {
		_ = m.http.stream.SetDeadline(t)
	}
}

// Abort closes at once. A TCP connection is reset rather than left in
// TIME_WAIT, so that a 10,000-connection run does not eat the ephemeral
// port range for the next one. Any goroutine.
func (m *msgConn) Abort() {
	if tc, ok := m.c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	m.Close()
}

// Close closes the socket. Any goroutine; later calls do nothing.
func (m *msgConn) Close() {
	m.closeOnce.Do(func() {
		if m.http != nil {
			m.endHTTP()
		}
		_ = m.c.Close()
		if m.onClose != nil {
			m.onClose()
		}
	})
}

// isClosedErr reports errors that only mean the connection went away.
func isClosedErr(err error) bool {
	var ce *closedError
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.As(err, &ce)
}

// isRetryable reports connect errors that a burst of connects causes and a
// moment cures: a full listen backlog (EAGAIN on a Unix socket).
func isRetryable(err error) bool {
	return errors.Is(err, syscall.EAGAIN)
}
