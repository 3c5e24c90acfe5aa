package connect

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/lxzan/gws"
)

// WebSocket tuning.
const (
	dialTimeout = 10 * time.Second
	// clientPing keeps NATs and proxies from dropping an idle connection;
	// readIdle is how long the daemon may stay silent (it pings every
	// --heartbeat) before the connection is taken for dead.
	clientPing = 20 * time.Second
	readIdle   = 60 * time.Second
	// closeWait bounds the wait for the read side to end after our close
	// frame.
	closeWait = 2 * time.Second
)

// wsTransport dials a ws:// or wss:// daemon.
type wsTransport struct {
	u       *url.URL
	header  http.Header
	tls     *tls.Config
	noToken bool // no token given at all: a 401 says how to give one
	max     int
	log     *slog.Logger
}

func newWSTransport(u *url.URL, o Options) (*wsTransport, error) {
	t := &wsTransport{u: u, header: http.Header{}, max: o.MaxMessage + envelopeRoom, log: o.Logger}
	token := o.Token
	if token == "" {
		token = os.Getenv("AGENTBRIDGE_TOKEN")
	}
	if token != "" {
		t.header.Set("Authorization", "Bearer "+token)
	} else if u.Query().Get("token") == "" {
		t.noToken = true
	}
	if u.Scheme == "wss" {
		conf, err := clientTLS(u, o.CA)
		if err != nil {
			return nil, err
		}
		t.tls = conf
	}
	return t, nil
}

func (t *wsTransport) String() string { return redact(t.u) }

// dial connects once, with errors that say what to do.
func (t *wsTransport) dial(ctx context.Context) (stream, error) {
	addr := t.u.Host
	if t.u.Port() == "" {
		if t.u.Scheme == "wss" {
			addr = net.JoinHostPort(t.u.Hostname(), "443")
		} else {
			addr = net.JoinHostPort(t.u.Hostname(), "80")
		}
	}
	shown := t.u.Scheme + "://" + addr
	d := net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			return nil, &Error{Msg: fmt.Sprintf("no daemon listening at %s (start one with `agentbridge serve --listen %s`)", shown, addr), Err: err}
		case isDNS(err):
			return nil, &Error{Msg: fmt.Sprintf("cannot resolve %s: %v", t.u.Hostname(), err), Err: err}
		}
		return nil, &Error{Msg: fmt.Sprintf("cannot connect to %s: %v", shown, err), Err: err}
	}
	conn := raw
	if t.tls != nil {
		tc := tls.Client(raw, t.tls)
		hctx, cancel := context.WithTimeout(ctx, dialTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			raw.Close()
			return nil, tlsError(shown, err)
		}
		conn = tc
	}
	s := &wsStream{in: make(chan []byte, 256), quit: make(chan struct{}), ended: make(chan struct{})}
	socket, resp, err := gws.NewClientFromConn(s, &gws.ClientOption{
		Addr:               t.u.String(),
		RequestHeader:      t.header.Clone(),
		ReadMaxPayloadSize: t.max,
		CheckUtf8Enabled:   true,
		HandshakeTimeout:   dialTimeout,
		Logger:             gwsLog{t.log},
	}, conn)
	if err != nil {
		conn.Close()
		if resp != nil {
			return nil, statusError(t.u, resp.StatusCode, t.noToken)
		}
		return nil, &Error{Msg: fmt.Sprintf("websocket handshake with %s failed: %v", redact(t.u), err), Err: err}
	}
	s.c = socket
	_ = socket.SetReadDeadline(time.Now().Add(readIdle))
	go socket.ReadLoop()
	go s.pinger()
	return s, nil
}

// wsStream is one WebSocket connection: one JSON-RPC message per text
// frame. gws's read loop hands messages over through in; gws serialises
// writes, so the pinger and the writer may write concurrently.
type wsStream struct {
	c     *gws.Conn
	in    chan []byte   // messages read; closed by OnClose, after err is set
	err   error         // why the read side ended
	quit  chan struct{} // closed by close: the read loop stops handing over
	ended chan struct{} // closed by OnClose
	once  sync.Once
}

var _ gws.Event = (*wsStream)(nil)

func (s *wsStream) read() ([]byte, error) {
	msg, ok := <-s.in
	if !ok {
		return nil, s.err
	}
	return msg, nil
}

func (s *wsStream) write(msg []byte) error {
	_ = s.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	return s.c.WriteMessage(gws.OpcodeText, msg)
}

func (s *wsStream) flush() error { return nil }

func (s *wsStream) close(graceful bool) {
	s.once.Do(func() {
		close(s.quit)
		if graceful {
			_ = s.c.WriteClose(1000, []byte("stdin closed"))
			select {
			case <-s.ended:
			case <-time.After(closeWait):
			}
		}
		_ = s.c.NetConn().Close()
	})
}

// pinger pings the daemon every clientPing until the connection ends.
func (s *wsStream) pinger() {
	t := time.NewTicker(clientPing)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := s.c.WritePing(nil); err != nil {
				return
			}
		case <-s.ended:
			return
		}
	}
}

func (s *wsStream) OnOpen(*gws.Conn) {}

func (s *wsStream) OnClose(_ *gws.Conn, err error) {
	var ce *gws.CloseError
	switch {
	case errors.As(err, &ce):
		s.err = fmt.Errorf("%w (%d %s)", ErrDaemonClosed, ce.Code, ce.Reason)
	case err == nil || err.Error() == "" || errors.Is(err, io.EOF):
		s.err = ErrDaemonClosed
	default:
		s.err = err
	}
	close(s.in)
	close(s.ended)
}

func (s *wsStream) OnPing(socket *gws.Conn, payload []byte) {
	_ = socket.SetReadDeadline(time.Now().Add(readIdle))
	_ = socket.WritePong(payload)
}

func (s *wsStream) OnPong(socket *gws.Conn, _ []byte) {
	_ = socket.SetReadDeadline(time.Now().Add(readIdle))
}

func (s *wsStream) OnMessage(socket *gws.Conn, msg *gws.Message) {
	defer msg.Close()
	_ = socket.SetReadDeadline(time.Now().Add(readIdle))
	b := append([]byte(nil), msg.Bytes()...)
	select {
	case s.in <- b:
	case <-s.quit:
	}
}

// clientTLS builds the TLS configuration for wss://, trusting caFile's
// certificates in addition to the system roots.
func clientTLS(u *url.URL, caFile string) (*tls.Config, error) {
	conf := &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	if caFile == "" {
		return conf, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, &Error{Msg: fmt.Sprintf("cannot read --ca %s: %v", caFile, err), Err: err}
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, &Error{Msg: fmt.Sprintf("--ca %s holds no PEM certificate", caFile)}
	}
	conf.RootCAs = pool
	return conf, nil
}

// tlsError names what is wrong with the daemon's certificate.
func tlsError(shown string, err error) error {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &unknown):
		return refused(&Error{Msg: fmt.Sprintf("TLS: the certificate of %s is signed by an unknown authority; pass its CA (or the self-signed certificate) with --ca FILE.pem", shown), Err: err})
	case errors.As(err, &hostname):
		return refused(&Error{Msg: fmt.Sprintf("TLS: the certificate of %s is not valid for this name: %v", shown, err), Err: err})
	case errors.As(err, &invalid):
		return refused(&Error{Msg: fmt.Sprintf("TLS: the certificate of %s is not valid: %v", shown, err), Err: err})
	case errors.As(err, &record):
		return refused(&Error{Msg: fmt.Sprintf("TLS: %s does not speak TLS (use ws:// for a daemon without --tls-cert)", shown), Err: err})
	}
	return &Error{Msg: fmt.Sprintf("TLS handshake with %s failed: %v", shown, err), Err: err}
}

// statusError explains a refused handshake.
func statusError(u *url.URL, status int, noToken bool) error {
	shown := redact(u)
	switch status {
	case http.StatusUnauthorized:
		if noToken {
			return refused(&Error{Msg: fmt.Sprintf("the daemon at %s requires a token: pass --token or set AGENTBRIDGE_TOKEN", shown)})
		}
		return refused(&Error{Msg: fmt.Sprintf("token rejected by the daemon at %s (check --token or AGENTBRIDGE_TOKEN)", shown)})
	case http.StatusForbidden:
		return refused(&Error{Msg: fmt.Sprintf("the daemon at %s refused this client (403)", shown)})
	case http.StatusNotFound:
		return refused(&Error{Msg: fmt.Sprintf("no WebSocket endpoint at %s (the daemon serves /acp)", shown)})
	}
	e := &Error{Msg: fmt.Sprintf("the daemon at %s refused the WebSocket handshake: HTTP %d %s", shown, status, http.StatusText(status))}
	if status < 500 {
		return refused(e)
	}
	return e
}

// redact is u for logs and errors: without user info and with a token
// given in the query masked (tokens are never logged).
func redact(u *url.URL) string {
	c := *u
	c.User = nil
	if q := c.Query(); q.Has("token") {
		q.Set("token", "REDACTED")
		c.RawQuery = q.Encode()
	}
	return c.String()
}

func isDNS(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de)
}

type gwsLog struct{ l *slog.Logger }

func (g gwsLog) Error(v ...any) { g.l.Debug(fmt.Sprint(v...), "src", "gws") }
