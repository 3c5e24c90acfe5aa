package connect

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/lxzan/gws"

	"github.com/agentbridge/agentbridge/codec/jsonrpc"
	"github.com/agentbridge/agentbridge/codec/ndjson"
)

// WebSocket relay tuning.
const (
	dialTimeout = 10 * time.Second
	// backoff between reconnect attempts: exponential from backoffMin to
	// backoffMax with jitter, so many shims do not reconnect in lockstep.
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
	// reconnectFor is how long reconnecting may fail before the shim gives up.
	reconnectFor = 2 * time.Minute
	// clientPing keeps NATs and proxies from dropping an idle connection;
	// readIdle is how long the daemon may stay silent (it pings every
	// --heartbeat) before the connection is taken for dead.
	clientPing = 20 * time.Second
	readIdle   = 60 * time.Second
	// closeWait bounds the wait for the daemon's close frame at the end.
	closeWait = 2 * time.Second
)

// runWS relays stdin to a ws:// or wss:// daemon and its messages to stdout,
// reconnecting with backoff when the connection drops. The first connection
// must succeed: a shim that cannot reach its daemon at start says why at
// once rather than retrying in silence.
func runWS(ctx context.Context, u *url.URL, o Options) error {
	token := o.Token
	if token == "" {
		token = os.Getenv("AGENTBRIDGE_TOKEN")
	}
	r := &wsRelay{o: o, u: u, log: o.Logger, header: http.Header{},
		stdin: make(chan []byte, 64), out: make(chan []byte, 256), stop: make(chan struct{}),
		pending: make(map[string]struct{})}
	if token != "" {
		r.header.Set("Authorization", "Bearer "+token)
	} else if u.Query().Get("token") == "" {
		r.noToken = true
	}
	if u.Scheme == "wss" {
		conf, err := clientTLS(u, o.CA)
		if err != nil {
			return err
		}
		r.tls = conf
	}

	conn, err := r.dial(ctx)
	if err != nil {
		return err
	}
	go r.readStdin()
	outDone := make(chan error, 1)
	go func() { outDone <- r.writeStdout() }()
	defer func() {
		close(r.stop)
		<-outDone
	}()
	for {
		err := r.session(ctx, conn)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if isRefusal(err) {
			return err
		}
		r.log.Warn("connection to the daemon lost; reconnecting", "url", redact(r.u), "err", err)
		if n := r.lost(); n > 0 {
			// Replaying them is the recovery issue's (resume by cursor).
			r.log.Warn("requests sent before the drop may not be answered", "count", n)
		}
		if conn, err = r.reconnect(ctx); err != nil {
			return err
		}
		// Resuming the client's sessions (bridge/attach since the last seq
		// seen) belongs here, before the relay goes on.
	}
}

// wsRelay is one shim's state across reconnections.
type wsRelay struct {
	o       Options
	u       *url.URL
	log     *slog.Logger
	header  http.Header
	tls     *tls.Config
	noToken bool

	stdin    chan []byte   // lines read from stdin; closed at its end
	stdinErr error         // why stdin ended, read after stdin is closed
	held     []byte        // a line whose write failed, sent first after a reconnect
	out      chan []byte   // lines for stdout
	stop     chan struct{} // closed when the relay ends: stdout drains and stops

	mu      sync.Mutex
	pending map[string]struct{} // ids of requests sent and not yet answered
	eof     bool                // stdin ended: finish once pending is empty
	idle    chan struct{}       // closed when eof and nothing is pending
}

// dial connects once, with errors that say what to do.
func (r *wsRelay) dial(ctx context.Context) (*gws.Conn, error) {
	addr := r.u.Host
	if r.u.Port() == "" {
		if r.u.Scheme == "wss" {
			addr = net.JoinHostPort(r.u.Hostname(), "443")
		} else {
			addr = net.JoinHostPort(r.u.Hostname(), "80")
		}
	}
	shown := r.u.Scheme + "://" + addr
	d := net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			return nil, &Error{Msg: fmt.Sprintf("no daemon listening at %s (start one with `agentbridge serve --listen %s`)", shown, addr), Err: err}
		case isDNS(err):
			return nil, &Error{Msg: fmt.Sprintf("cannot resolve %s: %v", r.u.Hostname(), err), Err: err}
		}
		return nil, &Error{Msg: fmt.Sprintf("cannot connect to %s: %v", shown, err), Err: err}
	}
	conn := raw
	if r.tls != nil {
		tc := tls.Client(raw, r.tls)
		hctx, cancel := context.WithTimeout(ctx, dialTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			raw.Close()
			return nil, tlsError(shown, err)
		}
		conn = tc
	}
	socket, resp, err := gws.NewClientFromConn(&wsEvents{r: r}, &gws.ClientOption{
		Addr:               r.u.String(),
		RequestHeader:      r.header.Clone(),
		ReadMaxPayloadSize: r.o.MaxMessage + 1024,
		CheckUtf8Enabled:   true,
		HandshakeTimeout:   dialTimeout,
		Logger:             gwsLog{r.log},
	}, conn)
	if err != nil {
		if resp != nil {
			return nil, statusError(r.u, resp.StatusCode, r.noToken)
		}
		return nil, &Error{Msg: fmt.Sprintf("websocket handshake with %s failed: %v", redact(r.u), err), Err: err}
	}
	r.log.Info("connected", "url", redact(r.u))
	return socket, nil
}

// reconnect dials until it succeeds, with exponential backoff and full
// jitter, for at most reconnectFor; permanent refusals end it at once.
func (r *wsRelay) reconnect(ctx context.Context) (*gws.Conn, error) {
	start := time.Now()
	wait := backoffMin
	for attempt := 1; ; attempt++ {
		d := wait/2 + rand.N(wait/2+1)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		conn, err := r.dial(ctx)
		if err == nil {
			return conn, nil
		}
		if isRefusal(err) {
			return nil, err
		}
		if time.Since(start) > reconnectFor {
			return nil, &Error{Msg: fmt.Sprintf("lost the connection to %s and could not reconnect for %s: %v", redact(r.u), reconnectFor, err), Err: err}
		}
		r.log.Info("reconnect failed", "attempt", attempt, "err", err)
		wait = min(2*wait, backoffMax)
	}
}

// session relays over one connection until stdin ends and every request
// is answered (nil), or the connection drops (its error).
func (r *wsRelay) session(ctx context.Context, socket *gws.Conn) error {
	ev := &wsEvents{r: r, closed: make(chan error, 1)}
	socket.Session().Store("events", ev)
	_ = socket.SetReadDeadline(time.Now().Add(readIdle))
	go socket.ReadLoop()
	ping := time.NewTicker(clientPing)
	defer ping.Stop()
	send := func(line []byte) error {
		r.track(line)
		// A daemon that stops reading must not hang the shim forever.
		_ = socket.SetWriteDeadline(time.Now().Add(readIdle))
		if err := socket.WriteMessage(gws.OpcodeText, line); err != nil {
			r.held = line
			return err
		}
		return nil
	}
	if r.held != nil {
		line := r.held
		r.held = nil
		if err := send(line); err != nil {
			return err
		}
	}
	stdin := r.stdin
	var idle chan struct{}
	for {
		select {
		case line, ok := <-stdin:
			if !ok {
				if r.stdinErr != nil {
					_ = socket.WriteClose(1000, nil)
					return refused(&Error{Msg: "reading stdin: " + r.stdinErr.Error(), Err: r.stdinErr})
				}
				stdin, idle = nil, r.finishing()
				continue
			}
			if err := send(line); err != nil {
				return err
			}
		case <-idle:
			// Every request has its answer: end politely and wait briefly
			// for the daemon's close frame.
			_ = socket.WriteClose(1000, []byte("stdin closed"))
			select {
			case <-ev.closed:
			case <-time.After(closeWait):
			}
			return nil
		case <-ping.C:
			if err := socket.WritePing(nil); err != nil {
				return err
			}
		case err := <-ev.closed:
			return err
		case <-ctx.Done():
			_ = socket.WriteClose(1001, []byte("client stopping"))
			return nil
		}
	}
}

// readStdin feeds r.stdin with copies of stdin's lines.
func (r *wsRelay) readStdin() {
	defer close(r.stdin)
	in := ndjson.NewReader(r.o.Stdin, r.o.MaxMessage)
	for {
		line, err := in.Read()
		if err != nil {
			if errors.Is(err, ndjson.ErrTooLarge) {
				r.stdinErr = fmt.Errorf("a line is longer than --max-message (%d bytes)", r.o.MaxMessage)
			} else if !errors.Is(err, io.EOF) {
				r.stdinErr = err
			}
			return
		}
		r.stdin <- append([]byte(nil), line...)
	}
}

// writeStdout writes the daemon's messages as lines, flushing whenever no
// more are waiting, until stop; what is queued by then is still written.
func (r *wsRelay) writeStdout() error {
	w := bufio.NewWriterSize(r.o.Stdout, 64<<10)
	var err error
	write := func(line []byte) {
		if err == nil {
			_, err = w.Write(line)
		}
	}
	for {
		select {
		case line := <-r.out:
			write(line)
			if len(r.out) == 0 && err == nil {
				err = w.Flush()
			}
		case <-r.stop:
			for {
				select {
				case line := <-r.out:
					write(line)
				default:
					if err == nil {
						err = w.Flush()
					}
					return err
				}
			}
		}
	}
}

// track records a request's id so the end of stdin can wait for its answer.
func (r *wsRelay) track(line []byte) {
	hd, err := jsonrpc.Peek(line)
	if err != nil || hd.Kind != jsonrpc.KindRequest {
		return
	}
	r.mu.Lock()
	r.pending[string(hd.ID)] = struct{}{}
	r.mu.Unlock()
}

// answered forgets a request once its response arrives.
func (r *wsRelay) answered(msg []byte) {
	hd, err := jsonrpc.Peek(msg)
	if err != nil || hd.Kind != jsonrpc.KindResponse {
		return
	}
	r.mu.Lock()
	delete(r.pending, string(hd.ID))
	r.checkIdle()
	r.mu.Unlock()
}

// finishing marks the end of stdin and returns a channel closed once every
// request sent has been answered.
func (r *wsRelay) finishing() chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.eof = true
	idle := make(chan struct{})
	r.idle = idle
	r.checkIdle()
	return idle
}

func (r *wsRelay) checkIdle() {
	if r.eof && len(r.pending) == 0 && r.idle != nil {
		close(r.idle)
		r.idle = nil
	}
}

// lost forgets the requests of a dropped connection and says how many.
func (r *wsRelay) lost() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.pending)
	clear(r.pending)
	r.checkIdle()
	return n
}

// wsEvents receives one connection's read-loop events.
type wsEvents struct {
	r      *wsRelay
	closed chan error
}

func (e *wsEvents) of(socket *gws.Conn) *wsEvents {
	if v, ok := socket.Session().Load("events"); ok {
		return v.(*wsEvents)
	}
	return e
}

func (e *wsEvents) OnOpen(*gws.Conn) {}

func (e *wsEvents) OnClose(socket *gws.Conn, err error) {
	ev := e.of(socket)
	if ev.closed == nil {
		return
	}
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		err = fmt.Errorf("the daemon closed the connection (%d %s)", ce.Code, ce.Reason)
	} else if err == nil || err.Error() == "" {
		err = errors.New("connection closed")
	}
	ev.closed <- err
}

func (e *wsEvents) OnPing(socket *gws.Conn, payload []byte) {
	_ = socket.SetReadDeadline(time.Now().Add(readIdle))
	_ = socket.WritePong(payload)
}

func (e *wsEvents) OnPong(socket *gws.Conn, _ []byte) {
	_ = socket.SetReadDeadline(time.Now().Add(readIdle))
}

func (e *wsEvents) OnMessage(socket *gws.Conn, msg *gws.Message) {
	defer msg.Close()
	_ = socket.SetReadDeadline(time.Now().Add(readIdle))
	b := msg.Bytes()
	line := make([]byte, len(b)+1)
	copy(line, b)
	line[len(b)] = '\n'
	// Queued before it counts as answered, so the end of the relay (which
	// waits for answers) finds it in the queue.
	select {
	case e.r.out <- line:
	case <-e.r.stop:
		return
	}
	e.r.answered(b)
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

// refusal marks an error that retrying cannot fix (a rejected token, an
// untrusted certificate): the shim stops instead of reconnecting.
type refusal struct{ e *Error }

func (r *refusal) Error() string { return r.e.Error() }
func (r *refusal) Unwrap() error { return r.e }

func refused(e *Error) error { return &refusal{e} }

func isRefusal(err error) bool {
	var r *refusal
	return errors.As(err, &r)
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
